// Rate-governor benchmark: a local run against the in-process simulator with a tokens-per-minute limit and
// 1-3 s latency, paced by the rate governor. Prints the share of the limit used over the steady part of the
// run (target >= 0.95) and the share of requests answered 429 (target <= 1%). Run: npm run bench:rate
// Against another OpenAI-compatible server: --base-url <url> [--model <name>] (key in OPENAI_API_KEY); its
// limit is read from its x-ratelimit-limit-tokens header unless --tpm gives it, and its own latency applies.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { OpenAiLlm, type RateLimitSnapshot } from "../../functions/adapters/openai/openai-llm.ts";
import { startSimulator } from "../../functions/adapters/simulated/server.ts";
import { RunConfig } from "../../functions/evolution/config.ts";
import { LlmAnswerError } from "../../functions/ports/errors.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import {
  awaitFullBudget,
  benchSamples,
  benchTokenLimit,
  exitOnSetupError,
  foreignEndpoint,
  serverName,
} from "../helpers/endpoint.ts";
import { limiterCharge, MIN_WINDOW_SECONDS, parseTokenCharge, steadyUse } from "../helpers/rate-window.ts";

exitOnSetupError("rate");
const { values } = parseArgs({
  options: {
    /**
     * Default: 320 at 700,000 tokens/min, scaled to the limit (benchSamples): a steady window of about 90 s
     * after the run's calls in flight have grown to the limit's (auto concurrency starts at 8).
     */
    samples: { type: "string" },
    rounds: { type: "string", default: "1" },
    /** "auto" sizes it from the limit and the calls' latency, as `mmevol run` does by default; or a number. */
    concurrency: { type: "string", default: "auto" },
    /** The limit: the simulator's (default 700000), or a foreign server's when its headers do not say. */
    tpm: { type: "string" },
    // The limit the governor is told, when it differs from the simulator's (shows AIMD and the headers at work);
    // 0 tells it none, as `mmevol run` without --tpm: it learns the limit from the x-ratelimit-* headers.
    "assume-tpm": { type: "string" },
    "base-url": { type: "string" },
    /** What the simulator's limiter charges: "max_tokens" (prompt + max_tokens, OpenAI's) or "usage". */
    "token-charge": { type: "string" },
    model: { type: "string", default: "gpt-4o-mini" },
    json: { type: "string" },
  },
});
const rounds = Number(values.rounds);
const concurrency = values.concurrency === "auto" ? "auto" : Number(values.concurrency);
const model = values.model;
const endpoint = foreignEndpoint(values["base-url"]);
const tpm = await benchTokenLimit(values.tpm, endpoint, model, 700_000);
const samples = benchSamples(values.samples, tpm, { samples: 320, tpm: 700_000 }, endpoint !== null);
const assumedTpm = values["assume-tpm"] === undefined ? tpm : Number(values["assume-tpm"]);
const tokenCharge = parseTokenCharge(values["token-charge"]);

interface Call {
  readonly startedAt: number;
  /** What the limiter charged: prompt + max_tokens (or prompt + completion, charging usage); 0 for a 429. */
  readonly charged: number;
  /** "cut": answered, but cut at the max_tokens sent (paid, and asked again at the cap). */
  readonly status: "ok" | "cut" | "429" | "error";
  readonly schemaName: string;
  /** The max_tokens sent (sized under the configured cap) and the prompt tokens billed. */
  readonly maxTokens: number;
  readonly promptTokens: number;
}

