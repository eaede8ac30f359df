import { DeleteTableCommand } from "@aws-sdk/client-dynamodb";
import { type DynamoDBDocumentClient, GetCommand } from "@aws-sdk/lib-dynamodb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTable } from "../../functions/adapters/aws/create-table.ts";
import {
  DynamoRateGovernor,
  type DynamoRateGovernorOptions,
} from "../../functions/adapters/aws/dynamodb-rate-governor.ts";
import { GovernedLlm } from "../../functions/adapters/governor/governed-llm.ts";
import { LlmCallError, NoRateBudgetError } from "../../functions/ports/errors.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { ensureDynamoLocal } from "../helpers/dynamodb-local.ts";
import { answerOf, textRequest } from "../helpers/llm.ts";
import { documentClient, dynamoClient, uniqueName } from "../helpers/moto.ts";

// AWS's DynamoDB Local, not moto: conditional writes under real concurrency are the point of these tests.
const { endpoint } = await ensureDynamoLocal();
const raw = dynamoClient(endpoint);

/** A document client of its own (like one Lambda's), recording the DynamoDB operations it sends. */
function countingClient(): {
  doc: DynamoDBDocumentClient;
  calls: string[];
  afterRead: { hook: (() => Promise<void>) | null };
} {
  const doc = documentClient(dynamoClient(endpoint));
  const calls: string[] = [];
  const afterRead: { hook: (() => Promise<void>) | null } = { hook: null };
  doc.middlewareStack.add(
    (next, context) => async (args) => {
      // GetItemCommand -> Get, UpdateItemCommand -> Update, ...; a refused write is recorded as such.
      const operation = String(context.commandName).replace(/(Item)?Command$/, "");
      let out: Awaited<ReturnType<typeof next>>;
      try {
        out = await next(args);
      } catch (error) {
        calls.push(`${operation} refused`);
        throw error;
      }
      calls.push(operation);
      const hook = afterRead.hook;
      if (hook !== null && operation === "Get") {
        afterRead.hook = null;
        await hook();
      }
      return out;
    },
    { step: "initialize", name: "countCalls" },
  );
  return { doc, calls, afterRead };
}

class FakeClock {
  #now = 1_700_000_000_000;
  now(): number {
    return this.#now;
  }
  advance(ms: number): void {
    this.#now += ms;
  }
}

let table = "";
beforeAll(async () => {
  table = uniqueName("rate");
  await createTable(raw, table);
});
afterAll(async () => {
  await raw.send(new DeleteTableCommand({ TableName: table }));
});

/** A governor on its own model (so tests do not share an item) with a pinned jitter. */
/** Two governors (two Lambdas) of one model, on a fresh item: A's DynamoDB calls are recorded, B's are not. */
function twoGovernors(tokensPerMinute: number) {
  const clock = new FakeClock();
  const model = uniqueName("m");
  const a = countingClient();
  return {
    a,
    governorA: governor(model, clock, { client: a.doc, tokensPerMinute }),
    governorB: governor(model, clock, { tokensPerMinute }),
  };
}

function governor(
  model: string,
  clock: FakeClock,
  options: Partial<DynamoRateGovernorOptions> = {},
): DynamoRateGovernor {
  return new DynamoRateGovernor({
    client: options.client ?? countingClient().doc,
    table,
    model,
    clock,
    random: () => 0,
    // The exact bucket arithmetic below has no headroom; the test of the headroom sets it.
    arrivalLeadMs: 0,
    ...options,
  });
}

async function rejection(promise: Promise<unknown>): Promise<LlmCallError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  if (!(error instanceof LlmCallError)) throw new Error(`expected an LlmCallError, got ${String(error)}`);
  return error;
}

async function storedItem(model: string): Promise<Record<string, unknown> | undefined> {
  const out = await documentClient(raw).send(
    new GetCommand({ TableName: table, Key: { pk: `RATE#${model}`, sk: "RATE" }, ConsistentRead: true }),
  );
  return out.Item;
}

