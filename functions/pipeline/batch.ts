import { createHash, randomBytes } from "node:crypto";
import { z } from "zod";
import { priceOf } from "../evolution/pricing.ts";
import {
  type BatchCodec,
  type BatchInfo,
  type BatchOutputLine,
  type BatchPorts,
  FINISHED_BATCH_STATUSES,
} from "../ports/batch-api.ts";
import { BlobNotFoundError } from "../ports/blob-store.ts";
import { LlmAnswerError, MmevolError } from "../ports/errors.ts";
import type { LlmRequest } from "../ports/llm.ts";
import { Message } from "../ports/messages.ts";
import {
  addUsage,
  addUsageTotals,
  type BatchItem,
  type BatchJob,
  type ShardRecord,
  type StoredAnswer,
  type UsageTotals,
  zeroUsage,
} from "../ports/state-store.ts";
import { storedAnswer, unusableAnswer } from "./answers.ts";
import { BatchBodyReader } from "./batch-bodies.ts";
import type { StageDeps } from "./deps.ts";
import { layout, pairKey, shardConfig } from "./shard-config.ts";
import { workKeyOf } from "./sweep.ts";

/** The provider's limits on one batch input file (OpenAI: 50,000 requests, 200 MB). */
export const BATCH_MAX_REQUESTS = 50_000;
export const BATCH_MAX_BYTES = 200 * 1024 * 1024;

/**
 * The share of a learned enqueued-token limit that batch mode fills: our count of a prompt is an estimate,
 * and the provider's limit is the whole organization's.
 */
export const ENQUEUED_SHARE = 0.9;

/**
 * A submitted request with no answer stored after this long is asked online: the provider ends every batch
 * within its 24 h window (an expired batch's requests are marked failed and queued again), so its answer was
 * stored and has expired since (stored answers live 30 days), or the batch was lost.
 */
export const SUBMITTED_ITEM_LOST_MS = 48 * 60 * 60_000;

/**
 * How long the deployed batcher leaves a job "submitting" to the tick that is submitting it: longer than that
 * tick can run (the Lambda's 15 minutes). The next tick starts a minute later; one that took the job for a
 * crash's, found no batch for it yet, and queued its requests again, had them submitted twice, both paid.
 */
export const SUBMITTING_GRACE_MS = 20 * 60_000;

/**
 * OpenAI accepts a batch, then fails it at validation with `token_limit_exceeded` when the prompt tokens of
 * the model's unfinished batches would pass the organization's queue limit: "Enqueued token limit reached for
 * gpt-4o in organization org-…. Limit: 90,000 enqueued tokens. Please try again once some in_progress batches
 * have been completed." The requests are fine; the batch came too soon or too big.
 */
export function enqueuedTokenRefusal(errors: readonly string[]): { limit: number | null } | null {
  const refusal = errors.find((error) => /token_limit_exceeded|enqueued token limit/i.test(error));
  if (refusal === undefined) return null;
  const limit = /limit:\s*([\d,]+)\s*enqueued tokens/i.exec(refusal)?.[1];
  const parsed = limit === undefined ? Number.NaN : Number(limit.replaceAll(",", ""));
  return { limit: Number.isSafeInteger(parsed) && parsed > 0 ? parsed : null };
}

/** Learned enqueued-token limits by model, kept with the run's batch files (work/<run>/batches/limits.json). */
const BatchLimits = z.record(
  z.string(),
  z.object({ enqueuedTokens: z.number().int().positive(), learnedAt: z.number() }),
);
type BatchLimits = z.infer<typeof BatchLimits>;

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
 * failed in `maxTries` batches. Returns "online" in that case, "answered" when the answer was stored while this
 * work was about to wait for it; otherwise throws DeferredToBatchError.
 */
