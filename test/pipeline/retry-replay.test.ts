import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { tempDir } from "../helpers/files.ts";

/** The simulated model; the judge answers outside its schema while `broken`. Counts calls. */
class BadJudge implements Llm {
  calls = 0;
  readonly #inner = new SimulatedLlm();
  readonly broken: boolean;
  constructor(broken: boolean) {
    this.broken = broken;
  }
  async complete(request: LlmRequest): Promise<LlmResponse> {
    this.calls += 1;
    const response = await this.#inner.complete(request);
    if (this.broken && request.schemaName === "judge") return { ...response, content: '{"not":"a verdict"}' };
    return response;
  }
}

describe("--retry-failed after a failure caused by the model's answers", () => {
  it("asks the fixed model again instead of replaying the stored invalid answers (which FAILED them again, 0 calls)", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 2, name: "replay" });
      const out = join(dir.path, "out");
      const run = (llm: Llm, retryFailed: boolean) =>
        runLocal({ shards: [shard], out, run: "r", concurrency: 2, config: { rounds: 1 }, llm, retryFailed });
      const first = await run(new BadJudge(true), false);
      expect(first.reports[0]?.counts.failed).toBe(2);
      const fixed = new BadJudge(false);
      const retried = await run(fixed, true);
      // What the README / the exit-4 hint promise: once the cause is fixed, --retry-failed evolves them again.
      // Only the judge is asked again (one call per sample); the evolve answers and the spent tries are reused,
      // and the report counts every paid call once.
      expect({ failed: retried.reports[0]?.counts.failed, calls: fixed.calls }).toEqual({
        failed: 0,
        calls: 2,
      });
      expect(retried.reports[0]?.usage.calls).toBe((first.reports[0]?.usage.calls ?? 0) + 2);
    } finally {
      dir.cleanup();
    }
  }, 60_000);
});
