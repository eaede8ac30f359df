import { z } from "zod";
import { Direction, Item, RoundRecord, Sample, Version } from "../evolution/schemas.ts";

export const SAMPLE_STATUSES = [
  "INGESTED",
  "EVOLVING",
  "JUDGING",
  "DONE",
  "PASSED_THROUGH",
  "FAILED",
  "REJECTED",
] as const;
export const SampleStatus = z.enum(SAMPLE_STATUSES);
export type SampleStatus = z.infer<typeof SampleStatus>;
/** A count per status, every status present: the one shape progress and status displays fill in. */
export const emptyStatusCounts = (): Record<SampleStatus, number> => ({
  INGESTED: 0,
  EVOLVING: 0,
  JUDGING: 0,
  DONE: 0,
  PASSED_THROUGH: 0,
  FAILED: 0,
  REJECTED: 0,
});

export const TERMINAL_STATUSES: ReadonlySet<SampleStatus> = new Set([
  "DONE",
  "PASSED_THROUGH",
  "FAILED",
  "REJECTED",
]);

export const UsageTotals = z.object({
  calls: z.number().int().nonnegative(),
  promptTokens: z.number().int().nonnegative(),
  cachedTokens: z.number().int().nonnegative(),
  completionTokens: z.number().int().nonnegative(),
  costUsd: z.number().nonnegative(),
});
export type UsageTotals = z.infer<typeof UsageTotals>;
export const zeroUsage = (): UsageTotals => ({
  calls: 0,
  promptTokens: 0,
  cachedTokens: 0,
  completionTokens: 0,
  costUsd: 0,
});

/** The totals with one more paid answer. */
export function addUsage(total: UsageTotals, answer: StoredAnswer): UsageTotals {
  return {
    calls: total.calls + 1,
    promptTokens: total.promptTokens + answer.promptTokens,
    cachedTokens: total.cachedTokens + answer.cachedTokens,
    completionTokens: total.completionTokens + answer.completionTokens,
    costUsd: total.costUsd + answer.costUsd,
  };
}

export function addUsageTotals(a: UsageTotals, b: UsageTotals): UsageTotals {
  return {
    calls: a.calls + b.calls,
    promptTokens: a.promptTokens + b.promptTokens,
    cachedTokens: a.cachedTokens + b.cachedTokens,
    completionTokens: a.completionTokens + b.completionTokens,
    costUsd: a.costUsd + b.costUsd,
  };
}

/** Everything the pipeline knows about one input line. `key` is unique within the shard (the line). */
export const SampleRecord = z.object({
  run: z.string(),
  shard: z.string(),
  key: z.string(),
  status: SampleStatus,
  /** The round being evolved or judged (0 before the first). */
  round: z.number().int().nonnegative(),
  /** Bumped on every transition; conditional writes expect it. */
  version: z.number().int().nonnegative(),
  line: z.number().int().nonnegative(),
  sample: Sample.nullable(),
  versions: z.array(Version),
  rounds: z.array(RoundRecord),
  /** Candidates of the current round, waiting for the judge. */
  pending: z
    .object({
      round: z.number().int().positive(),
      direction: Direction,
      from: z.number().int(),
      items: z.array(Item),
    })
    .nullable(),
  attempts: z.number().int().nonnegative(),
  /**
   * How many times `mmevol run --retry-failed` started this sample again after it FAILED. Each retry gives its
   * requests fresh tries past the stored ones: answers stored before are read first (not paid again), but
   * stored answers that were all unusable or invalid would otherwise be replayed and fail it again at once.
   */
  retries: z.number().int().nonnegative().optional(),
  error: z.string().nullable(),
  /** The raw input line, for rejected records (truncated). */
  raw: z.string().nullable(),
  usage: UsageTotals,
  updatedAt: z.number(),
});
export type SampleRecord = z.infer<typeof SampleRecord>;

/** The start of the error of a sample passed through because its image could not be used (evolve). */
export const UNUSABLE_IMAGE_ERROR = "image unusable: ";

