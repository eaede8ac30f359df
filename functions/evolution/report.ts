import { type VersionStats, versionStats } from "./rounds.ts";
import { DIRECTIONS, type Direction, type Item } from "./schemas.ts";

export interface UsageSummary {
  readonly calls: number;
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
  readonly costUsd: number;
}

export interface KeptRatio {
  readonly candidates: number;
  readonly ruleDropped: number;
  readonly judged: number;
  readonly kept: number;
  readonly ratio: number | null;
}

export interface ShardReport {
  readonly run: string;
  readonly shard: string;
  readonly dryRun: boolean;
  readonly notice?: string;
  /** Set when the shard was not read at all (over maxShardBytes): why. Its counts are then all zero. */
  readonly refused?: string;
  readonly model: string;
  readonly rounds: number;
  readonly generatedAt: string;
  readonly counts: {
    readonly lines: number;
    readonly evolved: number;
    readonly passedThrough: number;
    readonly failed: number;
    readonly rejected: number;
    readonly addsUp: boolean;
  };
  readonly trainingRecords: number;
  readonly keptByRound: Record<string, KeptRatio>;
  readonly keptByDirection: Record<string, KeptRatio>;
  readonly keptByRoundAndDirection: Record<string, Record<string, KeptRatio>>;
  readonly directionChoices: Record<string, number>;
  readonly versions: Record<string, VersionStats>;
  readonly usage: UsageSummary & { readonly costPerEvolvedSampleUsd: number | null };
}

interface Tally {
  candidates: number;
  ruleDropped: number;
  judged: number;
  kept: number;
}

const ratio = (t: Tally): KeptRatio => ({ ...t, ratio: t.candidates === 0 ? null : t.kept / t.candidates });
const emptyTally = (): Tally => ({ candidates: 0, ruleDropped: 0, judged: 0, kept: 0 });

/** Folds samples into a shard report one at a time, so a large shard never sits in memory whole. */
export class ReportBuilder {
  private readonly counts = { lines: 0, evolved: 0, passedThrough: 0, failed: 0, rejected: 0 };
  private readonly byRound = new Map<number, Tally>();
  private readonly byDirection = new Map<Direction, Tally>();
  private readonly byBoth = new Map<string, Tally>();
  private readonly choices = new Map<Direction, number>();
  private readonly versionItems = new Map<
    number,
    { items: number; skills: number; steps: number; scores: number[] }
  >();
  private readonly usage = { calls: 0, promptTokens: 0, cachedTokens: 0, completionTokens: 0, costUsd: 0 };
  trainingRecords = 0;

  addLine(status: "DONE" | "PASSED_THROUGH" | "FAILED" | "REJECTED"): void {
    this.counts.lines += 1;
    if (status === "DONE") this.counts.evolved += 1;
    else if (status === "PASSED_THROUGH") this.counts.passedThrough += 1;
    else if (status === "FAILED") this.counts.failed += 1;
    else this.counts.rejected += 1;
  }

  addUsage(usage: UsageSummary): void {
    this.usage.calls += usage.calls;
    this.usage.promptTokens += usage.promptTokens;
    this.usage.cachedTokens += usage.cachedTokens;
    this.usage.completionTokens += usage.completionTokens;
    this.usage.costUsd += usage.costUsd;
  }

  addRound(
    round: number,
    direction: Direction,
    verdicts: readonly { by: "judge" | "rule"; improved: boolean }[],
  ): void {
    this.choices.set(direction, (this.choices.get(direction) ?? 0) + 1);
    const tallies = [
      this.tally(this.byRound, round),
      this.tally(this.byDirection, direction),
      this.tally(this.byBoth, `${round}:${direction}`),
    ];
    for (const verdict of verdicts) {
      for (const t of tallies) {
        t.candidates += 1;
        if (verdict.by === "rule") t.ruleDropped += 1;
        else t.judged += 1;
        if (verdict.improved) t.kept += 1;
      }
    }
  }

  addVersion(round: number, items: readonly Item[]): void {
    if (items.length === 0) return;
    const acc = this.versionItems.get(round) ?? { items: 0, skills: 0, steps: 0, scores: [] };
    const stats = versionStats(items);
    acc.items += stats.items;
    acc.skills += stats.meanSkills * stats.items;
    acc.steps += stats.meanSteps * stats.items;
    for (const item of items) if (typeof item.score === "number") acc.scores.push(item.score);
    this.versionItems.set(round, acc);
  }

  private tally<K>(map: Map<K, Tally>, key: K): Tally {
    let t = map.get(key);
    if (!t) {
      t = emptyTally();
      map.set(key, t);
    }
    return t;
  }

  build(meta: {
    run: string;
    shard: string;
    dryRun: boolean;
    model: string;
    rounds: number;
    expectedLines: number;
    now: Date;
  }): ShardReport {
    const c = this.counts;
    const versions: Record<string, VersionStats> = {};
    for (const [round, acc] of [...this.versionItems.entries()].sort((a, b) => a[0] - b[0])) {
      versions[`v${round}`] = {
        items: acc.items,
        meanSkills: acc.items === 0 ? 0 : acc.skills / acc.items,
        meanSteps: acc.items === 0 ? 0 : acc.steps / acc.items,
        meanScore: acc.scores.length === 0 ? null : acc.scores.reduce((a, b) => a + b, 0) / acc.scores.length,
      };
    }
    const both: Record<string, Record<string, KeptRatio>> = {};
    for (const [key, t] of this.byBoth) {
      const [round, direction] = key.split(":");
      if (round === undefined || direction === undefined) continue;
      both[`round${round}`] = { ...both[`round${round}`], [direction]: ratio(t) };
    }
    return {
      run: meta.run,
      shard: meta.shard,
      dryRun: meta.dryRun,
      ...(meta.dryRun
        ? {
            notice:
              "DRY RUN: simulated model answers, no network. Token counts and cost are estimates of the real run.",
          }
        : {}),
      model: meta.model,
      rounds: meta.rounds,
      generatedAt: meta.now.toISOString(),
      counts: {
        ...c,
        addsUp:
          c.evolved + c.passedThrough + c.failed + c.rejected === meta.expectedLines &&
          c.lines === meta.expectedLines,
      },
      trainingRecords: this.trainingRecords,
      keptByRound: Object.fromEntries(
        [...this.byRound.entries()].sort((a, b) => a[0] - b[0]).map(([r, t]) => [`round${r}`, ratio(t)]),
      ),
      keptByDirection: Object.fromEntries(
        DIRECTIONS.filter((d) => this.byDirection.has(d)).map((d) => [
          d,
          ratio(this.byDirection.get(d) ?? emptyTally()),
        ]),
      ),
      keptByRoundAndDirection: both,
      directionChoices: Object.fromEntries(DIRECTIONS.map((d) => [d, this.choices.get(d) ?? 0])),
      versions,
      usage: {
        ...this.usage,
        costPerEvolvedSampleUsd: c.evolved === 0 ? null : this.usage.costUsd / c.evolved,
      },
    };
  }
}
