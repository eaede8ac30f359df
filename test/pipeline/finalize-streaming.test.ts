import { readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { layout } from "../../functions/pipeline/shard-config.ts";
import type { BlobStore } from "../../functions/ports/blob-store.ts";
import type { SampleRecord, StateStore } from "../../functions/ports/state-store.ts";
import { tempDir } from "../helpers/files.ts";
import { finalizeDeps, runFinalize } from "../helpers/finalize.ts";
import { seededSampleRecord, shardRecord } from "../helpers/state-store-contract.ts";

const SAMPLES = 40;
const cleanups: (() => void)[] = [];
afterAll(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

/** Shard r1/s1 with SAMPLES samples, all passed through (each a training line, a lineage line, an error). */
async function finishedShard(): Promise<StateStore> {
  const state = new SqliteStateStore(":memory:");
  await state.createShard(shardRecord({ config: { rounds: 1 } }));
  const records = Array.from({ length: SAMPLES }, (_, i) => {
    const record = seededSampleRecord(String(i + 1).padStart(9, "0"), ["images/a.png"]);
    const sample = { ...(record.sample as NonNullable<SampleRecord["sample"]>), id: `id-${i}`, line: i + 1 };
    return { ...record, line: i + 1, sample };
  });
  await state.putSamples(records);
  await state.completeIngest("r1", "s1", SAMPLES);
  for (const record of records)
    await state.transition(record, { status: "PASSED_THROUGH", error: "no luck" });
  expect(await state.getShard("r1", "s1")).toMatchObject({ pending: 0 });
  return state;
}

/** What finalize did with its outputs: keys it `put` whole, and per written key the samples read so far. */
function watched(state: StateStore, root: string) {
  const fs = new FsBlobStore(root);
  const listed = { count: 0 };
  const puts: string[] = [];
  const firstWriteAt = new Map<string, number>();
  const blobs: BlobStore = Object.assign(Object.create(fs) as BlobStore, {
    put: (...args: Parameters<BlobStore["put"]>) => {
      puts.push(args[0]);
      return fs.put(...args);
    },
    writer: (key: string, contentType?: string) => {
      const inner = fs.writer(key, contentType);
      return {
        ...inner,
        write: (text: string) => {
          if (!firstWriteAt.has(key)) firstWriteAt.set(key, listed.count);
          return inner.write(text);
        },
      };
    },
  });
  const counting: StateStore = Object.assign(Object.create(state) as StateStore, {
    listSamples: async function* (run: string, shard: string) {
      for await (const record of state.listSamples(run, shard)) {
        listed.count += 1;
        yield record;
      }
    },
  });
  return { deps: finalizeDeps(counting, blobs), fs, listed, puts, firstWriteAt };
}

const OUTPUTS = [layout.evolved("r1", "s1"), layout.lineage("r1", "s1"), layout.errors("r1", "s1")];

describe("finalize writes a shard's outputs as it reads the samples", () => {
  it("streams the training data, lineage and errors through writers, never holding them whole", async () => {
    const dir = tempDir("mmevol-finalize-stream-");
    cleanups.push(dir.cleanup);
    const { deps, fs, listed, puts, firstWriteAt } = watched(await finishedShard(), dir.path);
    expect((await runFinalize(deps)).outcome).toBe("finalized");
    // Two passes: input ids first, then the outputs; each output had its first line while the second pass had
    // read one sample of SAMPLES.
    expect(listed.count).toBe(2 * SAMPLES);
    for (const key of OUTPUTS) expect(firstWriteAt.get(key)).toBe(SAMPLES + 1);
    expect(puts.filter((key) => OUTPUTS.includes(key))).toEqual([]);
    for (const key of OUTPUTS) {
      const lines = new TextDecoder()
        .decode(await fs.get(key))
        .trim()
        .split("\n");
      expect(lines).toHaveLength(SAMPLES);
    }
    const training = new TextDecoder().decode(await fs.get(layout.evolved("r1", "s1")));
    expect(training.split("\n")[0]).toContain('"id":"id-0"');
  });

  it("leaves the outputs of the last finalize untouched, and no temp files, when a sample turns out open", async () => {
    const dir = tempDir("mmevol-finalize-stream-");
    cleanups.push(dir.cleanup);
    const state = await finishedShard();
    const { deps, fs } = watched(state, dir.path);
    await runFinalize(deps);
    const before = await Promise.all(OUTPUTS.map((key) => fs.get(key)));
    // The shard says it is finished and unfinalized, but one sample (the 30th) is open again.
    const open = await state.getSample("r1", "s1", "000000030");
    if (open === null) throw new Error("sample missing");
    const stale: StateStore = Object.assign(Object.create(state) as StateStore, {
      getShard: async () => ({ ...(await state.getShard("r1", "s1")), finalized: false, pending: 0 }),
      listSamples: async function* (run: string, shard: string) {
        for await (const record of state.listSamples(run, shard))
          yield record.key === open.key ? { ...record, status: "EVOLVING" } : record;
      },
    });
    await expect(runFinalize({ ...deps, state: stale })).rejects.toThrow(
      /000000030 is EVOLVING, not terminal/,
    );
    expect(await Promise.all(OUTPUTS.map((key) => fs.get(key)))).toEqual(before);
    for (const sub of ["evolved/r1", "errors/r1"])
      expect(readdirSync(join(dir.path, sub)).filter((name) => name.startsWith(".mmevol-tmp-"))).toEqual([]);
  });
});
