import { afterAll, describe, expect, it } from "vitest";
import { SimulatedBatches } from "../../functions/adapters/simulated/batches.ts";
import {
  BatchTickError,
  batchTick,
  DeferredToBatchError,
  deferToBatch,
  SUBMITTED_ITEM_LOST_MS,
  SUBMITTING_GRACE_MS,
} from "../../functions/pipeline/batch.ts";
import type { BatchApi } from "../../functions/ports/batch-api.ts";
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

async function fixture(api: SimulatedBatches, through: BatchApi = api) {
  const shard = await batchShard(through, {
    prefix: "mmevol-items-",
    start: 1_000 * HOUR,
    bodies: { windowMs: 1 },
  });
  dirs.push(shard);
  const { deps, state, clock, advance } = shard;
  const defer = () => deferToBatch(deps, target, request, "h7");
  const tick = (submittingGraceMs = 0) =>
    batchTick(deps, { now: clock.now(), settleMs: 0, minPollMs: 1, maxPollMs: 1, submittingGraceMs });
  return { deps, state, defer, tick, advance };
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

  it(`waits past ${SUBMITTED_ITEM_LOST_MS / HOUR} h for a batch the provider finished and no tick applied yet`, async () => {
    // A local run stopped after submitting, resumed days later: its stages run before its first tick.
    const f = await fixture(new SimulatedBatches());
    await expect(f.defer()).rejects.toMatchObject({ queued: true });
    expect((await f.tick()).submitted).toBe(1);
    f.advance(SUBMITTED_ITEM_LOST_MS + HOUR);
    await expect(f.defer()).rejects.toMatchObject({ queued: false });
    const applied = await f.tick();
    expect(applied.messages).toEqual([target.message]);
    expect(await f.state.getAnswer("h7")).not.toBeNull();
  });
});

/** The simulator's Batch API, with hooks into its upload. */
function hookedApi(
  inner: SimulatedBatches,
  upload: (go: () => Promise<string>) => Promise<string>,
): BatchApi {
  return {
    uploadFile: (name, content) => upload(() => inner.uploadFile(name, content)),
    createBatch: (file, metadata) => inner.createBatch(file, metadata),
    getBatch: (id) => inner.getBatch(id),
    listBatches: (limit) => inner.listBatches(limit),
    fileText: (id) => inner.fileText(id),
  };
}

describe("a tick that fails part-way", () => {
  it("still hands over the messages of the batches it applied before the failure", async () => {
    const inner = new SimulatedBatches();
    let failNext = false;
    const f = await fixture(
      inner,
      hookedApi(inner, (go) => {
        if (!failNext) return go();
        failNext = false;
        return Promise.reject(new Error("502 Bad Gateway"));
      }),
    );
    await expect(f.defer()).rejects.toMatchObject({ queued: true });
    expect((await f.tick()).submitted).toBe(1);
    f.advance(1_000);
    // Another request is queued, and its upload fails: after the first batch was applied in the same tick.
    await expect(
      deferToBatch(f.deps, { ...target, message: { ...target.message, sample: "k8" } }, request, "h8"),
    ).rejects.toMatchObject({ queued: true });
    failNext = true;
    const error = await f.tick().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(BatchTickError);
    const { result, failures } = error as BatchTickError;
    expect(failures).toEqual([expect.stringContaining("502 Bad Gateway")]);
    expect(result).toMatchObject({ applied: 1, messages: [target.message] });
    // The failed step goes again at the next tick.
    expect((await f.tick()).submitted).toBe(1);
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

  it("the next tick leaves a job being submitted to its own tick, and undoes it only after the grace", async () => {
    const inner = new SimulatedBatches();
    let release = () => {};
    const slow = new Promise<void>((resolve) => {
      release = resolve;
    });
    let uploads = 0;
    const f = await fixture(
      inner,
      hookedApi(inner, async (go) => {
        // The first tick's upload is slow (a 200 MB file, or 50,000 item writes before it).
        if (++uploads === 1) await slow;
        return go();
      }),
    );
    await expect(f.defer()).rejects.toMatchObject({ queued: true });
    const first = f.tick(SUBMITTING_GRACE_MS);
    await new Promise((resolve) => setTimeout(resolve, 50));
    f.advance(60_000);
    // A minute later: the job is "submitting", with no batch at the provider yet.
    expect(await f.tick(SUBMITTING_GRACE_MS)).toMatchObject({ submitted: 0, open: 1 });
    release();
    expect((await first).submitted).toBe(1);
    expect(inner.stats()).toMatchObject({ filesUploaded: 1, batchesCreated: 1 });

    // A tick that died while submitting: its job is undone once the grace has passed, and submitted anew.
    await expect(
      deferToBatch(f.deps, { ...target, message: { ...target.message, sample: "k9" } }, request, "h9"),
    ).rejects.toMatchObject({ queued: true });
    const now = f.deps.clock.now();
    await f.state.putBatchJob({
      run: "r1",
      shard: "s1",
      id: "dead",
      status: "submitting",
      model: "gpt-4o-mini",
      items: 1,
      bytes: 0,
      fileId: null,
      batchId: null,
      remoteStatus: null,
      polls: 0,
      nextPollAt: now,
      createdAt: now,
      updatedAt: now,
      error: null,
      tokens: 0,
    });
    for (const item of await f.state.listBatchItems("r1", "s1", "queued"))
      await f.state.updateBatchItem(item, { status: "submitted", job: "dead", tries: 1 });
    f.advance(SUBMITTING_GRACE_MS - 1);
    expect(await f.tick(SUBMITTING_GRACE_MS)).toMatchObject({ submitted: 0 });
    f.advance(1);
    expect(await f.tick(SUBMITTING_GRACE_MS)).toMatchObject({ submitted: 1 });
    expect(inner.stats()).toMatchObject({ batchesCreated: 2 });
  });
});

describe("a submission a crash cut short", () => {
  it("is adopted by its metadata however many batches were created after it", async () => {
    const inner = new SimulatedBatches({ completeAfterMs: Number.POSITIVE_INFINITY });
    let crash = true;
    let inputFile = "";
    const f = await fixture(inner, {
      uploadFile: async (name, content) => {
        inputFile = await inner.uploadFile(name, content);
        return inputFile;
      },
      // The provider creates the batch; the process dies before the job records its id.
      createBatch: async (file, metadata) => {
        const created = await inner.createBatch(file, metadata);
        if (!crash) return created;
        crash = false;
        throw new Error("the container was stopped");
      },
      getBatch: (id) => inner.getBatch(id),
      listBatches: (since) => inner.listBatches(since),
      fileText: (id) => inner.fileText(id),
    });
    await expect(f.defer()).rejects.toMatchObject({ queued: true });
    await expect(f.tick()).rejects.toThrow(/the container was stopped/);
    const [crashed] = await f.state.listOpenBatchJobs("r1");
    expect(crashed).toMatchObject({ status: "submitting", batchId: null });
    // Before the restart, the organisation creates 150 other batches: more than one page of the listing.
    for (let i = 0; i < 150; i++) await inner.createBatch(inputFile, { mmevol_job: `other-${i}` });
    f.advance(1_000);
    await f.tick();
    expect(inner.stats().batchesCreated).toBe(151);
    const [adopted] = await f.state.listOpenBatchJobs("r1");
    expect(adopted).toMatchObject({ id: crashed?.id, status: "submitted" });
    expect(adopted?.batchId).toMatch(/^batch/);
    expect((await f.state.getBatchItem("r1", "s1", "h7"))?.status).toBe("submitted");
  });
});
