import type { BatchApi } from "../../functions/ports/batch-api.ts";
import type { LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { type Logger, silentLogger } from "../../functions/ports/runtime.ts";

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

/** A logger that keeps the message of every warning, and drops the rest. */
export function warningsLogger(): { logger: Logger; warnings: string[] } {
  const warnings: string[] = [];
  return { logger: { ...silentLogger, warn: (message) => warnings.push(message) }, warnings };
}

/**
 * A Batch API that cannot take new work (every upload, create and listing throws `error`) while batches already
 * made can still be read from `existing`.
 */
export function batchApiDown(error: () => Error, existing: BatchApi): BatchApi {
  const down = async (): Promise<never> => {
    throw error();
  };
  return {
    uploadFile: down,
    createBatch: down,
    listBatches: down,
    getBatch: (id) => existing.getBatch(id),
    fileText: (id) => existing.fileText(id),
  };
}
