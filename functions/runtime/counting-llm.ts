import type { ModelPrice } from "../evolution/config.ts";
import { costOf, priceOf } from "../evolution/pricing.ts";
import { LlmAnswerError } from "../ports/errors.ts";
import type { AdmittedCall, Llm, LlmRequest, LlmResponse, LlmUsage } from "../ports/llm.ts";

export interface LlmTotals {
  calls: number;
  failures: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  costUsd: number;
  /** Wall time spent inside calls, summed over concurrent calls. */
  busyMs: number;
}

/** Counts what this process paid for, for progress and benchmarks; the report counts from the state. */
export class CountingLlm implements Llm {
  readonly totals: LlmTotals = {
    calls: 0,
    failures: 0,
    promptTokens: 0,
    cachedTokens: 0,
    completionTokens: 0,
    costUsd: 0,
    busyMs: 0,
  };
  readonly #inner: Llm;
  readonly #prices: Readonly<Record<string, ModelPrice>>;

  constructor(inner: Llm, prices: Readonly<Record<string, ModelPrice>> = {}) {
    this.#inner = inner;
    this.#prices = prices;
  }

  /** The inner Llm's admission, counted like `complete`; without one, a call admitted at once. */
  async admit(request: LlmRequest): Promise<AdmittedCall> {
    const admitted = this.#inner.admit ? await this.#inner.admit(request) : null;
    return {
      complete: () =>
        this.#count(request, () => (admitted ? admitted.complete() : this.#inner.complete(request))),
      cancel: async () => {
        await admitted?.cancel();
      },
    };
  }

  complete(request: LlmRequest): Promise<LlmResponse> {
    return this.#count(request, () => this.#inner.complete(request));
  }

  #paid(request: LlmRequest, usage: LlmUsage): void {
    this.totals.calls += 1;
    this.totals.promptTokens += usage.promptTokens;
    this.totals.cachedTokens += usage.cachedTokens;
    this.totals.completionTokens += usage.completionTokens;
    this.totals.costUsd += costOf(priceOf(request.model, this.#prices), usage);
  }

  async #count(request: LlmRequest, send: () => Promise<LlmResponse>): Promise<LlmResponse> {
    const started = performance.now();
    try {
      const response = await send();
      this.#paid(request, response.usage);
      return response;
    } catch (error) {
      // An unusable answer (cut, empty, refused) was answered and billed all the same.
      if (error instanceof LlmAnswerError && error.usage !== null) this.#paid(request, error.usage);
      this.totals.failures += 1;
      throw error;
    } finally {
      this.totals.busyMs += performance.now() - started;
    }
  }
}
