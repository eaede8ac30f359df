/**
 * The arithmetic of a per-minute budget refilled continuously, like the provider's limiter. Shared by the
 * in-process RateGovernor and the DynamoDB one, so both admit exactly the same calls.
 */

export const MS_PER_MINUTE = 60_000;

/** What the bucket holds when full: the limit scaled by the AIMD factor. */
export function bucketCapacity(limit: number, factor: number): number {
  return limit * factor;
}

/** The level `elapsedMs` after `level`, refilling at `capacity` per minute and never above `capacity`. */
export function refilledLevel(level: number, capacity: number, elapsedMs: number): number {
  return Math.min(capacity, level + (Math.max(0, elapsedMs) * capacity) / MS_PER_MINUTE);
}

/**
 * 0 when `cost` fits in `level` now; else the ms of refill until it will. A cost above capacity waits for a
 * full bucket (it could never fit otherwise).
 */
export function refillWaitMs(cost: number, level: number, capacity: number): number {
  const need = Math.min(cost, capacity);
  return need <= level ? 0 : ((need - level) * MS_PER_MINUTE) / capacity;
}

/**
 * Calls in flight that keep a per-minute budget busy: its tokens per second x seconds per call / tokens per
 * call, or its requests per second x seconds per call when that is fewer. A limit that is null (not paced), or a
 * call of no tokens, does not bind; with neither binding the answer is Infinity. The stack sizes its Lambdas by
 * it (lib/concurrency.ts), a local run its calls in flight (CallPacing).
 */
export function callsInFlight(
  limits: { readonly tokensPerMinute: number | null; readonly requestsPerMinute: number | null },
  call: { readonly tokensPerCall: number; readonly secondsPerCall: number },
): number {
  const byTokens =
    limits.tokensPerMinute === null || !(call.tokensPerCall > 0)
      ? Number.POSITIVE_INFINITY
      : ((limits.tokensPerMinute / 60) * call.secondsPerCall) / call.tokensPerCall;
  const byRequests =
    limits.requestsPerMinute === null
      ? Number.POSITIVE_INFINITY
      : (limits.requestsPerMinute / 60) * call.secondsPerCall;
  return Math.min(byTokens, byRequests);
}
