import type { LlmRequest } from "../ports/llm.ts";

/**
 * Sizes each call's `max_tokens` from the completions seen (ARCHITECTURE.md, cost and throughput levers). The
 * provider's tokens-per-minute limiter charges a request its prompt plus its whole `max_tokens` when it admits
 * it, whatever the answer uses: an evolve call with the original's flat 4,096 and an answer of a few hundred
 * tokens spends most of its share of the limit on tokens that never come. Sent smaller, more calls fit the
 * same limit (and our own rate governor reserves the same smaller figure).
 *
 * The configured `max_tokens` stays the cap, and the request's identity: answers are stored under the hash of
 * the request as configured, so what was sent does not change which answer a rerun finds. Per model and
 * schema, once `minObservations` answers are seen, a call is sent with `headroom` times the longest of the
 * last `window` completions plus `marginTokens`, rounded up to 64, never below `floorTokens` nor above the
 * cap. Lengths are kept as a share of each call's cap, so a stage whose cap follows its input (the judge's,
 * by its candidates) is sized in proportion. An answer cut at the smaller limit is paid for and stored as a
 * spent try, and the next try goes out at the cap (see askStructured), so sizing never costs a sample.
 *
 * In-process: each Lambda container and each local run learns on its own, from its first calls at the cap.
 */
export interface CompletionSizerOptions {
  /** Completions remembered per model and schema (default 256). */
  readonly window?: number;
  /** Answers seen before any call is sent below its cap (default 8). */
  readonly minObservations?: number;
  /** Factor on the longest completion seen (default 1.25). */
  readonly headroom?: number;
  /** Tokens added after the factor (default 64). */
  readonly marginTokens?: number;
  /** Never sent below this many tokens (default 256). */
  readonly floorTokens?: number;
}

type Sized = Pick<LlmRequest, "model" | "schemaName" | "maxTokens">;

interface Seen {
  /** Completion tokens as a share of the call's cap, a ring of the last `window`. */
  readonly shares: Float64Array;
  count: number;
}

const ROUND_TO = 64;

export class CompletionSizer {
  readonly #window: number;
  readonly #minObservations: number;
  readonly #headroom: number;
  readonly #marginTokens: number;
  readonly #floorTokens: number;
  readonly #seen = new Map<string, Seen>();

  constructor(options: CompletionSizerOptions = {}) {
    this.#window = Math.max(1, Math.floor(options.window ?? 256));
    this.#minObservations = Math.max(1, Math.floor(options.minObservations ?? 8));
    this.#headroom = Math.max(1, options.headroom ?? 1.25);
    this.#marginTokens = Math.max(0, options.marginTokens ?? 64);
    this.#floorTokens = Math.max(1, options.floorTokens ?? 256);
  }

  /** The `max_tokens` to send for `request`, whose own `maxTokens` is the cap. */
  maxTokensFor(request: Sized): number {
    const cap = request.maxTokens;
    const seen = this.#seen.get(keyOf(request));
    if (seen === undefined || seen.count < this.#minObservations) return cap;
    const filled = Math.min(seen.count, this.#window);
    let longest = 0;
    for (let i = 0; i < filled; i++) longest = Math.max(longest, seen.shares[i] ?? 0);
    const wanted = longest * cap * this.#headroom + this.#marginTokens;
    const rounded = Math.ceil(wanted / ROUND_TO) * ROUND_TO;
    return Math.min(cap, Math.max(this.#floorTokens, rounded));
  }

  /** An answer to `request` (sent at whatever size) used `completionTokens`. */
  observe(request: Sized, completionTokens: number): void {
    if (!(request.maxTokens > 0) || !(completionTokens >= 0)) return;
    const key = keyOf(request);
    let seen = this.#seen.get(key);
    if (seen === undefined) {
      seen = { shares: new Float64Array(this.#window), count: 0 };
      this.#seen.set(key, seen);
    }
    seen.shares[seen.count % this.#window] = Math.min(1, completionTokens / request.maxTokens);
    seen.count += 1;
  }
}

const keyOf = (request: Sized): string => `${request.model}\u0000${request.schemaName}`;
