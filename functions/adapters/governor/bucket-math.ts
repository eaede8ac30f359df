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
