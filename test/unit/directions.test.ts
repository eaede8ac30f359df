import { describe, expect, it } from "vitest";
import type { DirectionWeights } from "../../functions/evolution/config.ts";
import { chooseDirection, seededRandom } from "../../functions/evolution/directions.ts";
import { DIRECTIONS, type Direction } from "../../functions/evolution/schemas.ts";

const DEFAULT: DirectionWeights = { perception: 0.5, reasoning: 0.25, interaction: 0.25 };
const DRAWS = 20_000;

function shares(weights: DirectionWeights, seed = 3407, round = 1): Record<Direction, number> {
  const counts: Record<Direction, number> = { perception: 0, reasoning: 0, interaction: 0 };
  for (let i = 0; i < DRAWS; i++) counts[chooseDirection(seed, `sample-${i}`, round, weights)] += 1;
  return {
    perception: counts.perception / DRAWS,
    reasoning: counts.reasoning / DRAWS,
    interaction: counts.interaction / DRAWS,
  };
}

function expectShares(actual: Record<Direction, number>, expected: Record<Direction, number>): void {
  for (const d of DIRECTIONS) {
    expect(Math.abs(actual[d] - expected[d]), `${d}: ${actual[d]} vs ${expected[d]}`).toBeLessThanOrEqual(
      0.02,
    );
  }
}

describe("chooseDirection", () => {
  it("is deterministic for the same (seed, sample, round)", () => {
    for (let i = 0; i < 200; i++) {
      const first = chooseDirection(3407, `s${i}`, 2, DEFAULT);
      expect(chooseDirection(3407, `s${i}`, 2, DEFAULT)).toBe(first);
      expect(chooseDirection(3407, `s${i}`, 2, { ...DEFAULT })).toBe(first);
    }
  });

  // Each key component must feed the draw: over many samples, changing it must change some choices.
  const differing = (f: (i: number) => [Direction, Direction]): number => {
    let n = 0;
    for (let i = 0; i < 500; i++) {
      const [a, b] = f(i);
      if (a !== b) n += 1;
    }
    return n;
  };

  it("changes with the seed", () => {
    const n = differing((i) => [
      chooseDirection(3407, `s${i}`, 1, DEFAULT),
      chooseDirection(3408, `s${i}`, 1, DEFAULT),
    ]);
    // Independent draws from 0.5/0.25/0.25 differ with probability 0.625.
    expect(n).toBeGreaterThan(200);
  });

  it("changes with the sample id", () => {
    const n = differing((i) => [
      chooseDirection(3407, `s${i}`, 1, DEFAULT),
      chooseDirection(3407, `s${i}x`, 1, DEFAULT),
    ]);
    expect(n).toBeGreaterThan(200);
  });

  it("changes with the round", () => {
    const n = differing((i) => [
      chooseDirection(3407, `s${i}`, 1, DEFAULT),
      chooseDirection(3407, `s${i}`, 2, DEFAULT),
    ]);
    expect(n).toBeGreaterThan(200);
    const m = differing((i) => [
      chooseDirection(3407, `s${i}`, 2, DEFAULT),
      chooseDirection(3407, `s${i}`, 3, DEFAULT),
    ]);
    expect(m).toBeGreaterThan(200);
  });

  it("does not confuse keys that concatenate alike (seed 1 + sample '2x' vs seed 12 + sample 'x')", () => {
    const n = differing((i) => [
      chooseDirection(1, `2x${i}`, 1, DEFAULT),
      chooseDirection(12, `x${i}`, 1, DEFAULT),
    ]);
    expect(n).toBeGreaterThan(200);
  });

  it("honours the default weights 0.5 / 0.25 / 0.25", () => {
    expectShares(shares(DEFAULT), DEFAULT);
    expectShares(shares(DEFAULT, 42, 3), DEFAULT);
  });

  it("honours custom weights 0/1/0", () => {
    expectShares(shares({ perception: 0, reasoning: 1, interaction: 0 }), {
      perception: 0,
      reasoning: 1,
      interaction: 0,
    });
  });

  it("honours custom weights 1/1/1 (unnormalised)", () => {
    const third = 1 / 3;
    expectShares(shares({ perception: 1, reasoning: 1, interaction: 1 }), {
      perception: third,
      reasoning: third,
      interaction: third,
    });
  });

  it("honours skewed unnormalised weights 2/0/6", () => {
    expectShares(shares({ perception: 2, reasoning: 0, interaction: 6 }), {
      perception: 0.25,
      reasoning: 0,
      interaction: 0.75,
    });
  });

  it("never returns a zero-weight direction", () => {
    const cases: DirectionWeights[] = [
      { perception: 0, reasoning: 1, interaction: 0 },
      { perception: 1, reasoning: 0, interaction: 0 },
      { perception: 0, reasoning: 0, interaction: 1 },
      { perception: 0.3, reasoning: 0, interaction: 0.7 },
      { perception: 0, reasoning: 1e-9, interaction: 0 },
      { perception: 0.1, reasoning: 0.2, interaction: 0 },
    ];
    for (const weights of cases) {
      for (let i = 0; i < 5_000; i++) {
        const d = chooseDirection(7, `z${i}`, i % 4, weights);
        expect(weights[d], `${d} drawn with weights ${JSON.stringify(weights)}`).toBeGreaterThan(0);
      }
    }
  });
});

describe("seededRandom", () => {
  it("repeats for the same key, yields numbers in [0, 1), and differs between keys", () => {
    const a = seededRandom("k");
    const b = seededRandom("k");
    const c = seededRandom("k2");
    const xs = Array.from({ length: 1000 }, () => a());
    expect(Array.from({ length: 1000 }, () => b())).toEqual(xs);
    expect(Array.from({ length: 1000 }, () => c())).not.toEqual(xs);
    for (const x of xs) {
      expect(x).toBeGreaterThanOrEqual(0);
      expect(x).toBeLessThan(1);
    }
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    expect(Math.abs(mean - 0.5)).toBeLessThan(0.05);
  });
});
