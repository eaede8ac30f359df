import { describe, expect, it } from "vitest";
import { GovernedLlm, GovernedPerModel } from "../../functions/adapters/governor/governed-llm.ts";
import {
  type GovernorClock,
  RateGovernor,
  type Reservation,
} from "../../functions/adapters/governor/rate-governor.ts";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { startSimulator } from "../../functions/adapters/simulated/server.ts";
import { LlmCallError } from "../../functions/ports/errors.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { answerOf, textRequest } from "../helpers/llm.ts";

/** A clock whose timers fire only when the test advances time. */
class FakeClock implements GovernorClock {
  #now = 0;
  #timers: { at: number; fn: () => void; live: boolean }[] = [];
  now(): number {
    return this.#now;
  }
  schedule(fn: () => void, ms: number): () => void {
    const timer = { at: this.#now + ms, fn, live: true };
    this.#timers.push(timer);
    return () => {
      timer.live = false;
    };
  }
  /** Moves time forward, firing due timers in order, and lets resolved promises run. */
  async advance(ms: number): Promise<void> {
    const end = this.#now + ms;
    for (;;) {
      const due = this.#timers
        .filter((t) => t.live && t.at <= end)
        .sort((a, b) => a.at - b.at)
        .at(0);
      if (due === undefined) break;
      this.#now = Math.max(this.#now, due.at);
      due.live = false;
      due.fn();
      await flush();
    }
    this.#now = end;
    this.#timers = this.#timers.filter((t) => t.live);
    await flush();
  }
}

const flush = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

/** Whether `promise` has resolved yet: asked after the fake clock moves. */
function resolvedYet(promise: Promise<unknown>): () => boolean {
  let resolved = false;
  void promise.then(() => {
    resolved = true;
  });
  return () => resolved;
}

describe("RateGovernor", () => {
  it("never grants more than the token budget over any minute", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 6000, clock });
    const granted: { at: number; tokens: number }[] = [];
    for (let i = 0; i < 40; i++) {
      void governor
        .acquire({ tokens: 1000 })
        .then((r) => granted.push({ at: clock.now(), tokens: r.tokens }));
    }
    await flush();
    // The bucket starts full: 6 at once, then one every 10 s.
    expect(granted).toHaveLength(6);
    await clock.advance(120_000);
    expect(granted).toHaveLength(18);
    for (const start of granted.map((g) => g.at)) {
      const inWindow = granted.filter((g) => g.at > start && g.at <= start + 60_000);
      expect(inWindow.reduce((sum, g) => sum + g.tokens, 0)).toBeLessThanOrEqual(6000);
    }
    expect(granted.at(-1)?.at).toBe(120_000);
  });

  it("limits requests per minute too", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ requestsPerMinute: 2, clock });
    let granted = 0;
    for (let i = 0; i < 5; i++) void governor.acquire({ tokens: 1 }).then(() => granted++);
    await flush();
    expect(granted).toBe(2);
    await clock.advance(30_000);
    expect(granted).toBe(3);
  });

  it("serves waiters first come, first served, even when a later one would fit", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 1000, clock });
    const order: string[] = [];
    await governor.acquire({ tokens: 1000 });
    void governor.acquire({ tokens: 800 }).then(() => order.push("big"));
    void governor.acquire({ tokens: 10 }).then(() => order.push("small"));
    await clock.advance(1000);
    // 16 tokens refilled: enough for "small", but "big" is first in line.
    expect(order).toEqual([]);
    await clock.advance(60_000);
    expect(order).toEqual(["big", "small"]);
  });

  it("settle gives unused tokens back and wakes the queue", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 1000, clock });
    const first = await governor.acquire({ tokens: 1000 });
    let second: Reservation | null = null;
    void governor.acquire({ tokens: 500 }).then((r) => {
      second = r;
    });
    await flush();
    expect(second).toBeNull();
    first.settle(400);
    await flush();
    expect(second).not.toBeNull();
    expect(governor.state().tokensAvailable).toBeCloseTo(100, 5);
    // A second settle of the same reservation changes nothing.
    first.settle(0);
    expect(governor.state().tokensAvailable).toBeCloseTo(100, 5);
  });

  it("a 429 cuts the rate to 70%, pauses for retry-after, and success grows it back slowly", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 60_000, clock });
    const reservation = await governor.acquire({ tokens: 100 });
    governor.rateLimited(reservation, 2000);
    expect(governor.state().factor).toBeCloseTo(0.7, 10);
    // The 429 was not charged: its tokens are back.
    expect(governor.state().tokensAvailable).toBeCloseTo(42_000, 5);
    const granted = resolvedYet(governor.acquire({ tokens: 1 }));
    await clock.advance(1999);
    expect(granted()).toBe(false);
    await clock.advance(1);
    expect(granted()).toBe(true);
    // Another 429 from a call admitted before the cut does not cut again.
    governor.rateLimited(reservation, 0);
    expect(governor.state().factor).toBeCloseTo(0.7, 10);
    // 10 s of successes: +1% of the limit per second.
    for (let i = 0; i < 10; i++) {
      await clock.advance(1000);
      governor.succeeded();
    }
    expect(governor.state().factor).toBeCloseTo(0.8, 5);
    for (let i = 0; i < 100; i++) {
      await clock.advance(1000);
      governor.succeeded();
    }
    expect(governor.state().factor).toBe(1);
  });

  it("a 429's refund does not let a queued call through the pause it starts", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 1000, clock });
    const first = await governor.acquire({ tokens: 1000 });
    const waiter = resolvedYet(governor.acquire({ tokens: 500 }));
    await flush();
    expect(waiter()).toBe(false);
    governor.rateLimited(first, 5000);
    await flush();
    expect(governor.state().pausedUntil).toBe(5000);
    // The refund fits the waiter, but the provider asked for 5 s.
    expect(waiter()).toBe(false);
    await clock.advance(5000);
    expect(waiter()).toBe(true);
  });

  it("never cuts below 10% of the limit", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 1000, clock });
    for (let i = 0; i < 20; i++) {
      const r = await governor.acquire({ tokens: 1 });
      governor.rateLimited(r, 0);
      await clock.advance(1);
    }
    expect(governor.state().factor).toBeCloseTo(0.1, 10);
  });

  it("adopts a lower limit from the headers, never a higher one", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 10_000, clock });
    governor.observeHeaders({ remainingTokens: null, remainingRequests: null, limitTokens: 20_000 });
    expect(governor.state().tokensAvailable).toBe(10_000);
    governor.observeHeaders({ remainingTokens: null, remainingRequests: null, limitTokens: 6000 });
    expect(governor.state().tokensAvailable).toBe(6000);
    await governor.acquire({ tokens: 6000 });
    await clock.advance(30_000);
    // Refilled at the provider's 6000 a minute, not the 10 000 we were told.
    expect(governor.state().tokensAvailable).toBeCloseTo(3000, 5);
  });

  it("believes headers that report less remaining at once, and more only up to its limit", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 10_000, requestsPerMinute: 100, clock });
    governor.observeHeaders({ remainingTokens: 20_000, remainingRequests: 500 });
    expect(governor.state().tokensAvailable).toBe(10_000);
    expect(governor.state().requestsAvailable).toBe(100);
    governor.observeHeaders({ remainingTokens: 1000, remainingRequests: 3 });
    expect(governor.state().tokensAvailable).toBe(1000);
    expect(governor.state().requestsAvailable).toBe(3);
    const granted = resolvedYet(governor.acquire({ tokens: 2000 }));
    await clock.advance(5000);
    expect(granted()).toBe(false);
    await clock.advance(1000);
    expect(granted()).toBe(true);
  });

  it("takes more remaining from a provider that charges less than reserved, less what is still in flight", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 10_000, requestsPerMinute: 100, clock });
    const answered = await governor.acquire({ tokens: 6000 });
    const inFlight = await governor.acquire({ tokens: 3000 });
    expect(governor.state().tokensAvailable).toBe(1000);
    // Charged at its reservation (prompt + max_tokens), as we assume of the provider.
    answered.settle(6000);
    expect(governor.state().tokensAvailable).toBe(1000);
    // The provider charged it its prompt and the tokens it used, 2000, and has not charged the call in flight
    // yet: it reports 8000 left. We hold 8000 less the 3000 still in flight.
    governor.observeHeaders({ remainingTokens: 8000, remainingRequests: 98 });
    expect(governor.state().tokensAvailable).toBe(5000);
    // On requests it agrees with us (98 left, one of them in flight is ours to count): nothing moves.
    expect(governor.state().requestsAvailable).toBe(98);
    // A waiter that did not fit before is admitted at once.
    const granted = resolvedYet(governor.acquire({ tokens: 4000 }));
    await clock.advance(0);
    expect(granted()).toBe(true);
    inFlight.settle(3000);
  });
});

