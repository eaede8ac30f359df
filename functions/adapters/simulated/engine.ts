import { createHash } from "node:crypto";
import { PrefixCache } from "./prefix-cache.ts";
import { fillSchema, fillText, seededRandom } from "./schema-fill.ts";
import { decodeTokens, encodeText, type ImageSize, imagePartTokens, type SimMessage } from "./tokens.ts";

/** A chat request as both the simulated Llm and the simulator server see it. */
export interface SimRequest {
  readonly model: string;
  readonly messages: readonly SimMessage[];
  readonly schemaName: string | null;
  /** The strict JSON Schema of the answer; null for a plain-text answer. */
  readonly schema: unknown;
  /** response_format json_object without a schema: answer some JSON object. */
  readonly jsonObject?: boolean;
  readonly maxTokens: number | null;
  readonly seed: number | null;
}

export interface PreparedRequest {
  readonly request: SimRequest;
  /** Everything that decides the answer, hashed: model, seed, message text and image digests. */
  readonly seedText: string;
  readonly promptTokens: number;
  /** The prompt as tokens (schema first, images as runs of pseudo tokens), for the prefix cache. */
  readonly stream: readonly number[];
}

export interface SimAnswer {
  readonly content: string;
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
  readonly finishReason: "stop" | "length";
}

function sha256(text: string): string {
  return createHash("sha256").update(text).digest("hex");
}

/** Counts and hashes the prompt once; the cache is not touched, so a rejected request costs nothing. */
export function prepareRequest(
  request: SimRequest,
  imageSizes?: ReadonlyMap<string, ImageSize>,
): PreparedRequest {
  const stream: number[] = [];
  const push = (tokens: readonly number[]) => {
    for (const token of tokens) stream.push(token);
  };
  const schema = request.schema ?? null;
  if (schema !== null) push(encodeText(JSON.stringify(schema)));
  const seedParts: string[] = [];
  for (const message of request.messages) {
    push(encodeText(message.role));
    seedParts.push(`<${message.role}>`);
    const parts =
      typeof message.content === "string"
        ? [{ type: "text", text: message.content } as const]
        : message.content;
    for (const part of parts) {
      if (part.type === "text") {
        push(encodeText(part.text));
        seedParts.push(part.text);
        continue;
      }
      // The image's bytes are in its data URL, so its digest identifies the image itself.
      const digest = sha256(part.imageUrl);
      seedParts.push(`<image ${digest} ${part.detail}>`);
      const pseudoToken = -1 - (Number.parseInt(digest.slice(0, 8), 16) >>> 1);
      const count = imagePartTokens(request.model, part, imageSizes);
      for (let i = 0; i < count; i++) stream.push(pseudoToken);
    }
  }
  return {
    request,
    seedText: sha256(JSON.stringify([request.model, request.seed, seedParts])),
    // 3 per message and 3 to prime the answer, as in OpenAI's own counting recipe.
    promptTokens: stream.length + 3 * request.messages.length + 3,
    stream,
  };
}

/** A generic JSON object answer for response_format json_object. */
const ANY_OBJECT = {
  type: "object",
  properties: { answer: { type: "string" } },
  required: ["answer"],
  additionalProperties: false,
};

/** The deterministic model: the answer depends on the request only; the prefix cache on what came before. */
export class SimulatedEngine {
  /** One per model, as a provider's: a prefix another model computed is not cached for this one. */
  readonly #caches = new Map<string, PrefixCache>();

  answer(prepared: PreparedRequest): SimAnswer {
    const { request, seedText, promptTokens } = prepared;
    const schema = request.schema ?? (request.jsonObject === true ? ANY_OBJECT : null);
    let content = schema === null ? fillText(seedText) : JSON.stringify(fillSchema(schema, seedText));
    let tokens = encodeText(content);
    let finishReason: SimAnswer["finishReason"] = "stop";
    if (request.maxTokens !== null && tokens.length > request.maxTokens) {
      // Like the provider: cut at max_tokens, which leaves broken JSON for the caller to notice.
      tokens = tokens.slice(0, request.maxTokens);
      content = decodeTokens(tokens);
      finishReason = "length";
    }
    let cache = this.#caches.get(request.model);
    if (cache === undefined) {
      cache = new PrefixCache();
      this.#caches.set(request.model, cache);
    }
    const shared = cache.lookupAndRemember(prepared.stream);
    const cachedTokens = Math.min(shared, Math.floor(promptTokens / 128) * 128);
    return { content, promptTokens, cachedTokens, completionTokens: tokens.length, finishReason };
  }
}

/** A latency in ms: a fixed number, or drawn from [min, max] by the request's own seed. */
export function latencyFor(
  latencyMs: number | readonly [number, number] | undefined,
  seedText: string,
): number {
  if (latencyMs === undefined) return 0;
  if (typeof latencyMs === "number") return latencyMs;
  const [min, max] = latencyMs;
  return min + seededRandom(`latency:${seedText}`)() * (max - min);
}

export function sleep(ms: number): Promise<void> {
  return ms <= 0 ? Promise.resolve() : new Promise((resolve) => setTimeout(resolve, ms));
}
