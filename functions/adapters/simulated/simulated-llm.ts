import { LlmAnswerError } from "../../ports/errors.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../ports/llm.ts";
import { latencyFor, prepareRequest, SimulatedEngine, sleep } from "./engine.ts";

export interface SimulatedLlmOptions {
  /** Wait this long per call, to make dry runs feel like real ones. Default 0. */
  readonly latencyMs?: number;
}

/**
 * A dry-run Llm: schema-valid, deterministic answers with realistic token usage (image tokens,
 * prefix-cache hits), and no network. Gives the same content as the simulator server.
 */
export class SimulatedLlm implements Llm {
  readonly #engine = new SimulatedEngine();
  readonly #latencyMs: number;

  constructor(options: SimulatedLlmOptions = {}) {
    this.#latencyMs = options.latencyMs ?? 0;
  }

  async complete(request: LlmRequest): Promise<LlmResponse> {
    const prepared = prepareRequest({
      model: request.model,
      messages: request.messages,
      schemaName: request.schemaName,
      schema: request.schema,
      maxTokens: request.maxTokens,
      seed: request.seed,
    });
    const answer = this.#engine.answer(prepared);
    await sleep(latencyFor(this.#latencyMs, prepared.seedText));
    const usage = {
      promptTokens: answer.promptTokens,
      cachedTokens: answer.cachedTokens,
      completionTokens: answer.completionTokens,
    };
    // As OpenAiLlm reads the provider's answer: one cut at max_tokens is unusable, and paid for.
    if (answer.finishReason === "length") {
      throw new LlmAnswerError(`answer cut at the token limit (max_tokens ${request.maxTokens})`, {
        usage,
        cutAt: request.maxTokens,
      });
    }
    return {
      content: answer.content,
      usage,
      model: request.model,
      finishReason: answer.finishReason,
      refusal: null,
    };
  }
}