describe("RateGovernor learning its limits from the headers", () => {
  it("paces nothing until a limit is reported, then starts from what remains less what is in flight", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ learnLimits: true, clock });
    expect(governor.countsTokens()).toBe(false);
    const inFlight = await governor.acquire({ tokens: 1500 });
    const answered = await governor.acquire({ tokens: 800 });
    expect(governor.state().tokensAvailable).toBeNull();
    answered.settle(1000);
    governor.observeHeaders({
      remainingTokens: 6000,
      remainingRequests: 40,
      limitTokens: 10_000,
      limitRequests: 50,
    });
    expect(governor.countsTokens()).toBe(true);
    // The call still in flight may not have reached the provider: its reservation is not counted as left.
    expect(governor.state().tokensAvailable).toBe(4500);
    expect(governor.state().requestsAvailable).toBe(39);
    const granted = resolvedYet(governor.acquire({ tokens: 5500 }));
    await clock.advance(5000);
    expect(granted()).toBe(false);
    // 1000 tokens short at 10 000 a minute: 6 s.
    await clock.advance(1000);
    expect(granted()).toBe(true);
    // The call in flight settles at its real charge: what it used beyond its reservation comes off.
    inFlight.settle(2500);
    expect(governor.state().tokensAvailable).toBeCloseTo(-1000, 5);
  });

  it("keeps a limit it was given, and learns only the one it was not", () => {
    const governor = new RateGovernor({ learnLimits: true, tokensPerMinute: 10_000, clock: new FakeClock() });
    governor.observeHeaders({
      remainingTokens: 9000,
      remainingRequests: 70,
      limitTokens: 50_000,
      limitRequests: 100,
    });
    expect(governor.state().tokensAvailable).toBe(9000);
    expect(governor.state().requestsAvailable).toBe(70);
  });

  it("learns nothing without learnLimits, or from a server that sends no limits", () => {
    const told = new RateGovernor({ clock: new FakeClock() });
    told.observeHeaders({ remainingTokens: 100, remainingRequests: 1, limitTokens: 1000, limitRequests: 10 });
    expect(told.state().tokensAvailable).toBeNull();
    const learning = new RateGovernor({ learnLimits: true, clock: new FakeClock() });
    learning.observeHeaders({ remainingTokens: 100, remainingRequests: 1 });
    expect(learning.state().tokensAvailable).toBeNull();
    expect(learning.countsTokens()).toBe(false);
  });
});

