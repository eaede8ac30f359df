// Dollars per kept evolved item, same shard, same simulator (its prefix cache billing like the provider's):
//   reference: the original code's layout (image first, the sample spliced into the template, so no two calls
//              share a prefix), no rule pre-filter, online;
//   online:    ours (static prefix first and identical across calls, image last, pre-filters);
//   batch:     ours through the Batch API (the simulator's /v1/files and /v1/batches).
// Targets: online <= 0.7x and batch <= 0.35x the reference. Also measures the cost levers: the cached share of
// evolve prompts, how often an image was shrunk, judge calls carrying an image, candidates dropped by rule.
// Run: node test/bench/cost.ts [--samples 60] [--rounds 3] [--json out.json]
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import sharp from "sharp";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { OpenAiBatchApi } from "../../functions/adapters/openai/openai-batch-api.ts";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { type SimLogEntry, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { costOf, priceOf } from "../../functions/evolution/pricing.ts";
import type { ShardReport } from "../../functions/evolution/report.ts";
import type { ChatMessage, ContentPart, Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";

const KEY = "sk-bench-cost";

/**
 * The original code's request layout over the same prompts: one user message, the image first, then the
 * template with the sample's data spliced in after its opening paragraph. No two calls share a prefix of
 * 1,024 tokens, so nothing is billed at the cached rate.
 */
export class ReferenceLayoutLlm implements Llm {
  readonly #inner: Llm;
  constructor(inner: Llm) {
    this.#inner = inner;
  }
  complete(request: LlmRequest): Promise<LlmResponse> {
    return this.#inner.complete({ ...request, messages: referenceLayout(request.messages) });
  }
}

export function referenceLayout(messages: readonly ChatMessage[]): ChatMessage[] {
  const parts = (content: ChatMessage["content"]): readonly ContentPart[] =>
    typeof content === "string" ? [{ type: "text", text: content }] : content;
  const all = messages.flatMap((m) => parts(m.content));
  const template = messages
    .filter((m) => m.role === "system")
    .flatMap((m) => parts(m.content))
    .map((p) => (p.type === "text" ? p.text : ""))
    .join("\n\n");
  const sample = messages
    .filter((m) => m.role !== "system")
    .flatMap((m) => parts(m.content))
    .map((p) => (p.type === "text" ? p.text : ""))
    .join("\n\n");
  const cut = template.indexOf("\n\n");
  const spliced =
    cut < 0 ? `${sample}\n\n${template}` : `${template.slice(0, cut)}\n\n${sample}${template.slice(cut)}`;
  const images = all.filter((p) => p.type === "image_url");
  return [{ role: "user", content: [...images, { type: "text", text: spliced }] }];
}

export interface CostRun {
  readonly costUsd: number;
  readonly kept: number;
  readonly usdPerKeptItem: number;
  readonly calls: number;
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
  readonly evolveCachedShare: number;
  readonly judgeCallsWithImage: number;
  readonly ruleDropped: number;
  readonly imagesShrunk: number;
  readonly evolveCallsWithImage: number;
  readonly counts: ShardReport["counts"];
}

async function runOne(
  kind: "reference" | "online" | "batch",
  shard: string,
  dir: string,
  rounds: number,
  model: string,
) {
  // A fresh simulator per run: each starts with a cold prefix cache, like a new day at the provider.
  const sim = await startSimulator({ apiKey: KEY, batch: { completeAfterMs: 50 } });
  try {
    const online = new OpenAiLlm({ apiKey: KEY, baseURL: sim.url });
    const out = join(dir, kind);
    const result = await runLocal({
      shards: [shard],
      out,
      run: kind,
      images: dir,
      concurrency: 8,
      config: {
        rounds,
        model,
        ...(kind === "reference" ? { preFilter: false } : {}),
        ...(kind === "batch" ? { mode: "batch" as const } : {}),
      },
      llm: kind === "reference" ? new ReferenceLayoutLlm(online) : online,
      batch: { api: new OpenAiBatchApi({ apiKey: KEY, baseURL: sim.url }), codec: new OpenAiBatchCodec() },
      batchMinPollMs: 20,
      batchMaxPollMs: 200,
    });
    const report = result.reports[0];
    if (!report) throw new Error(`${kind}: no report`);
    const kept = Object.values(report.keptByRound).reduce((sum, k) => sum + k.kept, 0);
    const ruleDropped = Object.values(report.keptByRound).reduce((sum, k) => sum + k.ruleDropped, 0);
    // Chat calls are in the simulator's log; batch lines are not, so the evolve figures come from the usage.
    const log: readonly SimLogEntry[] = sim.stats().log.filter((e) => e.status === 200);
    const evolve = log.filter((e) => e.schemaName?.startsWith("evolve_"));
    const batchStats = sim.batches.stats();
    const evolvePrompt = evolve.reduce((s, e) => s + e.promptTokens, 0);
    const evolveCached = evolve.reduce((s, e) => s + e.cachedTokens, 0);
    const imagesDir = join(out, "work", kind, "images");
    return {
      costUsd: report.usage.costUsd,
      kept,
      usdPerKeptItem: kept > 0 ? report.usage.costUsd / kept : Number.NaN,
      calls: report.usage.calls,
      promptTokens: report.usage.promptTokens,
      cachedTokens: report.usage.cachedTokens,
      completionTokens: report.usage.completionTokens,
      evolveCachedShare:
        kind === "batch"
          ? batchStats.promptTokens > 0
            ? batchStats.cachedTokens / batchStats.promptTokens
            : 0
          : evolvePrompt > 0
            ? evolveCached / evolvePrompt
            : 0,
      judgeCallsWithImage: log.filter((e) => e.schemaName === "judge" && e.hasImage).length,
      ruleDropped,
      imagesShrunk: readdirSync(imagesDir).length,
      evolveCallsWithImage: evolve.filter((e) => e.hasImage).length,
      counts: report.counts,
    } satisfies CostRun;
  } finally {
    await sim.close();
  }
}

/**
 * The generated shard copies a handful of demo images; a real shard's images all differ. Shift each one's
 * brightness a little, so no two samples send the same image (which would share a cacheable prefix).
 */
async function makeImagesDistinct(imagesDir: string): Promise<void> {
  const files = readdirSync(imagesDir).sort();
  for (const [i, name] of files.entries()) {
    const path = join(imagesDir, name);
    const data = await sharp(path)
      .modulate({ brightness: 0.9 + (i % 200) * 0.001, hue: Math.floor(i / 200) })
      .png()
      .toBuffer();
    writeFileSync(path, data);
  }
}

export interface CostFigures {
  readonly samples: number;
  readonly rounds: number;
  readonly reference: CostRun;
  readonly online: CostRun;
  readonly batch: CostRun;
  /** $/kept item of ours online over the reference (target <= 0.7). */
  readonly onlineRatio: number;
  /** $/kept item of ours in batch mode over the reference (target <= 0.35). */
  readonly batchRatio: number;
  /**
   * The reference as the original ran it: round by round over the whole shard, so a sample's next round comes
   * long after the provider's cache (minutes) forgot its image. Its measured tokens, none billed as cached.
   */
  readonly referenceColdUsdPerKeptItem: number;
  readonly onlineRatioToCold: number;
  readonly batchRatioToCold: number;
}

export async function measureCost(
  options: { samples?: number; rounds?: number; model?: string } = {},
): Promise<CostFigures> {
  const samples = options.samples ?? 60;
  const rounds = options.rounds ?? 3;
  const model = options.model ?? "gpt-4o-mini";
  const dir = mkdtempSync(join(tmpdir(), "mmevol-bench-cost-"));
  try {
    const shard = writeBenchShard(dir, { samples, name: "cost", withBoxes: true });
    await makeImagesDistinct(join(dir, "images"));
    const reference = await runOne("reference", shard, dir, rounds, model);
    const online = await runOne("online", shard, dir, rounds, model);
    const batch = await runOne("batch", shard, dir, rounds, model);
    const cold =
      costOf(priceOf(model), {
        promptTokens: reference.promptTokens,
        cachedTokens: 0,
        completionTokens: reference.completionTokens,
      }) / reference.kept;
    return {
      samples,
      rounds,
      reference,
      online,
      batch,
      onlineRatio: online.usdPerKeptItem / reference.usdPerKeptItem,
      batchRatio: batch.usdPerKeptItem / reference.usdPerKeptItem,
      referenceColdUsdPerKeptItem: cold,
      onlineRatioToCold: online.usdPerKeptItem / cold,
      batchRatioToCold: batch.usdPerKeptItem / cold,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      samples: { type: "string", default: "60" },
      rounds: { type: "string", default: "3" },
      model: { type: "string", default: "gpt-4o-mini" },
      json: { type: "string" },
    },
  });
  const figures = await measureCost({
    samples: Number(values.samples),
    rounds: Number(values.rounds),
    model: values.model,
  });
  const row = (name: string, r: CostRun) =>
    `${name.padEnd(10)} ${r.costUsd.toFixed(4).padStart(8)} ${String(r.kept).padStart(5)} ${(r.usdPerKeptItem * 1000).toFixed(3).padStart(9)} ${String(r.calls).padStart(5)} ${(r.evolveCachedShare * 100).toFixed(0).padStart(6)}% ${String(r.ruleDropped).padStart(5)}`;
  console.log(
    `mmevol cost benchmark: ${figures.samples} samples x ${figures.rounds} rounds, ${values.model} list prices`,
  );
  console.log("layout      cost $  kept  m$/kept calls cached  rule-dropped");
  console.log(row("reference", figures.reference));
  console.log(row("online", figures.online));
  console.log(row("batch", figures.batch));
  console.log(`online / reference: ${figures.onlineRatio.toFixed(3)} (target <= 0.7)`);
  console.log(`batch  / reference: ${figures.batchRatio.toFixed(3)} (target <= 0.35)`);
  console.log(
    `against the reference with a cold cache between rounds (the original's round-by-round order): online ${figures.onlineRatioToCold.toFixed(3)}, batch ${figures.batchRatioToCold.toFixed(3)}`,
  );
  console.log(
    `images shrunk ${figures.online.imagesShrunk} for ${figures.online.evolveCallsWithImage} evolve calls with an image; judge calls with an image: ${figures.online.judgeCallsWithImage}`,
  );
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(JSON.stringify({ onlineRatio: figures.onlineRatio, batchRatio: figures.batchRatio }));
}
