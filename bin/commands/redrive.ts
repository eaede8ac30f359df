import { existsSync, renameSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  DeleteMessageBatchCommand,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import { SqsWorkQueue } from "../../functions/adapters/aws/sqs-work-queue.ts";
import { nextMessageOf } from "../../functions/pipeline/sweep.ts";
import type { Message, Stage, WorkQueue } from "../../functions/ports/messages.ts";
import { type SampleRecord, type StateStore, TERMINAL_STATUSES } from "../../functions/ports/state-store.ts";
import { DEAD_LETTERS_FILE, type DeadLetterRecord } from "../../functions/runtime/local.ts";
import { withRunLock } from "../../functions/runtime/run-lock.ts";
import { awsClientsFor, QUEUE_STAGES, readStackOutputs } from "./outputs.ts";
import { describeMessage, localStatePath, openLocalState, readDeadLetters } from "./status.ts";
import { unknownRun } from "./summary.ts";

export interface LocalRedrive {
  /** Dead letters whose work is still unfinished: the next `mmevol run` picks them up. */
  readonly requeued: DeadLetterRecord[];
  /** Dead letters whose work finished since (nothing to do). */
  readonly resolved: DeadLetterRecord[];
  /** Where the redriven list was moved, or null when there was none. */
  readonly archived: string | null;
  readonly lines: string[];
}

/** Whether the state still needs the work a message was for. */
async function stillOpen(state: StateStore, message: Message): Promise<boolean> {
  if (message.kind === "evolve" || message.kind === "judge") {
    const sample = await state.getSample(message.run, message.shard, message.sample);
    return sample !== null && !TERMINAL_STATUSES.has(sample.status);
  }
  const shard = await state.getShard(message.run, message.shard);
  return shard === null || !shard.finalized;
}

/**
 * `mmevol redrive --out DIR`. A local run keeps no queue after it exits: its queue is the state, and every run
 * starts by re-queuing all unfinished work from it. So redriving checks each dead letter against the state,
 * moves the list aside (`dead-letters.<time>.redriven.jsonl`, kept for the record), and the next `mmevol run`
 * with the same arguments retries what is still open, with a fresh delivery count.
 */
export async function localRedrive(options: {
  readonly out: string;
  readonly now?: number;
}): Promise<LocalRedrive> {
  // A run going on rewrites the dead-letter list when it ends: redrive between runs only. Without a state
  // there is nothing to lock, and openLocalState says so.
  const out = resolve(options.out);
  return existsSync(join(out, ".mmevol"))
    ? withRunLock(out, () => redriveLocked(options))
    : redriveLocked(options);
}

async function redriveLocked(options: {
  readonly out: string;
  readonly now?: number;
}): Promise<LocalRedrive> {
  const deadLetters = readDeadLetters(options.out);
  const state = openLocalState(options.out);
  const requeued: DeadLetterRecord[] = [];
  const resolved: DeadLetterRecord[] = [];
  try {
    for (const d of deadLetters) ((await stillOpen(state, d.message)) ? requeued : resolved).push(d);
  } finally {
    state.close();
  }
  let archived: string | null = null;
  if (deadLetters.length > 0) {
    const stamp = new Date(options.now ?? Date.now()).toISOString().replace(/[:.]/g, "-");
    archived = join(resolve(options.out), ".mmevol", `dead-letters.${stamp}.redriven.jsonl`);
    renameSync(join(resolve(options.out), DEAD_LETTERS_FILE), archived);
  }
  const lines = [
    `${deadLetters.length} dead letter(s): ${requeued.length} still unfinished, ${resolved.length} finished since`,
    ...requeued.map((d) => `  retry: ${describeMessage(d.message)}`),
  ];
  if (requeued.length > 0) {
    lines.push(`run the same \`mmevol run ... --out ${options.out}\` command again: it picks them up`);
  }
  return { requeued, resolved, archived, lines };
}

export interface DeployedRedriveOptions {
  readonly outputs: string;
  readonly stack?: string;
  readonly endpoint?: string;
  /** Which stage's DLQ, or all of them. */
  readonly queue: Stage | "all";
  /** Stop after this many messages per queue. */
  readonly max?: number;
}

export interface DeployedRedrive {
  readonly moved: Readonly<Partial<Record<Stage, number>>>;
  readonly lines: string[];
}

/** How long a message being moved stays hidden in the DLQ; a failed send leaves it there to reappear. */
const MOVE_VISIBILITY_SECONDS = 60;

async function move(sqs: SQSClient, from: string, to: string, max: number): Promise<number> {
  let moved = 0;
  while (moved < max) {
    const got = await sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: from,
        MaxNumberOfMessages: Math.min(10, max - moved),
        VisibilityTimeout: MOVE_VISIBILITY_SECONDS,
        WaitTimeSeconds: 0,
        MessageAttributeNames: ["All"],
      }),
    );
    const messages = got.Messages ?? [];
    if (messages.length === 0) return moved;
    const sent = await sqs.send(
      new SendMessageBatchCommand({
        QueueUrl: to,
        Entries: messages.map((m, i) => ({
          Id: String(i),
          MessageBody: m.Body ?? "",
          ...(m.MessageAttributes ? { MessageAttributes: m.MessageAttributes } : {}),
        })),
      }),
    );
    // Delete only what arrived in the source queue: a message is never in neither queue.
    const ok = (sent.Successful ?? []).map((s) => messages[Number(s.Id)]).filter((m) => m !== undefined);
    if (ok.length > 0) {
      await sqs.send(
        new DeleteMessageBatchCommand({
          QueueUrl: from,
          Entries: ok.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle ?? "" })),
        }),
      );
    }
    moved += ok.length;
    if (ok.length < messages.length) return moved;
  }
  return moved;
}

