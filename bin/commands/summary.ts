import { nextMessageOf } from "../../functions/pipeline/sweep.ts";
import { InvalidInputError } from "../../functions/ports/errors.ts";
import {
  emptyStatusCounts,
  reopenable,
  SAMPLE_STATUSES,
  type SampleStatus,
  type StateStore,
  TERMINAL_STATUSES,
} from "../../functions/ports/state-store.ts";
import { BATCH_WAIT_MS } from "../../functions/runtime/env.ts";

export interface StuckSample {
  readonly key: string;
  /** The sample's line in its shard, and its id there (null for a line that had none usable). */
  readonly line: number;
  readonly id: string | null;
  readonly status: SampleStatus;
  readonly round: number;
  readonly ageMs: number;
}

export interface ShardSummary {
  readonly run: string;
  readonly shard: string;
  readonly lines: number;
  readonly pending: number;
  readonly ingested: boolean;
  readonly finalized: boolean;
  /** Per status; null when the samples were not read (a finalized shard of a deployed stack). */
  readonly counts: Record<SampleStatus, number> | null;
  /** Of the PASSED_THROUGH ones, those whose image could not be used (null when the samples were not read). */
  readonly unusableImages: number | null;
  /** Age of the oldest non-terminal sample (since its last update), or null when none. */
  readonly oldestOpenAgeMs: number | null;
  /** Non-terminal samples not updated for longer than the deadline, oldest first. */
  readonly stuck: readonly StuckSample[];
  readonly shardAgeMs: number;
  /** When the shard arrived (its record was made, with the settings in force then). */
  readonly createdAt: number;
  /** Provider batches of this shard not applied yet (batch mode): its samples wait for them. */
  readonly openBatches: number;
}

export interface SummaryOptions {
  readonly now: number;
  readonly stuckAfterMs: number;
  readonly run?: string;
  /** Read the samples of finalized shards too (cheap locally; a full table read on a deployed stack). */
  readonly scanFinalized: boolean;
  /**
   * How long a sample of a shard with a provider batch open may wait before it counts as stuck (the batch's
   * 24 h window); default 25 h, as the sweeper's.
   */
  readonly batchWaitMs?: number;
}

/** Every shard's progress and stuck samples, from the state store alone (paged: any shard size). */
export async function summarizeShards(state: StateStore, options: SummaryOptions): Promise<ShardSummary[]> {
  const summaries: ShardSummary[] = [];
  const openBatches = new Map<string, number>();
  for (const job of await state.listOpenBatchJobs(options.run)) {
    const key = JSON.stringify([job.run, job.shard]);
    openBatches.set(key, (openBatches.get(key) ?? 0) + 1);
  }
  for (const shard of await state.listShards(options.run)) {
    const batches = openBatches.get(JSON.stringify([shard.run, shard.shard])) ?? 0;
    const stuckAfterMs =
      batches > 0
        ? Math.max(options.stuckAfterMs, options.batchWaitMs ?? BATCH_WAIT_MS)
        : options.stuckAfterMs;
    let counts: Record<SampleStatus, number> | null = null;
    let unusableImages: number | null = null;
    let oldest: number | null = null;
    const stuck: StuckSample[] = [];
    if (!shard.finalized || options.scanFinalized) {
      counts = emptyStatusCounts();
      unusableImages = 0;
      for await (const sample of state.listSamples(shard.run, shard.shard)) {
        counts[sample.status] += 1;
        if (sample.status === "PASSED_THROUGH" && reopenable(sample)) unusableImages += 1;
        if (TERMINAL_STATUSES.has(sample.status) || nextMessageOf(sample) === null) continue;
        const ageMs = options.now - sample.updatedAt;
        oldest = Math.max(oldest ?? 0, ageMs);
        if (ageMs > stuckAfterMs)
          stuck.push({
            key: sample.key,
            line: sample.line,
            id: sample.sample?.id ?? null,
            status: sample.status,
            round: sample.round,
            ageMs,
          });
      }
      stuck.sort((a, b) => b.ageMs - a.ageMs);
    }
    summaries.push({
      run: shard.run,
      shard: shard.shard,
      lines: shard.lines,
      pending: shard.pending,
      ingested: shard.ingested,
      finalized: shard.finalized,
      counts,
      unusableImages,
      oldestOpenAgeMs: oldest,
      stuck,
      shardAgeMs: options.now - shard.updatedAt,
      createdAt: shard.createdAt,
      openBatches: batches,
    });
  }
  return summaries;
}

export const age = (ms: number): string => {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
};

/** A run named on the command line that the state does not hold: a misspelt name, not "nothing there". */
export const unknownRun = (run: string): InvalidInputError =>
  new InvalidInputError(`no run named ${JSON.stringify(run)} here (\`mmevol status\` lists the runs)`);

/** Human-readable lines for `mmevol status`. */
export function formatSummaries(summaries: readonly ShardSummary[], maxStuck = 10): string[] {
  if (summaries.length === 0) return ["no shards"];
  const lines: string[] = [];
  for (const s of summaries) {
    const phase = s.finalized ? "finalized" : s.ingested ? "unfinished" : "ingesting";
    lines.push(
      `${s.run}/${s.shard}: ${phase}, ${s.lines} lines, pending ${s.pending}, updated ${age(s.shardAgeMs)} ago`,
    );
    if (s.counts) {
      const counts = SAMPLE_STATUSES.filter((status) => (s.counts?.[status] ?? 0) > 0)
        .map((status) => `${status} ${s.counts?.[status] ?? 0}`)
        .join(", ");
      lines.push(`  samples: ${counts || "none"}`);
    }
    if ((s.unusableImages ?? 0) > 0)
      lines.push(`  passed through because their image could not be used: ${s.unusableImages}`);
    if (s.oldestOpenAgeMs !== null)
      lines.push(`  oldest unfinished sample: ${age(s.oldestOpenAgeMs)} since its last step`);
    if (s.openBatches > 0)
      lines.push(
        `  waiting for ${s.openBatches} provider batch(es) (answers within 24 h): its samples count as stuck only after that`,
      );
    if (s.stuck.length > 0) {
      lines.push(`  stuck (no step for longer than the deadline): ${s.stuck.length}`);
      for (const stuck of s.stuck.slice(0, maxStuck))
        lines.push(
          `    line ${stuck.line}${stuck.id === null ? "" : ` (id ${JSON.stringify(stuck.id)})`}: ${stuck.status} round ${stuck.round}, ${age(stuck.ageMs)} (key ${stuck.key})`,
        );
      if (s.stuck.length > maxStuck) lines.push(`    ... and ${s.stuck.length - maxStuck} more`);
    }
  }
  return lines;
}
