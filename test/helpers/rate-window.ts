import { TOKEN_CHARGES, type TokenCharge } from "../../functions/adapters/simulated/server.ts";
import type { LlmUsage } from "../../functions/ports/llm.ts";

/** A rate benchmark's `--token-charge`: what the simulator's limiter charges, checked. */
export function parseTokenCharge(text: string | undefined): TokenCharge {
  const charge = TOKEN_CHARGES.find((name) => name === (text ?? "max_tokens"));
  if (charge === undefined)
    throw new Error(`--token-charge must be ${TOKEN_CHARGES.join(" or ")}, got ${text}`);
  return charge;
}

/** What the limiter charged an answered call: its prompt plus its max_tokens, or plus the tokens it used. */
export const limiterCharge = (
  charge: TokenCharge,
  usage: Pick<LlmUsage, "promptTokens" | "completionTokens">,
  maxTokens: number,
): number => usage.promptTokens + (charge === "usage" ? usage.completionTokens : maxTokens);

/** One answered call as a rate benchmark sees it: when it went out and what the provider's limiter charged. */
export interface ChargedCall {
  readonly at: number;
  readonly charged: number;
}

/**
 * Tokens per minute over the steady part of a run, as a share of the limit. The provider's limiter starts
 * with a full minute of budget, which a run spends at once; so the window opens once that first minute's
 * worth has gone out (and not before `minStartMs` after the start), and closes at the call by which 90% of
 * the tokens had gone out (the tail runs out of work, not of budget).
 */
export function steadyUse(
  calls: readonly ChargedCall[],
  started: number,
  tokensPerMinute: number,
  minStartMs = 15_000,
): { windowSeconds: number; tokensPerMinute: number; useOfLimit: number } {
  const sorted = [...calls].sort((a, b) => a.at - b.at);
  const total = sorted.reduce((sum, c) => sum + c.charged, 0);
  let cumulative = 0;
  let burstSpentAt = started;
  let tailAt = started;
  for (const call of sorted) {
    const before = cumulative;
    cumulative += call.charged;
    if (before < tokensPerMinute && cumulative >= tokensPerMinute) burstSpentAt = call.at;
    if (cumulative >= 0.9 * total) {
      tailAt = call.at;
      break;
    }
  }
  const from = Math.max(started + minStartMs, burstSpentAt);
  const inWindow = sorted.filter((c) => c.at > from && c.at <= tailAt);
  const tokens = inWindow.reduce((sum, c) => sum + c.charged, 0);
  const minutes = (tailAt - from) / 60_000;
  return {
    windowSeconds: +(minutes * 60).toFixed(1),
    tokensPerMinute: minutes > 0 ? Math.round(tokens / minutes) : 0,
    useOfLimit: minutes > 0 ? +(tokens / (tokensPerMinute * minutes)).toFixed(3) : Number.NaN,
  };
}
