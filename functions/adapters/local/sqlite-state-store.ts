import { DatabaseSync, type StatementSync } from "node:sqlite";
import { z } from "zod";
import { ShardNotFoundError } from "../../ports/errors.ts";
import { type Clock, systemClock } from "../../ports/runtime.ts";
import {
  BatchItem,
  type BatchItemStatus,
  BatchJob,
  type ClaimResult,
  emptyStatusCounts,
  NewSampleRecord,
  reopenable,
  reopenedRecord,
  SampleRecord,
  SampleStatus,
  type SampleUpdate,
  ShardRecord,
  type StateStore,
  StoredAnswer,
  TERMINAL_STATUSES,
  type TransitionResult,
} from "../../ports/state-store.ts";

// Re-exported so code that imported it from here keeps working; it lives in the ports, shared with DynamoDB.
export { ShardNotFoundError };

/** How many samples `listSamples` reads per query, so a large shard never sits in memory whole. */
const PAGE_SIZE = 500;

// Samples and answers are rowid tables: their records (up to ~15 KB, ~2 KB) are far over the size at which
// SQLite advises against WITHOUT ROWID, which keeps whole rows in the key's b-tree. Measured on 10 KB rows,
// an update took 356 us WITHOUT ROWID and 172 us with a rowid. Files made before keep their tables; the
// statements are the same for both.
const SCHEMA = `
CREATE TABLE IF NOT EXISTS shards (
  run TEXT NOT NULL,
  shard TEXT NOT NULL,
  record TEXT NOT NULL,
  PRIMARY KEY (run, shard)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples (
  run TEXT NOT NULL,
  shard TEXT NOT NULL,
  key TEXT NOT NULL,
  status TEXT NOT NULL,
  round INTEGER NOT NULL,
  version INTEGER NOT NULL,
  record TEXT NOT NULL,
  PRIMARY KEY (run, shard, key)
);
CREATE INDEX IF NOT EXISTS samples_by_status ON samples (run, shard, status);
CREATE TABLE IF NOT EXISTS answers (
  hash TEXT PRIMARY KEY,
  record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_items (
  run TEXT NOT NULL,
  shard TEXT NOT NULL,
  hash TEXT NOT NULL,
  status TEXT NOT NULL,
  record TEXT NOT NULL,
  PRIMARY KEY (run, shard, hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_items_by_status ON batch_items (run, shard, status);
CREATE TABLE IF NOT EXISTS batch_jobs (
  run TEXT NOT NULL,
  id TEXT NOT NULL,
  open INTEGER NOT NULL,
  record TEXT NOT NULL,
  PRIMARY KEY (run, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
  hash TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  until INTEGER NOT NULL
) WITHOUT ROWID;
`;

// Rows come from a file another version of the program may have written: parse them like any outside data.
const RecordRow = z.object({ record: z.string() });
const ClaimRow = z.object({ owner: z.string(), until: z.number() });
const CountRow = z.object({ status: SampleStatus, n: z.number() });

const parseJson = <T>(schema: z.ZodType<T>, row: unknown): T =>
  schema.parse(JSON.parse(RecordRow.parse(row).record));

/**
 * The StateStore over an embedded SQLite file (`node:sqlite`), for local runs.
 * Every multi-row change runs in one IMMEDIATE transaction; WAL + synchronous=NORMAL means a crash
 * may lose the last committed transaction but never leaves the file inconsistent, so a run resumes.
 */
export class SqliteStateStore implements StateStore {
  private readonly db: DatabaseSync;
  private readonly clock: Clock;
  private readonly stmt: {
    insertShard: StatementSync;
    getShard: StatementSync;
    putShard: StatementSync;
    listShards: StatementSync;
    listRunShards: StatementSync;
    insertSample: StatementSync;
    getSample: StatementSync;
    putSample: StatementSync;
    pageSamples: StatementSync;
    countByStatus: StatementSync;
    getAnswer: StatementSync;
    insertAnswer: StatementSync;
    claim: StatementSync;
    getClaim: StatementSync;
    releaseClaim: StatementSync;
    begin: StatementSync;
    commit: StatementSync;
    rollback: StatementSync;
  };

