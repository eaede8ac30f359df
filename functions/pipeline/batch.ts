import { createHash } from "node:crypto";
import { costOf, priceOf } from "../evolution/pricing.ts";
import {
  type BatchCodec,
  type BatchInfo,
  type BatchOutputLine,
  type BatchPorts,
  FINISHED_BATCH_STATUSES,
} from "../ports/batch-api.ts";
import { LlmAnswerError, MmevolError } from "../ports/errors.ts";
import type { LlmRequest } from "../ports/llm.ts";
import { Message } from "../ports/messages.ts";
import type { BatchItem, BatchJob, ShardRecord, StoredAnswer } from "../ports/state-store.ts";
import { BatchBodyReader } from "./batch-bodies.ts";
import type { StageDeps } from "./deps.ts";
import { shardConfig } from "./shard-config.ts";

/** The provider's limits on one batch input file (OpenAI: 50,000 requests, 200 MB). */
export const BATCH_MAX_REQUESTS = 50_000;
export const BATCH_MAX_BYTES = 200 * 1024 * 1024;

/**
 * The request went into (or already is in) a batch: the sample waits in its state, and its stage message is
 * sent again once the answer is stored. Not a failure; the message is acknowledged.
 */
export class DeferredToBatchError extends MmevolError {
  readonly queued: boolean;
  constructor(queued: boolean) {
    super(queued ? "request queued for the next batch" : "request is waiting for its batch", {
      retryable: false,
    });
    this.queued = queued;
  }
}

/**
 * Batch mode, at a cache miss: queue the request for the shard's next batch, or go on online when it already
 * failed in `maxTries` batches. Returns "online" in that case; otherwise throws DeferredToBatchError.
 */
export async function deferToBatch(
  deps: Pick<StageDeps, "state" | "batch">,
  target: {
    readonly run: string;
    readonly shard: string;
    readonly message: Message;
    readonly maxTries: number;
  },
  request: LlmRequest,
  hash: string,
): Promise<"online"> {
  const { run, shard } = target;
  if (!deps.batch)
    throw new MmevolError("batch mode needs a Batch API, and none is configured", { retryable: false });
  const existing = await deps.state.getBatchItem(run, shard, hash);
  if (existing?.status === "queued" || existing?.status === "submitted")
    throw new DeferredToBatchError(false);
  // Failed in too many batches, or answered but the answer is gone (expired): ask online.
  if (existing !== null && (existing.status === "answered" || existing.tries >= target.maxTries))
    return "online";
  // The body first: an item is never queued without the request it stands for. A failed item goes into the
  // next batch with the body it was queued with.
  const body =
    existing?.body ?? (await deps.batch.bodies.write(run, shard, hash, deps.batch.codec.encode(request)));
  const { queued } = await deps.state.queueBatchItem({
    run,
    shard,
    hash,
    status: "queued",
    model: request.model,
    body,
    message: { ...target.message },
    job: null,
    tries: 0,
    error: null,
    updatedAt: 0,
  });
  throw new DeferredToBatchError(queued);
}

export interface BatchTickOptions {
  readonly now: number;
  /** Only shards of this run; every run when absent. */
  readonly run?: string;
  /**
   * Submit a shard's queued requests once none was added for this long (the round has been collected).
   * 0 submits whatever is queued (a local run calls the tick when its queues are idle).
   */
  readonly settleMs: number;
  /** First poll delay; it doubles per poll up to `maxPollMs`. */
  readonly minPollMs?: number;
  readonly maxPollMs?: number;
}

export interface BatchTickResult {
  /** Stage messages whose answers are now stored (or whose batch failed): send them again. */
  readonly messages: Message[];
  readonly submitted: number;
  readonly applied: number;
  /** Jobs still open after this tick. */
  readonly open: number;
  /** Requests queued but not submitted yet (still collecting). */
  readonly queued: number;
  /** When the next open job is due a poll (or the next shard settles); null when nothing waits. */
  readonly nextAt: number | null;
}

type TickDeps = Pick<StageDeps, "state" | "blobs" | "logger" | "batch" | "defaults">;

