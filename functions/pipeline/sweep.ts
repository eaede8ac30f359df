// Stuck work: messages can be lost (a crash between a transition and its send, a message dead-lettered after
// its deliveries ran out). The state alone says what should happen next, so a sweep over it re-creates the
// missing messages. Re-sending is safe: every stage applies its work as a conditional transition on the
// expected (status, round, version), so a duplicate message finds the state already moved on and is
// acknowledged without doing (or paying for) the work again; finalize writes outputs that are a pure function
// of the state and is marked finalized once.
import type { EvolveMessage, JudgeMessage, Message } from "../ports/messages.ts";
import type { SampleRecord, ShardRecord } from "../ports/state-store.ts";
import type { StageDeps } from "./deps.ts";
import { pairKey, shardConfig } from "./shard-config.ts";

/** The one place that maps a sample's state to the message that moves it on; null for terminal samples. */
export function nextMessageOf(sample: SampleRecord): EvolveMessage | JudgeMessage | null {
  const base = { run: sample.run, shard: sample.shard, sample: sample.key };
  switch (sample.status) {
    case "INGESTED":
      return { kind: "evolve", ...base, round: 1 };
    case "EVOLVING":
      return { kind: "evolve", ...base, round: sample.round };
    case "JUDGING":
      return { kind: "judge", ...base, round: sample.round };
    default:
      return null;
  }
}

/** The message a shard needs next at the shard level (ingest or finalize), or null when its samples drive it. */
export function shardMessageOf(shard: ShardRecord): Message | null {
  if (shard.finalized) return null;
  // The stored ETag makes ingest find this very shard again instead of registering the key as new content.
  if (!shard.ingested) {
    return { kind: "ingest", run: shard.run, shard: shard.shard, key: shard.key, etag: shard.etag };
  }
  if (shard.pending <= 0) return { kind: "finalize", run: shard.run, shard: shard.shard };
  return null;
}

export interface SweepOptions {
  /** The current time, ms since the epoch. */
  readonly now: number;
  /** Work not updated for longer than this is taken as stuck. 0 takes every unfinished piece of work. */
  readonly stuckAfterMs: number;
  /** Only this run's shards. */
  readonly run?: string;
  /**
   * Bump each re-sent sample's `updatedAt` (an empty conditional transition), so the next sweep waits a whole
   * deadline again instead of re-sending every few minutes while the first copy waits in a long queue.
   * A sample that moved on in the meantime is skipped. Default true.
   */
  readonly claim?: boolean;
  /** Leave out a message (e.g. the local runner's: it still holds one for that work). */
  readonly skip?: (message: Message) => boolean;
  /**
   * Samples of a shard with a batch open are stuck only once they have not moved for this long (when it is
   * longer than `stuckAfterMs`). They wait for the provider's batch, which may take its whole 24-hour window,
   * with no change to their state: re-sent every `stuckAfterMs` meanwhile, each was a claim, a message and a
   * stage invocation for nothing. Default: no difference (the local runner's resume).
   */
  readonly batchWaitMs?: number;
}

export interface SweepCounts {
  /** Unfinished shards looked at. */
  shards: number;
  /** Samples looked at. */
  samples: number;
  /** Non-terminal samples updated within the deadline: left alone. */
  fresh: number;
  ingest: number;
  evolve: number;
  judge: number;
  finalize: number;
}

export interface SweepResult {
  readonly messages: Message[];
  readonly counts: SweepCounts;
}

/**
 * Messages for every piece of unfinished work that has not moved for `stuckAfterMs`: a shard whose ingest
 * stopped gets its ingest again (ingest resumes idempotently), a shard whose samples are all terminal but that
 * was never finalized gets a finalize (even if its last message died), and every stuck sample gets the
 * message of its state. The caller sends them.
 */
export async function sweepStuck(
  deps: Pick<StageDeps, "state">,
  options: SweepOptions,
): Promise<SweepResult> {
  const deadline = options.now - options.stuckAfterMs;
  const claim = options.claim ?? true;
  const skip = options.skip ?? (() => false);
  const counts: SweepCounts = {
    shards: 0,
    samples: 0,
    fresh: 0,
    ingest: 0,
    evolve: 0,
    judge: 0,
    finalize: 0,
  };
  const messages: Message[] = [];
  const add = (message: Message) => {
    messages.push(message);
    counts[message.kind] += 1;
  };
  const stale = (updatedAt: number) => options.stuckAfterMs <= 0 || updatedAt <= deadline;
  const batchDeadline = options.now - Math.max(options.stuckAfterMs, options.batchWaitMs ?? 0);
  const shards = await deps.state.listShards(options.run);
  // Shards waiting on a batch: one read of the open jobs' index, only when some shard is in batch mode and its
  // samples may wait longer.
  const waiting = new Set<string>();
  if (
    options.stuckAfterMs > 0 &&
    (options.batchWaitMs ?? 0) > options.stuckAfterMs &&
    shards.some((shard) => !shard.finalized && shardConfig(shard).mode === "batch")
  ) {
    for (const job of await deps.state.listOpenBatchJobs(options.run))
      waiting.add(pairKey(job.run, job.shard));
  }

  for (const shard of shards) {
    if (shard.finalized) continue;
    counts.shards += 1;
    const shardMessage = shardMessageOf(shard);
    if (shardMessage) {
      // Ingest and finalize touch the shard record as they go (pending counts, completion), so its updatedAt
      // tells a running ingest or a just-sent finalize from a dead one.
      if (stale(shard.updatedAt) && !skip(shardMessage)) add(shardMessage);
      continue;
    }
    const batchOpen = waiting.has(pairKey(shard.run, shard.shard));
    for await (const sample of deps.state.listSamples(shard.run, shard.shard)) {
      counts.samples += 1;
      const message = nextMessageOf(sample);
      if (message === null) continue;
      if (batchOpen ? sample.updatedAt > batchDeadline : !stale(sample.updatedAt)) {
        counts.fresh += 1;
        continue;
      }
      if (skip(message)) continue;
      if (claim) {
        const touched = await deps.state.transition(sample, {});
        if (!touched.applied) continue;
      }
      add(message);
    }
  }
  return { messages, counts };
}

/** Messages that pick up every unfinished piece of work from the state alone, whatever its age: resume uses it. */
export async function recoverMessages(deps: Pick<StageDeps, "state">, run?: string): Promise<Message[]> {
  const result = await sweepStuck(deps, {
    now: Number.POSITIVE_INFINITY,
    stuckAfterMs: 0,
    claim: false,
    ...(run === undefined ? {} : { run }),
  });
  return result.messages;
}

/** A key naming the work a message is for, equal for duplicates of the same message. */
export function workKeyOf(message: Message): string {
  switch (message.kind) {
    case "ingest":
    case "finalize":
      return JSON.stringify([message.kind, message.run, message.shard]);
    case "evolve":
    case "judge":
      return JSON.stringify([message.kind, message.run, message.shard, message.sample, message.round]);
  }
}
