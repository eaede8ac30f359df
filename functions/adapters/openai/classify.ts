import { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from "openai";
import { ContentFilterFinishReasonError, LengthFinishReasonError } from "openai/core/error";
import {
  EndpointUnreachableError,
  KeyRefusedError,
  LlmCallError,
  MmevolError,
  QuotaExhaustedError,
  RequestTooLargeError,
} from "../../ports/errors.ts";

/** Statuses where the same request can succeed later (the openai client's own `shouldRetry` list). */
const retryableStatuses: ReadonlySet<number> = new Set([408, 409, 429]);

/**
 * Error codes (the body's `code` or `type`) of a 429 that no wait cures: the account is out of credit or its
 * billing is off. OpenAI sends them with status 429, like a rate limit.
 */
const exhaustedQuotaCodes: ReadonlySet<string> = new Set([
  "insufficient_quota",
  "billing_hard_limit_reached",
  "billing_not_active",
]);

/**
 * Failures to connect at all: nothing listens there, or the host or the network is unknown. Not EAI_AGAIN, a
 * resolver's "try again later": a short DNS outage stays a retryable failure of the call.
 */
const unreachableCodes: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
]);

/**
 * Whether a 429's message is OpenAI's for a request over the model's whole per-minute limit, which no wait cures:
 * "Request too large for gpt-4o in organization org-… on tokens per min (TPM): Limit 30000, Requested 36153. The
 * input or output tokens must be reduced…" (the client's error message puts the status in front).
 */
export const isRequestTooLarge = (message: string): boolean => /^(429 )?request too large\b/i.test(message);

/** Socket and undici failures: the request never got an answer, so asking again can help. */
const transientNetworkCodes: ReadonlySet<string> = new Set([
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "ETIMEDOUT",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "EAI_AGAIN",
  "ENOTFOUND",
]);

