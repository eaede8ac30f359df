import { callsInFlight } from "../functions/adapters/governor/bucket-math.ts";

/** The model provider's rate limits for one API key. */
export interface RateLimits {
  readonly tokensPerMinute: number;
  readonly requestsPerMinute: number;
}

/** What one LLM call of a stage costs against those limits. */
export interface CallProfile {
  /** Estimated prompt tokens plus the `max_tokens` reservation: the provider charges the reservation up front. */
  readonly tokensPerCall: number;
  /** How long one call holds a slot, seconds. */
  readonly secondsPerCall: number;
  /** Records per Lambda invocation; the batch processor runs them in parallel, so each is one call in flight. */
  readonly batchSize?: number;
  /** Fraction of the key's limits this stage may use (stages sharing one key split it). Default 1. */
  readonly share?: number;
}

export const MIN_CONCURRENCY = 2;
export const MAX_CONCURRENCY = 1000;

/**
 * Lambda concurrency (SQS event source `maxConcurrency`) that keeps a stage under the model's rate limit:
 * calls in flight = limit per second x seconds per call / cost per call, taking the tighter of the token and
 * request limits; divided by the batch size because each invocation has that many calls in flight. Clamped to
 * what an SQS event source accepts (2..1000).
 */
export function stageConcurrency(limits: RateLimits, call: CallProfile): number {
  const share = call.share ?? 1;
  const batchSize = call.batchSize ?? 1;
  if (!(share > 0 && share <= 1)) throw new RangeError(`share must be in (0, 1], got ${share}`);
  if (!(limits.tokensPerMinute > 0 && limits.requestsPerMinute > 0)) {
    throw new RangeError("rate limits must be positive");
  }
  if (!(call.tokensPerCall > 0 && call.secondsPerCall > 0 && Number.isInteger(batchSize) && batchSize >= 1)) {
    throw new RangeError(
      "tokensPerCall and secondsPerCall must be positive and batchSize a positive integer",
    );
  }
  const inFlight = callsInFlight(
    { tokensPerMinute: limits.tokensPerMinute * share, requestsPerMinute: limits.requestsPerMinute * share },
    call,
  );
  const invocations = Math.floor(inFlight / batchSize);
  return Math.min(MAX_CONCURRENCY, Math.max(MIN_CONCURRENCY, invocations));
}