export async function deferToBatch(
  deps: Pick<StageDeps, "state" | "batch" | "clock">,
  target: {
    readonly run: string;
    readonly shard: string;
    readonly message: Message;
    readonly maxTries: number;
  },
  request: LlmRequest,
  hash: string,
  looks = 0,
): Promise<"online" | "answered"> {
  const { run, shard } = target;
  if (!deps.batch)
    throw new MmevolError("batch mode needs a Batch API, and none is configured", { retryable: false });
  const existing = await deps.state.getBatchItem(run, shard, hash);
  if (existing !== null && (await inBatch(deps, existing)))
    return waitFor(deps, target, request, existing, looks);
  // Submitted or answered (as earlier versions marked them) and the answer is gone, or failed in too many
  // batches: ask online.
  if (existing !== null && (existing.status !== "failed" || existing.tries >= target.maxTries))
    return "online";
  // The body first: an item is never queued without the request it stands for. A failed item goes into the
  // next batch with the body it was queued with.
  const body =
    existing?.body ?? (await deps.batch.bodies.write(run, shard, hash, deps.batch.codec.encode(request)));
  const { queued, item } = await deps.state.queueBatchItem(
    {
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
      tokens: existing?.tokens ?? deps.batch.codec.promptTokens(request),
    },
    existing,
  );
  // Queued by other work between the read and this write (two samples with the same request at once).
  if (!queued) return waitFor(deps, target, request, item, looks);
  throw new DeferredToBatchError(true);
}

/** Whether the item's answer is still to come from a batch: it is queued, or submitted and not lost. */
async function inBatch(
  deps: Pick<StageDeps, "state" | "batch" | "clock">,
  item: BatchItem,
): Promise<boolean> {
  if (item.status === "queued") return true;
  if (item.status !== "submitted") return false;
  // An item stays "submitted" once its answer is stored (applyJob writes the answer only): one submitted this
  // long ago with no answer stored had it expire, or its batch is lost.
  if (deps.clock.now() - item.updatedAt <= SUBMITTED_ITEM_LOST_MS) return true;
  // Older, and its job not applied yet: a local run resumed days later runs its stages before its first tick.
  // If the provider has finished that batch, it holds the answer and the tick applies it; one still running
  // this long after its 24 h window is lost. Rare, so the listing and the look cost little.
  if (item.job === null || !deps.batch) return false;
  const job = (await deps.state.listOpenBatchJobs(item.run)).find(
    (open) => open.shard === item.shard && open.id === item.job,
  );
  return Boolean(job?.batchId && (await batchFinished(deps.batch.api, job.batchId, deps.clock.now())));
}

/** The key of other work waiting for request `hash` (a "waiting" item): `<hash>~<digest of the work key>`. */
export const waiterKey = (hash: string, work: string): string =>
  `${hash}~${createHash("sha256").update(work).digest("hex").slice(0, 24)}`;
const waitedHash = (key: string): string => key.slice(0, key.indexOf("~"));

/**
 * The request is in a batch already. Its item's own work gets its message back with the answer; other work
 * with the very same request (another sample of the shard, an identical line) is recorded as waiting for it,
 * so the apply of that batch sends its message too: the request is paid once, and no sample is left for the
 * sweeper. Then it looks at the answer and the item again: an apply lists the waiting items after it stored
 * the answers and failed the items, so one that missed this work had done either.
 */
async function waitFor(
  deps: Pick<StageDeps, "state" | "batch" | "clock">,
  target: Parameters<typeof deferToBatch>[1],
  request: LlmRequest,
  existing: BatchItem,
  looks: number,
): Promise<"online" | "answered"> {
  const work = workKeyOf(target.message);
  const owner = Message.safeParse(existing.message);
  if (owner.success && workKeyOf(owner.data) === work) throw new DeferredToBatchError(false);
  const { item } = await deps.state.queueBatchItem({
    run: target.run,
    shard: target.shard,
    hash: waiterKey(existing.hash, work),
    status: "waiting",
    model: request.model,
    body: existing.body,
    message: { ...target.message },
    job: null,
    tries: 0,
    error: null,
    updatedAt: 0,
  });
  // This work waited for the request before (its batch failed, and another sample queued it again): wait again.
  if (item.status === "answered") await deps.state.updateBatchItem(item, { status: "waiting" });
  if ((await deps.state.getAnswer(existing.hash)) !== null) return "answered";
  const now = await deps.state.getBatchItem(target.run, target.shard, existing.hash);
  if ((now !== null && (await inBatch(deps, now))) || looks >= 2) throw new DeferredToBatchError(false);
  // Its batch failed meanwhile: queue it again, or go online, as if it had not been waited for.
  return deferToBatch(deps, target, request, existing.hash, looks + 1);
}

