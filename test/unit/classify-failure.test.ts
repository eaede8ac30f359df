import { APIConnectionError, APIConnectionTimeoutError, APIError, APIUserAbortError } from "openai";
import { ContentFilterFinishReasonError } from "openai/core/error";
import { describe, expect, it } from "vitest";
import { classifyFailure, retryAfterMsOf, scrubSecrets } from "../../functions/adapters/openai/classify.ts";
import {
  AccountRefusedError,
  EndpointUnreachableError,
  KeyRefusedError,
  LlmAnswerError,
  LlmCallError,
  QuotaExhaustedError,
  RequestTooLargeError,
} from "../../functions/ports/errors.ts";

const apiError = (status: number, headers: Record<string, string> = {}, message = "boom"): APIError =>
  APIError.generate(status, { error: { message } }, undefined, new Headers(headers));

describe("classifyFailure", () => {
  it.each([408, 409, 429, 500, 502, 503, 504])("HTTP %i is retryable", (status) => {
    const failure = classifyFailure(apiError(status));
    expect(failure).toBeInstanceOf(LlmCallError);
    expect(failure.retryable).toBe(true);
    expect(failure.status).toBe(status);
    expect(failure.message).toContain(String(status));
  });

  it.each([400, 404, 422, 418])("HTTP %i is permanent", (status) => {
    const failure = classifyFailure(apiError(status, { "retry-after": "5" }));
    expect(failure.retryable).toBe(false);
    expect(failure.status).toBe(status);
    expect(failure.retryAfterMs).toBeNull();
  });

  it.each([401, 403])(
    "HTTP %i is a KeyRefusedError: the key, not the request, so never a sample's failed try, back in 15 min",
    (status) => {
      const failure = classifyFailure(apiError(status, {}, "Incorrect API key provided."));
      expect(failure).toBeInstanceOf(KeyRefusedError);
      expect(failure).toBeInstanceOf(AccountRefusedError);
      expect(failure).toMatchObject({ retryable: true, inFlight: true, status, retryAfterMs: 15 * 60_000 });
      expect(failure.message).toContain(`the key was not accepted (HTTP ${status})`);
    },
  );

  it.each(["insufficient_quota", "billing_hard_limit_reached"])(
    "a 429 for an exhausted quota (%s) is a QuotaExhaustedError: never a sample's failed try, back in 15 min",
    (code) => {
      const body = { error: { message: "You exceeded your current quota.", type: code, code } };
      const failure = classifyFailure(
        APIError.generate(429, body, undefined, new Headers({ "retry-after": "1" })),
      );
      expect(failure).toBeInstanceOf(QuotaExhaustedError);
      expect(failure.inFlight).toBe(true);
      expect(failure.retryable).toBe(true);
      expect(failure.status).toBe(429);
      expect(failure.retryAfterMs).toBe(15 * 60_000);
      expect(failure.message).toContain(`out of quota (${code})`);
      expect(failure.message).toContain("You exceeded your current quota.");
      // The same 429 as a rate limit is a plain retryable failure.
      const limited = {
        error: { message: "Rate limit reached", type: "tokens", code: "rate_limit_exceeded" },
      };
      const rate = classifyFailure(APIError.generate(429, limited, undefined, new Headers()));
      expect(rate).not.toBeInstanceOf(QuotaExhaustedError);
      expect(rate.retryable).toBe(true);
      expect(rate.inFlight).toBe(false);
    },
  );

  it.each(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH"])(
    "no connection at all (%s) is an EndpointUnreachableError: the endpoint, not the request, so never a failed try",
    (code) => {
      const cause = Object.assign(new TypeError("fetch failed"), {
        cause: Object.assign(new Error(`connect ${code} 127.0.0.1:9`), { code }),
      });
      const failure = classifyFailure(new APIConnectionError({ cause }));
      expect(failure).toBeInstanceOf(EndpointUnreachableError);
      expect(failure).toBeInstanceOf(AccountRefusedError);
      expect(failure).toMatchObject({ retryable: true, inFlight: true });
      expect(failure.message).toContain(`cannot reach the LLM endpoint (${code})`);
    },
  );

  it("a port fetch refuses to connect to (bad port) is unreachable too, and says so", () => {
    const cause = Object.assign(new TypeError("fetch failed"), { cause: new Error("bad port") });
    const failure = classifyFailure(new APIConnectionError({ cause }));
    expect(failure).toBeInstanceOf(EndpointUnreachableError);
    expect(failure.message).toContain("its port is one fetch refuses to connect to");
  });

  it("a connection reset or a timeout stays a plain retryable failure, a try of the sample's", () => {
    const reset = Object.assign(new TypeError("fetch failed"), {
      cause: Object.assign(new Error("socket hang up"), { code: "ECONNRESET" }),
    });
    for (const error of [new APIConnectionError({ cause: reset }), new APIConnectionTimeoutError()]) {
      const failure = classifyFailure(error);
      expect(failure).not.toBeInstanceOf(AccountRefusedError);
      expect(failure).toMatchObject({ retryable: true, inFlight: false });
    }
  });

  it("a 429 for a request over the model's whole per-minute limit is permanent: no wait helps", () => {
    const body = {
      error: {
        message:
          "Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 36153. The input or output tokens must be reduced in order to run successfully.",
        type: "tokens",
        code: "rate_limit_exceeded",
      },
    };
    const failure = classifyFailure(
      APIError.generate(429, body, undefined, new Headers({ "retry-after": "1" })),
    );
    expect(failure).toBeInstanceOf(RequestTooLargeError);
    expect(failure).toMatchObject({ retryable: false, inFlight: false, status: 429 });
    expect(failure.message).toContain("Limit 30000, Requested 36153");
  });

  it("reads retry-after in seconds on a 429", () => {
    const failure = classifyFailure(apiError(429, { "retry-after": "7" }, "Rate limit reached"));
    expect(failure.retryable).toBe(true);
    expect(failure.retryAfterMs).toBe(7000);
    expect(failure.message).toContain("Rate limit reached");
  });

  it("prefers retry-after-ms over retry-after", () => {
    const failure = classifyFailure(apiError(429, { "retry-after-ms": "1500", "retry-after": "9" }));
    expect(failure.retryAfterMs).toBe(1500);
  });

  it("reads retry-after as an HTTP date", () => {
    const now = Date.parse("2025-01-01T00:00:00Z");
    const headers = new Headers({ "retry-after": "Wed, 01 Jan 2025 00:00:30 GMT" });
    expect(retryAfterMsOf(headers, now)).toBe(30_000);
    expect(retryAfterMsOf(new Headers({ "retry-after": "soon" }), now)).toBeNull();
    expect(retryAfterMsOf(new Headers(), now)).toBeNull();
  });

  it("gives no retry hint on a 500 without headers", () => {
    const failure = classifyFailure(apiError(500));
    expect(failure.retryable).toBe(true);
    expect(failure.retryAfterMs).toBeNull();
  });

  it("obeys x-should-retry: false", () => {
    expect(classifyFailure(apiError(503, { "x-should-retry": "false" })).retryable).toBe(false);
  });

  it("treats a timeout and a dropped connection as retryable", () => {
    const timeout = classifyFailure(new APIConnectionTimeoutError());
    expect(timeout.retryable).toBe(true);
    expect(timeout.status).toBeNull();
    expect(timeout.message).toMatch(/timed out/);
    const connection = classifyFailure(new APIConnectionError({ message: "Connection error." }));
    expect(connection.retryable).toBe(true);
  });

  it("recognises node socket errors anywhere in the cause chain", () => {
    const reset = Object.assign(new Error("socket hang up"), { code: "ECONNRESET" });
    expect(classifyFailure(reset).retryable).toBe(true);
    const refused = new TypeError("fetch failed", {
      cause: Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" }),
    });
    const failure = classifyFailure(refused);
    expect(failure.retryable).toBe(true);
    expect(failure.message).toContain("ECONNREFUSED");
    const undici = Object.assign(new Error("other side closed"), { code: "UND_ERR_SOCKET" });
    expect(classifyFailure(undici).retryable).toBe(true);
  });

  it("treats content filter, aborts and unknown errors as permanent", () => {
    expect(classifyFailure(new ContentFilterFinishReasonError()).retryable).toBe(false);
    expect(classifyFailure(new APIUserAbortError()).retryable).toBe(false);
    const unknown = classifyFailure(new Error("something odd"));
    expect(unknown.retryable).toBe(false);
    expect(unknown.message).toContain("something odd");
    expect(classifyFailure("plain string").message).toContain("plain string");
  });

  it("passes our own errors through with their retryability", () => {
    const own = new LlmCallError("model refused: no", { retryable: false, status: 200 });
    expect(classifyFailure(own)).toBe(own);
    const answer = classifyFailure(new LlmAnswerError("bad json"));
    expect(answer).toBeInstanceOf(LlmCallError);
    expect(answer.retryable).toBe(true);
  });

  it("never puts the API key in the message", () => {
    const key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    const custom = "my-local-secret-token";
    const error = apiError(401, {}, `Incorrect API key provided: ${key}. Also ${custom}, Bearer ${custom}`);
    const failure = classifyFailure(error, [custom]);
    expect(failure.message).not.toContain(key);
    expect(failure.message).not.toContain("abcdefghijklmnop");
    expect(failure.message).not.toContain(custom);
    expect(failure.message).toContain("Incorrect API key provided");
    const network = classifyFailure(
      Object.assign(new Error(`reset while sending ${key}`), { code: "ECONNRESET" }),
    );
    expect(network.message).not.toContain(key);
  });
});

describe("scrubSecrets", () => {
  it("replaces configured secrets and key-shaped strings", () => {
    expect(scrubSecrets("key=sk-1234567890abcdef end", [])).toBe("key=sk-[redacted] end");
    expect(scrubSecrets("token hunter22 here", ["hunter22"])).toBe("token [redacted] here");
    expect(scrubSecrets("Authorization: Bearer abc.def", [])).toBe("Authorization: Bearer [redacted]");
    // Short strings are not treated as secrets, or every "a" would vanish.
    expect(scrubSecrets("a task", ["a"])).toBe("a task");
  });
});
