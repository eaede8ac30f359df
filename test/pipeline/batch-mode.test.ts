import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { OpenAiBatchApi } from "../../functions/adapters/openai/openai-batch-api.ts";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { SimulatedBatches } from "../../functions/adapters/simulated/batches.ts";
import { startSimulator } from "../../functions/adapters/simulated/server.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { BatchApi } from "../../functions/ports/batch-api.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { type Logger, silentLogger } from "../../functions/ports/runtime.ts";
import { type Progress, runLocal } from "../../functions/runtime/local.ts";
import { demoShard, readJson, tempDir } from "../helpers/files.ts";
import { warningsLogger } from "../helpers/llm.ts";
import { ReportCounts } from "../helpers/report.ts";

const dirs: { cleanup: () => void }[] = [];
afterAll(() => {
  for (const dir of dirs) dir.cleanup();
});

/** Counts online calls, so a test can tell batch answers from online ones. */
class CountedLlm implements Llm {
  calls = 0;
  readonly #inner: Llm;
  constructor(inner: Llm) {
    this.#inner = inner;
  }
  complete(request: LlmRequest): Promise<LlmResponse> {
    this.calls += 1;
    return this.#inner.complete(request);
  }
}

async function run(options: {
  mode: "online" | "batch";
  api?: BatchApi;
  llm?: Llm;
  name?: string;
  out?: string;
  signal?: AbortSignal;
  logger?: Logger;
}) {
  const dir = tempDir();
  dirs.push(dir);
  const out = options.out ?? join(dir.path, options.name ?? "out");
  const llm = new CountedLlm(options.llm ?? new SimulatedLlm());
  const api = options.api ?? new SimulatedBatches();
  let progress: Progress | null = null;
  const result = await runLocal({
    onProgress: (p) => {
      progress = p;
    },
    shards: [demoShard],
    out,
    run: "demo",
    concurrency: 4,
    config: { rounds: 3, mode: options.mode },
    llm,
    batch: { api, codec: new OpenAiBatchCodec() },
    batchMinPollMs: 5,
    batchMaxPollMs: 20,
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.logger ? { logger: options.logger } : {}),
  });
  const last = progress as Progress | null;
  if (result.interrupted) return { out, llm, api, result, report: {}, counts: null, progress: last };
  const report = readJson(join(out, "reports/demo/demo.json"));
  const counts = ReportCounts.parse(report.counts) as ReportCounts | null;
  return { out, llm, api, result, report, counts, progress: last };
}

const usageOf = (report: Record<string, unknown>) =>
  report.usage as { calls: number; promptTokens: number; completionTokens: number; costUsd: number };

