import { describe, expect, it } from "vitest";
import { LlmAnswerError, LlmCallError } from "../../functions/ports/errors.ts";
import type { Llm } from "../../functions/ports/llm.ts";
import { CountingLlm } from "../../functions/runtime/counting-llm.ts";
import { textRequest } from "../helpers/llm.ts";

const failing = (error: Error): Llm => ({
  complete: async () => {
    throw error;
  },
});

describe("CountingLlm", () => {
  it("counts what an unusable answer was billed (cut, empty, refused), and nothing for a call that got no answer", async () => {
    const usage = { promptTokens: 1_000, cachedTokens: 0, completionTokens: 100 };
    const counted = new CountingLlm(failing(new LlmAnswerError("model refused: no", { usage })));
    await expect(counted.complete(textRequest)).rejects.toBeInstanceOf(LlmAnswerError);
    expect(counted.totals).toMatchObject({
      calls: 1,
      failures: 1,
      promptTokens: 1_000,
      completionTokens: 100,
    });
    // gpt-4o-mini: $0.15 / $0.60 per 1M tokens.
    expect(counted.totals.costUsd).toBeCloseTo((1_000 * 0.15 + 100 * 0.6) / 1e6, 12);

    const unanswered = new CountingLlm(failing(new LlmCallError("timed out", { retryable: true })));
    await expect(unanswered.complete(textRequest)).rejects.toBeInstanceOf(LlmCallError);
    expect(unanswered.totals).toMatchObject({ calls: 0, failures: 1, promptTokens: 0, costUsd: 0 });
  });
});
