import { App, Duration, Stack } from "aws-cdk-lib";
import { describe, expect, it } from "vitest";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { MAX_ATTEMPTS } from "../../functions/evolution/config.ts";
import { loadShardConfig, shardConfig } from "../../functions/pipeline/shard-config.ts";
import { StageQueue } from "../../lib/stage-queue.ts";
import { shardRecord } from "../helpers/state-store-contract.ts";

/** A SQLite store in memory that counts its shard reads. */
function countingStore(): { store: SqliteStateStore; reads: () => number } {
  const store = new SqliteStateStore(":memory:");
  let reads = 0;
  const getShard = store.getShard.bind(store);
  store.getShard = (run, shard) => {
    reads += 1;
    return getShard(run, shard);
  };
  return { store, reads: () => reads };
}

describe("loadShardConfig", () => {
  it("reads a shard's settings once per store, and each store its own", async () => {
    const first = countingStore();
    await first.store.createShard(shardRecord({ config: { rounds: 2, seed: 7 } }));
    const a = await loadShardConfig(first.store, "r1", "s1");
    const b = await loadShardConfig(first.store, "r1", "s1");
    expect(a).toMatchObject({ rounds: 2, seed: 7 });
    expect(b).toBe(a);
    expect(first.reads()).toBe(1);

    // Another store (another table or file) with the same names has its own settings.
    const second = countingStore();
    await second.store.createShard(shardRecord({ config: { rounds: 4 } }));
    expect(await loadShardConfig(second.store, "r1", "s1")).toMatchObject({ rounds: 4, seed: 3407 });
    expect(second.reads()).toBe(1);
    first.store.close();
    second.store.close();
  });

  it("answers null for a shard that does not exist, and reads it again next time", async () => {
    const { store, reads } = countingStore();
    expect(await loadShardConfig(store, "r1", "missing")).toBeNull();
    await store.createShard(shardRecord({ shard: "missing", config: { rounds: 1 } }));
    expect(await loadShardConfig(store, "r1", "missing")).toMatchObject({ rounds: 1 });
    expect(reads()).toBe(2);
    store.close();
  });
});

describe("shardConfig", () => {
  it("hands out the shared settings frozen, so no message can change another's", async () => {
    const { store } = countingStore();
    await store.createShard(
      shardRecord({ config: { rounds: 2, weights: { perception: 1, reasoning: 0, interaction: 0 } } }),
    );
    const a = await loadShardConfig(store, "r1", "s1");
    if (a === null) throw new Error("no settings");
    expect(Object.isFrozen(a.weights)).toBe(true);
    expect(() => {
      (a as { rounds: number }).rounds = 9;
    }).toThrow(TypeError);
    expect(shardConfig(shardRecord({ config: { rounds: 3 } })).rounds).toBe(3);
    store.close();
  });

  it("refuses settings that do not fit the schema", () => {
    expect(() => shardConfig(shardRecord({ config: { rounds: 0 } }))).toThrow();
  });

  it("refuses more attempts than the deployed queues deliver a message before they dead-letter it", () => {
    expect(shardConfig(shardRecord({ config: { maxAttempts: MAX_ATTEMPTS } })).maxAttempts).toBe(
      MAX_ATTEMPTS,
    );
    expect(() => shardConfig(shardRecord({ config: { maxAttempts: MAX_ATTEMPTS + 1 } }))).toThrow();
    // A queue dead-lettering sooner would leave such a sample neither failed nor finished: refused at synth.
    const stack = new Stack(new App(), "Queues");
    const timeout = Duration.seconds(60);
    expect(
      () => new StageQueue(stack, "Q", { functionTimeout: timeout, maxReceiveCount: MAX_ATTEMPTS }),
    ).toThrow(/above a run's most maxAttempts/);
  });
});