/**
 * What `--retry-failed` and `redrive --failed` start again: a FAILED sample, and one passed through because
 * its image could not be used (missing, unreadable), which may be there now.
 */
export const reopenable = (record: SampleRecord): boolean =>
  record.status === "FAILED" ||
  (record.status === "PASSED_THROUGH" && (record.error?.startsWith(UNUSABLE_IMAGE_ERROR) ?? false));

/**
 * A sample started again from its seed (`mmevol run --retry-failed`, `mmevol redrive --failed`): INGESTED at
 * round 0 with only its seed version, its attempts and usage back to zero, one more retry (which gives its
 * requests fresh tries past the stored ones), the version bumped. Its earlier answers stay stored under their
 * requests, so the rounds before the failure are read back, not paid again.
 */
export function reopenedRecord(record: SampleRecord, now: number): SampleRecord {
  const seed = record.versions.find((version) => version.round === 0);
  return SampleRecord.parse({
    ...record,
    status: "INGESTED",
    round: 0,
    version: record.version + 1,
    versions: seed === undefined ? [] : [seed],
    rounds: [],
    pending: null,
    attempts: 0,
    retries: (record.retries ?? 0) + 1,
    error: null,
    usage: zeroUsage(),
    updatedAt: now,
  });
}

/**
 * What a store checks when records are first stored (putSamples): the envelope. The sample and its seed
 * version were just built through the Sample schema (parseRecord), so they are checked for shape only, not
 * copied through zod a second time: at ingest that copy was a third of everything allocated per line.
 */
export const NewSampleRecord = SampleRecord.extend({
  sample: z.custom<Sample | null>((value) => value === null || typeof value === "object"),
  versions: z.custom<Version[]>((value) => Array.isArray(value)),
});

export const ShardRecord = z.object({
  run: z.string(),
  shard: z.string(),
  key: z.string(),
  /** Identity of the uploaded object (ETag or content digest), for deduplication. */
  etag: z.string(),
  /** Non-terminal samples left, plus one while ingest is still running. */
  pending: z.number().int(),
  ingested: z.boolean(),
  finalized: z.boolean(),
  /**
   * How many times samples of the shard were started again (reopenFailed counts each), so a finalize can tell
   * that the samples it read were reopened, and maybe finished again, before it marked the shard; absent: never.
   */
  reopens: z.number().int().nonnegative().optional(),
  lines: z.number().int().nonnegative(),
  /** The run settings in force for this shard (a RunConfig as JSON). */
  config: z.record(z.string(), z.unknown()),
  createdAt: z.number(),
  updatedAt: z.number(),
});
export type ShardRecord = z.infer<typeof ShardRecord>;

/** A stored LLM answer: the request is never paid for twice. */
export const StoredAnswer = z.object({
  content: z.string(),
  promptTokens: z.number().int().nonnegative(),
  cachedTokens: z.number().int().nonnegative(),
  completionTokens: z.number().int().nonnegative(),
  model: z.string(),
  costUsd: z.number().nonnegative(),
  /** Set when the answer was unusable (cut at the token limit, empty): that try is spent, not asked again. */
  unusable: z.string().optional(),
  /** The `max_tokens` an unusable answer was cut at, when it was cut at the token limit. */
  cutAt: z.number().int().positive().optional(),
  /**
   * The work that paid for it (a stage of one sample's round, `workKeyOf` its message). Other work whose
   * request is the same (an identical sample, a round that drew the same direction after all of the last
   * one's items were eliminated) uses it without paying; absent in answers stored before it was kept.
   */
  paidBy: z.string().optional(),
});
export type StoredAnswer = z.infer<typeof StoredAnswer>;

