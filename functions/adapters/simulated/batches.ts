import { createHash, randomBytes } from "node:crypto";
import { z } from "zod";
import {
  type BatchApi,
  type BatchInfo,
  type BatchOutputLine,
  type BatchStatus,
  FINISHED_BATCH_STATUSES,
} from "../../ports/batch-api.ts";
import { MmevolError } from "../../ports/errors.ts";
import type { ContentPart } from "../../ports/llm.ts";
import { type Clock, systemClock } from "../../ports/runtime.ts";
import { prepareRequest, type SimAnswer, type SimRequest, SimulatedEngine } from "./engine.ts";

// ---------------------------------------------------------------------------------------------------------
// The chat completions body, as the simulator's chat endpoint and its batches both read it. It lives here
// (not in server.ts) because the server builds a SimulatedBatches: importing back would make a cycle.
// ---------------------------------------------------------------------------------------------------------

const ContentPartBody = z.discriminatedUnion("type", [
  z.object({ type: z.literal("text"), text: z.string() }),
  z.object({
    type: z.literal("image_url"),
    image_url: z.object({ url: z.string().min(1), detail: z.enum(["low", "high", "auto"]).optional() }),
  }),
]);

export const ChatBody = z.object({
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
export type ChatBody = z.infer<typeof ChatBody>;

export function toSimRequest(body: ChatBody): SimRequest {
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

export type ParsedChatBody =
  | { readonly ok: true; readonly request: SimRequest }
  | { readonly ok: false; readonly message: string; readonly param: string | null };

/**
 * Validates a chat completions body the way the endpoint does. `json` is the parsed body, or the raw
 * text when it was not JSON; a failure carries the message and param of the provider's 400 answer.
 */
export function parseChatBody(json: unknown): ParsedChatBody {
  const parsed = ChatBody.safeParse(json);
  if (parsed.success) return { ok: true, request: toSimRequest(parsed.data) };
  const issue = parsed.error.issues[0];
  const param = issue === undefined || issue.path.length === 0 ? null : issue.path.join(".");
  const message =
    typeof json === "string"
      ? "We could not parse the JSON body of your request."
      : z.prettifyError(parsed.error);
  return { ok: false, message, param };
}

/** OpenAI's error body. */
export function errorBody(message: string, type: string, code: string | null, param: string | null = null) {
  return { error: { message, type, param, code } };
}

/** A chat.completion object for an answer, the same for the chat endpoint and batch output lines. */
export function chatCompletionBody(options: {
  readonly id: string;
  readonly createdSeconds: number;
  readonly model: string;
  readonly answer: SimAnswer;
  readonly refusal: string | null;
}) {
  const { answer, refusal } = options;
  return {
    id: options.id,
    object: "chat.completion",
    created: options.createdSeconds,
    model: options.model,
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: refusal === null ? answer.content : null, refusal },
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
  };
}

// ---------------------------------------------------------------------------------------------------------
// The Batch API.
// ---------------------------------------------------------------------------------------------------------

/** OpenAI's limits for a batch input file. */
export const MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024;
export const MAX_BATCH_LINES = 50_000;
const BATCH_ENDPOINT = "/v1/chat/completions";
const COMPLETION_WINDOW = "24h";
const WINDOW_SECONDS = 24 * 60 * 60;
/** A batch stops listing its file errors after this many; the file is rejected either way. */
const MAX_FILE_ERRORS = 100;
/** Lines answered between yields to the event loop, so a big batch does not stall the chat endpoint. */
const LINES_PER_SLICE = 50;
const FILE_PURPOSES = new Set([
  "assistants",
  "assistants_output",
  "batch",
  "batch_output",
  "fine-tune",
  "fine-tune-results",
  "vision",
  "user_data",
  "evals",
]);

export interface SimulatedBatchOptions {
  /** How long after creation a batch completes (or expires). Default 0: on the first look after creation. */
  readonly completeAfterMs?: number;
  /** Share (0..1) of valid lines answered with a 500 instead, chosen by hashing custom_id. Default 0. */
  readonly failShare?: number;
  /** The batch ends `expired`, with every line in the error file. Default false. */
  readonly expire?: boolean;
  /** The largest file `/v1/files` takes, in bytes. Default MAX_BATCH_FILE_BYTES (200 MB, as OpenAI's). */
  readonly maxFileBytes?: number;
}

export interface SimulatedBatchesOptions extends SimulatedBatchOptions {
  /** Times batches and stamps `*_at` fields. Default: the system clock. */
  readonly clock?: Clock;
  /** The model answering the lines; pass the chat endpoint's so both share one prefix cache. */
  readonly engine?: SimulatedEngine;
}

export interface SimBatchStats {
  readonly filesUploaded: number;
  readonly batchesCreated: number;
  /** Lines answered with status 200 (billed). */
  readonly linesAnswered: number;
  /** Lines in error files: 400s, injected 500s, expired. */
  readonly linesFailed: number;
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
}

/** A request the Batch API refuses, with the HTTP status and error body fields the server answers. */
export class SimBatchError extends MmevolError {
  readonly status: number;
  readonly type: string;
  readonly code: string | null;
  readonly param: string | null;
  constructor(
    message: string,
    options: { status: number; type?: string; code?: string | null; param?: string | null },
  ) {
    super(message, { retryable: false });
    this.status = options.status;
    this.type = options.type ?? "invalid_request_error";
    this.code = options.code ?? null;
    this.param = options.param ?? null;
  }
}

/** OpenAI's file object. */
export interface SimFileObject {
  readonly id: string;
  readonly object: "file";
  readonly bytes: number;
  readonly created_at: number;
  readonly filename: string;
  readonly purpose: string;
  readonly status: "processed";
}

export interface SimBatchFileError {
  readonly code: string;
  readonly message: string;
  readonly param: string | null;
  readonly line: number | null;
}

/** OpenAI's batch object. */
export interface SimBatchObject {
  readonly id: string;
  readonly object: "batch";
  readonly endpoint: string;
  readonly model: string | null;
  readonly errors: { readonly object: "list"; readonly data: readonly SimBatchFileError[] } | null;
  readonly input_file_id: string;
  readonly completion_window: string;
  readonly status: BatchStatus;
  readonly output_file_id: string | null;
  readonly error_file_id: string | null;
  readonly created_at: number;
  readonly in_progress_at: number | null;
  readonly expires_at: number;
  readonly finalizing_at: number | null;
  readonly completed_at: number | null;
  readonly failed_at: number | null;
  readonly expired_at: number | null;
  readonly cancelling_at: number | null;
  readonly cancelled_at: number | null;
  readonly request_counts: { readonly total: number; readonly completed: number; readonly failed: number };
  readonly usage: {
    readonly input_tokens: number;
    readonly input_tokens_details: { readonly cached_tokens: number };
    readonly output_tokens: number;
    readonly output_tokens_details: { readonly reasoning_tokens: number };
    readonly total_tokens: number;
  } | null;
  readonly metadata: Readonly<Record<string, string>> | null;
}

export interface SimBatchList {
  readonly object: "list";
  readonly data: readonly SimBatchObject[];
  readonly has_more: boolean;
  readonly first_id: string | null;
  readonly last_id: string | null;
}

interface StoredFile {
  readonly id: string;
  readonly bytes: Uint8Array;
  readonly purpose: string;
  readonly filename: string;
  readonly createdAtMs: number;
}

interface InputLine {
  readonly customId: string;
  readonly body: Readonly<Record<string, unknown>>;
}

type Stamp =
  | "inProgressAt"
  | "finalizingAt"
  | "completedAt"
  | "failedAt"
  | "expiredAt"
  | "cancellingAt"
  | "cancelledAt";

interface BatchRecord {
  readonly id: string;
  readonly inputFileId: string;
  readonly createdAtMs: number;
  readonly metadata: Readonly<Record<string, string>> | null;
  /** Valid lines; empty when the file was rejected. */
  readonly lines: readonly InputLine[];
  readonly model: string | null;
  /** Why the batch failed: its input file's errors, or the simulator's own. */
  readonly fileErrors: SimBatchFileError[];
  status: BatchStatus;
  stamps: Partial<Record<Stamp, number>>;
  outputFileId: string | null;
  errorFileId: string | null;
  counts: { total: number; completed: number; failed: number };
  usage: { prompt: number; cached: number; completion: number } | null;
  /** Set while the lines are being answered; later looks wait for it. */
  work: Promise<void> | null;
}

const InputLineShape = z.object({
  custom_id: z.string().min(1),
  method: z.literal("POST"),
  url: z.string(),
  body: z.record(z.string(), z.unknown()),
});

const Metadata = z
  .record(z.string().max(64), z.string().max(512))
  .refine((record) => Object.keys(record).length <= 16, "at most 16 metadata keys");

const seconds = (ms: number): number => Math.floor(ms / 1000);
const randomId = (bytes: number): string => randomBytes(bytes).toString("hex");
const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A stable number in [0, 1) per custom_id, so the same lines fail on every run. */
function shareOf(customId: string): number {
  return createHash("sha256").update(`batch-fail:${customId}`).digest().readUInt32BE(0) / 2 ** 32;
}

/** Checks a whole input file as the provider does before running any line; errors reject the batch. */
function validateInputFile(bytes: Uint8Array): {
  lines: InputLine[];
  model: string | null;
  errors: SimBatchFileError[];
} {
  const errors: SimBatchFileError[] = [];
  const fail = (code: string, message: string, line: number | null = null, param: string | null = null) => {
    if (errors.length < MAX_FILE_ERRORS) errors.push({ code, message, param, line });
  };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    fail("invalid_file_format", "The input file is not UTF-8 text.");
    return { lines: [], model: null, errors };
  }
  const raw = text.split(/\r?\n/);
  const numbered = raw.flatMap((line, index) => (line.trim() === "" ? [] : [{ line, number: index + 1 }]));
  if (numbered.length === 0) {
    fail("empty_file", "The input file has no requests.");
    return { lines: [], model: null, errors };
  }
  if (numbered.length > MAX_BATCH_LINES) {
    fail(
      "too_many_requests",
      `The input file has ${numbered.length} requests; a batch may have at most ${MAX_BATCH_LINES}.`,
    );
    return { lines: [], model: null, errors };
  }
  const lines: InputLine[] = [];
  const seen = new Set<string>();
  let model: string | null = null;
  for (const { line, number } of numbered) {
    let json: unknown;
    try {
      json = JSON.parse(line);
    } catch {
      fail("invalid_json_line", "This line is not valid JSON.", number);
      continue;
    }
    const shape = InputLineShape.safeParse(json);
    if (!shape.success) {
      const issue = shape.error.issues[0];
      const param = issue === undefined || issue.path.length === 0 ? null : issue.path.join(".");
      fail(
        "invalid_request",
        `This line is not a batch request: ${z.prettifyError(shape.error)}`,
        number,
        param,
      );
      continue;
    }
    const { custom_id: customId, url, body } = shape.data;
    if (url !== BATCH_ENDPOINT) {
      fail(
        "invalid_url",
        `The url ${url} does not match the batch endpoint ${BATCH_ENDPOINT}.`,
        number,
        "url",
      );
      continue;
    }
    if (seen.has(customId)) {
      fail(
        "duplicate_custom_id",
        `The custom_id ${customId} is used by more than one request.`,
        number,
        "custom_id",
      );
      continue;
    }
    seen.add(customId);
    const lineModel = typeof body.model === "string" ? body.model : null;
    if (lineModel !== null) {
      if (model === null) model = lineModel;
      else if (lineModel !== model) {
        fail(
          "mismatched_model",
          `All requests in a batch must use the same model: ${lineModel} differs from ${model}.`,
          number,
          "body.model",
        );
        continue;
      }
    }
    lines.push({ customId, body });
  }
  return { lines: errors.length === 0 ? lines : [], model, errors };
}

/**
 * OpenAI's Batch API in memory: files, and batches that go validating -> in_progress -> completed (or
 * failed, expired, cancelled). Time moves only when someone looks (getBatch, listBatches, the server's
 * routes): no timers. Lines are answered by the same engine as the chat endpoint.
 */
export class SimulatedBatches implements BatchApi {
  readonly #clock: Clock;
  readonly #engine: SimulatedEngine;
  readonly #completeAfterMs: number;
  readonly #failShare: number;
  readonly #expire: boolean;
  /** The largest file an upload may hold (SimulatedBatchOptions.maxFileBytes). */
  readonly maxFileBytes: number;
  readonly #files = new Map<string, StoredFile>();
  /** Oldest first. */
  readonly #batches: BatchRecord[] = [];
  readonly #byId = new Map<string, BatchRecord>();
  readonly #stats = {
    filesUploaded: 0,
    batchesCreated: 0,
    linesAnswered: 0,
    linesFailed: 0,
    promptTokens: 0,
    cachedTokens: 0,
    completionTokens: 0,
  };

  constructor(options: SimulatedBatchesOptions = {}) {
    const failShare = options.failShare ?? 0;
    if (!(failShare >= 0 && failShare <= 1)) throw new RangeError("failShare must be in 0..1");
    const completeAfterMs = options.completeAfterMs ?? 0;
    if (!(completeAfterMs >= 0)) throw new RangeError("completeAfterMs must be >= 0");
    this.#clock = options.clock ?? systemClock;
    this.maxFileBytes = options.maxFileBytes ?? MAX_BATCH_FILE_BYTES;
    this.#engine = options.engine ?? new SimulatedEngine();
    this.#completeAfterMs = completeAfterMs;
    this.#failShare = failShare;
    this.#expire = options.expire ?? false;
  }

  stats(): SimBatchStats {
    return { ...this.#stats };
  }

  // --- The BatchApi port ---

  async uploadFile(name: string, content: Uint8Array): Promise<string> {
    return this.upload(name, content, "batch").id;
  }

  async createBatch(inputFileId: string, metadata: Readonly<Record<string, string>>): Promise<BatchInfo> {
    const created = this.create({
      inputFileId,
      endpoint: BATCH_ENDPOINT,
      completionWindow: COMPLETION_WINDOW,
      metadata,
    });
    return this.#info(this.#record(created.id));
  }

  async getBatch(id: string): Promise<BatchInfo> {
    const batch = this.#record(id);
    await this.#advance(batch);
    return this.#info(batch);
  }

  async listBatches(since: number): Promise<BatchInfo[]> {
    const newest = this.#batches.filter((batch) => batch.createdAtMs >= since).reverse();
    for (const batch of newest) await this.#advance(batch);
    return newest.map((batch) => this.#info(batch));
  }

  async fileText(fileId: string): Promise<string> {
    return new TextDecoder().decode(this.fileContent(fileId));
  }

  // --- Wire-level operations, for the server's routes ---

  upload(filename: string, bytes: Uint8Array, purpose: string): SimFileObject {
    if (!FILE_PURPOSES.has(purpose)) {
      throw new SimBatchError(`Invalid purpose: ${purpose}`, { status: 400, param: "purpose" });
    }
    if (bytes.byteLength > this.maxFileBytes) {
      throw new SimBatchError(
        `File is too large: ${bytes.byteLength} bytes; the limit is ${this.maxFileBytes} bytes.`,
        { status: 413, code: "file_too_large", param: "file" },
      );
    }
    const file = this.#store(filename, bytes, purpose);
    this.#stats.filesUploaded += 1;
    return this.#fileObject(file);
  }

  file(id: string): SimFileObject {
    return this.#fileObject(this.#file(id));
  }

  fileContent(id: string): Uint8Array {
    return this.#file(id).bytes;
  }

  create(params: {
    readonly inputFileId: string;
    readonly endpoint: string;
    readonly completionWindow: string;
    readonly metadata?: Readonly<Record<string, string>> | null;
  }): SimBatchObject {
    if (params.endpoint !== BATCH_ENDPOINT) {
      throw new SimBatchError(
        `The simulator's batches support only ${BATCH_ENDPOINT}, not ${params.endpoint}.`,
        {
          status: 400,
          param: "endpoint",
        },
      );
    }
    if (params.completionWindow !== COMPLETION_WINDOW) {
      throw new SimBatchError(
        `completion_window must be ${COMPLETION_WINDOW}, not ${params.completionWindow}.`,
        {
          status: 400,
          param: "completion_window",
        },
      );
    }
    const metadata = params.metadata ?? null;
    if (metadata !== null && !Metadata.safeParse(metadata).success) {
      throw new SimBatchError("metadata takes at most 16 keys of <= 64 chars with values of <= 512 chars.", {
        status: 400,
        param: "metadata",
      });
    }
    const input = this.#files.get(params.inputFileId);
    if (input === undefined) {
      throw new SimBatchError(`No such File object: ${params.inputFileId}`, {
        status: 404,
        param: "input_file_id",
      });
    }
    if (input.purpose !== "batch") {
      throw new SimBatchError(`File ${input.id} has purpose ${input.purpose}; a batch needs purpose batch.`, {
        status: 400,
        param: "input_file_id",
      });
    }
    const { lines, model, errors } = validateInputFile(input.bytes);
    const batch: BatchRecord = {
      id: `batch_${randomId(12)}`,
      inputFileId: input.id,
      createdAtMs: this.#clock.now(),
      metadata: metadata === null ? null : { ...metadata },
      lines,
      model,
      fileErrors: errors,
      status: "validating",
      stamps: {},
      outputFileId: null,
      errorFileId: null,
      counts: { total: 0, completed: 0, failed: 0 },
      usage: null,
      work: null,
    };
    this.#batches.push(batch);
    this.#byId.set(batch.id, batch);
    this.#stats.batchesCreated += 1;
    return this.#batchObject(batch);
  }

  async retrieve(id: string): Promise<SimBatchObject> {
    const batch = this.#record(id);
    await this.#advance(batch);
    return this.#batchObject(batch);
  }

  /** Newest first; `after` is the last id of the previous page. */
  async list(options: { readonly limit?: number; readonly after?: string } = {}): Promise<SimBatchList> {
    const limit = Math.min(100, Math.max(1, options.limit ?? 20));
    const newest = [...this.#batches].reverse();
    const start = options.after === undefined ? 0 : newest.findIndex((b) => b.id === options.after) + 1;
    const page = start === 0 && options.after !== undefined ? [] : newest.slice(start, start + limit);
    for (const batch of page) await this.#advance(batch);
    const data = page.map((batch) => this.#batchObject(batch));
    return {
      object: "list",
      data,
      has_more: start + page.length < newest.length && page.length > 0,
      first_id: data[0]?.id ?? null,
      last_id: data.at(-1)?.id ?? null,
    };
  }

  /** Cancelling now, cancelled at the next look; lines not yet answered never are. */
  async cancel(id: string): Promise<SimBatchObject> {
    const batch = this.#record(id);
    await this.#advance(batch);
    if (batch.status !== "validating" && batch.status !== "in_progress") {
      throw new SimBatchError(`Cannot cancel a batch with status ${batch.status}.`, { status: 400 });
    }
    batch.status = "cancelling";
    batch.stamps.cancellingAt = this.#clock.now();
    batch.counts = { total: batch.lines.length, completed: 0, failed: 0 };
    return this.#batchObject(batch);
  }

  // --- Internals ---

  #store(filename: string, bytes: Uint8Array, purpose: string): StoredFile {
    const file = { id: `file-${randomId(12)}`, bytes, purpose, filename, createdAtMs: this.#clock.now() };
    this.#files.set(file.id, file);
    return file;
  }

  #file(id: string): StoredFile {
    const file = this.#files.get(id);
    if (file === undefined)
      throw new SimBatchError(`No such File object: ${id}`, { status: 404, param: "id" });
    return file;
  }

  #record(id: string): BatchRecord {
    const batch = this.#byId.get(id);
    if (batch === undefined) throw new SimBatchError(`No batch found with id '${id}'.`, { status: 404 });
    return batch;
  }

  /** Moves the batch as far as the clock allows. */
  async #advance(batch: BatchRecord): Promise<void> {
    if (batch.work !== null) return batch.work;
    if (FINISHED_BATCH_STATUSES.has(batch.status)) return;
    const now = this.#clock.now();
    if (batch.status === "cancelling") {
      batch.status = "cancelled";
      batch.stamps.cancelledAt = now;
      return;
    }
    if (batch.status === "validating") {
      if (batch.fileErrors.length > 0) {
        batch.status = "failed";
        batch.stamps.failedAt = now;
        return;
      }
      batch.status = "in_progress";
      batch.stamps.inProgressAt = now;
      batch.counts = { total: batch.lines.length, completed: 0, failed: 0 };
    }
    if (batch.status === "in_progress" && now >= batch.createdAtMs + this.#completeAfterMs) {
      batch.status = "finalizing";
      batch.stamps.finalizingAt = now;
      batch.work = this.#finish(batch)
        .catch((error: unknown) => {
          // A bug in the simulator, not in the input: recorded on the batch rather than left finalizing.
          batch.status = "failed";
          batch.stamps.failedAt = this.#clock.now();
          batch.fileErrors.push({ code: "server_error", message: String(error), param: null, line: null });
        })
        .finally(() => {
          batch.work = null;
        });
      return batch.work;
    }
  }

  async #finish(batch: BatchRecord): Promise<void> {
    const output: string[] = [];
    const failed: string[] = [];
    const usage = { prompt: 0, cached: 0, completion: 0 };
    if (this.#expire) {
      for (const line of batch.lines) {
        const expired: BatchOutputLine = {
          id: `batch_req_${randomId(12)}`,
          custom_id: line.customId,
          response: null,
          error: {
            code: "batch_expired",
            message: "This request could not be executed before the completion window expired.",
          },
        };
        failed.push(JSON.stringify(expired));
      }
    } else {
      for (const [index, line] of batch.lines.entries()) {
        if (index > 0 && index % LINES_PER_SLICE === 0) await yieldToEventLoop();
        const result = this.#answerLine(line);
        if (result.answer === null) failed.push(JSON.stringify(result.line));
        else {
          output.push(JSON.stringify(result.line));
          usage.prompt += result.answer.promptTokens;
          usage.cached += result.answer.cachedTokens;
          usage.completion += result.answer.completionTokens;
        }
      }
    }
    const now = this.#clock.now();
    const jsonl = (lines: readonly string[]) => new TextEncoder().encode(`${lines.join("\n")}\n`);
    if (output.length > 0) {
      batch.outputFileId = this.#store(`${batch.id}_output.jsonl`, jsonl(output), "batch_output").id;
    }
    if (failed.length > 0) {
      batch.errorFileId = this.#store(`${batch.id}_error.jsonl`, jsonl(failed), "batch_output").id;
    }
    batch.counts = { total: batch.lines.length, completed: output.length, failed: failed.length };
    batch.usage = usage;
    this.#stats.linesAnswered += output.length;
    this.#stats.linesFailed += failed.length;
    this.#stats.promptTokens += usage.prompt;
    this.#stats.cachedTokens += usage.cached;
    this.#stats.completionTokens += usage.completion;
    if (this.#expire) {
      batch.status = "expired";
      batch.stamps.expiredAt = now;
    } else {
      batch.status = "completed";
      batch.stamps.completedAt = now;
    }
  }

  /** One output line; `answer` is null when the line belongs in the error file. */
  #answerLine(line: InputLine): { line: BatchOutputLine; answer: SimAnswer | null } {
    const requestId = `req_${randomId(16)}`;
    const respond = (statusCode: number, body: unknown): BatchOutputLine => ({
      id: `batch_req_${randomId(12)}`,
      custom_id: line.customId,
      response: { status_code: statusCode, request_id: requestId, body },
      error: null,
    });
    const parsed = parseChatBody(line.body);
    if (!parsed.ok) {
      return {
        line: respond(400, errorBody(parsed.message, "invalid_request_error", null, parsed.param)),
        answer: null,
      };
    }
    const serverError = () =>
      respond(
        500,
        errorBody(
          "The server had an error while processing your request. Sorry about that!",
          "server_error",
          null,
        ),
      );
    if (this.#failShare > 0 && shareOf(line.customId) < this.#failShare) {
      return { line: serverError(), answer: null };
    }
    const prepared = prepareRequest(parsed.request);
    let answer: SimAnswer;
    try {
      answer = this.#engine.answer(prepared);
    } catch {
      // The engine choked on this request (e.g. an odd schema): the provider answers such lines with a 500.
      return { line: serverError(), answer: null };
    }
    const body = chatCompletionBody({
      id: `chatcmpl-${prepared.seedText.slice(0, 24)}`,
      createdSeconds: seconds(this.#clock.now()),
      model: parsed.request.model,
      answer,
      refusal: null,
    });
    return { line: respond(200, body), answer };
  }

  #fileObject(file: StoredFile): SimFileObject {
    return {
      id: file.id,
      object: "file",
      bytes: file.bytes.byteLength,
      created_at: seconds(file.createdAtMs),
      filename: file.filename,
      purpose: file.purpose,
      status: "processed",
    };
  }

  #batchObject(batch: BatchRecord): SimBatchObject {
    const stamp = (name: Stamp): number | null => {
      const ms = batch.stamps[name];
      return ms === undefined ? null : seconds(ms);
    };
    const usage = batch.usage;
    return {
      id: batch.id,
      object: "batch",
      endpoint: BATCH_ENDPOINT,
      model: batch.model,
      errors: batch.status === "failed" ? { object: "list", data: batch.fileErrors } : null,
      input_file_id: batch.inputFileId,
      completion_window: COMPLETION_WINDOW,
      status: batch.status,
      output_file_id: batch.outputFileId,
      error_file_id: batch.errorFileId,
      created_at: seconds(batch.createdAtMs),
      in_progress_at: stamp("inProgressAt"),
      expires_at: seconds(batch.createdAtMs) + WINDOW_SECONDS,
      finalizing_at: stamp("finalizingAt"),
      completed_at: stamp("completedAt"),
      failed_at: stamp("failedAt"),
      expired_at: stamp("expiredAt"),
      cancelling_at: stamp("cancellingAt"),
      cancelled_at: stamp("cancelledAt"),
      request_counts: { ...batch.counts },
      usage:
        usage === null
          ? null
          : {
              input_tokens: usage.prompt,
              input_tokens_details: { cached_tokens: usage.cached },
              output_tokens: usage.completion,
              output_tokens_details: { reasoning_tokens: 0 },
              total_tokens: usage.prompt + usage.completion,
            },
      metadata: batch.metadata,
    };
  }

  #info(batch: BatchRecord): BatchInfo {
    return {
      id: batch.id,
      status: batch.status,
      inputFileId: batch.inputFileId,
      outputFileId: batch.outputFileId,
      errorFileId: batch.errorFileId,
      requestCounts: { ...batch.counts },
      metadata: { ...batch.metadata },
      createdAt: batch.createdAtMs,
      errors:
        batch.status === "failed"
          ? batch.fileErrors.map(
              (e) => `${e.code}: ${e.message}${e.line === null ? "" : ` (line ${e.line})`}`,
            )
          : [],
    };
  }
}
