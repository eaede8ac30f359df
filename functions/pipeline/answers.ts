import type { ModelPrice } from "../evolution/config.ts";
import { costOf } from "../evolution/pricing.ts";
import type { LlmAnswerError } from "../ports/errors.ts";
import type { LlmResponse } from "../ports/llm.ts";
import type { StoredAnswer } from "../ports/state-store.ts";

/** An answer as it is stored under its request's hash, priced online or at batch rates. */
export function storedAnswer(
  response: LlmResponse,
  price: ModelPrice,
  mode: "online" | "batch",
): StoredAnswer {
  return {
    content: response.content,
    promptTokens: response.usage.promptTokens,
    cachedTokens: response.usage.cachedTokens,
    completionTokens: response.usage.completionTokens,
    model: response.model,
    costUsd: costOf(price, response.usage, mode),
  };
}

/**
 * An unusable answer (cut at the token limit, or empty) as a spent try: stored so that a rerun does not ask
 * again, with what the provider billed for it (an answer cut at max_tokens is paid in full).
 */
export function unusableAnswer(
  error: LlmAnswerError,
  model: string,
  price: ModelPrice,
  mode: "online" | "batch",
): StoredAnswer {
  const usage = error.usage ?? { promptTokens: 0, cachedTokens: 0, completionTokens: 0 };
  return {
    content: "",
    ...usage,
    model,
    costUsd: costOf(price, usage, mode),
    unusable: error.message,
    ...(error.cutAt === null ? {} : { cutAt: error.cutAt }),
  };
}