/**
 * Batch mode: one request waiting for, or inside, a provider batch. Keyed by (run, shard, hash); the hash is
 * the answer's cache key and the batch line's `custom_id`. `message` is the stage message to send again once
 * the answer is stored, so the answer is applied by the same stage logic as online. Statuses: queued (for the
 * next batch), submitted (in a job, and still once its answer is stored: the stored answer is what counts),
 * failed (the batch gave no answer: queued again, or asked online past the tries), waiting (other work whose
 * request is byte for byte one already queued or submitted in the shard: keyed `<hash>~<work>`, never
 * submitted; its message is sent again when the batch that carries the hash is applied), answered (a waiting
 * item whose message was sent; earlier versions also marked submitted items so).
 */
export const BatchItemStatus = z.enum(["queued", "submitted", "failed", "answered", "waiting"]);
export type BatchItemStatus = z.infer<typeof BatchItemStatus>;
export const BatchItem = z.object({
  run: z.string(),
  shard: z.string(),
  hash: z.string(),
  status: BatchItemStatus,
  model: z.string(),
  /** The blob key of the request's JSON body (image included). */
  body: z.string(),
  /** The stage message to send again when the answer is stored (a Message, validated where it is used). */
  message: z.record(z.string(), z.unknown()),
  /** The job it is in while submitted; the last one after. */
  job: z.string().nullable(),
  /** Batches it has been submitted in. */
  tries: z.number().int().nonnegative(),
  error: z.string().nullable(),
  updatedAt: z.number(),
  /** The request's prompt tokens as the provider counts them (BatchCodec.promptTokens); absent in older items. */
  tokens: z.number().int().nonnegative().optional(),
});
export type BatchItem = z.infer<typeof BatchItem>;

export const BatchJobStatus = z.enum(["submitting", "submitted", "applied", "failed"]);
export type BatchJobStatus = z.infer<typeof BatchJobStatus>;
/** One provider batch over one input file: one model, at most 50,000 requests or 200 MB. */
export const BatchJob = z.object({
  run: z.string(),
  shard: z.string(),
  id: z.string(),
  status: BatchJobStatus,
  model: z.string(),
  items: z.number().int().nonnegative(),
  bytes: z.number().int().nonnegative(),
  fileId: z.string().nullable(),
  batchId: z.string().nullable(),
  /** The provider's status at the last poll. */
  remoteStatus: z.string().nullable(),
  polls: z.number().int().nonnegative(),
  nextPollAt: z.number(),
  createdAt: z.number(),
  updatedAt: z.number(),
  error: z.string().nullable(),
  /** The prompt tokens of its requests: what it holds of the model's enqueued-token limit while open. */
  tokens: z.number().int().nonnegative().optional(),
});
export type BatchJob = z.infer<typeof BatchJob>;

export type ClaimResult =
  | { readonly granted: true }
  | { readonly granted: false; readonly holder: string; readonly until: number };

/** What changes in a transition; `version` and `updatedAt` are set by the store. */
export type SampleUpdate = Partial<
  Pick<
    SampleRecord,
    "status" | "round" | "sample" | "versions" | "rounds" | "pending" | "attempts" | "error" | "usage"
  >
>;

export interface TransitionResult {
  /** False when the record was not in the expected state: a duplicate delivery, acknowledged without work. */
  readonly applied: boolean;
  /** The shard's pending count after a terminal transition took it down, else null. */
  readonly shardPending: number | null;
}

/**
 * The sample state machine (ARCHITECTURE.md) with conditional transitions.
 * Every write that makes a sample terminal decrements the shard's pending count in the same transaction.
 */
