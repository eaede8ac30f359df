import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { SimulatedBatches } from "../../functions/adapters/simulated/batches.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { EndpointUnreachableError } from "../../functions/ports/errors.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { tempDir } from "../helpers/files.ts";
import { batchApiDown } from "../helpers/llm.ts";

describe("batch mode with an endpoint that cannot be reached", () => {
  it("stops the run with the reason and its remedy (exit 3), as online mode does, not a rejected run (exit 1)", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 2, name: "b" });
      const result = await runLocal({
        shards: [shard],
        out: join(dir.path, "out"),
        run: "r",
        concurrency: 2,
        config: { rounds: 1, dryRun: true, mode: "batch" },
        llm: new SimulatedLlm(),
        batch: {
          api: batchApiDown(
            () =>
              new EndpointUnreachableError("cannot reach the LLM endpoint (ECONNREFUSED): Connection error."),
            new SimulatedBatches(),
          ),
          codec: new OpenAiBatchCodec(),
        },
        batchMinPollMs: 1,
        batchMaxPollMs: 5,
      });
      expect(result.stoppedFor).toMatch(/cannot reach the LLM endpoint/);
      expect(result.stoppedRemedy).toMatch(/check the endpoint/);
    } finally {
      dir.cleanup();
    }
  }, 60_000);
});
