import type { LlmRequest, LlmResponse } from "./llm.ts";

/**
 * The provider's Batch API (OpenAI `/v1/files` and `/v1/batches`): upload a JSONL input, create a batch over it,
 * poll it, read its output and error files. Requests in a batch are billed at batch rates.
 */
export type BatchStatus =
  | "validating"
  | "failed"
  | "in_progress"
  | "finalizing"
  | "completed"
  | "expired"
  | "cancelling"
  | "cancelled";

/** Statuses after which a batch changes no more. */
export const FINISHED_BATCH_STATUSES: ReadonlySet<BatchStatus> = new Set([
  "failed",
  "completed",
  "expired",
  "cancelled",
]);

export interface BatchInfo {
  readonly id: string;
  readonly status: BatchStatus;
  readonly inputFileId: string;
  /** Answers, one JSON line per request that got one; null until there are some. */
  readonly outputFileId: string | null;
  /** Requests that failed, one JSON line each; null when none did. */
  readonly errorFileId: string | null;
  readonly requestCounts: { readonly total: number; readonly completed: number; readonly failed: number };
  /** Our own tags, given at creation (e.g. the job id, so a restart can find a batch it created). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Why the batch failed as a whole (input validation), when it did. */
  readonly errors: readonly string[];
  /** When the provider created it (ms since the epoch, its clock); null when it does not say. */
  readonly createdAt: number | null;
}

export interface BatchApi {
  /** Uploads a JSONL file with `purpose: batch`; returns its file id. */
  uploadFile(name: string, content: Uint8Array): Promise<string>;
  /** Creates a batch over an uploaded file for `/v1/chat/completions` with a 24 h window. */
  createBatch(inputFileId: string, metadata: Readonly<Record<string, string>>): Promise<BatchInfo>;
  getBatch(id: string): Promise<BatchInfo>;
  /**
   * The batches created at `since` (ms since the epoch) or later, newest first, through every page: to find
   * one whose creation was not recorded before a crash, however many others were created since.
   */
  listBatches(since: number): Promise<BatchInfo[]>;
  /** A file's content as text (output and error files are JSONL). */
  fileText(fileId: string): Promise<string>;
}

/** One line of a batch input file. */
export interface BatchInputLine {
  readonly custom_id: string;
  readonly method: "POST";
  readonly url: "/v1/chat/completions";
  readonly body: Readonly<Record<string, unknown>>;
}

/**
 * One line of a batch output or error file: `response` when the request was answered (any status code),
 * `error` when it was not (e.g. expired).
 */
export interface BatchOutputLine {
  readonly id: string;
  readonly custom_id: string;
  readonly response: {
    readonly status_code: number;
    readonly request_id?: string;
    readonly body: unknown;
  } | null;
  readonly error: { readonly code: string; readonly message: string } | null;
}

/** How requests are written into batch input lines and answers read back: the provider's wire format. */
export interface BatchCodec {
  /** The request as a batch input line's `body` (a chat completions body). */
  encode(request: LlmRequest): Record<string, unknown>;
  /**
   * A batch output line's `response.body` as an answer. Throws LlmAnswerError for an unusable answer (cut at
   * the token limit, empty) and LlmCallError for a refusal or an unreadable body.
   */
  decode(body: unknown, model: string): LlmResponse;
  /**
   * The prompt tokens the provider counts for the request (text, images and schema): what a batch adds to the
   * organization's enqueued-token limit for the model. An estimate; batch mode keeps a margin below the limit.
   */
  promptTokens(request: LlmRequest): number;
}

/** Batch mode's ports: the provider's Batch API and its wire format. */
export interface BatchPorts {
  readonly api: BatchApi;
  readonly codec: BatchCodec;
}
