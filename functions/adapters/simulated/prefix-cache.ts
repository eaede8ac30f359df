import { createHash } from "node:crypto";

const MIN_PREFIX = 1024;
const STEP = 128;

/**
 * OpenAI's prompt cache, simulated: a prompt that shares >= 1024 tokens of prefix with an earlier
 * one gets that shared length, rounded down to a multiple of 128, as cached tokens. Only the
 * hashes of prefixes at the 1024 + k*128 boundaries are kept, so memory stays small.
 */
export class PrefixCache {
  readonly #seen = new Set<string>();
  readonly #maxEntries: number;

  constructor(maxEntries = 500_000) {
    this.#maxEntries = maxEntries;
  }

  /** The cached-token count for this token stream; then remembers its prefixes for later requests. */
  lookupAndRemember(tokens: readonly number[]): number {
    if (tokens.length < MIN_PREFIX) return 0;
    // Forgetting everything at once is crude, but a long simulated run must not grow without bound.
    if (this.#seen.size > this.#maxEntries) this.#seen.clear();
    const hash = createHash("sha256");
    let cached = 0;
    for (let end = STEP; end <= tokens.length; end += STEP) {
      hash.update(new Uint8Array(Int32Array.from(tokens.slice(end - STEP, end)).buffer));
      if (end < MIN_PREFIX) continue;
      const key = hash.copy().digest("base64");
      if (this.#seen.has(key)) cached = end;
      else this.#seen.add(key);
    }
    return cached;
  }
}
