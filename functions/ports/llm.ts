/** A text or image part of a user message (OpenAI chat content parts). */
export type ContentPart =
  | { readonly type: "text"; readonly text: string }
  | { readonly type: "image_url"; readonly imageUrl: string; readonly detail: "low" | "high" | "auto" };

export interface ChatMessage {
  readonly role: "system" | "user";
  readonly content: string | readonly ContentPart[];
}

/** One structured chat completion request. `schema` is a strict JSON Schema for the answer. */
export interface LlmRequest {
  readonly model: string;
  readonly messages: readonly ChatMessage[];
  readonly schemaName: string;
  readonly schema: Readonly<Record<string, unknown>>;
  readonly temperature: number;
  readonly maxTokens: number;
  readonly seed: number;
}

export interface LlmUsage {
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
}

export interface LlmResponse {
  /** The raw JSON text of the answer; the caller validates it. */
  readonly content: string;
  readonly usage: LlmUsage;
  readonly model: string;
  readonly finishReason: string;
  readonly refusal: string | null;
}

/** A call whose share of a rate budget is already taken (see `Llm.admit`); used once. */
export interface AdmittedCall {
  /** Sends the request; the budget is then settled with what the call was charged. */
  complete(): Promise<LlmResponse>;
  /** Gives the share back without sending anything. */
  cancel(): Promise<void>;
}

/** The LLM behind any OpenAI-compatible endpoint (or a simulation of one). */
export interface Llm {
  complete(request: LlmRequest): Promise<LlmResponse>;
  /**
   * Where calls share a rate budget: takes `request`'s share now (waiting, or throwing NoRateBudgetError, as
   * the budget does) and returns the call to make with it. The caller claims the request in between, so a
   * message with no budget never claims, and a claim is held only while its call runs. Absent without a budget.
   */
  admit?(request: LlmRequest): Promise<AdmittedCall>;
}
