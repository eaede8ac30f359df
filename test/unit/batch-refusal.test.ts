import { describe, expect, it } from "vitest";
import { enqueuedTokenRefusal } from "../../functions/pipeline/batch.ts";

describe("enqueuedTokenRefusal", () => {
  it("reads the limit OpenAI names when it refuses a batch for the enqueued tokens", () => {
    const refusal = enqueuedTokenRefusal([
      "token_limit_exceeded: Enqueued token limit reached for gpt-4o in organization org-abc. Limit: 90,000 enqueued tokens. Please try again once some in_progress batches have been completed.",
    ]);
    expect(refusal).toEqual({ limit: 90_000 });
    expect(enqueuedTokenRefusal(["Enqueued token limit reached. Limit: 2000000 enqueued tokens."])).toEqual({
      limit: 2_000_000,
    });
  });

  it("is a refusal without a limit when only the code says so", () => {
    expect(enqueuedTokenRefusal(["token_limit_exceeded"])).toEqual({ limit: null });
    expect(enqueuedTokenRefusal(["other: x", "token_limit_exceeded: no number here"])).toEqual({
      limit: null,
    });
  });

  it("is null for a batch that failed for anything else", () => {
    expect(enqueuedTokenRefusal([])).toBeNull();
    expect(enqueuedTokenRefusal(["invalid_json_line: line 3 is not JSON (line 3)"])).toBeNull();
    expect(enqueuedTokenRefusal(["max_tokens is too large: limit: 100 tokens"])).toBeNull();
  });
});