  constructor(path: string, options: { readonly clock?: Clock } = {}) {
    this.clock = options.clock ?? systemClock;
    // The busy timeout lets a second process (e.g. a progress viewer) wait for a write instead of failing.
    this.db = new DatabaseSync(path, { timeout: 5_000 });
    // A checkpoint runs inside the commit that crosses the mark, on the event loop, and fsyncs the WAL and the
    // database: at SQLite's default (1,000 pages, about 4 MB) a 1,000-sample run made about 55 of them, each
    // stalling every worker. Most pages are rewritten again and again (a sample's record, the shard's counter),
    // so a longer WAL also copies fewer pages in all. Crash safety is unchanged: the WAL is written at every
    // commit; closing the store checkpoints the rest.
    this.db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 8192;");
    this.db.exec(SCHEMA);
    const db = this.db;
    this.stmt = {
      insertShard: db.prepare("INSERT OR IGNORE INTO shards (run, shard, record) VALUES (?, ?, ?)"),
      getShard: db.prepare("SELECT record FROM shards WHERE run = ? AND shard = ?"),
      putShard: db.prepare("UPDATE shards SET record = ? WHERE run = ? AND shard = ?"),
      listShards: db.prepare("SELECT record FROM shards ORDER BY run, shard"),
      listRunShards: db.prepare("SELECT record FROM shards WHERE run = ? ORDER BY shard"),
      insertSample: db.prepare(
        "INSERT OR IGNORE INTO samples (run, shard, key, status, round, version, record) VALUES (?, ?, ?, ?, ?, ?, ?)",
      ),
      getSample: db.prepare("SELECT record FROM samples WHERE run = ? AND shard = ? AND key = ?"),
      putSample: db.prepare(
        "UPDATE samples SET status = ?, round = ?, version = ?, record = ? WHERE run = ? AND shard = ? AND key = ? AND status = ? AND round = ? AND version = ?",
      ),
      pageSamples: db.prepare(
        "SELECT record FROM samples WHERE run = ? AND shard = ? AND key > ? ORDER BY key LIMIT ?",
      ),
      countByStatus: db.prepare(
        "SELECT status, count(*) AS n FROM samples WHERE run = ? AND shard = ? GROUP BY status",
      ),
      getAnswer: db.prepare("SELECT record FROM answers WHERE hash = ?"),
      insertAnswer: db.prepare("INSERT OR IGNORE INTO answers (hash, record) VALUES (?, ?)"),
      claim: db.prepare(
        "INSERT INTO claims (hash, owner, until) VALUES (?, ?, ?) ON CONFLICT (hash) DO UPDATE SET owner = excluded.owner, until = excluded.until WHERE claims.until <= ? OR claims.owner = excluded.owner",
      ),
      getClaim: db.prepare("SELECT owner, until FROM claims WHERE hash = ?"),
      releaseClaim: db.prepare("DELETE FROM claims WHERE hash = ? AND owner = ?"),
      begin: db.prepare("BEGIN IMMEDIATE"),
      commit: db.prepare("COMMIT"),
      rollback: db.prepare("ROLLBACK"),
    };
  }

  close(): void {
    this.db.close();
  }

  async createShard(shard: ShardRecord): Promise<{ created: boolean; shard: ShardRecord }> {
    const record = ShardRecord.parse(shard);
    return this.inTransaction(() => {
      const created = changed(this.stmt.insertShard.run(record.run, record.shard, JSON.stringify(record)));
      const stored = this.readShard(record.run, record.shard);
      if (stored === null) throw new ShardNotFoundError(record.run, record.shard);
      return { created, shard: stored };
    });
  }

  async getShard(run: string, shard: string): Promise<ShardRecord | null> {
    return this.readShard(run, shard);
  }

