import { DeleteTableCommand } from "@aws-sdk/client-dynamodb";
import { DeleteCommand, GetCommand, PutCommand, QueryCommand } from "@aws-sdk/lib-dynamodb";
import { describe, expect, it } from "vitest";
import { createTable } from "../../functions/adapters/aws/create-table.ts";
import { DynamoStateStore } from "../../functions/adapters/aws/dynamodb-state-store.ts";
import { ShardNotFoundError } from "../../functions/ports/errors.ts";
import { ensureDynamoLocal } from "../helpers/dynamodb-local.ts";
import { documentClient, dynamoClient, uniqueName } from "../helpers/moto.ts";
import {
  answer,
  describeStateStoreContract,
  sampleRecord,
  shardRecord,
} from "../helpers/state-store-contract.ts";

// AWS's DynamoDB Local, not moto: it isolates concurrent transactions and rejects what DynamoDB rejects.
const { endpoint } = await ensureDynamoLocal();
const raw = dynamoClient(endpoint);
const doc = documentClient(raw);

/** A fresh table per store: tests share one moto, and other test files may use it at the same time. */
async function freshTable(): Promise<string> {
  const table = uniqueName("state");
  await createTable(raw, table);
  return table;
}
const dropTable = (table: string) => async () => {
  await raw.send(new DeleteTableCommand({ TableName: table }));
};

describeStateStoreContract(
  "DynamoStateStore",
  async (options = {}) => {
    const table = await freshTable();
    const store = new DynamoStateStore({
      client: doc,
      table,
      // Small pages, so every listing crosses page boundaries.
      pageSize: 7,
      ...(options.clock === undefined ? {} : { clock: options.clock }),
    });
    return { store, cleanup: dropTable(table) };
  },
  { bulkSamples: 500 },
);

