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

/** The window opens once the provider's bucket, as the run's charges left it, holds less than this share. */
const SPENT = 0.1;

/**
 * A shorter steady window measures nothing: a few calls' 1-3 s latency and the bucket's starting level are
 * most of it (a 10 s window of a 60-sample run read 0.6 one time and 1.3 the next).
 */
export const MIN_WINDOW_SECONDS = 30;

/**
 * Tokens per minute over the steady part of a run, as a share of what the limit allowed in it. The provider's
 * limiter starts with a full minute of budget and refills it at the limit; replaying the run's charges on such
 * a bucket tells when that first minute was spent (at once with many calls in flight, over half a minute when
 * the run starts with few and grows). The window opens at the first call, `minStartMs` or more after the
 * start, that leaves the bucket under a tenth full (or at the first one after `minStartMs` if none does), and
 * closes at the call by which 90% of the tokens had gone out (the tail runs out of work, not of budget). What
 * the limit allowed in it: its refill over the window plus what the bucket still held when it opened.
 * A window under MIN_WINDOW_SECONDS has no figure (`useOfLimit` null): the run was too short for one.
 */
export function steadyUse(
  calls: readonly ChargedCall[],
  started: number,
  tokensPerMinute: number,
  minStartMs = 15_000,
): { windowSeconds: number; tokensPerMinute: number; useOfLimit: number | null } {
  const sorted = [...calls].sort((a, b) => a.at - b.at);
  const total = sorted.reduce((sum, c) => sum + c.charged, 0);
  let cumulative = 0;
  let tailAt = started;
  let level = tokensPerMinute;
  let levelAt = started;
  let opened: { at: number; level: number } | null = null;
  let firstAfterStart: { at: number; level: number } | null = null;
  for (const call of sorted) {
    level =
      Math.min(tokensPerMinute, level + ((call.at - levelAt) * tokensPerMinute) / 60_000) - call.charged;
    levelAt = call.at;
    if (call.at >= started + minStartMs) {
      const here = { at: call.at, level: Math.max(0, level) };
      firstAfterStart ??= here;
      if (opened === null && level < SPENT * tokensPerMinute) opened = here;
    }
    cumulative += call.charged;
    if (cumulative >= 0.9 * total) {
      tailAt = call.at;
      break;
    }
  }
  const start = opened ?? firstAfterStart ?? { at: tailAt, level: 0 };
  const inWindow = sorted.filter((c) => c.at > start.at && c.at <= tailAt);
  const tokens = inWindow.reduce((sum, c) => sum + c.charged, 0);
  const minutes = (tailAt - start.at) / 60_000;
  const allowed = tokensPerMinute * minutes + start.level;
  const long = minutes * 60 >= MIN_WINDOW_SECONDS;
  return {
    windowSeconds: +(minutes * 60).toFixed(1),
    tokensPerMinute: minutes > 0 ? Math.round(tokens / minutes) : 0,
    useOfLimit: long ? +(tokens / allowed).toFixed(3) : null,
  };
}
