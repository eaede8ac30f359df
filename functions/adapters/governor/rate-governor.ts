import { bucketCapacity, refilledLevel, refillWaitMs } from "./bucket-math.ts";
import type {
  Governor,
  Reservation as GovernorReservation,
  KnownLimits,
  RemainingSnapshot,
} from "./governor.ts";

/** Time and timers for the governor; injected so tests can drive a fake clock. */
export interface GovernorClock {
  now(): number;
  /** Calls `fn` after `ms`; the returned function cancels it. */
  schedule(fn: () => void, ms: number): () => void;
}

export const systemGovernorClock: GovernorClock = {
  now: () => performance.now(),
  schedule: (fn, ms) => {
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  },
};

export interface RateGovernorOptions {
  readonly tokensPerMinute?: number;
  readonly requestsPerMinute?: number;
  readonly clock?: GovernorClock;
  /** Factor applied to the effective rate on a 429 (default 0.7). */
  readonly decrease?: number;
  /** Share of the limit the effective rate regains per second of successful calls (default 0.01). */
  readonly increasePerSecond?: number;
  /** The effective rate never drops below this share of the limit (default 0.1). */
  readonly minFactor?: number;
  /** Pause after a 429 that carried no retry-after (default 1000 ms). */
  readonly defaultRetryAfterMs?: number;
  /**
   * A limit not given here is taken from the provider's `x-ratelimit-limit-*` header when one first arrives
   * (default false). Until then that budget is not paced, and requests are not counted for it.
   */
  readonly learnLimits?: boolean;
}

/** Budget taken for one call; this governor settles synchronously. */
export interface Reservation extends GovernorReservation {
  settle(actualTokens: number, requestCharged?: boolean): void;
}

export type { RemainingSnapshot };

export interface GovernorState {
  /** Share of the configured limit currently allowed, 0.1..1. */
  readonly factor: number;
  readonly tokensAvailable: number | null;
  readonly requestsAvailable: number | null;
  readonly waiting: number;
  readonly pausedUntil: number;
}

/** A per-minute budget refilled continuously, like the provider's limiter; its rate scales with `factor`. */
class Bucket {
  limit: number;
  level: number;
  #at: number;
  #factor = 1;

  constructor(limit: number, now: number) {
    this.limit = limit;
    this.level = limit;
    this.#at = now;
  }