const request: LlmRequest = textRequest;

const answer = (promptTokens: number): LlmResponse => answerOf(promptTokens);

describe("GovernedLlm", () => {
  it("reserves prompt + max_tokens, settles with the real prompt, reads headers", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 10_000, clock });
    const inner = {
      complete: async () => answer(20),
      lastRateLimit: () => ({
        limitRequests: null,
        remainingRequests: null,
        limitTokens: 10_000,
        remainingTokens: 9000,
      }),
    } satisfies Llm & { lastRateLimit: () => unknown };
    await new GovernedLlm(inner, governor).complete(request);
    // 10 000 - (20 + 100), then lowered to the server's 9000.
    expect(governor.state().tokensAvailable).toBe(9000);
  });

  it("feeds a 429 into the governor, refunds it, and rethrows", async () => {
    const clock = new FakeClock();
    const governor = new RateGovernor({ tokensPerMinute: 10_000, clock });
    const failing: Llm = {
      complete: async () => {
        throw new LlmCallError("rate limited", { retryable: true, status: 429, retryAfterMs: 500 });
      },
    };
    await expect(new GovernedLlm(failing, governor).complete(request)).rejects.toBeInstanceOf(LlmCallError);
    const state = governor.state();
    expect(state.factor).toBeCloseTo(0.7, 10);
    expect(state.tokensAvailable).toBeCloseTo(7000, 5);
    expect(state.pausedUntil).toBe(500);
  });
});

