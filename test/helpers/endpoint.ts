import { setTimeout as sleep } from "node:timers/promises";
import OpenAI from "openai";
import { classifyFailure, scrubSecrets } from "../../functions/adapters/openai/classify.ts";
import {
  type RateLimitSnapshot,
  readRateLimit,
  toChatCompletionParams,
} from "../../functions/adapters/openai/openai-llm.ts";
import { AccountRefusedError } from "../../functions/ports/errors.ts";
import type { LlmRequest } from "../../functions/ports/llm.ts";

/**
 * Why a benchmark cannot start against a server, said in one line and no stack trace: `exitCode` 2 for a bad
 * option (as `mmevol run`), 3 when the server refuses the key or the account or cannot be reached (as
 * `mmevol run`), 1 otherwise.
 */
export class BenchSetupError extends Error {
  readonly exitCode: 1 | 2 | 3;
  constructor(message: string, exitCode: 1 | 2 | 3 = 1) {
    super(message);
    this.name = "BenchSetupError";
    this.exitCode = exitCode;
  }
}

/** A failed call of a probe, named: exit code 3 when the key or the account is refused or the server unreachable. */
function probeFailure(endpoint: ForeignEndpoint, what: string, error: unknown): BenchSetupError {
  const reason = scrubSecrets(error instanceof Error ? error.message : String(error), [endpoint.apiKey]);
  const refused = classifyFailure(error, [endpoint.apiKey]) instanceof AccountRefusedError;
  return new BenchSetupError(`${what} failed: ${reason}`, refused ? 3 : 1);
}

/**
 * A benchmark run as a script: a BenchSetupError (a wrong key, no server, a bad option, no limit header) ends
 * it with its message on stderr and its exit code, instead of an uncaught error's stack trace; anything else
 * is a bug and keeps its stack.
 */
export function exitOnSetupError(tag: string): void {
  const end = (error: unknown) => {
    if (error instanceof BenchSetupError) {
      process.stderr.write(`[bench:${tag}] ${error.message}\n`);
      process.exit(error.exitCode);
    }
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  };
  process.on("uncaughtException", end);
  process.on("unhandledRejection", end);
}

/**
 * An OpenAI-compatible server outside this repository that a benchmark measures instead of the simulator
 * (`--base-url`), with the key from OPENAI_API_KEY (never printed).
 */
export interface ForeignEndpoint {
  readonly baseURL: string;
  readonly apiKey: string;
}

/** The endpoint `--base-url` names, or null for the simulator. Refuses what is not an http(s) URL. */
export function foreignEndpoint(baseUrl: string | undefined): ForeignEndpoint | null {
  if (baseUrl === undefined || baseUrl === "") return null;
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    throw new BenchSetupError(
      `--base-url must be an http(s) URL such as http://localhost:8000/v1, got ${baseUrl}`,
      2,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new BenchSetupError(`--base-url must be an http(s) URL, got ${url.protocol} in ${baseUrl}`, 2);
  }
  return { baseURL: baseUrl.replace(/\/+$/, ""), apiKey: process.env.OPENAI_API_KEY || "sk-none" };
}

/** Where a benchmark's requests go, for its printed title. */
export const serverName = (endpoint: ForeignEndpoint | null): string =>
  endpoint === null ? "the simulator" : new URL(endpoint.baseURL).host;

/** A small structured request, well under the 1,024 tokens of a cacheable prefix: a warm-up or a probe. */
export const tinyRequest = (model: string, name: string): LlmRequest => ({
  model,
  messages: [{ role: "user", content: `${name}: answer with one word.` }],
  schemaName: name.toLowerCase().replace(/[^a-z0-9]+/g, "_"),
  schema: {
    type: "object",
    properties: { answer: { type: "string" } },
    required: ["answer"],
    additionalProperties: false,
  },
  temperature: 0,
  maxTokens: 64,
  seed: 1,
});

/** What one small request tells about a server: its `x-ratelimit-*` headers, and what its usage reports. */
export interface ServerProbe extends RateLimitSnapshot {
  /** Whether the answer's usage has `prompt_tokens_details.cached_tokens`; without it no token is priced cached. */
  readonly reportsCachedTokens: boolean;
  /** What the probe itself was charged, as a limiter charges: its prompt tokens plus its max_tokens. */
  readonly ownTokens: number;
}

const NO_HEADERS: RateLimitSnapshot = {
  limitRequests: null,
  remainingRequests: null,
  limitTokens: null,
  remainingTokens: null,
};

/**
 * One small request (well under the 1,024 tokens of a cacheable prefix) to `model`: the server's limits and
 * what is left of them, and whether it reports cached tokens. A failure names the server and the reason, with
 * the key scrubbed from whatever the server sent back.
 */
