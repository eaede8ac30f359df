import { createHash } from "node:crypto";
import { createReadStream, mkdirSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, extname, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { GovernedPerModel } from "../adapters/governor/governed-llm.ts";
import { RateGovernor } from "../adapters/governor/rate-governor.ts";
import { SharpImagePreparer } from "../adapters/images/sharp-image-preparer.ts";
import { FsBlobStore } from "../adapters/local/fs-blob-store.ts";
import { MemoryQueues, type Received } from "../adapters/local/memory-queue.ts";
import { type Mount, MountedBlobStore } from "../adapters/local/mounted-blob-store.ts";
import { SqliteStateStore } from "../adapters/local/sqlite-state-store.ts";
import { judgeModelOf, RunConfig, type RunConfigInput } from "../evolution/config.ts";
import type { ShardReport } from "../evolution/report.ts";
import { BatchBodyWriter } from "../pipeline/batch-bodies.ts";
import { CompletionSizer } from "../pipeline/completion-sizer.ts";
import {
  BatchTickError,
  type BatchTickResult,
  batchTick,
  layout,
  recoverMessages,
  runStage,
  type StageDeps,
  shardSettings,
  sweepStuck,
  workKeyOf,
} from "../pipeline/index.ts";
import type { BatchPorts } from "../ports/batch-api.ts";
import { AccountRefusedError, InvalidInputError } from "../ports/errors.ts";
import { type Faults, noFaults } from "../ports/faults.ts";
import type { Llm } from "../ports/llm.ts";
import { Message, type Stage, type WorkQueue } from "../ports/messages.ts";
import { type Clock, type Logger, silentLogger, systemClock } from "../ports/runtime.ts";
import {
  addUsageTotals,
  emptyStatusCounts,
  type SampleStatus,
  type ShardRecord,
  TERMINAL_STATUSES,
  type UsageTotals,
  zeroUsage,
} from "../ports/state-store.ts";
import { CallPacing } from "./call-pacing.ts";
import { CountingLlm, type LlmTotals } from "./counting-llm.ts";
import { FaultyQueue, faultsFromEnv } from "./faults.ts";
import { withRunLock } from "./run-lock.ts";

export interface LocalRunOptions {
  /** Shard files (JSON Lines or one JSON array). */
  readonly shards: readonly string[];
  /** Output directory: evolved/, reports/, errors/ and the resumable state in .mmevol/. */
  readonly out: string;
  readonly run: string;
  /** Directory that image paths resolve under; the first shard's directory by default. */
  readonly images?: string;
  /**
   * Calls in flight at most: a number, or "auto" to size it from each model's rate limit and how long its
   * calls take (CallPacing: 8 until both are known, at most 128).
   */
  readonly concurrency: number | "auto";
  readonly config: RunConfigInput;
  readonly llm: Llm;
  readonly logger?: Logger;
  readonly clock?: Clock;
  readonly onProgress?: (progress: Progress) => void;
  /** How often progress is reported, in ms. */
  readonly progressEveryMs?: number;
  /**
   * FAILED samples of shards this output already holds start again from their seed (stored answers make the
   * rounds before the failure free): after the cause of a failure is fixed (a timeout too short, a server down).
   */
  readonly retryFailed?: boolean;
  /** Aborting stops taking new work; work in flight finishes, and the next run continues. */
  readonly signal?: AbortSignal;
  /** Test-only fault injection; by default read from MMEVOL_TEST_FAULTS, else none. */
  readonly faults?: Faults;
  /** How often the sweep looks for stuck work while running, in ms (default 60 000). */
  readonly sweepEveryMs?: number;
  /** Unfinished work not updated for this long, with no message in the queues, is re-enqueued (default 10 min). */
  readonly stuckAfterMs?: number;
  /**
   * The provider's Batch API, for shards in batch mode (`mode: "batch"`): each round is collected into
   * batches, polled with backoff (the jobs are in the state, so a rerun picks them up), and applied.
   */
  readonly batch?: BatchPorts;
  /** Batch mode: first poll delay, doubled per poll up to `batchMaxPollMs` (defaults 1 s and 60 s). */
  readonly batchMinPollMs?: number;
  readonly batchMaxPollMs?: number;
  /** The provider's per-minute limits for this model: every call then waits its turn in one rate governor. */
  readonly rateLimit?: { readonly tokensPerMinute?: number; readonly requestsPerMinute?: number };
}

/** Where a run leaves the messages that exhausted their deliveries (JSON Lines of DeadLetterRecord). */
export const DEAD_LETTERS_FILE = ".mmevol/dead-letters.jsonl";
export const DeadLetterRecord = z.object({
  message: Message,
  deliveries: z.number().int().nonnegative(),
  error: z.string().nullable(),
  at: z.string(),
});
export type DeadLetterRecord = z.infer<typeof DeadLetterRecord>;

export interface Progress {
  readonly total: number;
  readonly counts: Record<SampleStatus, number>;
  readonly round: number;
  readonly llm: LlmTotals;
  readonly elapsedMs: number;
}

export interface LocalRunResult {
  readonly interrupted: boolean;
  /**
   * Why the run stopped before its work was done, when the provider made it stop (the account is out of
   * quota); null otherwise. `interrupted` is then true too: the same command resumes the run.
   */
  readonly stoppedFor: string | null;
  /** What to do about `stoppedFor` before running the same command again. */
  readonly stoppedRemedy: string | null;
  readonly reports: ShardReport[];
  /**
   * Per finished shard with entries in its errors file: how many samples FAILED, lines were rejected and
   * images were unusable (the sample passed through unevolved), each with the first one's line and reason.
   */
  readonly problems: ShardProblems[];
  /**
   * Shards the run ended without finishing (no report written), with their samples not yet terminal: work left
   * for the next run of the same command (dead letters, or work dropped again after the idle sweeps). Empty
   * when every shard finished; not filled when the run was interrupted.
   */
  readonly unfinished: { readonly shard: string; readonly openSamples: number }[];
  readonly deadLetters: number;
  readonly llm: LlmTotals;
  readonly elapsedMs: number;
  readonly outputs: string[];
}

/** How many entries of one kind a shard's errors file holds, and the first (in line order). */
export interface ErrorTally {
  count: number;
  first: { readonly line: number; readonly reason: string } | null;
}

export interface ShardProblems {
  readonly shard: string;
  readonly errorsFile: string;
  readonly failed: ErrorTally;
  readonly rejected: ErrorTally;
  /** Samples passed through unevolved because their image could not be used (missing, unreadable, too big). */
  readonly unusableImage: ErrorTally;
}

/** A shard file's identity: the SHA-256 of its bytes, read as a stream (a shard may be gigabytes). */
async function contentDigest(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return `sha256-${hash.digest("hex")}`;
}

/**
 * Refuses to resume a shard from another file (changed since, or another file of the same name) or with other
 * settings (rounds, model, a dry run against a real one…): the output directory holds what the first run made.
 */
async function assertSameShard(
  deps: StageDeps,
  stored: ShardRecord,
  path: string,
  digest: string,
  out: string,
): Promise<void> {
  const again = `use a new --out (or --run NAME) for a new run, or the same file and settings to continue this one`;
  // States written before the digest was kept hold the file's size instead ("size-<bytes>").
  const sameFile = stored.etag.startsWith("size-")
    ? stored.etag === `size-${statSync(path).size}`
    : stored.etag === digest;
  if (!sameFile)
    throw new InvalidInputError(
      `${out} already holds run "${stored.run}" of shard ${stored.shard} made from another file (${path} changed since, or is not the file it was made from): ${again}`,
    );
  // Compared as the pipeline reads them (shardConfig): a setting added since the state was made has its default
  // there, and the judge model left unset is the model. Only the settings this run gives are compared: one left
  // to its default is the stored one, which the shard keeps using (a default that changed between versions,
  // as maxLineBytes did, must not refuse the same command on an older --out).
  const normal = (config: Record<string, unknown>): Record<string, unknown> => {
    const parsed = RunConfig.safeParse(config);
    return parsed.success ? { ...parsed.data, judgeModel: judgeModelOf(parsed.data) } : config;
  };
  const before = normal(stored.config);
  const settings = await shardSettings(deps, stored.run, stored.key);
  const now = normal(settings.config);
  const given = settings.given;
  if (given.has("model")) given.add("judgeModel");
  const changed = [...new Set([...Object.keys(before), ...Object.keys(now)])]
    .filter((key) => given.has(key) && JSON.stringify(before[key]) !== JSON.stringify(now[key]))
    .map(
      (key) => `${key} ${JSON.stringify(before[key]) ?? "unset"} -> ${JSON.stringify(now[key]) ?? "unset"}`,
    );
  if (changed.length > 0)
    throw new InvalidInputError(
      `${out} already holds run "${stored.run}" of shard ${stored.shard} made with other settings (${changed.join(", ")}): ${again}`,
    );
}

const ErrorEntry = z.object({
  kind: z.string(),
  line: z.number().catch(0),
  reason: z.string().nullish().catch(null),
});

/** Tallies a finalized shard's errors file (JSON Lines, in line order), or null when it is empty. */
function problemsOf(shard: string, errorsFile: string, errors: string): ShardProblems | null {
  const tally = (): ErrorTally => ({ count: 0, first: null });
  const problems = { shard, errorsFile, failed: tally(), rejected: tally(), unusableImage: tally() };
  const tallies: Record<string, ErrorTally> = {
    failed: problems.failed,
    rejected: problems.rejected,
    refused: problems.rejected,
    passed_through: problems.unusableImage,
  };
  for (const text of errors.split("\n")) {
    if (!text.trim()) continue;
    const entry = ErrorEntry.safeParse(JSON.parse(text));
    const counted = entry.success ? tallies[entry.data.kind] : undefined;
    if (!entry.success || counted === undefined) continue;
    counted.count += 1;
    counted.first ??= { line: entry.data.line, reason: entry.data.reason ?? "no reason recorded" };
  }
  const any = problems.failed.count + problems.rejected.count + problems.unusableImage.count > 0;
  return any ? problems : null;
}

/** Later stages first, so samples finish instead of piling up half done. */
const PRIORITY: readonly Stage[] = ["finalize", "judge", "evolve", "ingest"];

export function shardNameOf(path: string): string {
  return basename(path, extname(path)).replace(/[^A-Za-z0-9._-]/g, "_");
}

/**
 * Why these shards cannot run together, or null: two with the same name (their file names less the extension,
 * as in `a/train.jsonl` and `b/train.jsonl`) would share one state and one output, and the second be lost.
 */
export function duplicateShardNames(paths: readonly string[]): string | null {
  const seen = new Map<string, string>();
  for (const path of paths) {
    const name = shardNameOf(path);
    const first = seen.get(name);
    if (first !== undefined)
      return `two shards have the name "${name}": ${first} and ${path} (a shard is named by its file name; rename one, or run them separately)`;
    seen.set(name, path);
  }
  return null;
}

/** The characters a new run's name may hold (it names a folder in every output path). */
export const RUN_NAME = /^(?!\.\.?$)[A-Za-z0-9._-]+$/;

export const runNameRefusal = (run: string): string =>
  `run name ${JSON.stringify(run)} is not usable: letters, digits, '.', '_' and '-' only, and not '.' or '..' (--run)`;

/** Runs the whole pipeline in this process on a directory, SQLite and in-process queues. Resumable. */
export async function runLocal(options: LocalRunOptions): Promise<LocalRunResult> {
  const started = performance.now();
  const duplicate = duplicateShardNames(options.shards);
  if (duplicate !== null) throw new InvalidInputError(duplicate);
  // It names a folder in every output path (evolved/<run>/…): one segment, no more. (A new run's name is held
  // to fewer characters once the state is open: one this --out already holds, from before, is continued.)
  if (!/^[^/\\\0]+$/.test(options.run) || /^\.\.?$/.test(options.run))
    throw new InvalidInputError(runNameRefusal(options.run));
  const out = resolve(options.out);
  mkdirSync(join(out, ".mmevol"), { recursive: true });
  // Before the state is opened: a second run on the same directory would drop this one's claims and pay again.
  return withRunLock(out, () => runLocked(options, out, started));
}

async function runLocked(options: LocalRunOptions, out: string, started: number): Promise<LocalRunResult> {
  const logger = options.logger ?? silentLogger;
  const clock = options.clock ?? systemClock;
  const imagesDir = resolve(options.images ?? dirname(resolve(options.shards[0] ?? ".")));
  const shardFiles = options.shards.map((path) => ({
    path: resolve(path),
    name: shardNameOf(path),
    ext: extname(path),
  }));

  const mounts: Mount[] = shardFiles.map((file) => ({
    prefix: `seeds/${options.run}/${file.name}${file.ext}`,
    store: new FsBlobStore(dirname(file.path)),
    target: basename(file.path),
  }));
  mounts.push({ prefix: "images/", store: new FsBlobStore(imagesDir), target: "" });
  const blobs = new MountedBlobStore(new FsBlobStore(out), mounts);
  const state = new SqliteStateStore(join(out, ".mmevol", "state.sqlite"));
  // This process is the only one on this state (the lock): claims left by a killed run hold nothing any more.
  state.releaseAllClaims();
  // Inside the governor, so the time a call waits for budget is not taken for its latency.
  const pacing = new CallPacing(options.llm);
  const governors = new Map<string, RateGovernor>();
  const llm = new CountingLlm(governed(pacing, options.rateLimit, governors), options.config.prices ?? {});
  const concurrency = (): number =>
    options.concurrency === "auto"
      ? pacing.concurrency((model) => governors.get(model)?.knownLimits() ?? null)
      : Math.max(1, options.concurrency);
  const config = { ...options.config, imageRoot: "images" };
  const queues = new MemoryQueues({
    visibilityTimeoutMs: 15 * 60_000,
    maxReceiveCount: (config.maxAttempts ?? 5) + 1,
    clock,
  });
  const faults = options.faults ?? faultsFromEnv();
  // The work each queued message is for (sent and not acked; dead letters stay counted, so poison is not
  // re-sent in the same run): the periodic sweep leaves such work alone.
  const outstanding = new Map<string, number>();
  const tracked: WorkQueue = {
    send: (messages) => {
      for (const m of messages) outstanding.set(workKeyOf(m), (outstanding.get(workKeyOf(m)) ?? 0) + 1);
      return queues.send(messages);
    },
  };
  const lastError = new Map<string, string>();
  const queue: WorkQueue = faults === noFaults ? tracked : new FaultyQueue(tracked, faults);
  const deps: StageDeps & { queue: WorkQueue } = {
    blobs,
    state,
    llm,
    images: new SharpImagePreparer({ blobs, cachePrefix: layout.imageCache(options.run) }),
    clock,
    logger,
    defaults: config,
    queue,
    faults,
    sizer: new CompletionSizer(),
    ...(options.batch ? { batch: { ...options.batch, bodies: new BatchBodyWriter(blobs) } } : {}),
  };

  // Cleared however the run ends: a ticker left running after a failure would query the closed state.
  const timers: ReturnType<typeof setInterval>[] = [];
  try {
    // Resume: everything unfinished is found again from the state alone; new shards start with ingest. A
    // shard this output already holds resumes only from the same file with the same settings: its state was
    // made from them, and another file or other settings would be ignored without a word.
    const known = new Map((await state.listShards(options.run)).map((s) => [s.shard, s]));
    if (known.size === 0 && !RUN_NAME.test(options.run))
      throw new InvalidInputError(runNameRefusal(options.run));
    const digests = new Map<string, string>();
    for (const file of shardFiles) {
      const digest = await contentDigest(file.path);
      digests.set(file.name, digest);
      const stored = known.get(file.name);
      if (stored === undefined) continue;
      await assertSameShard(deps, stored, file.path, digest, out);
      if (options.retryFailed) {
        const reopened = await state.reopenFailed(options.run, file.name);
        if (reopened.length > 0)
          logger.warn("samples start again (FAILED, or passed through for an unusable image)", {
            shard: file.name,
            samples: reopened.length,
          });
      }
    }
    const initial: Message[] = await recoverMessages(deps, options.run);
    for (const file of shardFiles) {
      if (!known.has(file.name)) {
        initial.push({
          kind: "ingest",
          run: options.run,
          shard: file.name,
          key: `seeds/${options.run}/${file.name}${file.ext}`,
          ...(digests.has(file.name) ? { etag: digests.get(file.name) } : {}),
        });
      }
    }
    await tracked.send(initial);

    let busy = 0;
    let stop = false;
    let stoppedFor: string | null = null;
    let stoppedRemedy: string | null = null;
    /** The provider refuses this account's calls, or cannot be reached: the run stops, failing no sample. */
    const stopFor = (error: AccountRefusedError) => {
      if (stoppedFor === null) {
        stoppedFor = error.message;
        stoppedRemedy = error.remedy;
        logger.error("the provider refuses this account's calls or cannot be reached; stopping the run", {
          error: error.message,
        });
      }
      stop = true;
    };
    options.signal?.addEventListener("abort", () => {
      stop = true;
    });
    // What batches answered, at batch prices: progress shows it with the online calls' cost.
    let batchPaid = zeroUsage();
    const addPaid = (paid: UsageTotals) => {
      batchPaid = addUsageTotals(batchPaid, paid);
    };
    const progress = () => {
      if (!options.onProgress) return;
      options.onProgress(
        snapshot(
          state,
          options.run,
          shardFiles.map((f) => f.name),
          { ...llm.totals, ...addUsageTotals(llm.totals, batchPaid) },
          performance.now() - started,
        ),
      );
    };
    const ticker = setInterval(progress, options.progressEveryMs ?? 250);
    timers.push(ticker);
    // The in-process queues lose nothing while the process lives, so this is a safety net: work whose state
    // has not moved for a while and for which no message is queued gets its message again.
    let sweeping: Promise<void> | null = null;
    const sweeper = setInterval(() => {
      sweeping ??= sweepStuck(deps, {
        now: clock.now(),
        stuckAfterMs: options.stuckAfterMs ?? 10 * 60_000,
        run: options.run,
        claim: false,
        skip: (m) => (outstanding.get(workKeyOf(m)) ?? 0) > 0,
      })
        .then(async ({ messages }) => {
          if (messages.length > 0) logger.warn("re-enqueued stuck work", { messages: messages.length });
          await tracked.send(messages);
        })
        .catch((error: unknown) => logger.warn("sweep failed", { error: String(error) }))
        .finally(() => {
          sweeping = null;
        });
    }, options.sweepEveryMs ?? 60_000);
    timers.push(sweeper);

    const take = (): { kind: Stage; received: Received } | null => {
      for (const kind of PRIORITY) {
        const [received] = queues.receive(kind, 1);
        if (received) return { kind, received };
      }
      return null;
    };

    const worker = async () => {
      while (!stop) {
        const job = take();
        if (!job) {
          if (busy === 0 && queues.isIdle()) return;
          const next = Math.min(...PRIORITY.map((k) => queues.nextVisibleAt(k) ?? Number.POSITIVE_INFINITY));
          await sleep(Math.max(1, Math.min(50, next - clock.now())));
          continue;
        }
        busy += 1;
        const { kind, received } = job;
        try {
          const result = await runStage(
            received.message,
            received.receiveCount,
            deps,
            `${received.id}#${received.receiveCount}`,
          );
          await queue.send(result.next);
          if (queues.ack(kind, received.id)) {
            const key = workKeyOf(received.message);
            outstanding.set(key, (outstanding.get(key) ?? 1) - 1);
          }
          lastError.delete(received.id);
        } catch (error) {
          if (error instanceof AccountRefusedError) {
            // Every other call would be refused too: stop, leaving the work unfinished for the next run.
            stopFor(error);
            queues.release(kind, received.id, 0);
            continue;
          }
          lastError.set(received.id, error instanceof Error ? error.message : String(error));
          const retryAfter = retryAfterOf(error);
          const backoff = retryAfter ?? Math.min(30_000, 500 * 2 ** (received.receiveCount - 1));
          logger.warn("stage failed, will retry", {
            stage: kind,
            attempt: received.receiveCount,
            delayMs: backoff,
            error: error instanceof Error ? error.message : String(error),
          });
          queues.release(kind, received.id, backoff);
        } finally {
          busy -= 1;
          // A call just ended: with "auto", what it took may call for more workers.
          spawn();
        }
      }
    };
    const workers = new Set<Promise<void>>();
    const spawn = () => {
      while (!stop && workers.size < concurrency()) {
        const running: Promise<void> = worker().finally(() => workers.delete(running));
        workers.add(running);
      }
    };
    const drain = async () => {
      spawn();
      while (workers.size > 0) await Promise.all(workers);
    };
    await drain();
    // Batch mode: the queues are idle, so every sample that waits for an answer has queued its request. Submit
    // them, poll with backoff, apply the answers, run the stages they bring back; until nothing waits.
    let tickFailures = 0;
    const runBatches = async () => {
      while (deps.batch && !stop) {
        let tick: BatchTickResult;
        try {
          tick = await batchTick(deps, {
            now: clock.now(),
            run: options.run,
            settleMs: 0,
            minPollMs: options.batchMinPollMs ?? 1_000,
            maxPollMs: options.batchMaxPollMs ?? 60_000,
          });
          tickFailures = 0;
          addPaid(tick.paid);
        } catch (error) {
          // The provider or the network failed mid-tick: every step of a tick can be redone, so try again with
          // backoff, as a restarted run would; a failure that persists ends the run (state kept for a rerun).
          // The batches the tick applied before it failed send their messages first.
          if (error instanceof BatchTickError) addPaid(error.result.paid);
          if (error instanceof BatchTickError && error.result.messages.length > 0) {
            await tracked.send(error.result.messages);
            await drain();
          }
          // The provider refuses the account or cannot be reached at all: stop as the stages do (exit 3 and its
          // remedy), not after five more ticks as a run that gave up (exit 1).
          const refused = error instanceof BatchTickError ? error.cause : error;
          if (refused instanceof AccountRefusedError) {
            stopFor(refused);
            break;
          }
          tickFailures += 1;
          if (tickFailures > 5) throw error;
          const delay = Math.min(60_000, (options.batchMinPollMs ?? 1_000) * 2 ** tickFailures);
          logger.warn("batch step failed, trying again", {
            attempt: tickFailures,
            delayMs: delay,
            error: error instanceof Error ? error.message : String(error),
          });
          await sleep(delay, undefined, { signal: options.signal }).catch(() => undefined);
          continue;
        }
        if (tick.messages.length > 0) {
          await tracked.send(tick.messages);
          await drain();
          continue;
        }
        if (tick.open === 0 && tick.queued === 0 && tick.submitted === 0) break;
        const wait = Math.max(10, Math.min(60_000, (tick.nextAt ?? clock.now() + 1_000) - clock.now()));
        await sleep(wait, undefined, { signal: options.signal }).catch(() => undefined);
      }
    };
    // Idle: nothing queued and nothing running, so unfinished work without a queued (or dead) message was
    // dropped somewhere; give it its message again, whatever its age, and run the batches what it brings back
    // queued. Bounded, so a stage that keeps dropping the same work cannot loop forever (the state keeps it for
    // the next run, which the result's `unfinished` asks for, and `mmevol status` shows).
    for (let sweeps = 0; !stop; sweeps += 1) {
      await runBatches();
      if (stop || sweeps === 3) break;
      const { messages } = await sweepStuck(deps, {
        now: clock.now(),
        stuckAfterMs: 0,
        run: options.run,
        claim: false,
        skip: (m) => (outstanding.get(workKeyOf(m)) ?? 0) > 0,
      });
      if (messages.length === 0) break;
      logger.warn("re-enqueued dropped work", { messages: messages.length });
      await tracked.send(messages);
      await drain();
    }
    clearInterval(ticker);
    clearInterval(sweeper);
    await sweeping;
    progress();

    const reports: ShardReport[] = [];
    const problems: ShardProblems[] = [];
    const unfinished: LocalRunResult["unfinished"][number][] = [];
    const outputs: string[] = [];
    const decoder = new TextDecoder();
    for (const file of shardFiles) {
      const key = layout.report(options.run, file.name);
      if (!(await blobs.exists(key))) {
        if (!stop) {
          const counts = state.countByStatus(options.run, file.name);
          const open = Object.entries(counts)
            .filter(([status]) => !TERMINAL_STATUSES.has(status as SampleStatus))
            .reduce((n, [, count]) => n + count, 0);
          unfinished.push({ shard: file.name, openSamples: open });
        }
      } else {
        const report = JSON.parse(decoder.decode(await blobs.get(key))) as ShardReport;
        reports.push(report);
        const errorsKey = layout.errors(options.run, file.name);
        outputs.push(
          join(out, layout.evolved(options.run, file.name)),
          join(out, layout.lineage(options.run, file.name)),
          join(out, errorsKey),
          join(out, key),
          join(out, layout.reportHtml(options.run, file.name)),
        );
        const found = problemsOf(file.name, join(out, errorsKey), decoder.decode(await blobs.get(errorsKey)));
        if (found !== null) problems.push(found);
      }
    }
    const dead = PRIORITY.flatMap((kind) => queues.deadLetters(kind));
    const deadLetters = dead.length;
    // Kept for `mmevol status` / `mmevol redrive`; rewritten by every run, so it lists the last run's only.
    const at = new Date(clock.now()).toISOString();
    const records = dead.map(
      (d): DeadLetterRecord => ({
        message: d.message,
        deliveries: d.receiveCount,
        error: lastError.get(d.id) ?? null,
        at,
      }),
    );
    writeFileSync(join(out, DEAD_LETTERS_FILE), records.map((r) => `${JSON.stringify(r)}\n`).join(""));
    return {
      interrupted: stop,
      stoppedFor,
      stoppedRemedy,
      reports,
      problems,
      unfinished,
      deadLetters,
      llm: { ...llm.totals },
      elapsedMs: performance.now() - started,
      outputs,
    };
  } finally {
    for (const timer of timers) clearInterval(timer);
    state.close();
  }
}

/**
 * Every call goes through an in-process governor of its model (one budget per model, as providers limit them).
 * Limits not given (`--tpm`, `--rpm`, each model's) are learned from the provider's `x-ratelimit-limit-*`
 * headers; a server that sends none is not paced, only paused after a 429.
 */
function governed(
  inner: Llm,
  rateLimit: LocalRunOptions["rateLimit"],
  governors: Map<string, RateGovernor>,
): Llm {
  return new GovernedPerModel(inner, (model) => {
    const governor = new RateGovernor({
      learnLimits: true,
      ...(rateLimit?.tokensPerMinute === undefined ? {} : { tokensPerMinute: rateLimit.tokensPerMinute }),
      ...(rateLimit?.requestsPerMinute === undefined
        ? {}
        : { requestsPerMinute: rateLimit.requestsPerMinute }),
    });
    governors.set(model, governor);
    return governor;
  });
}

function retryAfterOf(error: unknown): number | null {
  if (
    typeof error === "object" &&
    error !== null &&
    "retryAfterMs" in error &&
    typeof error.retryAfterMs === "number"
  ) {
    return error.retryAfterMs;
  }
  return null;
}

function snapshot(
  state: SqliteStateStore,
  run: string,
  shards: readonly string[],
  llm: LlmTotals,
  elapsedMs: number,
): Progress {
  const counts: Record<SampleStatus, number> = emptyStatusCounts();
  for (const shard of shards) {
    const c = state.countByStatus(run, shard);
    for (const status of Object.keys(counts) as SampleStatus[]) counts[status] += c[status];
  }
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  return { total, counts, round: state.currentRound(run), llm: { ...llm }, elapsedMs };
}
