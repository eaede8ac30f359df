import { afterAll, describe, expect, it } from "vitest";
import { createTable } from "../../functions/adapters/aws/create-table.ts";
import { DynamoStateStore } from "../../functions/adapters/aws/dynamodb-state-store.ts";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { finalizeClaimOf } from "../../functions/pipeline/finalize.ts";
import { layout } from "../../functions/pipeline/shard-config.ts";
import type { BlobStore } from "../../functions/ports/blob-store.ts";
import type { StateStore } from "../../functions/ports/state-store.ts";
import { ensureDynamoLocal } from "../helpers/dynamodb-local.ts";
import { tempDir } from "../helpers/files.ts";
import { finalizeDeps, runFinalize } from "../helpers/finalize.ts";
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

/** A hook that runs `then` once: the first time the finalize writes `key`. */
function onFirst(key: string, then: () => Promise<void>): (written: string) => Promise<void> {
  let done = false;
  return async (written) => {
    if (written !== key || done) return;
    done = true;
    await then();
  };
}

/**
 * Finalize of r1/s1 over `state`, its outputs in a directory; `hooks` run around each whole-object `put` (the
 * report and its HTML, the last outputs it writes) with its key: a test's moment inside that finalize.
 */
function finalizer(
  state: StateStore,
  hooks: { before?: (key: string) => Promise<void>; after?: (key: string) => Promise<void> } = {},
) {
  const dir = tempDir("mmevol-reopen-finalize-");
  cleanups.push(dir.cleanup);
  const fs = new FsBlobStore(dir.path);
  const blobs: BlobStore = Object.assign(Object.create(fs) as BlobStore, {
    put: async (...args: Parameters<BlobStore["put"]>) => {
      await hooks.before?.(args[0]);
      await fs.put(...args);
      await hooks.after?.(args[0]);
    },
  });
  const deps = finalizeDeps(state, blobs);
  return {
    finalize: (delivery?: string) => runFinalize(deps, delivery === undefined ? {} : { delivery }),
    counts: async () =>
      (JSON.parse(new TextDecoder().decode(await fs.get(layout.report("r1", "s1")))) as { counts: unknown })
        .counts,
  };
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
    expect(await state.markFinalized("r1", "s1", 0)).toBe(false);
    expect(await state.getShard("r1", "s1")).toMatchObject({ pending: 1, finalized: false });
  }, 60_000);

  it("finalizes the shard again, with the sample that was evolved after the reopen", async () => {
    const state = await open();
    await shardWithAFailedSample(state);
    // The reopen comes while this finalize writes its last output, after it listed the samples.
    const { finalize, counts } = finalizer(state, {
      after: onFirst(layout.reportHtml("r1", "s1"), async () => {
        await state.reopenFailed("r1", "s1");
      }),
    });
    await finalize();
    const reopened = await state.getSample("r1", "s1", "000000001");
    expect(reopened?.status).toBe("INGESTED");

    // The reopened sample evolves and passes through this time: the last to end, it sends the finalize.
    if (reopened === null) throw new Error("sample missing");
    const ended = await state.transition(reopened, { status: "PASSED_THROUGH" });
    expect(ended.shardPending).toBe(0);
    expect((await finalize()).outcome).toBe("finalized");
    expect(await counts()).toMatchObject({ failed: 0, passedThrough: 1 });
    expect(await state.getShard("r1", "s1")).toMatchObject({ pending: 0, finalized: true });
  }, 60_000);

  it("finalizes again when the reopened sample already finished before that finalize marked the shard", async () => {
    const state = await open();
    await shardWithAFailedSample(state);
    // While this finalize writes its last output (from the samples as it listed them), the sample is reopened
    // and passes through: the shard's pending count is 0 again before the finalize marks it.
    const { finalize, counts } = finalizer(state, {
      after: onFirst(layout.reportHtml("r1", "s1"), async () => {
        const [reopened] = await state.reopenFailed("r1", "s1");
        if (reopened === undefined) throw new Error("nothing reopened");
        expect((await state.transition(reopened, { status: "PASSED_THROUGH" })).shardPending).toBe(0);
      }),
    });

    // Its report still counts the sample as failed: it may not mark the shard, and it sends a finalize again.
    const stale = await finalize();
    expect(await counts()).toMatchObject({ failed: 1, passedThrough: 0 });
    expect(await state.getShard("r1", "s1")).toMatchObject({ pending: 0, finalized: false });
    expect(stale).toEqual({
      next: [{ kind: "finalize", run: "r1", shard: "s1" }],
      outcome: "finalize again: samples reopened",
    });
    expect((await finalize()).outcome).toBe("finalized");
    expect(await counts()).toMatchObject({ failed: 0, passedThrough: 1 });
    expect(await state.getShard("r1", "s1")).toMatchObject({ pending: 0, finalized: true });
  }, 60_000);

  it("runs one finalize of a shard at a time: another message for it drops out while the first writes", async () => {
    const state = await open();
    await shardWithAFailedSample(state);
    const reports: string[] = [];
    let second: Promise<unknown> = Promise.resolve();
    const { finalize } = finalizer(state, {
      before: async (key) => {
        if (key !== layout.report("r1", "s1")) return;
        reports.push(key);
        // The second message arrives while the first finalize writes.
        if (reports.length === 1) second = finalize("message-2");
        await second;
      },
    });

    expect((await finalize("message-1#receive-1")).outcome).toBe("finalized");
    expect(await second).toEqual({ next: [], outcome: "duplicate: finalize running" });
    expect(reports).toHaveLength(1);
    // The claim is given up: a redelivery after the mark finds the shard finalized, nothing else.
    expect((await finalize("message-3")).outcome).toBe("duplicate");
    expect(await state.claimRequest(finalizeClaimOf("r1", "s1"), "anyone", 1000)).toEqual({ granted: true });
  }, 60_000);
});