/** Notes when each call went out and what the limiter charged it; passes the rate-limit headers on. */
class MeteringLlm implements Llm {
  readonly calls: Call[] = [];
  /** The most calls that were in flight at once. */
  peakInFlight = 0;
  #inFlight = 0;
  readonly #inner: OpenAiLlm;
  constructor(inner: OpenAiLlm) {
    this.#inner = inner;
  }
  lastRateLimit(model: string): RateLimitSnapshot | null {
    return this.#inner.lastRateLimit(model);
  }
  async complete(request: LlmRequest): Promise<LlmResponse> {
    const startedAt = performance.now();
    const { schemaName, maxTokens } = request;
    const answered = (usage: LlmResponse["usage"], status: "ok" | "cut") =>
      this.calls.push({
        startedAt,
        charged: limiterCharge(tokenCharge, usage, maxTokens),
        status,
        schemaName,
        maxTokens,
        promptTokens: usage.promptTokens,
      });
    this.#inFlight += 1;
    this.peakInFlight = Math.max(this.peakInFlight, this.#inFlight);
    try {
      const response = await this.#inner.complete(request);
      answered(response.usage, "ok");
      return response;
    } catch (error) {
      if (error instanceof LlmAnswerError && error.usage !== null) {
        answered(error.usage, "cut");
        throw error;
      }
      const is429 = typeof error === "object" && error !== null && "status" in error && error.status === 429;
      const status = is429 ? "429" : "error";
      this.calls.push({ startedAt, charged: 0, status, schemaName, maxTokens, promptTokens: 0 });
      throw error;
    } finally {
      this.#inFlight -= 1;
    }
  }
}

const dir = mkdtempSync(join(tmpdir(), "mmevol-rate-"));
const sim =
  endpoint === null
    ? await startSimulator({ latencyMs: [1000, 3000], tokensPerMinute: tpm, tokenCharge })
    : null;
try {
  const shard = writeBenchShard(dir, { samples, name: "rate" });
  // No client retries: every 429 reaches the governor (and the run's own retry), none is hidden.
  const server = endpoint ?? { apiKey: "bench", baseURL: sim?.url ?? "" };
  const meter = new MeteringLlm(new OpenAiLlm({ ...server, maxRetries: 0 }));
  // The governor and the steady window both start from a full budget: a foreign server's must be.
  if (endpoint !== null) await awaitFullBudget(endpoint, model, { limit: tpm });
  const started = performance.now();
  const result = await runLocal({
    shards: [shard],
    out: join(dir, "out"),
    run: "rate",
    concurrency,
    config: { rounds, model },
    llm: meter,
    ...(assumedTpm > 0 ? { rateLimit: { tokensPerMinute: assumedTpm } } : {}),
  });
  // The simulator counts what it answered; a foreign server's count is the meter's (one request a call: the
  // client does not retry).
  const stats = sim?.stats() ?? {
    requests: meter.calls.length,
    rateLimited: meter.calls.filter((c) => c.status === "429").length,
  };
  const calls = [...meter.calls].sort((a, b) => a.startedAt - b.startedAt);
  const charged = calls.filter((c) => c.status === "ok" || c.status === "cut");
  // Sizing max_tokens: evolve calls' configured cap is one figure (METHOD.md's 4096 unless run.json says).
  const cap = RunConfig.parse({}).maxTokens;
  const evolve = charged.filter((c) => c.schemaName.startsWith("evolve_"));
  const mean = (values: readonly number[]) => values.reduce((a, b) => a + b, 0) / Math.max(1, values.length);
  const evolveSent = mean(evolve.map((c) => c.maxTokens));
  const evolvePrompt = mean(evolve.map((c) => c.promptTokens));
  const steady = steadyUse(
    charged.map((c) => ({ at: c.startedAt, charged: c.charged })),
    started,
    tpm,
  );
  const useOfLimit = steady.useOfLimit;
  const share429 = stats.requests > 0 ? stats.rateLimited / stats.requests : 0;
  const figures = {
    date: new Date().toISOString().slice(0, 10),
    server: serverName(endpoint),
    model,
    samples,
    rounds,
    concurrency,
    peakCallsInFlight: meter.peakInFlight,
    tokensPerMinute: tpm,
    tokenCharge,
    governorTokensPerMinute: assumedTpm,
    requests: stats.requests,
    rateLimited: stats.rateLimited,
    share429: +share429.toFixed(4),
    steadyWindowSeconds: steady.windowSeconds,
    steadyTokensPerMinute: steady.tokensPerMinute,
    /** Null when the steady window was under MIN_WINDOW_SECONDS: too short a run for a figure. */
    useOfLimit,
    meanChargePerCall: Math.round(
      charged.reduce((sum, c) => sum + c.charged, 0) / Math.max(1, charged.length),
    ),
    /** Evolve calls: the mean max_tokens sent (sized) against the cap, and the calls the limit admits per flat-cap call. */
    evolveMaxTokensCap: cap,
    evolveMeanMaxTokensSent: Math.round(evolveSent),
    evolveMedianMaxTokensSent: evolve.map((c) => c.maxTokens).sort((a, b) => a - b)[evolve.length >> 1] ?? 0,
    evolveCallsPerLimitGain: +((evolvePrompt + cap) / Math.max(1, evolvePrompt + evolveSent)).toFixed(3),
    cutAtSizedMaxTokens: charged.filter((c) => c.status === "cut" && c.maxTokens < cap).length,
    totalSeconds: +(result.elapsedMs / 1000).toFixed(1),
    deadLetters: result.deadLetters,
    counts: result.reports[0]?.counts ?? null,
  };
  console.log(
    `mmevol rate governor benchmark (${samples} samples; ${serverName(endpoint)}: ${tpm} tokens/min${tokenCharge === "usage" ? " of tokens used" : ""}, governor ${assumedTpm > 0 ? `told ${assumedTpm}` : "told nothing: limits from the headers"}, ${endpoint === null ? "latency 1-3 s" : "the server's latency"})`,
  );
  console.table({
    [`requests to ${serverName(endpoint)}`]: figures.requests,
    "answered 429": figures.rateLimited,
    "429 share (target <= 1%)": `${(share429 * 100).toFixed(2)}%`,
    "steady window (s)": figures.steadyWindowSeconds,
    "tokens/min charged in the window": figures.steadyTokensPerMinute,
    "use of the limit (target >= 0.95)": useOfLimit ?? `none: window under ${MIN_WINDOW_SECONDS} s`,
    [`mean charge per call (prompt + ${tokenCharge === "usage" ? "completion" : "max_tokens"})`]:
      figures.meanChargePerCall,
    [`evolve max_tokens sent, mean (cap ${cap})`]: figures.evolveMeanMaxTokensSent,
    "evolve max_tokens sent, median": figures.evolveMedianMaxTokensSent,
    "evolve calls per limit vs a flat cap (computed)": `${figures.evolveCallsPerLimitGain}x`,
    "answers cut at a sized max_tokens": figures.cutAtSizedMaxTokens,
    [`calls in flight, most at once (concurrency ${concurrency})`]: figures.peakCallsInFlight,
    "total time (s)": figures.totalSeconds,
  });
  if (useOfLimit === null)
    console.log(
      `The steady window was ${steady.windowSeconds} s, under the ${MIN_WINDOW_SECONDS} s a figure needs: run more --samples.`,
    );
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
} finally {
  await sim?.close();
  rmSync(dir, { recursive: true, force: true });
}
