import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { afterAll, describe, expect, it } from "vitest";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { ShardNotFoundError } from "../../functions/ports/errors.ts";
import type { SampleStatus } from "../../functions/ports/state-store.ts";
import {
  answer,
  describeStateStoreContract,
  sampleRecord,
  shardRecord,
} from "../helpers/state-store-contract.ts";

const dir = mkdtempSync(path.join(os.tmpdir(), "mmevol-sqlite-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const open = (): SqliteStateStore => new SqliteStateStore(":memory:");

describeStateStoreContract("SqliteStateStore", async (options = {}) => {
  const store = new SqliteStateStore(":memory:", options.clock === undefined ? {} : { clock: options.clock });
  return { store, cleanup: async () => store.close() };
});

describe("SqliteStateStore specifics", () => {
  it("rolls a terminal transition back when its shard is gone", async () => {
    const path1 = path.join(dir, "orphan.db");
    const store = new SqliteStateStore(path1);
    await store.createShard(shardRecord());
    await store.putSamples([sampleRecord("a")]);
    const raw = new DatabaseSync(path1);
    raw.exec("DELETE FROM shards");
    raw.close();
    await expect(store.transition(sampleRecord("a"), { status: "DONE" })).rejects.toBeInstanceOf(
      ShardNotFoundError,
    );
    expect(await store.getSample("r1", "s1", "a")).toMatchObject({ status: "INGESTED", version: 0 });
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

describe("SqliteStateStore on a file", () => {
  it("keeps everything when the file is reopened, so a run resumes", async () => {
    const file = path.join(dir, "resume.db");
    const first = new SqliteStateStore(file);
    await first.createShard(shardRecord());
    await first.putSamples([sampleRecord("a"), sampleRecord("b")]);
    await first.transition(sampleRecord("a"), { status: "DONE" });
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

  it("carries on in a file made with the earlier WITHOUT ROWID tables", async () => {
    const file = path.join(dir, "earlier.db");
    const raw = new DatabaseSync(file);
    raw.exec(`
      CREATE TABLE samples (run TEXT NOT NULL, shard TEXT NOT NULL, key TEXT NOT NULL, status TEXT NOT NULL,
        round INTEGER NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (run, shard, key)) WITHOUT ROWID;
      CREATE TABLE answers (hash TEXT PRIMARY KEY, record TEXT NOT NULL) WITHOUT ROWID;`);
    raw.close();
    const store = new SqliteStateStore(file);
    await store.createShard(shardRecord());
    await store.putSamples([sampleRecord("a")]);
    expect(await store.transition(sampleRecord("a"), { status: "DONE" })).toEqual({
      applied: true,
      shardPending: 1,
    });
    await store.putAnswer("h", answer("kept"));
    store.close();
    const check = new DatabaseSync(file);
    const tables = check.prepare("SELECT sql FROM sqlite_master WHERE name IN ('samples', 'answers')").all();
    check.close();
    expect(tables.map((t) => String(t.sql)).every((sql) => sql.includes("WITHOUT ROWID"))).toBe(true);
    const reopened = new SqliteStateStore(file);
    expect(await reopened.getSample("r1", "s1", "a")).toMatchObject({ status: "DONE", version: 1 });
    expect(await reopened.getAnswer("h")).toEqual(answer("kept"));
    reopened.close();
  });

  it("makes samples and answers rowid tables in a new file", () => {
    const file = path.join(dir, "rowid.db");
    new SqliteStateStore(file).close();
    const raw = new DatabaseSync(file);
    const tables = raw.prepare("SELECT sql FROM sqlite_master WHERE name IN ('samples', 'answers')").all();
    raw.close();
    expect(tables).toHaveLength(2);
    expect(tables.some((t) => String(t.sql).includes("WITHOUT ROWID"))).toBe(false);
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
