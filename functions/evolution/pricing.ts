import type { ModelPrice } from "./config.ts";

/** List prices in US dollars per million tokens (standard, cached input, Batch API). */
export const PRICES: Readonly<Record<string, ModelPrice>> = {
  "gpt-4o-mini": { input: 0.15, cachedInput: 0.075, output: 0.6, batchInput: 0.075, batchOutput: 0.3 },
  "gpt-4o": { input: 2.5, cachedInput: 1.25, output: 10, batchInput: 1.25, batchOutput: 5 },
  // The first gpt-4o snapshot kept its own, higher price, and has no cached-input discount.
  "gpt-4o-2024-05-13": { input: 5, cachedInput: 5, output: 15, batchInput: 2.5, batchOutput: 7.5 },
  "gpt-4.1-mini": { input: 0.4, cachedInput: 0.1, output: 1.6, batchInput: 0.2, batchOutput: 0.8 },
  "gpt-4.1": { input: 2, cachedInput: 0.5, output: 8, batchInput: 1, batchOutput: 4 },
  "gpt-4.1-nano": { input: 0.1, cachedInput: 0.025, output: 0.4, batchInput: 0.05, batchOutput: 0.2 },
};

const FREE: ModelPrice = { input: 0, cachedInput: 0, output: 0, batchInput: 0, batchOutput: 0 };

/** The price of a model: an override first, then the list, then the longest listed prefix (dated snapshots), else free. */
export function priceOf(model: string, overrides: Readonly<Record<string, ModelPrice>> = {}): ModelPrice {
  return listedPrice(model, overrides) ?? FREE;
}

/** Whether `model` has a price (given or listed): without one its calls count as $0. */
export const isPriced = (model: string, overrides: Readonly<Record<string, ModelPrice>> = {}): boolean =>
  listedPrice(model, overrides) !== null;

function listedPrice(model: string, overrides: Readonly<Record<string, ModelPrice>>): ModelPrice | null {
  const direct = overrides[model] ?? PRICES[model];
  if (direct) return direct;
  const table = { ...PRICES, ...overrides };
  const prefix = Object.keys(table)
    .filter((name) => model.startsWith(`${name}-`))
    .sort((a, b) => b.length - a.length)[0];
  return prefix === undefined ? null : (table[prefix] ?? null);
}

export interface TokenCounts {
  readonly promptTokens: number;
  readonly cachedTokens: number;
  readonly completionTokens: number;
}

export function costOf(price: ModelPrice, usage: TokenCounts, mode: "online" | "batch" = "online"): number {
  const uncached = Math.max(0, usage.promptTokens - usage.cachedTokens);
  // The Batch API discounts every token by the same factor, cached prompt tokens included.
  const batchFactor = price.input > 0 ? price.batchInput / price.input : 0;
  const dollars =
    mode === "batch"
      ? uncached * price.batchInput +
        usage.cachedTokens * price.cachedInput * batchFactor +
        usage.completionTokens * price.batchOutput
      : uncached * price.input +
        usage.cachedTokens * price.cachedInput +
        usage.completionTokens * price.output;
  return dollars / 1_000_000;
}
