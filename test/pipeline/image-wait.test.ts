import { copyFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { SharpImagePreparer } from "../../functions/adapters/images/sharp-image-preparer.ts";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { StageDeps } from "../../functions/pipeline/deps.ts";
import { evolveSample } from "../../functions/pipeline/evolve.ts";
import { ImageNotUploadedError } from "../../functions/ports/errors.ts";
import { silentLogger } from "../../functions/ports/runtime.ts";
import { repoRoot, tempDir } from "../helpers/files.ts";
import { seededSampleRecord, shardRecord } from "../helpers/state-store-contract.ts";

const MINUTE = 60_000;
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** A shard that arrived at `start` with one sample whose image (images/a.png) is not in the store yet. */
async function shardWithoutItsImage(imageWaitMs: number | undefined) {
  const dir = tempDir("mmevol-image-wait-");
  cleanups.push(dir.cleanup);
  const start = 1_800_000_000_000;
  let now = start;
  const clock = { now: () => now };
  const state = new SqliteStateStore(":memory:", { clock });
  const blobs = new FsBlobStore(dir.path);
  await state.createShard(shardRecord({ ingested: true, createdAt: start, config: { rounds: 1 } }));
  await state.putSamples([seededSampleRecord("000000001", ["images/a.png"])]);
  const deps = {
    state,
    blobs,
    clock,
    logger: silentLogger,
    defaults: {},
    llm: new SimulatedLlm(),
    images: new SharpImagePreparer({ blobs, cachePrefix: "work/images/" }),
    ...(imageWaitMs === undefined ? {} : { imageWaitMs }),
  } as unknown as StageDeps;
  const evolve = () =>
    evolveSample(
      { message: { kind: "evolve", run: "r1", shard: "s1", sample: "000000001", round: 1 }, attempt: 1 },
      deps,
    );
  const upload = () => {
    mkdirSync(join(dir.path, "images"), { recursive: true });
    copyFileSync(join(repoRoot, "examples/seeds/images/bookshelf.png"), join(dir.path, "images/a.png"));
  };
  return { state, evolve, upload, advance: (ms: number) => (now += ms) };
}

describe("a deployed stack's image that is not uploaded yet", () => {
  it("is looked for again while its shard is young, and the sample evolves once it arrives", async () => {
    const shard = await shardWithoutItsImage(30 * MINUTE);
    shard.advance(2 * MINUTE);
    const waiting = await shard.evolve().catch((error: unknown) => error);
    expect(waiting).toBeInstanceOf(ImageNotUploadedError);
    expect((waiting as ImageNotUploadedError).retryAfterMs).toBe(MINUTE);
    expect((waiting as ImageNotUploadedError).message).toMatch(
      /^image not found: .*images\/a\.png \(yet: looking again for 28 more minute\(s\), in case it is still being uploaded\)$/,
    );
    expect((await shard.state.getSample("r1", "s1", "000000001"))?.status).toBe("INGESTED");

    shard.upload();
    shard.advance(MINUTE);
    expect((await shard.evolve()).outcome).toMatch(/^evolved:/);
    expect((await shard.state.getSample("r1", "s1", "000000001"))?.status).toBe("JUDGING");
  });

  it("passes the sample through as unusable once the wait after its shard arrived is over", async () => {
    const shard = await shardWithoutItsImage(30 * MINUTE);
    shard.advance(29.5 * MINUTE);
    // The last look comes back no later than the end of the wait.
    const last = await shard.evolve().catch((error: unknown) => error);
    expect((last as ImageNotUploadedError).retryAfterMs).toBe(30 * 1000);
    shard.advance(30 * 1000);
    expect((await shard.evolve()).outcome).toBe("passed");
    const passed = await shard.state.getSample("r1", "s1", "000000001");
    expect(passed?.status).toBe("PASSED_THROUGH");
    expect(passed?.error).toMatch(/^image unusable: image not found: .*images\/a\.png$/);
  });

  it("is not waited for in a local run (no wait configured): the sample passes through at once", async () => {
    const shard = await shardWithoutItsImage(undefined);
    expect((await shard.evolve()).outcome).toBe("passed");
  });
});
