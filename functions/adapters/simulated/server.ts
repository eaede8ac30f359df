import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { z } from "zod";
import { MmevolError } from "../../ports/errors.ts";
import type { ContentPart } from "../../ports/llm.ts";
import {
  latencyFor,
  prepareRequest,
  type SimAnswer,
  type SimRequest,
  SimulatedEngine,
  sleep,
} from "./engine.ts";
import {
  dynamicKeysRoute,
  FAULT_KINDS,
  type FaultKind,
  type FaultOptions,
  FaultPlan,
  malformedJson,
  omitDynamicKey,
  violateSchema,
} from "./faults.ts";
import type { Random } from "./schema-fill.ts";
import { decodeTokens, encodeText } from "./tokens.ts";

export interface SimulatorOptions {
  /** 0 (the default) picks a free port. */
  readonly port?: number;
  readonly host?: string;
  /** A fixed latency, or a range drawn per request from its seed. */
  readonly latencyMs?: number | readonly [number, number];
  readonly requestsPerMinute?: number;
  readonly tokensPerMinute?: number;
  /** When set, requests must carry `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
  /** Injected faults (429 storms, 5xx, hangs, resets, broken answers); none when absent. */
  readonly faults?: FaultOptions;
}

export interface SimLogEntry {
  /** A digest of the request's content (model, seed, messages, image): equal digests are the same request. */
  readonly request: string;
  readonly model: string;
  readonly hasImage: boolean;
  readonly imageDetail: "low" | "high" | "auto" | null;
  readonly schemaName: string | null;
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
  /** 0 when the connection was reset without an answer. */
  readonly status: number;
  /** The injected fault, if any. */
  readonly fault: FaultKind | null;
}

export interface SimStats {
  readonly requests: number;
  readonly succeeded: number;
  readonly rateLimited: number;
  readonly failed: number;
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
  /** Injected faults by kind (every kind present, 0 when none happened). */
  readonly faults: Record<FaultKind, number>;
  /** The last 10,000 chat completion requests, oldest first. */
  readonly log: readonly SimLogEntry[];
}

export interface Simulator {
  /** Base URL for the openai client, ending in /v1. */
  readonly url: string;
  readonly port: number;
  stats(): SimStats;
  /** Raw bodies of the last 50 chat completion requests, oldest first. */
  lastRequests(): readonly unknown[];
  close(): Promise<void>;
}

const MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "gpt-4.1-nano"];
const MAX_LOG = 10_000;
const MAX_BODIES = 50;
const MAX_BODY_BYTES = 64 * 1024 * 1024;

const ContentPartBody = z.discriminatedUnion("type", [
  z.object({ type: z.literal("text"), text: z.string() }),
  z.object({
    type: z.literal("image_url"),
    image_url: z.object({ url: z.string().min(1), detail: z.enum(["low", "high", "auto"]).optional() }),
  }),
]);

const ChatBody = z.object({
  model: z.string().min(1),
  messages: z
    .array(z.object({ role: z.string(), content: z.union([z.string(), z.array(ContentPartBody), z.null()]) }))
    .min(1),
  response_format: z
    .discriminatedUnion("type", [
      z.object({
        type: z.literal("json_schema"),
        json_schema: z.object({
          name: z.string(),
          schema: z.record(z.string(), z.unknown()).optional(),
          strict: z.boolean().nullish(),
        }),
      }),
      z.object({ type: z.literal("json_object") }),
      z.object({ type: z.literal("text") }),
    ])
    .optional(),
  temperature: z.number().min(0).max(2).nullish(),
  max_tokens: z.number().int().positive().nullish(),
  max_completion_tokens: z.number().int().positive().nullish(),
  seed: z.number().int().nullish(),
  stream: z.literal(false).nullish(),
});
type ChatBody = z.infer<typeof ChatBody>;

function toSimRequest(body: ChatBody): SimRequest {
  const format = body.response_format;
  return {
    model: body.model,
    messages: body.messages.map((message) => ({
      role: message.role,
      content:
        message.content === null
          ? ""
          : typeof message.content === "string"
            ? message.content
            : message.content.map(
                (part): ContentPart =>
                  part.type === "text"
                    ? part
                    : {
                        type: "image_url",
                        imageUrl: part.image_url.url,
                        detail: part.image_url.detail ?? "auto",
                      },
              ),
    })),
    schemaName: format?.type === "json_schema" ? format.json_schema.name : null,
    schema: format?.type === "json_schema" ? (format.json_schema.schema ?? null) : null,
    jsonObject: format?.type === "json_object",
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? null,
    seed: body.seed ?? null,
  };
}

