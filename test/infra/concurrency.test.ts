import { describe, expect, it } from "vitest";
import { MAX_CONCURRENCY, MIN_CONCURRENCY, stageConcurrency } from "../../lib/concurrency.ts";

const defaults = { tokensPerMinute: 2_000_000, requestsPerMinute: 5_000 };

describe("stageConcurrency", () => {
  it("is floor(tokens per second x seconds per call / tokens per call) when tokens bind", () => {
    // 33_333 tok/s x 10 s / 7_000 = 47.6 calls in flight; / 3_500 = 95.2.
    expect(stageConcurrency(defaults, { tokensPerCall: 7_000, secondsPerCall: 10 })).toBe(47);
    expect(stageConcurrency(defaults, { tokensPerCall: 3_500, secondsPerCall: 10 })).toBe(95);
  });

  it("takes the request limit when it is the tighter one", () => {
    // 60 rpm = 1 req/s x 10 s = 10 calls, although tokens would allow 47.
    const limits = { tokensPerMinute: 2_000_000, requestsPerMinute: 60 };
    expect(stageConcurrency(limits, { tokensPerCall: 7_000, secondsPerCall: 10 })).toBe(10);
  });

  it("splits the limit by share and divides by the batch size (records in flight per invocation)", () => {
    // The stack's evolve defaults: share 2/3, batch 2 -> 31.7 calls -> 15 invocations.
    expect(
      stageConcurrency(defaults, {
        tokensPerCall: 7_000,
        secondsPerCall: 10,
        share: 7_000 / 10_500,
        batchSize: 2,
      }),
    ).toBe(15);
    // judge: share 1/3, batch 5 -> 31.7 calls -> 6 invocations.
    expect(
      stageConcurrency(defaults, {
        tokensPerCall: 3_500,
        secondsPerCall: 10,
        share: 3_500 / 10_500,
        batchSize: 5,
      }),
    ).toBe(6);
  });

  it("clamps to what an SQS event source accepts", () => {
    expect(
      stageConcurrency(
        { tokensPerMinute: 10_000, requestsPerMinute: 100 },
        { tokensPerCall: 7_000, secondsPerCall: 10 },
      ),
    ).toBe(MIN_CONCURRENCY);
    expect(
      stageConcurrency(
        { tokensPerMinute: 1e12, requestsPerMinute: 1e9 },
        { tokensPerCall: 100, secondsPerCall: 10 },
      ),
    ).toBe(MAX_CONCURRENCY);
    expect([MIN_CONCURRENCY, MAX_CONCURRENCY]).toEqual([2, 1000]);
  });

  it("rejects nonsense inputs instead of producing NaN", () => {
    expect(() =>
      stageConcurrency({ tokensPerMinute: 0, requestsPerMinute: 1 }, { tokensPerCall: 1, secondsPerCall: 1 }),
    ).toThrow(RangeError);
    expect(() => stageConcurrency(defaults, { tokensPerCall: 1, secondsPerCall: 1, share: 1.5 })).toThrow(
      RangeError,
    );
    expect(() => stageConcurrency(defaults, { tokensPerCall: 1, secondsPerCall: 1, batchSize: 0.5 })).toThrow(
      RangeError,
    );
    expect(() => stageConcurrency(defaults, { tokensPerCall: Number.NaN, secondsPerCall: 1 })).toThrow(
      RangeError,
    );
  });
});
