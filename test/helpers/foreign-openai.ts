import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { prng } from "./bench-shard.ts";

/**
 * A small OpenAI-compatible server written from OpenAI's API reference, independent of our own simulator
 * (nothing here comes from functions/adapters/simulated/). It behaves the way api.openai.com does where our
 * simulator is kinder: dated model snapshots in answers, strict-schema checks, a character-based token estimate
 * for the rate limiter, `x-ratelimit-reset-*` in Go duration format, batches that pass through validating,
 * in_progress and finalizing over successive polls, output and error files in an order unrelated to the input,
 * requests failing into the error file, expired batches, batches whose every request failed (no output file),
 * and batches refused for the organization's enqueued-token limit.
 */

export type BatchFault = "expire" | "fail-all" | null;

export interface ForeignServerOptions {
  /** When set, every request must carry `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
  /** Latency of a chat completion, ms: a fixed value or a [min, max] range. Default [2, 10]. */
  readonly latencyMs?: number | readonly [number, number];
  /** Enforced tokens-per-minute limit of the chat endpoint (429 when over). Reported as 2,000,000 otherwise. */
  readonly tokensPerMinute?: number;
  /** Enforced requests-per-minute limit of the chat endpoint (429 when over). Reported as 5,000 otherwise. */
  readonly requestsPerMinute?: number;
  /** Whether a 429 carries `retry-after-ms` / `retry-after` (default true); x-ratelimit-reset-* always does. */
  readonly sendRetryAfter?: boolean;
  /** The organization is out of credit: every chat completion is a 429 `insufficient_quota`, as OpenAI sends it. */
  readonly quotaExhausted?: boolean;
  readonly batch?: {
    /** Polls a batch spends in each of validating, in_progress and finalizing (default 1). */
    readonly pollsPerStage?: number;
    /** Share of requests (chosen by custom_id) whose first `failAttempts` batch runs fail with a 500. */
    readonly failShare?: number;
    /** How many batch runs of a chosen request fail (default 1: the next batch answers it). */
    readonly failAttempts?: number;
    /** What happens to the n-th batch created (0-based): expire part-way, or fail every request. */
    readonly faultFor?: (batchIndex: number) => BatchFault;
    /** Share of an expiring batch's requests that were answered before it expired (default 0.5). */
    readonly expireDoneShare?: number;
    /**
     * The organization's enqueued-token limit for the model (prompt tokens of every batch not finished yet):
     * a batch that would pass it fails validation with `token_limit_exceeded`.
     */
    readonly enqueuedTokenLimit?: number;
  };
  /** Seed of the shuffles and fault choices (default 1). */
  readonly seed?: number;
}

export interface ForeignStats {
  chatRequests: number;
  chatAnswered: number;
  chat429: number;
  chat400: number;
  /** Sums over every answer sent (online and batch): what the usage of the answers says. */
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  filesUploaded: number;
  batchesCreated: number;
  batchLinesAnswered: number;
  batchLinesFailed: number;
  batchLinesExpired: number;
  /** Every chat completion request: when, its status, what the limiter charged (0 unless answered). */
  readonly chatLog: { at: number; status: number; charged: number }[];
  /** custom_id -> how many batches its request was run in (past validation). */
  readonly batchAttempts: Map<string, number>;
  /** custom_ids that got an error line (500, 400 or batch_expired) at least once. */
  readonly failedCustomIds: Set<string>;
  /** Statuses each batch was in when GET /v1/batches/{id} answered, in order. */
  readonly batchStatusesSeen: Map<string, string[]>;
  /** Final status of each finished batch, and the error codes of those that failed validation. */
  readonly batchFinal: Map<string, string>;
  readonly batchErrors: Map<string, string[]>;
  /** Fingerprints (sha256 of the JSON body) of the requests answered online. */
  readonly onlineBodies: Set<string>;
  /** custom_id -> fingerprint of its body, for every batch line that passed validation. */
  readonly batchBodies: Map<string, string>;
  /** Why requests were refused with 400, online or in a batch line. */
  readonly badRequests: string[];
  /** The largest prompt of any answer sent, in tokens. */
  maxPromptTokens: number;
}