export interface StateStore {
  /** Creates the shard if it does not exist (pending = 1 for the running ingest); returns the stored record. */
  createShard(shard: ShardRecord): Promise<{ created: boolean; shard: ShardRecord }>;
  getShard(run: string, shard: string): Promise<ShardRecord | null>;
  listShards(run?: string): Promise<ShardRecord[]>;
  /**
   * Creates samples that do not exist yet. Each created non-terminal sample adds one to the shard's pending count;
   * terminal ones (rejected, passed through) only count as lines. Returns how many were created.
   */
  putSamples(records: readonly SampleRecord[]): Promise<number>;
  getSample(run: string, shard: string, key: string): Promise<SampleRecord | null>;
  listSamples(run: string, shard: string): AsyncIterable<SampleRecord>;
  /**
   * Writes `current` with `update` applied and the version bumped, if the stored sample still has `current`'s
   * status, round and version. `current` is the record as the caller read it: every write bumps the version,
   * so a matching version means the stored record is that one, and the store does not read it again.
   */
  transition(current: SampleRecord, update: SampleUpdate): Promise<TransitionResult>;
  /**
   * Starts every sample of the shard that `reopenable` names again (reopenedRecord) and opens the shard again:
   * its pending count goes up by one per sample, in the same write (as does `reopens`), and it is no longer
   * finalized, so the last
   * of them to finish finalizes it once more and its outputs are written again with them. Returns the reopened records: the
   * caller sends their next messages (nextMessageOf). A sample that changed meanwhile is left as it is.
   */
  reopenFailed(run: string, shard: string): Promise<SampleRecord[]>;
  /** Ends ingest once: sets `lines`, drops the ingest's hold on `pending`. Returns the pending count, or null if already ended. */
  completeIngest(run: string, shard: string, lines: number): Promise<number | null>;
  /**
   * Marks the shard finalized once; false when it already was, or when work is pending again (samples reopened
   * while its finalize ran: the last of them to finish finalizes it again). `reopens` is the shard's count as
   * the finalize read it before the samples (0 when absent): false too when samples were reopened since, as
   * they may have finished again already, and what that finalize wrote does not have them.
   */
  markFinalized(run: string, shard: string, reopens: number): Promise<boolean>;
  getAnswer(hash: string): Promise<StoredAnswer | null>;
  /**
   * Claims the right to pay for a request for `holdMs`, so two deliveries running at once never pay for the
   * same call twice. `owner` is one receive of one message (`<message>#<receive>`); while another owner holds
   * an unexpired claim, the answer names it and when its claim ends.
   */
  claimRequest(hash: string, owner: string, holdMs: number): Promise<ClaimResult>;
  /** Gives a claim up (only the owner's): the call failed, so another delivery may try it now. */
  releaseClaim(hash: string, owner: string): Promise<void>;
  putAnswer(hash: string, answer: StoredAnswer): Promise<void>;
  /**
   * Batch mode. Queues a request unless it is already queued, submitted or answered; a failed one is queued
   * again (its `tries` kept). Returns the stored item and whether this call queued it. `existing` is the stored
   * item as the caller just read it (null: there is none), which spares a read; the write checks it either way.
   * An item given as "waiting" is written as such (a follower of another item, see BatchItemStatus).
   */
  queueBatchItem(item: BatchItem, existing?: BatchItem | null): Promise<{ queued: boolean; item: BatchItem }>;
  getBatchItem(run: string, shard: string, hash: string): Promise<BatchItem | null>;
  /**
   * A shard's items in one status; with `job`, only those whose last job it is (a shard's submitted items
   * include every answered one, of every earlier job). `consistent: false` may miss the last second's changes,
   * for half the price in DynamoDB (an eventually consistent read): for a caller that finds them at its next
   * pass.
   */
  listBatchItems(
    run: string,
    shard: string,
    status: BatchItemStatus,
    options?: { readonly consistent?: boolean; readonly job?: string },
  ): Promise<BatchItem[]>;
  /**
   * Moves `item`, as the caller read it, to the patch's status; false when it is no longer in the status it was
   * read in (someone else moved it). The patch applies over the item as read: an item changes only with its
   * status, so that read is current while the status is.
   */
  updateBatchItem(
    item: BatchItem,
    patch: Partial<Pick<BatchItem, "status" | "job" | "tries" | "error">>,
  ): Promise<boolean>;
  /** Creates or replaces a batch job record. */
  putBatchJob(job: BatchJob): Promise<void>;
  /** Every job of a run (every run when absent) that is not applied or failed yet. */
  listOpenBatchJobs(run?: string): Promise<BatchJob[]>;
}