describe("DynamoStateStore specifics", () => {
  it("stores items per the table schema, with the counters top-level", async () => {
    const table = await freshTable();
    try {
      const store = new DynamoStateStore({ client: doc, table, clock: { now: () => 1_700_000_000_000 } });
      await store.createShard(shardRecord());
      await store.putSamples([sampleRecord("a"), sampleRecord("b", { status: "REJECTED" })]);
      await store.putAnswer("h1", answer("x"));
      const out = await doc.send(
        new QueryCommand({
          TableName: table,
          KeyConditionExpression: "pk = :pk",
          ExpressionAttributeValues: { ":pk": "SHARD#r1#s1" },
        }),
      );
      const items = out.Items ?? [];
      expect(items.map((item) => item.sk)).toEqual(["META", "SAMPLE#a", "SAMPLE#b"]);
      expect(items[0]).toMatchObject({ gsi1pk: "SHARDS", gsi1sk: "r1#s1", pending: 2, ingested: false });
      expect(items[2]).toMatchObject({ status: "REJECTED", round: 0, version: 0 });
      const answers = await doc.send(
        new QueryCommand({
          TableName: table,
          KeyConditionExpression: "pk = :pk",
          ExpressionAttributeValues: { ":pk": "ANSWER#h1" },
        }),
      );
      // 30 days after the clock's now, in epoch seconds.
      expect(answers.Items?.[0]?.expiresAt).toBe(1_700_000_000 + 30 * 86_400);
      // Compressed like sample records; an answer stored as a JSON string by an earlier version is still read.
      expect(answers.Items?.[0]?.body).toBeInstanceOf(Uint8Array);
      expect(await store.getAnswer("h1")).toEqual(answer("x"));
      await doc.send(
        new PutCommand({
          TableName: table,
          Item: { pk: "ANSWER#h2", sk: "ANSWER", record: JSON.stringify(answer("old")) },
        }),
      );
      expect(await store.getAnswer("h2")).toEqual(answer("old"));
    } finally {
      await dropTable(table)();
    }
  });

  it("rolls a terminal transition back when its shard is gone", async () => {
    const table = await freshTable();
    try {
      const store = new DynamoStateStore({ client: doc, table });
      await store.createShard(shardRecord());
      await store.putSamples([sampleRecord("a")]);
      await doc.send(new DeleteCommand({ TableName: table, Key: { pk: "SHARD#r1#s1", sk: "META" } }));
      await expect(store.transition(sampleRecord("a"), { status: "DONE" })).rejects.toBeInstanceOf(
        ShardNotFoundError,
      );
      expect(await store.getSample("r1", "s1", "a")).toMatchObject({ status: "INGESTED", version: 0 });
    } finally {
      await dropTable(table)();
    }
  });

  it("stores a sample's record compressed, and still reads one stored as a JSON string", async () => {
    const table = await freshTable();
    try {
      const store = new DynamoStateStore({ client: doc, table });
      await store.createShard(shardRecord());
      // A long error repeats like real records do (every version of every item): it must come back whole.
      const error = "line 1: the image could not be read. ".repeat(200);
      await store.putSamples([sampleRecord("a", { status: "FAILED", error })]);
      const stored = await doc.send(
        new GetCommand({ TableName: table, Key: { pk: "SHARD#r1#s1", sk: "SAMPLE#a" } }),
      );
      const body = stored.Item?.body;
      expect(body).toBeInstanceOf(Uint8Array);
      expect(stored.Item?.record).toBeUndefined();
      expect((body as Uint8Array).byteLength).toBeLessThan(error.length / 4);
      expect((await store.getSample("r1", "s1", "a"))?.error).toBe(error);

      const legacy = sampleRecord("b", { status: "REJECTED", raw: "{not json" });
      await doc.send(
        new PutCommand({
          TableName: table,
          Item: {
            pk: "SHARD#r1#s1",
            sk: "SAMPLE#b",
            status: "REJECTED",
            round: 0,
            version: 0,
            record: JSON.stringify(legacy),
          },
        }),
      );
      expect(await store.getSample("r1", "s1", "b")).toEqual(legacy);
      const listed = [];
      for await (const record of store.listSamples("r1", "s1")) listed.push(record.key);
      expect(listed).toEqual(["a", "b"]);
    } finally {
      await dropTable(table)();
    }
  });

  it("lists a job's submitted items, those written before the job was a top-level attribute included", async () => {
    const table = await freshTable();
    try {
      const store = new DynamoStateStore({ client: doc, table, pageSize: 2 });
      const submitted = (hash: string, job: string) => ({
        run: "r1",
        shard: "s1",
        hash,
        status: "submitted",
        model: "gpt-4o-mini",
        body: `work/r1/batches/s1/requests/${hash}.jsonl`,
        message: { kind: "evolve", run: "r1", shard: "s1", sample: hash, round: 1 },
        job,
        tries: 1,
        error: null,
        updatedAt: 0,
      });
      // As an earlier version stored them: the job only inside the record.
      for (const [hash, job] of [
        ["h1", "j1"],
        ["h2", "j2"],
        ["h3", "j1"],
      ] as const) {
        await doc.send(
          new PutCommand({
            TableName: table,
            Item: {
              pk: "SHARD#r1#s1",
              sk: `BATCH#${hash}`,
              status: "submitted",
              record: JSON.stringify(submitted(hash, job)),
            },
          }),
        );
      }
      await store.queueBatchItem({ ...submitted("h4", "j1"), status: "queued", job: null, tries: 0 });
      const h4 = await store.getBatchItem("r1", "s1", "h4");
      if (h4 === null) throw new Error("not stored");
      await store.updateBatchItem(h4, { status: "submitted", job: "j1" });
      const stored = await doc.send(
        new GetCommand({ TableName: table, Key: { pk: "SHARD#r1#s1", sk: "BATCH#h4" } }),
      );
      expect(stored.Item?.job).toBe("j1");
      const hashes = (await store.listBatchItems("r1", "s1", "submitted", { job: "j1" })).map((i) => i.hash);
      expect(hashes.sort()).toEqual(["h1", "h3", "h4"]);
    } finally {
      await dropTable(table)();
    }
  });

  it("refuses a stored record that no longer fits the schema", async () => {
    const table = await freshTable();
    try {
      const store = new DynamoStateStore({ client: doc, table });
      await doc.send(
        new PutCommand({
          TableName: table,
          Item: { pk: "SHARD#r1#s1", sk: "SAMPLE#a", record: JSON.stringify({ key: "a" }) },
        }),
      );
      await expect(store.getSample("r1", "s1", "a")).rejects.toThrow();
    } finally {
      await dropTable(table)();
    }
  });

  it("creates the table idempotently", async () => {
    const table = await freshTable();
    try {
      await expect(createTable(raw, table)).resolves.toBeUndefined();
    } finally {
      await dropTable(table)();
    }
  });
});