  get capacity(): number {
    return bucketCapacity(this.limit, this.#factor);
  }

  refill(now: number): void {
    this.level = refilledLevel(this.level, this.capacity, now - this.#at);
    this.#at = now;
  }

  /** The provider's limit is lower than we were told: from now on use it. */
  lowerLimit(limit: number, now: number): void {
    this.refill(now);
    this.limit = limit;
    this.level = Math.min(this.level, this.capacity);
  }

  setFactor(factor: number, now: number): void {
    this.refill(now);
    this.#factor = factor;
    this.level = Math.min(this.level, this.capacity);
  }

  /** 0 when `cost` fits now; else the ms until it will. A cost above capacity waits for a full bucket. */
  waitMs(cost: number, now: number): number {
    this.refill(now);
    return refillWaitMs(cost, this.level, this.capacity);
  }
}

interface Waiter {
  readonly tokens: number;
  readonly resolve: (reservation: Reservation) => void;
}

/**
 * One budget of tokens and requests per minute for every caller in this process. Callers reserve before
 * calling and settle after; waiters are served first come, first served. Adapts AIMD-style: a 429 cuts the
 * effective rate and pauses, successful calls grow it back slowly.
 */
export class RateGovernor implements Governor {
  readonly #clock: GovernorClock;
  #tokens: Bucket | null;
  #requests: Bucket | null;
  readonly #learnLimits: boolean;
  /** Tokens and requests reserved and not settled yet: what a learned budget starts without. */
  #inFlightTokens = 0;
  #inFlightRequests = 0;
  readonly #decrease: number;
  readonly #increasePerSecond: number;
  readonly #minFactor: number;
  readonly #defaultRetryAfterMs: number;
  readonly #waiters: Waiter[] = [];
  #factor = 1;
  #pausedUntil = Number.NEGATIVE_INFINITY;
  #lastCutAt = Number.NEGATIVE_INFINITY;
  #lastGrowthAt: number;
  #cancelTimer: (() => void) | null = null;

  constructor(options: RateGovernorOptions) {
    this.#clock = options.clock ?? systemGovernorClock;
    const now = this.#clock.now();
    this.#tokens = positive(options.tokensPerMinute) ? new Bucket(options.tokensPerMinute, now) : null;
    this.#requests = positive(options.requestsPerMinute) ? new Bucket(options.requestsPerMinute, now) : null;
    this.#decrease = options.decrease ?? 0.7;
    this.#increasePerSecond = options.increasePerSecond ?? 0.01;
    this.#minFactor = options.minFactor ?? 0.1;
    this.#defaultRetryAfterMs = options.defaultRetryAfterMs ?? 1000;
    this.#learnLimits = options.learnLimits ?? false;
    this.#lastGrowthAt = now;
  }

  /** Whether a tokens-per-minute budget is paced, so requests need a token estimate. */
  countsTokens(): boolean {
    return this.#tokens !== null;
  }

  /** The rates it paces now (the limits, given or learned, times the AIMD factor); null for one not paced. */
  knownLimits(): KnownLimits {
    return {
      tokensPerMinute: this.#tokens?.capacity ?? null,
      requestsPerMinute: this.#requests?.capacity ?? null,
    };
  }

  /** Resolves once both budgets allow `estimate.tokens` and one request, with the budget taken. */
  acquire(estimate: { readonly tokens: number }): Promise<Reservation> {
    const tokens = Math.max(0, Math.ceil(estimate.tokens));
    return new Promise((resolve) => {
      this.#waiters.push({ tokens, resolve });
      this.#pump();
    });
  }

  /**
   * The call behind `reservation` was answered 429: nothing was charged. The rate is cut once per burst
   * (only calls admitted after the last cut can cut again), and everyone pauses for the retry-after.
   */
  rateLimited(reservation: Reservation | null, retryAfterMs: number | null): void {
    const now = this.#clock.now();
    if (reservation === null || reservation.admittedAt > this.#lastCutAt) {
      this.#setFactor(Math.max(this.#minFactor, this.#factor * this.#decrease), now);
      this.#lastCutAt = now;
    }
    const pause = retryAfterMs !== null && retryAfterMs >= 0 ? retryAfterMs : this.#defaultRetryAfterMs;
    this.#pausedUntil = Math.max(this.#pausedUntil, now + pause);
    // Growth restarts after the pause, so the time spent waiting does not count as success.
    this.#lastGrowthAt = Math.max(this.#lastGrowthAt, this.#pausedUntil);
    // Given back only now: a refund that pumped before the pause was set would admit waiters into the 429.
    reservation?.settle(0, false);
    this.#pump();
  }

  /** A call succeeded: the effective rate grows by `increasePerSecond` of the limit per second since the last one. */
  succeeded(): void {
    const now = this.#clock.now();
    // Capped, so one success after a long idle spell does not restore the full rate at once.
    const seconds = Math.min(5, Math.max(0, now - this.#lastGrowthAt) / 1000);
    this.#lastGrowthAt = Math.max(this.#lastGrowthAt, now);
    if (this.#factor < 1 && seconds > 0) {
      this.#setFactor(Math.min(1, this.#factor + this.#increasePerSecond * seconds), now);
      this.#pump();
    }
  }

  /**
   * The provider knows best: when it reports a lower limit or less left than we think, believe it. When it
   * reports more left than we think, less everything this process has in flight (those calls may not have
   * reached it, or may be charged when they end), believe that too: a provider whose limiter charges the tokens
   * used rather than max_tokens leaves more than our reservations say. With `learnLimits`, a limit it reports
   * that was not given becomes a budget, holding what it reports remaining less what is in flight.
   */
  observeHeaders(snapshot: RemainingSnapshot): void {
    const now = this.#clock.now();
    let moved = false;
    if (this.#learnLimits) {
      const learned = (limit: number | null | undefined, remaining: number | null, inFlight: number) => {
        if (limit === null || limit === undefined || !positive(limit)) return null;
        const bucket = new Bucket(limit, now);
        bucket.setFactor(this.#factor, now);
        bucket.level = Math.min(bucket.capacity, remaining ?? limit) - inFlight;
        moved = true;
        return bucket;
      };
      this.#tokens ??= learned(snapshot.limitTokens, snapshot.remainingTokens, this.#inFlightTokens);
      this.#requests ??= learned(snapshot.limitRequests, snapshot.remainingRequests, this.#inFlightRequests);
    }
    for (const [bucket, limit] of [
      [this.#tokens, snapshot.limitTokens ?? null],
      [this.#requests, snapshot.limitRequests ?? null],
    ] as const) {
      if (bucket !== null && limit !== null && limit > 0 && limit < bucket.limit)
        bucket.lowerLimit(limit, now);
    }
    for (const [bucket, remaining, inFlight] of [
      [this.#tokens, snapshot.remainingTokens, this.#inFlightTokens],
      [this.#requests, snapshot.remainingRequests, this.#inFlightRequests],
    ] as const) {
      if (bucket === null || remaining === null) continue;
      bucket.refill(now);
      if (remaining < bucket.level) {
        bucket.level = Math.max(0, remaining);
        moved = true;
      } else if (remaining - inFlight > bucket.level) {
        bucket.level = Math.min(bucket.capacity, remaining - inFlight);
        moved = true;
      }
    }
    if (moved) this.#pump();
  }

  state(): GovernorState {
    const now = this.#clock.now();
    this.#tokens?.refill(now);
    this.#requests?.refill(now);
    return {
      factor: this.#factor,
      tokensAvailable: this.#tokens?.level ?? null,
      requestsAvailable: this.#requests?.level ?? null,
      waiting: this.#waiters.length,
      pausedUntil: this.#pausedUntil,
    };
  }

  #setFactor(factor: number, now: number): void {
    this.#factor = factor;
    this.#tokens?.setFactor(factor, now);
    this.#requests?.setFactor(factor, now);
  }

  /** Admits waiters from the head while they fit; otherwise sets one timer for when the head will. */
  #pump(): void {
    this.#cancelTimer?.();
    this.#cancelTimer = null;
    while (this.#waiters.length > 0) {
      const head = this.#waiters[0];
      if (head === undefined) return;
      const now = this.#clock.now();
      const wait = Math.max(
        this.#pausedUntil - now,
        this.#tokens?.waitMs(head.tokens, now) ?? 0,
        this.#requests?.waitMs(1, now) ?? 0,
      );
      if (wait > 0) {
        this.#cancelTimer = this.#clock.schedule(() => {
          this.#cancelTimer = null;
          this.#pump();
        }, Math.ceil(wait));
        return;
      }
      this.#waiters.shift();
      head.resolve(this.#reserve(head.tokens, now));
    }
  }

  #reserve(tokens: number, now: number): Reservation {
    if (this.#tokens) this.#tokens.level -= tokens;
    if (this.#requests) this.#requests.level -= 1;
    this.#inFlightTokens += tokens;
    this.#inFlightRequests += 1;
    let settled = false;
    return {
      tokens,
      admittedAt: now,
      settle: (actualTokens: number, requestCharged = true) => {
        if (settled) return;
        settled = true;
        this.#inFlightTokens -= tokens;
        this.#inFlightRequests -= 1;
        const at = this.#clock.now();
        if (this.#tokens !== null) {
          this.#tokens.refill(at);
          this.#tokens.level = Math.min(this.#tokens.capacity, this.#tokens.level + tokens - actualTokens);
        }
        if (this.#requests !== null && !requestCharged) {
          this.#requests.refill(at);
          this.#requests.level = Math.min(this.#requests.capacity, this.#requests.level + 1);
        }
        if (actualTokens < tokens || !requestCharged) this.#pump();
      },
    };
  }
}

function positive(value: number | undefined): value is number {
  return value !== undefined && Number.isFinite(value) && value > 0;
}