  async listShards(run?: string): Promise<ShardRecord[]> {
    const rows = run === undefined ? this.stmt.listShards.all() : this.stmt.listRunShards.all(run);
    return rows.map((row) => parseJson(ShardRecord, row));
  }

  async putSamples(records: readonly SampleRecord[]): Promise<number> {
    const parsed = records.map((record) => NewSampleRecord.parse(record));
    return this.inTransaction(() => {
      let inserted = 0;
      // Pending increments per shard, applied once each after the inserts.
      const added = new Map<string, { run: string; shard: string; count: number }>();
      for (const record of parsed) {
        const result = this.stmt.insertSample.run(
          record.run,
          record.shard,
          record.key,
          record.status,
          record.round,
          record.version,
          JSON.stringify(record),
        );
        if (!changed(result)) continue;
        inserted += 1;
        if (TERMINAL_STATUSES.has(record.status)) continue;
        const id = JSON.stringify([record.run, record.shard]);
        const entry = added.get(id) ?? { run: record.run, shard: record.shard, count: 0 };
        entry.count += 1;
        added.set(id, entry);
      }
      for (const { run, shard, count } of added.values()) this.addPending(run, shard, count);
      return inserted;
    });
  }

  async getSample(run: string, shard: string, key: string): Promise<SampleRecord | null> {
    const row = this.stmt.getSample.get(run, shard, key);
    return row === undefined ? null : parseJson(SampleRecord, row);
  }

  /** Yields the shard's samples in key order, one page per query. */
  async *listSamples(run: string, shard: string): AsyncIterable<SampleRecord> {
    let after = "";
    for (;;) {
      const rows = this.stmt.pageSamples.all(run, shard, after, PAGE_SIZE);
      for (const row of rows) {
        const record = parseJson(SampleRecord, row);
        after = record.key;
        yield record;
      }
      if (rows.length < PAGE_SIZE) return;
    }
  }

  async transition(current: SampleRecord, update: SampleUpdate): Promise<TransitionResult> {
    const { run, shard } = current;
    const next = SampleRecord.parse({
      ...current,
      ...update,
      version: current.version + 1,
      updatedAt: this.clock.now(),
    });
    // One conditional UPDATE: the stored record is not read (see the port).
    const write = () => this.replaceSample(current, next);
    const becameTerminal = TERMINAL_STATUSES.has(next.status) && !TERMINAL_STATUSES.has(current.status);
    if (!becameTerminal) return { applied: write(), shardPending: null };
    return this.inTransaction(() =>
      write()
        ? { applied: true, shardPending: this.addPending(run, shard, -1) }
        : { applied: false, shardPending: null },
    );
  }

  async completeIngest(run: string, shard: string, lines: number): Promise<number | null> {
    return this.inTransaction(() => {
      const current = this.readShard(run, shard);
      if (current === null || current.ingested) return null;
      const next = {
        ...current,
        ingested: true,
        lines,
        pending: current.pending - 1,
        updatedAt: this.clock.now(),
      };
      this.writeShard(next);
      return next.pending;
    });
  }

  async markFinalized(run: string, shard: string, reopens: number): Promise<boolean> {
    return this.inTransaction(() => {
      const current = this.readShard(run, shard);
      // Not over work reopened (redrive --failed) after the finalize read the shard: its samples finalize again.
      if (current === null || current.finalized || current.pending > 0) return false;
      if ((current.reopens ?? 0) !== reopens) return false;
      this.writeShard({ ...current, finalized: true, updatedAt: this.clock.now() });
      return true;
    });
  }

  async getAnswer(hash: string): Promise<StoredAnswer | null> {
    const row = this.stmt.getAnswer.get(hash);
    return row === undefined ? null : parseJson(StoredAnswer, row);
  }

