import type { LlmUsage } from "./llm.ts";

/** Base of every error this project raises on purpose: says whether trying again can help. */
export class MmevolError extends Error {
  readonly retryable: boolean;
  constructor(message: string, options: { retryable: boolean; cause?: unknown }) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.retryable = options.retryable;
  }
}

/** The LLM call failed. `retryAfterMs` is the provider's hint, when it gave one. */
export class LlmCallError extends MmevolError {
  readonly status: number | null;
  readonly retryAfterMs: number | null;
  /** The same message is being answered by another receive: wait for it, never count it as a failed try. */
  readonly inFlight: boolean;
  constructor(
    message: string,
    options: {
      retryable: boolean;
      status?: number | null;
      retryAfterMs?: number | null;
      inFlight?: boolean;
      cause?: unknown;
    },
  ) {
    super(message, options);
    this.status = options.status ?? null;
    this.retryAfterMs = options.retryAfterMs ?? null;
    this.inFlight = options.inFlight ?? false;
  }
}

/**
 * The work cannot be done yet, through no fault of its sample, and nothing was paid: not a failed try. A
 * deployed stage puts a copy of its message back on the queue, delayed (so the wait never counts toward the
 * dead-letter limit; no Lambda sleeps), and acknowledges the original; a local run looks again later.
 */
export class NotYetError extends LlmCallError {
  constructor(message: string, retryAfterMs: number) {
    super(message, { retryable: true, retryAfterMs, inFlight: true });
  }
}

/** The shared rate budget is spent for now: the call was not made; the message comes back after `retryAfterMs`. */
export class NoRateBudgetError extends NotYetError {}

/**
 * A deployed stack's image that is not in the bucket yet, shortly after its shard arrived: an upload of a
 * shard and its images (`aws s3 cp --recursive`) may put the shard first, and the images minutes later.
 */
export class ImageNotUploadedError extends NotYetError {}

/**
 * The provider refuses every call of this account, whatever the request: out of credit, or the key is not
 * accepted. No wait cures it and no sample is at fault, so no sample fails for it: like waiting for another
 * receive, it is never a failed try. A local run stops (run the same command once the account or the key is
 * fixed); a deployed stage puts its message back for `retryAfterMs` (15 minutes, time for a key fixed in
 * Secrets Manager to reach the functions), and past the queue's receive limit it goes to the dead-letter
 * queue, for `mmevol redrive`.
 */
export class AccountRefusedError extends LlmCallError {
  /** What the user can do about it, for the message that stops a local run. */
  readonly remedy: string = "fix the account, then run the same command to continue";
  constructor(message: string, options: { status?: number | null; cause?: unknown } = {}) {
    super(message, { retryable: true, retryAfterMs: 15 * 60_000, inFlight: true, ...options });
  }
}

/** The account is out of credit (OpenAI: 429 `insufficient_quota`). */
export class QuotaExhaustedError extends AccountRefusedError {
  override readonly remedy = "top up the account, then run the same command to continue";
}

/** The key is not accepted, or not allowed this model (HTTP 401, 403): every other call would be refused too. */
export class KeyRefusedError extends AccountRefusedError {
  override readonly remedy = "fix the key (OPENAI_API_KEY), then run the same command to continue";
}

/**
 * The endpoint cannot be reached at all (connection refused, no such host, no route), after the client's own
 * retries: a wrong base URL or a server that is down, which every other call would meet too. No sample is at
 * fault, so none fails for it (an unreachable server used to fail every sample within seconds).
 */
export class EndpointUnreachableError extends AccountRefusedError {
  override readonly remedy =
    "check the endpoint (--base-url or OPENAI_BASE_URL) and that its server is up, then run the same command to continue";
}

/**
 * A request larger than the model's whole tokens-per-minute limit (OpenAI: 429 "Request too large … Limit 30000,
 * Requested 36153"). Sent with status 429 like a rate limit, but no wait cures it: permanent for this request,
 * and nothing about the rate (the governor neither cuts it nor keeps the reservation).
 */
export class RequestTooLargeError extends LlmCallError {
  constructor(message: string, options: { status?: number | null; cause?: unknown } = {}) {
    super(message, { retryable: false, ...options });
  }
}

/** The model answered, but not with what the schema asks for. */
export class LlmAnswerError extends MmevolError {
  /** What the provider billed for the answer, when it said: an answer cut at the token limit is paid in full. */
  readonly usage: LlmUsage | null;
  /** The `max_tokens` the answer was cut at (finish_reason "length"); null for an empty answer. */
  readonly cutAt: number | null;
  constructor(
    message: string,
    options: { cause?: unknown; usage?: LlmUsage | null; cutAt?: number | null } = {},
  ) {
    super(message, { retryable: true, ...(options.cause === undefined ? {} : { cause: options.cause }) });
    this.usage = options.usage ?? null;
    this.cutAt = options.cutAt ?? null;
  }
}

/** Input that cannot be used: a bad shard line, a missing image, a path outside the image root. */
export class InvalidInputError extends MmevolError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { retryable: false, ...options });
  }
}

/** The image a sample names is not where its path resolves: unusable, unless an upload is still under way. */
export class ImageNotFoundError extends InvalidInputError {}

/** A write that needs the shard record found none: a wiring bug (ingest creates the shard first), not a retry case. */
export class ShardNotFoundError extends MmevolError {
  constructor(run: string, shard: string) {
    super(`no shard ${run}/${shard}`, { retryable: false });
  }
}
