import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SharpImagePreparer } from "../../functions/adapters/images/sharp-image-preparer.ts";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { MemoryQueues } from "../../functions/adapters/local/memory-queue.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { ingestShard } from "../../functions/pipeline/ingest.ts";
import type { IngestMessage } from "../../functions/ports/messages.ts";
import { silentLogger, systemClock } from "../../functions/ports/runtime.ts";
import { tempDir } from "../helpers/files.ts";

describe("ingest of a shard too large for one invocation", () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it("hands the rest to a continuation message and registers every line exactly once", async () => {
    const lines = 1_050;
    mkdirSync(join(dir.path, "seeds/big"), { recursive: true });
    const body = Array.from({ length: lines }, (_, i) =>
      i === 500
        ? "{broken"
        : JSON.stringify({
            id: i === 900 ? "s-3" : `s-${i}`,
            image: "img.png",
            conversations: [
              { from: "human", value: `<image>\nQuestion ${i}?` },
              { from: "gpt", value: `Answer ${i}.` },
            ],
          }),
    ).join("\n");
    writeFileSync(join(dir.path, "seeds/big/shard.jsonl"), body);
    const blobs = new FsBlobStore(dir.path);
    const state = new SqliteStateStore(":memory:");
    const queue = new MemoryQueues();
    let budget = 0;
    const deps = {
      blobs,
      state,
      llm: new SimulatedLlm(),
      images: new SharpImagePreparer({ blobs, cachePrefix: "work/images/" }),
      clock: systemClock,
      logger: silentLogger,
      defaults: {},
      queue,
      ingestBatchSize: 100,
      // Each check of the remaining time uses up a tenth of the invocation: a continuation every 3 batches.
      remainingMs: () => {
        budget += 1;
        return budget % 3 === 0 ? 1_000 : 900_000;
      },
    };
    let message: IngestMessage | undefined = {
      kind: "ingest",
      run: "big",
      shard: "shard",
      key: "seeds/big/shard.jsonl",
    };
    let invocations = 0;
    while (message) {
      invocations += 1;
      const result = await ingestShard({ message, attempt: 1 }, deps);
      const next = result.next[0];
      message = next?.kind === "ingest" ? next : undefined;
      if (invocations === 2 && message) {
        // A redelivered copy of a continuation goes on with the same shard, never a new one; the counts
        // below show it registered no line twice.
        const copy = await ingestShard({ message, attempt: 2 }, deps);
        expect(copy.next.filter((m) => m.kind === "ingest").map((m) => m.shard)).toEqual(
          copy.next.some((m) => m.kind === "ingest") ? ["shard"] : [],
        );
      }
    }
    expect(invocations).toBeGreaterThan(2);
    expect((await state.listShards("big")).map((s) => s.shard)).toEqual(["shard"]);
    const counts = state.countByStatus("big", "shard");
    expect(counts.INGESTED + counts.REJECTED).toBe(lines);
    expect(counts.REJECTED).toBe(2); // the broken line and the duplicate id
    const shard = await state.getShard("big", "shard");
    expect(shard).toMatchObject({ ingested: true, lines, pending: lines - 2 });
    state.close();
  });
});