/** Recent looks at a batch's status, per API client: every request of a resumed round asks about the same few. */
const finishedLooks = new WeakMap<
  BatchPorts["api"],
  Map<string, { at: number; finished: Promise<boolean> }>
>();
const FINISHED_LOOK_MS = 60_000;

function batchFinished(api: BatchPorts["api"], batchId: string, now: number): Promise<boolean> {
  let looks = finishedLooks.get(api);
  if (looks === undefined) finishedLooks.set(api, (looks = new Map()));
  const recent = looks.get(batchId);
  if (recent !== undefined && now - recent.at < FINISHED_LOOK_MS) return recent.finished;
  const finished = api.getBatch(batchId).then((info) => FINISHED_BATCH_STATUSES.has(info.status));
  // A failed look is not kept: the next request asks again.
  finished.catch(() => looks.delete(batchId));
  looks.set(batchId, { at: now, finished });
  return finished;
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
  /**
   * What this process remembers of earlier ticks (the deployed batcher keeps one in its warm container): a shard
   * that is waiting for its batches lists its queued requests less often. Without it, every tick lists them.
   */
  readonly listings?: QueuedListings;
  /**
   * A job "submitting" for less than this is left to the tick submitting it (SUBMITTING_GRACE_MS, where ticks
   * can overlap); 0 (the default, a local run: one process) recovers it at once.
   */
  readonly submittingGraceMs?: number;
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
  /** What the answers this tick stored cost, at batch prices (for progress; the report counts from the state). */
  readonly paid: UsageTotals;
}

type TickDeps = Pick<StageDeps, "state" | "blobs" | "logger" | "batch" | "defaults">;

/**
 * When a batcher last listed each shard's queued requests, and when it last saw the shard busy: requests found
 * queued, or one of its batches finished, refused or recovered (its messages go out, and the stages queue the
 * next requests within moments).
 *
 * Why: listing a shard's queued requests is a Query over all its batch items, answered ones included (about
 * 300 read units at 1,000 samples and 3 rounds), and the deployed batcher runs every minute. A shard waits
 * hours for its batches with nothing queued: listed every minute all that time, it cost more than the rest of
 * its AWS bill. Now a shard with an open batch is listed at every tick for `busyMs` after it was busy, then
 * every `relistMs`: a request queued meanwhile (a redelivered message) waits that long at most, for a batch
 * that may take 24 hours. A shard with no open batch is listed at every tick. Lost on a cold start: the next
 * tick lists every shard.
 */
export class QueuedListings {
  readonly relistMs: number;
  readonly busyMs: number;
  readonly #shards = new Map<string, { listedAt: number; busyAt: number }>();
  constructor(options: { readonly relistMs?: number; readonly busyMs?: number } = {}) {
    this.relistMs = options.relistMs ?? 15 * 60_000;
    this.busyMs = options.busyMs ?? 5 * 60_000;
  }

  /** When the shard's queued requests are next due a listing while it waits on its batches: now, or later. */
  dueAt(run: string, shard: string, now: number): number {
    const seen = this.#shards.get(pairKey(run, shard));
    if (seen === undefined || now - seen.busyAt < this.busyMs) return now;
    return seen.listedAt + this.relistMs;
  }

  listed(run: string, shard: string, now: number, found: boolean): void {
    const key = pairKey(run, shard);
    const busyAt = this.#shards.get(key)?.busyAt ?? Number.NEGATIVE_INFINITY;
    this.#shards.set(key, { listedAt: now, busyAt: found ? now : busyAt });
  }

  busy(run: string, shard: string, now: number): void {
    const key = pairKey(run, shard);
    this.#shards.set(key, {
      listedAt: this.#shards.get(key)?.listedAt ?? Number.NEGATIVE_INFINITY,
      busyAt: now,
    });
  }
}

