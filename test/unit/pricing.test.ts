import { describe, expect, it } from "vitest";
import type { ModelPrice } from "../../functions/evolution/config.ts";
import { costOf, isPriced, PRICES, priceOf } from "../../functions/evolution/pricing.ts";

const MINI: ModelPrice = {
  input: 0.15,
  cachedInput: 0.075,
  output: 0.6,
  batchInput: 0.075,
  batchOutput: 0.3,
};
const CUSTOM: ModelPrice = { input: 1, cachedInput: 0.5, output: 2, batchInput: 0.25, batchOutput: 0.75 };

describe("priceOf", () => {
  it("gives list prices for listed models (METHOD.md §6: $0.15 / $0.60, half in batch)", () => {
    expect(priceOf("gpt-4o-mini")).toEqual(MINI);
    expect(priceOf("gpt-4o")).toEqual(PRICES["gpt-4o"]);
    expect(priceOf("gpt-4o").input).toBe(2.5);
  });

  it("gives the price of the longest listed name for a dated snapshot", () => {
    expect(priceOf("gpt-4o-mini-2024-07-18")).toEqual(MINI);
    expect(priceOf("gpt-4o-2024-08-06")).toEqual(PRICES["gpt-4o"]);
    expect(priceOf("gpt-4.1-mini-2025-04-14")).toEqual(PRICES["gpt-4.1-mini"]);
    expect(priceOf("gpt-4.1-nano-2025-04-14")).toEqual(PRICES["gpt-4.1-nano"]);
  });

  it("prices the first gpt-4o snapshot at its own, higher list price", () => {
    expect(priceOf("gpt-4o-2024-05-13")).toMatchObject({ input: 5, output: 15, batchInput: 2.5 });
    expect(priceOf("gpt-4o-2024-11-20")).toEqual(PRICES["gpt-4o"]);
  });

  it("tells a model without a price, given or listed", () => {
    expect(isPriced("gpt-4o-mini-2024-07-18")).toBe(true);
    expect(isPriced("openai/gpt-4o-mini")).toBe(false);
    expect(isPriced("my-azure-deployment")).toBe(false);
    expect(isPriced("my-azure-deployment", { "my-azure-deployment": CUSTOM })).toBe(true);
  });

  it("does not take a different model that merely shares a prefix for a snapshot", () => {
    // "gpt-4o-minix" is not "gpt-4o-mini" nor a dated "gpt-4o-" snapshot of it.
    expect(priceOf("gpt-4o-minix")).toEqual(PRICES["gpt-4o"]);
    expect(priceOf("gpt-4ox")).toEqual({
      input: 0,
      cachedInput: 0,
      output: 0,
      batchInput: 0,
      batchOutput: 0,
    });
  });

  it("prefers an override to the list, and prices unlisted models by override", () => {
    expect(priceOf("gpt-4o-mini", { "gpt-4o-mini": CUSTOM })).toEqual(CUSTOM);
    expect(priceOf("my-local-vlm", { "my-local-vlm": CUSTOM })).toEqual(CUSTOM);
    // An override for another model changes nothing.
    expect(priceOf("gpt-4o-mini", { "gpt-4o": CUSTOM })).toEqual(MINI);
  });

  it("prices an unknown model at 0", () => {
    expect(priceOf("qwen2-vl-7b")).toEqual({
      input: 0,
      cachedInput: 0,
      output: 0,
      batchInput: 0,
      batchOutput: 0,
    });
  });
});

describe("costOf", () => {
  const usage = { promptTokens: 3_000_000, cachedTokens: 1_000_000, completionTokens: 500_000 };

  it("bills cached prompt tokens at the cached rate online", () => {
    // 2M uncached * 0.15 + 1M cached * 0.075 + 0.5M out * 0.6 = 0.3 + 0.075 + 0.3
    expect(costOf(MINI, usage)).toBeCloseTo(0.675, 12);
    expect(costOf(MINI, usage, "online")).toBeCloseTo(0.675, 12);
  });

  it("bills everything at the full rate online when nothing is cached", () => {
    expect(costOf(MINI, { ...usage, cachedTokens: 0 })).toBeCloseTo(0.45 + 0.3, 12);
  });

  it("bills batch requests at the batch rates, cached prompt tokens at the batch share of the cached rate", () => {
    // 2M uncached * 0.075 + 1M cached * 0.075 * (0.075 / 0.15) + 0.5M out * 0.3
    expect(costOf(MINI, usage, "batch")).toBeCloseTo(0.15 + 0.0375 + 0.15, 12);
    // 2M * 0.25 + 1M * 0.5 * 0.25 + 0.5M * 0.75
    expect(costOf(CUSTOM, usage, "batch")).toBeCloseTo(0.5 + 0.125 + 0.375, 12);
    expect(costOf(MINI, { ...usage, cachedTokens: 0 }, "batch")).toBeCloseTo(0.225 + 0.15, 12);
  });

  it("never bills a negative uncached count when the cached count exceeds the prompt", () => {
    const odd = { promptTokens: 100, cachedTokens: 200, completionTokens: 0 };
    expect(costOf(CUSTOM, odd)).toBeGreaterThanOrEqual(0);
  });

  it("matches the paper's order of magnitude for one sample-round ($0.002-0.003)", () => {
    // About 2.8k image tokens + 3k text in, 1k out for evolve; about 1.5k in, 300 out for the judge.
    const evolve = costOf(MINI, { promptTokens: 5_800, cachedTokens: 0, completionTokens: 1_000 });
    const judge = costOf(MINI, { promptTokens: 1_500, cachedTokens: 0, completionTokens: 300 });
    expect(evolve + judge).toBeGreaterThan(0.001);
    expect(evolve + judge).toBeLessThan(0.004);
  });
});

describe("price overrides for dated snapshots", () => {
  it("applies an override of a model to its dated snapshots", () => {
    const override = { input: 1, cachedInput: 0.5, output: 2, batchInput: 0.5, batchOutput: 1 };
    expect(priceOf("gpt-4o-mini-2024-07-18", { "gpt-4o-mini": override })).toEqual(override);
  });
});
