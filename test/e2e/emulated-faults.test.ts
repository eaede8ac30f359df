import { readFileSync } from "node:fs";
import { join } from "node:path";
import { S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { CRASH_POINTS, type CrashPoint } from "../../functions/ports/faults.ts";
import {
  eventSourceMappings,
  readStackTemplate,
  startEmulatedStack,
} from "../../functions/runtime/emulated-stack.ts";
import { ENV } from "../../functions/runtime/env.ts";
import { FAULTS_ENV } from "../../functions/runtime/faults.ts";
import { testBucket } from "../helpers/bucket.ts";
import { demoShard, tempDir } from "../helpers/files.ts";
import { ensureMoto } from "../helpers/moto.ts";
import { ReportCounts } from "../helpers/report.ts";
import { synthOnce } from "../helpers/synth-once.ts";

/** Pollers per function process in this test. */
const EMULATED_POLLERS = 2;

/** The largest batch the synthesized stack hands one invocation of a function (logical id `<label>…`). */
function batchSizeOf(cdkOut: string, label: string): number {
  const sizes = eventSourceMappings(readStackTemplate(cdkOut))
    .filter((m) => m.FunctionName.Ref.startsWith(label))
    .map((m) => m.BatchSize ?? 10);
  if (sizes.length === 0) throw new Error(`no event source mapping for ${label}`);
  return Math.max(...sizes);
}

const Counts = ReportCounts.extend({ addsUp: z.literal(true) });

/**
 * The identity on the emulated stack: a function process killed at each step boundary (restarted like a Lambda
 * container) or S3 events and messages delivered twice still give every line exactly one outcome, no output
 * record twice, and no answered call paid again beyond the calls in flight in the killed process.
 */
describe("the emulated stack under crashes and duplicate deliveries", () => {
  const dir = tempDir();
  let endpoint = "";
  let cdkOut = "";
  let sim: Simulator;
  let referenceEvolved = "";
  let referenceCounts: z.infer<typeof Counts> | undefined;

  const s3 = () =>
    new S3Client({
      endpoint,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
    });

  async function evolveOnStack(run: string, faults: Record<string, unknown> | null, duplicateRate = 0) {
    const lines: string[] = [];
    const stack = await startEmulatedStack({
      cdkOut,
      outputsFile: join(dir.path, `${run}-outputs.json`),
      endpoint,
      apiKey: "sk-faults",
      maxVisibilityTimeoutSeconds: 4,
      // Small runs: a hop that waits to fill a batch only makes the test slower (emulated-stack.test.ts keeps it).
      maxBatchingWindowSeconds: 0,
      maxPollers: EMULATED_POLLERS,
      functionEnv: {
        [ENV.openaiBaseUrl]: sim.url,
        ...(faults ? { [FAULTS_ENV]: JSON.stringify(faults) } : {}),
        ...(duplicateRate > 0 ? { EMU_DUPLICATE_RATE: String(duplicateRate) } : {}),
      },
      onLine: (line) => lines.push(line),
    });
    const bucket = testBucket(s3(), stack.bucket);
    const text = bucket.text;
    try {
      await bucket.uploadDemoImages(`seeds/${run}/`);
      await bucket.put(`seeds/${run}/demo.jsonl`, readFileSync(demoShard));
      await bucket.waitFor(`reports/${run}/demo.json`, 120_000, () => notable(lines));
      // Let any duplicate finalize land before reading: outputs must not change.
      await new Promise((r) => setTimeout(r, 1_500));
      return {
        counts: Counts.parse(JSON.parse(await text(`reports/${run}/demo.json`)).counts),
        evolved: await text(`evolved/${run}/demo.jsonl`),
        lines,
      };
    } finally {
      await stack.stop();
    }
  }

  /** What to print when a run times out: every warning and failure, then the last lines. */
  const notable = (lines: readonly string[]) =>
    [
      ...lines.filter((l) =>
        /"level":"(WARN|ERROR)"|[1-9]\d* failed|process ended|invocation failed/.test(l),
      ),
      "--- last lines:",
      ...lines.slice(-20),
    ].join("\n");

  beforeAll(async () => {
    ({ endpoint } = await ensureMoto());
    cdkOut = await synthOnce();
    sim = await startSimulator({});
    const reference = await evolveOnStack("reference", null);
    referenceEvolved = reference.evolved;
    referenceCounts = reference.counts;
  }, 300_000);
  afterAll(async () => {
    await sim?.close();
    dir.cleanup();
  });

  const replaysSince = (before: number) => {
    const log = sim
      .stats()
      .log.slice(before)
      .filter((e) => e.status === 200);
    return log.length - new Set(log.map((e) => e.request)).size;
  };

  const hitFor = (point: CrashPoint) => (point.startsWith("evolve") || point.startsWith("judge") ? 3 : 1);

  for (const point of CRASH_POINTS) {
    it(`loses nothing when a function process is killed at ${point}`, async () => {
      const before = sim.stats().log.length;
      const ledger = join(dir.path, `${point.replace(":", "-")}.crashes`);
      const result = await evolveOnStack(`crash-${point.replace(":", "-")}`, {
        crash: [{ point, hit: hitFor(point) }],
        ledger,
        maxCrashes: 1,
      });
      expect(readFileSync(ledger, "utf8")).toContain(point);
      expect(result.lines.some((l) => l.includes("starting a new one"))).toBe(true);
      expect(result.counts).toEqual(referenceCounts);
      expect(result.evolved).toBe(referenceEvolved);
      const ids = result.evolved
        .split("\n")
        .filter(Boolean)
        .map((l) => z.object({ id: z.string() }).parse(JSON.parse(l)).id);
      expect(new Set(ids).size).toBe(ids.length);
      // Only calls in flight in the killed process may be paid again: at most its pollers x its batch size
      // (records of a batch run in parallel), less the dying call itself when its answer was stored.
      const inFlight =
        EMULATED_POLLERS * batchSizeOf(cdkOut, point.startsWith("evolve") ? "Evolve" : "Judge");
      expect(replaysSince(before)).toBeLessThanOrEqual(
        point.endsWith("after-answer-stored") ? inFlight - 1 : inFlight,
      );
    }, 150_000);
  }

  it("evolves each line once when 20% of messages and S3 events are delivered twice", async () => {
    const before = sim.stats().log.length;
    const result = await evolveOnStack("duplicates", { duplicateRate: 0.2, seed: 3 }, 0.2);
    expect(result.counts).toEqual(referenceCounts);
    expect(result.evolved).toBe(referenceEvolved);
    expect(replaysSince(before), notable(result.lines)).toBe(0);
  }, 150_000);
});
