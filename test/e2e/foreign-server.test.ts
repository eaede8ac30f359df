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
import { runCli } from "../helpers/cli.ts";
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

  it("(e3) a request too large for the limit alone goes online after maxBatchTries, and the run ends", async () => {
    // A 1,000-token limit, under any single request (~2.1k): every batch is refused. The first, of several
    // requests, teaches the limit; then each request goes alone (nothing fits beside it, nothing is open), is
    // refused alone (its own failure, a try spent), and past maxBatchTries (2) is asked online.
    const server = await serve({ batch: { enqueuedTokenLimit: 1_000 } });
    const run = await evolve(server, { mode: "batch", samples: 3, rounds: 1 });
    expect(run.result.deadLetters).toBe(0);
    expect(run.unfinished).toEqual([]);
    expect(run.openJobs).toBe(0);
    expect(run.counts).toMatchObject({ lines: 3, failed: 0, addsUp: true });
    expect(server.stats.batchLinesAnswered).toBe(0);
    // Every answer came online, each evolve and judge request once.
    expect(server.stats.chatAnswered).toBe(run.usage.calls);
    expect(server.stats.chatRequests).toBeGreaterThanOrEqual(3);
    expect(run.batchLimits).toMatchObject({ "gpt-4o-mini": { enqueuedTokens: 1_000 } });
  });

  describe("(f) online when the organization is out of credit (429 insufficient_quota)", () => {
    // OpenAI answers every call with 429, `"type":"insufficient_quota","code":"insufficient_quota"`, "You exceeded
    // your current quota, please check your plan and billing details": a 429 that no wait will cure, and no
    // sample's fault. It used to be retried as a rate limit (the client's 2 retries inside each of 5 deliveries,
    // the governor cutting its rate each time: 15 calls and ~15 s a sample), and then each sample FAILED, for
    // good: a topped-up account could not resume them.
    const SAMPLES = 3;
    let shared: Promise<{
      server: ForeignServer;
      dir: string;
      stopped: Awaited<ReturnType<typeof runLocal>>;
    }> | null = null;
    const once = () => {
      shared ??= (async () => {
        const server = await serve({ quotaExhausted: true });
        const dir = tempDir("mmevol-foreign-quota-");
        dirs.push(dir);
        writeBenchShard(dir.path, { samples: SAMPLES, name: RUN });
        const stopped = await runLocal(quotaRun(server, dir.path));
        return { server, dir: dir.path, stopped };
      })();
      return shared;
    };
    const quotaRun = (server: ForeignServer, dir: string) => ({
      shards: [join(dir, `${RUN}.jsonl`)],
      out: join(dir, "out"),
      run: RUN,
      concurrency: 2,
      config: { rounds: 1 },
      llm: new OpenAiLlm({ apiKey: API_KEY, baseURL: server.url, timeoutMs: 30_000 }),
    });

    it("(f1) stops the run at once, with the provider's reason, and fails no sample", async () => {
      const { server, dir, stopped } = await once();
      expect(stopped.interrupted).toBe(true);
      expect(stopped.stoppedFor).toMatch(/out of quota \(insufficient_quota\).*exceeded your current quota/);
      // The calls in flight when the first refusal came, each with the client's own 2 retries.
      expect(server.stats.chatRequests).toBeLessThanOrEqual(2 * 3);
      const state = new SqliteStateStore(join(dir, "out/.mmevol/state.sqlite"));
      try {
        const counts = state.countByStatus(RUN, RUN);
        expect(counts.FAILED).toBe(0);
        expect(counts.DONE).toBe(0);
      } finally {
        state.close();
      }
    });

    it("(f2) resumes once the account is topped up: the same run finishes every sample", async () => {
      const { server, dir } = await once();
      server.topUp();
      const resumed = await runLocal(quotaRun(server, dir));
      expect(resumed.interrupted).toBe(false);
      expect(resumed.stoppedFor).toBeNull();
      const counts = ReportCounts.parse(readJson(join(dir, `out/reports/${RUN}/${RUN}.json`)).counts);
      expect(counts).toMatchObject({ lines: SAMPLES, failed: 0, addsUp: true });
      expect(counts.evolved + counts.passedThrough).toBe(SAMPLES);
    });

    it("(f3) the CLI says so and exits 3, then the same command finishes the run", async () => {
      const server = await serve({ quotaExhausted: true });
      const dir = tempDir("mmevol-foreign-quota-cli-");
      dirs.push(dir);
      const shard = writeBenchShard(dir.path, { samples: 2, name: RUN });
      const args = ["run", shard, "--out", join(dir.path, "out"), "--rounds", "1", "--quiet"];
      const env = { OPENAI_API_KEY: API_KEY, OPENAI_BASE_URL: server.url };
      const refused = await runCli(args, env);
      expect(refused.code).toBe(3);
      expect(refused.stderr).toContain("mmevol: stopped: LLM call refused: the account is out of quota");
      expect(refused.stderr).toContain("no sample failed for it");
      expect(refused.stderr).not.toContain(API_KEY);
      server.topUp();
      const resumed = await runCli(args, env);
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(resumed.stdout).toMatch(/2 lines = \d+ evolved \+ \d+ passed through \+ 0 failed \+ 0 rejected/);
    });
  });

  it("(g) a key the server refuses (401) stops the run with no sample failed; the same command with the right key finishes it", async () => {
    const server = await serve({ apiKey: API_KEY });
    const dir = tempDir("mmevol-foreign-key-");
    dirs.push(dir);
    const shard = writeBenchShard(dir.path, { samples: 2, name: RUN });
    const args = ["run", shard, "--out", join(dir.path, "out"), "--rounds", "1", "--quiet"];
    const wrong = "sk-wrong-0123456789abcdefghijklmn";
    const refused = await runCli(args, { OPENAI_API_KEY: wrong, OPENAI_BASE_URL: server.url });
    expect(refused.code, refused.stderr).toBe(3);
    expect(refused.stderr).toContain(
      "mmevol: stopped: LLM call refused: the key was not accepted (HTTP 401)",
    );
    expect(refused.stderr).toContain("no sample failed for it");
    expect(refused.stderr).not.toContain(wrong);
    const resumed = await runCli(args, { OPENAI_API_KEY: API_KEY, OPENAI_BASE_URL: server.url });
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stdout).toMatch(/2 lines = \d+ evolved \+ \d+ passed through \+ 0 failed \+ 0 rejected/);
  });
});
