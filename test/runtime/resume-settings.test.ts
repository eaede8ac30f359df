import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { describe, expect, it } from "vitest";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { tempDir } from "../helpers/files.ts";

describe("resuming an --out made by an earlier version", () => {
  it("the same command is not refused for a default that changed (maxLineBytes) or a setting added since (sizeMaxTokens)", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 2, name: "old" });
      const out = join(dir.path, "out");
      const run = () =>
        runLocal({
          shards: [shard],
          out,
          run: "r",
          concurrency: 2,
          config: { rounds: 1, dryRun: true },
          llm: new SimulatedLlm(),
        });
      await run();
      // The shard record as a version before 618b9df / 3a894d8 wrote it: maxLineBytes 1 MiB, no sizeMaxTokens.
      const db = new DatabaseSync(join(out, ".mmevol", "state.sqlite"));
      const row = db.prepare("SELECT record FROM shards WHERE run = 'r' AND shard = 'old'").get() as {
        record: string;
      };
      const record = JSON.parse(row.record) as { config: Record<string, unknown> };
      record.config.maxLineBytes = 1024 ** 2;
      delete record.config.sizeMaxTokens;
      db.prepare("UPDATE shards SET record = ? WHERE run = 'r' AND shard = 'old'").run(
        JSON.stringify(record),
      );
      db.close();
      const again = await run();
      expect(again.reports).toHaveLength(1);
    } finally {
      dir.cleanup();
    }
  }, 60_000);

  it("--judge-model naming the model itself is the same setting as no --judge-model", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 1, name: "judge" });
      const out = join(dir.path, "out");
      const run = (config: { rounds: number; dryRun: boolean; judgeModel?: string }) =>
        runLocal({ shards: [shard], out, run: "r", concurrency: 2, config, llm: new SimulatedLlm() });
      await run({ rounds: 1, dryRun: true });
      expect((await run({ rounds: 1, dryRun: true, judgeModel: "gpt-4o-mini" })).reports).toHaveLength(1);
      await expect(run({ rounds: 1, dryRun: true, judgeModel: "gpt-4o" })).rejects.toThrow(
        /judgeModel "gpt-4o-mini" -> "gpt-4o"/,
      );
    } finally {
      dir.cleanup();
    }
  }, 60_000);
});
