// Finalize memory benchmark: the peak RSS of the finalize stage alone for a small and a large shard (2,000 and
// 60,000 finished samples by default), each in a fresh process on the local adapters (SQLite state, directory
// blobs). The samples are copies of the records a real dry run made (3 rounds, the simulated model), about
// 9 KB of training data and lineage each. Finalize writes its outputs as it reads the samples, so the peak
// stops growing with the shard once V8's heap has its working size (about 280 MiB from 20,000 samples on);
// when it held them, 20,000 samples took 975 MiB against 270 MiB for 2,000, and the deployed function's 2 GiB
// ran out at some 50,000. Run: npm run bench:finalize [-- --small 2000 --large 60000 --json out.json]
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { z } from "zod";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { layout } from "../../functions/pipeline/shard-config.ts";
import type { SampleRecord } from "../../functions/ports/state-store.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { finalizeDeps, runFinalize } from "../helpers/finalize.ts";
import { measureChild, mib, PeakMeasure, peakPair } from "../helpers/peak-rss.ts";

const RUN = "rss";
const SHARD = "bench";
const say = (line: string) => process.stderr.write(`[finalize-rss] ${line}\n`);

const ChildResult = PeakMeasure.extend({ outcome: z.string() });

export interface FinalizeRssFigures {
  readonly smallSamples: number;
  readonly largeSamples: number;
  readonly smallPeakMiB: number;
  readonly largePeakMiB: number;
  /** largePeakMiB / smallPeakMiB. */
  readonly ratio: number;
  readonly smallSeconds: number;
  readonly largeSeconds: number;
  /** Training data plus lineage the large shard's finalize wrote. */
  readonly largeOutputMiB: number;
  /** RSS of a child right before finalize started (node, zod, SQLite loaded), for scale. */
  readonly baselineMiB: number;
}

/** The finished samples of a real dry run over a small generated shard, to copy. */
async function templateRecords(dir: string): Promise<SampleRecord[]> {
  const shard = writeBenchShard(dir, { samples: 12, name: SHARD });
  const out = join(dir, "template");
  await runLocal({
    shards: [shard],
    out,
    run: RUN,
    concurrency: 4,
    config: { rounds: 3, dryRun: true },
    llm: new SimulatedLlm(),
  });
  const state = new SqliteStateStore(join(out, ".mmevol/state.sqlite"));
  const records: SampleRecord[] = [];
  for await (const record of state.listSamples(RUN, SHARD)) records.push(record);
  state.close();
  if (!records.some((record) => record.status === "DONE"))
    throw new Error("the template run evolved nothing");
  return records;
}

/** A state database holding one finished, unfinalized shard of `samples` copies of the templates. */
async function writeState(path: string, templates: readonly SampleRecord[], samples: number): Promise<void> {
  const state = new SqliteStateStore(path);
  const now = Date.now();
  await state.createShard({
    run: RUN,
    shard: SHARD,
    key: `seeds/${RUN}/${SHARD}.jsonl`,
    etag: "bench",
    pending: 1,
    ingested: false,
    finalized: false,
    lines: 0,
    config: { rounds: 3, dryRun: true },
    createdAt: now,
    updatedAt: now,
  });
  const batch: SampleRecord[] = [];
  for (let i = 0; i < samples; i++) {
    const template = templates[i % templates.length] as SampleRecord;
    const sample = template.sample === null ? null : { ...template.sample, id: `${SHARD}-${i}`, line: i + 1 };
    batch.push({ ...template, key: String(i + 1).padStart(9, "0"), line: i + 1, sample });
    if (batch.length === 1_000) await state.putSamples(batch.splice(0));
  }
  if (batch.length > 0) await state.putSamples(batch.splice(0));
  // The copies are terminal already: ingest's completion brings the pending count to zero.
  await state.completeIngest(RUN, SHARD, samples);
  state.close();
}

/** The measured process: finalize over the state at `statePath`, outputs under `outDir`; one JSON line. */
async function child(statePath: string, outDir: string): Promise<void> {
  const rssBeforeKiB = Math.round(process.memoryUsage().rss / 1024);
  const state = new SqliteStateStore(statePath);
  const started = performance.now();
  const result = await runFinalize(finalizeDeps(state, new FsBlobStore(outDir)), { run: RUN, shard: SHARD });
  const seconds = +((performance.now() - started) / 1000).toFixed(2);
  state.close();
  console.log(
    JSON.stringify({
      outcome: result.outcome,
      maxRssKiB: process.resourceUsage().maxRSS,
      rssBeforeKiB,
      seconds,
    }),
  );
}

export async function measureFinalizeRss(
  opts: { small?: number; large?: number } = {},
): Promise<FinalizeRssFigures> {
  const small = opts.small ?? 2_000;
  const large = opts.large ?? 60_000;
  const dir = mkdtempSync(join(tmpdir(), "mmevol-finalize-rss-"));
  try {
    const templates = await templateRecords(dir);
    const measure = async (samples: number, name: string) => {
      const work = join(dir, name);
      mkdirSync(work, { recursive: true });
      const statePath = join(work, "state.sqlite");
      await writeState(statePath, templates, samples);
      say(`${name}: ${samples} finished samples stored; finalizing in a fresh process...`);
      const result = await measureChild(
        [fileURLToPath(import.meta.url), "--child", statePath, join(work, "out")],
        ChildResult,
      );
      if (result.outcome !== "finalized") throw new Error(`${name}: finalize said ${result.outcome}`);
      const outputBytes = [layout.evolved(RUN, SHARD), layout.lineage(RUN, SHARD)]
        .map((key) => statSync(join(work, "out", key)).size)
        .reduce((a, b) => a + b, 0);
      say(
        `${name}: peak RSS ${mib(result.maxRssKiB)} MiB, ${result.seconds} s, ${mib(outputBytes / 1024)} MiB written`,
      );
      rmSync(work, { recursive: true, force: true });
      return { result, outputBytes };
    };
    const s = await measure(small, "small");
    const l = await measure(large, "large");
    return {
      smallSamples: small,
      largeSamples: large,
      ...peakPair(s.result, l.result),
      largeOutputMiB: mib(l.outputBytes / 1024),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      child: { type: "boolean", default: false },
      small: { type: "string", default: "2000" },
      large: { type: "string", default: "60000" },
      json: { type: "string" },
    },
    allowPositionals: true,
  });
  if (values.child) {
    const [statePath, outDir] = process.argv.slice(3);
    if (!statePath || !outDir) throw new Error("usage: finalize-rss.ts --child <state.sqlite> <out dir>");
    await child(statePath, outDir);
  } else {
    const figures = await measureFinalizeRss({ small: Number(values.small), large: Number(values.large) });
    console.log("mmevol finalize peak RSS (each shard in a fresh process, local adapters)");
    console.table({
      [`${figures.smallSamples} samples`]: {
        "peak RSS (MiB)": figures.smallPeakMiB,
        "finalize time (s)": figures.smallSeconds,
      },
      [`${figures.largeSamples} samples (${figures.largeOutputMiB} MiB written)`]: {
        "peak RSS (MiB)": figures.largePeakMiB,
        "finalize time (s)": figures.largeSeconds,
      },
    });
    console.log(`ratio large/small: ${figures.ratio}; RSS before finalize ${figures.baselineMiB} MiB`);
    if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
    console.log(
      JSON.stringify({ bench: "finalize-rss", date: new Date().toISOString().slice(0, 10), ...figures }),
    );
  }
}
