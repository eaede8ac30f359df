import zlib from "node:zlib";
import {
  DeleteCommand,
  type DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  TransactWriteCommand,
  type TransactWriteCommandInput,
  UpdateCommand,
} from "@aws-sdk/lib-dynamodb";
import { z } from "zod";
import { MmevolError, ShardNotFoundError } from "../../ports/errors.ts";
import { type Clock, systemClock } from "../../ports/runtime.ts";
import {
  BatchItem,
  type BatchItemStatus,
  BatchJob,
  type ClaimResult,
  NewSampleRecord,
  reopenable,
  reopenedRecord,
  SampleRecord,
  type SampleUpdate,
  ShardRecord,
  type StateStore,
  StoredAnswer,
  TERMINAL_STATUSES,
  type TransitionResult,
} from "../../ports/state-store.ts";
import { TABLE_SCHEMA } from "./table-schema.ts";

export interface DynamoStateStoreOptions {
  readonly client: DynamoDBDocumentClient;
  readonly table: string;
  readonly clock?: Clock;
  /** How long stored answers live (TTL); they only need to outlive a run. Default 30. */
  readonly answerTtlDays?: number;
  /** Items per query page (DynamoDB's Limit); by default pages end at DynamoDB's 1 MB. Small values test paging. */
  readonly pageSize?: number;
}

/** DynamoDB kept refusing a transaction because others held the same items (a hot shard). Worth retrying later. */
export class StateConflictError extends MmevolError {}

type TransactItem = NonNullable<TransactWriteCommandInput["TransactItems"]>[number];

const PK = TABLE_SCHEMA.partitionKey;
const SK = TABLE_SCHEMA.sortKey;
const SHARD_SK = "META";
const SAMPLE_PREFIX = "SAMPLE#";
const ANSWER_SK = "ANSWER";
const SHARDS_GSI_PK = "SHARDS";
const BATCH_ITEM_PREFIX = "BATCH#";
/**
 * Waiting items (other work waiting for a request already in a batch, keyed `<hash>~<work>`) under their own
 * prefix: an applied batch lists them, and a Query of `BATCH#` would read every request item of the shard to
 * find none (a read of the whole shard per applied batch, where this reads nothing when no work waits).
 */
const WAITING_ITEM_PREFIX = "BATCHWAIT#";
const OPEN_JOBS_GSI_PK = "BATCHJOBS";

/** A transaction holds at most 100 items: 99 sample puts plus the shard's counter update. */
const MAX_SAMPLES_PER_TRANSACTION = 99;
/** A transaction holds at most 4 MB; stay well under it (attribute names and keys count too). */
const MAX_TRANSACTION_BYTES = 3_000_000;
/** Attempts of a transaction that collides with another one on the same shard item. */
const MAX_CONFLICT_ATTEMPTS = 8;

const CONDITION_FAILED = "ConditionalCheckFailed";

/**
 * Every attribute the store names in an expression. `status`, `round`, ... are DynamoDB reserved words
 * (or may become one), so expressions always use these aliases.
 */
const NAMES = {
  "#pk": PK,
  "#status": "status",
  "#round": "round",
  "#version": "version",
  "#pending": "pending",
  "#ingested": "ingested",
  "#finalized": "finalized",
  "#reopens": "reopens",
  "#lines": "lines",
  "#updatedAt": "updatedAt",
  "#until": "until",
  "#owner": "owner",
} as const;
type Alias = keyof typeof NAMES;

/** Only the aliases an expression uses: DynamoDB rejects unused names and values. */
const names = (...aliases: Alias[]): Record<string, string> =>
  Object.fromEntries(aliases.map((alias) => [alias, NAMES[alias]]));

// Items are outside data (another version of the program may have written them): parse them.
const ClaimItem = z.object({ owner: z.string(), until: z.number() });
const ShardItem = z.object({
  pending: z.number().int(),
  ingested: z.boolean(),
  finalized: z.boolean(),
  reopens: z.number().int().nonnegative().optional(),
  lines: z.number().int().nonnegative(),
  updatedAt: z.number(),
  record: z.string(),
});
const RecordItem = z.object({ record: z.string() });
const PendingAttributes = z.object({ pending: z.number().int() });
const CancellationReasons = z.array(z.object({ Code: z.string().optional() }).loose());

