import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { z } from "zod";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { priceOf } from "../../functions/evolution/pricing.ts";
import { answerHash, askStructured, RequestInFlightError } from "../../functions/pipeline/ask.ts";
import type { BlobStore } from "../../functions/ports/blob-store.ts";
import { NoRateBudgetError } from "../../functions/ports/errors.ts";
import type { AdmittedCall, Llm, LlmResponse } from "../../functions/ports/llm.ts";
import { silentLogger, systemClock } from "../../functions/ports/runtime.ts";
import { tempDir } from "../helpers/files.ts";
import { answerOf, failureOf, textRequest } from "../helpers/llm.ts";

/** An Llm behind a shared rate budget that has none left, or some, as the test says. */
class BudgetedLlm implements Llm {
  budget = false;
  calls = 0;
  /** Shares taken and not given back. */
  taken = 0;
  async admit(): Promise<AdmittedCall> {
    if (!this.budget) throw new NoRateBudgetError("no rate budget for gpt-4o-mini for 4000 ms", 4000);
    this.taken += 1;
    return {
      complete: () => this.complete(),
      cancel: async () => {
        this.taken -= 1;
      },
    };
  }
  async complete(): Promise<LlmResponse> {
    this.calls += 1;
    return answerOf(12, '{"ok":true}');
  }
}

/** One structured ask of `textRequest`, paid by the first receive of message 1. */
const options = {
  imageDigest: null,
  schema: z.object({ ok: z.boolean() }),
  maxRetries: 0,
  price: priceOf("gpt-4o-mini"),
  delivery: "message-1#receive-1",
};

describe("askStructured and a shared rate budget", () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0).reverse()) cleanup();
  });
  const freshStore = () => {
    const dir = tempDir();
    const state = new SqliteStateStore(join(dir.path, "state.sqlite"));
    cleanups.push(dir.cleanup, () => state.close());
    return state;
  };

  it("takes the budget before the claim: steps aside without claiming, and asks once admitted", async () => {
    const state = freshStore();
    const llm = new BudgetedLlm();
    const deps = {
      llm,
      state,
      logger: silentLogger,
      clock: systemClock,
      blobs: {} as BlobStore,
    };

    const refused = await failureOf(askStructured(deps, textRequest, options));
    expect(refused).toBeInstanceOf(NoRateBudgetError);
    expect(refused).toMatchObject({ retryAfterMs: 4000, retryable: true });
    expect(llm.calls).toBe(0);
    // No claim was taken: another message may claim the same request at once.
    const hash = answerHash(textRequest, null, 0);
    expect(await state.claimRequest(hash, "message-2#receive-1", 60_000)).toEqual({ granted: true });
    await state.releaseClaim(hash, "message-2#receive-1");

    llm.budget = true;
    const asked = await askStructured(deps, textRequest, options);
    expect(asked.value).toEqual({ ok: true });
    expect(llm.calls).toBe(1);
    expect(llm.taken).toBe(1);
  });

  it("gives the budget back when another message holds the claim", async () => {
    const state = freshStore();
    const llm = new BudgetedLlm();
    llm.budget = true;
    const deps = { llm, state, logger: silentLogger, clock: systemClock, blobs: {} as BlobStore };
    const hash = answerHash(textRequest, null, 0);
    expect(await state.claimRequest(hash, "message-2#receive-1", 60_000)).toEqual({ granted: true });
    const duplicate = await failureOf(askStructured(deps, textRequest, options));
    expect(duplicate).toBeInstanceOf(RequestInFlightError);
    expect(llm.calls).toBe(0);
    expect(llm.taken).toBe(0);
  });

  it("warns when the answer arrives after its claim ended (another delivery may have paid for it too)", async () => {
    const state = freshStore();
    let now = 1_000_000;
    const warnings: { message: string; fields: unknown }[] = [];
    const slowLlm: Llm = {
      complete: async () => {
        now += 5_000;
        return answerOf(12, '{"ok":true}');
      },
    };
    const deps = {
      llm: slowLlm,
      state,
      logger: {
        ...silentLogger,
        warn: (message: string, fields?: unknown) => warnings.push({ message, fields }),
      },
      clock: { now: () => now },
      blobs: {} as BlobStore,
      claimMs: 4_000,
    };
    expect((await askStructured(deps, textRequest, options)).value).toEqual({ ok: true });
    expect(warnings).toEqual([
      {
        message: "answer arrived after its claim ended",
        fields: { schema: "answer", heldMs: 5_000, claimMs: 4_000 },
      },
    ]);
    // Within its claim, nothing is said.
    warnings.length = 0;
    deps.claimMs = 6_000;
    await askStructured(deps, { ...textRequest, seed: 2 }, options);
    expect(warnings).toEqual([]);
  });
});
