import { OpenAI } from "openai";
import type {
  ChatCompletionContentPart,
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionMessageParam,
} from "openai/resources/chat/completions";
import { z } from "zod";
import { LlmAnswerError, LlmCallError } from "../../ports/errors.ts";
import type { ChatMessage, ContentPart, Llm, LlmRequest, LlmResponse } from "../../ports/llm.ts";
import { type Logger, silentLogger } from "../../ports/runtime.ts";
import { classifyFailure, scrubSecrets } from "./classify.ts";
import { createOpenAiClient, type OpenAiClientOptions } from "./client.ts";

/** Timeout default 60 000 ms per attempt. */
export type OpenAiLlmOptions = OpenAiClientOptions;

/** The `x-ratelimit-*` headers of the last answer; a field is null when the server did not send it. */
export interface RateLimitSnapshot {
  readonly limitRequests: number | null;
  readonly remainingRequests: number | null;
  readonly limitTokens: number | null;
  readonly remainingTokens: number | null;
}

/**
 * What we read from a completion. Compatible servers differ (usage or its details missing,
 * `refusal` absent), so only what we use is required.
 */
const CompletionBody = z.object({
  model: z.string().optional(),
  choices: z
    .array(
      z.object({
        finish_reason: z.string().nullish(),
        message: z.object({
          content: z.string().nullish(),
          refusal: z.string().nullish(),
        }),
      }),
    )
    .min(1, "the completion has no choices"),
  usage: z
    .object({
      // Some compatible servers send null for a count they do not keep: read as 0, like a missing one.
      prompt_tokens: z
        .number()
        .int()
        .nonnegative()
        .nullish()
        .transform((n) => n ?? 0),
      completion_tokens: z
        .number()
        .int()
        .nonnegative()
        .nullish()
        .transform((n) => n ?? 0),
      prompt_tokens_details: z.object({ cached_tokens: z.number().int().nonnegative().nullish() }).nullish(),
    })
    .nullish(),
});

const toPart = (part: ContentPart): ChatCompletionContentPart =>
  part.type === "text"
    ? { type: "text", text: part.text }
    : { type: "image_url", image_url: { url: part.imageUrl, detail: part.detail } };

const toMessage = (message: ChatMessage): ChatCompletionMessageParam => {
  if (message.role === "system") {
    // System messages take text only; parts here would be a programming error upstream.
    const text =
      typeof message.content === "string"
        ? message.content
        : message.content.map((part) => (part.type === "text" ? part.text : "")).join("");
    return { role: "system", content: text };
  }
  return {
    role: "user",
    content: typeof message.content === "string" ? message.content : message.content.map(toPart),
  };
};

/** Builds the chat completions body: strict JSON-schema output, fixed seed, bounded answer. */
export const toChatCompletionParams = (request: LlmRequest): ChatCompletionCreateParamsNonStreaming => ({
  model: request.model,
  messages: request.messages.map(toMessage),
  response_format: {
    type: "json_schema",
    json_schema: { name: request.schemaName, strict: true, schema: { ...request.schema } },
  },
  temperature: request.temperature,
  // The paper's code used max_tokens, and it is what compatible servers accept.
  max_tokens: request.maxTokens,
  seed: request.seed,
});

const headerNumber = (headers: Headers, name: string): number | null => {
  const raw = headers.get(name);
  if (raw === null || raw.trim() === "") return null;
  const value = Number(raw);
  return Number.isFinite(value) ? value : null;
};

/** The `x-ratelimit-*` headers of an answer; null when it has none. */
export const readRateLimit = (headers: Headers): RateLimitSnapshot | null => {
  const snapshot: RateLimitSnapshot = {
    limitRequests: headerNumber(headers, "x-ratelimit-limit-requests"),
    remainingRequests: headerNumber(headers, "x-ratelimit-remaining-requests"),
    limitTokens: headerNumber(headers, "x-ratelimit-limit-tokens"),
    remainingTokens: headerNumber(headers, "x-ratelimit-remaining-tokens"),
  };
  return Object.values(snapshot).every((value) => value === null) ? null : snapshot;
};

/** The Llm port over any OpenAI-compatible chat completions endpoint. */
export class OpenAiLlm implements Llm {
  readonly #client: OpenAI;
  readonly #secrets: readonly string[];
  readonly #logger: Logger;
  /** By model: a provider's limits are per model, and calls to two models interleave. */
  readonly #rateLimits = new Map<string, RateLimitSnapshot | null>();

  constructor(options: OpenAiLlmOptions) {
    this.#secrets = [options.apiKey];
    this.#logger = options.logger ?? silentLogger;
    this.#client = createOpenAiClient(options, this.#logger, 60_000);
  }

  /** Rate-limit headers of the last successful answer for `model`, for pacing; null before one. */
  lastRateLimit(model: string): RateLimitSnapshot | null {
    return this.#rateLimits.get(model) ?? null;
  }

