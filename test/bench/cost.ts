// Dollars per kept evolved item, same shard, same simulator (its prefix cache billing like the provider's):
//   reference: the original code's layout (image first, the sample spliced into the template, so no two calls
//              share a prefix), no rule pre-filter, online;
//   online:    ours (static prefix first and identical across calls, image last, pre-filters);
//   batch:     ours through the Batch API (the simulator's /v1/files and /v1/batches);
//   image-early (only with --layouts): ours online with the image moved before the direction's text and the
//              sample's data, which METHOD.md does not allow; it measures what "last, the image" costs.
// Targets: online <= 0.7x and batch <= 0.35x the reference. Also measures the cost levers: the cached share of
// evolve prompts, how often an image was shrunk, judge calls carrying an image, candidates dropped by rule.
// Run: node test/bench/cost.ts [--samples 200] [--rounds 3] [--model gpt-4o-mini] [--json out.json]
// Against another OpenAI-compatible server (its own prefix-cache billing and Batch API): --base-url <url>, the
// key in OPENAI_API_KEY. Dollars are the model's list prices applied to the usage the server reports. The
// simulator starts each layout with a cold prefix cache; a foreign server keeps its cache between the three
// runs, so there each layout's prompts start with a marker of their own (layoutMarker) and start cold too.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import sharp from "sharp";
import { lastRateLimitOf, type ReportsRateLimit } from "../../functions/adapters/governor/governed-llm.ts";
import type { RemainingSnapshot } from "../../functions/adapters/governor/governor.ts";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { OpenAiBatchApi } from "../../functions/adapters/openai/openai-batch-api.ts";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { startSimulator } from "../../functions/adapters/simulated/server.ts";
import { costOf, priceOf } from "../../functions/evolution/pricing.ts";
import { evolveDirectionText } from "../../functions/evolution/prompts.ts";
import type { ShardReport } from "../../functions/evolution/report.ts";
import { Direction } from "../../functions/evolution/schemas.ts";
import { layout } from "../../functions/pipeline/shard-config.ts";
import type {
  BatchApi,
  BatchInfo,
  BatchInputLine,
  BatchOutputLine,
} from "../../functions/ports/batch-api.ts";
import { LlmAnswerError } from "../../functions/ports/errors.ts";
import type { ChatMessage, ContentPart, Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import {
  BenchSetupError,
  benchTokenLimit,
  exitOnSetupError,
  type ForeignEndpoint,
  foreignEndpoint,
  probeBatchApi,
  probeServer,
  serverName,
} from "../helpers/endpoint.ts";

const KEY = "sk-bench-cost";
/** This process's benchmark run, in the layouts' markers. */
const RUN_ID = `${process.pid.toString(36)}${Date.now().toString(36)}`;

/**
 * Another server keeps its prefix cache from one layout's run to the next: the batch layout, run after the
 * online one, found the online run's prompts cached (97% of its evolve prompts against 77% run alone, 0.345 of
 * the reference per kept item against 0.403, 30 samples on the foreign test server). A system message of its
 * own before every prompt of a layout, naming the layout and this process, keeps each layout's prefixes apart,
 * so each starts with a cold cache as with the simulator (a fresh one per layout). About a dozen tokens a call.
 */
export const layoutMarker = (kind: string, run: string = RUN_ID): ChatMessage => ({
  role: "system",
  content: `Cost benchmark ${run}, ${kind} layout.`,
});

/** Our requests, laid out another way before they are sent. */
class RelayoutLlm implements Llm, ReportsRateLimit {
  readonly #inner: Llm;
  readonly #relayout: (request: LlmRequest) => readonly ChatMessage[];
  constructor(inner: Llm, relayout: (request: LlmRequest) => readonly ChatMessage[]) {
    this.#inner = inner;
    this.#relayout = relayout;
  }
  /** The server's rate-limit headers pass through, so the run's governor learns its limits. */
  lastRateLimit(model: string): RemainingSnapshot | null {
    return lastRateLimitOf(this.#inner, model);
  }
  complete(request: LlmRequest): Promise<LlmResponse> {
    return this.#inner.complete({ ...request, messages: this.#relayout(request) });
  }
}

/**
 * The original code's request layout over the same prompts: one user message, the image first, then the
 * template with the sample's data spliced in after its opening paragraph. No two calls share a prefix of
 * 1,024 tokens, so nothing is billed at the cached rate.
 */
export const referenceLayoutLlm = (inner: Llm): Llm =>
  new RelayoutLlm(inner, (request) =>
    referenceLayout(
      request.schemaName === "judge" ? originalJudgePrompt(request.messages) : request.messages,
    ),
  );

/**
 * The sections our judge prompt has and the original's had not: the item fields and a worked example, which
 * also carry the judge's static prefix past the 1,024 tokens a provider caches. Billed uncached in the
 * original layout, they would make the reference dearer than the original code was, so it goes without.
 */
const JUDGE_ADDITIONS = [
  /\n## The items\n[\s\S]*?\n(?=## Score)/,
  /\n## A worked example\n[\s\S]*?\n(?=## Output)/,
];

export function originalJudgePrompt(messages: readonly ChatMessage[]): ChatMessage[] {
  return messages.map((message) => {
    if (message.role !== "system" || typeof message.content !== "string") return message;
    let content = message.content;
    for (const section of JUDGE_ADDITIONS) {
      const cut = content.replace(section, "\n");
      if (cut === content) throw new Error(`the judge prompt has no section matching ${section}`);
      content = cut;
    }
    return { ...message, content };
  });
}

/** A message's content as parts: a plain string is one text part. */
const parts = (content: ChatMessage["content"]): readonly ContentPart[] =>
  typeof content === "string" ? [{ type: "text", text: content }] : content;

export function referenceLayout(messages: readonly ChatMessage[]): ChatMessage[] {
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

/**
 * Not METHOD.md's order, measured to show what its "last, the image" costs: the part of the evolve prompt that
 * no direction changes, then the image, then the direction's text and the sample's data. A sample's image then
 * extends the prefix every call shares, and its later rounds (minutes apart in our pipeline, which moves each
 * sample on by itself) can find it in the provider's cache. Online only; `--layouts image-early`.
 */
export const imageEarlyLayoutLlm = (inner: Llm): Llm =>
  new RelayoutLlm(inner, (request) => {
    const direction = Direction.safeParse(request.schemaName.replace(/^evolve_/, ""));
    return direction.success ? imageEarlyLayout(request.messages, direction.data) : request.messages;
  });

export function imageEarlyLayout(messages: readonly ChatMessage[], direction: Direction): ChatMessage[] {
  const tail = `\n\n${evolveDirectionText(direction)}`;
  const [system, user, ...rest] = messages;
  if (
    system?.role !== "system" ||
    typeof system.content !== "string" ||
    !system.content.endsWith(tail) ||
    user?.role !== "user" ||
    rest.length > 0
  )
    throw new Error("the evolve prompt is not a system prompt ending in the direction, then the sample");
  const sample = parts(user.content);
  const text = sample.flatMap((p) => (p.type === "text" ? [p.text] : [])).join("\n\n");
  return [
    { role: "system", content: system.content.slice(0, -tail.length) },
    {
      role: "user",
      content: [
        ...sample.filter((p) => p.type === "image_url"),
        { type: "text", text: `${evolveDirectionText(direction)}\n\n${text}` },
      ],
    },
  ];
}

/** One answered call as the cost figures need it: which schema, whether it carried an image, its tokens. */
interface MeteredCall {
  readonly schemaName: string;
  readonly hasImage: boolean;
  readonly promptTokens: number;
  readonly cachedTokens: number;
}

const carriesImage = (messages: readonly { readonly content: unknown }[]): boolean =>
  messages.some((m) => Array.isArray(m.content) && m.content.some((p) => p?.type === "image_url"));

/** Notes every answered online call, as sent (inside any layout change) and as billed. */
class MeteringLlm implements Llm, ReportsRateLimit {
  readonly calls: MeteredCall[] = [];
  readonly #inner: Llm;
  constructor(inner: Llm) {
    this.#inner = inner;
  }
  /**
   * Passed through: without them the run's governor cannot learn a server's limits, and against one with a
   * limit the layouts ran into 653 429s (retried, so the dollars were right, but no way to treat a provider).
   */
  lastRateLimit(model: string): RemainingSnapshot | null {
    return lastRateLimitOf(this.#inner, model);
  }
  async complete(request: LlmRequest): Promise<LlmResponse> {
    const note = (usage: LlmResponse["usage"]) =>
      this.calls.push({
        schemaName: request.schemaName,
        hasImage: carriesImage(request.messages),
        promptTokens: usage.promptTokens,
        cachedTokens: usage.cachedTokens,
      });
    try {
      const response = await this.#inner.complete(request);
      note(response.usage);
      return response;
    } catch (error) {
      // An answer cut at max_tokens is unusable but billed: a paid call like the others.
      if (error instanceof LlmAnswerError && error.usage !== null) note(error.usage);
      throw error;
    }
  }
}

/**
 * Notes every answered batch line: the input files tell each custom_id's schema and image, the output files
 * its usage. Works the same against the simulator and another server.
 */
class MeteringBatchApi implements BatchApi {
  readonly calls: MeteredCall[] = [];
  readonly #inner: BatchApi;
  readonly #sent = new Map<string, { model: string; schemaName: string; hasImage: boolean }>();
  /** Reads answers as the pipeline does: a line it stores as unusable (cut, empty) is counted with its usage. */
  readonly #codec = new OpenAiBatchCodec();
  readonly #outputs = new Set<string>();
  /** Put before every request's messages (see layoutMarker); none with the simulator. */
  readonly #marker: ChatMessage | null;
  constructor(inner: BatchApi, marker: ChatMessage | null = null) {
    this.#inner = inner;
    this.#marker = marker;
  }
  uploadFile(name: string, content: Uint8Array): Promise<string> {
    const lines: string[] = [];
    for (const line of new TextDecoder().decode(content).split("\n")) {
      if (line.trim() === "") continue;
      const parsed = JSON.parse(line) as BatchInputLine & {
        body: {
          model: string;
          messages: { content: unknown }[];
          response_format?: { json_schema?: { name?: string } };
        };
      };
      const { custom_id, body } = parsed;
      this.#sent.set(custom_id, {
        model: body.model,
        schemaName: body.response_format?.json_schema?.name ?? "",
        hasImage: carriesImage(body.messages),
      });
      lines.push(
        this.#marker === null
          ? line
          : JSON.stringify({ ...parsed, body: { ...body, messages: [this.#marker, ...body.messages] } }),
      );
    }
    return this.#inner.uploadFile(
      name,
      this.#marker === null ? content : new TextEncoder().encode(lines.map((l) => `${l}\n`).join("")),
    );
  }
  createBatch(inputFileId: string, metadata: Readonly<Record<string, string>>): Promise<BatchInfo> {
    return this.#inner.createBatch(inputFileId, metadata);
  }
  async getBatch(id: string): Promise<BatchInfo> {
    const info = await this.#inner.getBatch(id);
    if (info.outputFileId !== null) this.#outputs.add(info.outputFileId);
    return info;
  }
  listBatches(limit: number): Promise<BatchInfo[]> {
    return this.#inner.listBatches(limit);
  }
  async fileText(fileId: string): Promise<string> {
    const text = await this.#inner.fileText(fileId);
    // Each output file is counted once, however often it is read.
    if (this.#outputs.delete(fileId)) {
      for (const line of text.split("\n")) {
        if (line.trim() === "") continue;
        const { custom_id, response } = JSON.parse(line) as BatchOutputLine;
        const sent = this.#sent.get(custom_id);
        if (response?.status_code !== 200 || sent === undefined) continue;
        let usage: LlmResponse["usage"];
        try {
          usage = this.#codec.decode(response.body, sent.model).usage;
        } catch (error) {
          if (!(error instanceof LlmAnswerError) || error.usage === null) continue;
          usage = error.usage;
        }
        const { schemaName, hasImage } = sent;
        this.calls.push({
          schemaName,
          hasImage,
          promptTokens: usage.promptTokens,
          cachedTokens: usage.cachedTokens,
        });
      }
    }
    return text;
  }
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

type Layout = "reference" | "online" | "batch" | "image-early";
/** Run by default; `image-early` only when named. */
const LAYOUTS: readonly Layout[] = ["reference", "online", "batch"];
const ALL_LAYOUTS: readonly Layout[] = [...LAYOUTS, "image-early"];

async function runOne(
  kind: Layout,
  shard: string,
  dir: string,
  rounds: number,
  model: string,
  endpoint: ForeignEndpoint | null,
  tokensPerMinute: number | null,
  foreignPollMs: { readonly min: number; readonly max: number } = { min: 1_000, max: 30_000 },
) {
  // A fresh simulator per run: each starts with a cold prefix cache, like a new day at the provider.
  const sim =
    endpoint === null ? await startSimulator({ apiKey: KEY, batch: { completeAfterMs: 50 } }) : null;
  try {
    const server = endpoint ?? { apiKey: KEY, baseURL: sim?.url ?? "" };
    const online = new MeteringLlm(new OpenAiLlm(server));
    // Another server's prefix cache outlives a layout's run: each layout's prompts start with their own marker.
    const marker = endpoint === null ? null : layoutMarker(kind);
    const sent =
      marker === null ? online : new RelayoutLlm(online, (request) => [marker, ...request.messages]);
    const batchApi = new MeteringBatchApi(new OpenAiBatchApi(server), marker);
    const out = join(dir, kind);
    const started = performance.now();
    process.stderr.write(`[bench:cost] ${kind} layout: ${model}, ${serverName(endpoint)}...\n`);
    const result = await runLocal({
      shards: [shard],
      out,
      run: kind,
      images: dir,
      concurrency: 8,
      config: {
        rounds,
        model,
        // The original sends a flat max_tokens of 4096 and no pre-filter.
        ...(kind === "reference" ? { preFilter: false, sizeMaxTokens: false } : {}),
        ...(kind === "batch" ? { mode: "batch" as const } : {}),
      },
      llm:
        kind === "reference"
          ? referenceLayoutLlm(sent)
          : kind === "image-early"
            ? imageEarlyLayoutLlm(sent)
            : sent,
      batch: { api: batchApi, codec: new OpenAiBatchCodec() },
      batchMinPollMs: endpoint === null ? 20 : foreignPollMs.min,
      batchMaxPollMs: endpoint === null ? 200 : foreignPollMs.max,
      ...(tokensPerMinute === null ? {} : { rateLimit: { tokensPerMinute } }),
    });
    if (result.stoppedFor !== null) throw new Error(`${kind} layout stopped: ${result.stoppedFor}`);
    const report = result.reports[0];
    if (!report) throw new Error(`${kind}: no report`);
    if (report.counts.evolved === 0 && report.counts.failed > 0)
      throw new Error(
        `${kind} layout: all ${report.counts.failed} samples failed, so there is no cost per kept item; the first: ${firstFailure(join(out, layout.errors(kind, report.shard)))}`,
      );
    process.stderr.write(
      `[bench:cost] ${kind} layout: ${report.usage.calls} calls, $${report.usage.costUsd.toFixed(4)} in ${((performance.now() - started) / 1000).toFixed(0)} s\n`,
    );
    const kept = Object.values(report.keptByRound).reduce((sum, k) => sum + k.kept, 0);
    const ruleDropped = Object.values(report.keptByRound).reduce((sum, k) => sum + k.ruleDropped, 0);
    // Every answered call, online or in a batch, as this process sent it and as the server billed it.
    const calls = [...online.calls, ...batchApi.calls];
    const evolve = calls.filter((e) => e.schemaName.startsWith("evolve_"));
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
      evolveCachedShare: evolvePrompt > 0 ? evolveCached / evolvePrompt : 0,
      judgeCallsWithImage: calls.filter((e) => e.schemaName === "judge" && e.hasImage).length,
      ruleDropped,
      imagesShrunk: readdirSync(imagesDir).length,
      evolveCallsWithImage: evolve.filter((e) => e.hasImage).length,
      counts: report.counts,
    } satisfies CostRun;
  } finally {
    await sim?.close();
  }
}

/** The reason of the first failed sample in a run's errors file. */
function firstFailure(errorsFile: string): string {
  if (!existsSync(errorsFile)) return "(no errors file)";
  const first = readFileSync(errorsFile, "utf8").split("\n")[0] ?? "";
  try {
    const { reason } = JSON.parse(first) as { reason?: unknown };
    return typeof reason === "string" ? reason : first;
  } catch {
    return first;
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

/** A layout left out (`--layouts`) has null figures, and so have the ratios that need it. */
export interface CostFigures {
  /** The simulator, or the host of the server measured (`--base-url`). */
  readonly server: string;
  readonly model: string;
  readonly samples: number;
  readonly rounds: number;
  readonly reference: CostRun | null;
  readonly online: CostRun | null;
  readonly batch: CostRun | null;
  /** Ours online with the image right after the direction-independent prompt (not METHOD.md's order). */
  readonly imageEarly: CostRun | null;
  /** $/kept item of ours online over the reference (target <= 0.7). */
  readonly onlineRatio: number | null;
  /** $/kept item of ours in batch mode over the reference (target <= 0.35). */
  readonly batchRatio: number | null;
  /**
   * The reference as the original ran it: round by round over the whole shard, so a sample's next round comes
   * long after the provider's cache (minutes) forgot its image. Its measured tokens, none billed as cached.
   */
  readonly referenceColdUsdPerKeptItem: number | null;
  readonly onlineRatioToCold: number | null;
  readonly batchRatioToCold: number | null;
  readonly imageEarlyRatio: number | null;
  readonly imageEarlyPerCallRatio: number | null;
  /**
   * Dollars per answered call, ours / the reference: the layouts' own cost, apart from the items kept (which
   * follow the simulator's verdicts, random per prompt: 714 against 764 of the same 1,200 calls).
   */
  readonly onlinePerCallRatio: number | null;
  readonly batchPerCallRatio: number | null;
  /** Layouts that did not finish, with the reason; their figures are null. */
  readonly failed: Partial<Record<Layout, string>>;
  /** Whether the server reports cached prompt tokens (null: the simulator, which does). */
  readonly serverReportsCachedTokens: boolean | null;
}

const ratio = (ours: CostRun | null, base: number | null): number | null =>
  ours === null || base === null ? null : ours.usdPerKeptItem / base;

const perCall = (run: CostRun): number => (run.calls > 0 ? run.costUsd / run.calls : Number.NaN);
const perCallRatio = (ours: CostRun | null, reference: CostRun | null): number | null =>
  ours === null || reference === null ? null : perCall(ours) / perCall(reference);

export async function measureCost(
  options: {
    samples?: number;
    rounds?: number;
    model?: string;
    /** Another OpenAI-compatible server instead of a fresh simulator per layout. */
    endpoint?: ForeignEndpoint | null;
    /** The layouts to run, in this order (default all three). */
    layouts?: readonly Layout[];
    /** The limit the runs' governor is told; by default it learns the server's from its headers. */
    tokensPerMinute?: number | null;
    /** Batch polling against another server (default 1 s doubling to 30 s); a test's server answers at once. */
    batchPollMs?: { readonly min: number; readonly max: number };
    say?: (line: string) => void;
  } = {},
): Promise<CostFigures> {
  // 200: kept items vary from run to run (the simulator's verdicts follow each prompt's hash), by up to 18%
  // between the layouts at 60 samples (197 against 233 items kept), 2-7% at 200.
  const samples = options.samples ?? 200;
  const rounds = options.rounds ?? 3;
  const model = options.model ?? "gpt-4o-mini";
  const endpoint = options.endpoint ?? null;
  const layouts = new Set(options.layouts ?? LAYOUTS);
  const say = options.say ?? ((line: string) => process.stderr.write(`[bench:cost] ${line}\n`));
  const failed: Partial<Record<Layout, string>> = {};
  let reportsCached: boolean | null = null;
  if (endpoint !== null) {
    reportsCached = (await probeServer(endpoint, model)).reportsCachedTokens;
    if (!reportsCached)
      say(
        `${serverName(endpoint)} sends no usage.prompt_tokens_details.cached_tokens: every prompt token is priced uncached, in every layout, so the ratios show no caching`,
      );
    // Without files and batches endpoints the batch layout cannot run: say so before the online layouts' hours.
    if (layouts.has("batch")) {
      await probeBatchApi(endpoint).catch((error: unknown) => {
        failed.batch = (error as Error).message;
        layouts.delete("batch");
        say(`batch layout left out: ${failed.batch}`);
      });
    }
  }
  const dir = mkdtempSync(join(tmpdir(), "mmevol-bench-cost-"));
  try {
    const shard = writeBenchShard(dir, { samples, name: "cost", withBoxes: true });
    await makeImagesDistinct(join(dir, "images"));
    // A layout that fails leaves its figures null; the others still run.
    const measured = async (kind: Layout) => {
      if (!layouts.has(kind)) return null;
      try {
        return await runOne(
          kind,
          shard,
          dir,
          rounds,
          model,
          endpoint,
          options.tokensPerMinute ?? null,
          options.batchPollMs,
        );
      } catch (error) {
        failed[kind] = error instanceof Error ? error.message : String(error);
        say(`${kind} layout failed: ${failed[kind]}`);
        return null;
      }
    };
    const reference = await measured("reference");
    const online = await measured("online");
    const batch = await measured("batch");
    const imageEarly = await measured("image-early");
    const cold =
      reference === null
        ? null
        : costOf(priceOf(model), {
            promptTokens: reference.promptTokens,
            cachedTokens: 0,
            completionTokens: reference.completionTokens,
          }) / reference.kept;
    return {
      server: serverName(endpoint),
      model,
      samples,
      rounds,
      reference,
      online,
      batch,
      imageEarly,
      onlineRatio: ratio(online, reference?.usdPerKeptItem ?? null),
      batchRatio: ratio(batch, reference?.usdPerKeptItem ?? null),
      referenceColdUsdPerKeptItem: cold,
      onlineRatioToCold: ratio(online, cold),
      batchRatioToCold: ratio(batch, cold),
      imageEarlyRatio: ratio(imageEarly, reference?.usdPerKeptItem ?? null),
      imageEarlyPerCallRatio: perCallRatio(imageEarly, reference),
      onlinePerCallRatio: perCallRatio(online, reference),
      batchPerCallRatio: perCallRatio(batch, reference),
      failed,
      serverReportsCachedTokens: reportsCached,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `--layouts reference,online`: the named layouts, checked. */
function parseLayouts(text: string | undefined): Layout[] {
  if (text === undefined) return [...LAYOUTS];
  const names = text.split(",").map((name) => name.trim());
  for (const name of names) {
    if (!ALL_LAYOUTS.includes(name as Layout)) {
      throw new BenchSetupError(
        `--layouts takes ${ALL_LAYOUTS.join(", ")} (comma-separated), got ${name}`,
        2,
      );
    }
  }
  return names as Layout[];
}

if (import.meta.main) {
  exitOnSetupError("cost");
  const { values } = parseArgs({
    options: {
      samples: { type: "string", default: "200" },
      rounds: { type: "string", default: "3" },
      model: { type: "string", default: "gpt-4o-mini" },
      "base-url": { type: "string" },
      layouts: { type: "string" },
      /** The limit the runs' governor is told, for a server whose headers do not say it. */
      tpm: { type: "string" },
      json: { type: "string" },
    },
  });
  const endpoint = foreignEndpoint(values["base-url"]);
  const figures = await measureCost({
    samples: Number(values.samples),
    rounds: Number(values.rounds),
    model: values.model,
    endpoint,
    layouts: parseLayouts(values.layouts),
    tokensPerMinute:
      values.tpm === undefined ? null : await benchTokenLimit(values.tpm, endpoint, values.model, 0),
  });
  const row = (name: string, r: CostRun | null) =>
    r === null
      ? `${name.padEnd(10)} (not run)`
      : `${name.padEnd(10)} ${r.costUsd.toFixed(4).padStart(8)} ${String(r.kept).padStart(5)} ${(r.usdPerKeptItem * 1000).toFixed(3).padStart(9)} ${String(r.calls).padStart(5)} ${(r.evolveCachedShare * 100).toFixed(0).padStart(6)}% ${String(r.ruleDropped).padStart(5)}`;
  const at = (value: number | null) => (value === null ? "n/a" : value.toFixed(3));
  console.log(
    `mmevol cost benchmark: ${figures.samples} samples x ${figures.rounds} rounds on ${figures.server}, ${values.model} list prices`,
  );
  console.log("layout      cost $  kept  m$/kept calls cached  rule-dropped");
  console.log(row("reference", figures.reference));
  console.log(row("online", figures.online));
  console.log(row("batch", figures.batch));
  if (figures.imageEarly !== null) console.log(row("img-early", figures.imageEarly));
  console.log(
    `online / reference: ${at(figures.onlineRatio)} (target <= 0.7); dollars per call: ${at(figures.onlinePerCallRatio)}`,
  );
  console.log(
    `batch  / reference: ${at(figures.batchRatio)} (target <= 0.35); dollars per call: ${at(figures.batchPerCallRatio)}`,
  );
  console.log(
    `against the reference with a cold cache between rounds (the original's round-by-round order): online ${at(figures.onlineRatioToCold)}, batch ${at(figures.batchRatioToCold)}`,
  );
  if (figures.imageEarly !== null)
    console.log(
      `online with the image before the direction and the sample (not METHOD.md's order) / reference: ${at(figures.imageEarlyRatio)}; dollars per call: ${at(figures.imageEarlyPerCallRatio)}`,
    );
  const ours = figures.online ?? figures.batch;
  if (ours !== null)
    console.log(
      `images shrunk ${ours.imagesShrunk} for ${ours.evolveCallsWithImage} evolve calls with an image; judge calls with an image: ${ours.judgeCallsWithImage}`,
    );
  for (const [kind, reason] of Object.entries(figures.failed))
    console.log(`${kind} layout FAILED: ${reason}`);
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(JSON.stringify({ onlineRatio: figures.onlineRatio, batchRatio: figures.batchRatio }));
  if (Object.keys(figures.failed).length > 0) process.exitCode = 1;
}
