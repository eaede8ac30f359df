import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { SimulatedBatches } from "../../functions/adapters/simulated/batches.ts";
import {
  type PreparedRequest,
  prepareRequest,
  SimulatedEngine,
} from "../../functions/adapters/simulated/engine.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { BatchApi } from "../../functions/ports/batch-api.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { demoShard, readJson, readJsonl, repoRoot, tempDir } from "../helpers/files.ts";
import { warningsLogger } from "../helpers/llm.ts";
import { ReportCounts } from "../helpers/report.ts";

const dirs: { cleanup: () => void }[] = [];
afterAll(() => {
  for (const dir of dirs) dir.cleanup();
});

/**
 * A model whose answer does not depend on the sample's ordinal in item ids (`s1-r0-i1` and `s2-r0-i1` read
 * alike), as a deterministic model may. Two samples of one shard with the same image and items still ask
 * different evolve requests (their item ids differ), but get the same answer, so their judge requests (items
 * named by `judgeName`, without the ordinal) are byte for byte alike: one hash, one batch line.
 */
class OrdinalBlindEngine extends SimulatedEngine {
  override answer(prepared: PreparedRequest) {
    const strip = (text: string) => text.replace(/\bs\d+-(r\d+-i\d+)/g, "$1");
    const messages = prepared.request.messages.map((m) => ({
      ...m,
      content:
        typeof m.content === "string"
          ? strip(m.content)
          : m.content.map((part) => (part.type === "text" ? { ...part, text: strip(part.text) } : part)),
    }));
    return super.answer({
      ...prepared,
      seedText: prepareRequest({ ...prepared.request, messages }).seedText,
    });
  }
}

/** Counts online calls. */
class CountedLlm implements Llm {
  calls = 0;
  readonly #inner = new SimulatedLlm();
  complete(request: LlmRequest): Promise<LlmResponse> {
    this.calls += 1;
    return this.#inner.complete(request);
  }
}

/** The Batch API, recording the custom_id of every request line it is given. */
function recordingApi(inner: BatchApi) {
  const lines: string[] = [];
  const api: BatchApi = {
    uploadFile: (name, content) => {
      for (const line of new TextDecoder().decode(content).split("\n"))
        if (line.trim() !== "") lines.push((JSON.parse(line) as { custom_id: string }).custom_id);
      return inner.uploadFile(name, content);
    },
    createBatch: (fileId, metadata) => inner.createBatch(fileId, metadata),
    getBatch: (id) => inner.getBatch(id),
    listBatches: (since) => inner.listBatches(since),
    fileText: (id) => inner.fileText(id),
  };
  return { api, lines };
}

describe("batch mode, two samples of one shard with the same request in one round", () => {
  it("answers both from one batch line: both evolve, nothing paid twice, no sweep needed", async () => {
    const dir = tempDir("mmevol-dup-request-");
    dirs.push(dir);
    const seeds = readFileSync(demoShard, "utf8")
      .split("\n")
      .filter((line) => line.trim() !== "");
    const kitchen = JSON.parse(seeds[0] ?? "{}") as Record<string, unknown>;
    const shard = join(dir.path, "dup.jsonl");
    // The same line twice under two ids, then a line of its own.
    writeFileSync(
      shard,
      `${[JSON.stringify({ ...kitchen, id: "dup-a" }), JSON.stringify({ ...kitchen, id: "dup-b" }), seeds[1]].join("\n")}\n`,
    );
    const out = join(dir.path, "out");
    const sims = new SimulatedBatches({ engine: new OrdinalBlindEngine() });
    const { api, lines } = recordingApi(sims);
    const llm = new CountedLlm();
    const { logger, warnings } = warningsLogger();
    const result = await runLocal({
      shards: [shard],
      images: join(repoRoot, "examples/seeds"),
      out,
      run: "dup",
      concurrency: 4,
      // Every sample draws the same direction: the two alike samples ask alike in every round.
      config: { rounds: 2, mode: "batch", weights: { perception: 1, reasoning: 0, interaction: 0 } },
      llm,
      batch: { api, codec: new OpenAiBatchCodec() },
      batchMinPollMs: 5,
      batchMaxPollMs: 20,
      logger,
    });

    const state = new SqliteStateStore(join(out, ".mmevol/state.sqlite"));
    const statuses: string[] = [];
    let judged: string[] = [];
    try {
      for await (const s of state.listSamples("dup", "dup"))
        statuses.push(`${s.key}:${s.status}:r${s.round}`);
      judged = (await state.listBatchItems("dup", "dup", "submitted"))
        .map((item) => item.message as { kind: string; sample: string; round: number })
        .filter((m) => m.kind === "judge")
        .map((m) => `${m.sample}/r${m.round}`)
        .sort();
    } finally {
      state.close();
    }
    const reportFile = join(out, "reports/dup/dup.json");

    expect(result.interrupted).toBe(false);
    // 3 evolve requests a round, and 2 judge requests: the alike samples share theirs (one batch line).
    expect(judged.filter((j) => j.endsWith("/r1"))).toHaveLength(2);
    expect(statuses).toEqual(["000000001:DONE:r2", "000000002:DONE:r2", "000000003:DONE:r2"]);
    expect(existsSync(reportFile), "the shard was never finalized").toBe(true);
    const report = readJson(reportFile);
    expect(ReportCounts.parse(report.counts)).toMatchObject({
      lines: 3,
      evolved: 3,
      failed: 0,
      addsUp: true,
    });
    // Every distinct request submitted once, none twice, none asked online.
    expect(lines).toHaveLength(10);
    expect(new Set(lines).size).toBe(lines.length);
    expect(llm.calls).toBe(0);
    // Billed once: the report counts each answer once, the shared one included.
    expect((report.usage as { calls: number }).calls).toBe(lines.length);
    // The second sample moved on when the shared answer was applied, not when the idle sweep found it.
    expect(warnings).not.toContain("re-enqueued dropped work");
    const evolved = readJsonl(join(out, "evolved/dup/dup.jsonl")).map((r) => String(r.id));
    expect(evolved.some((id) => id.startsWith("dup-a-"))).toBe(true);
    expect(evolved.some((id) => id.startsWith("dup-b-"))).toBe(true);
  });
});