  async complete(request: LlmRequest): Promise<LlmResponse> {
    let raw: unknown;
    for (;;) {
      try {
        const { data, response } = await this.#client.chat.completions
          .create(adjusted(toChatCompletionParams(request), this.#refused.get(request.model)))
          .withResponse();
        this.#rateLimits.set(request.model, readRateLimit(response.headers));
        raw = data;
        break;
      } catch (error) {
        if (this.#learnRefused(request.model, error)) continue;
        throw this.#failed(request, error);
      }
    }
    return readCompletion(raw, request, this.#secrets);
  }

  /** By model: the request fields its server refused, which its requests now go without (see ADJUSTABLE). */
  readonly #refused = new Map<string, Set<AdjustableField>>();

  /**
   * A 400 that names one of ADJUSTABLE as not supported for this model (o-series and gpt-5 models refuse
   * max_tokens and a temperature other than 1; some compatible servers refuse seed): noted, so this and every
   * later request to the model is sent without it. The request that was refused was not run, so sending it
   * again costs nothing. True when the request should go again.
   */
  #learnRefused(model: string, error: unknown): boolean {
    if (!(error instanceof OpenAI.APIError) || error.status !== 400) return false;
    const param = typeof error.param === "string" ? error.param : null;
    const unsupported = error.code === "unsupported_parameter" || error.code === "unsupported_value";
    const field = ADJUSTABLE.find((name) => name === param);
    if (!unsupported || field === undefined) return false;
    const refused = this.#refused.get(model) ?? new Set<AdjustableField>();
    if (refused.has(field)) return false;
    refused.add(field);
    this.#refused.set(model, refused);
    this.#logger.warn("the server refused a request field for this model; sending without it from now on", {
      model,
      field,
      instead: field === "max_tokens" ? "max_completion_tokens" : "none (the model's default)",
    });
    return true;
  }

  /** The failure as the stages see it, logged with the key scrubbed. */
  #failed(request: LlmRequest, error: unknown): LlmCallError {
    const failure = classifyFailure(error, this.#secrets);
    this.#logger.warn("llm call failed", {
      model: request.model,
      status: failure.status,
      retryable: failure.retryable,
      error: failure.message,
    });
    return failure;
  }
}

/** Request fields a server may refuse for a model, and that a request can go without. */
const ADJUSTABLE = ["max_tokens", "temperature", "seed"] as const;
type AdjustableField = (typeof ADJUSTABLE)[number];

/** The request without the fields refused for its model: max_tokens becomes max_completion_tokens. */
function adjusted(
  params: ChatCompletionCreateParamsNonStreaming,
  refused: ReadonlySet<AdjustableField> | undefined,
): ChatCompletionCreateParamsNonStreaming {
  if (refused === undefined || refused.size === 0) return params;
  const { max_tokens, temperature, seed, ...rest } = params;
  const field = refused.has("max_tokens") ? "max_completion_tokens" : "max_tokens";
  return {
    ...rest,
    ...(max_tokens == null ? {} : { [field]: max_tokens }),
    ...(refused.has("temperature") || temperature == null ? {} : { temperature }),
    ...(refused.has("seed") || seed == null ? {} : { seed }),
  };
}

/**
 * Reads a chat completion body (a direct answer or a Batch API output line's `response.body`) into an answer:
 * a refusal, a content-filter stop, an answer cut at the token limit or an empty one is an unusable answer
 * (billed: the caller stores what it cost as a spent try and asks again, up to `maxAnswerRetries`), anything
 * unreadable is a server fault worth asking again.
 */
export function readCompletion(
  raw: unknown,
  request: Pick<LlmRequest, "model"> & { readonly maxTokens?: number },
  secrets: readonly string[],
): LlmResponse {
  const parsed = CompletionBody.safeParse(raw);
  if (!parsed.success) {
    // A 200 with an unreadable body is a server fault; asking again may well work.
    throw new LlmCallError(`LLM answer is not a chat completion: ${z.prettifyError(parsed.error)}`, {
      retryable: true,
      status: 200,
      cause: parsed.error,
    });
  }
  const body = parsed.data;
  // Non-empty by the schema's `.min(1)`; the check keeps the type honest.
  const choice = body.choices[0];
  if (choice === undefined) throw new LlmAnswerError("the completion has no choices");
  const finishReason = choice.finish_reason ?? "stop";
  const refusal = choice.message.refusal ?? null;
  const content = choice.message.content ?? "";

  const usage = {
    promptTokens: body.usage?.prompt_tokens ?? 0,
    cachedTokens: body.usage?.prompt_tokens_details?.cached_tokens ?? 0,
    completionTokens: body.usage?.completion_tokens ?? 0,
  };
  // Answered and billed, but not an answer: a try spent, as an empty one (the model samples again).
  if (refusal !== null && refusal !== "")
    throw new LlmAnswerError(`model refused: ${scrubSecrets(refusal, secrets).slice(0, 500)}`, { usage });
  if (finishReason === "content_filter")
    throw new LlmAnswerError("answer blocked by the content filter (finish_reason content_filter)", {
      usage,
    });
  if (finishReason === "length") {
    throw new LlmAnswerError(
      `answer cut at the token limit${request.maxTokens === undefined ? "" : ` (max_tokens ${request.maxTokens})`}`,
      { usage, cutAt: request.maxTokens ?? null },
    );
  }
  if (content.trim() === "") {
    throw new LlmAnswerError(`empty answer (finish_reason ${finishReason})`, { usage });
  }

  return {
    content,
    usage,
    model: body.model ?? request.model,
    finishReason,
    refusal: null,
  };
}
