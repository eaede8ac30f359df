import { APIError } from "openai";
import { describe, expect, it } from "vitest";
import { estimateRequestTokens, GovernedLlm } from "../../functions/adapters/governor/governed-llm.ts";
import type { Governor, RemainingSnapshot, Reservation } from "../../functions/adapters/governor/governor.ts";
import { classifyFailure } from "../../functions/adapters/openai/classify.ts";
import { LlmCallError, QuotaExhaustedError } from "../../functions/ports/errors.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { answerOf, textRequest } from "../helpers/llm.ts";

/** Finishes after `ms`: anything GovernedLlm does not await is still pending (or out of order) at its end. */
const later = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * A governor whose every method finishes asynchronously, like the DynamoDB one; it logs when each ends. The
 * earlier steps take longer, so steps that were not awaited would end out of order.
 */
class AsyncGovernor implements Governor {
  readonly log: string[] = [];

  async acquire(estimate: { readonly tokens: number }): Promise<Reservation> {
    await later(5);
    this.log.push("acquired");
    return {
      tokens: estimate.tokens,
      admittedAt: 0,
      settle: async (actualTokens: number, requestCharged = true) => {
        await later(30);
        this.log.push(`settled ${actualTokens}${requestCharged ? "" : " uncharged"}`);
      },
    };
  }

  async rateLimited(reservation: Reservation | null, retryAfterMs: number | null): Promise<void> {
    await reservation?.settle(0, false);
    await later(5);
    this.log.push(`rate limited ${retryAfterMs}`);
  }

  async succeeded(): Promise<void> {
    await later(20);
    this.log.push("succeeded");
  }

  async observeHeaders(snapshot: RemainingSnapshot): Promise<void> {
    await later(10);
    this.log.push(`headers ${snapshot.remainingTokens}`);
  }
}

const request: LlmRequest = textRequest;

const answer: LlmResponse = answerOf(20);

describe("GovernedLlm with an asynchronous governor", () => {
  it("awaits settle, succeeded and the headers before answering", async () => {
    const governor = new AsyncGovernor();
    const inner = {
      complete: async () => {
        governor.log.push("called");
        return answer;
      },
      lastRateLimit: (): RemainingSnapshot => ({ remainingTokens: 9000, remainingRequests: null }),
    } satisfies Llm & { lastRateLimit: () => RemainingSnapshot };
    const response = await new GovernedLlm(inner, governor).complete(request);
    expect(response).toBe(answer);
    // Settled with the real prompt plus max_tokens, all of it done when complete() resolved.
    expect(governor.log).toEqual(["acquired", "called", "settled 120", "succeeded", "headers 9000"]);
  });

  it("admits before sending: a cancelled admission sends nothing and gives the whole share back", async () => {
    const governor = new AsyncGovernor();
    const inner = {
      complete: async () => {
        governor.log.push("called");
        return answer;
      },
    } satisfies Llm;
    const governed = new GovernedLlm(inner, governor);
    const cancelled = await governed.admit(request);
    await cancelled.cancel();
    expect(governor.log).toEqual(["acquired", "settled 0 uncharged"]);
    await expect(cancelled.complete()).rejects.toThrow("used once");

    governor.log.length = 0;
    const admitted = await governed.admit(request);
    expect(governor.log).toEqual(["acquired"]);
    expect(await admitted.complete()).toBe(answer);
    expect(governor.log).toEqual(["acquired", "called", "settled 120", "succeeded"]);
  });

  it("awaits the refund and the cut of a 429 before rethrowing it", async () => {
    const governor = new AsyncGovernor();
    const limited = new LlmCallError("rate limited", { retryable: true, status: 429, retryAfterMs: 500 });
    const failing: Llm = {
      complete: async () => {
        throw limited;
      },
    };
    await expect(new GovernedLlm(failing, governor).complete(request)).rejects.toBe(limited);
    expect(governor.log).toEqual(["acquired", "settled 0 uncharged", "rate limited 500"]);
  });

  it.each([
    ["an exhausted quota", new QuotaExhaustedError("out of quota", { status: 429 })],
    [
      "a request over the whole per-minute limit",
      classifyFailure(
        APIError.generate(
          429,
          {
            error: {
              message:
                "Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 36153. The input or output tokens must be reduced in order to run successfully.",
              type: "tokens",
              code: "rate_limit_exceeded",
            },
          },
          undefined,
          new Headers(),
        ),
      ),
    ],
  ])("gives a 429 that is not a rate limit (%s) back without cutting the rate", async (_, refused) => {
    const governor = new AsyncGovernor();
    const failing: Llm = {
      complete: async () => {
        throw refused;
      },
    };
    await expect(new GovernedLlm(failing, governor).complete(request)).rejects.toBe(refused);
    expect(governor.log).toEqual(["acquired", "settled 0 uncharged"]);
  });

  it("awaits keeping the reservation of any other failure before rethrowing it", async () => {
    const governor = new AsyncGovernor();
    const timeout = new LlmCallError("timed out", { retryable: true });
    const failing: Llm = {
      complete: async () => {
        throw timeout;
      },
    };
    await expect(new GovernedLlm(failing, governor).complete(request)).rejects.toBe(timeout);
    // Whether it was charged is unknown: the whole estimate stays spent.
    expect(governor.log).toEqual(["acquired", `settled ${estimateRequestTokens(request)}`]);
  });
});
