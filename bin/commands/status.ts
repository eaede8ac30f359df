import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { HeadObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import {
  GetQueueAttributesCommand,
  type QueueAttributeName,
  ReceiveMessageCommand,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import { httpStatus } from "../../functions/adapters/aws/s3-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { layout } from "../../functions/pipeline/shard-config.ts";
import { InvalidInputError } from "../../functions/ports/errors.ts";
import type { Stage } from "../../functions/ports/messages.ts";
import { DEAD_LETTERS_FILE, DeadLetterRecord } from "../../functions/runtime/local.ts";
import { activeRunPid } from "../../functions/runtime/run-lock.ts";
import { awsClientsFor, QUEUE_STAGES, readStackOutputs } from "./outputs.ts";
import { formatSummaries, type ShardSummary, summarizeShards, unknownRun } from "./summary.ts";

/** The local run's dead letters: what its last `mmevol run` could not deliver (empty when none or never run). */
export function readDeadLetters(out: string): DeadLetterRecord[] {
  const path = join(resolve(out), DEAD_LETTERS_FILE);
  if (!existsSync(path)) return [];
  return readFileSync(path, "utf8")
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => DeadLetterRecord.parse(JSON.parse(line)));
}

/** The state file of output directory `out`; an error naming the directory when there is none. */
export function localStatePath(out: string): string {
  const path = join(resolve(out), ".mmevol", "state.sqlite");
  if (!existsSync(path)) {
    throw new InvalidInputError(
      `no mmevol state in ${out} (expected ${path}): was \`mmevol run --out ${out}\` run?`,
    );
  }
  return path;
}

/** The local state database of an output directory (see localStatePath). */
export function openLocalState(out: string): SqliteStateStore {
  return new SqliteStateStore(localStatePath(out));
}

export const describeMessage = (m: DeadLetterRecord["message"]): string =>
  m.kind === "evolve" || m.kind === "judge"
    ? `${m.kind} ${m.run}/${m.shard}/${m.sample} round ${m.round}`
    : `${m.kind} ${m.run}/${m.shard}`;

/**
 * When some shard holds samples `--retry-failed` / `redrive --failed` would start again: the line that says how,
 * with `command`; else none.
 */
const retryHint = (shards: readonly ShardSummary[], command: string): string[] =>
  shards.some((shard) => (shard.counts?.FAILED ?? 0) + (shard.unusableImages ?? 0) > 0)
    ? [
        `FAILED samples (and those passed through for an unusable image) start again from their seed, once the cause is fixed, with \`${command}\``,
      ]
    : [];

export interface LocalStatusOptions {
  readonly out: string;
  readonly run?: string;
  readonly stuckAfterMs: number;
  readonly now?: number;
}

export interface LocalStatus {
  readonly shards: ShardSummary[];
  readonly deadLetters: DeadLetterRecord[];
  readonly lines: string[];
}

/** `mmevol status --out DIR`: the local state, and the dead letters of the last run. */
export async function localStatus(options: LocalStatusOptions): Promise<LocalStatus> {
  const state = openLocalState(options.out);
  try {
    const shards = await summarizeShards(state, {
      now: options.now ?? Date.now(),
      stuckAfterMs: options.stuckAfterMs,
      scanFinalized: true,
      ...(options.run === undefined ? {} : { run: options.run }),
    });
    if (options.run !== undefined && shards.length === 0) throw unknownRun(options.run);
    const deadLetters = readDeadLetters(options.out);
    const pid = activeRunPid(options.out);
    const lines = [
      pid === null
        ? shards.every((s) => s.finalized)
          ? "no run is going on in this directory"
          : "no run is going on in this directory: `mmevol run` with the same shards and --out continues the unfinished shards"
        : `a run is going on in this directory (pid ${pid})`,
      ...formatSummaries(shards),
    ];
    lines.push(`dead letters of the last run: ${deadLetters.length}`);
    for (const d of deadLetters) {
      lines.push(
        `  ${describeMessage(d.message)}: ${d.deliveries} deliveries, last error: ${d.error ?? "(none recorded)"}`,
      );
    }
    if (deadLetters.length > 0) lines.push("  `mmevol redrive --out DIR` queues them for the next run");
    lines.push(...retryHint(shards, "mmevol run ... --retry-failed"));
    return { shards, deadLetters, lines };
  } finally {
    state.close();
  }
}

export interface QueueStatus {
  readonly stage: Stage;
  readonly visible: number;
  readonly inFlight: number;
  readonly delayed: number;
  readonly deadLetters: number;
  /** A few dead messages, peeked (see the caveat in the output). */
  readonly peeked: readonly { readonly body: string; readonly receiveCount: number }[];
}

export interface DeployedStatusOptions {
  /** A `cdk deploy --outputs-file` file or the emulator's `<cdk.out>/emulated-outputs.json`. */
  readonly outputs: string;
  readonly stack?: string;
  readonly endpoint?: string;
  readonly run?: string;
  readonly stuckAfterMs: number;
  /** Dead messages to show per DLQ (0: none, and no receive at all). */
  readonly peek: number;
  readonly now?: number;
}

export interface DeployedStatus {
  readonly queues: QueueStatus[];
  readonly shards: ShardSummary[];
  readonly lines: string[];
}

async function depth(sqs: SQSClient, url: string) {
  const out = await sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: url,
      AttributeNames: [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
      ],
    }),
  );
  const n = (name: QueueAttributeName) => Number(out.Attributes?.[name] ?? 0) || 0;
  return {
    visible: n("ApproximateNumberOfMessages"),
    inFlight: n("ApproximateNumberOfMessagesNotVisible"),
    delayed: n("ApproximateNumberOfMessagesDelayed"),
  };
}

