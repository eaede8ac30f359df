import { afterAll, describe, expect, it, vi } from "vitest";
import { batchTick, QueuedListings } from "../../functions/pipeline/batch.ts";
import type { BatchApi, BatchInfo, BatchStatus } from "../../functions/ports/batch-api.ts";
import type { BatchItem } from "../../functions/ports/state-store.ts";
import { batchShard } from "../helpers/batch-shard.ts";

const MINUTE = 60_000;
const dirs: { cleanup: () => void }[] = [];
afterAll(() => {
  for (const dir of dirs) dir.cleanup();
});

/** A provider whose batches stay in progress until `finish` says otherwise. */
function slowProvider() {
  const batches = new Map<string, BatchInfo>();
  const api: BatchApi = {
    uploadFile: async () => `file-${batches.size}`,
    createBatch: async (inputFileId, metadata) => {
      const info: BatchInfo = {
        id: `batch-${batches.size}`,
        status: "validating",
        inputFileId,
        outputFileId: null,
        errorFileId: null,
        requestCounts: { total: 1, completed: 0, failed: 0 },
        metadata,
        errors: [],
        createdAt: null,
      };
      batches.set(info.id, info);
      return info;
    },
    getBatch: async (id) => {
      const info = batches.get(id);
      if (info === undefined) throw new Error(`no batch ${id}`);
      return info.status === "validating" ? { ...info, status: "in_progress" } : info;
    },
    listBatches: async () => [...batches.values()],
    fileText: async () => "",
  };
  const finish = (id: string, status: BatchStatus) => {
    const info = batches.get(id);
    if (info) batches.set(id, { ...info, status });
  };
  return { api, batches, finish };
}

async function fixture() {
  const provider = slowProvider();
  const shard = await batchShard(provider.api, { prefix: "mmevol-listings-", start: 1_000 * MINUTE });
  dirs.push(shard);
  const { deps, state, blobs, clock, advance } = shard;
  const listings = vi.spyOn(state, "listBatchItems");
  /** How many times a tick listed the shard's queued requests. */
  const queuedListings = () => listings.mock.calls.filter((call) => call[2] === "queued").length;
  const queue = async (hash: string) => {
    const body = `bodies/${hash}.json`;
    await blobs.put(body, JSON.stringify({ model: "gpt-4o-mini", messages: [] }), "application/json");
    const item: BatchItem = {
      run: "r1",
      shard: "s1",
      hash,
      status: "queued",
      model: "gpt-4o-mini",
      body,
      message: { kind: "evolve", run: "r1", shard: "s1", sample: hash, round: 1 },
      job: null,
      tries: 0,
      error: null,
      updatedAt: 0,
      tokens: 100,
    };
    await state.queueBatchItem(item);
  };
  const tick = (memory?: QueuedListings) =>
    batchTick(deps, {
      now: clock.now(),
      settleMs: 0,
      minPollMs: MINUTE,
      maxPollMs: 10 * MINUTE,
      ...(memory ? { listings: memory } : {}),
    });
  return { state, provider, queue, tick, queuedListings, advance };
}

describe("the batcher's listings of queued requests while a shard waits on its batches", () => {
  it("without a memory (the local runner), lists at every tick", async () => {
    const f = await fixture();
    await f.queue("h1");
    expect((await f.tick()).submitted).toBe(1);
    for (let i = 0; i < 30; i++) {
      f.advance(MINUTE);
      await f.tick();
    }
    expect(f.queuedListings()).toBe(31);
  });

  it("with one, lists a waiting shard every 15 minutes, and a request queued meanwhile goes within that", async () => {
    const f = await fixture();
    const memory = new QueuedListings({ relistMs: 15 * MINUTE, busyMs: 5 * MINUTE });
    await f.queue("h1");
    expect((await f.tick(memory)).submitted).toBe(1);
    let submittedAt = 0;
    for (let minute = 1; minute <= 120; minute++) {
      f.advance(MINUTE);
      // A message redelivered 50 minutes in queues another request for the same shard.
      if (minute === 50) await f.queue("h2");
      const tick = await f.tick(memory);
      if (tick.submitted > 0) submittedAt = minute;
    }
    // Busy for 5 minutes after each submission (4 more ticks each), then every 15 minutes: (121 - 2 * 5) / 15
    // listings at most, and 2 * 5 for the busy spells; 121 ticks without the memory.
    expect(f.queuedListings()).toBeGreaterThanOrEqual(10);
    expect(f.queuedListings()).toBeLessThanOrEqual(18);
    expect(submittedAt).toBeGreaterThan(50);
    expect(submittedAt - 50).toBeLessThanOrEqual(15);
    expect(f.provider.batches.size).toBe(2);
  });

  it("lists at every tick once a batch of the shard finishes (its messages queue the next round)", async () => {
    const f = await fixture();
    const memory = new QueuedListings({ relistMs: 15 * MINUTE, busyMs: 5 * MINUTE });
    await f.queue("h1");
    await f.queue("h2");
    await f.tick(memory);
    // A second job, so the shard still waits on one once the first is done.
    f.advance(MINUTE);
    await f.queue("h3");
    for (let minute = 0; minute < 30; minute++) {
      f.advance(MINUTE);
      await f.tick(memory);
    }
    expect(f.provider.batches.size).toBe(2);
    // Not busy now: these ticks do not all list.
    const quiet = f.queuedListings();
    for (let minute = 0; minute < 5; minute++) {
      f.advance(MINUTE);
      await f.tick(memory);
    }
    expect(f.queuedListings() - quiet).toBeLessThanOrEqual(1);
    // The first batch expires: its requests fail, and their messages go out again when it is next polled...
    f.provider.finish("batch-0", "expired");
    let applied = 0;
    let before = 0;
    for (let minute = 0; minute < 15 && applied === 0; minute++) {
      f.advance(MINUTE);
      before = f.queuedListings();
      const tick = await f.tick(memory);
      applied = tick.applied;
      if (applied > 0) expect(tick.messages).toHaveLength(2);
    }
    expect(applied).toBe(1);
    // ...so the shard is busy: listed at that tick and the next ones, though batch-1 is still open.
    for (let minute = 0; minute < 3; minute++) {
      f.advance(MINUTE);
      await f.tick(memory);
    }
    expect(f.queuedListings() - before).toBe(4);
  });
});
