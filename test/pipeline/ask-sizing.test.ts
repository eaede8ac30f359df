import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { z } from "zod";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { costOf, priceOf } from "../../functions/evolution/pricing.ts";
import { answerHash, askStructured } from "../../functions/pipeline/ask.ts";
import { CompletionSizer } from "../../functions/pipeline/completion-sizer.ts";
import type { BlobStore } from "../../functions/ports/blob-store.ts";
import { LlmAnswerError } from "../../functions/ports/errors.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { silentLogger, systemClock } from "../../functions/ports/runtime.ts";
import { tempDir } from "../helpers/files.ts";
import { textRequest } from "../helpers/llm.ts";

/** An evolve-like request: METHOD.md's max_tokens of 4096 is its cap. */
const request: LlmRequest = { ...textRequest, schemaName: "evolve_perception", maxTokens: 4096 };
const price = priceOf("gpt-4o-mini");
const usage = (completionTokens: number) => ({ promptTokens: 3000, cachedTokens: 0, completionTokens });

/** A model whose answers take `needs` tokens: cut (and billed) like the provider's when max_tokens is less. */
class LengthyLlm implements Llm {
  readonly sent: number[] = [];
  readonly needs: number;
  constructor(needs: number) {
    this.needs = needs;
  }
  async complete(sent: LlmRequest): Promise<LlmResponse> {
    this.sent.push(sent.maxTokens);
    if (sent.maxTokens < this.needs) {
      throw new LlmAnswerError(`answer cut at the token limit (max_tokens ${sent.maxTokens})`, {
        usage: usage(sent.maxTokens),
        cutAt: sent.maxTokens,
      });
    }
    return {
      content: '{"ok":true}',
      usage: usage(this.needs),
      model: sent.model,
      finishReason: "stop",
      refusal: null,
    };
  }
}

const options = {
  imageDigest: null,
  schema: z.object({ ok: z.boolean() }),
  maxRetries: 0,
  price,
  delivery: "message-1#receive-1",
  sizeMaxTokens: true,
};

/** A sizer that has seen 16 answers of 400 tokens: it sends 1.25 x 400 + 64 = 564, rounded up to 576. */
const trainedSizer = () => {
  const sizer = new CompletionSizer();
  for (let i = 0; i < 16; i++) sizer.observe(request, 400);
  return sizer;
};

describe("askStructured with sized max_tokens", () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0).reverse()) cleanup();
  });
  const depsWith = (llm: Llm, sizer: CompletionSizer) => {
    const dir = tempDir();
    const state = new SqliteStateStore(join(dir.path, "state.sqlite"));
    cleanups.push(dir.cleanup, () => state.close());
    return { llm, state, sizer, logger: silentLogger, clock: systemClock, blobs: {} as BlobStore };
  };

  it("sends the sized max_tokens and stores the answer under the request as configured", async () => {
    const llm = new LengthyLlm(450);
    const deps = depsWith(llm, trainedSizer());
    const asked = await askStructured(deps, request, options);
    expect(asked.value).toEqual({ ok: true });
    expect(llm.sent).toEqual([576]);
    // The hash is the configured request's (max_tokens 4096): a rerun with another size finds this answer.
    const stored = await deps.state.getAnswer(answerHash(request, null, 0));
    expect(stored).toMatchObject({ completionTokens: 450, content: '{"ok":true}' });
    expect(asked.usage.calls).toBe(1);
  });

  it("asks again at the cap when a sized answer is cut, pays for both, and spends no retry on it", async () => {
    const llm = new LengthyLlm(900);
    const deps = depsWith(llm, trainedSizer());
    // maxRetries 0: the cut try is one of its own, so the sample still gets its answer.
    const asked = await askStructured(deps, request, options);
    expect(asked.value).toEqual({ ok: true });
    expect(llm.sent).toEqual([576, 4096]);
    const cut = await deps.state.getAnswer(answerHash(request, null, 0));
    expect(cut).toMatchObject({ cutAt: 576, completionTokens: 576, promptTokens: 3000 });
    expect(cut?.unusable).toMatch(/cut at the token limit/);
    expect(cut?.costUsd).toBeCloseTo(costOf(price, usage(576)), 12);
    expect(asked.usage.calls).toBe(2);
    expect(asked.usage.completionTokens).toBe(576 + 900);
    expect(asked.usage.costUsd).toBeCloseTo(costOf(price, usage(576)) + costOf(price, usage(900)), 12);
    // The long answer is seen: the next call is sized above it.
    expect(deps.sizer.maxTokensFor(request)).toBe(1216);
  });

  it("a rerun after a cut goes straight to the cap, without asking the cut try again", async () => {
    const first = new LengthyLlm(900);
    const deps = depsWith(first, trainedSizer());
    await askStructured(deps, request, options);
    const again = new LengthyLlm(900);
    const rerun = await askStructured({ ...deps, llm: again, sizer: trainedSizer() }, request, options);
    expect(again.sent).toEqual([]);
    expect(rerun.usage.calls).toBe(2);
  });

  it("sends the configured max_tokens when sizing is off", async () => {
    const llm = new LengthyLlm(450);
    await askStructured(depsWith(llm, trainedSizer()), request, { ...options, sizeMaxTokens: false });
    expect(llm.sent).toEqual([4096]);
  });

  it("an answer cut at the cap itself is a spent try like any unusable answer", async () => {
    const llm = new LengthyLlm(5000);
    const deps = depsWith(llm, trainedSizer());
    const failed = await askStructured(deps, request, { ...options, maxRetries: 1 }).then(
      () => null,
      (error: unknown) => error,
    );
    // Sized, then the cap, then the one retry at the cap: three paid calls, then the sample round fails.
    expect(llm.sent).toEqual([576, 4096, 4096]);
    expect(String(failed)).toMatch(
      /answer invalid after 3 tries: answer cut at the token limit \(max_tokens 4096\)/,
    );
    expect(failed).toMatchObject({ usage: { calls: 3, completionTokens: 576 + 4096 + 4096 } });
  });
});
