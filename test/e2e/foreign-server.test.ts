import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { OpenAiBatchApi } from "../../functions/adapters/openai/openai-batch-api.ts";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import type { Logger } from "../../functions/ports/runtime.ts";
import { TERMINAL_STATUSES } from "../../functions/ports/state-store.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { countLines, readJson, readJsonl, tempDir } from "../helpers/files.ts";
import {
  type ForeignServer,
  type ForeignServerOptions,
  startForeignServer,
} from "../helpers/foreign-openai.ts";
import { ReportCounts } from "../helpers/report.ts";

/**
 * The real pipeline (runLocal, online and batch) against an OpenAI-compatible server that is not ours
 * (test/helpers/foreign-openai.ts): wired as `mmevol run [--batch]` wires it (bin/mmevol.ts), no --tpm/--rpm.
 */

const API_KEY = "sk-foreign-0123456789abcdefghijklmn";
const RUN = "foreign";

const dirs: { cleanup: () => void }[] = [];
const servers: ForeignServer[] = [];
afterAll(async () => {
  for (const server of servers) await server.close();
  for (const dir of dirs) dir.cleanup();
});

async function serve(options: ForeignServerOptions = {}): Promise<ForeignServer> {
  const server = await startForeignServer({ apiKey: API_KEY, ...options });
  servers.push(server);
  return server;
}

const ReportUsage = z.object({
  calls: z.number(),
  promptTokens: z.number(),
  cachedTokens: z.number(),
  completionTokens: z.number(),
  costUsd: z.number(),
});

async function evolve(
  server: ForeignServer,
  options: { mode: "online" | "batch"; samples?: number; rounds?: number; concurrency?: number },
) {
  const dir = tempDir("mmevol-foreign-");
  dirs.push(dir);
  const samples = options.samples ?? 6;
  const shard = writeBenchShard(dir.path, { samples, name: RUN, withBoxes: true });
  const out = join(dir.path, "out");
  const warnings: string[] = [];
  const logger: Logger = {
    debug: () => {},
    info: () => {},
    warn: (message, fields) => warnings.push(`${message} ${JSON.stringify(fields ?? {})}`),
    error: (message, fields) => warnings.push(`ERROR ${message} ${JSON.stringify(fields ?? {})}`),
  };
  const started = performance.now();
  const result = await runLocal({
    shards: [shard],
    out,
    run: RUN,
    concurrency: options.concurrency ?? 4,
    config: { rounds: options.rounds ?? 2, mode: options.mode },
    // As bin/mmevol.ts builds them when neither --tpm nor --rpm is given.
    llm: new OpenAiLlm({ apiKey: API_KEY, baseURL: server.url, timeoutMs: 30_000 }),
    batch: {
      api: new OpenAiBatchApi({ apiKey: API_KEY, baseURL: server.url, timeoutMs: 30_000 }),
      codec: new OpenAiBatchCodec([API_KEY]),
    },
    batchMinPollMs: 5,
    batchMaxPollMs: 40,
    logger,
  });
  const elapsedMs = performance.now() - started;
  const report = readJson(join(out, `reports/${RUN}/${RUN}.json`));
  const counts = ReportCounts.parse(report.counts);
  const usage = ReportUsage.parse(report.usage);
  const state = new SqliteStateStore(join(out, ".mmevol/state.sqlite"));
  let statuses: Record<string, number>;
  let openJobs: number;
  try {
    statuses = state.countByStatus(RUN, RUN);
    openJobs = (await state.listOpenBatchJobs(RUN)).length;
  } finally {
    state.close();
  }
  const unfinished = Object.entries(statuses)
    .filter(([status, n]) => n > 0 && !TERMINAL_STATUSES.has(status as never))
    .map(([status, n]) => `${status}:${n}`);
  return {
    result,
    report,
    counts,
    usage,
    statuses,
    unfinished,
    openJobs,
    warnings,
    elapsedMs,
    samples,
    evolvedLines: countLines(join(out, `evolved/${RUN}/${RUN}.jsonl`)),
    /** The enqueued-token limits learned (functions/pipeline/batch.ts), when a batch was refused for one. */
    batchLimits: existsSync(join(out, `work/${RUN}/batches/limits.json`))
      ? readJson(join(out, `work/${RUN}/batches/limits.json`))
      : null,
    errorLines: readJsonl(join(out, `errors/${RUN}/${RUN}.jsonl`)),
  };
}

/** Every request that got an error line was asked again: in a later batch, or online. */
function unretried(server: ForeignServer): string[] {
  const { failedCustomIds, batchAttempts, batchBodies, onlineBodies } = server.stats;
  return [...failedCustomIds].filter((id) => {
    const again = (batchAttempts.get(id) ?? 0) >= 2;
    const online = onlineBodies.has(batchBodies.get(id) ?? "");
    return !again && !online;
  });
}

