import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterAll, describe, expect, it } from "vitest";
import { ShardNotFoundError, SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import {
  type SampleRecord,
  type SampleStatus,
  type ShardRecord,
  type StoredAnswer,
  zeroUsage,
} from "../../functions/ports/state-store.ts";

const dir = mkdtempSync(path.join(os.tmpdir(), "mmevol-sqlite-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const shardRecord = (overrides: Partial<ShardRecord> = {}): ShardRecord => ({
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

const sampleRecord = (key: string, overrides: Partial<SampleRecord> = {}): SampleRecord => ({
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

const answer = (content: string): StoredAnswer => ({
  content,
  promptTokens: 10,
  cachedTokens: 0,
  completionTokens: 5,
  model: "gpt-4o-mini",
  costUsd: 0.001,
});

const expectState = (record: SampleRecord | null) => {
  if (record === null) throw new Error("sample missing");
  return { status: record.status, round: record.round, version: record.version };
};

const open = (): SqliteStateStore => new SqliteStateStore(":memory:");

describe("SqliteStateStore shards", () => {
  it("creates a shard once and returns the stored record on the second call", async () => {
    const store = open();
    const first = await store.createShard(shardRecord());
    expect(first.created).toBe(true);
    expect(first.shard.pending).toBe(1);
    const second = await store.createShard(shardRecord({ etag: "other", pending: 7 }));
    expect(second.created).toBe(false);
    expect(second.shard.etag).toBe("etag-1");
    expect(second.shard.pending).toBe(1);
    expect(await store.getShard("r1", "s1")).toEqual(shardRecord());
    expect(await store.getShard("r1", "nope")).toBeNull();
    store.close();
  });

  it("lists all shards, or those of one run", async () => {
    const store = open();
    await store.createShard(shardRecord({ run: "r2", shard: "b" }));
    await store.createShard(shardRecord({ run: "r1", shard: "b" }));
    await store.createShard(shardRecord({ run: "r1", shard: "a" }));
    expect((await store.listShards()).map((s) => `${s.run}/${s.shard}`)).toEqual(["r1/a", "r1/b", "r2/b"]);
    expect((await store.listShards("r1")).map((s) => s.shard)).toEqual(["a", "b"]);
    expect(await store.listShards("none")).toEqual([]);
    store.close();
  });

  it("completes ingest exactly once", async () => {
    const store = open();
    await store.createShard(shardRecord());
    await store.putSamples([sampleRecord("a"), sampleRecord("b")]);
    expect(await store.completeIngest("r1", "s1", 2)).toBe(2);
    expect(await store.completeIngest("r1", "s1", 2)).toBeNull();
    const shard = await store.getShard("r1", "s1");
    expect(shard).toMatchObject({ ingested: true, lines: 2, pending: 2 });
    expect(await store.completeIngest("r1", "missing", 1)).toBeNull();
    store.close();
  });

  it("marks a shard finalized exactly once", async () => {
    const store = open();
    await store.createShard(shardRecord());
    expect(await store.markFinalized("r1", "s1")).toBe(true);
    expect(await store.markFinalized("r1", "s1")).toBe(false);
    expect((await store.getShard("r1", "s1"))?.finalized).toBe(true);
    expect(await store.markFinalized("r1", "missing")).toBe(false);
    store.close();
  });
});

describe("SqliteStateStore samples", () => {
  it("counts only new non-terminal samples into pending, and never twice", async () => {
    const store = open();
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
    store.close();
  });

  it("refuses samples of an unknown shard and inserts none of the batch", async () => {
    const store = open();
    await store.createShard(shardRecord());
    await expect(
      store.putSamples([sampleRecord("a"), sampleRecord("x", { shard: "ghost" })]),
    ).rejects.toBeInstanceOf(ShardNotFoundError);
    expect(await store.getSample("r1", "s1", "a")).toBeNull();
    expect((await store.getShard("r1", "s1"))?.pending).toBe(1);
    store.close();
  });

  it("validates records on the way in", async () => {
    const store = open();
    await store.createShard(shardRecord());
    await expect(store.putSamples([sampleRecord("a", { round: -1 })])).rejects.toThrow();
    expect(await store.getSample("r1", "s1", "a")).toBeNull();
    store.close();
  });

  it("applies a transition only from the expected state, bumping the version", async () => {
    let now = 1_000;
    const store = new SqliteStateStore(":memory:", { clock: { now: () => now } });
    await store.createShard(shardRecord());
    await store.putSamples([sampleRecord("a")]);
    now = 2_000;
    const moved = await store.transition(
      "r1",
      "s1",
      "a",
      { status: "INGESTED", round: 0, version: 0 },
      { status: "EVOLVING", round: 1, attempts: 1 },
    );
    expect(moved).toEqual({ applied: true, shardPending: null });
    const after = await store.getSample("r1", "s1", "a");
    expect(after).toMatchObject({ status: "EVOLVING", round: 1, version: 1, attempts: 1, updatedAt: 2_000 });
    // Fields the update does not name are kept.
    expect(after?.line).toBe(1);

    for (const stale of [
      { status: "INGESTED" as const, round: 0, version: 0 },
      { status: "EVOLVING" as const, round: 2, version: 1 },
      { status: "EVOLVING" as const, round: 1, version: 0 },
    ]) {
      expect(await store.transition("r1", "s1", "a", stale, { status: "FAILED" })).toEqual({
        applied: false,
        shardPending: null,
      });
    }
    expect(await store.transition("r1", "s1", "missing", expectState(after), { status: "DONE" })).toEqual({
      applied: false,
      shardPending: null,
    });
    expect(await store.getSample("r1", "s1", "a")).toMatchObject({ status: "EVOLVING", version: 1 });
    store.close();
  });

  it("lets only one of two racing transitions with the same expected state apply", async () => {
    const store = open();
    await store.createShard(shardRecord());
    await store.putSamples([sampleRecord("a")]);
    const expected = { status: "INGESTED" as const, round: 0, version: 0 };
    const results = await Promise.all([
      store.transition("r1", "s1", "a", expected, { status: "EVOLVING", round: 1 }),
      store.transition("r1", "s1", "a", expected, { status: "FAILED", error: "second" }),
      store.transition("r1", "s1", "a", expected, { status: "DONE" }),
    ]);
    expect(results.filter((r) => r.applied)).toHaveLength(1);
    expect(await store.getSample("r1", "s1", "a")).toMatchObject({ status: "EVOLVING", version: 1 });
    expect((await store.getShard("r1", "s1"))?.pending).toBe(2);
    store.close();
  });

  it("decrements pending once per sample that becomes terminal, and reaches zero once", async () => {
    const store = open();
    await store.createShard(shardRecord());
    await store.putSamples([sampleRecord("a"), sampleRecord("b")]);
    expect(await store.completeIngest("r1", "s1", 2)).toBe(2);

    const a = await store.getSample("r1", "s1", "a");
    expect(await store.transition("r1", "s1", "a", expectState(a), { status: "DONE" })).toEqual({
      applied: true,
      shardPending: 1,
    });
    // Terminal to terminal (e.g. a late correction) does not count again.
    const aDone = await store.getSample("r1", "s1", "a");
    expect(await store.transition("r1", "s1", "a", expectState(aDone), { status: "FAILED" })).toEqual({
      applied: true,
      shardPending: null,
    });
    // A duplicate of the terminal write finds the version moved on.
    expect(await store.transition("r1", "s1", "a", expectState(a), { status: "DONE" })).toEqual({
      applied: false,
      shardPending: null,
    });

    const b = await store.getSample("r1", "s1", "b");
    const bEvolving = { status: "EVOLVING" as const, round: 1, version: 1 };
    expect(await store.transition("r1", "s1", "b", expectState(b), { status: "EVOLVING", round: 1 })).toEqual(
      {
        applied: true,
        shardPending: null,
      },
    );
    const zeros = await Promise.all([
      store.transition("r1", "s1", "b", bEvolving, { status: "PASSED_THROUGH" }),
      store.transition("r1", "s1", "b", bEvolving, { status: "PASSED_THROUGH" }),
    ]);
    expect(zeros.map((r) => r.shardPending).filter((p) => p === 0)).toHaveLength(1);
    expect((await store.getShard("r1", "s1"))?.pending).toBe(0);
    store.close();
  });

  it("rolls a terminal transition back when its shard is gone", async () => {
    const path1 = path.join(dir, "orphan.db");
    const store = new SqliteStateStore(path1);
    await store.createShard(shardRecord());
    await store.putSamples([sampleRecord("a")]);
    const raw = new DatabaseSync(path1);
    raw.exec("DELETE FROM shards");
    raw.close();
    await expect(
      store.transition("r1", "s1", "a", { status: "INGESTED", round: 0, version: 0 }, { status: "DONE" }),
    ).rejects.toBeInstanceOf(ShardNotFoundError);
    expect(await store.getSample("r1", "s1", "a")).toMatchObject({ status: "INGESTED", version: 0 });
    store.close();
  });

  it("pages through 2,000 samples in key order", async () => {
    const store = open();
    await store.createShard(shardRecord());
    // Inserted out of order, to show the listing sorts.
    const keys = Array.from({ length: 2_000 }, (_, i) => `line-${String(i).padStart(5, "0")}`);
    const shuffled = [...keys].reverse();
    expect(await store.putSamples(shuffled.map((key, i) => sampleRecord(key, { line: i })))).toBe(2_000);
    // A neighbouring shard's samples must not leak into the listing.
    await store.createShard(shardRecord({ shard: "s2" }));
    await store.putSamples([sampleRecord("line-00000x", { shard: "s2" })]);
    const seen: string[] = [];
    for await (const record of store.listSamples("r1", "s1")) seen.push(record.key);
    expect(seen).toEqual(keys);
    const none: string[] = [];
    for await (const record of store.listSamples("r1", "empty")) none.push(record.key);
    expect(none).toEqual([]);
    expect((await store.getShard("r1", "s1"))?.pending).toBe(2_001);
    store.close();
  });

  it("counts samples by status, every status present", async () => {
    const store = open();
    await store.createShard(shardRecord());
    await store.putSamples([
      sampleRecord("a"),
      sampleRecord("b"),
      sampleRecord("c", { status: "REJECTED" }),
      sampleRecord("d", { status: "JUDGING", round: 1 }),
    ]);
    const expected: Record<SampleStatus, number> = {
      INGESTED: 2,
      EVOLVING: 0,
      JUDGING: 1,
      DONE: 0,
      PASSED_THROUGH: 0,
      FAILED: 0,
      REJECTED: 1,
    };
    expect(store.countByStatus("r1", "s1")).toEqual(expected);
    expect(Object.values(store.countByStatus("r1", "none")).every((n) => n === 0)).toBe(true);
    store.close();
  });
});

describe("SqliteStateStore answers", () => {
  it("keeps the first answer stored under a hash", async () => {
    const store = open();
    expect(await store.getAnswer("h1")).toBeNull();
    await store.putAnswer("h1", answer("first"));
    await store.putAnswer("h1", answer("second"));
    expect(await store.getAnswer("h1")).toEqual(answer("first"));
    store.close();
  });
});

describe("SqliteStateStore on a file", () => {
  it("keeps everything when the file is reopened, so a run resumes", async () => {
    const file = path.join(dir, "resume.db");
    const first = new SqliteStateStore(file);
    await first.createShard(shardRecord());
    await first.putSamples([sampleRecord("a"), sampleRecord("b")]);
    await first.transition("r1", "s1", "a", { status: "INGESTED", round: 0, version: 0 }, { status: "DONE" });
    await first.putAnswer("h", answer("cached"));
    first.close();

    const second = new SqliteStateStore(file);
    expect(await second.getShard("r1", "s1")).toMatchObject({ pending: 2 });
    expect(await second.getSample("r1", "s1", "a")).toMatchObject({ status: "DONE", version: 1 });
    expect(await second.getAnswer("h")).toEqual(answer("cached"));
    // Work carries on where it stopped.
    expect(await second.completeIngest("r1", "s1", 2)).toBe(1);
    expect(await second.putSamples([sampleRecord("a"), sampleRecord("b")])).toBe(0);
    second.close();
  });

  it("uses WAL journaling", () => {
    const file = path.join(dir, "wal.db");
    new SqliteStateStore(file).close();
    const raw = new DatabaseSync(file);
    expect(raw.prepare("PRAGMA journal_mode").get()).toEqual({ journal_mode: "wal" });
    raw.close();
  });

  it("refuses a stored record that no longer fits the schema", async () => {
    const file = path.join(dir, "corrupt.db");
    const store = new SqliteStateStore(file);
    await store.createShard(shardRecord());
    await store.putSamples([sampleRecord("a")]);
    const raw = new DatabaseSync(file);
    raw.prepare("UPDATE samples SET record = ? WHERE key = 'a'").run(JSON.stringify({ key: "a" }));
    raw.close();
    await expect(store.getSample("r1", "s1", "a")).rejects.toThrow();
    store.close();
  });
});