const shardPk = (run: string, shard: string): string => `SHARD#${run}#${shard}`;
const shardKey = (run: string, shard: string) => ({ [PK]: shardPk(run, shard), [SK]: SHARD_SK });
const batchItemKey = (run: string, shard: string, hash: string) => ({
  [PK]: shardPk(run, shard),
  [SK]: `${hash.includes("~") ? WAITING_ITEM_PREFIX : BATCH_ITEM_PREFIX}${hash}`,
});
const sampleKey = (run: string, shard: string, key: string) => ({
  [PK]: shardPk(run, shard),
  [SK]: `${SAMPLE_PREFIX}${key}`,
});

/**
 * The StateStore over the single DynamoDB table (TABLE_SCHEMA), with the same semantics as SqliteStateStore.
 * Shards keep their mutable fields (pending, ingested, finalized, lines, updatedAt) as top-level attributes, so
 * counters and conditions work on them; the rest of the record is a JSON string. Samples keep status, round and
 * version top-level for the conditional transitions, and the full record as JSON.
 */
export class DynamoStateStore implements StateStore {
  private readonly client: DynamoDBDocumentClient;
  private readonly table: string;
  private readonly clock: Clock;
  private readonly answerTtlSeconds: number;
  private readonly limit: { Limit?: number };

  constructor(options: DynamoStateStoreOptions) {
    this.client = options.client;
    this.table = options.table;
    this.clock = options.clock ?? systemClock;
    this.answerTtlSeconds = Math.round((options.answerTtlDays ?? 30) * 86_400);
    this.limit = options.pageSize === undefined ? {} : { Limit: options.pageSize };
  }