const keyLike = /\bsk-[A-Za-z0-9_-]{6,}/g;
const bearer = /\bBearer\s+[^\s"',]+/gi;

/**
 * Removes API keys from text that may reach logs or sample records: anything shaped like
 * an OpenAI key, any bearer token, and each of the given secrets verbatim.
 */
export const scrubSecrets = (text: string, secrets: readonly string[] = []): string => {
  let scrubbed = text;
  // Longest first, so a secret that contains another is replaced whole.
  const sorted = [...secrets].filter((secret) => secret.length >= 4).sort((a, b) => b.length - a.length);
  for (const secret of sorted) scrubbed = scrubbed.split(secret).join("[redacted]");
  return scrubbed.replace(keyLike, "sk-[redacted]").replace(bearer, "Bearer [redacted]");
};

const headerOf = (headers: unknown, name: string): string | null => {
  if (headers instanceof Headers) return headers.get(name);
  return null;
};

/**
 * The provider's wait hint in milliseconds: `retry-after-ms`, else `retry-after` as seconds or
 * an HTTP date. Null when absent or unreadable.
 */
export const retryAfterMsOf = (headers: unknown, now: number = Date.now()): number | null => {
  const millis = headerOf(headers, "retry-after-ms");
  if (millis !== null && millis.trim() !== "") {
    const value = Number(millis);
    if (Number.isFinite(value) && value >= 0) return Math.round(value);
  }
  const after = headerOf(headers, "retry-after");
  if (after === null || after.trim() === "") return null;
  const seconds = Number(after);
  if (Number.isFinite(seconds)) return seconds >= 0 ? Math.round(seconds * 1000) : null;
  const date = Date.parse(after);
  if (Number.isNaN(date)) return null;
  return Math.max(0, date - now);
};

const codeOf = (error: unknown): string | null => {
  if (typeof error !== "object" || error === null || !("code" in error)) return null;
  return typeof error.code === "string" ? error.code : null;
};

const nameOf = (error: unknown): string | null => (error instanceof Error ? error.name : null);

/** Walks the `cause` chain (fetch wraps socket errors as `TypeError: fetch failed`). */
const causeChain = (error: unknown): unknown[] => {
  const chain: unknown[] = [];
  let current: unknown = error;
  while (current !== undefined && current !== null && chain.length < 6) {
    chain.push(current);
    current = typeof current === "object" && "cause" in current ? current.cause : undefined;
  }
  return chain;
};

const isTransientNetworkError = (error: unknown): boolean =>
  causeChain(error).some((link) => {
    const code = codeOf(link);
    if (code !== null && (transientNetworkCodes.has(code) || code.startsWith("UND_ERR_"))) return true;
    const name = nameOf(link);
    return name === "TimeoutError" || name === "ConnectTimeoutError" || name === "SocketError";
  });

const messageOf = (error: unknown): string => {
  if (error instanceof Error) return error.message;
  if (typeof error === "string") return error;
  try {
    return JSON.stringify(error) ?? String(error);
  } catch {
    return String(error);
  }
};

/**
 * The one place that decides whether a failed LLM call is worth repeating. Retryable: 408, 409,
 * 429, >= 500, timeouts and dropped connections; a 429 for an exhausted quota is a QuotaExhaustedError and a 401
 * or 403 a KeyRefusedError, which stop a local run with no sample failed; a 429 for a request over the whole
 * per-minute limit is a permanent RequestTooLargeError. Everything else (400, 404, 422, anything unknown) is
 * permanent, so a sample fails fast with a reason.
 * `secrets` are scrubbed from the message, along with anything shaped like a key.
 */
export const classifyFailure = (error: unknown, secrets: readonly string[] = []): LlmCallError => {
  const scrub = (text: string): string => scrubSecrets(text, secrets);

  if (error instanceof LlmCallError) return error;
  if (error instanceof MmevolError) {
    return new LlmCallError(scrub(error.message), { retryable: error.retryable, cause: error });
  }
  if (error instanceof APIUserAbortError) {
    return new LlmCallError(`LLM call aborted: ${scrub(error.message)}`, { retryable: false, cause: error });
  }
  // No connection at all, after the client's retries: the endpoint, not the request (see the error class).
  if (error instanceof APIConnectionError && !(error instanceof APIConnectionTimeoutError)) {
    const code = causeChain(error)
      .map(codeOf)
      .find((c): c is string => c !== null && unreachableCodes.has(c));
    if (code !== undefined)
      return new EndpointUnreachableError(
        `cannot reach the LLM endpoint (${code}): ${scrub(error.message)}`,
        {
          cause: error,
        },
      );
    // fetch never connects to a port on the Fetch standard's block list (1, 6000, 10080, ...): no retry helps.
    if (causeChain(error).some((e) => e instanceof Error && e.message === "bad port"))
      return new EndpointUnreachableError(
        "cannot reach the LLM endpoint: its port is one fetch refuses to connect to (the Fetch standard's blocked ports, such as 1, 6000 or 10080); serve it on another port",
        { cause: error },
      );
  }
  // Covers APIConnectionTimeoutError too: no answer arrived, so nothing says the request was bad.
  if (error instanceof APIConnectionError) {
    const kind = error.message.toLowerCase().includes("timed out") ? "timed out" : "connection failed";
    return new LlmCallError(`LLM call ${kind}: ${scrub(error.message)}`, { retryable: true, cause: error });
  }
  if (error instanceof APIError) {
    const status = typeof error.status === "number" ? error.status : null;
    const quota = [error.code, error.type].find(
      (code): code is string => typeof code === "string" && exhaustedQuotaCodes.has(code),
    );
    if (quota !== undefined) {
      // Not a rate limit (no cut of the rate), and no sample's fault (none fails for it): see the error class.
      return new QuotaExhaustedError(
        `LLM call refused: the account is out of quota (${quota}): ${scrub(error.message)}`,
        { status, cause: error },
      );
    }
    if (status === 401 || status === 403) {
      // The key, not the request: every sample would fail the same way (see the error class).
      return new KeyRefusedError(
        `LLM call refused: the key was not accepted (HTTP ${status}): ${scrub(error.message)}`,
        { status, cause: error },
      );
    }
    if (status === 429 && isRequestTooLarge(error.message)) {
      return new RequestTooLargeError(
        `LLM call refused: the request is larger than the model's per-minute limit, so no wait helps (HTTP 429): ${scrub(error.message)}`,
        { status, cause: error },
      );
    }
    const shouldRetry = headerOf(error.headers, "x-should-retry");
    const retryable =
      shouldRetry === "true" ||
      (shouldRetry !== "false" && status !== null && (retryableStatuses.has(status) || status >= 500));
    const detail = scrub(error.message);
    return new LlmCallError(`LLM call failed with HTTP ${status ?? "(no status)"}: ${detail}`, {
      retryable,
      status,
      retryAfterMs: retryable ? retryAfterMsOf(error.headers) : null,
      cause: error,
    });
  }
  if (error instanceof ContentFilterFinishReasonError) {
    return new LlmCallError("LLM answer blocked by the content filter", { retryable: false, cause: error });
  }
  if (error instanceof LengthFinishReasonError) {
    return new LlmCallError("LLM answer cut at the token limit", { retryable: false, cause: error });
  }
  if (isTransientNetworkError(error)) {
    const code = causeChain(error)
      .map(codeOf)
      .find((c) => c !== null);
    const suffix = code === undefined ? "" : ` (${code})`;
    return new LlmCallError(`LLM call connection failed${suffix}: ${scrub(messageOf(error))}`, {
      retryable: true,
      cause: error,
    });
  }
  // A body the client could not parse as JSON after a success status (cut off mid-way): a server fault, as any
  // other unreadable answer is, not a property of the request.
  if (error instanceof SyntaxError) {
    return new LlmCallError(`LLM answer is not JSON: ${scrub(messageOf(error))}`, {
      retryable: true,
      cause: error,
    });
  }
  return new LlmCallError(`LLM call failed: ${scrub(messageOf(error))}`, { retryable: false, cause: error });
};
