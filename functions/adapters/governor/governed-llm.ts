import { AccountRefusedError, LlmCallError, RequestTooLargeError } from "../../ports/errors.ts";
import type { AdmittedCall, Llm, LlmRequest, LlmResponse } from "../../ports/llm.ts";
import { countPromptTokens } from "../simulated/tokens.ts";
import type { Governor, RemainingSnapshot, Reservation } from "./governor.ts";

/**
 * What the provider's tokens-per-minute limiter charges a request at admission: its prompt (text, images
 * and the response_format schema) plus its whole max_tokens, whether or not the answer uses them.
 */
export function estimateRequestTokens(request: LlmRequest): number {
  return countPromptTokens(request) + request.maxTokens;
}

/** An Llm that reports rate-limit headers, like OpenAiLlm: those of its last answer for `model`. */
export interface ReportsRateLimit {
  lastRateLimit(model: string): RemainingSnapshot | null;
}

function reportsRateLimit(llm: Llm): llm is Llm & ReportsRateLimit {
  return "lastRateLimit" in llm && typeof llm.lastRateLimit === "function";
}

/** The rate-limit headers of `llm`'s last answer for `model`; null when it reports none. */
export function lastRateLimitOf(llm: Llm, model: string): RemainingSnapshot | null {
  return reportsRateLimit(llm) ? llm.lastRateLimit(model) : null;
}

/**
 * Paces every call through one Governor (in-process or shared through DynamoDB): reserve the estimate, call,
 * settle with what was charged. The governor's bookkeeping is awaited, so no write is left floating.
 */
export class GovernedLlm implements Llm {
  readonly #inner: Llm;
  readonly #governor: Governor;

  constructor(inner: Llm, governor: Governor) {
    this.#inner = inner;
    this.#governor = governor;
  }

  async admit(request: LlmRequest): Promise<AdmittedCall> {
    // Counting a request's tokens takes the tokenizer over its whole prompt: skipped while no token budget is
    // paced, when its max_tokens (a lower bound of the charge) is reserved instead.
    const tokens =
      this.#governor.countsTokens?.() === false ? request.maxTokens : estimateRequestTokens(request);
    const reservation = await this.#governor.acquire({ tokens });
    let used = false;
    const use = () => {
      if (used) throw new Error("an admitted call is used once");
      used = true;
    };
    return {
      complete: async () => {
        use();
        return this.#send(request, reservation);
      },
      cancel: async () => {
        use();
        // Neither tokens nor the request were charged.
        await reservation.settle(0, false);
      },
    };
  }

  async complete(request: LlmRequest): Promise<LlmResponse> {
    return (await this.admit(request)).complete();
  }

  /** See `Governor.flush`. */
  async flush(): Promise<void> {
    await this.#governor.flush?.();
  }

  async #send(request: LlmRequest, reservation: Reservation): Promise<LlmResponse> {
    let response: LlmResponse;
    try {
      response = await this.#inner.complete(request);
    } catch (error) {
      if (error instanceof AccountRefusedError || error instanceof RequestTooLargeError) {
        // Refused, not limited: nothing was charged, and it says nothing about the rate.
        await reservation.settle(0, false);
      } else if (error instanceof LlmCallError && error.status === 429) {
        await this.#governor.rateLimited(reservation, error.retryAfterMs);
      } else {
        // Whether a failed call was charged is unknown (a timeout usually was): keep the reservation.
        await reservation.settle(reservation.tokens);
      }
      throw error;
    }
    // The limiter charged the real prompt plus max_tokens at admission; the completion does not change it.
    // A server that sent no usage reports 0 prompt tokens: then the estimate is the best figure.
    const prompt = response.usage.promptTokens > 0 ? response.usage.promptTokens : null;
    try {
      await reservation.settle(prompt === null ? reservation.tokens : prompt + request.maxTokens);
      await this.#governor.succeeded();
      const snapshot = lastRateLimitOf(this.#inner, request.model);
      if (snapshot !== null) await this.#governor.observeHeaders(snapshot);
    } catch {
      // The answer is paid for: losing it over the budget's bookkeeping (a shared store's hiccup) would pay for
      // it again. The budget is then a little off until it refills, which the provider's 429s correct.
    }
    return response;
  }
}

/**
 * One budget per model, as providers limit each model on its own: a GovernedLlm per model named in a request,
 * each with the governor `governorFor` makes for it (in-process, or the model's item in DynamoDB).
 */
export class GovernedPerModel implements Llm {
  readonly #inner: Llm;
  readonly #governorFor: (model: string) => Governor;
  readonly #byModel = new Map<string, GovernedLlm>();

  constructor(inner: Llm, governorFor: (model: string) => Governor) {
    this.#inner = inner;
    this.#governorFor = governorFor;
  }

  complete(request: LlmRequest): Promise<LlmResponse> {
    return this.#for(request.model).complete(request);
  }

  admit(request: LlmRequest): Promise<AdmittedCall> {
    return this.#for(request.model).admit(request);
  }

  /** See `Governor.flush`: every model's. */
  async flush(): Promise<void> {
    await Promise.all([...this.#byModel.values()].map((governed) => governed.flush()));
  }

  #for(model: string): GovernedLlm {
    let governed = this.#byModel.get(model);
    if (governed === undefined) {
      governed = new GovernedLlm(this.#inner, this.#governorFor(model));
      this.#byModel.set(model, governed);
    }
    return governed;
  }
}