/**
 * Some steps of a tick failed (the provider or the network): the others went on. `result` holds what the tick
 * did, with the messages of the batches it applied: send them before handling the failure, or those samples
 * wait for the sweeper (their jobs are closed, so no later tick sends them).
 */
export class BatchTickError extends MmevolError {
  readonly result: BatchTickResult;
  readonly failures: readonly string[];
  constructor(failures: readonly string[], result: BatchTickResult, cause: unknown) {
    super(`batch step failed (${failures.length}): ${failures.join("; ").slice(0, 500)}`, {
      retryable: true,
      cause,
    });
    this.failures = failures;
    this.result = result;
  }
}

/**
 * One pass of the batch loop, safe to run again at any point after a crash: submit settled rounds, poll open
 * jobs whose time has come, apply finished ones by `custom_id` (the answer's hash). Locally it runs in a loop
 * with backoff; in AWS a scheduled function runs it, so no Lambda ever waits on a batch. A job or shard whose
 * step fails does not stop the others; the tick then throws a BatchTickError carrying what it did.
 */
export async function batchTick(deps: TickDeps, options: BatchTickOptions): Promise<BatchTickResult> {
  const batch = deps.batch;
  if (!batch)
    throw new MmevolError("batch mode needs a Batch API, and none is configured", { retryable: false });
  const minPoll = options.minPollMs ?? 1_000;
  const maxPoll = options.maxPollMs ?? 60_000;
  const grace = options.submittingGraceMs ?? 0;
  const messages: Message[] = [];
  let submitted = 0;
  let applied = 0;
  let queuedLeft = 0;
  let paid = zeroUsage();
  let nextAt: number | null = null;
  const due = (at: number) => {
    nextAt = nextAt === null ? at : Math.min(nextAt, at);
  };
  const budget = new EnqueuedBudget(deps);

  const stepJob = async (job: BatchJob): Promise<void> => {
    if (job.status === "submitting") {
      // Still being submitted by a tick that may be running now (see SUBMITTING_GRACE_MS).
      if (options.now - job.updatedAt < grace) {
        due(job.updatedAt + grace);
        return;
      }
      options.listings?.busy(job.run, job.shard, options.now);
      await recoverSubmitting(deps, batch, job, options.now);
      due(options.now);
      return;
    }
    if (job.nextPollAt > options.now) {
      due(job.nextPollAt);
      return;
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
      return;
    }
    options.listings?.busy(job.run, job.shard, options.now);
    const refusal = info.status === "failed" ? enqueuedTokenRefusal(info.errors) : null;
    // A batch of one request that does not fit alone is that request's failure, handled as any other.
    if (refusal !== null && job.items > 1) {
      await refusedForTokens(deps, job, info, refusal.limit, budget, options.now);
      due(options.now);
      return;
    }
    const resent = await applyJob(deps, batch, job, info, await deps.state.getShard(job.run, job.shard));
    // Collected before the job is closed: if closing it fails, the next tick applies it again (the answers
    // are stored; the stages take a message again as a no-op).
    messages.push(...resent.messages);
    paid = addUsageTotals(paid, resent.paid);
    applied += 1;
    await deps.state.putBatchJob({
      ...job,
      status: info.status === "completed" ? "applied" : "failed",
      remoteStatus: info.status,
      polls: job.polls + 1,
      updatedAt: options.now,
      error: info.errors.length > 0 ? info.errors.join("; ").slice(0, 1000) : null,
    });
    deps.logger.info("batch applied", { job: job.id, status: info.status, messages: resent.messages.length });
  };

  const stepShard = async (shard: ShardRecord, stillOpen: readonly BatchJob[]): Promise<void> => {
    if (shard.finalized) return;
    const config = shardConfig(shard);
    if (config.mode !== "batch") return;
    const awaited = stillOpen.some((job) => job.run === shard.run && job.shard === shard.shard);
    const listAt = options.listings?.dueAt(shard.run, shard.shard, options.now) ?? options.now;
    if (awaited && listAt > options.now) {
      due(listAt);
      return;
    }
    // A request queued a moment ago and missed here goes at the next tick: no need to pay for a consistent read.
    const queued = await deps.state.listBatchItems(shard.run, shard.shard, "queued", { consistent: false });
    options.listings?.listed(shard.run, shard.shard, options.now, queued.length > 0);
    if (queued.length === 0) return;
    const newest = Math.max(...queued.map((item) => item.updatedAt));
    const settled = options.settleMs <= 0 || options.now - newest >= options.settleMs;
    if (!settled && queued.length < BATCH_MAX_REQUESTS) {
      queuedLeft += queued.length;
      due(newest + options.settleMs);
      return;
    }
    await budget.load(shard.run);
    const { jobs, waiting } = await submitShard(deps, batch, shard, queued, options.now, minPoll, budget);
    submitted += jobs;
    queuedLeft += waiting;
    // Requests held back for the limit go once a batch of their model finishes: at its next poll.
    due(options.now + minPoll);
  };

  // A step that fails is logged and the others go on: one job the provider keeps failing on must not hold up
  // every other job and shard, nor lose the messages of the batches applied before it.
  const failures: string[] = [];
  let firstError: unknown = null;
  const attempt = async (what: string, step: () => Promise<void>): Promise<void> => {
    try {
      await step();
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      failures.push(`${what}: ${reason}`);
      firstError ??= error;
      deps.logger.warn("batch step failed", { step: what, error: reason });
    }
  };
  let stillOpen: BatchJob[] = [];
  let openKnown = false;
  await attempt("jobs", async () => {
    // Jobs first: a job left "submitting" by a crash is adopted or undone before anything new is submitted.
    for (const job of await deps.state.listOpenBatchJobs(options.run))
      await attempt(`job ${job.id}`, () => stepJob(job));
    // The jobs still open once finished ones are applied: what they hold of each model's enqueued-token limit.
    stillOpen = await deps.state.listOpenBatchJobs(options.run);
    for (const job of stillOpen) budget.take(job.run, job.model, job.tokens ?? 0);
    openKnown = true;
  });
  // Without the open jobs listed, a shard could go past its model's enqueued-token limit: it waits a tick.
  if (openKnown)
    await attempt("shards", async () => {
      for (const shard of await deps.state.listShards(options.run))
        await attempt(`shard ${shard.run}/${shard.shard}`, () => stepShard(shard, stillOpen));
    });

  // Every job submitted in this tick is open too.
  const result = {
    messages,
    submitted,
    applied,
    open: stillOpen.length + submitted,
    queued: queuedLeft,
    nextAt,
    paid,
  };
  if (failures.length > 0) throw new BatchTickError(failures, result, firstError);
  return result;
}

