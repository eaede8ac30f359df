import { randomUUID } from "node:crypto";
import { sampleToLlava } from "../evolution/formats.ts";
import { ReportBuilder, type ShardReport } from "../evolution/report.ts";
import { renderReportHtml } from "../evolution/report-html.ts";
import type { BlobWriter } from "../ports/blob-store.ts";
import type { FinalizeMessage } from "../ports/messages.ts";
import { type SampleRecord, type ShardRecord, TERMINAL_STATUSES } from "../ports/state-store.ts";
import { messageOf, type StageDeps, type StageInput, type StageResult } from "./deps.ts";
import { shardRefusal } from "./ingest.ts";
import { layout, shardConfig } from "./shard-config.ts";

/**
 * Writes the shard's training records, lineage, errors and report. Runs when every sample is terminal; the
 * outputs are pure functions of the state, so a rerun after a crash writes the same bytes, and the shard is
 * marked finalized only after all of them are written.
 *
 * The outputs are written as the samples are read (BlobStore.writer), never held whole: a shard's lineage
 * and training data are about 9 KB a sample, and holding them took the process to 975 MiB for 20,000 samples,
 * so a shard of some 50,000 lines could never finalize in the function's 2 GiB. The samples are read twice: first for
 * their input ids alone (a made id is renamed when an input id anywhere in the shard took it), then for
 * everything else.
 */
export async function finalizeShard(
  input: StageInput<FinalizeMessage>,
  deps: StageDeps,
): Promise<StageResult> {
  const { run, shard } = input.message;
  const shardRecord = await deps.state.getShard(run, shard);
  if (!shardRecord || shardRecord.finalized) return { next: [], outcome: "duplicate" };
  if (!shardRecord.ingested || shardRecord.pending > 0) return { next: [], outcome: "not ready" };
  // One finalize of a shard at a time: the others (the last samples' sends, lost-finalize resends, the
  // sweeper's) would each read every sample and write every output again. The owner is the message, so its
  // own redelivery after a crash takes the claim back at once; another message finds the claim and drops out.
  const claim = finalizeClaimOf(run, shard);
  const owner = messageOf(input.delivery ?? randomUUID());
  const claimed = await deps.state.claimRequest(claim, owner, FINALIZE_CLAIM_MS);
  if (!claimed.granted) return { next: [], outcome: "duplicate: finalize running" };
  let first: boolean;
  try {
    first = await writeOutputs(run, shard, shardRecord, deps);
  } catch (error) {
    // The claim is given up either way; a failure to give it up (it expires) does not hide why this failed.
    await deps.state.releaseClaim(claim, owner).catch(() => {});
    throw error;
  }
  await deps.state.releaseClaim(claim, owner);
  if (first) return { next: [], outcome: "finalized" };
  // Samples were reopened while this ran. If they have all finished again, their own finalize may have come
  // while this one held the claim, and dropped out: finalize once more, with them.
  const now = await deps.state.getShard(run, shard);
  if (now !== null && !now.finalized && now.pending <= 0)
    return { next: [{ kind: "finalize", run, shard }], outcome: "finalize again: samples reopened" };
  return { next: [], outcome: "duplicate" };
}

/**
 * How long a finalize holds its shard: longer than the function may run (15 minutes), so a claim outlives
 * only a dead holder, and the sweeper's next finalize after that takes over.
 */
export const FINALIZE_CLAIM_MS = 16 * 60_000;

/** The claim key of a shard's finalize, in the store's claims (apart from request hashes by its prefix). */
export const finalizeClaimOf = (run: string, shard: string): string => `finalize#${run}#${shard}`;

/**
 * The outputs of a shard whose samples are all terminal, then the shard marked finalized; whether this call
 * marked it (false: it already was, or samples were reopened since `shardRecord` was read).
 */