export async function probeServer(endpoint: ForeignEndpoint, model: string): Promise<ServerProbe> {
  const client = new OpenAI({ ...endpoint, maxRetries: 2 });
  try {
    const request = tinyRequest(model, "Limit probe");
    const { data, response } = await client.chat.completions
      .create(toChatCompletionParams(request))
      .withResponse();
    return {
      ...(readRateLimit(response.headers) ?? NO_HEADERS),
      reportsCachedTokens: typeof data.usage?.prompt_tokens_details?.cached_tokens === "number",
      ownTokens: (data.usage?.prompt_tokens ?? 0) + (request.maxTokens ?? 0),
    };
  } catch (error) {
    throw probeFailure(endpoint, `a small request to ${serverName(endpoint)} (${model})`, error);
  }
}

/**
 * Whether the server has the Batch API that batch mode needs, by listing one of its batches (as batch mode's
 * recovery does). Throws, naming the server and the status, when it has not (404, 405, 501) or the call fails.
 */
export async function probeBatchApi(endpoint: ForeignEndpoint): Promise<void> {
  const client = new OpenAI({ ...endpoint, maxRetries: 2 });
  try {
    await client.batches.list({ limit: 1 });
  } catch (error) {
    const status = error instanceof OpenAI.APIError ? error.status : undefined;
    if (status === 404 || status === 405 || status === 501)
      throw new BenchSetupError(
        `${serverName(endpoint)} has no Batch API (GET /batches answered ${status}): batch mode needs its files and batches endpoints`,
      );
    throw probeFailure(endpoint, `the Batch API call GET /batches to ${serverName(endpoint)}`, error);
  }
}

/** The server's tokens-per-minute limit for `model`, from its `x-ratelimit-limit-tokens` header; null if none. */
export const probeTokenLimit = async (endpoint: ForeignEndpoint, model: string): Promise<number | null> =>
  (await probeServer(endpoint, model)).limitTokens;

/** Short of a full budget by at most this share of a minute counts as full (the probe spends a little). */
const FULL_ENOUGH = 0.02;

/**
 * How much of a minute's refill the server's token budget lacks, by its `x-ratelimit-*-tokens` headers, the
 * probe's own charge not counted; null when they do not say. `limit` stands in for a limit header the server
 * does not send (as `--tpm` gives it). Tokens only: they are what the figures measure, and a request limit may
 * be per day (some servers' is), which no wait of a minute refills.
 */
export function budgetShortfall(
  probe: Pick<ServerProbe, "limitTokens" | "remainingTokens" | "ownTokens">,
  limit: number | null = null,
): number | null {
  const of = probe.limitTokens ?? limit;
  if (of === null || of <= 0 || probe.remainingTokens === null) return null;
  return Math.max(0, of - Math.max(0, probe.remainingTokens) - probe.ownTokens) / of;
}

/**
 * Waits until the server's budget for `model` is full again, as a rate benchmark's figures assume at its start
 * (the governor starts with a full minute, and the steady window replays the run on a full bucket). A run just
 * before, such as the other rate benchmark in `npm run bench`, leaves it spent: the new run's first minute then
 * meets 429s and a lower use. Probes, waits the time the shortfall takes to refill at the limit, probes again
 * (at most 5 times). A server that reports no remaining tokens (or no limit, and `limit` does not give it) is
 * waited on for a minute, after which any token bucket is full.
 */
export async function awaitFullBudget(
  endpoint: ForeignEndpoint,
  model: string,
  options: {
    readonly say?: (line: string) => void;
    readonly wait?: (ms: number) => Promise<unknown>;
    /** The limit the benchmark was given (`--tpm`), for a server that sends no x-ratelimit-limit-tokens. */
    readonly limit?: number | null;
  } = {},
): Promise<ServerProbe> {
  const say = options.say ?? ((line: string) => process.stderr.write(`${line}\n`));
  const wait = options.wait ?? ((ms: number) => sleep(ms));
  const server = serverName(endpoint);
  for (let probes = 1; ; probes++) {
    const probe = await probeServer(endpoint, model);
    const shortfall = budgetShortfall(probe, options.limit ?? null);
    if (shortfall === null) {
      say(
        `${server} does not report its remaining token budget (x-ratelimit-remaining-tokens and -limit-tokens): waiting 60 s, after which it is full`,
      );
      await wait(60_000);
      return probe;
    }
    if (shortfall <= FULL_ENOUGH) return probe;
    if (probes === 5) {
      say(
        `${server}'s budget is still ${(shortfall * 100).toFixed(0)}% short after ${probes} probes: starting anyway`,
      );
      return probe;
    }
    const ms = Math.ceil(shortfall * 60_000) + 500;
    say(
      `${server}'s token budget for ${model} is ${(shortfall * 100).toFixed(0)}% short of full (${probe.remainingTokens} of ${probe.limitTokens ?? options.limit} left): waiting ${(ms / 1000).toFixed(0)} s for it to refill, as the rate figures assume a full budget at the start`,
    );
    await wait(ms);
  }
}