/** A per-minute budget that refills continuously, like the provider's limiter. */
class MinuteBucket {
  readonly limit: number;
  #level: number;
  #at: number;

  constructor(limit: number) {
    this.limit = limit;
    this.#level = limit;
    this.#at = performance.now();
  }

  #refill(): void {
    const now = performance.now();
    this.#level = Math.min(this.limit, this.#level + ((now - this.#at) * this.limit) / 60_000);
    this.#at = now;
  }

  /** 0 when `cost` fits now, else the ms until it will. */
  waitMs(cost: number): number {
    this.#refill();
    return cost <= this.#level ? 0 : ((cost - this.#level) * 60_000) / this.limit;
  }

  take(cost: number): void {
    this.#level -= cost;
  }

  headers(kind: "requests" | "tokens"): Record<string, string> {
    this.#refill();
    return {
      [`x-ratelimit-limit-${kind}`]: String(this.limit),
      [`x-ratelimit-remaining-${kind}`]: String(Math.max(0, Math.floor(this.#level))),
      [`x-ratelimit-reset-${kind}`]: formatDuration(((this.limit - this.#level) * 60_000) / this.limit),
    };
  }
}

/** OpenAI's reset format: "20ms", "1.5s", "6m0s". */
function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.ceil(ms)}ms`;
  const minutes = Math.floor(ms / 60_000);
  const seconds = Math.round((ms - minutes * 60_000) / 10) / 100;
  return minutes > 0 ? `${minutes}m${seconds}s` : `${seconds}s`;
}

function errorBody(message: string, type: string, code: string | null, param: string | null = null) {
  return { error: { message, type, param, code } };
}

function readBody(req: IncomingMessage): Promise<string | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    req.on("end", () => resolve(size > MAX_BODY_BYTES ? null : Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

/** An OpenAI-compatible chat completions server on 127.0.0.1, answering from the simulated model. */
export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const engine = new SimulatedEngine();
  const plan = options.faults === undefined ? null : new FaultPlan(options.faults);
  const startedAt = performance.now();
  const faults = Object.fromEntries(FAULT_KINDS.map((kind) => [kind, 0])) as Record<FaultKind, number>;
  // Aborted on close, so a hanging "slow" answer does not keep the process alive.
  const closing = new AbortController();
  const requestBucket = options.requestsPerMinute ? new MinuteBucket(options.requestsPerMinute) : null;
  const tokenBucket = options.tokensPerMinute ? new MinuteBucket(options.tokensPerMinute) : null;
  const log: SimLogEntry[] = [];
  const bodies: unknown[] = [];
  const totals = { requests: 0, succeeded: 0, rateLimited: 0, failed: 0, promptTokens: 0, cachedTokens: 0 };
  let completionTokens = 0;

  const send = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    res.writeHead(status, {
      "content-type": "application/json",
      "x-request-id": `req_${randomUUID().replaceAll("-", "")}`,
      ...requestBucket?.headers("requests"),
      ...tokenBucket?.headers("tokens"),
      ...headers,
    });
    res.end(JSON.stringify(body));
  };

  const record = (entry: SimLogEntry) => {
    totals.requests += 1;
    if (entry.status >= 200 && entry.status < 300) totals.succeeded += 1;
    else if (entry.status === 429) totals.rateLimited += 1;
    else totals.failed += 1;
    totals.promptTokens += entry.status === 200 ? entry.promptTokens : 0;
    totals.cachedTokens += entry.cachedTokens;
    completionTokens += entry.completionTokens;
    if (entry.fault !== null) faults[entry.fault] += 1;
    log.push(entry);
    if (log.length > MAX_LOG) log.shift();
  };
  const unparsed = (status: number): SimLogEntry => ({
    request: "",
    model: "",
    hasImage: false,
    imageDetail: null,
    schemaName: null,
    promptTokens: 0,
    cachedTokens: 0,
    completionTokens: 0,
    status,
    fault: null,
  });

  const chat = async (req: IncomingMessage, res: ServerResponse) => {
    const text = await readBody(req);
    if (text === null) {
      record(unparsed(413));
      return send(res, 413, errorBody("Request body too large", "invalid_request_error", null));
    }
    let json: unknown = text;
    try {
      json = JSON.parse(text);
    } catch {
      // Kept as text below, so the bad body can still be inspected.
    }
    bodies.push(json);
    if (bodies.length > MAX_BODIES) bodies.shift();
    const parsed = ChatBody.safeParse(json);
    if (!parsed.success) {
      record(unparsed(400));
      const issue = parsed.error.issues[0];
      const param = issue === undefined || issue.path.length === 0 ? null : issue.path.join(".");
      const message =
        typeof json === "string"
          ? "We could not parse the JSON body of your request."
          : z.prettifyError(parsed.error);
      return send(res, 400, errorBody(message, "invalid_request_error", null, param));
    }
    const request = toSimRequest(parsed.data);
    const prepared = prepareRequest(request);
    const images = request.messages.flatMap((m) => (typeof m.content === "string" ? [] : m.content));
    const firstImage = images.find((part) => part.type === "image_url");
    const entry = {
      request: prepared.seedText,
      model: request.model,
      hasImage: firstImage !== undefined,
      imageDetail: firstImage?.type === "image_url" ? firstImage.detail : null,
      schemaName: request.schemaName,
      promptTokens: prepared.promptTokens,
    };

    const decision = plan?.decide(prepared.seedText, performance.now() - startedAt) ?? null;
    const fault = decision?.kind ?? null;
    if (fault === "rate_limit" || fault === "storm") {
      const retryMs = decision?.retryAfterMs ?? 1000;
      record({ ...entry, cachedTokens: 0, completionTokens: 0, status: 429, fault });
      const reset = formatDuration(retryMs);
      return send(
        res,
        429,
        errorBody(
          `Rate limit reached for ${request.model} on requests per min. Please try again in ${reset}.`,
          "requests",
          "rate_limit_exceeded",
        ),
        {
          "retry-after": String(retryMs / 1000),
          "retry-after-ms": String(retryMs),
          "x-ratelimit-limit-requests": String(options.requestsPerMinute ?? 500),
          "x-ratelimit-remaining-requests": "0",
          "x-ratelimit-reset-requests": reset,
          "x-ratelimit-limit-tokens": String(options.tokensPerMinute ?? 200_000),
          "x-ratelimit-remaining-tokens": "0",
          "x-ratelimit-reset-tokens": reset,
        },
      );
    }
    if (fault === "server_error") {
      record({ ...entry, cachedTokens: 0, completionTokens: 0, status: 500, fault });
      return send(
        res,
        500,
        errorBody(
          "The server had an error while processing your request. Sorry about that!",
          "server_error",
          null,
        ),
      );
    }
    if (fault === "unavailable") {
      record({ ...entry, cachedTokens: 0, completionTokens: 0, status: 503, fault });
      return send(
        res,
        503,
        errorBody("The engine is currently overloaded, please try again later.", "server_error", null),
      );
    }
    if (fault === "reset") {
      record({ ...entry, cachedTokens: 0, completionTokens: 0, status: 0, fault });
      // No answer at all: the client sees the connection drop (ECONNRESET / socket hang up).
      req.socket.resetAndDestroy();
      return;
    }

    // The provider's limiter reserves prompt tokens plus max_tokens, whatever the answer uses.
    const tokenCost = prepared.promptTokens + (request.maxTokens ?? 0);
    const waitMs = Math.max(requestBucket?.waitMs(1) ?? 0, tokenBucket?.waitMs(tokenCost) ?? 0);
    if (waitMs > 0) {
      record({ ...entry, cachedTokens: 0, completionTokens: 0, status: 429, fault: null });
      const kind = (requestBucket?.waitMs(1) ?? 0) > 0 ? "requests" : "tokens";
      const retryMs = Math.ceil(waitMs);
      return send(
        res,
        429,
        errorBody(
          `Rate limit reached for ${request.model} on ${kind} per min. Please try again in ${formatDuration(retryMs)}.`,
          kind,
          "rate_limit_exceeded",
        ),
        { "retry-after": String(retryMs / 1000), "retry-after-ms": String(retryMs) },
      );
    }
    requestBucket?.take(1);
    tokenBucket?.take(tokenCost);

    await sleep(latencyFor(options.latencyMs, prepared.seedText));
    if (fault === "slow") {
      // Past the client's timeout: it gives up and (usually) asks again while this one still runs.
      const slept = await abortableSleep(plan?.slowMs ?? 30_000, closing.signal);
      if (!slept) return void res.destroy();
    }
    const normal = engine.answer(prepared);
    const shaped =
      decision === null
        ? { answer: normal, refusal: null, fault }
        : faulty(normal, request, fault, decision.rand);
    const answer = shaped.answer;
    // Billed like the provider bills it: an answer nobody waited for still cost its tokens.
    record({
      ...entry,
      cachedTokens: answer.cachedTokens,
      completionTokens: answer.completionTokens,
      status: 200,
      fault: shaped.fault,
    });
    return send(res, 200, {
      id: `chatcmpl-${prepared.seedText.slice(0, 24)}`,
      object: "chat.completion",
      created: Math.floor(Date.now() / 1000),
      model: request.model,
      choices: [
        {
          index: 0,
          message: {
            role: "assistant",
            content: shaped.refusal === null ? answer.content : null,
            refusal: shaped.refusal,
          },
          logprobs: null,
          finish_reason: answer.finishReason,
        },
      ],
      usage: {
        prompt_tokens: answer.promptTokens,
        completion_tokens: answer.completionTokens,
        total_tokens: answer.promptTokens + answer.completionTokens,
        prompt_tokens_details: { cached_tokens: answer.cachedTokens },
        completion_tokens_details: { reasoning_tokens: 0 },
      },
      system_fingerprint: "fp_simulated",
    });
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname.replace(/\/+$/, "");
    if (options.apiKey !== undefined && req.headers.authorization !== `Bearer ${options.apiKey}`) {
      req.resume();
      if (path === "/v1/chat/completions") record(unparsed(401));
      return send(
        res,
        401,
        errorBody("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
      );
    }
    if (req.method === "GET" && path === "/v1/models") {
      const created = Math.floor(Date.now() / 1000);
      const data = MODELS.map((id) => ({ id, object: "model", created, owned_by: "simulator" }));
      return send(res, 200, { object: "list", data });
    }
    if (req.method === "POST" && path === "/v1/chat/completions") return chat(req, res);
    req.resume();
    return send(
      res,
      404,
      errorBody(`Unknown request URL: ${req.method} ${path}`, "invalid_request_error", null),
    );
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) send(res, 500, errorBody(String(error), "server_error", null));
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => resolve());
  });
  const address: AddressInfo | string | null = server.address();
  if (address === null || typeof address === "string")
    throw new MmevolError("simulator has no TCP address", { retryable: false });
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;

  return {
    url: `http://${host}:${address.port}/v1`,
    port: address.port,
    stats: () => ({ ...totals, completionTokens, faults: { ...faults }, log: [...log] }),
    lastRequests: () => [...bodies],
    close: () =>
      new Promise<void>((resolve, reject) => {
        closing.abort();
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", done);
      resolve(true);
    }, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

const REFUSAL = "I'm sorry, but I can't help with that request.";

/** Reshapes a normal answer into the faulty one; the fault actually applied may fall back to another. */
function faulty(
  answer: SimAnswer,
  request: SimRequest,
  fault: FaultKind | null,
  rand: Random,
): { answer: SimAnswer; refusal: string | null; fault: FaultKind | null } {
  const withContent = (content: string, finishReason: SimAnswer["finishReason"] = answer.finishReason) => ({
    ...answer,
    content,
    completionTokens: encodeText(content).length,
    finishReason,
  });
  const json = (): unknown => {
    try {
      return JSON.parse(answer.content);
    } catch {
      return null;
    }
  };
  switch (fault) {
    case "malformed_json":
      return { answer: withContent(malformedJson(answer.content, rand)), refusal: null, fault };
    case "refusal":
      return { answer: withContent(REFUSAL, "stop"), refusal: REFUSAL, fault };
    case "length": {
      // Cut mid-answer, as when max_tokens runs out: never valid JSON, since the braces stay open.
      const tokens = encodeText(answer.content);
      const kept = decodeTokens(tokens.slice(0, Math.max(1, Math.floor(tokens.length / 2))));
      return { answer: withContent(kept, "length"), refusal: null, fault };
    }
    case "judge_omits_verdict": {
      const route = dynamicKeysRoute(request.schema);
      const value = json();
      if (route !== null && value !== null && omitDynamicKey(value, route, rand)) {
        return { answer: withContent(JSON.stringify(value)), refusal: null, fault };
      }
      return faulty(answer, request, "schema_violation", rand);
    }
    case "schema_violation": {
      const value = json();
      if (value === null) return { answer, refusal: null, fault: null };
      return { answer: withContent(JSON.stringify(violateSchema(value, rand))), refusal: null, fault };
    }
    default:
      // "slow" answers normally, only late; the other kinds never reach an answer.
      return { answer, refusal: null, fault };
  }
}
