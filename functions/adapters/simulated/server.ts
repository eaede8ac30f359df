import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { z } from "zod";
import { MmevolError } from "../../ports/errors.ts";
import type { ContentPart } from "../../ports/llm.ts";
import { latencyFor, prepareRequest, type SimRequest, SimulatedEngine, sleep } from "./engine.ts";

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
  readonly status: number;
}

export interface SimStats {
  readonly requests: number;
  readonly succeeded: number;
  readonly rateLimited: number;
  readonly failed: number;
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
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

    // The provider's limiter reserves prompt tokens plus max_tokens, whatever the answer uses.
    const tokenCost = prepared.promptTokens + (request.maxTokens ?? 0);
    const waitMs = Math.max(requestBucket?.waitMs(1) ?? 0, tokenBucket?.waitMs(tokenCost) ?? 0);
    if (waitMs > 0) {
      record({ ...entry, cachedTokens: 0, completionTokens: 0, status: 429 });
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
    const answer = engine.answer(prepared);
    record({
      ...entry,
      cachedTokens: answer.cachedTokens,
      completionTokens: answer.completionTokens,
      status: 200,
    });
    return send(res, 200, {
      id: `chatcmpl-${prepared.seedText.slice(0, 24)}`,
      object: "chat.completion",
      created: Math.floor(Date.now() / 1000),
      model: request.model,
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: answer.content, refusal: null },
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
    stats: () => ({ ...totals, completionTokens, log: [...log] }),
    lastRequests: () => [...bodies],
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}
