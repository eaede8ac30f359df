import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { LlmAnswerError } from "../../functions/ports/errors.ts";
import type { LlmRequest } from "../../functions/ports/llm.ts";

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
    throw new Error(`--base-url must be an http(s) URL such as http://localhost:8000/v1, got ${baseUrl}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new Error(`--base-url must be an http(s) URL, got ${url.protocol} in ${baseUrl}`);
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

/**
 * The server's tokens-per-minute limit for `model`, read from the `x-ratelimit-limit-tokens` header of one
 * small request (well under the 1,024 tokens of a cacheable prefix); null when the server sends none.
 */
export async function probeTokenLimit(endpoint: ForeignEndpoint, model: string): Promise<number | null> {
  const llm = new OpenAiLlm({ ...endpoint, maxRetries: 2 });
  const probe = llm.complete(tinyRequest(model, "Limit probe"));
  // An answer cut short or off its schema still came with the headers; only they are wanted.
  await probe.catch((error: unknown) => {
    if (!(error instanceof LlmAnswerError)) throw error;
  });
  return llm.lastRateLimit(model)?.limitTokens ?? null;
}

/**
 * The limit a rate benchmark measures use against: the one given, else (a foreign server) the one its headers
 * report, else the simulator's default. Throws when a foreign server reports none and none was given.
 */
export async function benchTokenLimit(
  given: string | undefined,
  endpoint: ForeignEndpoint | null,
  model: string,
  simulatorDefault: number,
): Promise<number> {
  if (given !== undefined) {
    const tpm = Number(given);
    if (!Number.isInteger(tpm) || tpm <= 0) throw new Error(`--tpm must be a positive integer, got ${given}`);
    return tpm;
  }
  if (endpoint === null) return simulatorDefault;
  const learned = await probeTokenLimit(endpoint, model);
  if (learned === null || learned <= 0) {
    throw new Error(
      `${serverName(endpoint)} sent no x-ratelimit-limit-tokens header for ${model}: give its limit with --tpm`,
    );
  }
  return learned;
}

const SCALED_MINUTES = 4;
/** What one sample's round charges a limit (an evolve and a judge call), about. */
export const TOKENS_PER_SAMPLE = 8_000;

/** Fewest samples a rate benchmark scales down to at a low limit: 40 calls. */
const MIN_SAMPLES = 20;

/**
 * How many samples a rate benchmark runs: `--samples` when given; else the default, which fills a few minutes
 * at the default limit. A server with a higher limit gets about 4 minutes of work at its limit, counting 8,000
 * tokens a sample (two calls, each charged its prompt and max_tokens: less than our simulator charges, so 4
 * minutes or more): with less, its first minute's full bucket is most of the run and the steady window left
 * to measure is short (74 s at 400,000 tokens/min and 120 samples against the foreign server). A server with a
 * lower limit gets those 4 minutes too, up to the default's samples and at least 20: the default's 200 samples
 * at 30,000 tokens/min would take over an hour.
 */
export function benchSamples(
  given: string | undefined,
  tpm: number,
  defaults: { readonly samples: number; readonly tpm: number },
): number {
  if (given !== undefined) {
    const samples = Number(given);
    if (!Number.isInteger(samples) || samples <= 0)
      throw new Error(`--samples must be a positive integer, got ${given}`);
    return samples;
  }
  if (tpm === defaults.tpm) return defaults.samples;
  const scaled = Math.ceil((SCALED_MINUTES * tpm) / TOKENS_PER_SAMPLE);
  if (tpm < defaults.tpm) return Math.min(defaults.samples, Math.max(MIN_SAMPLES, scaled));
  return Math.max(defaults.samples, scaled);
}
