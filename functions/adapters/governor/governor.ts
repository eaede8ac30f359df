/**
 * What GovernedLlm needs from a rate governor: the in-process RateGovernor and the DynamoRateGovernor shared
 * by every Lambda both offer it. Methods may answer synchronously or with a promise; callers always await.
 */

/** What the provider's `x-ratelimit-remaining-*` headers said; null when absent. */
export interface RemainingSnapshot {
  readonly remainingTokens: number | null;
  readonly remainingRequests: number | null;
  readonly limitTokens?: number | null;
  readonly limitRequests?: number | null;
}

/** The per-minute limits a budget paces, as its governor knows them now (null: not known, not paced). */
export interface KnownLimits {
  readonly tokensPerMinute: number | null;
  readonly requestsPerMinute: number | null;
}

/** Budget taken for one call; settle it once with what the provider actually charged. */
export interface Reservation {
  readonly tokens: number;
  /** When the budget was granted, on the governor's clock. */
  readonly admittedAt: number;
  /**
   * Replaces the reserved tokens by `actualTokens`: the difference goes back to (or comes out of) the
   * budget. `requestCharged: false` also gives the request back (a 429 is not counted as one). Only the
   * first call counts; later ones do nothing.
   */
  settle(actualTokens: number, requestCharged?: boolean): void | Promise<void>;
}

export interface Governor {
  /** The budget for `estimate.tokens` and one request, taken; how long it may take depends on the governor. */
  acquire(estimate: { readonly tokens: number }): Promise<Reservation>;
  /** Writes what the governor holds back (a shared one's refunds), e.g. at the end of an invocation. */
  flush?(): Promise<void>;
  /** The call behind `reservation` was answered 429: refund it, cut the rate once per burst, pause. */
  rateLimited(reservation: Reservation | null, retryAfterMs: number | null): void | Promise<void>;
  /** A call succeeded: the effective rate may grow back. */
  succeeded(): void | Promise<void>;
  /** The provider's headers: believe a lower limit or less remaining than the governor thinks. */
  observeHeaders(snapshot: RemainingSnapshot): void | Promise<void>;
  /**
   * False while no tokens-per-minute budget is paced (one not yet learned from the headers): callers then
   * skip counting a request's tokens and reserve its max_tokens only. Absent means true.
   */
  countsTokens?(): boolean;
}
