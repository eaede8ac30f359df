import { afterAll, describe, expect, it } from "vitest";
import { SimulatedBatches } from "../../functions/adapters/simulated/batches.ts";
import {
  batchTick,
  DeferredToBatchError,
  deferToBatch,
  SUBMITTED_ITEM_LOST_MS,
} from "../../functions/pipeline/batch.ts";
import type { LlmRequest } from "../../functions/ports/llm.ts";
import { batchShard } from "../helpers/batch-shard.ts";

const HOUR = 60 * 60_000;
const dirs: { cleanup: () => void }[] = [];
afterAll(() => {
  for (const dir of dirs) dir.cleanup();
});

const request: LlmRequest = {
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Rewrite the questions about picture 7." }],
  schemaName: "evolved",
  schema: { type: "object", properties: { items: { type: "array" } } },
  temperature: 0.7,
  maxTokens: 512,
  seed: 1,
};
const target = {
  run: "r1",
  shard: "s1",
  message: { kind: "evolve", run: "r1", shard: "s1", sample: "k7", round: 1 },
  maxTries: 2,
} as const;

async function fixture(api: SimulatedBatches) {
  const shard = await batchShard(api, {
    prefix: "mmevol-items-",
    start: 1_000 * HOUR,
    bodies: { windowMs: 1 },
  });
  dirs.push(shard);
  const { deps, state, clock, advance } = shard;
  const defer = () => deferToBatch(deps, target, request, "h7");
  const tick = () => batchTick(deps, { now: clock.now(), settleMs: 0, minPollMs: 1, maxPollMs: 1 });
  return { state, defer, tick, advance };
}

describe("a batch item's life", () => {
  it("stays submitted once its answer is stored: the answer is written, the message goes again", async () => {
    const f = await fixture(new SimulatedBatches());
    await expect(f.defer()).rejects.toMatchObject({ queued: true });
    expect((await f.tick()).submitted).toBe(1);
    f.advance(1_000);
    const applied = await f.tick();
    expect(applied.applied).toBe(1);
    expect(applied.messages).toEqual([target.message]);
    expect(await f.state.getAnswer("h7")).toMatchObject({ model: "gpt-4o-mini" });
    expect((await f.state.getBatchItem("r1", "s1", "h7"))?.status).toBe("submitted");
    // Nothing is queued again and no job stays open.
    expect(await f.tick()).toMatchObject({ submitted: 0, open: 0, queued: 0 });
  });

  it(`waits while submitted, and asks online once ${SUBMITTED_ITEM_LOST_MS / HOUR} h pass with no answer stored`, async () => {
    // A provider that never finishes a batch: the answer never comes (or came and expired).
    const f = await fixture(new SimulatedBatches({ completeAfterMs: Number.POSITIVE_INFINITY }));
    await expect(f.defer()).rejects.toBeInstanceOf(DeferredToBatchError);
    await f.tick();
    f.advance(30 * HOUR);
    await expect(f.defer()).rejects.toMatchObject({ queued: false });
    f.advance(SUBMITTED_ITEM_LOST_MS - 30 * HOUR + 1);
    expect(await f.defer()).toBe("online");
  });
});

describe("two batchers at once (a scheduled tick that outlasts its minute)", () => {
  it("submit each request once, and the one left with none uploads and creates nothing", async () => {
    const api = new SimulatedBatches();
    const f = await fixture(api);
    await expect(f.defer()).rejects.toMatchObject({ queued: true });
    const [a, b] = await Promise.all([f.tick(), f.tick()]);
    expect(a.submitted + b.submitted).toBe(1);
    expect(api.stats()).toMatchObject({ filesUploaded: 1, batchesCreated: 1 });
    f.advance(1_000);
    const applied = await f.tick();
    expect(applied.messages).toEqual([target.message]);
    expect(await f.tick()).toMatchObject({ submitted: 0, open: 0, queued: 0 });
  });
});
