import { afterAll, describe, expect, it } from "vitest";
import { createTable } from "../../functions/adapters/aws/create-table.ts";
import { DynamoStateStore } from "../../functions/adapters/aws/dynamodb-state-store.ts";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import type { StageDeps } from "../../functions/pipeline/deps.ts";
import { finalizeShard } from "../../functions/pipeline/finalize.ts";
import { layout } from "../../functions/pipeline/shard-config.ts";
import type { BlobStore } from "../../functions/ports/blob-store.ts";
import { silentLogger } from "../../functions/ports/runtime.ts";
import type { StateStore } from "../../functions/ports/state-store.ts";
import { ensureDynamoLocal } from "../helpers/dynamodb-local.ts";
import { tempDir } from "../helpers/files.ts";
import { documentClient, dynamoClient, uniqueName } from "../helpers/moto.ts";
import { seededSampleRecord, shardRecord } from "../helpers/state-store-contract.ts";

const cleanups: (() => void)[] = [];
afterAll(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

async function sqlite(): Promise<StateStore> {
  return new SqliteStateStore(":memory:");
}

async function dynamo(): Promise<StateStore> {
  const { endpoint } = await ensureDynamoLocal();
  const raw = dynamoClient(endpoint);
  const table = uniqueName("reopen");
  await createTable(raw, table);
  return new DynamoStateStore({ client: documentClient(raw), table });
}

/** A finalized-to-be shard r1/s1 whose one sample FAILED: pending 0, ingested, not finalized yet. */
async function shardWithAFailedSample(state: StateStore) {
  await state.createShard(shardRecord({ config: { rounds: 1 } }));
  await state.putSamples([seededSampleRecord("000000001", ["images/a.png"])]);
  await state.completeIngest("r1", "s1", 1);
  const sample = await state.getSample("r1", "s1", "000000001");
  if (sample === null) throw new Error("sample missing");
  const failed = await state.transition(sample, { status: "FAILED", error: "judge round 1: HTTP 400" });
  expect(failed.shardPending).toBe(0);
}

describe.each([
  ["SQLite", sqlite],
  ["DynamoDB", dynamo],
])("%s: mmevol redrive --failed while the shard's finalize is running", (_name, open) => {
  it("does not let that finalize mark the reopened shard finalized", async () => {
    const state = await open();
    await shardWithAFailedSample(state);
    // The finalize read pending 0 and wrote its outputs; the reopen lands before it marks the shard.
    expect(await state.reopenFailed("r1", "s1")).toHaveLength(1);
    expect(await state.markFinalized("r1", "s1")).toBe(false);
    expect(await state.getShard("r1", "s1")).toMatchObject({ pending: 1, finalized: false });
  }, 60_000);

  it("finalizes the shard again, with the sample that was evolved after the reopen", async () => {
    const state = await open();
    await shardWithAFailedSample(state);
    const dir = tempDir("mmevol-reopen-finalize-");
    cleanups.push(dir.cleanup);
    const fs = new FsBlobStore(dir.path);
    // The reopen comes while this finalize writes its last output, after it listed the samples.
    let reopenNow = true;
    const blobs: BlobStore = Object.assign(Object.create(fs) as BlobStore, {
      put: async (...args: Parameters<BlobStore["put"]>) => {
        await fs.put(...args);
        if (args[0] === layout.reportHtml("r1", "s1") && reopenNow) {
          reopenNow = false;
          await state.reopenFailed("r1", "s1");
        }
      },
    });
    const deps = {
      state,
      blobs,
      clock: { now: () => Date.now() },
      logger: silentLogger,
      defaults: {},
    } as unknown as StageDeps;
    const finalize = () =>
      finalizeShard({ message: { kind: "finalize", run: "r1", shard: "s1" }, attempt: 1 }, deps);
    await finalize();
    const reopened = await state.getSample("r1", "s1", "000000001");
    expect(reopened?.status).toBe("INGESTED");

    // The reopened sample evolves and passes through this time: the last to end, it sends the finalize.
    if (reopened === null) throw new Error("sample missing");
    const ended = await state.transition(reopened, { status: "PASSED_THROUGH" });
    expect(ended.shardPending).toBe(0);
    expect((await finalize()).outcome).toBe("finalized");
    const report = JSON.parse(new TextDecoder().decode(await fs.get(layout.report("r1", "s1"))));
    expect(report.counts).toMatchObject({ failed: 0, passedThrough: 1 });
    expect(await state.getShard("r1", "s1")).toMatchObject({ pending: 0, finalized: true });
  }, 60_000);
});
