import { describe, expect, it } from "vitest";
import { type ChargedCall, steadyUse } from "../helpers/rate-window.ts";

/** `perSecond` tokens a second from `fromS` to `toS`, one call a tenth of a second. */
const steady = (fromS: number, toS: number, perSecond: number): ChargedCall[] =>
  Array.from({ length: Math.round((toS - fromS) * 10) }, (_, i) => ({
    at: (fromS + i / 10) * 1000,
    charged: perSecond / 10,
  }));

describe("steadyUse", () => {
  // A limit of 60,000 tokens a minute: 1,000 a second, and a full bucket of 60,000 at the start.
  const limit = 60_000;

  it("measures a run that spends the first minute at once, then goes at the limit", () => {
    const calls = [{ at: 0, charged: limit }, ...steady(0.1, 120, 1000)];
    const use = steadyUse(calls, 0, limit);
    expect(use.useOfLimit).toBeGreaterThan(0.98);
    expect(use.useOfLimit).toBeLessThan(1.02);
  });

  it("measures a run that spends the first minute over a minute, without counting it as use", () => {
    // 2,000 a second empties the bucket at 1,000 a second net: after a minute. Then at the limit.
    const calls = [...steady(0, 60, 2000), ...steady(60, 150, 1000)];
    const use = steadyUse(calls, 0, limit);
    // The window opens as the bucket falls under a tenth, 54 s in.
    expect(use.windowSeconds).toBeGreaterThan(60);
    expect(use.useOfLimit).toBeGreaterThan(0.98);
    expect(use.useOfLimit).toBeLessThan(1.02);
  });

  it("gives no figure for a run whose steady window is under 30 s", () => {
    // The first minute at once, then the limit for 40 s: the window opens 15 s in and closes at 90% of the
    // tokens, about 35 s in.
    const short = steadyUse([{ at: 0, charged: limit }, ...steady(0.1, 40, 1000)], 0, limit);
    expect(short.windowSeconds).toBeLessThan(30);
    expect(short.windowSeconds).toBeGreaterThan(0);
    expect(short.useOfLimit).toBeNull();
    const long = steadyUse([{ at: 0, charged: limit }, ...steady(0.1, 60, 1000)], 0, limit);
    expect(long.windowSeconds).toBeGreaterThanOrEqual(30);
    expect(long.useOfLimit).not.toBeNull();
  });

  it("counts the budget a run left in the bucket when it never ran short", () => {
    const use = steadyUse(steady(0, 120, 500), 0, limit);
    // Half the refill, and a full minute's bucket never spent.
    expect(use.useOfLimit).toBeLessThan(0.4);
  });
});