/**
 * Splits a shard's queued requests into one file per model of at most 50,000 lines and 200 MB, and within
 * what is left of the model's learned enqueued-token limit, and submits each. Requests past the limit stay
 * queued (`waiting`) until a batch of their model finishes.
 */
async function submitShard(
  deps: TickDeps,
  batch: BatchPorts,
  shard: ShardRecord,
  queued: readonly BatchItem[],
  now: number,
  minPoll: number,
  budget: EnqueuedBudget,
): Promise<{ jobs: number; waiting: number }> {
  const { run } = shard;
  const bodies = new BatchBodyReader(deps.blobs);
  const byModel = new Map<string, BatchItem[]>();
  for (const item of queued) {
    const group = byModel.get(item.model);
    if (group) group.push(item);
    else byModel.set(item.model, [item]);
  }
  let jobs = 0;
  let waiting = 0;
  for (const [model, items] of byModel) {
    let chunk: { item: BatchItem; line: string }[] = [];
    let bytes = 0;
    let tokens = 0;
    const flush = async () => {
      if (chunk.length === 0) return;
      if (await submitChunk(deps, batch, shard, model, chunk, bytes, tokens, now, minPoll)) {
        budget.take(run, model, tokens);
        jobs += 1;
      }
      chunk = [];
      bytes = 0;
      tokens = 0;
    };
    for (const [index, item] of items.entries()) {
      const body = await bodies.take(item.body, item.hash);
      const line = `${JSON.stringify({ custom_id: item.hash, method: "POST", url: "/v1/chat/completions", body })}\n`;
      const size = Buffer.byteLength(line);
      // Items queued before their tokens were recorded: about 4 bytes a token, images included (an over-count).
      const itemTokens = item.tokens ?? Math.ceil(size / 4);
      if (chunk.length >= BATCH_MAX_REQUESTS || (chunk.length > 0 && bytes + size > BATCH_MAX_BYTES))
        await flush();
      const alone = chunk.length === 0 && budget.nothingOpen(run, model);
      if (tokens + itemTokens > budget.left(run, model) && !alone) {
        await flush();
        // Still no room once the open batches are counted: the rest waits for one of them to finish.
        if (itemTokens > budget.left(run, model) && !budget.nothingOpen(run, model)) {
          waiting += items.length - index;
          break;
        }
      }
      chunk.push({ item, line });
      bytes += size;
      tokens += itemTokens;
    }
    await flush();
  }
  return { jobs, waiting };
}

