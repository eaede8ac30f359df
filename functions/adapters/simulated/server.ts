import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { z } from "zod";
import { MmevolError } from "../../ports/errors.ts";
import {
  chatCompletionBody,
  errorBody,
  parseChatBody,
  SimBatchError,
  SimulatedBatches,
  type SimulatedBatchOptions,
} from "./batches.ts";
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

/** What a tokens-per-minute limiter charges a call (see SimulatorOptions.tokenCharge). */
export const TOKEN_CHARGES = ["max_tokens", "usage"] as const;
export type TokenCharge = (typeof TOKEN_CHARGES)[number];

export interface SimulatorOptions {
  /** 0 (the default) picks a free port. */
  readonly port?: number;
  readonly host?: string;
  /** A fixed latency, or a range drawn per request from its seed. */
  readonly latencyMs?: number | readonly [number, number];
  readonly requestsPerMinute?: number;
  readonly tokensPerMinute?: number;
  /**
   * What the tokens-per-minute limiter charges. "max_tokens" (the default, OpenAI's documented behaviour): the
   * prompt plus the whole max_tokens, when the request is admitted. "usage" (some proxies and gateways): the
   * prompt when admitted, and the completion tokens the answer really used once it is done.
   */
  readonly tokenCharge?: TokenCharge;
  /** When set, requests must carry `Authorization: Bearer <apiKey>`. */
  readonly apiKey?: string;
  /** Injected faults (429 storms, 5xx, hangs, resets, broken answers); none when absent. */
  readonly faults?: FaultOptions;
  /** How `/v1/batches` behaves: when batches complete, injected line failures, expiry. */
  readonly batch?: SimulatedBatchOptions;
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
  /** The Batch API behind `/v1/files` and `/v1/batches`, with its own stats; it shares the chat model. */
  readonly batches: SimulatedBatches;
  close(): Promise<void>;
}

const MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1", "gpt-4.1-nano"];
const MAX_LOG = 10_000;
const MAX_BODIES = 50;
const MAX_BODY_BYTES = 64 * 1024 * 1024;
/** Room in a multipart upload's body for the boundaries and the purpose field, past the file. */
const UPLOAD_FORM_BYTES = 64 * 1024;

