import { afterEach, describe, expect, it } from "vitest";
import { ShardNotFoundError } from "../../functions/ports/errors.ts";
import type { Clock } from "../../functions/ports/runtime.ts";
import {
  type BatchItem,
  type BatchJob,
  type SampleRecord,
  type ShardRecord,
  type StateStore,
  type StoredAnswer,
  UNUSABLE_IMAGE_ERROR,
  zeroUsage,
} from "../../functions/ports/state-store.ts";

export interface StoreUnderTest {
  readonly store: StateStore;
  readonly cleanup: () => Promise<void>;
}

export type MakeStore = (options?: { readonly clock?: Clock }) => Promise<StoreUnderTest>;

export const shardRecord = (overrides: Partial<ShardRecord> = {}): ShardRecord => ({
  run: "r1",
  shard: "s1",
  key: "seeds/r1/s1.jsonl",
  etag: "etag-1",
  pending: 1,
  ingested: false,
  finalized: false,
  lines: 0,
  config: { rounds: 3 },
  createdAt: 1,
  updatedAt: 1,
  ...overrides,
});

export const sampleRecord = (key: string, overrides: Partial<SampleRecord> = {}): SampleRecord => ({
  run: "r1",
  shard: "s1",
  key,
  status: "INGESTED",
  round: 0,
  version: 0,
  line: 1,
  sample: null,
  versions: [],
  rounds: [],
  pending: null,
  attempts: 0,
  error: null,
  raw: null,
  usage: zeroUsage(),
  updatedAt: 1,
  ...overrides,
});

/**
 * A record of r1/s1 whose sample has one seed item and the given image paths, ready for the evolve stage: the
 * sample and its seed version (round 0).
 */
export const seededSampleRecord = (key: string, images: readonly string[]): SampleRecord => {
  const item = {
    id: "s1-r0-i1",
    parent: null,
    question: "What is it?",
    answer: "A mug.",
    steps: [],
    objects: [],
    skills: [],
    format: "",
    imagePosition: "",
  };
  const sample = {
    id: "x",
    line: 1,
    images: [...images],
    caption: null,
    boxes: [],
    items: [item],
    extra: {},
    source: "llava",
  } as unknown as SampleRecord["sample"];
  return sampleRecord(key, { sample, versions: [{ round: 0, direction: null, from: null, items: [item] }] });
};

/** A batch job of shard r1/s1, being submitted (no file or batch yet). */
export const batchJob = (id: string, overrides: Partial<BatchJob> = {}): BatchJob => ({
  run: "r1",
  shard: "s1",
  id,
  status: "submitting",
  model: "gpt-4o-mini",
  items: 2,
  bytes: 100,
  fileId: null,
  batchId: null,
  remoteStatus: null,
  polls: 0,
  nextPollAt: 0,
  createdAt: 0,
  updatedAt: 0,
  error: null,
  ...overrides,
});

/** A job of one request submitted at `at`, its batch still running at the provider. */
export const submittedBatchJob = (id: string, at: number, overrides: Partial<BatchJob> = {}): BatchJob =>
  batchJob(id, {
    status: "submitted",
    items: 1,
    fileId: "file-1",
    batchId: "batch-1",
    remoteStatus: "in_progress",
    polls: 3,
    nextPollAt: at,
    createdAt: at,
    updatedAt: at,
    ...overrides,
  });

export const answer = (content: string): StoredAnswer => ({
  content,
  promptTokens: 10,
  cachedTokens: 0,
  completionTokens: 5,
  model: "gpt-4o-mini",
  costUsd: 0.001,
});

const present = (record: SampleRecord | null): SampleRecord => {
  if (record === null) throw new Error("sample missing");
  return record;
};

/**
 * The StateStore's behaviour, run against every implementation (SQLite locally, DynamoDB in AWS), so the
 * pipeline sees the same semantics wherever it runs.
 */