/**
 * One pass of the batch loop, safe to run again at any point after a crash: submit settled rounds, poll open
 * jobs whose time has come, apply finished ones by `custom_id` (the answer's hash). Locally it runs in a loop
 * with backoff; in AWS a scheduled function runs it, so no Lambda ever waits on a batch.
 */
export async function batchTick(deps: TickDeps, options: BatchTickOptions): Promise<BatchTickResult> {
  const batch = deps.batch;
  if (!batch)
    throw new MmevolError("batch mode needs a Batch API, and none is configured", { retryable: false });
  const minPoll = options.minPollMs ?? 1_000;
  const maxPoll = options.maxPollMs ?? 60_000;
  const messages: Message[] = [];
  let submitted = 0;
  let applied = 0;
  let queuedLeft = 0;
  let nextAt: number | null = null;
  const due = (at: number) => {
    nextAt = nextAt === null ? at : Math.min(nextAt, at);
  };

  // Jobs first: a job left "submitting" by a crash is adopted or undone before anything new is submitted.
  for (const job of await deps.state.listOpenBatchJobs(options.run)) {
    if (job.status === "submitting") {
      await recoverSubmitting(deps, batch, job, options.now);
      due(options.now);
      continue;
    }
    if (job.nextPollAt > options.now) {
      due(job.nextPollAt);
      continue;
    }
    const info = await batch.api.getBatch(job.batchId ?? "");
    if (!FINISHED_BATCH_STATUSES.has(info.status)) {
      const polls = job.polls + 1;
      const nextPollAt = options.now + Math.min(maxPoll, minPoll * 2 ** Math.min(20, polls));
      await deps.state.putBatchJob({
        ...job,
        polls,
        nextPollAt,
        remoteStatus: info.status,
        updatedAt: options.now,
      });
      deps.logger.info("batch waiting", {
        job: job.id,
        status: info.status,
        completed: info.requestCounts.completed,
        total: info.requestCounts.total,
      });
      due(nextPollAt);
      continue;
    }
    const resent = await applyJob(deps, batch, job, info, await deps.state.getShard(job.run, job.shard));
    messages.push(...resent);
    applied += 1;
    await deps.state.putBatchJob({
      ...job,
      status: info.status === "completed" ? "applied" : "failed",
      remoteStatus: info.status,
      polls: job.polls + 1,
      updatedAt: options.now,
      error: info.errors.length > 0 ? info.errors.join("; ").slice(0, 1000) : null,
    });
    deps.logger.info("batch applied", { job: job.id, status: info.status, messages: resent.length });
  }

  for (const shard of await deps.state.listShards(options.run)) {
    if (shard.finalized) continue;
    const config = shardConfig(shard);
    if (config.mode !== "batch") continue;
    const queued = await deps.state.listBatchItems(shard.run, shard.shard, "queued");
    if (queued.length === 0) continue;
    const newest = Math.max(...queued.map((item) => item.updatedAt));
    const settled = options.settleMs <= 0 || options.now - newest >= options.settleMs;
    if (!settled && queued.length < BATCH_MAX_REQUESTS) {
      queuedLeft += queued.length;
      due(newest + options.settleMs);
      continue;
    }
    const jobs = await submitShard(deps, batch, shard, queued, options.now, minPoll);
    submitted += jobs;
    due(options.now + minPoll);
  }

  const open = (await deps.state.listOpenBatchJobs(options.run)).length;
  return { messages, submitted, applied, open, queued: queuedLeft, nextAt };
}