export interface ForeignServer {
  /** Base URL including `/v1`, for the openai client's `baseURL`. */
  readonly url: string;
  readonly stats: ForeignStats;
  /** The account gets credit again: calls are answered from now on (see `quotaExhausted`). */
  topUp(): void;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------- helpers

const sha256 = (text: string): string => createHash("sha256").update(text).digest("hex");
const unitOf = (text: string, seed: number): number =>
  Number.parseInt(sha256(`${seed}:${text}`).slice(0, 8), 16) / 2 ** 32;
const randomId = (prefix: string, length = 24): string =>
  `${prefix}${randomBytes(length).toString("base64url").replace(/[-_]/g, "x").slice(0, length)}`;
const nowSeconds = (): number => Math.floor(Date.now() / 1000);

/** The same request body online and in a batch line has the same fingerprint. */
export const fingerprintOf = (body: unknown): string => sha256(JSON.stringify(body));

/** OpenAI's `x-ratelimit-reset-*` format (Go durations): "20ms", "1s", "1.5s", "6m0s", "1m30.5s". */
export function formatResetDuration(ms: number): string {
  const clamped = Math.max(0, ms);
  if (clamped < 1000) return `${Math.ceil(clamped)}ms`;
  const trim = (seconds: number): string => String(Number(seconds.toFixed(3)));
  const total = clamped / 1000;
  if (total < 60) return `${trim(total)}s`;
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total - hours * 3600 - minutes * 60;
  return `${hours > 0 ? `${hours}h` : ""}${minutes}m${trim(seconds)}s`;
}

interface ApiError {
  readonly status: number;
  readonly message: string;
  readonly type?: string;
  readonly code?: string | null;
  readonly param?: string | null;
}

const errorBody = (e: ApiError) => ({
  error: {
    message: e.message,
    type: e.type ?? "invalid_request_error",
    param: e.param ?? null,
    code: e.code ?? null,
  },
});

type Schema = Record<string, unknown>;
const isObject = (value: unknown): value is Schema =>
  typeof value === "object" && value !== null && !Array.isArray(value);

// ------------------------------------------------------------------------------------- JSON schemas

/** A value valid against a (structured-outputs) JSON schema: first enum, required props, 1-2 array items. */
export function fillSchema(root: unknown, salt: string): unknown {
  let counter = 0;
  const resolve = (schema: Schema): Schema => {
    if (typeof schema.$ref !== "string" || !schema.$ref.startsWith("#/")) return schema;
    let node: unknown = root;
    for (const part of schema.$ref.slice(2).split("/")) node = isObject(node) ? node[part] : undefined;
    return isObject(node) ? node : {};
  };
  const fill = (raw: unknown, key: string, depth: number): unknown => {
    if (!isObject(raw)) return null;
    const schema = resolve(raw);
    if ("const" in schema) return schema.const;
    if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[0];
    for (const combinator of ["anyOf", "oneOf", "allOf"]) {
      const options = schema[combinator];
      if (Array.isArray(options) && options.length > 0)
        return fill(options.find((o) => !(isObject(o) && o.type === "null")) ?? options[0], key, depth);
    }
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    switch (types.find((t) => t !== "null") ?? types[0]) {
      case "object": {
        const properties = isObject(schema.properties) ? schema.properties : {};
        const required = Array.isArray(schema.required) ? schema.required.map(String) : [];
        return Object.fromEntries(
          required.map((name) => [name, fill(properties[name] ?? {}, name, depth + 1)]),
        );
      }
      case "array": {
        counter += 1;
        const min = typeof schema.minItems === "number" ? schema.minItems : 1;
        const max = typeof schema.maxItems === "number" ? schema.maxItems : 2;
        const count = Math.max(min, Math.min(max, depth < 2 ? 1 + (counter % 2) : 1));
        return Array.from({ length: count }, () => fill(schema.items ?? {}, key, depth + 1));
      }
      case "integer":
      case "number":
        return typeof schema.maximum === "number"
          ? schema.maximum
          : typeof schema.minimum === "number"
            ? schema.minimum
            : 1;
      case "boolean":
        return true;
      case "null":
        return null;
      default:
        counter += 1;
        return `${key} ${salt}-${counter}: a detail of the picture`;
    }
  };
  return fill(root, "value", 0);
}

/**
 * Structured Outputs' strict mode: the root is an object, and every object lists all its properties in
 * `required` and sets `additionalProperties: false`. The first violation, worded as the API words it.
 */
export function strictSchemaProblem(schema: unknown, name: string): string | null {
  if (!isObject(schema) || schema.type !== "object")
    return `Invalid schema for response_format '${name}': schema must be a JSON Schema of 'type: "object"', got 'type: "${isObject(schema) ? String(schema.type) : "none"}"'.`;
  const visit = (node: unknown, context: string[]): string | null => {
    if (Array.isArray(node)) {
      for (const [i, item] of node.entries()) {
        const found = visit(item, [...context, String(i)]);
        if (found) return found;
      }
      return null;
    }
    if (!isObject(node)) return null;
    const where = `In context=(${context.map((c) => `'${c}'`).join(", ")}${context.length === 1 ? "," : ""})`;
    const types = Array.isArray(node.type) ? node.type : [node.type];
    if (types.includes("object") || isObject(node.properties)) {
      if (node.additionalProperties !== false)
        return `Invalid schema for response_format '${name}': ${where}, 'additionalProperties' is required to be supplied and to be false.`;
      const keys = Object.keys(isObject(node.properties) ? node.properties : {});
      const required = Array.isArray(node.required) ? node.required : [];
      const missing = keys.find((key) => !required.includes(key));
      if (missing !== undefined)
        return `Invalid schema for response_format '${name}': ${where}, 'required' is required to be supplied and to be an array including every key in properties. Missing '${missing}'.`;
    }
    for (const key of ["properties", "$defs", "definitions"]) {
      if (!isObject(node[key])) continue;
      for (const [child, sub] of Object.entries(node[key])) {
        const found = visit(sub, [...context, key, child]);
        if (found) return found;
      }
    }
    for (const key of ["items", "anyOf"]) {
      const found = node[key] === undefined ? null : visit(node[key], [...context, key]);
      if (found) return found;
    }
    return null;
  };
  return visit(schema, []);
}

// --------------------------------------------------------------------------------------- token estimates

interface ChatBody {
  readonly model?: unknown;
  readonly messages?: unknown;
  readonly response_format?: unknown;
  readonly max_tokens?: unknown;
  readonly max_completion_tokens?: unknown;
}

/**
 * The prompt as the limiter and the prefix cache see it: 4 characters of text per token, an image 85 tokens at
 * low detail and 765 otherwise (its slots named after the image's bytes), the response schema last.
 */
function promptText(body: ChatBody): string {
  const parts: string[] = [];
  for (const message of Array.isArray(body.messages) ? body.messages : []) {
    if (!isObject(message)) continue;
    parts.push(`<|${String(message.role)}|>`);
    const content = message.content;
    if (typeof content === "string") parts.push(content);
    for (const part of Array.isArray(content) ? content : []) {
      if (!isObject(part)) continue;
      if (part.type === "text" && typeof part.text === "string") parts.push(part.text);
      if (part.type === "image_url" && isObject(part.image_url)) {
        const tokens = part.image_url.detail === "low" ? 85 : 765;
        parts.push(
          sha256(String(part.image_url.url ?? ""))
            .slice(0, 4)
            .repeat(tokens),
        );
      }
    }
  }
  if (isObject(body.response_format)) parts.push(JSON.stringify(body.response_format));
  return parts.join("");
}

const tokensOf = (text: string): number => Math.ceil(text.length / 4);
const maxTokensOf = (body: ChatBody): number => {
  const value = body.max_completion_tokens ?? body.max_tokens;
  return typeof value === "number" && value > 0 ? value : 4096;
};

/** Prompt caching: prefixes of 1024 tokens and more, in 128-token steps, seen before are billed cached. */
class PrefixCache {
  readonly #seen = new Set<string>();

