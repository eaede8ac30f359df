import type { DirectionWeights } from "./config.ts";
import { DIRECTIONS, type Direction } from "./schemas.ts";

/** xmur3-style string hash to a 32-bit seed. */
function hashString(text: string): number {
  let h = 1779033703 ^ text.length;
  for (let i = 0; i < text.length; i++) {
    h = Math.imul(h ^ text.charCodeAt(i), 3432918353);
    h = (h << 13) | (h >>> 19);
  }
  h = Math.imul(h ^ (h >>> 16), 2246822507);
  h = Math.imul(h ^ (h >>> 13), 3266489909);
  return (h ^ (h >>> 16)) >>> 0;
}

/** mulberry32: a small, fast, seedable generator of numbers in [0, 1). */
export function seededRandom(key: string): () => number {
  let state = hashString(key);
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The direction of one sample in one round, drawn from a generator keyed by (run seed, sample id, round),
 * so a rerun makes the same choices (METHOD.md §3).
 */
export function chooseDirection(
  seed: number,
  sampleId: string,
  round: number,
  weights: DirectionWeights,
): Direction {
  const draw = seededRandom(`${seed}\u0000${sampleId}\u0000${round}`)();
  const total = DIRECTIONS.reduce((sum, d) => sum + weights[d], 0);
  let acc = 0;
  for (const direction of DIRECTIONS) {
    acc += weights[direction] / total;
    if (draw < acc) return direction;
  }
  // Rounding can leave the last bucket a hair short: fall back to the last direction with weight.
  return [...DIRECTIONS].reverse().find((d) => weights[d] > 0) ?? "perception";
}