/**
 * `mmevol redrive --outputs FILE`: moves dead letters back to their stage's queue (receive, send, delete, in
 * batches of 10; SQS's StartMessageMoveTask would do the same but emulators lack it). A moved message starts
 * with a fresh receive count.
 */
export async function deployedRedrive(options: DeployedRedriveOptions): Promise<DeployedRedrive> {
  const outputs = readStackOutputs(options.outputs, options.stack);
  const { sqs } = awsClientsFor(outputs, options.endpoint);
  const stages = options.queue === "all" ? QUEUE_STAGES : [options.queue];
  const moved: Partial<Record<Stage, number>> = {};
  const lines: string[] = [];
  for (const stage of stages) {
    const urls = outputs.queues[stage];
    const n = await move(sqs, urls.deadLetterUrl, urls.url, options.max ?? Number.POSITIVE_INFINITY);
    moved[stage] = n;
    lines.push(`${stage}: moved ${n} message(s) from the dead-letter queue back to the ${stage} queue`);
  }
  return { moved, lines };
}

/** The samples a `--failed` redrive started again, in one shard. */
interface ReopenedShard {
  readonly run: string;
  readonly shard: string;
  readonly samples: SampleRecord[];
}

export interface FailedRedrive {
  /** The samples started again, by shard. */
  readonly reopened: readonly ReopenedShard[];
  readonly lines: string[];
}

/** What a `--failed` redrive did, shard by shard, with the lines of the samples (the first ten). */
function reopenedLines(reopened: readonly ReopenedShard[], run: string | undefined): string[] {
  const total = reopened.reduce((n, r) => n + r.samples.length, 0);
  if (total === 0)
    return [
      `no FAILED samples, and none passed through for an unusable image${run === undefined ? "" : `, in run ${run}`}: nothing to retry`,
    ];
  return [
    `${total} sample(s) start again from their seed (FAILED, or passed through for an unusable image); answers already stored are read back, not paid again`,
    ...reopened.map(({ run, shard, samples }) => {
      const lines = samples.map((s) => s.line).sort((a, b) => a - b);
      const shown =
        lines.slice(0, 10).join(", ") + (lines.length > 10 ? `, ... (${lines.length - 10} more)` : "");
      return `  ${run}/${shard}: ${samples.length} sample(s), line(s) ${shown}`;
    }),
  ];
}