  /** The first answer stored under a hash wins; later ones are ignored. */
  async putAnswer(hash: string, answer: StoredAnswer): Promise<void> {
    this.stmt.insertAnswer.run(hash, JSON.stringify(StoredAnswer.parse(answer)));
  }

  async claimRequest(hash: string, owner: string, holdMs: number): Promise<ClaimResult> {
    const now = this.clock.now();
    const result = this.stmt.claim.run(hash, owner, now + holdMs, now);
    if (Number(result.changes) > 0) return { granted: true };
    const held = ClaimRow.parse(this.stmt.getClaim.get(hash));
    return { granted: false, holder: held.owner, until: held.until };
  }

  async releaseClaim(hash: string, owner: string): Promise<void> {
    this.stmt.releaseClaim.run(hash, owner);
  }

  /** The transaction reads the item anyway: `existing` spares nothing here. */
  async queueBatchItem(item: BatchItem): Promise<{ queued: boolean; item: BatchItem }> {
    const parsed = BatchItem.parse(item);
    return this.inTransaction(() => {
      const row = this.db
        .prepare("SELECT record FROM batch_items WHERE run = ? AND shard = ? AND hash = ?")
        .get(parsed.run, parsed.shard, parsed.hash);
      const existing = row === undefined ? null : parseJson(BatchItem, row);
      if (existing !== null && existing.status !== "failed") return { queued: false, item: existing };
      const next: BatchItem = {
        ...parsed,
        status: parsed.status === "waiting" ? "waiting" : "queued",
        tries: existing?.tries ?? parsed.tries,
        updatedAt: this.clock.now(),
      };
      this.db
        .prepare(
          "INSERT INTO batch_items (run, shard, hash, status, record) VALUES (?, ?, ?, ?, ?) ON CONFLICT (run, shard, hash) DO UPDATE SET status = excluded.status, record = excluded.record",
        )
        .run(next.run, next.shard, next.hash, next.status, JSON.stringify(next));
      return { queued: true, item: next };
    });
  }

  async getBatchItem(run: string, shard: string, hash: string): Promise<BatchItem | null> {
    const row = this.db
      .prepare("SELECT record FROM batch_items WHERE run = ? AND shard = ? AND hash = ?")
      .get(run, shard, hash);
    return row === undefined ? null : parseJson(BatchItem, row);
  }

  async listBatchItems(
    run: string,
    shard: string,
    status: BatchItemStatus,
    options: { readonly job?: string } = {},
  ): Promise<BatchItem[]> {
    const job = options.job ?? null;
    return this.db
      .prepare(
        "SELECT record FROM batch_items WHERE run = ? AND shard = ? AND status = ? AND (? IS NULL OR json_extract(record, '$.job') = ?) ORDER BY hash",
      )
      .all(run, shard, status, job, job)
      .map((row) => parseJson(BatchItem, row));
  }

  async updateBatchItem(
    item: BatchItem,
    patch: Partial<Pick<BatchItem, "status" | "job" | "tries" | "error">>,
  ): Promise<boolean> {
    const next = BatchItem.parse({ ...item, ...patch, updatedAt: this.clock.now() });
    const result = this.db
      .prepare(
        "UPDATE batch_items SET status = ?, record = ? WHERE run = ? AND shard = ? AND hash = ? AND status = ?",
      )
      .run(next.status, JSON.stringify(next), item.run, item.shard, item.hash, item.status);
    return Number(result.changes) > 0;
  }

  async putBatchJob(job: BatchJob): Promise<void> {
    const parsed = BatchJob.parse(job);
    const open = parsed.status === "submitting" || parsed.status === "submitted" ? 1 : 0;
    this.db
      .prepare(
        "INSERT INTO batch_jobs (run, id, open, record) VALUES (?, ?, ?, ?) ON CONFLICT (run, id) DO UPDATE SET open = excluded.open, record = excluded.record",
      )
      .run(parsed.run, parsed.id, open, JSON.stringify(parsed));
  }