describe("DynamoRateGovernor", () => {
  it("grants while the budget lasts, then throws an in-flight error with the refill wait", async () => {
    const clock = new FakeClock();
    const model = uniqueName("m");
    const { doc, calls } = countingClient();
    const g = governor(model, clock, { client: doc, tokensPerMinute: 60_000, requestsPerMinute: 1000 });
    const first = await g.acquire({ tokens: 30_000 });
    expect(first).toMatchObject({ tokens: 30_000, admittedAt: clock.now() });
    // First use: one read finds nothing, one conditional put creates the item with this call taken.
    expect(calls).toEqual(["Get", "Put"]);
    calls.length = 0;
    await g.acquire({ tokens: 30_000 });
    // The common case: this governor's view of the item is current, so one conditional update and no read.
    expect(calls).toEqual(["Update"]);

    calls.length = 0;
    const error = await rejection(g.acquire({ tokens: 6000 }));
    // No budget in its view: it reads the item before it says so (others may have refunded).
    expect(calls).toEqual(["Get"]);
    // 6000 tokens at 60 000 a minute: 6 s of refill. The jitter is pinned to 0 here.
    expect(error).toMatchObject({ retryable: true, inFlight: true, retryAfterMs: 6000, status: null });
    expect(error.message).toBe(`no rate budget for ${model} for 6000 ms`);

    // With jitter: a little more, never less.
    const jittery = governor(model, clock, {
      tokensPerMinute: 60_000,
      requestsPerMinute: 1000,
      random: () => 0.999,
    });
    const later = await rejection(jittery.acquire({ tokens: 6000 }));
    expect(later.retryAfterMs).toBeGreaterThan(6000);
    expect(later.retryAfterMs).toBeLessThanOrEqual(6000 + 250 + 600);

    expect(await storedItem(model)).toEqual({
      pk: `RATE#${model}`,
      sk: "RATE",
      version: 2,
      // No limits: the item stores only those the headers report below the configuration's.
      tokenLevel: 0,
      requestLevel: 998,
      refilledAt: clock.now(),
      factor: 1,
      cutAt: 0,
      grownAt: clock.now(),
      pausedUntil: 0,
      // Both calls were admitted at the same instant: nothing has faded yet.
      recentTokens: 60_000,
      recentAt: clock.now(),
      expiresAt: Math.floor(clock.now() / 1000) + 86_400,
    });
  });

  it("refills continuously, per token and per request", async () => {
    const clock = new FakeClock();
    const g = governor(uniqueName("m"), clock, { tokensPerMinute: 60_000, requestsPerMinute: 4 });
    await g.acquire({ tokens: 60_000 });
    clock.advance(3000);
    // 3 s refill 3000 tokens: exactly enough; one more token is 1 ms away.
    await g.acquire({ tokens: 3000 });
    expect((await rejection(g.acquire({ tokens: 1 }))).retryAfterMs).toBe(1);
    clock.advance(60_000);
    await g.acquire({ tokens: 1 });
    await g.acquire({ tokens: 1 });
    await g.acquire({ tokens: 1 });
    // 4 requests a minute: the full bucket is spent; the next request is 15 s away.
    await g.acquire({ tokens: 1 });
    expect((await rejection(g.acquire({ tokens: 1 }))).retryAfterMs).toBe(15_000);
    clock.advance(15_000);
    await g.acquire({ tokens: 1 });
    // A cost above the whole bucket waits for a full bucket, then goes into debt.
    clock.advance(120_000);
    await g.acquire({ tokens: 100_000 });
    expect((await g.state())?.tokensAvailable).toBe(-40_000);
  });

  it("settle gives back the difference once, and the request when not charged", async () => {
    const clock = new FakeClock();
    const { doc, calls } = countingClient();
    const g = governor(uniqueName("m"), clock, {
      client: doc,
      tokensPerMinute: 10_000,
      requestsPerMinute: 10,
    });
    const reservation = await g.acquire({ tokens: 10_000 });
    calls.length = 0;
    await reservation.settle(4000);
    // A refund is held back: no call, and the item does not have it yet.
    expect(calls).toEqual([]);
    expect(await g.state()).toMatchObject({ tokensAvailable: 0, requestsAvailable: 9 });
    calls.length = 0;
    await g.flush();
    // Flushed: one read-free atomic ADD.
    expect(calls).toEqual(["Update"]);
    expect(await g.state()).toMatchObject({ tokensAvailable: 6000, requestsAvailable: 9 });
    await reservation.settle(0, false);
    calls.length = 0;
    await g.flush();
    expect(calls).toEqual([]);
    expect(await g.state()).toMatchObject({ tokensAvailable: 6000, requestsAvailable: 9 });

    const refused = await g.acquire({ tokens: 1000 });
    await refused.settle(0, false);
    expect(await g.state()).toMatchObject({ tokensAvailable: 5000, requestsAvailable: 8 });
    // Charged more than reserved: the extra comes out of the budget at once. The refund above rode on this
    // acquire's own write.
    calls.length = 0;
    const over = await g.acquire({ tokens: 1000 });
    expect(calls).toEqual(["Update"]);
    expect(await g.state()).toMatchObject({ tokensAvailable: 5000, requestsAvailable: 8 });
    calls.length = 0;
    await over.settle(3000);
    expect(calls).toEqual(["Update"]);
    expect(await g.state()).toMatchObject({ tokensAvailable: 3000, requestsAvailable: 8 });
    // Nothing to give back: no call at all.
    const exact = await g.acquire({ tokens: 1000 });
    calls.length = 0;
    await exact.settle(1000);
    expect(calls).toEqual([]);
  });

  it("counts its own held-back refunds when it admits, and writes them with its next take", async () => {
    const clock = new FakeClock();
    const { doc, calls } = countingClient();
    const g = governor(uniqueName("m"), clock, { client: doc, tokensPerMinute: 10_000 });
    const first = await g.acquire({ tokens: 10_000 });
    await first.settle(4000);
    calls.length = 0;
    // The item shows 0 left; with the 6000 held back, 5000 fit: one write, no read.
    await g.acquire({ tokens: 5000 });
    expect(calls).toEqual(["Update"]);
    expect((await g.state())?.tokensAvailable).toBe(1000);
    calls.length = 0;
    await g.flush();
    expect(calls).toEqual([]);
  });

  it("keeps its buckets the refill of the arrival lead short of full, at the full rate", async () => {
    const clock = new FakeClock();
    // 3 s of a 60 000 TPM bucket: 3000 tokens short of full.
    const g = governor(uniqueName("m"), clock, { tokensPerMinute: 60_000, arrivalLeadMs: 3_000 });
    await g.acquire({ tokens: 1000 });
    expect((await g.state())?.tokensAvailable).toBe(56_000);
    // Idle: it refills to the ceiling, not to the capacity.
    clock.advance(60_000);
    expect((await g.state())?.tokensAvailable).toBe(57_000);
    // Drained, it refills at the limit's rate: 1000 tokens a second.
    await g.acquire({ tokens: 57_000 });
    const refused = await rejection(g.acquire({ tokens: 5000 }));
    expect(refused).toBeInstanceOf(NoRateBudgetError);
    expect(refused.retryAfterMs).toBe(5000);
    clock.advance(5000);
    await g.acquire({ tokens: 5000 });
    expect((await g.state())?.tokensAvailable).toBe(0);
  });

  it("keeps a settle that lands between another governor's read and write", async () => {
    const { a, governorA, governorB } = twoGovernors(10_000);
    const held = await governorB.acquire({ tokens: 8000 });
    await held.settle(3000);
    // A reads 2000 left; B writes its refund of 5000 before A writes.
    a.afterRead.hook = () => governorB.flush();
    await governorA.acquire({ tokens: 1500 });
    expect((await governorA.state())?.tokensAvailable).toBe(5500);
  });

  it("never over-admits when several governors (Lambdas) race for one bucket", async () => {
    const clock = new FakeClock();
    const model = uniqueName("m");
    const clients = Array.from({ length: 5 }, () => countingClient());
    const governors = clients.map(({ doc }) =>
      governor(model, clock, { client: doc, tokensPerMinute: 100_000, random: Math.random }),
    );
    // 20 calls of 10% each, on a fresh item (so the first-use puts race too).
    const outcomes = await Promise.allSettled(
      Array.from({ length: 20 }, (_, i) => governors[i % governors.length]?.acquire({ tokens: 10_000 })),
    );
    const admitted = outcomes.filter((o) => o.status === "fulfilled");
    const refused = outcomes.flatMap((o) => (o.status === "rejected" ? [o.reason] : []));
    expect(admitted).toHaveLength(10);
    expect(refused).toHaveLength(10);
    for (const reason of refused) {
      expect(reason).toBeInstanceOf(LlmCallError);
      expect(reason).toMatchObject({ inFlight: true, retryable: true });
      expect(String(reason.message)).toMatch(/^no rate budget/);
    }
    const calls = clients.flatMap((c) => c.calls);
    const count = (operation: string) => calls.filter((c) => c === operation).length;
    console.info(
      `20 racing acquires from 5 governors: ${calls.length} DynamoDB calls: ${count("Get")} reads, ` +
        `${count("Put")} put + ${count("Put refused")} refused, ` +
        `${count("Update")} updates + ${count("Update refused")} refused`,
    );
    const state = await governors[0]?.state();
    // One version per admission: no write was lost or doubled.
    expect(state).toMatchObject({ tokensAvailable: 0, version: 10 });
  });

  it("takes the calls of one governor (a batch in one Lambda) in turn, and reads again when its view is stale", async () => {
    const { a, governorA, governorB } = twoGovernors(100_000);
    await governorA.acquire({ tokens: 1000 });
    a.calls.length = 0;
    // Ten records of one invocation at once: in turn, each on the view the one before it wrote.
    await Promise.all(Array.from({ length: 10 }, () => governorA.acquire({ tokens: 1000 })));
    expect(a.calls).toEqual(Array.from({ length: 10 }, () => "Update"));
    // Another Lambda takes some: A's view is stale, its write is refused, it reads and writes again.
    await governorB.acquire({ tokens: 5000 });
    a.calls.length = 0;
    await governorA.acquire({ tokens: 1000 });
    expect(a.calls).toEqual(["Update refused", "Get", "Update"]);
    expect((await governorA.state())?.tokensAvailable).toBe(100_000 - 12 * 1000 - 5000);
  });

  it("a call that used more than it reserved makes other views stale; a refund does not", async () => {
    const { a, governorA, governorB } = twoGovernors(100_000);
    await governorA.acquire({ tokens: 1000 });
    const refunded = await governorB.acquire({ tokens: 5000 });
    await governorA.acquire({ tokens: 1000 });
    // B gives 2000 back: A's view (2000 short) errs on the safe side and stays usable.
    await refunded.settle(3000);
    a.calls.length = 0;
    await governorA.acquire({ tokens: 1000 });
    expect(a.calls).toEqual(["Update"]);
    // B used 4000 more than it reserved: A must not admit on a view that thinks it has 4000 more.
    const overrun = await governorB.acquire({ tokens: 1000 });
    await governorA.acquire({ tokens: 1000 });
    await overrun.settle(5000);
    a.calls.length = 0;
    await governorA.acquire({ tokens: 1000 });
    expect(a.calls).toEqual(["Update refused", "Get", "Update"]);
    expect((await governorA.state())?.tokensAvailable).toBe(100_000 - 5 * 1000 - 3000 - 5000);
    // Every charge and refund landed exactly once.
    expect((await governorB.state())?.tokensAvailable).toBe(87_000);
  });

  it("a 429 cuts the factor once per burst and pauses every governor", async () => {
    const clock = new FakeClock();
    const model = uniqueName("m");
    const g = governor(model, clock, { tokensPerMinute: 60_000 });
    const other = governor(model, clock, { tokensPerMinute: 60_000 });
    const early = await g.acquire({ tokens: 1000 });
    const sameBurst = await other.acquire({ tokens: 1000 });
    clock.advance(100);
    await g.rateLimited(early, 2000);
    // Refunded (58 000 + 100 ms of refill + 1000), then capped at the new capacity of 42 000.
    expect(await g.state()).toMatchObject({ factor: 0.7, tokensAvailable: 42_000 });
    const paused = await rejection(other.acquire({ tokens: 1 }));
    expect(paused).toMatchObject({ inFlight: true, retryAfterMs: 2000 });
    // Another 429 of the same burst (admitted before the cut) does not cut again, nor shorten the pause.
    await other.rateLimited(sameBurst, 500);
    expect(await g.state()).toMatchObject({ factor: 0.7, pausedUntil: clock.now() + 2000 });
    clock.advance(2000);
    const after = await other.acquire({ tokens: 1 });
    clock.advance(1);
    // Admitted after the cut: a new burst, cut again, with the default 1 s pause.
    await other.rateLimited(after, null);
    const state = await g.state();
    expect(state?.factor).toBeCloseTo(0.49, 10);
    expect(state?.pausedUntil).toBe(clock.now() + 1000);
    for (let i = 0; i < 20; i++) {
      clock.advance(1);
      await g.rateLimited(null, 0);
    }
    expect((await g.state())?.factor).toBeCloseTo(0.1, 10);
  });

  it("success grows the factor back slowly, and costs no call at full rate", async () => {
    const clock = new FakeClock();
    const model = uniqueName("m");
    const { doc, calls } = countingClient();
    const g = governor(model, clock, { client: doc, tokensPerMinute: 60_000 });
    await g.rateLimited(await g.acquire({ tokens: 100 }), 0);
    expect((await g.state())?.factor).toBeCloseTo(0.7, 10);
    calls.length = 0;
    for (let i = 0; i < 10; i++) {
      clock.advance(1000);
      await g.succeeded();
    }
    // +1% of the limit per second of success; one conditional write each, no read.
    expect(calls).toEqual(Array(10).fill("Update"));
    expect((await g.state())?.factor).toBeCloseTo(0.8, 10);
    // One success after a long idle spell grows by 5 s at most.
    clock.advance(60_000);
    await g.succeeded();
    expect((await g.state())?.factor).toBeCloseTo(0.85, 10);
    // Two governors succeeding for the same second grow it once.
    const other = governor(model, clock, { tokensPerMinute: 60_000 });
    await other.state();
    clock.advance(1000);
    await g.succeeded();
    await other.succeeded();
    expect((await g.state())?.factor).toBeCloseTo(0.86, 10);
    for (let i = 0; i < 30; i++) {
      clock.advance(5000);
      await g.succeeded();
    }
    expect((await g.state())?.factor).toBe(1);
    calls.length = 0;
    await g.succeeded();
    expect(calls).toEqual([]);
  });

  it("believes headers that report a lower limit or less remaining", async () => {
    const clock = new FakeClock();
    const { doc, calls } = countingClient();
    const g = governor(uniqueName("m"), clock, {
      client: doc,
      tokensPerMinute: 10_000,
      requestsPerMinute: 100,
    });
    await g.acquire({ tokens: 120 });
    calls.length = 0;
    await g.observeHeaders({ remainingTokens: 20_000, remainingRequests: 500, limitTokens: 20_000 });
    // Nothing lower than this governor last saw, and the bucket is all but full: no call.
    expect(calls).toEqual([]);
    expect(await g.state()).toMatchObject({
      tokensAvailable: 9880,
      requestsAvailable: 99,
      tokenLimit: 10_000,
    });
    await g.observeHeaders({ remainingTokens: 9000, remainingRequests: 3 });
    expect(await g.state()).toMatchObject({ tokensAvailable: 9000, requestsAvailable: 3 });
    await g.observeHeaders({ remainingTokens: null, remainingRequests: null, limitTokens: 6000 });
    expect(await g.state()).toMatchObject({ tokensAvailable: 6000, tokenLimit: 6000 });
    await g.acquire({ tokens: 6000 });
    clock.advance(30_000);
    // Refilled at the provider's 6000 a minute, not the 10 000 configured.
    expect((await g.state())?.tokensAvailable).toBeCloseTo(3000, 5);
  });

  it("holds a limit learned from the headers only while they report it, and never a configured one", async () => {
    const clock = new FakeClock();
    const model = uniqueName("m");
    const before = governor(model, clock, { tokensPerMinute: 10_000 });
    await before.acquire({ tokens: 100 });
    // Redeployed with a higher limit (a tier upgrade) while the item is in use: the new limit holds.
    const after = governor(model, clock, { tokensPerMinute: 50_000 });
    clock.advance(60_000);
    expect(await after.state()).toMatchObject({ tokenLimit: 50_000, tokensAvailable: 50_000 });
    // The provider says 20 000: learned, and stored for every governor...
    await after.observeHeaders({ remainingTokens: null, remainingRequests: null, limitTokens: 20_000 });
    expect(await governor(model, clock, { tokensPerMinute: 50_000 }).state()).toMatchObject({
      tokenLimit: 20_000,
    });
    // ...until it reports more: taken again, up to the configured limit.
    await after.observeHeaders({ remainingTokens: null, remainingRequests: null, limitTokens: 80_000 });
    expect(await after.state()).toMatchObject({ tokenLimit: 50_000 });
  });

  it("lowers to the headers with its unwritten refunds counted, not added on top", async () => {
    const clock = new FakeClock();
    const g = governor(uniqueName("m"), clock, { tokensPerMinute: 100_000 });
    const cancelled = await g.acquire({ tokens: 50_000 });
    // Never sent (its claim was refused, say): the refund waits for this governor's next write.
    await cancelled.settle(0, false);
    await g.observeHeaders({ remainingTokens: 10_000, remainingRequests: null });
    expect((await g.state())?.tokensAvailable).toBe(10_000);
    await g.flush();
    expect((await g.state())?.tokensAvailable).toBe(10_000);
  });

  it("raises the tokens to headers that report more, less what every governor admitted lately", async () => {
    const clock = new FakeClock();
    const { doc, calls } = countingClient();
    const model = uniqueName("m");
    const g = governor(model, clock, { client: doc, tokensPerMinute: 10_000 });
    const other = governor(model, clock, { tokensPerMinute: 10_000 });
    await g.acquire({ tokens: 5000 });
    await other.acquire({ tokens: 3000 });
    calls.length = 0;
    // 9000 left by the provider's count, but 8000 were admitted just now and may not be charged yet: the
    // item's 2000 stand.
    await g.observeHeaders({ remainingTokens: 9000, remainingRequests: null });
    expect((await g.state())?.tokensAvailable).toBe(2000);
    // 30 s on: refilled to 7000, and what was admitted has faded to 8000 / e^3.
    clock.advance(30_000);
    const faded = 8000 * Math.exp(-3);
    calls.length = 0;
    await g.observeHeaders({ remainingTokens: 7200, remainingRequests: null });
    // 7200 less the faded 398 is less than 7000: nothing to do, and this governor's view showed it.
    expect(calls).toEqual([]);
    await g.observeHeaders({ remainingTokens: 10_000, remainingRequests: null });
    expect((await g.state())?.tokensAvailable).toBeCloseTo(10_000 - faded, 5);
    expect(calls).toEqual(["Get", "Update", "Get"]);
    // The other governor's next call sees the raised budget.
    await other.acquire({ tokens: 9000 });
    expect((await other.state())?.tokensAvailable).toBeCloseTo(1000 - faded, 5);

    // A gap under 5% of the capacity (500) is not worth a write.
    await g.acquire({ tokens: 0 });
    clock.advance(2_000);
    const level = 1000 - faded + 2000 / 6;
    const recent = (faded + 9000) * Math.exp(-0.2);
    calls.length = 0;
    await g.observeHeaders({ remainingTokens: level + recent + 400, remainingRequests: null });
    expect(calls).toEqual([]);
    await g.observeHeaders({ remainingTokens: level + recent + 600, remainingRequests: null });
    expect((await g.state())?.tokensAvailable).toBeCloseTo(level + 600, 5);
  });

  it("paces GovernedLlm: the answered call costs two writes and no read", async () => {
    const clock = new FakeClock();
    const { doc, calls } = countingClient();
    const g = governor(uniqueName("m"), clock, { client: doc, tokensPerMinute: 10_000 });
    const answer: LlmResponse = answerOf(20);
    const inner: Llm & { lastRateLimit: () => null } = {
      complete: async () => answer,
      lastRateLimit: () => null,
    };
    const request: LlmRequest = textRequest;
    const llm = new GovernedLlm(inner, g);
    await llm.complete(request);
    calls.length = 0;
    await llm.complete(request);
    // acquire: Update (its view is current); settle (the estimate differs from the real prompt): Update;
    // succeeded: none.
    expect(calls).toEqual(["Update", "Update"]);
    expect((await g.state())?.tokensAvailable).toBe(10_000 - 2 * 120);
  });
});
