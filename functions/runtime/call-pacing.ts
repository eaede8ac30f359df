import { callsInFlight } from "../adapters/governor/bucket-math.ts";
import { lastRateLimitOf, type ReportsRateLimit } from "../adapters/governor/governed-llm.ts";
import type { KnownLimits, RemainingSnapshot } from "../adapters/governor/governor.ts";
import type { Llm, LlmRequest, LlmResponse } from "../ports/llm.ts";

/** Calls in flight while no limit or no answered call tells more (the `--concurrency` of earlier versions). */
export const AUTO_MIN_CONCURRENCY = 8;
/** The most calls in flight `--concurrency auto` asks for; a number given to `--concurrency` may be more. */
export const AUTO_MAX_CONCURRENCY = 128;
/** Headroom over the average: latencies spread (1-3 s in the benchmarks), and the governor paces the excess. */
const HEADROOM = 2;
/** Weight of the newest call in the running averages. */
const ALPHA = 0.1;

interface ModelPace {
  /** Running averages of the answered calls: ms from sending to the answer, and the tokens a call reserves. */
  latencyMs: number;
  tokens: number;
}

/**
 * `--concurrency auto`: how many calls a local run keeps in flight, sized by the stack's formula for its
 * Lambdas (callsInFlight) but from what the calls so far took: per model, the calls in flight its limits
 * allow at its average latency and tokens per call, twice over; summed over the models, between AUTO_MIN_CONCURRENCY and AUTO_MAX_CONCURRENCY. The rate governor
 * paces whatever this lets through, so too many costs only waiting calls, and too few leaves budget unused.
 * Wraps the model inside the governor, so the time a call waits for budget is not counted as its latency.
 */
export class CallPacing implements Llm, ReportsRateLimit {
  readonly #inner: Llm;
  readonly #paces = new Map<string, ModelPace>();

  constructor(inner: Llm) {
    this.#inner = inner;
  }

  /** The provider's rate-limit headers pass through: the governor outside learns and corrects from them. */
  lastRateLimit(model: string): RemainingSnapshot | null {
    return lastRateLimitOf(this.#inner, model);
  }

  async complete(request: LlmRequest): Promise<LlmResponse> {
    const started = performance.now();
    const response = await this.#inner.complete(request);
    const latencyMs = performance.now() - started;
    // What the call held of the budget: its prompt as billed plus its max_tokens.
    const tokens = response.usage.promptTokens + request.maxTokens;
    const pace = this.#paces.get(request.model);
    if (pace === undefined) this.#paces.set(request.model, { latencyMs, tokens });
    else {
      pace.latencyMs += ALPHA * (latencyMs - pace.latencyMs);
      pace.tokens += ALPHA * (tokens - pace.tokens);
    }
    return response;
  }

  /** Calls in flight that keep every model with a known limit at it (see the class comment). */
  concurrency(limitsOf: (model: string) => KnownLimits | null): number {
    let total = 0;
    for (const [model, pace] of this.#paces) {
      const limits = limitsOf(model);
      if (limits === null) continue;
      const inFlight = callsInFlight(limits, {
        tokensPerCall: pace.tokens,
        secondsPerCall: pace.latencyMs / 1000,
      });
      if (Number.isFinite(inFlight)) total += HEADROOM * inFlight;
    }
    return Math.min(AUTO_MAX_CONCURRENCY, Math.max(AUTO_MIN_CONCURRENCY, Math.ceil(total)));
  }
}