  async createShard(shard: ShardRecord): Promise<{ created: boolean; shard: ShardRecord }> {
    const record = ShardRecord.parse(shard);
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.table,
          Item: {
            ...shardKey(record.run, record.shard),
            [TABLE_SCHEMA.gsi1.partitionKey]: SHARDS_GSI_PK,
            [TABLE_SCHEMA.gsi1.sortKey]: `${record.run}#${record.shard}`,
            pending: record.pending,
            ingested: record.ingested,
            finalized: record.finalized,
            lines: record.lines,
            updatedAt: record.updatedAt,
            record: JSON.stringify(record),
          },
          ConditionExpression: "attribute_not_exists(#pk)",
          ExpressionAttributeNames: names("#pk"),
        }),
      );
      return { created: true, shard: record };
    } catch (error) {
      if (!isConditionFailed(error)) throw error;
    }
    const stored = await this.getShard(record.run, record.shard);
    if (stored === null) throw new ShardNotFoundError(record.run, record.shard);
    return { created: false, shard: stored };
  }

  async getShard(run: string, shard: string): Promise<ShardRecord | null> {
    const out = await this.client.send(
      new GetCommand({ TableName: this.table, Key: shardKey(run, shard), ConsistentRead: true }),
    );
    return out.Item === undefined ? null : parseShard(out.Item);
  }

  /**
   * Shards from the GSI, sorted by run then shard like the SQLite store. GSI reads are eventually consistent:
   * a shard created a moment ago may be missing; callers use this for listings, never for decisions.
   */
  async listShards(run?: string): Promise<ShardRecord[]> {
    const shards = (await this.queryIndex(SHARDS_GSI_PK, run)).map(parseShard);
    // A run name containing `#` could match another run's prefix: keep only exact matches.
    const wanted = run === undefined ? shards : shards.filter((s) => s.run === run);
    return wanted.sort((a, b) => compare(a.run, b.run) || compare(a.shard, b.shard));
  }

  async putSamples(records: readonly SampleRecord[]): Promise<number> {
    const parsed = records.map((record) => NewSampleRecord.parse(record));
    // The first record per key wins, as with INSERT OR IGNORE; a transaction may not name one item twice anyway.
    const byShard = new Map<string, { run: string; shard: string; records: Map<string, SampleRecord> }>();
    for (const record of parsed) {
      const id = JSON.stringify([record.run, record.shard]);
      const group = byShard.get(id) ?? { run: record.run, shard: record.shard, records: new Map() };
      if (!group.records.has(record.key)) group.records.set(record.key, record);
      byShard.set(id, group);
    }
    // Checked up front so an unknown shard fails the call before any sample is written.
    for (const { run, shard } of byShard.values()) {
      if (!(await this.shardExists(run, shard))) throw new ShardNotFoundError(run, shard);
    }
    let created = 0;
    for (const { run, shard, records: group } of byShard.values()) {
      for (const chunk of chunks([...group.values()])) created += await this.putChunk(run, shard, chunk);
    }
    return created;
  }

  async getSample(run: string, shard: string, key: string): Promise<SampleRecord | null> {
    const out = await this.client.send(
      new GetCommand({ TableName: this.table, Key: sampleKey(run, shard, key), ConsistentRead: true }),
    );
    return out.Item === undefined ? null : parseSample(out.Item);
  }

  /** Yields the shard's samples in key order (the sort key's byte order), one query page at a time. */
  async *listSamples(run: string, shard: string): AsyncIterable<SampleRecord> {
    let start: Record<string, unknown> | undefined;
    do {
      const out = await this.client.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: "#pk = :pk AND begins_with(#sk, :prefix)",
          ExpressionAttributeNames: { "#pk": PK, "#sk": SK },
          ExpressionAttributeValues: { ":pk": shardPk(run, shard), ":prefix": SAMPLE_PREFIX },
          ConsistentRead: true,
          ...this.limit,
          ...(start === undefined ? {} : { ExclusiveStartKey: start }),
        }),
      );
      for (const item of out.Items ?? []) yield parseSample(item);
      start = out.LastEvaluatedKey;
    } while (start !== undefined);
  }

  async transition(current: SampleRecord, update: SampleUpdate): Promise<TransitionResult> {
    const { run, shard, key } = current;
    const notApplied = { applied: false, shardPending: null };
    const now = this.clock.now();
    const next = SampleRecord.parse({ ...current, ...update, version: current.version + 1, updatedAt: now });
    // Not read again (see the port): the condition makes the write lose cleanly to any writer since the caller
    // read `current`, and to a sample that does not exist.
    const put = {
      TableName: this.table,
      Item: sampleItem(next),
      ConditionExpression: "#status = :es AND #round = :er AND #version = :ev",
      ExpressionAttributeNames: names("#status", "#round", "#version"),
      ExpressionAttributeValues: { ":es": current.status, ":er": current.round, ":ev": current.version },
    };
    const becameTerminal = TERMINAL_STATUSES.has(next.status) && !TERMINAL_STATUSES.has(current.status);
    if (!becameTerminal) {
      try {
        await this.client.send(new PutCommand(put));
        return { applied: true, shardPending: null };
      } catch (error) {
        if (isConditionFailed(error)) return notApplied;
        throw error;
      }
    }
    const reasons = await this.transact([
      { Put: put },
      { Update: this.addPendingUpdate(run, shard, -1, now) },
    ]);
    if (reasons !== null) {
      if (reasons[0] === CONDITION_FAILED) return notApplied;
      if (reasons[1] === CONDITION_FAILED) throw new ShardNotFoundError(run, shard);
      throw new MmevolError(`transition of ${run}/${shard}/${key} cancelled: ${reasons.join(", ")}`, {
        retryable: true,
      });
    }
    // A transaction cannot return values, so the count is read back. Two finishers racing here may both read
    // 0 and both send a finalize message: harmless, because finalize is idempotent (markFinalized is
    // conditional and only its single winner writes the outputs). The reverse cannot happen: the last
    // decrement is committed before its own read, so someone always sees 0.
    const after = await this.getShard(run, shard);
    if (after === null) throw new ShardNotFoundError(run, shard);
    return { applied: true, shardPending: after.pending };
  }

  async reopenFailed(run: string, shard: string): Promise<SampleRecord[]> {
    const reopened: SampleRecord[] = [];
    for await (const record of this.listSamples(run, shard)) {
      if (!reopenable(record)) continue;
      const next = reopenedRecord(record, this.clock.now());
      // One transaction per sample, each with its own count: a sample written by another since the listing
      // loses alone, and a crash half-way leaves every count right (rare work; two items a write).
      const reasons = await this.transact([
        {
          Put: {
            TableName: this.table,
            Item: sampleItem(next),
            ConditionExpression: "#status = :status AND #version = :ev",
            ExpressionAttributeNames: names("#status", "#version"),
            ExpressionAttributeValues: { ":status": record.status, ":ev": record.version },
          },
        },
        { Update: this.addPendingUpdate(run, shard, 1, next.updatedAt, { reopen: true }) },
      ]);
      if (reasons === null) reopened.push(next);
      else if (reasons[1] === CONDITION_FAILED) throw new ShardNotFoundError(run, shard);
    }
    return reopened;
  }

  async completeIngest(run: string, shard: string, lines: number): Promise<number | null> {
    try {
      const out = await this.client.send(
        new UpdateCommand({
          TableName: this.table,
          Key: shardKey(run, shard),
          UpdateExpression: "SET #ingested = :yes, #lines = :lines, #updatedAt = :now ADD #pending :minusOne",
          ConditionExpression: "attribute_exists(#pk) AND #ingested = :no",
          ExpressionAttributeNames: names("#pk", "#ingested", "#lines", "#updatedAt", "#pending"),
          ExpressionAttributeValues: {
            ":yes": true,
            ":no": false,
            ":lines": lines,
            ":now": this.clock.now(),
            ":minusOne": -1,
          },
          ReturnValues: "UPDATED_NEW",
        }),
      );
      return PendingAttributes.parse(out.Attributes).pending;
    } catch (error) {
      if (isConditionFailed(error)) return null;
      throw error;
    }
  }

  async markFinalized(run: string, shard: string, reopens: number): Promise<boolean> {
    // A shard never reopened has no count; one reopened since the finalize read it has another.
    const unchanged = reopens === 0 ? "attribute_not_exists(#reopens)" : "#reopens = :reopens";
    try {
      await this.client.send(
        new UpdateCommand({
          TableName: this.table,
          Key: shardKey(run, shard),
          UpdateExpression: "SET #finalized = :yes, #updatedAt = :now",
          // Not over work reopened (redrive --failed) after the finalize read the shard: its samples finalize again.
          ConditionExpression: `attribute_exists(#pk) AND #finalized = :no AND #pending <= :zero AND ${unchanged}`,
          ExpressionAttributeNames: names("#pk", "#finalized", "#updatedAt", "#pending", "#reopens"),
          ExpressionAttributeValues: {
            ":yes": true,
            ":no": false,
            ":now": this.clock.now(),
            ":zero": 0,
            ...(reopens === 0 ? {} : { ":reopens": reopens }),
          },
        }),
      );
      return true;
    } catch (error) {
      if (isConditionFailed(error)) return false;
      throw error;
    }
  }

  async getAnswer(hash: string): Promise<StoredAnswer | null> {
    const out = await this.client.send(
      new GetCommand({
        TableName: this.table,
        Key: { [PK]: `ANSWER#${hash}`, [SK]: ANSWER_SK },
        ConsistentRead: true,
      }),
    );
    if (out.Item === undefined) return null;
    return StoredAnswer.parse(JSON.parse(storedJson(out.Item)));
  }

  /** The first answer stored under a hash wins; later ones are ignored. Answers expire through TTL. */
  async putAnswer(hash: string, answer: StoredAnswer): Promise<void> {
    const record = StoredAnswer.parse(answer);
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.table,
          Item: {
            [PK]: `ANSWER#${hash}`,
            [SK]: ANSWER_SK,
            body: compressedJson(record),
            [TABLE_SCHEMA.ttlAttribute]: Math.floor(this.clock.now() / 1000) + this.answerTtlSeconds,
          },
          ConditionExpression: "attribute_not_exists(#pk)",
          ExpressionAttributeNames: names("#pk"),
        }),
      );
    } catch (error) {
      if (!isConditionFailed(error)) throw error;
    }
  }

  async queueBatchItem(
    item: BatchItem,
    known?: BatchItem | null,
  ): Promise<{ queued: boolean; item: BatchItem }> {
    const parsed = BatchItem.parse(item);
    for (let attempt = 0; attempt < MAX_CONFLICT_ATTEMPTS; attempt++) {
      // The caller's read serves the first attempt; a conflict means it is out of date.
      const existing =
        attempt === 0 && known !== undefined
          ? known
          : await this.getBatchItem(parsed.run, parsed.shard, parsed.hash);
      if (existing !== null && existing.status !== "failed") return { queued: false, item: existing };
      const next: BatchItem = {
        ...parsed,
        status: parsed.status === "waiting" ? "waiting" : "queued",
        tries: existing?.tries ?? parsed.tries,
        updatedAt: this.clock.now(),
      };
      try {
        await this.client.send(
          new PutCommand({
            TableName: this.table,
            Item: {
              ...batchItemKey(next.run, next.shard, next.hash),
              status: next.status,
              record: JSON.stringify(next),
            },
            ...(existing === null
              ? { ConditionExpression: "attribute_not_exists(#pk)", ExpressionAttributeNames: names("#pk") }
              : {
                  ConditionExpression: "#status = :failed",
                  ExpressionAttributeNames: names("#status"),
                  ExpressionAttributeValues: { ":failed": "failed" },
                }),
          }),
        );
        return { queued: true, item: next };
      } catch (error) {
        if (!isConditionFailed(error)) throw error;
      }
    }
    throw new StateConflictError(`batch item ${parsed.hash} kept changing`, { retryable: true });
  }

  async getBatchItem(run: string, shard: string, hash: string): Promise<BatchItem | null> {
    const out = await this.client.send(
      new GetCommand({ TableName: this.table, Key: batchItemKey(run, shard, hash), ConsistentRead: true }),
    );
    return out.Item === undefined ? null : BatchItem.parse(JSON.parse(RecordItem.parse(out.Item).record));
  }

  async listBatchItems(
    run: string,
    shard: string,
    status: BatchItemStatus,
    options: { readonly consistent?: boolean; readonly job?: string } = {},
  ): Promise<BatchItem[]> {
    const items: BatchItem[] = [];
    const { job } = options;
    // The job is a top-level attribute too, so only its items come back; items written before it was (which
    // have none) come back and are sorted out below.
    const byJob =
      job === undefined
        ? { filter: "", names: {}, values: {} }
        : {
            filter: " AND (#job = :job OR attribute_not_exists(#job))",
            names: { "#job": "job" },
            values: { ":job": job },
          };
    let start: Record<string, unknown> | undefined;
    do {
      const out = await this.client.send(
        new QueryCommand({
          TableName: this.table,
          KeyConditionExpression: "#pk = :pk AND begins_with(#sk, :prefix)",
          FilterExpression: `#status = :status${byJob.filter}`,
          ExpressionAttributeNames: { "#pk": PK, "#sk": SK, "#status": "status", ...byJob.names },
          ExpressionAttributeValues: {
            ":pk": shardPk(run, shard),
            ":prefix": status === "waiting" ? WAITING_ITEM_PREFIX : BATCH_ITEM_PREFIX,
            ":status": status,
            ...byJob.values,
          },
          // A Query pays for every batch item it reads (the filter applies after), answered ones included.
          ConsistentRead: options.consistent ?? true,
          ExclusiveStartKey: start,
          ...this.limit,
        }),
      );
      for (const raw of out.Items ?? []) {
        const item = BatchItem.parse(JSON.parse(RecordItem.parse(raw).record));
        if (job === undefined || item.job === job) items.push(item);
      }
      start = out.LastEvaluatedKey;
    } while (start !== undefined);
    return items;
  }

  /** One conditional write, no read: the caller's item is current while its status is (see the port). */
  async updateBatchItem(
    item: BatchItem,
    patch: Partial<Pick<BatchItem, "status" | "job" | "tries" | "error">>,
  ): Promise<boolean> {
    const next = BatchItem.parse({ ...item, ...patch, updatedAt: this.clock.now() });
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.table,
          Item: {
            ...batchItemKey(item.run, item.shard, item.hash),
            status: next.status,
            ...(next.job === null ? {} : { job: next.job }),
            record: JSON.stringify(next),
          },
          ConditionExpression: "#status = :from",
          ExpressionAttributeNames: names("#status"),
          ExpressionAttributeValues: { ":from": item.status },
        }),
      );
      return true;
    } catch (error) {
      if (!isConditionFailed(error)) throw error;
      return false;
    }
  }

  async putBatchJob(job: BatchJob): Promise<void> {
    const parsed = BatchJob.parse(job);
    const open = parsed.status === "submitting" || parsed.status === "submitted";
    await this.client.send(
      new PutCommand({
        TableName: this.table,
        Item: {
          [PK]: `BATCHJOB#${parsed.run}`,
          [SK]: parsed.id,
          record: JSON.stringify(parsed),
          // A sparse index: only open jobs are listed, so the batcher never scans finished ones.
          ...(open
            ? {
                [TABLE_SCHEMA.gsi1.partitionKey]: OPEN_JOBS_GSI_PK,
                [TABLE_SCHEMA.gsi1.sortKey]: `${parsed.run}#${parsed.id}`,
              }
            : {}),
        },
      }),
    );
  }

  async listOpenBatchJobs(run?: string): Promise<BatchJob[]> {
    const jobs = (await this.queryIndex(OPEN_JOBS_GSI_PK, run)).map((item) =>
      BatchJob.parse(JSON.parse(RecordItem.parse(item).record)),
    );
    // The index is eventually consistent: a job closed a moment ago may still be listed; its record says so.
    return jobs.filter(
      (job) =>
        (run === undefined || job.run === run) && (job.status === "submitting" || job.status === "submitted"),
    );
  }

  async claimRequest(hash: string, owner: string, holdMs: number): Promise<ClaimResult> {
    const now = this.clock.now();
    try {
      await this.client.send(
        new PutCommand({
          TableName: this.table,
          Item: {
            [PK]: `CLAIM#${hash}`,
            [SK]: "CLAIM",
            until: now + holdMs,
            owner,
            [TABLE_SCHEMA.ttlAttribute]: Math.floor((now + holdMs) / 1000) + 86_400,
          },
          ConditionExpression: "attribute_not_exists(#pk) OR #until <= :now OR #owner = :owner",
          ExpressionAttributeNames: names("#pk", "#until", "#owner"),
          ExpressionAttributeValues: { ":now": now, ":owner": owner },
        }),
      );
      return { granted: true };
    } catch (error) {
      if (!isConditionFailed(error)) throw error;
    }
    const held = await this.client.send(
      new GetCommand({
        TableName: this.table,
        Key: { [PK]: `CLAIM#${hash}`, [SK]: "CLAIM" },
        ConsistentRead: true,
      }),
    );
    const claim = ClaimItem.safeParse(held.Item);
    // Released between the two calls: report it as held until now, and the caller simply tries again.
    return claim.success
      ? { granted: false, holder: claim.data.owner, until: claim.data.until }
      : { granted: false, holder: "", until: now };
  }

  async releaseClaim(hash: string, owner: string): Promise<void> {
    try {
      await this.client.send(
        new DeleteCommand({
          TableName: this.table,
          Key: { [PK]: `CLAIM#${hash}`, [SK]: "CLAIM" },
          ConditionExpression: "#owner = :owner",
          ExpressionAttributeNames: names("#owner"),
          ExpressionAttributeValues: { ":owner": owner },
        }),
      );
    } catch (error) {
      if (!isConditionFailed(error)) throw error;
    }
  }

  /** Every item of one gsi1 partition (of one run when given: sort keys start with `<run>#`), all pages. */
  private async queryIndex(partition: string, run?: string): Promise<Record<string, unknown>[]> {
    const items: Record<string, unknown>[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const out = await this.client.send(
        new QueryCommand({
          TableName: this.table,
          IndexName: TABLE_SCHEMA.gsi1.indexName,
          KeyConditionExpression:
            run === undefined ? "#gpk = :gpk" : "#gpk = :gpk AND begins_with(#gsk, :prefix)",
          ExpressionAttributeNames:
            run === undefined
              ? { "#gpk": TABLE_SCHEMA.gsi1.partitionKey }
              : { "#gpk": TABLE_SCHEMA.gsi1.partitionKey, "#gsk": TABLE_SCHEMA.gsi1.sortKey },
          ExpressionAttributeValues:
            run === undefined ? { ":gpk": partition } : { ":gpk": partition, ":prefix": `${run}#` },
          ...this.limit,
          ...(start === undefined ? {} : { ExclusiveStartKey: start }),
        }),
      );
      items.push(...(out.Items ?? []));
      start = out.LastEvaluatedKey;
    } while (start !== undefined);
    return items;
  }

  /**
   * Writes one chunk of samples of one shard with its pending increment in one transaction. Samples that
   * already exist (a redelivered ingest) cancel it; they are dropped and the rest is tried again, so
   * exactly the new ones are written and counted. Returns how many were created.
   */
  private async putChunk(run: string, shard: string, chunk: readonly SampleRecord[]): Promise<number> {
    let remaining = chunk;
    while (remaining.length > 0) {
      const reasons = await this.transact(this.putSamplesItems(run, shard, remaining));
      if (reasons === null) return remaining.length;
      if (reasons[remaining.length] === CONDITION_FAILED) throw new ShardNotFoundError(run, shard);
      const before = remaining.length;
      remaining = remaining.filter((_, i) => reasons[i] !== CONDITION_FAILED);
      // No sample named as the cause: the reasons say nothing useful, so go one sample at a time.
      if (remaining.length === before) return this.putOneByOne(run, shard, remaining);
    }
    return 0;
  }

  private async putOneByOne(run: string, shard: string, records: readonly SampleRecord[]): Promise<number> {
    let created = 0;
    for (const record of records) {
      const reasons = await this.transact(this.putSamplesItems(run, shard, [record]));
      if (reasons === null) created += 1;
      else if (reasons[1] === CONDITION_FAILED) throw new ShardNotFoundError(run, shard);
      else if (reasons[0] !== CONDITION_FAILED) {
        throw new MmevolError(
          `writing sample ${run}/${shard}/${record.key} cancelled: ${reasons.join(", ")}`,
          {
            retryable: true,
          },
        );
      }
    }
    return created;
  }

  /** Puts of new samples plus the shard item last: an increment, or a plain existence check when none counts. */
  private putSamplesItems(run: string, shard: string, records: readonly SampleRecord[]): TransactItem[] {
    const items: TransactItem[] = records.map((record) => ({
      Put: {
        TableName: this.table,
        Item: sampleItem(record),
        ConditionExpression: "attribute_not_exists(#pk)",
        ExpressionAttributeNames: names("#pk"),
      },
    }));
    const counted = records.filter((record) => !TERMINAL_STATUSES.has(record.status)).length;
    items.push(
      counted === 0
        ? {
            ConditionCheck: {
              TableName: this.table,
              Key: shardKey(run, shard),
              ConditionExpression: "attribute_exists(#pk)",
              ExpressionAttributeNames: names("#pk"),
            },
          }
        : { Update: this.addPendingUpdate(run, shard, counted, this.clock.now()) },
    );
    return items;
  }

  /** The shard's pending count moved by `delta`; with `reopen`, the shard is no longer finalized either. */
  private addPendingUpdate(
    run: string,
    shard: string,
    delta: number,
    now: number,
    options: { readonly reopen?: boolean } = {},
  ) {
    const reopen = options.reopen === true;
    return {
      TableName: this.table,
      Key: shardKey(run, shard),
      UpdateExpression: reopen
        ? "SET #updatedAt = :now, #finalized = :no ADD #pending :delta, #reopens :one"
        : "SET #updatedAt = :now ADD #pending :delta",
      ConditionExpression: "attribute_exists(#pk)",
      ExpressionAttributeNames: names(
        "#pk",
        "#updatedAt",
        "#pending",
        ...(reopen ? (["#finalized", "#reopens"] as const) : []),
      ),
      ExpressionAttributeValues: {
        ":now": now,
        ":delta": delta,
        ...(reopen ? { ":no": false, ":one": 1 } : {}),
      },
    };
  }

  private async shardExists(run: string, shard: string): Promise<boolean> {
    const out = await this.client.send(
      new GetCommand({
        TableName: this.table,
        Key: shardKey(run, shard),
        ConsistentRead: true,
        ProjectionExpression: "#pk",
        ExpressionAttributeNames: names("#pk"),
      }),
    );
    return out.Item !== undefined;
  }

  /**
   * Runs a transaction. Returns null when it committed, or the per-item cancellation codes when a condition
   * failed. Conflicts with concurrent transactions on the same items (every finisher of a shard updates the
   * shard's counter) are retried with jittered backoff.
   */
  private async transact(items: TransactItem[]): Promise<(string | undefined)[] | null> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await this.client.send(new TransactWriteCommand({ TransactItems: items }));
        return null;
      } catch (error) {
        if (!(error instanceof Error) || error.name !== "TransactionCanceledException") throw error;
        const codes = cancellationCodes(error);
        if (codes.includes(CONDITION_FAILED)) return codes;
        if (attempt >= MAX_CONFLICT_ATTEMPTS) {
          throw new StateConflictError(`transaction kept conflicting (${codes.join(", ")})`, {
            retryable: true,
            cause: error,
          });
        }
        await sleep(Math.random() * 25 * 2 ** attempt);
      }
    }
  }
}

