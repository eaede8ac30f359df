import { describe, expect, it } from "vitest";
import { CompletionSizer } from "../../functions/pipeline/completion-sizer.ts";

const evolve = { model: "gpt-4o-mini", schemaName: "evolve_perception", maxTokens: 4096 };

describe("CompletionSizer", () => {
  it("sends the cap until it has seen enough answers, then 1.25 x the longest plus 64, rounded up to 64", () => {
    const sizer = new CompletionSizer({ minObservations: 4 });
    for (const tokens of [300, 410, 380]) sizer.observe(evolve, tokens);
    expect(sizer.maxTokensFor(evolve)).toBe(4096);
    sizer.observe(evolve, 350);
    // 410 x 1.25 + 64 = 576.5, rounded up to 640.
    expect(sizer.maxTokensFor(evolve)).toBe(640);
  });

  it("keeps each model and schema apart", () => {
    const sizer = new CompletionSizer({ minObservations: 1 });
    sizer.observe(evolve, 1000);
    expect(sizer.maxTokensFor(evolve)).toBe(1344);
    expect(sizer.maxTokensFor({ ...evolve, schemaName: "evolve_reasoning" })).toBe(4096);
    expect(sizer.maxTokensFor({ ...evolve, model: "gpt-4.1-mini" })).toBe(4096);
  });

  it("never goes above the cap nor below the floor", () => {
    const sizer = new CompletionSizer({ minObservations: 1, floorTokens: 256 });
    sizer.observe(evolve, 3900);
    expect(sizer.maxTokensFor(evolve)).toBe(4096);
    const short = new CompletionSizer({ minObservations: 1, floorTokens: 256 });
    short.observe(evolve, 10);
    expect(short.maxTokensFor(evolve)).toBe(256);
  });

  it("sizes in proportion to each call's own cap (the judge's follows its candidates)", () => {
    const sizer = new CompletionSizer({ minObservations: 1, marginTokens: 0, floorTokens: 1 });
    const judge = (maxTokens: number) => ({ model: "m", schemaName: "judge", maxTokens });
    // Half of a 1,000-token cap was used: a 2,000-token cap is sized at 1.25 x 1,000.
    sizer.observe(judge(1000), 500);
    expect(sizer.maxTokensFor(judge(2000))).toBe(1280);
    expect(sizer.maxTokensFor(judge(400))).toBe(256);
  });

  it("forgets a long answer once the window has moved past it", () => {
    const sizer = new CompletionSizer({ minObservations: 1, window: 4 });
    sizer.observe(evolve, 2000);
    for (let i = 0; i < 3; i++) sizer.observe(evolve, 200);
    expect(sizer.maxTokensFor(evolve)).toBe(2624);
    sizer.observe(evolve, 200);
    expect(sizer.maxTokensFor(evolve)).toBe(320);
  });
});