/**
 * `mmevol redrive --failed --out DIR`: the local run's FAILED samples start again from their seed, as
 * `mmevol run --retry-failed` does; the next `mmevol run` on the same output evolves them and writes the
 * shard's outputs again (a local run's queue is its state: no message is sent).
 */
export async function localRedriveFailed(options: {
  readonly out: string;
  readonly run?: string;
}): Promise<FailedRedrive> {
  // Named when missing, before the lock; with one, a run going on must not have its samples changed under it.
  localStatePath(options.out);
  return withRunLock(resolve(options.out), async () => {
    const state = openLocalState(options.out);
    try {
      const redriven = await redriveFailed(state, null, options.run);
      if (redriven.reopened.length > 0)
        redriven.lines.push(
          `run the same \`mmevol run ... --out ${options.out}\` command again: it evolves them`,
        );
      return redriven;
    } finally {
      state.close();
    }
  });
}

/**
 * `mmevol redrive --failed --outputs FILE`: a deployed stack's FAILED samples start again from their seed
 * (their shard opens again), and their evolve messages go to the evolve queue; the last of them to finish
 * finalizes the shard again, which rewrites its evolved data, lineage and report with them.
 */
export async function deployedRedriveFailed(options: {
  readonly outputs: string;
  readonly stack?: string;
  readonly endpoint?: string;
  readonly run?: string;
}): Promise<FailedRedrive> {
  const outputs = readStackOutputs(options.outputs, options.stack);
  const { sqs, state } = awsClientsFor(outputs, options.endpoint);
  const queue = new SqsWorkQueue({ client: sqs, queueUrls: { evolve: outputs.queues.evolve.url } });
  return redriveFailed(state, queue, options.run);
}

/**
 * Reopens the FAILED samples (of one run, when given) shard by shard. With a queue (a deployed stack), each
 * shard's evolve messages are sent at once, and a sample an earlier redrive reopened that has not started yet
 * (INGESTED at its seed, retried) gets its message again: that redrive's send may have failed after the state
 * was changed, and a duplicate is only acknowledged. A run named that has no shards is a misspelt name.
 */
export async function redriveFailed(
  state: StateStore,
  queue: WorkQueue | null,
  run: string | undefined,
): Promise<FailedRedrive> {
  const shards = await state.listShards(run);
  if (run !== undefined && shards.length === 0) throw unknownRun(run);
  const reopened: ReopenedShard[] = [];
  let sent = 0;
  let resent = 0;
  for (const shard of shards) {
    const samples = await state.reopenFailed(shard.run, shard.shard);
    if (samples.length > 0) reopened.push({ run: shard.run, shard: shard.shard, samples });
    if (queue === null) continue;
    const unstarted: SampleRecord[] = [];
    if (!shard.finalized) {
      const now = new Set(samples.map((s) => s.key));
      for await (const sample of state.listSamples(shard.run, shard.shard)) {
        if (
          sample.status === "INGESTED" &&
          sample.round === 0 &&
          (sample.retries ?? 0) > 0 &&
          !now.has(sample.key)
        )
          unstarted.push(sample);
      }
    }
    const messages = [...samples, ...unstarted].map(nextMessageOf).filter((m) => m !== null);
    try {
      await queue.send(messages);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      // Not an MmevolError: a queue that cannot be reached exits 1, as any AWS error here.
      throw new Error(
        `the samples of ${shard.run}/${shard.shard} start again from their seed, but their evolve messages ` +
          `could not be sent (${reason}): run the same command again once the queue can be reached; it sends them`,
        { cause: error },
      );
    }
    sent += samples.length;
    resent += unstarted.length;
  }
  const lines = reopenedLines(reopened, run);
  if (sent > 0) lines.push(`sent ${sent} evolve message(s) to the evolve queue`);
  if (resent > 0)
    lines.push(
      `sent ${resent} evolve message(s) again, for samples started again earlier that have not begun`,
    );
  return { reopened, lines };
}