const CreateBatchBody = z.object({
  input_file_id: z.string().min(1),
  endpoint: z.string(),
  completion_window: z.string(),
  metadata: z.record(z.string(), z.string()).nullish(),
});

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
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.ceil(ms)}ms`;
  // Rounded to 10 ms before it is split, so 119,999 ms is 2m0s, not 1m60s.
  const total = Math.round(ms / 10) * 10;
  const minutes = Math.floor(total / 60_000);
  const seconds = (total - minutes * 60_000) / 1000;
  return minutes > 0 ? `${minutes}m${seconds}s` : `${seconds}s`;
}

/** The body's bytes, or null (after draining the rest) when it is longer than `limit`. */
function readBytes(req: IncomingMessage, limit: number): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
    });
    req.on("end", () => resolve(size > limit ? null : Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

async function readBody(req: IncomingMessage): Promise<string | null> {
  const bytes = await readBytes(req, MAX_BODY_BYTES);
  return bytes === null ? null : bytes.toString("utf8");
}

/** An OpenAI-compatible chat completions server on 127.0.0.1, answering from the simulated model. */
export async function startSimulator(options: SimulatorOptions = {}): Promise<Simulator> {
  const engine = new SimulatedEngine();
  // One engine for both, so a batch line and a chat request share the prefix cache as they do upstream.
  const batches = new SimulatedBatches({ ...options.batch, engine });
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
    const parsed = parseChatBody(json);
    if (!parsed.ok) {
      record(unparsed(400));
      return send(res, 400, errorBody(parsed.message, "invalid_request_error", null, parsed.param));
    }
    const request = parsed.request;
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

    // The provider's limiter reserves prompt tokens plus max_tokens, whatever the answer uses (or, charging
    // usage, the prompt now and the completion once it is known).
    const chargesUsage = options.tokenCharge === "usage";
    const tokenCost = prepared.promptTokens + (chargesUsage ? 0 : (request.maxTokens ?? 0));
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
    if (chargesUsage) tokenBucket?.take(answer.completionTokens);
    // Billed like the provider bills it: an answer nobody waited for still cost its tokens.
    record({
      ...entry,
      cachedTokens: answer.cachedTokens,
      completionTokens: answer.completionTokens,
      status: 200,
      fault: shaped.fault,
    });
    return send(
      res,
      200,
      chatCompletionBody({
        id: `chatcmpl-${prepared.seedText.slice(0, 24)}`,
        createdSeconds: Math.floor(Date.now() / 1000),
        model: request.model,
        answer,
        refusal: shaped.refusal,
      }),
    );
  };

  const maxUploadBodyBytes = batches.maxFileBytes + UPLOAD_FORM_BYTES;
  const upload = async (req: IncomingMessage, res: ServerResponse) => {
    const tooLarge = () =>
      send(
        res,
        413,
        errorBody(
          `File is too large; the limit is ${batches.maxFileBytes} bytes.`,
          "invalid_request_error",
          "file_too_large",
          "file",
        ),
      );
    // Refused without keeping it when the declared length says so. The answer waits until the body is drained:
    // sent while the client still uploads, the connection could close under it, and the client read a reset
    // connection instead of the 413 (a test saw it on a loaded machine).
    if (Number(req.headers["content-length"] ?? 0) > maxUploadBodyBytes) {
      await new Promise<void>((resolve) => {
        req.once("end", resolve);
        req.once("close", resolve);
        req.once("error", () => resolve());
        req.resume();
      });
      return tooLarge();
    }
    const bytes = await readBytes(req, maxUploadBodyBytes);
    if (bytes === null) return tooLarge();
    const contentType = req.headers["content-type"] ?? "";
    let form: FormData;
    try {
      form = await new Request("http://simulator.local/v1/files", {
        method: "POST",
        headers: { "content-type": contentType },
        body: bytes,
      }).formData();
    } catch {
      return send(
        res,
        400,
        errorBody("The body is not multipart/form-data.", "invalid_request_error", null, "file"),
      );
    }
    const purpose = form.get("purpose");
    const file = form.get("file");
    if (typeof purpose !== "string") {
      return send(res, 400, errorBody("Missing purpose.", "invalid_request_error", null, "purpose"));
    }
    if (file === null || typeof file === "string") {
      return send(res, 400, errorBody("Missing file.", "invalid_request_error", null, "file"));
    }
    return send(res, 200, batches.upload(file.name, await file.bytes(), purpose));
  };

  /** `/v1/files` and `/v1/batches`; false when the route is none of theirs. Never rate limited. */
  const batchRoute = async (
    req: IncomingMessage,
    res: ServerResponse,
    path: string,
    query: URLSearchParams,
  ): Promise<boolean> => {
    const [, resource, rawId, action, ...rest] = path.split("/").slice(1);
    if (resource !== "files" && resource !== "batches") return false;
    if (rest.length > 0) return false;
    const id = rawId === undefined ? undefined : decodeURIComponent(rawId);
    try {
      if (resource === "files") {
        if (req.method === "POST" && id === undefined) await upload(req, res);
        else if (req.method === "GET" && id !== undefined && action === undefined)
          send(res, 200, batches.file(id));
        else if (req.method === "GET" && id !== undefined && action === "content") {
          const content = batches.fileContent(id);
          res.writeHead(200, {
            "content-type": "application/octet-stream",
            "content-length": String(content.byteLength),
            "x-request-id": `req_${randomUUID().replaceAll("-", "")}`,
          });
          res.end(content);
        } else return false;
        return true;
      }
      if (req.method === "POST" && id === undefined) {
        const text = await readBody(req);
        let json: unknown = null;
        try {
          json = text === null ? null : JSON.parse(text);
        } catch {
          // Reported below as a body that does not parse.
        }
        const parsed = CreateBatchBody.safeParse(json);
        if (!parsed.success) {
          const issue = parsed.error.issues[0];
          const param = issue === undefined || issue.path.length === 0 ? null : issue.path.join(".");
          send(res, 400, errorBody(z.prettifyError(parsed.error), "invalid_request_error", null, param));
          return true;
        }
        const body = parsed.data;
        const created = batches.create({
          inputFileId: body.input_file_id,
          endpoint: body.endpoint,
          completionWindow: body.completion_window,
          metadata: body.metadata ?? null,
        });
        send(res, 200, created);
      } else if (req.method === "GET" && id === undefined) {
        const limit = query.get("limit");
        const after = query.get("after");
        const list = await batches.list({
          ...(limit === null ? {} : { limit: Number.parseInt(limit, 10) || 20 }),
          ...(after === null ? {} : { after }),
        });
        send(res, 200, list);
      } else if (req.method === "GET" && id !== undefined && action === undefined) {
        send(res, 200, await batches.retrieve(id));
      } else if (req.method === "POST" && id !== undefined && action === "cancel") {
        req.resume();
        send(res, 200, await batches.cancel(id));
      } else return false;
      return true;
    } catch (error) {
      if (!(error instanceof SimBatchError)) throw error;
      req.resume();
      send(res, error.status, errorBody(error.message, error.type, error.code, error.param));
      return true;
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://localhost");
    const path = url.pathname.replace(/\/+$/, "");
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
    if (path.startsWith("/v1/") && (await batchRoute(req, res, path, url.searchParams))) return;
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
    batches,
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
