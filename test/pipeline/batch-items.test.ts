import { afterAll, describe, expect, it } from "vitest";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { SimulatedBatches } from "../../functions/adapters/simulated/batches.ts";
import {
  batchTick,
  DeferredToBatchError,
  deferToBatch,
  SUBMITTED_ITEM_LOST_MS,
} from "../../functions/pipeline/batch.ts";
import { BatchBodyWriter } from "../../functions/pipeline/batch-bodies.ts";
import type { LlmRequest } from "../../functions/ports/llm.ts";
import { silentLogger } from "../../functions/ports/runtime.ts";
import { tempDir } from "../helpers/files.ts";
import { shardRecord } from "../helpers/state-store-contract.ts";

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
  const dir = tempDir("mmevol-items-");
  dirs.push(dir);
  let now = 1_000 * HOUR;
  const clock = { now: () => now };
  const state = new SqliteStateStore(":memory:", { clock });
  const blobs = new FsBlobStore(dir.path);
  await state.createShard(shardRecord({ ingested: true, config: { rounds: 1, mode: "batch" } }));
  const deps = {
    state,
    blobs,
    clock,
    logger: silentLogger,
    defaults: {},
    batch: { api, codec: new OpenAiBatchCodec([]), bodies: new BatchBodyWriter(blobs, { windowMs: 1 }) },
  };
  const defer = () => deferToBatch(deps, target, request, "h7");
  const tick = () => batchTick(deps, { now: clock.now(), settleMs: 0, minPollMs: 1, maxPollMs: 1 });
  return { state, defer, tick, advance: (ms: number) => (now += ms) };
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
