import type { LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";

/** A small text request, as the governor and ask tests send it. */
export const textRequest: LlmRequest = {
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "hello there" }],
  schemaName: "answer",
  schema: { type: "object" },
  temperature: 0,
  maxTokens: 100,
  seed: 1,
};

/** A finished answer to it, billed `promptTokens` prompt tokens and 5 completion tokens. */
export const answerOf = (promptTokens = 20, content = "{}"): LlmResponse => ({
  content,
  usage: { promptTokens, cachedTokens: 0, completionTokens: 5 },
  model: "gpt-4o-mini",
  finishReason: "stop",
  refusal: null,
});

/** What the promise was rejected with; null when it resolved. */
export const failureOf = (promise: Promise<unknown>): Promise<unknown> =>
  promise.then(
    () => null,
    (error: unknown) => error,
  );
