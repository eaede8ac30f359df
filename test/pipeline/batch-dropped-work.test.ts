import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { SimulatedBatches } from "../../functions/adapters/simulated/batches.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { Faults } from "../../functions/ports/faults.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { tempDir } from "../helpers/files.ts";
import { warningsLogger } from "../helpers/llm.ts";

const dirs: { cleanup: () => void }[] = [];
afterAll(() => {
  for (const dir of dirs) dir.cleanup();
});

describe("batch mode, work dropped while the batches ran", () => {
  it("is found by the idle sweep, and its new requests go through batches too before the run ends", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const shard = writeBenchShard(dir.path, { samples: 6, name: "dropped" });
    // One evolve step fails after its state write, before it sends the judge message: its retry finds the
    // state moved on and has nothing to do, so that sample's work is dropped (the sweep's case). Evolve steps
    // that write state run once their batch is applied, so the drop happens while the batches run.
    let dropped = false;
    const faults: Faults = {
      point: (name) => {
        if (name === "evolve:after-state-write" && !dropped) {
          dropped = true;
          throw new Error("injected: crash after the state write");
        }
      },
      duplicate: () => false,
    };
    const { logger, warnings } = warningsLogger();
    const out = join(dir.path, "out");
    const result = await runLocal({
      shards: [shard],
      out,
      run: "d",
      concurrency: 2,
      config: { rounds: 2, mode: "batch" },
      llm: new SimulatedLlm(),
      batch: { api: new SimulatedBatches(), codec: new OpenAiBatchCodec() },
      batchMinPollMs: 5,
      batchMaxPollMs: 20,
      faults,
      logger,
    });
    expect(dropped).toBe(true);
    expect(warnings).toContain("re-enqueued dropped work");
    expect(result.unfinished).toEqual([]);
    expect(existsSync(join(out, "reports/d/dropped.json"))).toBe(true);
    expect(result.reports[0]?.counts).toMatchObject({ lines: 6, failed: 0, addsUp: true });
  });
});