/**
 * The limit a rate benchmark measures use against: the one given, else (a foreign server) the one its headers
 * report, else the simulator's default. Throws when a foreign server reports none and none was given. A limit
 * given above the one a server's header reports is not the one that applies: the governors believe the lower
 * header (as the server enforces it), so a run goes at that rate, and use measured against the higher figure
 * would read as a miss. The header's is taken then, and said; a limit given below the header's is kept (the
 * governor is told it, and paces under the server's).
 */
export async function benchTokenLimit(
  given: string | undefined,
  endpoint: ForeignEndpoint | null,
  model: string,
  simulatorDefault: number,
  say: (line: string) => void = (line) => process.stderr.write(`${line}\n`),
): Promise<number> {
  if (given !== undefined) {
    const tpm = Number(given);
    if (!Number.isInteger(tpm) || tpm <= 0)
      throw new BenchSetupError(`--tpm must be a positive integer, got ${given}`, 2);
    if (endpoint === null) return tpm;
    const reported = await probeTokenLimit(endpoint, model);
    if (reported !== null && reported > 0 && reported < tpm) {
      say(
        `${serverName(endpoint)} reports a limit of ${reported} tokens/min for ${model} (x-ratelimit-limit-tokens), below --tpm ${tpm}: the rate governor paces to the lower one, so the figures are measured against ${reported}`,
      );
      return reported;
    }
    if (reported !== null && reported > tpm)
      say(
        `${serverName(endpoint)} reports a limit of ${reported} tokens/min for ${model}, above --tpm ${tpm}: the governor is told ${tpm}, and use is measured against it`,
      );
    return tpm;
  }
  if (endpoint === null) return simulatorDefault;
  const learned = await probeTokenLimit(endpoint, model);
  if (learned === null || learned <= 0) throw new NoLimitHeaderError(endpoint, model);
  return learned;
}

/** The server answered, but with no x-ratelimit-limit-tokens header: its limit must be given (`--tpm`). */
export class NoLimitHeaderError extends BenchSetupError {
  constructor(endpoint: ForeignEndpoint, model: string) {
    super(
      `${serverName(endpoint)} sent no x-ratelimit-limit-tokens header for ${model}: give its limit with --tpm`,
      2,
    );
    this.name = "NoLimitHeaderError";
  }
}

const SCALED_MINUTES = 4;
/**
 * What one sample's round of the cost benchmarks charges a limit, about: an evolve and a judge call, in our
 * layout and in the reference's (its flat 4,096 max_tokens charge more).
 */
export const TOKENS_PER_SAMPLE = 8_000;
/**
 * What one sample's round of a rate benchmark charges a limit: an evolve and a judge call, each its prompt and
 * its sized max_tokens (2,718 and 2,787 a call against the foreign test server, 2026-11-28). The simulator's
 * answers charge more, so a run sized with it lasts 4 minutes or more.
 */
export const RATE_TOKENS_PER_SAMPLE = 5_500;

/** Fewest samples a rate benchmark scales down to at a low limit: 40 calls. */
const MIN_SAMPLES = 20;

/**
 * How many samples a rate benchmark runs: `--samples` when given; against another server (`foreign`), about 4
 * minutes of work at its limit, counting RATE_TOKENS_PER_SAMPLE, and at least 20 samples. With less, its first
 * minute's full bucket is most of the run and the steady window left is short: 74 s at 400,000 tokens/min and
 * 120 samples against the foreign test server; 111 s at 200,000 and 120 on the emulated stack, where the 6 s
 * of refill its governor keeps unspent then cost 5% of the figure. With the simulator: the benchmark's
 * default at the simulator's default limit (its answers charge more, so a few minutes); at a higher limit the
 * 4 minutes; at a lower one those too, up to the default's samples and at least 20 (the default's 200 samples
 * at 30,000 tokens/min would take over an hour).
 */
export function benchSamples(
  given: string | undefined,
  tpm: number,
  defaults: { readonly samples: number; readonly tpm: number },
  foreign = false,
): number {
  if (given !== undefined) {
    const samples = Number(given);
    if (!Number.isInteger(samples) || samples <= 0)
      throw new BenchSetupError(`--samples must be a positive integer, got ${given}`, 2);
    return samples;
  }
  const scaled = Math.ceil((SCALED_MINUTES * tpm) / RATE_TOKENS_PER_SAMPLE);
  if (foreign) return Math.max(MIN_SAMPLES, scaled);
  if (tpm === defaults.tpm) return defaults.samples;
  if (tpm < defaults.tpm) return Math.min(defaults.samples, Math.max(MIN_SAMPLES, scaled));
  return Math.max(defaults.samples, scaled);
}