  lookup(text: string, promptTokens: number): number {
    let cached = 0;
    const keys: string[] = [];
    for (let tokens = 1024; tokens <= promptTokens; tokens += 128) {
      const key = sha256(text.slice(0, tokens * 4));
      keys.push(key);
      if (this.#seen.has(key)) cached = tokens;
    }
    for (const key of keys) this.#seen.add(key);
    return cached;
  }
}

/** A bucket refilled continuously, `limit` per minute. */
class Limiter {
  readonly limit: number;
  #level: number;
  #at = performance.now();

  constructor(limit: number) {
    this.limit = limit;
    this.#level = limit;
  }

  #refill(): void {
    const now = performance.now();
    this.#level = Math.min(this.limit, this.#level + ((now - this.#at) * this.limit) / 60_000);
    this.#at = now;
  }

  /** 0 when `cost` was taken (always, when `enforce` is false); else the ms until it would fit. */
  take(cost: number, enforce: boolean): number {
    this.#refill();
    if (enforce && this.#level < cost)
      return Math.ceil(((Math.min(cost, this.limit) - this.#level) * 60_000) / this.limit);
    this.#level = Math.max(0, this.#level - cost);
    return 0;
  }

  get remaining(): number {
    this.#refill();
    return Math.floor(this.#level);
  }

  get resetMs(): number {
    this.#refill();
    return ((this.limit - this.#level) * 60_000) / this.limit;
  }
}

/** Answers name the dated snapshot the alias points at, as the real API does. */
const snapshotOf = (model: string): string =>
  /\d{4}-\d{2}-\d{2}$/.test(model) ? model : `${model}-2024-07-18`;

// ----------------------------------------------------------------------------------------------- server

interface StoredFile {
  readonly id: string;
  readonly bytes: Buffer;
  readonly filename: string;
  readonly purpose: string;
  readonly createdAt: number;
}

interface BatchLine {
  readonly custom_id: string;
  readonly body: unknown;
}

interface StoredBatch {
  readonly id: string;
  readonly index: number;
  readonly inputFileId: string;
  readonly metadata: Record<string, string> | null;
  readonly createdAt: number;
  status: string;
  polls: number;
  total: number;
  completed: number;
  failed: number;
  outputFileId: string | null;
  errorFileId: string | null;
  errors: { code: string; message: string; param: string | null; line: number | null }[] | null;
  at: Record<"in_progress" | "finalizing" | "completed" | "failed" | "expired" | "cancelled", number | null>;
  lines: BatchLine[];
  /** Prompt tokens it holds of the enqueued-token limit while not finished. */
  enqueued: number;
}

const FINISHED = new Set(["completed", "failed", "expired", "cancelled"]);

export async function startForeignServer(options: ForeignServerOptions = {}): Promise<ForeignServer> {
  const seed = options.seed ?? 1;
  let quotaExhausted = options.quotaExhausted === true;
  const random = prng(seed);
  const cache = new PrefixCache();
  const tokens = new Limiter(options.tokensPerMinute ?? 2_000_000);
  const requests = new Limiter(options.requestsPerMinute ?? 5_000);
  const batchOptions = options.batch ?? {};
  const pollsPerStage = Math.max(1, batchOptions.pollsPerStage ?? 1);
  const files = new Map<string, StoredFile>();
  const batches = new Map<string, StoredBatch>();
  const stats: ForeignStats = {
    chatRequests: 0,
    chatAnswered: 0,
    chat429: 0,
    chat400: 0,
    promptTokens: 0,
    cachedTokens: 0,
    completionTokens: 0,
    filesUploaded: 0,
    batchesCreated: 0,
    batchLinesAnswered: 0,
    batchLinesFailed: 0,
    batchLinesExpired: 0,
    chatLog: [],
    batchAttempts: new Map(),
    failedCustomIds: new Set(),
    batchStatusesSeen: new Map(),
    batchFinal: new Map(),
    batchErrors: new Map(),
    onlineBodies: new Set(),
    batchBodies: new Map(),
    badRequests: [],
    maxPromptTokens: 0,
  };

  const send = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, {
      "content-type": "application/json",
      "x-request-id": randomId("req_", 32),
      "openai-processing-ms": String(Math.floor(random() * 40) + 5),
      ...headers,
    });
    res.end(JSON.stringify(body));
  };
  const fail = (res: ServerResponse, error: ApiError, headers: Record<string, string> = {}) =>
    send(res, error.status, errorBody(error), headers);

  const rateHeaders = (): Record<string, string> => ({
    "x-ratelimit-limit-requests": String(requests.limit),
    "x-ratelimit-limit-tokens": String(tokens.limit),
    "x-ratelimit-remaining-requests": String(requests.remaining),
    "x-ratelimit-remaining-tokens": String(tokens.remaining),
    "x-ratelimit-reset-requests": formatResetDuration(requests.resetMs),
    "x-ratelimit-reset-tokens": formatResetDuration(tokens.resetMs),
  });

  /** Why the API would refuse this chat completions body with a 400; null when it would not. */
  const invalid = (body: unknown): ApiError | null => {
    const bad = (message: string, param: string): ApiError => ({ status: 400, message, param });
    if (!isObject(body)) return bad("We could not parse the JSON body of your request.", "body");
    if (typeof body.model !== "string" || body.model === "")
      return bad("you must provide a model parameter", "model");
    if (!Array.isArray(body.messages) || body.messages.length === 0)
      return bad("[] is too short - 'messages'", "messages");
    const format = body.response_format;
    if (isObject(format) && format.type === "json_schema") {
      const js = format.json_schema;
      if (!isObject(js) || typeof js.name !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(js.name))
        return bad(
          "Invalid 'response_format.json_schema.name': string does not match pattern.",
          "response_format",
        );
      const problem = js.strict === true ? strictSchemaProblem(js.schema, js.name) : null;
      if (problem !== null) return bad(problem, "response_format");
    }
    return null;
  };

  /** A chat completion for a valid body: a schema-filling answer, usage with the prefix cache applied. */
  const complete = (body: ChatBody): Record<string, unknown> => {
    const text = promptText(body);
    const promptTokens = tokensOf(text) + 3;
    const cached = cache.lookup(text, promptTokens);
    const format = isObject(body.response_format) ? body.response_format : {};
    const jsonSchema = isObject(format.json_schema) ? format.json_schema : null;
    const salt = sha256(text).slice(0, 6);
    let content =
      format.type === "json_schema" && jsonSchema !== null
        ? JSON.stringify(fillSchema(jsonSchema.schema ?? {}, salt))
        : `An answer (${salt}).`;
    let completionTokens = tokensOf(content);
    let finishReason = "stop";
    if (completionTokens > maxTokensOf(body)) {
      completionTokens = maxTokensOf(body);
      content = content.slice(0, completionTokens * 4);
      finishReason = "length";
    }
    stats.promptTokens += promptTokens;
    stats.maxPromptTokens = Math.max(stats.maxPromptTokens, promptTokens);
    stats.cachedTokens += cached;
    stats.completionTokens += completionTokens;
    return {
      id: randomId("chatcmpl-", 29),
      object: "chat.completion",
      created: nowSeconds(),
      model: snapshotOf(String(body.model)),
      choices: [
        {
          index: 0,
          message: { role: "assistant", content, refusal: null, annotations: [] },
          logprobs: null,
          finish_reason: finishReason,
        },
      ],
      usage: {
        prompt_tokens: promptTokens,
        completion_tokens: completionTokens,
        total_tokens: promptTokens + completionTokens,
        prompt_tokens_details: { cached_tokens: cached, audio_tokens: 0 },
        completion_tokens_details: {
          reasoning_tokens: 0,
          audio_tokens: 0,
          accepted_prediction_tokens: 0,
          rejected_prediction_tokens: 0,
        },
      },
      service_tier: "default",
      system_fingerprint: "fp_f00df00d01",
    };
  };

  const latency = (): number => {
    const l = options.latencyMs ?? [2, 10];
    return typeof l === "number" ? l : l[0] + random() * (l[1] - l[0]);
  };

  async function chat(req: IncomingMessage, res: ServerResponse): Promise<void> {
    stats.chatRequests += 1;
    const body = parseJson(await readBody(req));
    const problem = invalid(body);
    if (problem !== null || !isObject(body)) {
      stats.chat400 += 1;
      stats.badRequests.push(problem?.message ?? "bad body");
      stats.chatLog.push({ at: Date.now(), status: 400, charged: 0 });
      fail(res, problem ?? { status: 400, message: "bad body" });
      return;
    }
    if (quotaExhausted) {
      stats.chat429 += 1;
      stats.chatLog.push({ at: Date.now(), status: 429, charged: 0 });
      return fail(res, {
        status: 429,
        message:
          "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        type: "insufficient_quota",
        code: "insufficient_quota",
      });
    }
    // The limiter charges at admission: the estimated prompt plus the whole max_tokens.
    const charge = tokensOf(promptText(body)) + maxTokensOf(body);
    const waitRequests = requests.take(1, options.requestsPerMinute !== undefined);
    const waitTokens = waitRequests > 0 ? 0 : tokens.take(charge, options.tokensPerMinute !== undefined);
    if (waitRequests > 0 || waitTokens > 0) {
      stats.chat429 += 1;
      stats.chatLog.push({ at: Date.now(), status: 429, charged: 0 });
      const [kind, short, limiter, wait, asked] =
        waitRequests > 0
          ? (["requests", "RPM", requests, waitRequests, 1] as const)
          : (["tokens", "TPM", tokens, waitTokens, charge] as const);
      const message = `Rate limit reached for ${String(body.model)} in organization org-foreign on ${kind} per min (${short}): Limit ${limiter.limit}, Used ${limiter.limit - limiter.remaining}, Requested ${asked}. Please try again in ${formatResetDuration(wait)}. Visit https://platform.openai.com/account/rate-limits to learn more.`;
      const retryAfter =
        options.sendRetryAfter === false
          ? {}
          : { "retry-after-ms": String(wait), "retry-after": String(Math.ceil(wait / 1000)) };
      fail(
        res,
        { status: 429, message, type: kind, code: "rate_limit_exceeded" },
        { ...rateHeaders(), ...retryAfter },
      );
      return;
    }
    stats.chatLog.push({ at: Date.now(), status: 200, charged: charge });
    const headers = rateHeaders();
    await new Promise((resolve) => setTimeout(resolve, latency()));
    const completion = complete(body);
    stats.chatAnswered += 1;
    stats.onlineBodies.add(fingerprintOf(body));
    send(res, 200, completion, headers);
  }

  // -------------------------------------------------------------------------------------------- files

  const fileObject = (file: StoredFile) => ({
    id: file.id,
    object: "file",
    bytes: file.bytes.byteLength,
    created_at: file.createdAt,
    expires_at: null,
    filename: file.filename,
    purpose: file.purpose,
    status: "processed",
    status_details: null,
  });

  const storeFile = (bytes: Buffer, filename: string, purpose: string): StoredFile => {
    const file: StoredFile = { id: randomId("file-", 22), bytes, filename, purpose, createdAt: nowSeconds() };
    files.set(file.id, file);
    return file;
  };

  async function uploadFile(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const type = req.headers["content-type"] ?? "";
    const boundary = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(type);
    const raw = await readBody(req);
    if (!type.startsWith("multipart/form-data") || boundary === null)
      return fail(res, { status: 400, message: "Expected a multipart/form-data upload." });
    const parts = parseMultipart(raw, boundary[1] ?? boundary[2] ?? "");
    const purpose = parts.find((p) => p.name === "purpose")?.data.toString("utf8") ?? "";
    const file = parts.find((p) => p.name === "file");
    if (file?.filename === null || file === undefined)
      return fail(res, { status: 400, message: "'file' is a required property", param: "file" });
    const purposes = ["assistants", "batch", "fine-tune", "vision", "user_data", "evals"];
    if (!purposes.includes(purpose))
      return fail(res, {
        status: 400,
        message: `'${purpose}' is not one of ${JSON.stringify(purposes)} - 'purpose'`,
        param: "purpose",
      });
    if (purpose === "batch" && file.data.byteLength > 200 * 1024 * 1024)
      return fail(res, { status: 413, message: "File is too large.", code: "file_too_large", param: "file" });
    stats.filesUploaded += 1;
    send(res, 200, fileObject(storeFile(file.data, file.filename, purpose)));
  }

  // ------------------------------------------------------------------------------------------ batches

  const batchObject = (b: StoredBatch) => ({
    id: b.id,
    object: "batch",
    endpoint: "/v1/chat/completions",
    errors: b.errors === null ? null : { object: "list", data: b.errors },
    input_file_id: b.inputFileId,
    completion_window: "24h",
    status: b.status,
    output_file_id: b.outputFileId,
    error_file_id: b.errorFileId,
    created_at: b.createdAt,
    in_progress_at: b.at.in_progress,
    expires_at: b.createdAt + 86_400,
    finalizing_at: b.at.finalizing,
    completed_at: b.at.completed,
    failed_at: b.at.failed,
    expired_at: b.at.expired,
    cancelling_at: null,
    cancelled_at: b.at.cancelled,
    request_counts: { total: b.total, completed: b.completed, failed: b.failed },
    metadata: b.metadata,
  });

  async function createBatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = parseJson(await readBody(req));
    if (!isObject(body))
      return fail(res, { status: 400, message: "We could not parse the JSON body of your request." });
    if (body.endpoint !== "/v1/chat/completions" && body.endpoint !== "/v1/responses")
      return fail(res, {
        status: 400,
        message: `Invalid value: '${String(body.endpoint)}'.`,
        code: "invalid_value",
        param: "endpoint",
      });
    if (body.completion_window !== "24h")
      return fail(res, {
        status: 400,
        message: `Invalid value: '${String(body.completion_window)}'. Supported values are: '24h'.`,
        code: "invalid_value",
        param: "completion_window",
      });
    let metadata: Record<string, string> | null = null;
    if (body.metadata !== undefined && body.metadata !== null) {
      const entries = isObject(body.metadata) ? Object.entries(body.metadata) : [];
      if (
        !isObject(body.metadata) ||
        entries.length > 16 ||
        entries.some(([k, v]) => k.length > 64 || typeof v !== "string" || v.length > 512)
      )
        return fail(res, {
          status: 400,
          message:
            "Invalid 'metadata': at most 16 pairs, keys of at most 64 characters, string values of at most 512.",
          code: "invalid_value",
          param: "metadata",
        });
      metadata = Object.fromEntries(entries.map(([k, v]) => [k, String(v)]));
    }
    const input = typeof body.input_file_id === "string" ? files.get(body.input_file_id) : undefined;
    if (input === undefined)
      return fail(res, {
        status: 404,
        message: `No such File object: ${String(body.input_file_id)}`,
        param: "input_file_id",
      });
    if (input.purpose !== "batch")
      return fail(res, {
        status: 400,
        message: "The input file must have purpose 'batch'.",
        param: "input_file_id",
      });
    const batch: StoredBatch = {
      id: randomId("batch_", 32),
      index: stats.batchesCreated,
      inputFileId: input.id,
      metadata,
      createdAt: nowSeconds(),
      status: "validating",
      polls: 0,
      total: 0,
      completed: 0,
      failed: 0,
      outputFileId: null,
      errorFileId: null,
      errors: null,
      at: {
        in_progress: null,
        finalizing: null,
        completed: null,
        failed: null,
        expired: null,
        cancelled: null,
      },
      lines: [],
      enqueued: 0,
    };
    stats.batchesCreated += 1;
    batches.set(batch.id, batch);
    stats.batchStatusesSeen.set(batch.id, []);
    send(res, 200, batchObject(batch));
  }

  const finish = (batch: StoredBatch, status: "completed" | "failed" | "expired" | "cancelled"): void => {
    batch.status = status;
    batch.at[status] = nowSeconds();
    batch.enqueued = 0;
    stats.batchFinal.set(batch.id, status);
  };

  /** Validates the input file's format (not the bodies: a bad body is a 400 line in the error file). */
  const validate = (batch: StoredBatch): void => {
    const text = files.get(batch.inputFileId)?.bytes.toString("utf8") ?? "";
    const errors: NonNullable<StoredBatch["errors"]> = [];
    const ids = new Set<string>();
    const models = new Set<string>();
    const lines: BatchLine[] = [];
    const problem = (code: string, message: string, line: number | null, param: string | null = null) =>
      errors.push({ code, message, param, line });
    for (const [i, line] of text.split("\n").entries()) {
      if (line.trim() === "") continue;
      const parsed = parseJson(Buffer.from(line));
      if (!isObject(parsed)) problem("invalid_json_line", "This line is not parseable as valid JSON.", i + 1);
      else if (typeof parsed.custom_id !== "string")
        problem("missing_required_parameter", "Missing required parameter: 'custom_id'.", i + 1, "custom_id");
      else if (parsed.method !== "POST") problem("invalid_value", "Only POST is supported.", i + 1, "method");
      else if (parsed.url !== "/v1/chat/completions")
        problem(
          "invalid_url",
          "The URL provided for this request does not match the batch endpoint.",
          i + 1,
          "url",
        );
      else if (ids.has(parsed.custom_id))
        problem(
          "duplicate_custom_id",
          "The custom_id for this request is a duplicate of another request. The custom_id parameter must be unique for each request in a batch.",
          i + 1,
        );
      else if (!isObject(parsed.body)) problem("invalid_request", "Missing 'body'.", i + 1, "body");
      else {
        ids.add(parsed.custom_id);
        models.add(String(parsed.body.model));
        lines.push({ custom_id: parsed.custom_id, body: parsed.body });
      }
    }
    if (errors.length === 0 && models.size > 1)
      problem(
        "model_mismatch",
        "Each batch input file can only include requests to a single model.",
        null,
        "model",
      );
    if (errors.length === 0 && lines.length === 0)
      problem("empty_file", "The batch input file is empty.", null);
    const enqueued = lines.reduce((sum, line) => sum + tokensOf(promptText(line.body as ChatBody)), 0);
    const limit = batchOptions.enqueuedTokenLimit;
    if (errors.length === 0 && limit !== undefined) {
      const others = [...batches.values()].reduce((sum, b) => sum + b.enqueued, 0);
      if (others + enqueued > limit)
        problem(
          "token_limit_exceeded",
          `Enqueued token limit reached for ${[...models][0]} in organization org-foreign. Limit: ${limit.toLocaleString("en-US")} enqueued tokens. Please try again once some in_progress batches have been completed.`,
          null,
        );
    }
    if (errors.length > 0) {
      batch.errors = errors;
      stats.batchErrors.set(
        batch.id,
        errors.map((e) => e.code),
      );
      finish(batch, "failed");
      return;
    }
    batch.lines = lines;
    batch.total = lines.length;
    batch.enqueued = enqueued;
    batch.status = "in_progress";
    batch.at.in_progress = nowSeconds();
    for (const line of lines) {
      stats.batchAttempts.set(line.custom_id, (stats.batchAttempts.get(line.custom_id) ?? 0) + 1);
      stats.batchBodies.set(line.custom_id, fingerprintOf(line.body));
    }
  };

  const shuffle = <T>(items: readonly T[]): T[] => {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [out[i], out[j]] = [out[j] as T, out[i] as T];
    }
    return out;
  };

  const responseLine = (customId: string, statusCode: number, body: unknown) => ({
    id: randomId("batch_req_", 32),
    custom_id: customId,
    response: { status_code: statusCode, request_id: randomId("", 32), body },
    error: null,
  });

  /** Runs every request of an in_progress batch: it ends finalizing, or expired. */
  const execute = (batch: StoredBatch): void => {
    const fault = batchOptions.faultFor?.(batch.index) ?? null;
    const outputs: unknown[] = [];
    const errors: unknown[] = [];
    const failError = (customId: string) => {
      batch.failed += 1;
      stats.failedCustomIds.add(customId);
    };
    const ran =
      fault === "expire"
        ? Math.floor(batch.lines.length * (batchOptions.expireDoneShare ?? 0.5))
        : batch.lines.length;
    // Which requests ran before the window closed has nothing to do with their order in the input.
    for (const [i, line] of shuffle(batch.lines).entries()) {
      const attempt = stats.batchAttempts.get(line.custom_id) ?? 1;
      const problem = invalid(line.body);
      if (i >= ran) {
        stats.batchLinesExpired += 1;
        failError(line.custom_id);
        errors.push({
          id: randomId("batch_req_", 32),
          custom_id: line.custom_id,
          response: null,
          error: {
            code: "batch_expired",
            message: "This request could not be executed before the completion window expired.",
          },
        });
      } else if (problem !== null) {
        stats.batchLinesFailed += 1;
        stats.badRequests.push(problem.message);
        failError(line.custom_id);
        errors.push(responseLine(line.custom_id, 400, errorBody(problem)));
      } else if (
        fault === "fail-all" ||
        (unitOf(line.custom_id, seed) < (batchOptions.failShare ?? 0) &&
          attempt <= (batchOptions.failAttempts ?? 1))
      ) {
        stats.batchLinesFailed += 1;
        failError(line.custom_id);
        errors.push(
          responseLine(
            line.custom_id,
            500,
            errorBody({
              status: 500,
              message:
                "The server had an error processing your request. Sorry about that! You can retry your request, or contact us through our help center at help.openai.com if you keep seeing this error.",
              type: "server_error",
            }),
          ),
        );
      } else {
        stats.batchLinesAnswered += 1;
        batch.completed += 1;
        outputs.push(responseLine(line.custom_id, 200, complete(line.body as ChatBody)));
      }
    }
    const jsonl = (items: unknown[]) =>
      Buffer.from(items.map((item) => `${JSON.stringify(item)}\n`).join(""));
    if (outputs.length > 0)
      batch.outputFileId = storeFile(jsonl(shuffle(outputs)), `${batch.id}_output.jsonl`, "batch_output").id;
    if (errors.length > 0)
      batch.errorFileId = storeFile(jsonl(shuffle(errors)), `${batch.id}_error.jsonl`, "batch_output").id;
    batch.lines = [];
    if (fault === "expire") finish(batch, "expired");
    else {
      batch.status = "finalizing";
      batch.at.finalizing = nowSeconds();
    }
  };

  /** One poll's worth of progress: a batch moves through every stage, `pollsPerStage` polls each. */
  const advance = (batch: StoredBatch): void => {
    batch.polls += 1;
    if (batch.polls % pollsPerStage !== 0) return;
    if (batch.status === "validating") validate(batch);
    else if (batch.status === "in_progress") execute(batch);
    else if (batch.status === "finalizing") finish(batch, "completed");
  };

  function getBatch(id: string, res: ServerResponse): void {
    const batch = batches.get(id);
    if (batch === undefined) return fail(res, { status: 404, message: `No batch found with id '${id}'.` });
    stats.batchStatusesSeen.get(id)?.push(batch.status);
    send(res, 200, batchObject(batch));
    advance(batch);
  }

  function listBatches(url: URL, res: ServerResponse): void {
    const limit = Math.min(100, Math.max(1, Number(url.searchParams.get("limit") ?? 20) || 20));
    const after = url.searchParams.get("after");
    const all = [...batches.values()].sort((a, b) => b.index - a.index);
    const start = after === null ? 0 : all.findIndex((b) => b.id === after) + 1;
    const page = all.slice(start, start + limit);
    send(res, 200, {
      object: "list",
      data: page.map(batchObject),
      first_id: page[0]?.id ?? null,
      last_id: page.at(-1)?.id ?? null,
      has_more: start + limit < all.length,
    });
  }

  function cancelBatch(id: string, res: ServerResponse): void {
    const batch = batches.get(id);
    if (batch === undefined) return fail(res, { status: 404, message: `No batch found with id '${id}'.` });
    if (!FINISHED.has(batch.status) && batch.status !== "finalizing") finish(batch, "cancelled");
    send(res, 200, batchObject(batch));
  }

  // ------------------------------------------------------------------------------------------- routing

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://localhost");
    const path = url.pathname.replace(/\/+$/, "");
    const method = req.method ?? "GET";
    if (options.apiKey !== undefined && req.headers.authorization !== `Bearer ${options.apiKey}`) {
      await readBody(req);
      return fail(res, {
        status: 401,
        message:
          "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        code: "invalid_api_key",
      });
    }
    if (method === "POST" && path === "/v1/chat/completions") return chat(req, res);
    if (method === "POST" && path === "/v1/files") return uploadFile(req, res);
    if (method === "POST" && path === "/v1/batches") return createBatch(req, res);
    if (method === "GET" && path === "/v1/batches") return listBatches(url, res);
    const [, what, id, tail] = /^\/v1\/(files|batches)\/([^/]+)(?:\/(content|cancel))?$/.exec(path) ?? [];
    const file = what === "files" ? files.get(id ?? "") : undefined;
    if (what === "files" && method === "GET" && file === undefined)
      return fail(res, { status: 404, message: `No such File object: ${id}`, param: "id" });
    if (file !== undefined && method === "GET" && tail === "content") {
      res.writeHead(200, {
        "content-type": "application/octet-stream",
        "x-request-id": randomId("req_", 32),
      });
      res.end(file.bytes);
      return;
    }
    if (file !== undefined && method === "GET" && tail === undefined) return send(res, 200, fileObject(file));
    if (what === "batches" && method === "GET" && tail === undefined) return getBatch(id ?? "", res);
    if (what === "batches" && method === "POST" && tail === "cancel") return cancelBatch(id ?? "", res);
    await readBody(req);
    fail(res, { status: 404, message: `Invalid URL (${method} ${path})` });
  }

  const server: Server = createServer((req, res) => {
    route(req, res).catch((error: unknown) => {
      if (res.headersSent) res.end();
      else fail(res, { status: 500, message: `internal: ${String(error)}`, type: "server_error" });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("not listening on TCP");
  return {
    url: `http://127.0.0.1:${address.port}/v1`,
    stats,
    topUp: () => {
      quotaExhausted = false;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(Buffer.from(chunk as Uint8Array));
  return Buffer.concat(chunks);
}

function parseJson(raw: Buffer): unknown {
  try {
    return JSON.parse(raw.toString("utf8"));
  } catch {
    return undefined;
  }
}

/** multipart/form-data (RFC 7578), enough for the openai client's uploads. */
function parseMultipart(
  body: Buffer,
  boundary: string,
): { name: string; filename: string | null; data: Buffer }[] {
  const delimiter = Buffer.from(`--${boundary}`);
  const parts: { name: string; filename: string | null; data: Buffer }[] = [];
  let start = body.indexOf(delimiter);
  while (start !== -1) {
    const from = start + delimiter.length;
    if (body.subarray(from, from + 2).toString() === "--") break;
    const next = body.indexOf(delimiter, from);
    if (next === -1) break;
    // Each part sits between the CRLF after its delimiter and the CRLF before the next one.
    const chunk = body.subarray(from + 2, next - 2);
    const split = chunk.indexOf("\r\n\r\n");
    const disposition =
      /content-disposition:[^\r\n]*/i.exec(chunk.subarray(0, Math.max(0, split)).toString("utf8"))?.[0] ?? "";
    const name = /\bname="([^"]*)"/i.exec(disposition)?.[1];
    if (split !== -1 && name !== undefined)
      parts.push({
        name,
        filename: /\bfilename="([^"]*)"/i.exec(disposition)?.[1] ?? null,
        data: chunk.subarray(split + 4),
      });
    start = next;
  }
  return parts;
}