/** A batch run with failed lines ended well: every sample finished, none failed, each failure asked again. */
function expectEveryFailureAskedAgain(server: ForeignServer, run: Awaited<ReturnType<typeof evolve>>): void {
  expect(run.result.deadLetters).toBe(0);
  expect(run.unfinished).toEqual([]);
  expect(run.openJobs).toBe(0);
  expect(run.counts).toMatchObject({ lines: run.samples, failed: 0, addsUp: true });
  expect(run.counts.evolved).toBeGreaterThan(0);
  expect(unretried(server)).toEqual([]);
}

describe("the pipeline against a foreign OpenAI-compatible server", () => {
  it("(a) online: every sample finishes, and the report's usage is what the server billed", async () => {
    const server = await serve();
    const run = await evolve(server, { mode: "online" });
    expect(run.result.deadLetters).toBe(0);
    expect(run.unfinished).toEqual([]);
    expect(run.counts).toMatchObject({ lines: run.samples, failed: 0, addsUp: true });
    expect(run.counts.evolved).toBeGreaterThan(0);
    expect(run.evolvedLines).toBeGreaterThan(0);
    expect(server.stats.batchesCreated).toBe(0);
    expect(server.stats.chat429).toBe(0);
    // Every request passes the real API's checks (strict json_schema rules included).
    expect(server.stats.badRequests).toEqual([]);
    // Every answer the server sent was used once, and billed as the server billed it.
    expect(run.usage.calls).toBe(server.stats.chatAnswered);
    expect(run.usage.promptTokens).toBe(server.stats.promptTokens);
    expect(run.usage.completionTokens).toBe(server.stats.completionTokens);
    expect(run.usage.cachedTokens).toBe(server.stats.cachedTokens);
    // The shared system prompt is a cacheable prefix (>= 1024 tokens): later calls are billed cached.
    expect(server.stats.cachedTokens).toBeGreaterThan(0);
    expect(run.usage.costUsd).toBeGreaterThan(0);
  });

  it("(b) online under a tokens-per-minute limit it was not told: learns it from the headers", async () => {
    // Measured: this run (6 samples, 2 rounds) asks ~116k tokens of the limiter (prompt + max_tokens), so a
    // 100k TPM limit must be paced once the first minute's budget is spent (about 10 s of waiting).
    const tokensPerMinute = 100_000;
    const server = await serve({ tokensPerMinute, latencyMs: [20, 60] });
    const run = await evolve(server, { mode: "online" });
    const charged = server.stats.chatLog.reduce((sum, call) => sum + call.charged, 0);
    // Not vacuous: the run needed more than one minute's budget.
    expect(charged).toBeGreaterThan(tokensPerMinute);
    expect(run.result.deadLetters).toBe(0);
    expect(run.unfinished).toEqual([]);
    expect(run.counts).toMatchObject({ lines: run.samples, failed: 0, addsUp: true });
    expect(run.counts.evolved).toBeGreaterThan(0);
    // Paced from the learned limit, not by bouncing off 429s: at most a couple while it learns.
    expect(server.stats.chat429).toBeLessThanOrEqual(
      Math.max(2, Math.ceil(server.stats.chatAnswered * 0.05)),
    );
  }, 60_000);

  it("(c) batch mode: every round through the Batch API, no online call", async () => {
    const server = await serve({ batch: { pollsPerStage: 2 } });
    const run = await evolve(server, { mode: "batch" });
    expect(run.result.deadLetters).toBe(0);
    expect(run.unfinished).toEqual([]);
    expect(run.openJobs).toBe(0);
    expect(run.counts).toMatchObject({ lines: run.samples, failed: 0, addsUp: true });
    expect(run.counts.evolved).toBeGreaterThan(0);
    expect(server.stats.chatRequests).toBe(0);
    expect(server.stats.badRequests).toEqual([]);
    // Evolve and judge of 2 rounds, one batch each (one model).
    expect(server.stats.batchesCreated).toBe(4);
    expect([...server.stats.batchFinal.values()]).toEqual([
      "completed",
      "completed",
      "completed",
      "completed",
    ]);
    // A poller sees every stage a real batch passes through.
    for (const seen of server.stats.batchStatusesSeen.values()) {
      expect(new Set(seen)).toEqual(new Set(["validating", "in_progress", "finalizing", "completed"]));
    }
    expect(run.usage.calls).toBe(server.stats.batchLinesAnswered);
    expect(run.usage.promptTokens).toBe(server.stats.promptTokens);
  });

  it("(d1) batch mode: requests in the error file and a batch with no output file are asked again", async () => {
    const server = await serve({
      batch: { failShare: 0.35, failAttempts: 1, faultFor: (index) => (index === 1 ? "fail-all" : null) },
    });
    const run = await evolve(server, { mode: "batch" });
    expect(server.stats.batchLinesFailed).toBeGreaterThan(0);
    expectEveryFailureAskedAgain(server, run);
    expect(server.stats.batchesCreated).toBeGreaterThan(4);
  });

  it("(d2) batch mode: an expired batch's answered half is used and the rest asked again", async () => {
    const server = await serve({ batch: { faultFor: (index) => (index === 0 ? "expire" : null) } });
    const run = await evolve(server, { mode: "batch" });
    expect([...server.stats.batchFinal.values()]).toContain("expired");
    expect(server.stats.batchLinesExpired).toBeGreaterThan(0);
    expectEveryFailureAskedAgain(server, run);
    // The answers the expired batch did return were used, not asked for again.
    expect(run.usage.calls).toBe(server.stats.batchLinesAnswered + server.stats.chatAnswered);
  });

  describe("(e) batch mode when the organization's enqueued-token limit refuses a batch", () => {
    // OpenAI accepts POST /v1/batches, then fails the batch at validation with `token_limit_exceeded` ("Enqueued
    // token limit reached for <model> ... Please try again once some in_progress batches have been completed")
    // when the prompt tokens of all unfinished batches would pass the model's queue limit (Tier 1 gpt-4o: 90,000).
    // Here one round's evolve batch (6 requests, ~12k prompt tokens) is over an 8,000 limit; any single request
    // (~2.1k) is far under it.
    const ENQUEUED_LIMIT = 8_000;
    let shared: Promise<{ server: ForeignServer; run: Awaited<ReturnType<typeof evolve>> }> | null = null;
    const once = () => {
      shared ??= (async () => {
        const server = await serve({ batch: { enqueuedTokenLimit: ENQUEUED_LIMIT } });
        return { server, run: await evolve(server, { mode: "batch" }) };
      })();
      return shared;
    };

    it("(e1) still finishes every sample", async () => {
      const { server, run } = await once();
      expect([...server.stats.batchErrors.values()].flat()).toContain("token_limit_exceeded");
      expect(server.stats.maxPromptTokens * 2).toBeLessThan(ENQUEUED_LIMIT);
      expect(run.result.deadLetters).toBe(0);
      expect(run.unfinished).toEqual([]);
      expect(run.openJobs).toBe(0);
      expect(run.counts).toMatchObject({ lines: run.samples, failed: 0, addsUp: true });
    });

    // A batch the provider refused as a whole for its enqueued-token limit used to count as a failed try of every
    // request in it, and was resubmitted at once, the same size; past maxBatchTries (2) every request was asked
    // online at full price. The provider said "later" (or "smaller"), not "this request failed".
    it("(e2) answers them through smaller or later batches, not online at full price", async () => {
      const { server, run } = await once();
      expect(server.stats.chatRequests).toBe(0);
      // Refused once for the evolve round, then batches that fit; the limit is kept for the run.
      const refusals = [...server.stats.batchErrors.values()]
        .flat()
        .filter((e) => e === "token_limit_exceeded");
      expect(refusals.length).toBeGreaterThanOrEqual(1);
      expect(refusals.length).toBeLessThanOrEqual(3);
      expect(run.usage.calls).toBe(server.stats.batchLinesAnswered);
      // Learned from the refusal's "Limit: N enqueued tokens", kept with the run for the next batches (and reruns).
      expect(run.batchLimits).toMatchObject({ "gpt-4o-mini": { enqueuedTokens: ENQUEUED_LIMIT } });
    });
  });

  describe("(f) online when the organization is out of credit (429 insufficient_quota)", () => {
    // OpenAI answers every call with 429, `"type":"insufficient_quota","code":"insufficient_quota"`, "You exceeded
    // your current quota, please check your plan and billing details": a 429 that no wait will cure.
    const SAMPLES = 2;
    let shared: Promise<{ server: ForeignServer; run: Awaited<ReturnType<typeof evolve>> }> | null = null;
    const once = () => {
      shared ??= (async () => {
        const server = await serve({ quotaExhausted: true });
        return { server, run: await evolve(server, { mode: "online", samples: SAMPLES, rounds: 1 }) };
      })();
      return shared;
    };

    it("(f1) ends every sample FAILED with the provider's reason", async () => {
      const { run } = await once();
      expect(run.unfinished).toEqual([]);
      expect(run.counts).toMatchObject({ lines: SAMPLES, failed: SAMPLES, evolved: 0, addsUp: true });
      expect(run.errorLines).toHaveLength(SAMPLES);
      for (const line of run.errorLines)
        expect(JSON.stringify(line)).toContain("exceeded your current quota");
    });

    // Every 429 used to be retryable, so an empty account was retried as a rate limit: the client's 2 retries
    // inside each of maxAttempts (5) deliveries with queue backoff, and the governor cut its rate for each (15
    // calls and ~15 s a sample). An exhausted quota is now permanent: one call (with the client's own retries,
    // 3) says all there is to say.
    it("(f2) gives up on a sample after the first failed call", async () => {
      const { server } = await once();
      expect(server.stats.chatRequests).toBeLessThanOrEqual(3 * SAMPLES);
    });
  });
});
