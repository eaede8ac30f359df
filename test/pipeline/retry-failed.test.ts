import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { localRedriveFailed } from "../../bin/commands/redrive.ts";
import { localStatus } from "../../bin/commands/status.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { LlmCallError } from "../../functions/ports/errors.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { tempDir } from "../helpers/files.ts";

const dirs: { cleanup: () => void }[] = [];
afterAll(() => {
  for (const dir of dirs) dir.cleanup();
});

/** The simulated model, counting the calls it answers by schema; the judge refuses for good when told to. */
class JudgeOutage implements Llm {
  readonly answered = new Map<string, number>();
  readonly #inner = new SimulatedLlm();
  readonly judgeDown: boolean;
  constructor(judgeDown: boolean) {
    this.judgeDown = judgeDown;
  }
  async complete(request: LlmRequest): Promise<LlmResponse> {
    if (this.judgeDown && request.schemaName === "judge")
      throw new LlmCallError("LLM call failed with HTTP 400: the judge is down", {
        retryable: false,
        status: 400,
      });
    const response = await this.#inner.complete(request);
    const kind = request.schemaName.startsWith("evolve") ? "evolve" : request.schemaName;
    this.answered.set(kind, (this.answered.get(kind) ?? 0) + 1);
    return response;
  }
}

describe("--retry-failed", () => {
  it("starts FAILED samples again from their seed, reusing the answers stored before the failure", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const shard = writeBenchShard(dir.path, { samples: 3, name: "retry" });
    const out = join(dir.path, "out");
    const run = (llm: Llm, retryFailed: boolean) =>
      runLocal({ shards: [shard], out, run: "r", concurrency: 2, config: { rounds: 1 }, llm, retryFailed });

    // Every judge call fails for good: each sample FAILED after its (paid) round-1 evolve call.
    const down = new JudgeOutage(true);
    const first = await run(down, false);
    expect(first.reports[0]?.counts).toMatchObject({ lines: 3, evolved: 0, failed: 3 });
    expect(down.answered.get("evolve")).toBe(3);
    const failedUsage = first.reports[0]?.usage.calls;

    // The same command again changes nothing: FAILED is final unless asked.
    const again = new JudgeOutage(false);
    expect((await run(again, false)).reports[0]?.counts).toMatchObject({ failed: 3 });
    expect(again.answered.size).toBe(0);

    // Fixed, with --retry-failed: the evolve answers are found again; only the judge is asked.
    const fixed = new JudgeOutage(false);
    const retried = await run(fixed, true);
    expect(retried.reports[0]?.counts).toMatchObject({ lines: 3, failed: 0, addsUp: true });
    expect(retried.problems).toEqual([]);
    expect(fixed.answered.get("evolve") ?? 0).toBe(0);
    expect(fixed.answered.get("judge")).toBe(3);
    // The report counts each paid call once: the first run's evolve calls and the judge calls now.
    expect(retried.reports[0]?.usage.calls).toBe((failedUsage ?? 0) + 3);
    const training = readFileSync(join(out, "evolved/r/retry.jsonl"), "utf8").trim().split("\n");
    expect(training.length).toBe(retried.reports[0]?.trainingRecords);
  });

  it("`mmevol redrive --failed --out` reopens them in the state, and the next plain run evolves them", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const shard = writeBenchShard(dir.path, { samples: 2, name: "redrive" });
    const out = join(dir.path, "out");
    const run = (llm: Llm) =>
      runLocal({ shards: [shard], out, run: "r", concurrency: 2, config: { rounds: 1 }, llm });
    expect((await run(new JudgeOutage(true))).reports[0]?.counts).toMatchObject({ failed: 2 });
    const status = await localStatus({ out, stuckAfterMs: 60_000 });
    expect(status.lines.join("\n")).toContain("--retry-failed");

    const redriven = await localRedriveFailed({ out });
    expect(redriven.lines[0]).toMatch(
      /^2 sample\(s\) start again from their seed \(FAILED, or passed through for an unusable image\)/,
    );
    expect(redriven.lines[1]).toBe("  r/redrive: 2 sample(s), line(s) 1, 2");
    expect(redriven.lines.at(-1)).toContain(`mmevol run ... --out ${out}`);
    expect((await localStatus({ out, stuckAfterMs: 60_000 })).shards[0]).toMatchObject({
      finalized: false,
      pending: 2,
      counts: { INGESTED: 2, FAILED: 0 },
    });

    const fixed = new JudgeOutage(false);
    const second = await run(fixed);
    expect(second.reports[0]?.counts).toMatchObject({ lines: 2, failed: 0, addsUp: true });
    expect(fixed.answered.get("evolve") ?? 0).toBe(0);
    expect(fixed.answered.get("judge")).toBe(2);
    expect((await localRedriveFailed({ out })).lines).toEqual([
      "no FAILED samples, and none passed through for an unusable image: nothing to retry",
    ]);
  });
});