async function submitChunk(
  deps: TickDeps,
  batch: BatchPorts,
  shard: ShardRecord,
  model: string,
  chunk: readonly { item: BatchItem; line: string }[],
  bytes: number,
  tokens: number,
  now: number,
  minPoll: number,
): Promise<boolean> {
  // Unique to this batcher: two ticks at once (one outlasting its minute) list the same requests at the same
  // clock; an id made of those wrote both jobs to one record, and the first's batch was never applied.
  const id = `${now.toString(36)}-${randomBytes(6).toString("hex")}`;
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
    tokens,
  };
  // Order matters for a crash at any point: the job is recorded before its items name it, and the items
  // before the batch exists, so a restart either finds the batch by its metadata or puts the items back.
  await deps.state.putBatchJob(job);
  const members: BatchItem[] = [];
  for (const { item } of chunk) {
    if (await deps.state.updateBatchItem(item, { status: "submitted", job: id, tries: item.tries + 1 })) {
      members.push(item);
    }
  }
  if (members.length === 0) {
    // Another batcher (a tick that outlasted its minute) took every request first: nothing is left to send,
    // and an empty input file would only make an empty batch.
    await deps.state.putBatchJob({
      ...job,
      status: "failed",
      items: 0,
      error: "every request was submitted by another batcher first",
      updatedAt: now,
    });
    deps.logger.info("batch not submitted: its requests went with another batcher's", { job: id, model });
    return false;
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
  return true;
}

const metadataOf = (job: BatchJob): Record<string, string> => ({
  mmevol_job: job.id,
  mmevol_run: job.run,
  mmevol_shard: job.shard,
});

/** How far behind ours the provider's clock may be, when a batch it created is looked for by time. */
const PROVIDER_CLOCK_SKEW_MS = 60 * 60_000;

/** A job a crash left between recording and submitting: adopt its batch if the provider has it, else undo it. */
async function recoverSubmitting(
  deps: TickDeps,
  batch: BatchPorts,
  job: BatchJob,
  now: number,
): Promise<void> {
  // Every batch created since the job was recorded, whatever else the organisation created since; the
  // provider's clock may be behind ours.
  const since = job.createdAt - PROVIDER_CLOCK_SKEW_MS;
  const found = (await batch.api.listBatches(since)).find((info) => info.metadata.mmevol_job === job.id);
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
  await queueAgain(deps, job);
  await deps.state.putBatchJob({
    ...job,
    status: "failed",
    error: "never submitted (interrupted); requests queued again",
    updatedAt: now,
  });
  deps.logger.warn("batch was never submitted; its requests are queued again", { job: job.id });
}

/** Puts a job's requests back in the queue without spending the try its submission counted. */
async function queueAgain(deps: TickDeps, job: BatchJob): Promise<void> {
  for (const item of await deps.state.listBatchItems(job.run, job.shard, "submitted", { job: job.id }))
    await deps.state.updateBatchItem(item, { status: "queued", tries: Math.max(0, item.tries - 1) });
}

