import { describe, expect, it } from "vitest";
import { LlmAnswerError, LlmCallError } from "../../functions/ports/errors.ts";
import type { Llm, LlmRequest } from "../../functions/ports/llm.ts";
import { CountingLlm } from "../../functions/runtime/counting-llm.ts";

const request: LlmRequest = {
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "hi" }],
  maxTokens: 100,
  schemaName: "judge",
  temperature: 1,
  seed: 3407,
  schema: {},
};

const failing = (error: Error): Llm => ({
  complete: async () => {
    throw error;
  },
});

describe("CountingLlm", () => {
  it("counts what an unusable answer was billed (cut, empty, refused), and nothing for a call that got no answer", async () => {
    const usage = { promptTokens: 1_000, cachedTokens: 0, completionTokens: 100 };
    const counted = new CountingLlm(failing(new LlmAnswerError("model refused: no", { usage })));
    await expect(counted.complete(request)).rejects.toBeInstanceOf(LlmAnswerError);
    expect(counted.totals).toMatchObject({
      calls: 1,
      failures: 1,
      promptTokens: 1_000,
      completionTokens: 100,
    });
    // gpt-4o-mini: $0.15 / $0.60 per 1M tokens.
    expect(counted.totals.costUsd).toBeCloseTo((1_000 * 0.15 + 100 * 0.6) / 1e6, 12);

    const unanswered = new CountingLlm(failing(new LlmCallError("timed out", { retryable: true })));
    await expect(unanswered.complete(request)).rejects.toBeInstanceOf(LlmCallError);
    expect(unanswered.totals).toMatchObject({ calls: 0, failures: 1, promptTokens: 0, costUsd: 0 });
  });
});
