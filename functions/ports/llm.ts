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

/** The LLM behind any OpenAI-compatible endpoint (or a simulation of one). */
export interface Llm {
  complete(request: LlmRequest): Promise<LlmResponse>;
  /**
   * When a rate budget shared with other processes cannot admit `request` now: a NoRateBudgetError saying for
   * how long, so the caller steps aside before it claims the request (a claim taken and given back costs two
   * writes). A hint: `complete` still decides. Absent, or resolving, when there is no such budget.
   */
  checkAdmission?(request: LlmRequest): Promise<void>;
}