/** `mmevol status --outputs FILE`: each queue's depth, each DLQ's depth and a peek at it, and the shards. */
export async function deployedStatus(options: DeployedStatusOptions): Promise<DeployedStatus> {
  const outputs = readStackOutputs(options.outputs, options.stack);
  const { sqs, state, s3 } = awsClientsFor(outputs, options.endpoint);
  const queues: QueueStatus[] = [];
  for (const stage of QUEUE_STAGES) {
    const urls = outputs.queues[stage];
    const main = await depth(sqs, urls.url);
    const dead = await depth(sqs, urls.deadLetterUrl);
    const peeked: { body: string; receiveCount: number }[] = [];
    if (options.peek > 0 && dead.visible > 0) {
      // VisibilityTimeout 0 leaves the messages visible; the receive still counts as a delivery.
      const got = await sqs.send(
        new ReceiveMessageCommand({
          QueueUrl: urls.deadLetterUrl,
          MaxNumberOfMessages: Math.min(10, options.peek),
          VisibilityTimeout: 0,
          WaitTimeSeconds: 0,
          MessageSystemAttributeNames: ["ApproximateReceiveCount"],
        }),
      );
      for (const m of got.Messages ?? []) {
        peeked.push({
          body: m.Body ?? "",
          receiveCount: Number(m.Attributes?.ApproximateReceiveCount ?? 0) || 0,
        });
      }
    }
    queues.push({ stage, ...main, deadLetters: dead.visible + dead.inFlight + dead.delayed, peeked });
  }
  const shards = await summarizeShards(state, {
    now: options.now ?? Date.now(),
    stuckAfterMs: options.stuckAfterMs,
    scanFinalized: false,
    ...(options.run === undefined ? {} : { run: options.run }),
  });
  if (options.run !== undefined && shards.length === 0) throw unknownRun(options.run);

  const lines = [`stack ${outputs.stackName ?? "(from outputs file)"}: table ${outputs.table}`];
  lines.push("queues (approximate counts):");
  for (const q of queues) {
    lines.push(
      `  ${q.stage.padEnd(8)} visible ${q.visible}, in flight ${q.inFlight}, delayed ${q.delayed}; dead letters ${q.deadLetters}`,
    );
    for (const p of q.peeked) {
      const body = p.body.length > 200 ? `${p.body.slice(0, 200)}...` : p.body;
      lines.push(`    dead: ${body}`);
    }
  }
  if (queues.some((q) => q.peeked.length > 0)) {
    lines.push(
      "  (peeking receives the dead messages with visibility 0: it raises their receive counts; DLQs have no redrive,",
      "   so nothing moves, but ApproximateReceiveCount no longer tells how often the pipeline tried them)",
    );
  }
  if (queues.some((q) => q.deadLetters > 0)) {
    lines.push("  `mmevol redrive --outputs FILE` moves dead letters back to their queues");
  }
  lines.push(...formatSummaries(shards));
  if (outputs.bucket !== null) lines.push(...(await lateRunConfigs(s3, outputs.bucket, shards)));
  lines.push(...retryHint(shards, "mmevol redrive --failed --outputs FILE"));
  return { queues, shards, lines };
}

/**
 * A run's shards keep the settings in force when they arrived (ingest reads run.json once), so a run.json
 * uploaded after a shard, as `aws s3 cp --recursive` may do, or changed since, is not what that shard runs
 * with: say so. S3 keeps LastModified to the second, earlier than the upload, so a shard created before it
 * certainly came first.
 */
async function lateRunConfigs(
  s3: S3Client,
  bucket: string,
  shards: readonly ShardSummary[],
): Promise<string[]> {
  const lines: string[] = [];
  for (const run of new Set(shards.map((shard) => shard.run))) {
    let modified: Date | undefined;
    try {
      modified = (await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: layout.runJson(run) })))
        .LastModified;
    } catch (error) {
      if (httpStatus(error) === 404) continue;
      lines.push(
        `run ${run}: could not check its run.json (${error instanceof Error ? error.message : error})`,
      );
      continue;
    }
    if (modified === undefined) continue;
    const changed = modified.getTime();
    const earlier = shards.filter((shard) => shard.run === run && shard.createdAt < changed);
    if (earlier.length === 0) continue;
    const names = earlier.map((shard) => shard.shard);
    const named =
      names.length > 3 ? `${names.slice(0, 3).join(", ")} and ${names.length - 3} more` : names.join(", ");
    lines.push(
      `run ${run}: run.json changed at ${modified.toISOString()}, after ${earlier.length} of its shards arrived (${named}): they run with the settings in force when they arrived; upload run.json first, then the shard under a new name, to use the new ones`,
    );
  }
  return lines;
}