async function writeOutputs(
  run: string,
  shard: string,
  shardRecord: ShardRecord,
  deps: StageDeps,
): Promise<boolean> {
  const config = shardConfig(shardRecord);
  const builder = new ReportBuilder();
  const inputIds = new Set<string>();
  for await (const record of deps.state.listSamples(run, shard)) {
    if (record.sample) inputIds.add(record.sample.id);
  }
  const uniqueId = uniqueIds(inputIds, (id, renamed) =>
    deps.logger.warn("training record id taken by an input id: renamed", { run, shard, id, renamed }),
  );
  // A shard over maxShardBytes was never read (ingest recorded zero lines): say so, rather than an empty report.
  const shardSize = shardRecord.lines === 0 ? await deps.blobs.size(shardRecord.key) : null;
  const refused = shardSize === null ? null : shardRefusal(shardSize, config.maxShardBytes);
  const evolved = deps.blobs.writer(layout.evolved(run, shard), "application/x-ndjson");
  const lineage = deps.blobs.writer(layout.lineage(run, shard), "application/x-ndjson");
  const errors = deps.blobs.writer(layout.errors(run, shard), "application/x-ndjson");
  const line = (writer: BlobWriter, value: unknown) => writer.write(`${JSON.stringify(value)}\n`);
  try {
    for await (const record of deps.state.listSamples(run, shard)) {
      if (!TERMINAL_STATUSES.has(record.status)) {
        // Pending said zero but a sample is still open: never finalize over unfinished work.
        throw new Error(`shard ${run}/${shard}: sample ${record.key} is ${record.status}, not terminal`);
      }
      const status = record.status as "DONE" | "PASSED_THROUGH" | "FAILED" | "REJECTED";
      builder.addLine(status);
      builder.addUsage(record.usage);
      for (const round of record.rounds) builder.addRound(round.round, round.direction, round.verdicts);
      for (const version of record.versions) builder.addVersion(version.round, version.items);
      for (const training of trainingRecords(record, config.dryRun)) {
        await line(evolved, uniqueId(training));
        builder.trainingRecords += 1;
      }
      if (record.status !== "REJECTED") await line(lineage, lineageOf(record));
      const error = errorOf(record);
      if (error) await line(errors, error);
    }
    if (refused !== null) await line(errors, { kind: "refused", line: 0, reason: refused });
    await evolved.close();
    deps.faults?.point("finalize:mid-write");
    await lineage.close();
    await errors.close();
  } catch (error) {
    await Promise.all([evolved.abort(), lineage.abort(), errors.abort()]);
    throw error;
  }

  const built = builder.build({
    run,
    shard,
    dryRun: config.dryRun,
    model: config.model,
    rounds: config.rounds,
    expectedLines: shardRecord.lines,
    now: new Date(deps.clock.now()),
  });
  const report: ShardReport = refused === null ? built : { ...built, refused };
  await deps.blobs.put(layout.report(run, shard), `${JSON.stringify(report, null, 2)}\n`, "application/json");
  await deps.blobs.put(layout.reportHtml(run, shard), renderReportHtml(report), "text/html");
  deps.faults?.point("finalize:before-mark");
  const first = await deps.state.markFinalized(run, shard, shardRecord.reopens ?? 0);
  if (first)
    deps.logger.info("shard finalized", { run, shard, ...report.counts, costUsd: report.usage.costUsd });
  return first;
}

/** One line of the training data: its id, and whether the id is the input's own or one made for a round. */
interface TrainingRecord {
  readonly id: string;
  readonly made: boolean;
  readonly record: Record<string, unknown>;
}

/**
 * Gives each training line its id, each id once. A passed-through sample keeps its input id; a round's record
 * is `<id>-r<round>`, which an input id can already be (`k-r1` next to `k`, as when earlier output is fed back
 * in). Ids unique in the input (ingest rejects repeats) stay unique here, and a made id never names another
 * input line: one that an input id took (whether that line's record is in the training data or not) is renamed
 * `<id>-r<round>.<n>`, the first n free, and `mmevol.source` / `mmevol.round` still say what it is.
 *
 * Only the input ids and the renamed ids are kept: two made ids never collide (`-r<digits>` at the end is read
 * back one way only), nor does a renamed one with a made one (they end in `.<n>`, not `-r<digits>`).
 */
function uniqueIds(
  inputIds: ReadonlySet<string>,
  onRename: (id: string, renamed: string) => void,
): (training: TrainingRecord) => Record<string, unknown> {
  const renamed = new Set<string>();
  return ({ id, made, record }) => {
    if (!made) return record;
    let unique = id;
    for (let n = 2; inputIds.has(unique) || renamed.has(unique); n += 1) unique = `${id}.${n}`;
    if (unique === id) return record;
    renamed.add(unique);
    onRename(id, unique);
    return { ...record, id: unique };
  };
}

function trainingRecords(record: SampleRecord, dryRun: boolean): TrainingRecord[] {
  const sample = record.sample;
  if (!sample) return [];
  const dry = dryRun ? { dryRun: true } : {};
  if (record.status === "PASSED_THROUGH") {
    const seed = record.versions[0]?.items ?? sample.items;
    return [
      {
        id: sample.id,
        made: false,
        record: sampleToLlava(sample, seed, {
          mmevol: { source: sample.id, round: 0, passedThrough: true, ...dry },
        }),
      },
    ];
  }
  if (record.status !== "DONE") return [];
  return record.versions
    .filter((version) => version.round > 0 && version.items.length > 0)
    .map((version) => {
      const out = sampleToLlava(sample, version.items, {
        mmevol: {
          source: sample.id,
          round: version.round,
          direction: version.direction,
          from: version.from,
          scores: version.items.map((item) => item.score ?? null),
          ...dry,
        },
      });
      const id = `${sample.id}-r${version.round}`;
      return { id, made: true, record: { ...out, id } };
    });
}

function lineageOf(record: SampleRecord) {
  return {
    id: record.sample?.id ?? null,
    key: record.key,
    line: record.line,
    status: record.status,
    error: record.error,
    versions: record.versions,
    rounds: record.rounds,
    usage: record.usage,
  };
}

function errorOf(record: SampleRecord) {
  if (record.status === "REJECTED")
    return { kind: "rejected", line: record.line, reason: record.error, raw: record.raw };
  if (record.status === "FAILED")
    return { kind: "failed", line: record.line, id: record.sample?.id ?? null, reason: record.error };
  if (record.status === "PASSED_THROUGH" && record.error) {
    return { kind: "passed_through", line: record.line, id: record.sample?.id ?? null, reason: record.error };
  }
  return null;
}
