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
import type { Message, Stage } from "../../functions/ports/messages.ts";
import { type SampleRecord, type StateStore, TERMINAL_STATUSES } from "../../functions/ports/state-store.ts";
import { DEAD_LETTERS_FILE, type DeadLetterRecord } from "../../functions/runtime/local.ts";
import { withRunLock } from "../../functions/runtime/run-lock.ts";
import { awsClientsFor, QUEUE_STAGES, readStackOutputs } from "./outputs.ts";
import { describeMessage, openLocalState, readDeadLetters } from "./status.ts";

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

export interface FailedRedrive {
  /** The samples started again, by shard. */
  readonly reopened: readonly {
    readonly run: string;
    readonly shard: string;
    readonly samples: SampleRecord[];
  }[];
  readonly lines: string[];
}

/** Starts the FAILED samples of every shard (of one run, when given) again, in the state. */
async function reopenAll(state: StateStore, run: string | undefined): Promise<FailedRedrive["reopened"]> {
  const reopened: { run: string; shard: string; samples: SampleRecord[] }[] = [];
  for (const shard of await state.listShards(run)) {
    const samples = await state.reopenFailed(shard.run, shard.shard);
    if (samples.length > 0) reopened.push({ run: shard.run, shard: shard.shard, samples });
  }
  return reopened;
}

/** What a `--failed` redrive did, shard by shard, with the lines of the samples (the first ten). */
function reopenedLines(reopened: FailedRedrive["reopened"], run: string | undefined): string[] {
  const total = reopened.reduce((n, r) => n + r.samples.length, 0);
  if (total === 0) return [`no FAILED samples${run === undefined ? "" : ` in run ${run}`}: nothing to retry`];
  return [
    `${total} FAILED sample(s) start again from their seed; answers already stored are read back, not paid again`,
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
 * shard's outputs again.
 */
export async function localRedriveFailed(options: {
  readonly out: string;
  readonly run?: string;
}): Promise<FailedRedrive> {
  // openLocalState names a missing state; with one, a run going on must not have its samples changed under it.
  openLocalState(options.out).close();
  return withRunLock(resolve(options.out), async () => {
    const state = openLocalState(options.out);
    try {
      const reopened = await reopenAll(state, options.run);
      const lines = reopenedLines(reopened, options.run);
      if (reopened.length > 0)
        lines.push(`run the same \`mmevol run ... --out ${options.out}\` command again: it evolves them`);
      return { reopened, lines };
    } finally {
      state.close();
    }
  });
}

/**
 * `mmevol redrive --failed --outputs FILE`: a deployed stack's FAILED samples start again from their seed
 * (their shard opens again), and their evolve messages go to the evolve queue; the last of them to finish
 * finalizes the shard again, which rewrites its evolved data, lineage and report with them. A message that
 * could not be sent is found again by the sweeper (the sample is INGESTED, not yet updated).
 */
export async function deployedRedriveFailed(options: {
  readonly outputs: string;
  readonly stack?: string;
  readonly endpoint?: string;
  readonly run?: string;
}): Promise<FailedRedrive> {
  const outputs = readStackOutputs(options.outputs, options.stack);
  const { sqs, state } = awsClientsFor(outputs, options.endpoint);
  const reopened = await reopenAll(state, options.run);
  const messages = reopened.flatMap((r) => r.samples.map(nextMessageOf).filter((m) => m !== null));
  await new SqsWorkQueue({ client: sqs, queueUrls: { evolve: outputs.queues.evolve.url } }).send(messages);
  const lines = reopenedLines(reopened, options.run);
  if (messages.length > 0) lines.push(`sent ${messages.length} evolve message(s) to the evolve queue`);
  return { reopened, lines };
}
