import { cpSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import type { FaultOptions } from "../../functions/adapters/simulated/faults.ts";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { demoShard, readJson, readJsonl, repoRoot, tempDir } from "../helpers/files.ts";
import { ReportCounts } from "../helpers/report.ts";

const SAMPLES = 40;
const Seed = z.looseObject({ id: z.union([z.string(), z.number()]) });

/** The demo shard's samples repeated under new ids, with the demo images beside the shard. */
function writeShard(dir: string): string {
  cpSync(join(repoRoot, "examples/seeds/images"), join(dir, "images"), { recursive: true });
  const seeds = readFileSync(demoShard, "utf8")
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => Seed.parse(JSON.parse(line)))
    .filter((seed) => "image" in seed);
  const lines = Array.from({ length: SAMPLES }, (_, i) => {
    const seed = seeds[i % seeds.length];
    return JSON.stringify({ ...seed, id: `f-${String(i).padStart(2, "0")}-${seed?.id}` });
  });
  const shard = join(dir, "faults.jsonl");
  writeFileSync(shard, `${lines.join("\n")}\n`);
  return shard;
}

const Report = z.looseObject({
  counts: ReportCounts,
});

async function runAgainst(dir: string, faults: FaultOptions, sims: Simulator[]) {
  const sim = await startSimulator({ faults, apiKey: "sk-sim-faults-test" });
  sims.push(sim);
  const out = join(dir, "out");
  const started = performance.now();
  const result = await runLocal({
    shards: [writeShard(dir)],
    out,
    run: "r",
    concurrency: 8,
    config: { rounds: 2, maxAttempts: 4 },
    llm: new OpenAiLlm({ apiKey: "sk-sim-faults-test", baseURL: sim.url, maxRetries: 1, timeoutMs: 500 }),
  });
  const elapsedMs = performance.now() - started;
  const report = Report.parse(readJson(join(out, "reports/r/faults.json")));
  const errors = readJsonl(join(out, "errors/r/faults.jsonl"));
  const lineage = readJsonl(join(out, "evolved/r/faults.lineage.jsonl"));
  const evolved = readJsonl(join(out, "evolved/r/faults.jsonl"));
  return { sim, result, report, errors, lineage, evolved, elapsedMs };
}

describe("LLM faults end in bounded retries or a FAILED sample with its reason", () => {
  const sims: Simulator[] = [];
  const dirs = [tempDir(), tempDir()];
  afterAll(async () => {
    await Promise.all(sims.map((sim) => sim.close()));
    for (const dir of dirs) dir.cleanup();
  });

  it("a 30% mix of every fault kind: the run completes and every sample is accounted for", async () => {
    const dir = dirs[0]?.path ?? "";
    const { sim, result, report, errors, evolved, elapsedMs } = await runAgainst(
      dir,
      // A quarter of the faulted requests keep failing the same way, so retries and re-asks run out too.
      { rate: 0.3, seed: 5, slowMs: 2_000, persistentShare: 0.25 },
      sims,
    );
    const stats = sim.stats();
    const failed = errors.filter((e) => e.kind === "failed");
    // Printed for the report on timings and outcomes; the assertions below are what must hold.
    process.stderr.write(
      `[llm-faults] mixed: ${Math.round(elapsedMs)} ms, counts ${JSON.stringify(report.counts)}, ` +
        `faults ${JSON.stringify(stats.faults)}\n${failed.map((f) => `  ${String(f.reason)}`).join("\n")}\n`,
    );

    expect(result.deadLetters).toBe(0);
    expect(report.counts.lines).toBe(SAMPLES);
    expect(report.counts.addsUp).toBe(true);
    expect(
      report.counts.evolved + report.counts.passedThrough + report.counts.failed + report.counts.rejected,
    ).toBe(SAMPLES);
    expect(failed).toHaveLength(report.counts.failed);

    // Every kind happened, so this run did exercise the whole mix.
    for (const [kind, count] of Object.entries(stats.faults)) {
      if (kind !== "storm") expect(count, kind).toBeGreaterThan(0);
    }
    for (const f of failed) {
      expect(String(f.reason)).toMatch(
        /refus|invalid|not JSON|no verdict|token limit|HTTP \d{3}|timed out|connection/i,
      );
    }
    expect(failed.some((f) => /refus/i.test(String(f.reason)))).toBe(true);
    expect(failed.some((f) => /answer invalid after 3 tries/.test(String(f.reason)))).toBe(true);
    // A call that keeps failing stops after maxAttempts deliveries.
    expect(failed.some((f) => /after 4 attempts/.test(String(f.reason)))).toBe(true);

    const ids = evolved.map((record) => JSON.stringify([record.id, record.mmevol]));
    expect(new Set(ids).size).toBe(ids.length);
    const idsOnly = evolved.map((record) => String(record.id));
    expect(new Set(idsOnly).size).toBe(idsOnly.length);

    // No answered, valid request was paid twice: every repeat 200 of a digest follows a faulted answer.
    const paid = stats.log.filter((entry) => entry.status === 200);
    const digests = new Set(stats.log.map((entry) => entry.request));
    const faultedAnswers = paid.filter((entry) => entry.fault !== null).length;
    expect(paid.length).toBeLessThanOrEqual(digests.size + faultedAnswers);
  }, 60_000);

  it("only retryable faults at 30%: bounded retries recover every sample", async () => {
    const dir = dirs[1]?.path ?? "";
    const { sim, result, report, lineage, elapsedMs } = await runAgainst(
      dir,
      {
        rate: 0.3,
        seed: 6,
        slowMs: 2_000,
        mix: { rate_limit: 1, server_error: 1, unavailable: 1, slow: 1, reset: 1 },
      },
      sims,
    );
    const stats = sim.stats();
    process.stderr.write(
      `[llm-faults] retryable: ${Math.round(elapsedMs)} ms, counts ${JSON.stringify(report.counts)}, ` +
        `faults ${JSON.stringify(stats.faults)}\n`,
    );
    expect(result.deadLetters).toBe(0);
    expect(report.counts).toMatchObject({ lines: SAMPLES, failed: 0, rejected: 0, addsUp: true });
    expect(lineage.map((l) => l.status).every((s) => s === "DONE" || s === "PASSED_THROUGH")).toBe(true);
    expect(stats.faults.rate_limit + stats.faults.reset + stats.faults.slow).toBeGreaterThan(0);
  }, 60_000);
});
