import { OpenAI } from "openai";
import type { Logger } from "../../ports/runtime.ts";
import { isRequestTooLarge, scrubSecrets } from "./classify.ts";

/** How both OpenAI adapters reach an endpoint: the key, where, and the client's own timeout and retries. */
export interface OpenAiClientOptions {
  readonly apiKey: string;
  /** Any OpenAI-compatible endpoint; the OpenAI API when absent. */
  readonly baseURL?: string;
  /** Per attempt. */
  readonly timeoutMs?: number;
  /** The client's own retries of 408/409/429/5xx and dropped connections, with backoff. Default 2. */
  readonly maxRetries?: number;
  readonly fetch?: typeof fetch;
  readonly logger?: Logger;
}

/** The `openai` client with our defaults; its log lines reach `logger` with the key scrubbed out. */
export function createOpenAiClient(
  options: OpenAiClientOptions,
  logger: Logger,
  defaultTimeoutMs: number,
): OpenAI {
  const scrub = (message: string): string => scrubSecrets(message, [options.apiKey]);
  return new OpenAI({
    apiKey: options.apiKey,
    baseURL: options.baseURL,
    timeout: options.timeoutMs ?? defaultTimeoutMs,
    maxRetries: options.maxRetries ?? 2,
    fetch: noRetryWhenTooLarge(options.fetch ?? globalThis.fetch),
    // Only the message is forwarded: the client's extra arguments carry request details.
    logLevel: "warn",
    logger: {
      error: (message) => logger.error(scrub(message)),
      warn: (message) => logger.warn(scrub(message)),
      info: (message) => logger.debug(scrub(message)),
      debug: (message) => logger.debug(scrub(message)),
    },
  });
}

/** The `error.message` of an error body, or "" when it has none. */
function errorMessageOf(body: string): string {
  try {
    const message: unknown = JSON.parse(body)?.error?.message;
    return typeof message === "string" ? message : "";
  } catch {
    return "";
  }
}

/**
 * OpenAI's 429 "Request too large …" is a request over the model's whole per-minute limit: no wait helps
 * (classifyFailure makes it a permanent RequestTooLargeError). Marked `x-should-retry: false`, so the client
 * does not send it again `maxRetries` times first.
 */
function noRetryWhenTooLarge(inner: typeof fetch): typeof fetch {
  return async (input, init) => {
    const response = await inner(input, init);
    if (response.status !== 429 || response.headers.has("x-should-retry")) return response;
    const text = await response.clone().text();
    if (!isRequestTooLarge(errorMessageOf(text))) return response;
    const headers = new Headers(response.headers);
    headers.set("x-should-retry", "false");
    headers.delete("content-encoding");
    headers.delete("content-length");
    return new Response(text, { status: response.status, statusText: response.statusText, headers });
  };
}