export function describeStateStoreContract(
  name: string,
  makeStore: MakeStore,
  options: {
    /** Samples in the paging test; an emulator that copies its whole state per transaction needs fewer. */
    readonly bulkSamples?: number;
    /**
     * False for an emulator (moto) whose transactions are not isolated from a concurrent plain write to the
     * same item: there, only transactional writes race each other, and the plain one comes after.
     */
    readonly isolatesTransactions?: boolean;
  } = {},
): void {
  const bulk = options.bulkSamples ?? 2_000;
  const cleanups: (() => Promise<void>)[] = [];
  const open = async (options?: { readonly clock?: Clock }): Promise<StateStore> => {
    const made = await makeStore(options);
    cleanups.push(made.cleanup);
    return made.store;
  };
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0)) await cleanup();
  });

  describe(`${name} shards`, () => {
    it("creates a shard once and returns the stored record on the second call", async () => {
      const store = await open();
      const first = await store.createShard(shardRecord());
      expect(first.created).toBe(true);
      expect(first.shard.pending).toBe(1);
      const second = await store.createShard(shardRecord({ etag: "other", pending: 7 }));
      expect(second.created).toBe(false);
      expect(second.shard.etag).toBe("etag-1");
      expect(second.shard.pending).toBe(1);
      expect(await store.getShard("r1", "s1")).toEqual(shardRecord());
      expect(await store.getShard("r1", "nope")).toBeNull();
    });

    it("lists all shards, or those of one run", async () => {
      const store = await open();
      await store.createShard(shardRecord({ run: "r2", shard: "b" }));
      await store.createShard(shardRecord({ run: "r1", shard: "b" }));
      await store.createShard(shardRecord({ run: "r1", shard: "a" }));
      // A run whose name extends another's must not leak into that run's listing.
      await store.createShard(shardRecord({ run: "r1x", shard: "a" }));
      expect((await store.listShards()).map((s) => `${s.run}/${s.shard}`)).toEqual([
        "r1/a",
        "r1/b",
        "r1x/a",
        "r2/b",
      ]);
      expect((await store.listShards("r1")).map((s) => s.shard)).toEqual(["a", "b"]);
      expect(await store.listShards("none")).toEqual([]);
    });

    it("completes ingest exactly once", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      await store.putSamples([sampleRecord("a"), sampleRecord("b")]);
      expect(await store.completeIngest("r1", "s1", 2)).toBe(2);
      expect(await store.completeIngest("r1", "s1", 2)).toBeNull();
      const shard = await store.getShard("r1", "s1");
      expect(shard).toMatchObject({ ingested: true, lines: 2, pending: 2 });
      expect(await store.completeIngest("r1", "missing", 1)).toBeNull();
      expect(await store.getShard("r1", "missing")).toBeNull();
    });

    it("marks a shard finalized exactly once", async () => {
      const store = await open();
      await store.createShard(shardRecord({ pending: 0, ingested: true }));
      expect(await store.markFinalized("r1", "s1", 0)).toBe(true);
      expect(await store.markFinalized("r1", "s1", 0)).toBe(false);
      expect((await store.getShard("r1", "s1"))?.finalized).toBe(true);
      expect(await store.markFinalized("r1", "missing", 0)).toBe(false);
      expect(await store.getShard("r1", "missing")).toBeNull();
    });

    it("lets only one of several racing completeIngest and markFinalized calls win", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      const ingests = await Promise.all([1, 2, 3].map(() => store.completeIngest("r1", "s1", 5)));
      expect(ingests.filter((p) => p !== null)).toEqual([0]);
      const finals = await Promise.all([1, 2, 3].map(() => store.markFinalized("r1", "s1", 0)));
      expect(finals.filter(Boolean)).toHaveLength(1);
      expect(await store.getShard("r1", "s1")).toMatchObject({ pending: 0, lines: 5, finalized: true });
    });
  });

  describe(`${name} samples`, () => {
    it("counts only new non-terminal samples into pending, and never twice", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      const batch = [
        sampleRecord("a"),
        sampleRecord("b"),
        sampleRecord("c", { status: "REJECTED", raw: "{bad" }),
        sampleRecord("d", { status: "PASSED_THROUGH" }),
      ];
      expect(await store.putSamples(batch)).toBe(4);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(3);
      // A redelivered ingest writes the same lines again, plus one new one.
      expect(await store.putSamples([...batch, sampleRecord("e", { status: "EVOLVING", round: 1 })])).toBe(1);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(4);
      expect(await store.getSample("r1", "s1", "c")).toMatchObject({ status: "REJECTED", raw: "{bad" });
      expect(await store.getSample("r1", "s1", "zzz")).toBeNull();
      // Only terminal samples are new: they count as lines, not as pending work.
      expect(await store.putSamples([sampleRecord("f", { status: "REJECTED" }), ...batch])).toBe(1);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(4);
    });

    it("keeps the first of two records with the same key in one batch", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      expect(await store.putSamples([sampleRecord("a", { line: 1 }), sampleRecord("a", { line: 2 })])).toBe(
        1,
      );
      expect((await store.getSample("r1", "s1", "a"))?.line).toBe(1);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(2);
    });

    it("refuses samples of an unknown shard and inserts none of the batch", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      await expect(
        store.putSamples([sampleRecord("a"), sampleRecord("x", { shard: "ghost" })]),
      ).rejects.toBeInstanceOf(ShardNotFoundError);
      expect(await store.getSample("r1", "s1", "a")).toBeNull();
      expect((await store.getShard("r1", "s1"))?.pending).toBe(1);
    });

    it("validates records on the way in", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      await expect(store.putSamples([sampleRecord("a", { round: -1 })])).rejects.toThrow();
      expect(await store.getSample("r1", "s1", "a")).toBeNull();
    });

    it("applies a transition only from the expected state, bumping the version", async () => {
      let now = 1_000;
      const store = await open({ clock: { now: () => now } });
      await store.createShard(shardRecord());
      await store.putSamples([sampleRecord("a")]);
      now = 2_000;
      const moved = await store.transition(sampleRecord("a"), { status: "EVOLVING", round: 1, attempts: 1 });
      expect(moved).toEqual({ applied: true, shardPending: null });
      const after = await store.getSample("r1", "s1", "a");
      expect(after).toMatchObject({
        status: "EVOLVING",
        round: 1,
        version: 1,
        attempts: 1,
        updatedAt: 2_000,
      });
      // Fields the update does not name are kept.
      expect(after?.line).toBe(1);

      for (const stale of [
        { status: "INGESTED" as const, round: 0, version: 0 },
        { status: "EVOLVING" as const, round: 2, version: 1 },
        { status: "EVOLVING" as const, round: 1, version: 0 },
      ]) {
        expect(await store.transition({ ...present(after), ...stale }, { status: "FAILED" })).toEqual({
          applied: false,
          shardPending: null,
        });
      }
      const missing = { ...present(after), key: "missing" };
      expect(await store.transition(missing, { status: "DONE" })).toEqual({
        applied: false,
        shardPending: null,
      });
      expect(await store.getSample("r1", "s1", "a")).toMatchObject({ status: "EVOLVING", version: 1 });
    });

    it("lets only one of two racing transitions with the same expected state apply", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      await store.putSamples([sampleRecord("a")]);
      const read = present(await store.getSample("r1", "s1", "a"));
      const plain = () => store.transition(read, { status: "EVOLVING", round: 1 });
      const racing = [
        store.transition(read, { status: "FAILED", error: "second" }),
        store.transition(read, { status: "DONE" }),
      ];
      const isolated = options.isolatesTransactions ?? true;
      const results = isolated
        ? await Promise.all([plain(), ...racing])
        : [...(await Promise.all(racing)), await plain()];
      expect(results.filter((r) => r.applied)).toHaveLength(1);
      const winner = await store.getSample("r1", "s1", "a");
      expect(winner?.version).toBe(1);
      // The shard counts down only if the winner was a terminal transition.
      const terminal = winner?.status === "FAILED" || winner?.status === "DONE";
      expect((await store.getShard("r1", "s1"))?.pending).toBe(terminal ? 1 : 2);
    });

    it("decrements pending once per sample that becomes terminal, and reaches zero once", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      await store.putSamples([sampleRecord("a"), sampleRecord("b")]);
      expect(await store.completeIngest("r1", "s1", 2)).toBe(2);

      const a = present(await store.getSample("r1", "s1", "a"));
      expect(await store.transition(a, { status: "DONE" })).toEqual({
        applied: true,
        shardPending: 1,
      });
      // Terminal to terminal (e.g. a late correction) does not count again.
      const aDone = present(await store.getSample("r1", "s1", "a"));
      expect(await store.transition(aDone, { status: "FAILED" })).toEqual({
        applied: true,
        shardPending: null,
      });
      // A duplicate of the terminal write finds the version moved on.
      expect(await store.transition(a, { status: "DONE" })).toEqual({
        applied: false,
        shardPending: null,
      });

      const b = present(await store.getSample("r1", "s1", "b"));
      expect(await store.transition(b, { status: "EVOLVING", round: 1 })).toEqual({
        applied: true,
        shardPending: null,
      });
      const bEvolving = present(await store.getSample("r1", "s1", "b"));
      const zeros = await Promise.all([
        store.transition(bEvolving, { status: "PASSED_THROUGH" }),
        store.transition(bEvolving, { status: "PASSED_THROUGH" }),
      ]);
      expect(zeros.map((r) => r.shardPending).filter((p) => p === 0)).toHaveLength(1);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(0);
    });

    it("counts down concurrent terminal transitions of different samples exactly", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      const keys = Array.from({ length: 12 }, (_, i) => `k${String(i).padStart(2, "0")}`);
      await store.putSamples(keys.map((key) => sampleRecord(key)));
      expect(await store.completeIngest("r1", "s1", keys.length)).toBe(keys.length);
      const results = await Promise.all(
        keys.map((key) => store.transition(sampleRecord(key), { status: "DONE" })),
      );
      expect(results.every((r) => r.applied)).toBe(true);
      expect(results.some((r) => r.shardPending === 0)).toBe(true);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(0);
    });

    it("reopens FAILED samples and those passed through for an unusable image, from their seed, and the shard", async () => {
      const store = await open();
      await store.createShard(shardRecord());
      const seed = { round: 0, direction: null, from: null, items: [] };
      const evolved = { round: 1, direction: "perception" as const, from: 0, items: [] };
      const spent = { calls: 2, promptTokens: 10, cachedTokens: 0, completionTokens: 5, costUsd: 0.01 };
      await store.putSamples(["a", "b", "c", "d", "e"].map((key) => sampleRecord(key)));
      expect(await store.completeIngest("r1", "s1", 5)).toBe(5);
      const a = present(await store.getSample("r1", "s1", "a"));
      await store.transition(a, {
        status: "FAILED",
        round: 2,
        versions: [seed, evolved],
        attempts: 5,
        error: "judge: answer invalid after 3 tries",
        usage: spent,
      });
      await store.transition(present(await store.getSample("r1", "s1", "b")), { status: "DONE" });
      await store.transition(present(await store.getSample("r1", "s1", "c")), { status: "FAILED" });
      // Passed through: its image missing (the image may be there now), or every round eliminated (final).
      await store.transition(present(await store.getSample("r1", "s1", "d")), {
        status: "PASSED_THROUGH",
        error: `${UNUSABLE_IMAGE_ERROR}image not found: images/d.png`,
      });
      await store.transition(present(await store.getSample("r1", "s1", "e")), { status: "PASSED_THROUGH" });
      // Never reopened: the shard has no count, which a finalize reads as 0.
      expect((await store.getShard("r1", "s1"))?.reopens ?? 0).toBe(0);
      expect(await store.markFinalized("r1", "s1", 0)).toBe(true);

      const reopened = await store.reopenFailed("r1", "s1");
      expect(reopened.map((r) => r.key).sort()).toEqual(["a", "c", "d"]);
      const again = present(await store.getSample("r1", "s1", "a"));
      expect(again).toMatchObject({
        status: "INGESTED",
        round: 0,
        versions: [seed],
        rounds: [],
        attempts: 0,
        retries: 1,
        error: null,
        usage: zeroUsage(),
      });
      expect(reopened.find((r) => r.key === "a")).toEqual(again);
      expect((await store.getSample("r1", "s1", "b"))?.status).toBe("DONE");
      expect((await store.getSample("r1", "s1", "d"))?.status).toBe("INGESTED");
      expect((await store.getSample("r1", "s1", "e"))?.status).toBe("PASSED_THROUGH");
      expect(await store.getShard("r1", "s1")).toMatchObject({ pending: 3, finalized: false });
      // Nothing FAILED is left: a second call changes nothing.
      expect(await store.reopenFailed("r1", "s1")).toEqual([]);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(3);
      // The reopened samples count down to zero again, and the shard finalizes once more.
      expect((await store.transition(again, { status: "DONE" })).shardPending).toBe(2);
      const c = present(await store.getSample("r1", "s1", "c"));
      expect((await store.transition(c, { status: "DONE" })).shardPending).toBe(1);
      const d = present(await store.getSample("r1", "s1", "d"));
      expect((await store.transition(d, { status: "DONE" })).shardPending).toBe(0);
      // A finalize that read the shard before the reopen wrote outputs without the three: it may not mark it.
      expect((await store.getShard("r1", "s1"))?.reopens).toBe(3);
      expect(await store.markFinalized("r1", "s1", 0)).toBe(false);
      expect(await store.markFinalized("r1", "s1", 3)).toBe(true);
      expect(await store.reopenFailed("r1", "unknown")).toEqual([]);
    });

    it(`pages through ${bulk} samples in key order`, async () => {
      const store = await open();
      await store.createShard(shardRecord());
      // Inserted out of order, to show the listing sorts.
      const keys = Array.from({ length: bulk }, (_, i) => `line-${String(i).padStart(5, "0")}`);
      const shuffled = [...keys].reverse();
      expect(await store.putSamples(shuffled.map((key, i) => sampleRecord(key, { line: i })))).toBe(bulk);
      // A neighbouring shard's samples must not leak into the listing.
      await store.createShard(shardRecord({ shard: "s2" }));
      await store.putSamples([sampleRecord("line-00000x", { shard: "s2" })]);
      const seen: string[] = [];
      for await (const record of store.listSamples("r1", "s1")) seen.push(record.key);
      expect(seen).toEqual(keys);
      const none: string[] = [];
      for await (const record of store.listSamples("r1", "empty")) none.push(record.key);
      expect(none).toEqual([]);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(bulk + 1);
      // Redelivering part of it (mixed with new lines) counts only the new ones.
      const again = [
        ...keys.slice(0, 150).map((key) => sampleRecord(key)),
        sampleRecord("new-1"),
        sampleRecord("new-2"),
      ];
      expect(await store.putSamples(again)).toBe(2);
      expect((await store.getShard("r1", "s1"))?.pending).toBe(bulk + 3);
    });
  });

  describe(`${name} answers`, () => {
    it("keeps the first answer stored under a hash", async () => {
      const store = await open();
      expect(await store.getAnswer("h1")).toBeNull();
      await store.putAnswer("h1", answer("first"));
      await store.putAnswer("h1", answer("second"));
      expect(await store.getAnswer("h1")).toEqual(answer("first"));
    });
  });

  describe(`${name} batch items and jobs`, () => {
    const item = (hash: string, overrides: Partial<BatchItem> = {}): BatchItem => ({
      run: "r1",
      shard: "s1",
      hash,
      status: "queued",
      model: "gpt-4o-mini",
      body: `work/r1/batches/s1/requests/${hash}.json`,
      message: { kind: "evolve", run: "r1", shard: "s1", sample: "000000001", round: 1 },
      job: null,
      tries: 0,
      error: null,
      updatedAt: 0,
      ...overrides,
    });
    const job = batchJob;

    it("queues a request once, and again only after it failed, keeping its tries", async () => {
      const store = await open();
      const first = await store.queueBatchItem(item("h1"));
      expect(first.queued).toBe(true);
      const again = await store.queueBatchItem(item("h1", { model: "other" }));
      expect(again.queued).toBe(false);
      expect(again.item.model).toBe("gpt-4o-mini");
      expect(await store.updateBatchItem(first.item, { status: "submitted", job: "j1", tries: 1 })).toBe(
        true,
      );
      expect((await store.queueBatchItem(item("h1"))).queued).toBe(false);
      // The item as read before it was submitted is out of date: moving it again does nothing.
      expect(await store.updateBatchItem(first.item, { status: "failed" })).toBe(false);
      const submitted = await store.getBatchItem("r1", "s1", "h1");
      expect(submitted).toMatchObject({ status: "submitted", job: "j1", tries: 1 });
      if (submitted === null) throw new Error("unreachable");
      expect(await store.updateBatchItem(submitted, { status: "failed", error: "expired" })).toBe(true);
      expect(await store.getBatchItem("r1", "s1", "h1")).toMatchObject({
        status: "failed",
        job: "j1",
        tries: 1,
        error: "expired",
      });
      const requeued = await store.queueBatchItem(item("h1"));
      expect(requeued.queued).toBe(true);
      expect(requeued.item.tries).toBe(1);
      expect((await store.getBatchItem("r1", "s1", "h1"))?.status).toBe("queued");
    });

    it("keeps waiting items (other work waiting for a request, `<hash>~<work>`) apart from the requests", async () => {
      const store = await open();
      expect((await store.queueBatchItem(item("h1"))).queued).toBe(true);
      const waiter = await store.queueBatchItem(
        item("h1~w2", {
          status: "waiting",
          message: { kind: "judge", run: "r1", shard: "s1", sample: "2", round: 1 },
        }),
      );
      expect(waiter).toMatchObject({ queued: true, item: { status: "waiting", hash: "h1~w2" } });
      // Queued once: the same work waiting again finds it.
      expect((await store.queueBatchItem(item("h1~w2", { status: "waiting" }))).queued).toBe(false);
      expect((await store.listBatchItems("r1", "s1", "waiting")).map((i) => i.hash)).toEqual(["h1~w2"]);
      expect((await store.listBatchItems("r1", "s1", "queued")).map((i) => i.hash)).toEqual(["h1"]);
      expect(await store.updateBatchItem(waiter.item, { status: "answered" })).toBe(true);
      expect(await store.getBatchItem("r1", "s1", "h1~w2")).toMatchObject({ status: "answered" });
      expect(await store.listBatchItems("r1", "s1", "waiting")).toEqual([]);
    });

    it("queues with the caller's read of the item, and still refuses when that read is out of date", async () => {
      const store = await open();
      // The caller read nothing there: queued.
      expect((await store.queueBatchItem(item("h1"), null)).queued).toBe(true);
      // It read nothing, but another caller queued it since: not queued twice.
      const raced = await store.queueBatchItem(item("h1", { model: "other" }), null);
      expect(raced.queued).toBe(false);
      expect(raced.item.model).toBe("gpt-4o-mini");
      const stored = await store.getBatchItem("r1", "s1", "h1");
      if (stored === null) throw new Error("not stored");
      expect(await store.updateBatchItem(stored, { status: "submitted", job: "j1", tries: 1 })).toBe(true);
      const submitted = await store.getBatchItem("r1", "s1", "h1");
      if (submitted === null) throw new Error("not stored");
      expect(await store.updateBatchItem(submitted, { status: "failed", error: "500" })).toBe(true);
      const failed = await store.getBatchItem("r1", "s1", "h1");
      // Read as failed: queued again with its tries.
      const requeued = await store.queueBatchItem(item("h1"), failed);
      expect(requeued).toMatchObject({ queued: true, item: { status: "queued", tries: 1 } });
      // Read as failed, but queued since: not queued again.
      expect((await store.queueBatchItem(item("h1"), failed)).queued).toBe(false);
      expect((await store.listBatchItems("r1", "s1", "queued")).map((i) => i.hash)).toEqual(["h1"]);
    });

    it("lists a shard's items by status, and no other shard's", async () => {
      const store = await open();
      await store.queueBatchItem(item("h1"));
      await store.queueBatchItem(item("h2"));
      await store.queueBatchItem(item("h3", { shard: "s2" }));
      const h2 = await store.getBatchItem("r1", "s1", "h2");
      if (h2 === null) throw new Error("not stored");
      await store.updateBatchItem(h2, { status: "submitted", job: "j1" });
      expect((await store.listBatchItems("r1", "s1", "queued")).map((i) => i.hash)).toEqual(["h1"]);
      expect(
        (await store.listBatchItems("r1", "s1", "queued", { consistent: false })).map((i) => i.hash),
      ).toEqual(["h1"]);
      expect((await store.listBatchItems("r1", "s1", "submitted")).map((i) => i.hash)).toEqual(["h2"]);
      expect((await store.listBatchItems("r1", "s2", "queued")).map((i) => i.hash)).toEqual(["h3"]);
      // By job: a shard's submitted items include the answered ones of every earlier job.
      await store.queueBatchItem(item("h4"));
      const h4 = await store.getBatchItem("r1", "s1", "h4");
      if (h4 === null) throw new Error("not stored");
      await store.updateBatchItem(h4, { status: "submitted", job: "j2" });
      const byJob = async (job: string) =>
        (await store.listBatchItems("r1", "s1", "submitted", { job })).map((i) => i.hash);
      expect(await byJob("j1")).toEqual(["h2"]);
      expect(await byJob("j2")).toEqual(["h4"]);
      expect(await byJob("j3")).toEqual([]);
      expect(await store.getBatchItem("r1", "s1", "nope")).toBeNull();
    });

    it("lists only open jobs, per run or all", async () => {
      const store = await open();
      await store.putBatchJob(job("j1"));
      await store.putBatchJob(job("j2", { status: "submitted", batchId: "b2" }));
      await store.putBatchJob(job("j3", { run: "r2" }));
      await store.putBatchJob(job("j1", { status: "applied" }));
      expect((await store.listOpenBatchJobs("r1")).map((j) => j.id)).toEqual(["j2"]);
      expect((await store.listOpenBatchJobs()).map((j) => `${j.run}/${j.id}`).sort()).toEqual([
        "r1/j2",
        "r2/j3",
      ]);
    });
  });
}
