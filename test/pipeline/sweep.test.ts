import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SharpImagePreparer } from "../../functions/adapters/images/sharp-image-preparer.ts";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { MemoryQueues } from "../../functions/adapters/local/memory-queue.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { ingestShard } from "../../functions/pipeline/ingest.ts";
import { recoverMessages, sweepStuck } from "../../functions/pipeline/sweep.ts";
import type { CrashPoint } from "../../functions/ports/faults.ts";
import { silentLogger } from "../../functions/ports/runtime.ts";
import { tempDir } from "../helpers/files.ts";
import { sampleRecord, shardRecord, submittedBatchJob } from "../helpers/state-store-contract.ts";

const MINUTE = 60_000;

function fixture() {
  let now = 1_000 * MINUTE;
  const clock = { now: () => now };
  const state = new SqliteStateStore(":memory:", { clock });
  return {
    state,
    clock,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

/** An ingested shard in batch mode, none of its samples pending. */
const batchShard = (updatedAt: number) =>
  shardRecord({ ingested: true, pending: 0, config: { rounds: 1, mode: "batch" }, updatedAt });

describe("sweepStuck", () => {
  it("re-sends the judge message of a sample stuck in JUDGING, and leaves fresh samples alone", async () => {
    const { state, clock, advance } = fixture();
    await state.createShard(shardRecord({ ingested: true, pending: 0, updatedAt: clock.now() }));
    const t0 = clock.now();
    await state.putSamples([
      sampleRecord("lost-judge", { status: "JUDGING", round: 2, updatedAt: t0 }),
      sampleRecord("lost-evolve", { status: "EVOLVING", round: 1, updatedAt: t0 }),
      sampleRecord("never-started", { status: "INGESTED", updatedAt: t0 }),
      sampleRecord("done", { status: "DONE", round: 3, updatedAt: t0 }),
    ]);
    advance(31 * MINUTE);
    await state.putSamples([sampleRecord("fresh", { status: "JUDGING", round: 1, updatedAt: clock.now() })]);

    const swept = await sweepStuck({ state }, { now: clock.now(), stuckAfterMs: 30 * MINUTE });
    expect(swept.messages).toEqual(
      expect.arrayContaining([
        { kind: "judge", run: "r1", shard: "s1", sample: "lost-judge", round: 2 },
        { kind: "evolve", run: "r1", shard: "s1", sample: "lost-evolve", round: 1 },
        { kind: "evolve", run: "r1", shard: "s1", sample: "never-started", round: 1 },
      ]),
    );
    expect(swept.messages).toHaveLength(3);
    expect(swept.counts).toMatchObject({ shards: 1, samples: 5, fresh: 1, judge: 1, evolve: 2, finalize: 0 });

    // Claimed: the next sweep (5 minutes later) does not send the same work again...
    advance(5 * MINUTE);
    const again = await sweepStuck({ state }, { now: clock.now(), stuckAfterMs: 30 * MINUTE });
    expect(again.messages).toEqual([]);
    // ...until a whole deadline has passed without the sample moving.
    advance(30 * MINUTE);
    const later = await sweepStuck({ state }, { now: clock.now(), stuckAfterMs: 30 * MINUTE });
    expect(later.messages.map((m) => (m.kind === "judge" ? m.sample : m.kind))).toContain("lost-judge");
    state.close();
  });

  it("leaves samples waiting on an open batch alone for the batch wait, not the stuck deadline", async () => {
    const { state, clock, advance } = fixture();
    await state.createShard(batchShard(clock.now()));
    await state.createShard(
      shardRecord({ shard: "s2", key: "seeds/r1/s2.jsonl", ingested: true, pending: 0 }),
    );
    const t0 = clock.now();
    await state.putSamples([
      sampleRecord("in-batch", { status: "EVOLVING", round: 1, updatedAt: t0 }),
      sampleRecord("online", { shard: "s2", status: "EVOLVING", round: 1, updatedAt: t0 }),
    ]);
    await state.putBatchJob(submittedBatchJob("job-1", t0));
    const sweep = () =>
      sweepStuck(
        { state },
        { now: clock.now(), stuckAfterMs: 2 * 60 * MINUTE, batchWaitMs: 25 * 60 * MINUTE },
      );
    advance(3 * 60 * MINUTE);
    // Three hours in: the online shard's sample is stuck; the one waiting on its batch is not.
    expect((await sweep()).messages.map((m) => (m.kind === "evolve" ? m.sample : m.kind))).toEqual([
      "online",
    ]);
    // Without the batch wait (the local runner's resume), both are re-sent.
    expect(
      (await sweepStuck({ state }, { now: clock.now(), stuckAfterMs: 0, claim: false })).messages,
    ).toHaveLength(2);
    // Past the batch window it is stuck after all.
    advance(23 * 60 * MINUTE);
    expect((await sweep()).messages.map((m) => (m.kind === "evolve" ? m.sample : m.kind))).toContain(
      "in-batch",
    );
    state.close();
  });

  it("re-sends a sample of a batch shard once its batches are done, at the stuck deadline", async () => {
    const { state, clock, advance } = fixture();
    await state.createShard(batchShard(clock.now()));
    await state.putSamples([sampleRecord("lost", { status: "JUDGING", round: 1, updatedAt: clock.now() })]);
    advance(3 * 60 * MINUTE);
    const swept = await sweepStuck(
      { state },
      { now: clock.now(), stuckAfterMs: 2 * 60 * MINUTE, batchWaitMs: 25 * 60 * MINUTE },
    );
    expect(swept.messages).toEqual([{ kind: "judge", run: "r1", shard: "s1", sample: "lost", round: 1 }]);
    state.close();
  });

  it("a claimed sample that moved on meanwhile is not re-sent", async () => {
    const { state, clock, advance } = fixture();
    await state.createShard(shardRecord({ ingested: true, pending: 0, updatedAt: clock.now() }));
    const judging = sampleRecord("a", { status: "JUDGING", round: 1, updatedAt: clock.now() });
    await state.putSamples([judging]);
    advance(60 * MINUTE);
    // A stage finishes the sample while the sweep would look at it: the skip hook runs just before the claim.
    const swept = await sweepStuck(
      { state },
      {
        now: clock.now(),
        stuckAfterMs: 30 * MINUTE,
        skip: () => {
          void state.transition(judging, { status: "DONE" });
          return false;
        },
      },
    );
    expect(swept.messages).toEqual([]);
    state.close();
  });

  it("finalizes a shard whose samples are all terminal though its finalize message died", async () => {
    const { state, clock, advance } = fixture();
    await state.createShard(shardRecord({ shard: "s2", key: "seeds/r1/s2.jsonl", updatedAt: clock.now() }));
    const evolving = sampleRecord("a", { shard: "s2", status: "EVOLVING", round: 1, updatedAt: clock.now() });
    await state.putSamples([evolving]);
    await state.completeIngest("r1", "s2", 1);
    // The last sample's terminal transition takes pending to 0; its finalize message is then lost.
    const last = await state.transition(evolving, { status: "FAILED", error: "x" });
    expect(last.shardPending).toBe(0);

    // Right after, a finalize may still be on its way: not yet.
    expect((await sweepStuck({ state }, { now: clock.now(), stuckAfterMs: 30 * MINUTE })).messages).toEqual(
      [],
    );
    advance(31 * MINUTE);
    const swept = await sweepStuck({ state }, { now: clock.now(), stuckAfterMs: 30 * MINUTE });
    expect(swept.messages).toEqual([{ kind: "finalize", run: "r1", shard: "s2" }]);
    // A finalized shard is never looked at again.
    await state.markFinalized("r1", "s2", 0);
    expect((await sweepStuck({ state }, { now: clock.now(), stuckAfterMs: 0 })).messages).toEqual([]);
    state.close();
  });

  it("resumes an ingest that stopped half-way with an ingest message that finds the same shard", async () => {
    const dir = tempDir();
    afterAll(() => dir.cleanup());
    const { state, clock, advance } = fixture();
    mkdirSync(join(dir.path, "seeds/r1"), { recursive: true });
    const lines = Array.from({ length: 7 }, (_, i) =>
      JSON.stringify({
        id: `t-${i}`,
        conversations: [
          { from: "human", value: `Question ${i}?` },
          { from: "gpt", value: `Answer ${i}.` },
        ],
      }),
    );
    writeFileSync(join(dir.path, "seeds/r1/half.jsonl"), `${lines.join("\n")}\n`);
    const blobs = new FsBlobStore(dir.path);
    let crashed = false;
    const deps = {
      blobs,
      state,
      llm: new SimulatedLlm(),
      images: new SharpImagePreparer({ blobs, cachePrefix: "work/images/" }),
      clock,
      logger: silentLogger,
      defaults: {},
      queue: new MemoryQueues({ clock }),
      ingestBatchSize: 2,
      faults: {
        point: (name: CrashPoint) => {
          if (name === "ingest:after-batch-write" && !crashed) {
            crashed = true;
            throw new Error("invocation died");
          }
        },
        duplicate: () => false,
      },
    };
    const first = {
      kind: "ingest" as const,
      run: "r1",
      shard: "half",
      key: "seeds/r1/half.jsonl",
      etag: "e-1",
    };
    await expect(ingestShard({ message: first, attempt: 1 }, deps)).rejects.toThrow("invocation died");
    expect((await state.getShard("r1", "half"))?.ingested).toBe(false);

    advance(5 * MINUTE);
    expect((await sweepStuck(deps, { now: clock.now(), stuckAfterMs: 30 * MINUTE })).messages).toEqual([]);
    advance(30 * MINUTE);
    const swept = await sweepStuck(deps, { now: clock.now(), stuckAfterMs: 30 * MINUTE });
    // Only the ingest: its samples are the ingest's to finish, not the sweep's.
    expect(swept.messages).toEqual([{ ...first }]);

    const message = swept.messages[0];
    if (message?.kind !== "ingest") throw new Error("expected an ingest message");
    await ingestShard({ message, attempt: 1 }, deps);
    const shards = await state.listShards("r1");
    expect(shards.map((s) => s.shard)).toEqual(["half"]);
    expect(shards[0]).toMatchObject({ ingested: true, lines: 7 });
    expect(state.countByStatus("r1", "half").PASSED_THROUGH).toBe(7);
    state.close();
  });

  it("recoverMessages takes every unfinished piece of work, whatever its age", async () => {
    const { state, clock } = fixture();
    await state.createShard(shardRecord({ ingested: true, pending: 0, updatedAt: clock.now() }));
    await state.putSamples([sampleRecord("a", { status: "JUDGING", round: 1, updatedAt: clock.now() })]);
    expect(await recoverMessages({ state })).toEqual([
      { kind: "judge", run: "r1", shard: "s1", sample: "a", round: 1 },
    ]);
    // Recovery does not claim: the sample is unchanged.
    expect((await state.getSample("r1", "s1", "a"))?.version).toBe(0);
    state.close();
  });
});