  async listOpenBatchJobs(run?: string): Promise<BatchJob[]> {
    const rows =
      run === undefined
        ? this.db.prepare("SELECT record FROM batch_jobs WHERE open = 1 ORDER BY run, id").all()
        : this.db.prepare("SELECT record FROM batch_jobs WHERE open = 1 AND run = ? ORDER BY id").all(run);
    return rows.map((row) => parseJson(BatchJob, row));
  }

  /** Drops every claim: a local run is the only process on its state, so claims of a killed run are void. */
  releaseAllClaims(): void {
    this.db.exec("DELETE FROM claims");
  }

  async reopenFailed(run: string, shard: string): Promise<SampleRecord[]> {
    return this.inTransaction(() => {
      const current = this.readShard(run, shard);
      if (current === null) return [];
      const reopenables = this.db
        .prepare(
          "SELECT record FROM samples WHERE run = ? AND shard = ? AND status IN ('FAILED', 'PASSED_THROUGH')",
        )
        .all(run, shard)
        .map((row) => parseJson(SampleRecord, row))
        .filter(reopenable);
      const reopened = reopenables.map((record) => {
        const next = reopenedRecord(record, this.clock.now());
        if (!this.replaceSample(record, next))
          throw new Error(`sample ${run}/${shard}/${record.key} changed while reopened`);
        return next;
      });
      if (reopened.length > 0)
        this.writeShard({
          ...current,
          pending: current.pending + reopened.length,
          reopens: (current.reopens ?? 0) + reopened.length,
          finalized: false,
          updatedAt: this.clock.now(),
        });
      return reopened;
    });
  }

  /** Samples of a shard per status (every status present, zero when none), for progress display. */
  countByStatus(run: string, shard: string): Record<SampleStatus, number> {
    const result: Record<SampleStatus, number> = emptyStatusCounts();
    for (const row of this.stmt.countByStatus.all(run, shard)) {
      const { status, n } = CountRow.parse(row);
      result[status] = n;
    }
    return result;
  }

  /** The highest round any open sample of the run is in (0 when none), for progress display. */
  currentRound(run: string): number {
    const row = this.db
      .prepare(
        "SELECT coalesce(max(round), 0) AS r FROM samples WHERE run = ? AND status IN ('EVOLVING', 'JUDGING')",
      )
      .get(run);
    return typeof row?.r === "number" ? row.r : 0;
  }

  private readShard(run: string, shard: string): ShardRecord | null {
    const row = this.stmt.getShard.get(run, shard);
    return row === undefined ? null : parseJson(ShardRecord, row);
  }

  private writeShard(record: ShardRecord): void {
    const parsed = ShardRecord.parse(record);
    this.stmt.putShard.run(JSON.stringify(parsed), parsed.run, parsed.shard);
  }

  /** Writes `next` over the sample if it is still `current` (status, round and version); whether it did. */
  private replaceSample(current: SampleRecord, next: SampleRecord): boolean {
    return changed(
      this.stmt.putSample.run(
        next.status,
        next.round,
        next.version,
        JSON.stringify(next),
        current.run,
        current.shard,
        current.key,
        current.status,
        current.round,
        current.version,
      ),
    );
  }

  /** Adds `delta` to the shard's pending count (inside the caller's transaction); returns the new count. */
  private addPending(run: string, shard: string, delta: number): number {
    const current = this.readShard(run, shard);
    if (current === null) throw new ShardNotFoundError(run, shard);
    const pending = current.pending + delta;
    this.writeShard({ ...current, pending, updatedAt: this.clock.now() });
    return pending;
  }

  /** Runs `work` in one write transaction; any throw rolls the whole of it back. */
  private inTransaction<T>(work: () => T): T {
    this.stmt.begin.run();
    try {
      const result = work();
      this.stmt.commit.run();
      return result;
    } catch (error) {
      this.stmt.rollback.run();
      throw error;
    }
  }
}

const changed = (result: { changes: number | bigint }): boolean => Number(result.changes) > 0;
