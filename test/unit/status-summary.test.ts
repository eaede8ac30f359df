import { describe, expect, it } from "vitest";
import { formatSummaries, summarizeShards } from "../../bin/commands/summary.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { sampleRecord, shardRecord, submittedBatchJob } from "../helpers/state-store-contract.ts";

const HOUR = 60 * 60_000;

describe("mmevol status's summary", () => {
  it("names stuck samples by line and id, and does not call a shard's samples stuck while its batch is open", async () => {
    const now = 10 * 24 * HOUR;
    const store = new SqliteStateStore(":memory:", { clock: { now: () => now - HOUR } });
    try {
      for (const shard of ["online", "batched"]) {
        await store.createShard(shardRecord({ shard, ingested: true, lines: 1 }));
        await store.putSamples([
          sampleRecord("000000007", {
            shard,
            line: 7,
            status: "EVOLVING",
            round: 1,
            sample: {
              id: `cat-${shard}`,
              line: 7,
              images: ["a.png"],
              caption: null,
              boxes: [],
              items: [],
              extra: {},
              source: "llava",
            },
            updatedAt: now - HOUR,
          }),
        ]);
      }
      await store.putBatchJob(submittedBatchJob("job-1", now - HOUR, { shard: "batched", nextPollAt: now }));
      const summaries = await summarizeShards(store, { now, stuckAfterMs: 30 * 60_000, scanFinalized: true });
      const byShard = new Map(summaries.map((s) => [s.shard, s]));
      expect(byShard.get("online")).toMatchObject({ openBatches: 0, stuck: [{ line: 7, id: "cat-online" }] });
      expect(byShard.get("batched")).toMatchObject({ openBatches: 1, stuck: [] });
      const text = formatSummaries(summaries).join("\n");
      expect(text).toContain('line 7 (id "cat-online"): EVOLVING round 1, 1h0m (key 000000007)');
      expect(text).toContain("r1/batched: unfinished");
      expect(text).toContain("waiting for 1 provider batch(es)");
    } finally {
      store.close();
    }
  });
});