describe("GovernedLlm with limits learned from the simulator's headers", () => {
  it("reserves max_tokens only until the limit is known, then paces a burst without 429s", async () => {
    const tokensPerMinute = 600_000;
    const sim = await startSimulator({ tokensPerMinute });
    try {
      const governor = new RateGovernor({ learnLimits: true });
      const llm = new GovernedLlm(
        new OpenAiLlm({ apiKey: "test", baseURL: sim.url, maxRetries: 0 }),
        governor,
      );
      // One call teaches the governor the limit; then 64 calls of ~10 000 tokens, ~40 000 over the bucket.
      await llm.complete({ ...request, seed: 999 });
      expect(governor.countsTokens()).toBe(true);
      const started = performance.now();
      await Promise.all(
        Array.from({ length: 64 }, (_, i) => llm.complete({ ...request, maxTokens: 9_950, seed: i })),
      );
      const stats = sim.stats();
      expect(stats.rateLimited).toBe(0);
      expect(stats.succeeded).toBe(65);
      expect(performance.now() - started).toBeGreaterThan(3000);
    } finally {
      await sim.close();
    }
  });
});

describe("GovernedPerModel", () => {
  it("keeps one budget per model, each learned from that model's own headers", async () => {
    const clock = new FakeClock();
    const limits: Record<string, number> = { small: 5000, large: 100_000 };
    const inner = {
      complete: async () => answer(20),
      lastRateLimit: (model: string) => ({
        limitRequests: null,
        remainingRequests: null,
        limitTokens: limits[model] ?? null,
        // Limits only: a remaining figure that never moved would refill the budget on every answer.
        remainingTokens: null,
      }),
    } satisfies Llm & { lastRateLimit: (model: string) => unknown };
    const governors = new Map<string, RateGovernor>();
    const llm = new GovernedPerModel(inner, (model) => {
      const governor = new RateGovernor({ learnLimits: true, clock });
      governors.set(model, governor);
      return governor;
    });
    await llm.complete({ ...request, model: "small" });
    await llm.complete({ ...request, model: "large" });
    expect(governors.get("small")?.state().tokensAvailable).toBe(5000);
    expect(governors.get("large")?.state().tokensAvailable).toBe(100_000);
    // The small model's budget is spent: its next call waits, the large model's does not.
    await llm.complete({ ...request, model: "small", maxTokens: 4000 });
    let small = false;
    void llm.complete({ ...request, model: "small", maxTokens: 4000 }).then(() => {
      small = true;
    });
    // Answered with the clock standing still (it would hang here if the budgets were one).
    await llm.complete({ ...request, model: "large", maxTokens: 2000 });
    expect(small).toBe(false);
    await clock.advance(120_000);
    expect(small).toBe(true);
  });
});

describe("GovernedLlm against the simulator's limiter", () => {
  it("keeps a burst above the tokens-per-minute limit free of 429s by waiting", async () => {
    const tokensPerMinute = 600_000;
    const sim = await startSimulator({ tokensPerMinute });
    try {
      const llm = new GovernedLlm(
        new OpenAiLlm({ apiKey: "test", baseURL: sim.url, maxRetries: 0 }),
        new RateGovernor({ tokensPerMinute }),
      );
      const started = performance.now();
      // 64 calls of ~10 000 tokens each: ~40 000 over the full bucket, i.e. ~4 s of refill.
      await Promise.all(
        Array.from({ length: 64 }, (_, i) => llm.complete({ ...request, maxTokens: 9_950, seed: i })),
      );
      const elapsed = performance.now() - started;
      const stats = sim.stats();
      expect(stats.rateLimited).toBe(0);
      expect(stats.succeeded).toBe(64);
      expect(elapsed).toBeGreaterThan(3000);
    } finally {
      await sim.close();
    }
  });
});