function parseShard(item: Record<string, unknown>): ShardRecord {
  const { record, ...mutable } = ShardItem.parse(item);
  const stored: unknown = JSON.parse(record);
  return ShardRecord.parse({ ...z.record(z.string(), z.unknown()).parse(stored), ...mutable });
}

/**
 * The large records, a sample's (every version of every item, rewritten on each transition) and a model's
 * answer, are stored brotli-compressed as the binary attribute `body`: DynamoDB bills a write per KB and a
 * read per 4 KB of the whole item, and their JSON shrinks about 3x. An item written by an earlier version
 * keeps its JSON string `record` and is still read.
 */
const StoredBody = z.union([
  z.object({ body: z.instanceof(Uint8Array) }),
  RecordItem.transform(({ record }) => ({ body: null, record })),
]);

const BROTLI = {
  params: {
    [zlib.constants.BROTLI_PARAM_QUALITY]: 5,
    [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT,
  },
};

/** The JSON an item holds, compressed (`body`) or not (`record`). */
function storedJson(item: Record<string, unknown>): string {
  const stored = StoredBody.parse(item);
  return stored.body === null ? stored.record : zlib.brotliDecompressSync(stored.body).toString("utf8");
}

const compressedJson = (value: unknown): Uint8Array => zlib.brotliCompressSync(JSON.stringify(value), BROTLI);

const parseSample = (item: Record<string, unknown>): SampleRecord =>
  SampleRecord.parse(JSON.parse(storedJson(item)));

const sampleItem = (record: SampleRecord): Record<string, unknown> => ({
  ...sampleKey(record.run, record.shard, record.key),
  status: record.status,
  round: record.round,
  version: record.version,
  body: compressedJson(record),
});

/** Splits samples into transactions: at most 99 each, and well under the 4 MB transaction size. */
function chunks(records: readonly SampleRecord[]): SampleRecord[][] {
  const out: SampleRecord[][] = [];
  let current: SampleRecord[] = [];
  let bytes = 0;
  for (const record of records) {
    const size = Buffer.byteLength(JSON.stringify(record)) + 200;
    if (
      current.length > 0 &&
      (current.length >= MAX_SAMPLES_PER_TRANSACTION || bytes + size > MAX_TRANSACTION_BYTES)
    ) {
      out.push(current);
      current = [];
      bytes = 0;
    }
    current.push(record);
    bytes += size;
  }
  if (current.length > 0) out.push(current);
  return out;
}

function cancellationCodes(error: Error): (string | undefined)[] {
  const reasons =
    "CancellationReasons" in error ? CancellationReasons.safeParse(error.CancellationReasons) : null;
  return reasons?.success === true ? reasons.data.map((reason) => reason.Code) : [];
}

const isConditionFailed = (error: unknown): boolean =>
  error instanceof Error && error.name === "ConditionalCheckFailedException";

/** Byte order of UTF-16 code units, as SQLite's default BINARY collation of ASCII keys. */
const compare = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