/**
 * The provider refused a whole batch for the model's enqueued-token limit: its requests did not fail, so they
 * go back to the queue without spending a try (past `maxBatchTries` they would be asked online, at twice the
 * price), and the limit is learned, so the next batches fit in it and wait for earlier ones to finish. The
 * limit learned is the one the provider names when this batch was over it by our count; when we thought it
 * fitted (others' batches, or our count, leave less room than we thought), at most half of what it held.
 */
async function refusedForTokens(
  deps: TickDeps,
  job: BatchJob,
  info: BatchInfo,
  named: number | null,
  budget: EnqueuedBudget,
  now: number,
): Promise<void> {
  const held = job.tokens ?? 0;
  const halved = held > 0 ? Math.max(1, Math.floor(held / 2)) : Number.POSITIVE_INFINITY;
  const learned =
    named !== null && held > named * ENQUEUED_SHARE
      ? named
      : Math.min(named ?? Number.POSITIVE_INFINITY, halved);
  if (Number.isFinite(learned)) await budget.learn(job.run, job.model, learned, now);
  await queueAgain(deps, job);
  await deps.state.putBatchJob({
    ...job,
    status: "failed",
    remoteStatus: info.status,
    polls: job.polls + 1,
    updatedAt: now,
    error: `refused for the enqueued-token limit; requests queued again: ${info.errors.join("; ")}`.slice(
      0,
      1000,
    ),
  });
  deps.logger.warn("batch refused for the enqueued-token limit; its requests are queued again", {
    job: job.id,
    model: job.model,
    tokens: job.tokens ?? null,
    limit: Number.isFinite(learned) ? learned : null,
  });
}

/**
 * Each model's enqueued-token limit in one tick: the limits learned from refusals (layout.batchLimits, read
 * once per run and tick, and kept up to date) and what the run's open batches hold of them.
 */
class EnqueuedBudget {
  readonly #deps: TickDeps;
  readonly #limits = new Map<string, BatchLimits>();
  /** Tokens held by open batches, by run and model; a key is present once any batch of them is open. */
  readonly #held = new Map<string, number>();
  constructor(deps: TickDeps) {
    this.#deps = deps;
  }

  /** Reads the run's learned limits, once; `left` needs them. */
  async load(run: string): Promise<BatchLimits> {
    let limits = this.#limits.get(run);
    if (limits === undefined) {
      limits = await this.#read(run);
      this.#limits.set(run, limits);
    }
    return limits;
  }

