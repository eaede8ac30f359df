import { OpenAI, toFile } from "openai";
import { z } from "zod";
import type { BatchApi, BatchInfo } from "../../ports/batch-api.ts";
import { InvalidInputError, LlmCallError } from "../../ports/errors.ts";
import { type Logger, silentLogger } from "../../ports/runtime.ts";
import { classifyFailure } from "./classify.ts";
import { createOpenAiClient, type OpenAiClientOptions } from "./client.ts";

/** Timeout default 120 000 ms per attempt: uploads and output files can be large. */
export type OpenAiBatchApiOptions = OpenAiClientOptions;

/** OpenAI's limit for a batch input file; checked here so a doomed upload is never sent. */
export const MAX_BATCH_INPUT_BYTES = 200 * 1024 * 1024;
/** The most batches one list page may ask for. */
const MAX_PAGE = 100;
/** The most batches one listing reads, against a server that never says when a batch was created. */
const MAX_LISTED = 10_000;

const BatchStatusSchema = z.enum([
  "validating",
  "failed",
  "in_progress",
  "finalizing",
  "completed",
  "expired",
  "cancelling",
  "cancelled",
]);

/**
 * What we read from a batch object. Compatible servers differ (no `errors`, no `request_counts`,
 * empty strings for absent files, metadata with non-string values), so only id, status and the
 * input file are required.
 */
const BatchObject = z.object({
  id: z.string().min(1),
  status: BatchStatusSchema,
  input_file_id: z.string(),
  output_file_id: z.string().nullish(),
  error_file_id: z.string().nullish(),
  request_counts: z
    .object({
      total: z.number().int().nonnegative().default(0),
      completed: z.number().int().nonnegative().default(0),
      failed: z.number().int().nonnegative().default(0),
    })
    .nullish(),
  metadata: z.record(z.string(), z.unknown()).nullish(),
  // Only a time in seconds is of use; anything else (an ISO string, a 0 placeholder) means "not said".
  created_at: z.number().nullish().catch(null),
  errors: z
    .object({
      data: z
        .array(
          z.object({
            code: z.string().nullish(),
            message: z.string().nullish(),
            line: z.number().nullish(),
            param: z.string().nullish(),
          }),
        )
        .nullish(),
    })
    .nullish(),
});
type BatchObject = z.infer<typeof BatchObject>;

const describeError = (error: NonNullable<NonNullable<BatchObject["errors"]>["data"]>[number]): string => {
  const head = [error.code, error.message].filter(
    (part) => part !== null && part !== undefined && part !== "",
  );
  const line = error.line === null || error.line === undefined ? "" : ` (line ${error.line})`;
  return `${head.join(": ") || "unknown error"}${line}`;
};

const toBatchInfo = (batch: BatchObject): BatchInfo => ({
  id: batch.id,
  status: batch.status,
  inputFileId: batch.input_file_id,
  outputFileId: batch.output_file_id || null,
  errorFileId: batch.error_file_id || null,
  requestCounts: {
    total: batch.request_counts?.total ?? 0,
    completed: batch.request_counts?.completed ?? 0,
    failed: batch.request_counts?.failed ?? 0,
  },
  metadata: Object.fromEntries(
    Object.entries(batch.metadata ?? {}).flatMap(([key, value]) =>
      typeof value === "string" ? [[key, value]] : [],
    ),
  ),
  errors: (batch.errors?.data ?? []).map(describeError),
  createdAt: typeof batch.created_at === "number" && batch.created_at > 0 ? batch.created_at * 1000 : null,
});

/** The BatchApi port over OpenAI's `/v1/files` and `/v1/batches` (or a compatible server's). */
export class OpenAiBatchApi implements BatchApi {
  readonly #client: OpenAI;
  readonly #secrets: readonly string[];
  readonly #logger: Logger;

  constructor(options: OpenAiBatchApiOptions) {
    this.#secrets = [options.apiKey];
    this.#logger = options.logger ?? silentLogger;
    this.#client = createOpenAiClient(options, this.#logger, 120_000);
  }

  async uploadFile(name: string, content: Uint8Array): Promise<string> {
    if (content.byteLength > MAX_BATCH_INPUT_BYTES) {
      throw this.#failed(
        "upload file",
        new InvalidInputError(
          `batch input ${name} is ${content.byteLength} bytes; the Batch API takes at most ${MAX_BATCH_INPUT_BYTES}`,
        ),
      );
    }
    const file = await this.#call("upload file", async () =>
      this.#client.files.create({ file: await toFile(content, name), purpose: "batch" }),
    );
    return this.#parse("upload file", z.object({ id: z.string().min(1) }), file).id;
  }

  async createBatch(inputFileId: string, metadata: Readonly<Record<string, string>>): Promise<BatchInfo> {
    const batch = await this.#call("create batch", () =>
      this.#client.batches.create({
        input_file_id: inputFileId,
        endpoint: "/v1/chat/completions",
        completion_window: "24h",
        metadata: { ...metadata },
      }),
    );
    return toBatchInfo(this.#parse("create batch", BatchObject, batch));
  }

  async getBatch(id: string): Promise<BatchInfo> {
    const batch = await this.#call("get batch", () => this.#client.batches.retrieve(id));
    return toBatchInfo(this.#parse("get batch", BatchObject, batch));
  }

  async listBatches(since: number): Promise<BatchInfo[]> {
    return this.#call("list batches", async () => {
      const found: BatchInfo[] = [];
      // Newest first, pages following `after`: stop at the first batch created before `since`, so no page is
      // fetched for nothing. A server that gives no creation time is listed to the end, or to MAX_LISTED.
      for await (const raw of this.#client.batches.list({ limit: MAX_PAGE })) {
        const batch = toBatchInfo(this.#parse("list batches", BatchObject, raw));
        if (batch.createdAt !== null && batch.createdAt < since) break;
        found.push(batch);
        if (found.length >= MAX_LISTED) break;
      }
      return found;
    });
  }

  async fileText(fileId: string): Promise<string> {
    return this.#call("read file", async () => {
      const response = await this.#client.files.content(fileId);
      return response.text();
    });
  }

  async #call<T>(operation: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw this.#failed(operation, error);
    }
  }

  #failed(operation: string, error: unknown): LlmCallError {
    const failure = classifyFailure(error, this.#secrets);
    this.#logger.warn("batch api call failed", {
      operation,
      status: failure.status,
      retryable: failure.retryable,
      error: failure.message,
    });
    return failure;
  }

  #parse<T>(operation: string, schema: z.ZodType<T>, value: unknown): T {
    const parsed = schema.safeParse(value);
    if (parsed.success) return parsed.data;
    // A 200 with an unreadable body is a server fault; asking again may well work.
    throw this.#failed(
      operation,
      new LlmCallError(`${operation}: not a Batch API answer: ${z.prettifyError(parsed.error)}`, {
        retryable: true,
        status: 200,
        cause: parsed.error,
      }),
    );
  }
}
