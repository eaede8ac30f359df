import { describe, expect, it } from "vitest";
import { budgetDelaySeconds } from "../../functions/runtime/lambda.ts";

describe("budgetDelaySeconds: how long a message with no rate budget stays away", () => {
  it("doubles with every look that found no budget, jittered between half and all of it, up to 30 s", () => {
    const most = () => 0.999_999;
    const least = () => 0;
    expect([0, 1, 2, 3, 4, 5, 6, 10].map((waits) => budgetDelaySeconds(waits, 100, most))).toEqual([
      1, 2, 4, 8, 16, 30, 30, 30,
    ]);
    expect([0, 1, 2, 3, 4, 5].map((waits) => budgetDelaySeconds(waits, 100, least))).toEqual([
      1, 1, 2, 4, 8, 15,
    ]);
  });

  it("never comes back before the budget's own wait, and never later than 30 s", () => {
    expect(budgetDelaySeconds(0, 12_300, () => 0)).toBe(13);
    expect(budgetDelaySeconds(0, 600_000, () => 0)).toBe(30);
    expect(budgetDelaySeconds(0, null, () => 0)).toBe(1);
  });
});
