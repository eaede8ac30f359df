import type { BatchCodec } from "../../ports/batch-api.ts";
import type { LlmRequest, LlmResponse } from "../../ports/llm.ts";
import { countPromptTokens } from "../simulated/tokens.ts";
import { readCompletion, toChatCompletionParams } from "./openai-llm.ts";

/** Batch lines in OpenAI's format: the same chat completions body as online, the same reading of answers. */
export class OpenAiBatchCodec implements BatchCodec {
  readonly #secrets: readonly string[];

  constructor(secrets: readonly string[] = []) {
    this.#secrets = secrets;
  }

  encode(request: LlmRequest): Record<string, unknown> {
    return { ...toChatCompletionParams(request) };
  }

  decode(body: unknown, model: string): LlmResponse {
    return readCompletion(body, { model }, this.#secrets);
  }

  /** OpenAI's count: the o200k tokens of the messages and schema, images at their billed size. */
  promptTokens(request: LlmRequest): number {
    return countPromptTokens(request);
  }
}