/** Splits a shard's queued requests into one file per model of at most 50,000 lines and 200 MB, and submits each. */
async function submitShard(
  deps: TickDeps,
  batch: BatchPorts,
  shard: ShardRecord,
  queued: readonly BatchItem[],
  now: number,
  minPoll: number,
): Promise<number> {
  const bodies = new BatchBodyReader(deps.blobs);
  const byModel = new Map<string, BatchItem[]>();
  for (const item of queued) {
    const group = byModel.get(item.model);
    if (group) group.push(item);
    else byModel.set(item.model, [item]);
  }
  let jobs = 0;
  for (const [model, items] of byModel) {
    let chunk: { item: BatchItem; line: string }[] = [];
    let bytes = 0;
    const flush = async () => {
      if (chunk.length === 0) return;
      await submitChunk(deps, batch, shard, model, chunk, bytes, now, minPoll);
      jobs += 1;
      chunk = [];
      bytes = 0;
    };
    for (const item of items) {
      const body = await bodies.take(item.body, item.hash);
      const line = `${JSON.stringify({ custom_id: item.hash, method: "POST", url: "/v1/chat/completions", body })}\n`;
      const size = Buffer.byteLength(line);
      if (chunk.length >= BATCH_MAX_REQUESTS || (chunk.length > 0 && bytes + size > BATCH_MAX_BYTES))
        await flush();
      chunk.push({ item, line });
      bytes += size;
    }
    await flush();
  }
  return jobs;
}

async function submitChunk(
  deps: TickDeps,
  batch: BatchPorts,
  shard: ShardRecord,
  model: string,
  chunk: readonly { item: BatchItem; line: string }[],
  bytes: number,
  now: number,
  minPoll: number,
): Promise<void> {
  const first = chunk[0]?.item.hash ?? "";
  const id = `${now.toString(36)}-${createHash("sha256").update(`${shard.run}/${shard.shard}/${model}/${first}`).digest("hex").slice(0, 12)}`;
  const job: BatchJob = {
    run: shard.run,
    shard: shard.shard,
    id,
    status: "submitting",
    model,
    items: chunk.length,
    bytes,
    fileId: null,
    batchId: null,
    remoteStatus: null,
    polls: 0,
    nextPollAt: now + minPoll,
    createdAt: now,
    updatedAt: now,
    error: null,
  };
  // Order matters for a crash at any point: the job is recorded before its items name it, and the items
  // before the batch exists, so a restart either finds the batch by its metadata or puts the items back.
  await deps.state.putBatchJob(job);
  const members: BatchItem[] = [];
  for (const { item } of chunk) {
    if (
      await deps.state.updateBatchItem(item.run, item.shard, item.hash, "queued", {
        status: "submitted",
        job: id,
        tries: item.tries + 1,
      })
    ) {
      members.push(item);
    }
  }
  const wanted = new Set(members.map((item) => item.hash));
  const content = chunk
    .filter(({ item }) => wanted.has(item.hash))
    .map(({ line }) => line)
    .join("");
  const fileId = await batch.api.uploadFile(
    `mmevol-${shard.run}-${shard.shard}-${id}.jsonl`,
    new TextEncoder().encode(content),
  );
  await deps.state.putBatchJob({ ...job, fileId, items: members.length, updatedAt: now });
  const info = await batch.api.createBatch(fileId, metadataOf(job));
  await deps.state.putBatchJob({
    ...job,
    status: "submitted",
    fileId,
    batchId: info.id,
    items: members.length,
    remoteStatus: info.status,
    updatedAt: now,
  });
  deps.logger.info("batch submitted", { job: id, batch: info.id, model, requests: members.length, bytes });
}

const metadataOf = (job: BatchJob): Record<string, string> => ({
  mmevol_job: job.id,
  mmevol_run: job.run,
  mmevol_shard: job.shard,
});

/** A job a crash left between recording and submitting: adopt its batch if the provider has it, else undo it. */
async function recoverSubmitting(
  deps: TickDeps,
  batch: BatchPorts,
  job: BatchJob,
  now: number,
): Promise<void> {
  const found = (await batch.api.listBatches(100)).find((info) => info.metadata.mmevol_job === job.id);
  if (found) {
    await deps.state.putBatchJob({
      ...job,
      status: "submitted",
      batchId: found.id,
      remoteStatus: found.status,
      updatedAt: now,
    });
    deps.logger.info("batch adopted after a restart", { job: job.id, batch: found.id });
    return;
  }
  for (const item of await deps.state.listBatchItems(job.run, job.shard, "submitted")) {
    if (item.job === job.id) {
      await deps.state.updateBatchItem(item.run, item.shard, item.hash, "submitted", {
        status: "queued",
        tries: Math.max(0, item.tries - 1),
      });
    }
  }
  await deps.state.putBatchJob({
    ...job,
    status: "failed",
    error: "never submitted (interrupted); requests queued again",
    updatedAt: now,
  });
  deps.logger.warn("batch was never submitted; its requests are queued again", { job: job.id });
}

