import { describe, expect, it } from "vitest";
import { ReportBuilder } from "../../functions/evolution/report.ts";
import type { Item } from "../../functions/evolution/schemas.ts";

const item = (id: string, skills: number, steps: number, score?: number): Item => ({
  id,
  parent: null,
  question: "Q?",
  answer: "A.",
  steps: Array.from({ length: steps }, () => ({ manipulation: "None", description: "x" })),
  objects: [],
  skills: Array.from({ length: skills }, () => "existence"),
  format: "norm",
  imagePosition: "single",
  ...(score === undefined ? {} : { score }),
});

const META = {
  run: "run-1",
  shard: "shard-000.jsonl",
  dryRun: false,
  model: "gpt-4o-mini",
  rounds: 3,
  now: new Date("2025-01-02T03:04:05.000Z"),
};

const judge = (improved: boolean) => ({ by: "judge" as const, improved });
const rule = { by: "rule" as const, improved: false };

function builder(): ReportBuilder {
  const b = new ReportBuilder();
  for (const status of ["DONE", "DONE", "DONE", "DONE", "PASSED_THROUGH", "FAILED", "REJECTED"] as const) {
    b.addLine(status);
  }
  // Round 1: perception 4 candidates (1 rule drop, 2 kept), reasoning 2 (2 kept).
  b.addRound(1, "perception", [judge(true), judge(true), judge(false), rule]);
  b.addRound(1, "reasoning", [judge(true), judge(true)]);
  // Round 2: perception 2 (1 kept), interaction 4 (3 kept).
  b.addRound(2, "perception", [judge(true), rule]);
  b.addRound(2, "interaction", [judge(true), judge(true), judge(true), judge(false)]);
  b.addUsage({ calls: 3, promptTokens: 9000, cachedTokens: 3000, completionTokens: 1200, costUsd: 0.006 });
  b.addUsage({ calls: 2, promptTokens: 4000, cachedTokens: 0, completionTokens: 800, costUsd: 0.002 });
  b.addVersion(0, [item("a", 1, 1), item("b", 1, 2)]);
  b.addVersion(0, [item("c", 1, 3)]);
  b.addVersion(1, [item("d", 2, 2, 6), item("e", 3, 4, 8)]);
  b.addVersion(2, []);
  b.trainingRecords = 11;
  return b;
}

describe("ReportBuilder", () => {
  it("counts lines by status and says they add up", () => {
    const report = builder().build({ ...META, expectedLines: 7 });
    expect(report.counts).toEqual({
      lines: 7,
      evolved: 4,
      passedThrough: 1,
      failed: 1,
      rejected: 1,
      addsUp: true,
    });
    expect(report.trainingRecords).toBe(11);
    expect(report.run).toBe("run-1");
    expect(report.generatedAt).toBe("2025-01-02T03:04:05.000Z");
  });

  it("says the counts do not add up when a line is missing", () => {
    expect(builder().build({ ...META, expectedLines: 8 }).counts.addsUp).toBe(false);
  });

  it("says the counts do not add up when there are more lines than expected", () => {
    expect(builder().build({ ...META, expectedLines: 6 }).counts.addsUp).toBe(false);
  });

  it("gives kept ratios per round", () => {
    const report = builder().build({ ...META, expectedLines: 7 });
    expect(report.keptByRound).toEqual({
      round1: { candidates: 6, ruleDropped: 1, judged: 5, kept: 4, ratio: 4 / 6 },
      round2: { candidates: 6, ruleDropped: 1, judged: 5, kept: 4, ratio: 4 / 6 },
    });
  });

  it("gives kept ratios per direction", () => {
    const report = builder().build({ ...META, expectedLines: 7 });
    expect(report.keptByDirection).toEqual({
      perception: { candidates: 6, ruleDropped: 2, judged: 4, kept: 3, ratio: 0.5 },
      reasoning: { candidates: 2, ruleDropped: 0, judged: 2, kept: 2, ratio: 1 },
      interaction: { candidates: 4, ruleDropped: 0, judged: 4, kept: 3, ratio: 0.75 },
    });
  });

  it("gives kept ratios per round and direction, and counts direction choices", () => {
    const report = builder().build({ ...META, expectedLines: 7 });
    expect(report.keptByRoundAndDirection.round1?.perception?.ratio).toBe(0.5);
    expect(report.keptByRoundAndDirection.round1?.reasoning?.ratio).toBe(1);
    expect(report.keptByRoundAndDirection.round1?.interaction).toBeUndefined();
    expect(report.keptByRoundAndDirection.round2?.perception).toEqual({
      candidates: 2,
      ruleDropped: 1,
      judged: 1,
      kept: 1,
      ratio: 0.5,
    });
    expect(report.keptByRoundAndDirection.round2?.interaction?.ratio).toBe(0.75);
    expect(report.directionChoices).toEqual({ perception: 2, reasoning: 1, interaction: 1 });
  });

  it("gives a null ratio for a round whose sample produced no candidates", () => {
    const b = new ReportBuilder();
    b.addRound(1, "reasoning", []);
    const report = b.build({ ...META, expectedLines: 0 });
    expect(report.keptByRound.round1?.ratio).toBeNull();
    expect(report.directionChoices.reasoning).toBe(1);
  });

  it("sums usage and gives the cost per evolved sample", () => {
    const { usage } = builder().build({ ...META, expectedLines: 7 });
    expect(usage.calls).toBe(5);
    expect(usage.promptTokens).toBe(13000);
    expect(usage.cachedTokens).toBe(3000);
    expect(usage.completionTokens).toBe(2000);
    expect(usage.costUsd).toBeCloseTo(0.008, 12);
    expect(usage.costPerEvolvedSampleUsd).toBeCloseTo(0.002, 12);
  });

  it("gives no cost per evolved sample when nothing was evolved", () => {
    const b = new ReportBuilder();
    b.addLine("PASSED_THROUGH");
    b.addUsage({ calls: 0, promptTokens: 0, cachedTokens: 0, completionTokens: 0, costUsd: 0 });
    expect(b.build({ ...META, expectedLines: 1 }).usage.costPerEvolvedSampleUsd).toBeNull();
  });

  it("gives per-version statistics weighted by item, skipping empty versions", () => {
    const { versions } = builder().build({ ...META, expectedLines: 7 });
    expect(Object.keys(versions)).toEqual(["v0", "v1"]);
    expect(versions.v0).toEqual({ items: 3, meanSkills: 1, meanSteps: 2, meanScore: null });
    expect(versions.v1).toEqual({ items: 2, meanSkills: 2.5, meanSteps: 3, meanScore: 7 });
  });

  it("adds the dry-run notice only on a dry run", () => {
    expect(builder().build({ ...META, expectedLines: 7 }).notice).toBeUndefined();
    expect(builder().build({ ...META, dryRun: true, expectedLines: 7 }).notice).toMatch(/DRY RUN/);
  });
});
