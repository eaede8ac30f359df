import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { z } from "zod";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { priceOf } from "../../functions/evolution/pricing.ts";
import { answerHash, askStructured, RequestInFlightError } from "../../functions/pipeline/ask.ts";
import type { BlobStore } from "../../functions/ports/blob-store.ts";
import { LlmCallError } from "../../functions/ports/errors.ts";
import type { Llm, LlmResponse } from "../../functions/ports/llm.ts";
import { silentLogger, systemClock } from "../../functions/ports/runtime.ts";
import { tempDir } from "../helpers/files.ts";
import { answerOf, failureOf, textRequest } from "../helpers/llm.ts";

class CountingLlm implements Llm {
  calls = 0;
  async complete(): Promise<LlmResponse> {
    this.calls += 1;
    return answerOf(12, '{"ok":true}');
  }
}

const ask = (payer: string, delivery: string) => ({
  imageDigest: null,
  schema: z.object({ ok: z.boolean() }),
  maxRetries: 0,
  price: priceOf("gpt-4o-mini"),
  delivery,
  payer,
});

describe("who pays for an answer", () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0).reverse()) cleanup();
  });
  const setup = () => {
    const dir = tempDir();
    const state = new SqliteStateStore(join(dir.path, "state.sqlite"));
    cleanups.push(dir.cleanup, () => state.close());
    const llm = new CountingLlm();
    return {
      llm,
      state,
      deps: { llm, state, logger: silentLogger, clock: systemClock, blobs: {} as BlobStore },
    };
  };

  it("the work that asked pays, again after a crash; other work with the same request uses it for nothing", async () => {
    const { llm, deps } = setup();
    const first = await askStructured(deps, textRequest, ask("sample-a/round-1", "m1#1"));
    expect(first.usage.calls).toBe(1);
    expect(first.usage.costUsd).toBeGreaterThan(0);
    // The same work, another message or receive (a rerun after a crash): its transition pays it, once.
    const again = await askStructured(deps, textRequest, ask("sample-a/round-1", "m9#2"));
    expect(again.usage).toEqual(first.usage);
    // Another sample (or round) whose request is byte for byte the same: the answer serves, unpaid.
    const other = await askStructured(deps, textRequest, ask("sample-b/round-1", "m2#1"));
    expect(other.value).toEqual({ ok: true });
    expect(other.usage).toMatchObject({ calls: 0, promptTokens: 0, costUsd: 0 });
    expect(llm.calls).toBe(1);
  });

  it("other work that finds the same request being answered waits for that answer instead of being dropped", async () => {
    const { llm, state, deps } = setup();
    const hash = answerHash(textRequest, null, 0);
    expect(await state.claimRequest(hash, "sample-a/round-1\nm1#1", 60_000)).toEqual({ granted: true });
    const waiting = await failureOf(askStructured(deps, textRequest, ask("sample-b/round-1", "m2#1")));
    expect(waiting).toBeInstanceOf(LlmCallError);
    expect(waiting).toMatchObject({ retryable: true, inFlight: true });
    expect((waiting as LlmCallError).retryAfterMs).toBeLessThanOrEqual(10_000);
    // A second message of the same work is a duplicate: nothing to do.
    const duplicate = await failureOf(askStructured(deps, textRequest, ask("sample-a/round-1", "m3#1")));
    expect(duplicate).toBeInstanceOf(RequestInFlightError);
    expect(llm.calls).toBe(0);
  });
});