/**
 * Stores every answer of a finished batch under its request's hash, at batch prices, and returns the stage
 * messages to send again. Requests without an answer (failed, expired, missing) are marked failed: their
 * message goes again too, and the stage queues them for the next batch or, past `maxBatchTries`, asks online.
 */
async function applyJob(
  deps: TickDeps,
  batch: BatchPorts,
  job: BatchJob,
  info: BatchInfo,
  shard: ShardRecord | null,
): Promise<Message[]> {
  const config = shard === null ? null : shardConfig(shard);
  const messages: Message[] = [];
  const resend = (item: BatchItem) => {
    const parsed = Message.safeParse(item.message);
    if (parsed.success) messages.push(parsed.data);
    else deps.logger.error("batch item has an unreadable message", { hash: item.hash });
  };
  const lines: BatchOutputLine[] = [];
  for (const fileId of [info.outputFileId, info.errorFileId]) {
    if (fileId === null) continue;
    for (const text of (await batch.api.fileText(fileId)).split("\n")) {
      if (text.trim() === "") continue;
      try {
        lines.push(JSON.parse(text) as BatchOutputLine);
      } catch {
        deps.logger.warn("unreadable batch output line", { job: job.id, line: text.slice(0, 200) });
      }
    }
  }
  for (const line of lines) {
    const hash = typeof line.custom_id === "string" ? line.custom_id : "";
    const item = await deps.state.getBatchItem(job.run, job.shard, hash);
    if (item === null || item.status !== "submitted" || item.job !== job.id) continue;
    const answer =
      line.response?.status_code === 200 ? readAnswer(batch.codec, line.response.body, item, config) : null;
    if (answer !== null && !("error" in answer)) {
      await deps.state.putAnswer(hash, answer);
      if (
        await deps.state.updateBatchItem(job.run, job.shard, hash, "submitted", {
          status: "answered",
          error: null,
        })
      ) {
        resend(item);
      }
      continue;
    }
    const reason =
      answer !== null && "error" in answer
        ? answer.error
        : (line.error?.message ?? `status ${line.response?.status_code ?? "none"}`);
    if (
      await deps.state.updateBatchItem(job.run, job.shard, hash, "submitted", {
        status: "failed",
        error: reason.slice(0, 500),
      })
    ) {
      resend(item);
    }
  }
  // Anything the provider did not mention (a whole batch failed or expired, a truncated file) failed too.
  for (const item of await deps.state.listBatchItems(job.run, job.shard, "submitted")) {
    if (item.job !== job.id) continue;
    const reason = `no answer in batch ${info.id} (${info.status})`;
    if (
      await deps.state.updateBatchItem(job.run, job.shard, item.hash, "submitted", {
        status: "failed",
        error: reason,
      })
    ) {
      resend(item);
    }
  }
  return messages;
}

/** An answered line as a stored answer at batch prices; an unusable answer is stored as a spent try. */
function readAnswer(
  codec: BatchCodec,
  body: unknown,
  item: BatchItem,
  config: ReturnType<typeof shardConfig> | null,
): StoredAnswer | { error: string } {
  try {
    const response = codec.decode(body, item.model);
    return {
      content: response.content,
      promptTokens: response.usage.promptTokens,
      cachedTokens: response.usage.cachedTokens,
      completionTokens: response.usage.completionTokens,
      model: response.model,
      costUsd: costOf(priceOf(item.model, config?.prices ?? {}), response.usage, "batch"),
    };
  } catch (error) {
    if (error instanceof LlmAnswerError) {
      return {
        content: "",
        promptTokens: 0,
        cachedTokens: 0,
        completionTokens: 0,
        model: item.model,
        costUsd: 0,
        unusable: error.message,
      };
    }
    return { error: error instanceof Error ? error.message : String(error) };
  }
}
