import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { CRASH_POINTS } from "../../functions/ports/faults.ts";
import { FAULTS_ENV } from "../../functions/runtime/faults.ts";
import { runCli } from "../helpers/cli.ts";
import { demoShard, readJson, readJsonl, tempDir } from "../helpers/files.ts";

const CONCURRENCY = 2;

/**
 * The identity, on the local runtime: every input line ends in exactly one outcome, counts add up, no output
 * record appears twice, and no answered call is paid again (only calls in flight when the process died).
 */
describe("the local runtime killed at every step boundary, and with duplicate deliveries", () => {
  const dir = tempDir();
  let sim: Simulator;
  let referenceEvolved = "";
  let referenceCounts: unknown;

  const run = (out: string, env: Record<string, string> = {}) =>
    runCli(
      ["run", demoShard, "--out", out, "--run", "demo", "-q", "-c", String(CONCURRENCY), "--rounds", "2"],
      {
        OPENAI_BASE_URL: sim.url,
        OPENAI_API_KEY: "sk-crash-matrix",
        ...env,
      },
    );

  beforeAll(async () => {
    sim = await startSimulator({});
    const reference = await run(join(dir.path, "reference"));
    expect(reference.code).toBe(0);
    referenceEvolved = readFileSync(join(dir.path, "reference/evolved/demo/demo.jsonl"), "utf8");
    referenceCounts = readJson(join(dir.path, "reference/reports/demo/demo.json")).counts;
  });
  afterAll(async () => {
    await sim.close();
    dir.cleanup();
  });

  const checkIdentity = (out: string, requestsBefore: number, allowedReplays: number) => {
    const report = readJson(join(out, "reports/demo/demo.json"));
    expect(report.counts).toEqual(referenceCounts);
    const records = readJsonl(join(out, "evolved/demo/demo.jsonl"));
    expect(new Set(records.map((r) => r.id)).size).toBe(records.length);
    expect(readFileSync(join(out, "evolved/demo/demo.jsonl"), "utf8")).toBe(referenceEvolved);
    const log = sim
      .stats()
      .log.slice(requestsBefore)
      .filter((e) => e.status === 200);
    const distinct = new Set(log.map((e) => e.request)).size;
    expect(log.length - distinct).toBeLessThanOrEqual(allowedReplays);
  };

  for (const point of CRASH_POINTS) {
    it(`loses nothing and pays nothing twice when killed at ${point}`, async () => {
      const out = join(dir.path, point.replace(":", "-"));
      const ledger = join(dir.path, `${point.replace(":", "-")}.crashes`);
      // Evolve and judge run many times per shard: crash mid-way; the others run about once per shard.
      const hit = point.startsWith("evolve") || point.startsWith("judge") ? 3 : 1;
      const plan = JSON.stringify({ crash: [{ point, hit }], ledger, maxCrashes: 1 });
      const before = sim.stats().log.length;
      const first = await run(out, { [FAULTS_ENV]: plan });
      expect(first.signal).toBe("SIGKILL");
      expect(existsSync(ledger)).toBe(true);
      const second = await run(out, { [FAULTS_ENV]: plan });
      expect(second.code, second.stderr).toBe(0);
      // Only calls in flight at the kill (answered by the server, never stored) may be paid again; at
      // after-answer-stored the dying worker's own answer was stored, so at most the other workers' calls.
      checkIdentity(out, before, point.endsWith("after-answer-stored") ? CONCURRENCY - 1 : CONCURRENCY);
    });
  }

  it("handles 30% duplicate deliveries without a duplicate record or a paid replay", async () => {
    const out = join(dir.path, "duplicates");
    const before = sim.stats().log.length;
    const result = await run(out, { [FAULTS_ENV]: JSON.stringify({ duplicateRate: 0.3, seed: 7 }) });
    expect(result.code, result.stderr).toBe(0);
    checkIdentity(out, before, 0);
  });
});