  /** Tokens a new batch of `model` may hold (Infinity while no limit was learned). */
  left(run: string, model: string): number {
    const limit = this.#limits.get(run)?.[model]?.enqueuedTokens;
    if (limit === undefined) return Number.POSITIVE_INFINITY;
    return Math.floor(limit * ENQUEUED_SHARE) - (this.#held.get(pairKey(run, model)) ?? 0);
  }

  /** No batch of `model` is open: a request alone must then go, however large, or it would wait forever. */
  nothingOpen(run: string, model: string): boolean {
    return !this.#held.has(pairKey(run, model));
  }

  /** A batch of `model` holding `tokens` is open. */
  take(run: string, model: string, tokens: number): void {
    const key = pairKey(run, model);
    this.#held.set(key, (this.#held.get(key) ?? 0) + tokens);
  }

  /** Keeps the lower of the known and the new limit, in memory and in the run's limits file. */
  async learn(run: string, model: string, enqueuedTokens: number, now: number): Promise<void> {
    const limits = { ...(await this.load(run)) };
    const known = limits[model]?.enqueuedTokens;
    if (known !== undefined && known <= enqueuedTokens) return;
    limits[model] = { enqueuedTokens, learnedAt: now };
    this.#limits.set(run, limits);
    await this.#deps.blobs.put(layout.batchLimits(run), JSON.stringify(limits, null, 2), "application/json");
  }

  /** None learned yet: no file. An unreadable file counts as none (the next refusal writes it again). */
  async #read(run: string): Promise<BatchLimits> {
    let text: string;
    try {
      text = new TextDecoder().decode(await this.#deps.blobs.get(layout.batchLimits(run)));
    } catch (error) {
      if (error instanceof BlobNotFoundError) return {};
      throw error;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = null;
    }
    const parsed = BatchLimits.safeParse(value);
    if (!parsed.success) this.#deps.logger.warn("unreadable batch limits file, ignored", { run });
    return parsed.success ? parsed.data : {};
  }
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
): Promise<{ messages: Message[]; paid: UsageTotals }> {
  const config = shard === null ? null : shardConfig(shard);
  const messages: Message[] = [];
  let paid = zeroUsage();
  /** Sends the item's message again; returns it, or null when it cannot be read (logged). */
  const resend = (item: BatchItem): Message | null => {
    const parsed = Message.safeParse(item.message);
    if (parsed.success) {
      messages.push(parsed.data);
      return parsed.data;
    }
    deps.logger.error("batch item has an unreadable message", { hash: item.hash });
    return null;
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
  // The job's items, read once (consistent: an item missed here would wait for an answer already taken).
  const members = new Map<string, BatchItem>();
  for (const item of await deps.state.listBatchItems(job.run, job.shard, "submitted", { job: job.id }))
    members.set(item.hash, item);
  /** The requests whose answer is now stored, or whose item failed: other work waiting for them goes too. */
  const settled = new Set(members.keys());
  for (const line of lines) {
    const hash = typeof line.custom_id === "string" ? line.custom_id : "";
    const item = members.get(hash);
    if (item === undefined) continue;
    members.delete(hash);
    const answer =
      line.response?.status_code === 200 ? readAnswer(batch.codec, line.response.body, item, config) : null;
    if (answer !== null && !("error" in answer)) {
      // The stored answer is what the stage looks for first: the item is left "submitted" (marking it answered
      // was a write per request, 6% of batch mode's AWS cost). A crash before the job is marked applied
      // applies it again: the answer is kept as first stored, and the message goes twice (a duplicate).
      // Paid for by the work that queued it (see StoredAnswer.paidBy). The messages go once the job is applied.
      const queuedBy = resend(item);
      await deps.state.putAnswer(
        hash,
        queuedBy === null ? answer : { ...answer, paidBy: workKeyOf(queuedBy) },
      );
      paid = addUsage(paid, answer);
      continue;
    }
    const reason =
      answer !== null && "error" in answer
        ? answer.error
        : (line.error?.message ?? `status ${line.response?.status_code ?? "none"}`);
    if (await deps.state.updateBatchItem(item, { status: "failed", error: reason.slice(0, 500) }))
      resend(item);
  }
  // Anything the provider did not mention (a whole batch failed or expired, a truncated file) failed too.
  for (const item of members.values()) {
    const reason = `no answer in batch ${info.id} (${info.status})`;
    if (await deps.state.updateBatchItem(item, { status: "failed", error: reason })) resend(item);
  }
  // Other work with the same requests (see waitFor), listed once every answer is stored and item failed: its
  // stage finds the answer stored (paid for by the work that queued it), or the item failed and queues it again.
  if (settled.size > 0)
    for (const waiting of await deps.state.listBatchItems(job.run, job.shard, "waiting"))
      if (
        settled.has(waitedHash(waiting.hash)) &&
        (await deps.state.updateBatchItem(waiting, { status: "answered" }))
      )
        resend(waiting);
  return { messages, paid };
}

/** An answered line as a stored answer at batch prices; an unusable answer is stored as a spent try. */
function readAnswer(
  codec: BatchCodec,
  body: unknown,
  item: BatchItem,
  config: ReturnType<typeof shardConfig> | null,
): StoredAnswer | { error: string } {
  const price = priceOf(item.model, config?.prices ?? {});
  try {
    return storedAnswer(codec.decode(body, item.model), price, "batch");
  } catch (error) {
    if (error instanceof LlmAnswerError) return unusableAnswer(error, item.model, price, "batch");
    return { error: error instanceof Error ? error.message : String(error) };
  }
}
