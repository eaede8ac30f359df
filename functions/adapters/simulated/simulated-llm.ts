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
    return {
      content: answer.content,
      usage: {
        promptTokens: answer.promptTokens,
        cachedTokens: answer.cachedTokens,
        completionTokens: answer.completionTokens,
      },
      model: request.model,
      finishReason: answer.finishReason,
      refusal: null,
    };
  }
}
