import { describe, expect, it } from "vitest";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import type { StageDeps } from "../../functions/pipeline/deps.ts";
import { evolveSample } from "../../functions/pipeline/evolve.ts";
import { silentLogger, systemClock } from "../../functions/ports/runtime.ts";
import { seededSampleRecord, shardRecord } from "../helpers/state-store-contract.ts";

describe("evolve, redelivered after it ended its shard's last sample", () => {
  it("sends the finalize again, as judge does, instead of leaving the shard to the sweeper", async () => {
    const state = new SqliteStateStore(":memory:");
    await state.createShard(shardRecord({ config: { rounds: 1 } }));
    // An image outside the image root: evolve passes the sample through, and it was the shard's last.
    await state.putSamples([seededSampleRecord("k1", ["../../outside.png"])]);
    expect(await state.completeIngest("r1", "s1", 1)).toBe(1);
    const deps = { state, clock: systemClock, logger: silentLogger, defaults: {} } as unknown as StageDeps;
    const message = { kind: "evolve" as const, run: "r1", shard: "s1", sample: "k1", round: 1 };
    const finalize = [{ kind: "finalize", run: "r1", shard: "s1" }];
    expect((await evolveSample({ message, attempt: 1 }, deps)).next).toEqual(finalize);
    // Its finalize send failed, or the invocation timed out: the message comes back.
    expect(await evolveSample({ message, attempt: 2 }, deps)).toEqual({
      next: finalize,
      outcome: "duplicate",
    });
    state.close();
  });
});
