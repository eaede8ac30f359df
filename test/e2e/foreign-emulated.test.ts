import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { type EmulatedStack, startEmulatedStack } from "../../functions/runtime/emulated-stack.ts";
import { ENV } from "../../functions/runtime/env.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { testBucket } from "../helpers/bucket.ts";
import { tempDir } from "../helpers/files.ts";
import { type ForeignServer, startForeignServer } from "../helpers/foreign-openai.ts";
import { ensureMoto, s3Client } from "../helpers/moto.ts";
import { ReportCounts } from "../helpers/report.ts";
import { synthOnce } from "../helpers/synth-once.ts";

/**
 * The synthesized stack on the emulator (its real handlers, the DynamoDB rate governor, the scheduled batcher)
 * against an OpenAI-compatible server that is not ours (test/helpers/foreign-openai.ts): the check issue 5
 * describes, "on the emulated stack; batch mode end to end against that server's files and batches endpoints".
 */

const API_KEY = "sk-foreign-stack-0123456789abcdefghij";
const SAMPLES = 6;

const Report = z.object({
  counts: ReportCounts,
  usage: z.object({ calls: z.number(), promptTokens: z.number(), costUsd: z.number() }),
});

describe("the emulated stack against a foreign OpenAI-compatible server", () => {
  const dir = tempDir("mmevol-foreign-stack-");
  let endpoint = "";
  let cdkOut = "";
  const lines: string[] = [];

  beforeAll(async () => {
    ({ endpoint } = await ensureMoto());
    cdkOut = await synthOnce();
  }, 240_000);
  afterAll(() => dir.cleanup());

  async function evolveOnStack(
    server: ForeignServer,
    run: string,
    runJson: Record<string, unknown>,
    env: Record<string, string> = {},
  ) {
    const stack: EmulatedStack = await startEmulatedStack({
      cdkOut,
      outputsFile: join(dir.path, "outputs.json"),
      endpoint,
      apiKey: API_KEY,
      maxBatchingWindowSeconds: 0,
      scheduleEverySeconds: 1,
      functionEnv: { [ENV.openaiBaseUrl]: server.url, ...env },
      onLine: (line) => lines.push(line),
    });
    const s3 = s3Client(endpoint);
    const bucket = testBucket(s3, stack.bucket);
    try {
      const local = join(dir.path, run);
      const shard = writeBenchShard(local, { samples: SAMPLES, name: run, withBoxes: true });
      for (const image of readdirSync(join(local, "images")))
        await bucket.put(`seeds/${run}/images/${image}`, readFileSync(join(local, "images", image)));
      await bucket.put(`seeds/${run}/run.json`, JSON.stringify(runJson));
      await bucket.put(`seeds/${run}/${run}.jsonl`, readFileSync(shard));
      await bucket.waitFor(`reports/${run}/${run}.json`, 170_000, () => notable(lines));
      const limitsKey = `work/${run}/batches/limits.json`;
      return {
        ...Report.parse(JSON.parse(await bucket.text(`reports/${run}/${run}.json`))),
        /** The enqueued-token limits the batcher learned, when a batch was refused for one. */
        batchLimits: (await bucket.exists(limitsKey)) ? JSON.parse(await bucket.text(limitsKey)) : null,
      };
    } finally {
      await stack.stop();
    }
  }

  /** What to print when a run times out: every warning and failure, then the last lines. */
  const notable = (all: readonly string[]) =>
    [
      ...all.filter((l) => /"level":"(WARN|ERROR)"|invocation failed|process ended/.test(l)).slice(-40),
      "--- last lines:",
      ...all.slice(-20),
    ].join("\n");

  it("online under a tokens-per-minute limit the stack was not told: learns it, finishes every sample", async () => {
    const tokensPerMinute = 100_000;
    const server = await startForeignServer({ apiKey: API_KEY, tokensPerMinute, latencyMs: [20, 60] });
    try {
      const report = await evolveOnStack(server, "fonline", { rounds: 2, seed: 3 });
      expect(report.counts).toMatchObject({ lines: SAMPLES, failed: 0, addsUp: true });
      expect(report.counts.evolved).toBeGreaterThan(0);
      const charged = server.stats.chatLog.reduce((sum, call) => sum + call.charged, 0);
      // Not vacuous: the run needed more than one minute's budget.
      expect(charged).toBeGreaterThan(tokensPerMinute);
      expect(server.stats.badRequests).toEqual([]);
      expect(server.stats.batchesCreated).toBe(0);
      // The shared DynamoDB governor paces from the server's headers: few 429s while it learns.
      expect(server.stats.chat429).toBeLessThanOrEqual(
        Math.max(3, Math.ceil(server.stats.chatAnswered * 0.05)),
      );
      // The report bills what the server answered (each answer used once).
      expect(report.usage.calls).toBe(server.stats.chatAnswered);
      expect(report.usage.promptTokens).toBe(server.stats.promptTokens);
    } finally {
      await server.close();
    }
  }, 240_000);

  it("batch mode: failed lines and an enqueued-token refusal are asked again in later batches, none online", async () => {
    // One round's evolve batch (6 requests, ~12.6k prompt tokens by the server's count) is over this limit. Our
    // count is higher (about 5.1k a request: gpt-4o-mini bills its low-detail image as 2,833 tokens, the server
    // does not), so once the limit is learned, two evolve requests fit in a batch beside no other: the rounds go
    // through several batches, one at a time.
    const ENQUEUED_LIMIT = 11_300;
    const server = await startForeignServer({
      apiKey: API_KEY,
      batch: { pollsPerStage: 1, failShare: 0.25, failAttempts: 1, enqueuedTokenLimit: ENQUEUED_LIMIT },
    });
    try {
      // Batches one at a time: poll at emulator speed, so the test takes about a minute.
      const report = await evolveOnStack(
        server,
        "fbatch",
        { rounds: 2, seed: 3, mode: "batch" },
        { [ENV.batchPollMs]: "250", [ENV.batchSettleMs]: "1500" },
      );
      expect(report.counts).toMatchObject({ lines: SAMPLES, failed: 0, addsUp: true });
      expect(report.counts.evolved).toBeGreaterThan(0);
      expect(server.stats.badRequests).toEqual([]);
      // Not vacuous: lines failed, and a batch was refused for the limit.
      expect(server.stats.failedCustomIds.size).toBeGreaterThan(0);
      expect([...server.stats.batchErrors.values()].flat()).toContain("token_limit_exceeded");
      expect(server.stats.maxPromptTokens * 2).toBeLessThan(ENQUEUED_LIMIT);
      // Each failed request was run again in a later batch: a first failure costs no online call.
      for (const id of server.stats.failedCustomIds)
        expect(server.stats.batchAttempts.get(id) ?? 0).toBeGreaterThanOrEqual(2);
      expect(server.stats.chatRequests).toBe(0);
      expect(report.usage.costUsd).toBeGreaterThan(0);
      // Learned from the refusal's "Limit: N enqueued tokens", kept in the bucket for the run's later batches.
      expect(report.batchLimits).toMatchObject({ "gpt-4o-mini": { enqueuedTokens: ENQUEUED_LIMIT } });
      expect(report.usage.calls).toBe(server.stats.batchLinesAnswered);
    } finally {
      await server.close();
    }
  }, 240_000);
});