describe("batch mode on the local runner", () => {
  it("evolves the same data as online, with no online call, at batch prices", async () => {
    const online = await run({ mode: "online" });
    const batch = await run({ mode: "batch" });
    expect(batch.llm.calls).toBe(0);
    expect(online.llm.calls).toBeGreaterThan(0);
    expect(batch.counts).toEqual(online.counts);
    // The same requests get the same answers: the training data is byte-identical.
    expect(readFileSync(join(batch.out, "evolved/demo/demo.jsonl"), "utf8")).toBe(
      readFileSync(join(online.out, "evolved/demo/demo.jsonl"), "utf8"),
    );
    const u = usageOf(batch.report);
    const o = usageOf(online.report);
    expect(u.promptTokens).toBe(o.promptTokens);
    expect(u.completionTokens).toBe(o.completionTokens);
    // Half of list price for every token, against online's cached-prefix discount: well under online.
    expect(u.costUsd).toBeLessThan(o.costUsd * 0.75);
    expect(u.costUsd).toBeGreaterThan(0);
    // Progress shows what the batches cost as they are applied (it showed $0 in batch mode).
    expect(batch.progress?.llm).toMatchObject({ calls: u.calls, promptTokens: u.promptTokens });
    expect(batch.progress?.llm.costUsd).toBeCloseTo(u.costUsd, 9);
    // One batch per stage per round: evolve and judge of 3 rounds.
    const stats = (batch.api as SimulatedBatches).stats();
    expect(stats.batchesCreated).toBe(6);
  });

  it("retries requests a batch failed in the next batch, then online past maxBatchTries", async () => {
    const failing = new SimulatedBatches({ failShare: 0.3 });
    const result = await run({ mode: "batch", api: failing });
    const clean = await run({ mode: "online", name: "clean" });
    expect(result.counts).toEqual(clean.counts);
    expect(result.counts?.failed).toBe(0);
    expect(failing.stats().linesFailed).toBeGreaterThan(0);
    expect(failing.stats().batchesCreated).toBeGreaterThan(6);
    // The same requests fail the same way in every batch (the share is chosen by custom_id): online finishes them.
    expect(result.llm.calls).toBeGreaterThan(0);
    expect(result.llm.calls).toBeLessThan(clean.llm.calls);
  });

  it("ignores, with a warning, a limits file it cannot read, and runs as if no limit were learned", async () => {
    const dir = tempDir();
    dirs.push(dir);
    const out = join(dir.path, "out");
    mkdirSync(join(out, "work/demo/batches"), { recursive: true });
    writeFileSync(join(out, "work/demo/batches/limits.json"), "{ not json");
    const { logger, warnings } = warningsLogger();
    const { llm, counts } = await run({ mode: "batch", out, logger });
    expect(warnings).toContain("unreadable batch limits file, ignored");
    expect(counts).toMatchObject({ failed: 0, addsUp: true });
    expect(llm.calls).toBe(0);
  });

  it("treats an expired batch as failed and still finishes every sample", async () => {
    const result = await run({ mode: "batch", api: new SimulatedBatches({ expire: true }) });
    expect(result.counts?.addsUp).toBe(true);
    expect(result.counts?.failed).toBe(0);
    expect(result.counts?.evolved).toBeGreaterThan(0);
  });

  it("resumes after an interruption by polling the batches it submitted, never submitting them again", async () => {
    const sim = await startSimulator({ batch: { completeAfterMs: 400 } });
    const dir = tempDir();
    dirs.push(dir);
    const out = join(dir.path, "resumed");
    try {
      const api = () => new OpenAiBatchApi({ apiKey: "sk-test", baseURL: sim.url });
      const controller = new AbortController();
      const logger: Logger = {
        ...silentLogger,
        info: (message) => {
          if (message === "batch submitted") controller.abort();
        },
      };
      const first = await run({ mode: "batch", api: api(), out, signal: controller.signal, logger });
      expect(first.result.interrupted).toBe(true);
      expect(sim.batches.stats().batchesCreated).toBe(1);
      const second = await run({ mode: "batch", api: api(), out });
      expect(second.counts?.addsUp).toBe(true);
      expect(second.counts?.failed).toBe(0);
      // The first round's batch was polled and applied, not sent again: 3 rounds, evolve and judge each.
      expect(sim.batches.stats().batchesCreated).toBe(6);
      expect(second.llm.calls).toBe(0);
    } finally {
      await sim.close();
    }
  });

  it("adopts a batch created just before a crash, found by its metadata, instead of creating another", async () => {
    const inner = new SimulatedBatches();
    let crashes = 1;
    // The provider created the batch, but the process died before it recorded the batch's id.
    const crashing: BatchApi = {
      uploadFile: (name, content) => inner.uploadFile(name, content),
      createBatch: async (fileId, metadata) => {
        const info = await inner.createBatch(fileId, metadata);
        if (crashes-- > 0) throw new Error("killed after createBatch");
        return info;
      },
      getBatch: (id) => inner.getBatch(id),
      listBatches: (limit) => inner.listBatches(limit),
      fileText: (id) => inner.fileText(id),
    };
    const result = await run({ mode: "batch", api: crashing });
    expect(result.counts?.failed).toBe(0);
    expect(result.counts?.evolved).toBeGreaterThan(0);
    expect(inner.stats().batchesCreated).toBe(6);
    expect(result.llm.calls).toBe(0);
  });

  it("runs end to end against the simulator's files and batches endpoints through the openai client", async () => {
    const sim = await startSimulator({ apiKey: "sk-test-not-a-real-key", batch: { completeAfterMs: 30 } });
    try {
      const result = await run({
        mode: "batch",
        api: new OpenAiBatchApi({ apiKey: "sk-test-not-a-real-key", baseURL: sim.url }),
        llm: new OpenAiLlm({ apiKey: "sk-test-not-a-real-key", baseURL: sim.url }),
      });
      expect(result.llm.calls).toBe(0);
      expect(result.counts?.evolved).toBeGreaterThan(0);
      expect(result.counts?.addsUp).toBe(true);
      expect(sim.stats().requests).toBe(0);
      expect(sim.batches.stats().batchesCreated).toBe(6);
      // Every job is closed in the state.
      const state = new SqliteStateStore(join(result.out, ".mmevol/state.sqlite"));
      try {
        expect(await state.listOpenBatchJobs()).toEqual([]);
      } finally {
        state.close();
      }
    } finally {
      await sim.close();
    }
  });
});
