import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import {
  AUTO_MAX_CONCURRENCY,
  AUTO_MIN_CONCURRENCY,
  CallPacing,
} from "../../functions/runtime/call-pacing.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { tempDir } from "../helpers/files.ts";
import { answerOf, textRequest } from "../helpers/llm.ts";

/** An Llm answering after `ms`, billed `promptTokens`. */
const slow = (ms: number, promptTokens: number): Llm => ({
  complete: async () => {
    await new Promise((resolve) => setTimeout(resolve, ms));
    return answerOf(promptTokens);
  },
});

/** Counts the calls in flight at once. */
class PeakLlm implements Llm {
  peak = 0;
  #now = 0;
  readonly #inner: Llm;
  constructor(inner: Llm) {
    this.#inner = inner;
  }
  async complete(request: LlmRequest): Promise<LlmResponse> {
    this.#now += 1;
    this.peak = Math.max(this.peak, this.#now);
    try {
      return await this.#inner.complete(request);
    } finally {
      this.#now -= 1;
    }
  }
}

describe("CallPacing", () => {
  it("sizes the calls in flight from a model's limit and what its calls took, twice over", async () => {
    // 900 prompt tokens + max_tokens 100: 1,000 tokens a call, about 0.2 s each.
    const pacing = new CallPacing(slow(200, 900));
    const limits = { tokensPerMinute: 1_800_000, requestsPerMinute: null };
    // Nothing answered yet: the floor.
    expect(pacing.concurrency(() => limits)).toBe(AUTO_MIN_CONCURRENCY);
    await Promise.all(Array.from({ length: 5 }, () => pacing.complete(textRequest)));
    // 30,000 tokens/s x ~0.2 s / 1,000 tokens = 6 in flight, x 2 = about 12.
    const sized = pacing.concurrency(() => limits);
    expect(sized).toBeGreaterThanOrEqual(12);
    expect(sized).toBeLessThanOrEqual(14);
    // A tighter request limit wins: 600 a minute is 10/s, 2 in flight, 4 with the headroom: the floor.
    expect(pacing.concurrency(() => ({ tokensPerMinute: 1_800_000, requestsPerMinute: 600 }))).toBe(
      AUTO_MIN_CONCURRENCY,
    );
    // No limit known for the model: nothing to size from.
    expect(pacing.concurrency(() => null)).toBe(AUTO_MIN_CONCURRENCY);
    expect(pacing.concurrency(() => ({ tokensPerMinute: null, requestsPerMinute: null }))).toBe(
      AUTO_MIN_CONCURRENCY,
    );
    // The provider's headers pass through to the governor outside.
    const headers = { remainingTokens: 5, remainingRequests: 1, limitTokens: 10, limitRequests: 2 };
    const reportingLlm: Llm & { lastRateLimit: () => typeof headers } = {
      ...slow(0, 1),
      lastRateLimit: () => headers,
    };
    const reporting = new CallPacing(reportingLlm);
    expect(reporting.lastRateLimit("gpt-4o-mini")).toEqual(headers);
    // A huge limit: the ceiling.
    expect(pacing.concurrency(() => ({ tokensPerMinute: 1e12, requestsPerMinute: null }))).toBe(
      AUTO_MAX_CONCURRENCY,
    );
  });

  it("lets a local run grow past 8 calls in flight when the limit allows, and not without one", async () => {
    const run = async (options: { concurrency: number | "auto"; tpm?: number; samples: number }) => {
      const dir = tempDir();
      try {
        const shard = writeBenchShard(dir.path, { samples: options.samples, name: "pace" });
        const llm = new PeakLlm(new SimulatedLlm({ latencyMs: 300 }));
        const result = await runLocal({
          shards: [shard],
          out: join(dir.path, "out"),
          run: "pace",
          concurrency: options.concurrency,
          config: { rounds: 1 },
          llm,
          ...(options.tpm === undefined ? {} : { rateLimit: { tokensPerMinute: options.tpm } }),
        });
        expect(result.reports[0]?.counts.addsUp).toBe(true);
        return llm.peak;
      } finally {
        dir.cleanup();
      }
    };
    // About 6,000 tokens a call and 0.3 s: 20M tokens/min calls for about 2 x 17 in flight.
    const sized = await run({ concurrency: "auto", tpm: 20_000_000, samples: 60 });
    expect(sized).toBeGreaterThan(AUTO_MIN_CONCURRENCY);
    expect(sized).toBeLessThanOrEqual(AUTO_MAX_CONCURRENCY);
    // No limit given and none in the answers' headers: the floor.
    expect(await run({ concurrency: "auto", samples: 24 })).toBeLessThanOrEqual(AUTO_MIN_CONCURRENCY);
    // A number is the cap, whatever the limit.
    expect(await run({ concurrency: 3, tpm: 20_000_000, samples: 12 })).toBeLessThanOrEqual(3);
  }, 60_000);
});
