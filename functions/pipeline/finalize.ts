import { sampleToLlava } from "../evolution/formats.ts";
import { ReportBuilder, type ShardReport } from "../evolution/report.ts";
import { renderReportHtml } from "../evolution/report-html.ts";
import type { FinalizeMessage } from "../ports/messages.ts";
import { type SampleRecord, TERMINAL_STATUSES } from "../ports/state-store.ts";
import type { StageDeps, StageInput, StageResult } from "./deps.ts";
import { shardRefusal } from "./ingest.ts";
import { layout, shardConfig } from "./shard-config.ts";

/**
 * Writes the shard's training records, lineage, errors and report. Runs when every sample is terminal; the
 * outputs are pure functions of the state, so a rerun after a crash writes the same bytes, and the shard is
 * marked finalized only after all of them are written.
 */
export async function finalizeShard(
  input: StageInput<FinalizeMessage>,
  deps: StageDeps,
): Promise<StageResult> {
  const { run, shard } = input.message;
  const shardRecord = await deps.state.getShard(run, shard);
  if (!shardRecord || shardRecord.finalized) return { next: [], outcome: "duplicate" };
  if (!shardRecord.ingested || shardRecord.pending > 0) return { next: [], outcome: "not ready" };
  const config = shardConfig(shardRecord);
  const builder = new ReportBuilder();
  const evolved: TrainingRecord[] = [];
  const inputIds = new Set<string>();
  const lineage: string[] = [];
  const errors: string[] = [];

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
    if (record.sample) inputIds.add(record.sample.id);
    for (const training of trainingRecords(record, config.dryRun)) {
      evolved.push(training);
      builder.trainingRecords += 1;
    }
    if (record.status !== "REJECTED") lineage.push(JSON.stringify(lineageOf(record)));
    const error = errorOf(record);
    if (error) errors.push(JSON.stringify(error));
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
  // A shard over maxShardBytes was never read (ingest recorded zero lines): say so, rather than an empty report.
  const shardSize = shardRecord.lines === 0 ? await deps.blobs.size(shardRecord.key) : null;
  const refused = shardSize === null ? null : shardRefusal(shardSize, config.maxShardBytes);
  if (refused !== null) errors.push(JSON.stringify({ kind: "refused", line: 0, reason: refused }));
  const report: ShardReport = refused === null ? built : { ...built, refused };
  const jsonl = (lines: string[]) => (lines.length === 0 ? "" : `${lines.join("\n")}\n`);
  const training = withUniqueIds(evolved, inputIds, (id, renamed) =>
    deps.logger.warn("training record id taken by an input id: renamed", { run, shard, id, renamed }),
  );
  await deps.blobs.put(layout.evolved(run, shard), jsonl(training), "application/x-ndjson");
  deps.faults?.point("finalize:mid-write");
  await deps.blobs.put(layout.lineage(run, shard), jsonl(lineage), "application/x-ndjson");
  await deps.blobs.put(layout.errors(run, shard), jsonl(errors), "application/x-ndjson");
  await deps.blobs.put(layout.report(run, shard), `${JSON.stringify(report, null, 2)}\n`, "application/json");
  await deps.blobs.put(layout.reportHtml(run, shard), renderReportHtml(report), "text/html");
  deps.faults?.point("finalize:before-mark");
  const first = await deps.state.markFinalized(run, shard);
  deps.logger.info("shard finalized", { run, shard, ...report.counts, costUsd: report.usage.costUsd });
  return { next: [], outcome: first ? "finalized" : "duplicate" };
}

/** One line of the training data: its id, and whether the id is the input's own or one made for a round. */
interface TrainingRecord {
  readonly id: string;
  readonly made: boolean;
  readonly record: Record<string, unknown>;
}

/**
 * The training lines, each id once. A passed-through sample keeps its input id; a round's record is
 * `<id>-r<round>`, which an input id can already be (`k-r1` next to `k`, as when earlier output is fed back
 * in). Ids unique in the input (ingest rejects repeats) stay unique here, and a made id never names another
 * input line: one that an input id took (whether that line's record is in the training data or not) is renamed
 * `<id>-r<round>.<n>`, the first n free, and `mmevol.source` / `mmevol.round` still say what it is.
 */
function withUniqueIds(
  records: readonly TrainingRecord[],
  inputIds: ReadonlySet<string>,
  onRename: (id: string, renamed: string) => void,
): string[] {
  const taken = new Set(inputIds);
  return records.map(({ id, made, record }) => {
    if (!made) return JSON.stringify(record);
    let unique = id;
    for (let n = 2; taken.has(unique); n += 1) unique = `${id}.${n}`;
    taken.add(unique);
    if (unique !== id) onRename(id, unique);
    return JSON.stringify({ ...record, id: unique });
  });
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
