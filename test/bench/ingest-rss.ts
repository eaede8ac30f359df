// Ingest memory benchmark: the peak RSS of the ingest stage alone for a small and a large shard (2,000 and
// 200,000 realistic LLaVA lines of ~1 KB by default), each in a fresh process (ingest-rss-child.ts) on the local
// adapters (SQLite state, directory blobs, a queue that only counts evolve messages). Ingest streams the shard
// and writes in batches, so the peak should not grow with the shard: target ratio large/small <= 1.2.
// Run: node test/bench/ingest-rss.ts [--small 2000] [--large 200000] [--json out.json]
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { z } from "zod";
import { writeLlavaBenchShard } from "../helpers/bench-shard.ts";
import { measureChild, mib, PeakMeasure, peakPair } from "../helpers/peak-rss.ts";

export interface IngestRssFigures {
  readonly smallLines: number;
  readonly largeLines: number;
  readonly smallPeakMiB: number;
  readonly largePeakMiB: number;
  /** largePeakMiB / smallPeakMiB; target <= 1.2. */
  readonly ratio: number;
  readonly smallSeconds: number;
  readonly largeSeconds: number;
  readonly smallShardMiB: number;
  readonly largeShardMiB: number;
  /** RSS of a child right before ingest started (node, zod, SQLite loaded), for scale. */
  readonly baselineMiB: number;
}

const ChildResult = PeakMeasure.extend({
  lines: z.number(),
  evolveMessages: z.number(),
  sends: z.number(),
  outcome: z.string(),
});

const childScript = fileURLToPath(new URL("./ingest-rss-child.ts", import.meta.url));
const say = (line: string) => process.stderr.write(`[ingest-rss] ${line}\n`);
/** Generates both shards, ingests each in a fresh process and returns the peaks. */
export async function measureIngestRss(
  opts: {
    small?: number;
    large?: number;
    /** Node flags for the measured processes, e.g. ["--max-semi-space-size=16"] (none by default). */
    execArgv?: readonly string[];
  } = {},
): Promise<IngestRssFigures> {
  const small = opts.small ?? 2_000;
  const large = opts.large ?? 200_000;
  const dir = mkdtempSync(join(tmpdir(), "mmevol-ingest-rss-"));
  try {
    const measure = async (lines: number, name: string) => {
      const generated = Date.now();
      const shard = writeLlavaBenchShard(dir, { samples: lines, name });
      say(
        `${name}: ${lines} lines, ${mib(shard.bytes / 1024)} MiB generated in ${((Date.now() - generated) / 1000).toFixed(1)} s; ingesting in a fresh process...`,
      );
      const work = join(dir, `work-${name}`);
      mkdirSync(work, { recursive: true });
      const result = await measureChild(
        [...(opts.execArgv ?? []), childScript, shard.path, work],
        ChildResult,
      );
      if (result.lines !== lines || result.evolveMessages !== lines) {
        throw new Error(
          `${name}: ingested ${result.lines} lines and sent ${result.evolveMessages} evolve messages, expected ${lines}`,
        );
      }
      say(`${name}: peak RSS ${mib(result.maxRssKiB)} MiB, ${result.seconds} s (${result.outcome})`);
      // The state database of the large shard is hundreds of MB: drop it before the next measurement.
      rmSync(work, { recursive: true, force: true });
      rmSync(shard.path, { force: true });
      return { result, bytes: shard.bytes };
    };
    const s = await measure(small, "small");
    const l = await measure(large, "large");
    return {
      smallLines: small,
      largeLines: large,
      ...peakPair(s.result, l.result),
      smallShardMiB: mib(s.bytes / 1024),
      largeShardMiB: mib(l.bytes / 1024),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      small: { type: "string", default: "2000" },
      large: { type: "string", default: "200000" },
      /** A Node flag for the measured processes (repeatable), e.g. --node-flag=--max-semi-space-size=16 */
      "node-flag": { type: "string", multiple: true },
      json: { type: "string" },
    },
  });
  const figures = await measureIngestRss({
    small: Number(values.small),
    large: Number(values.large),
    execArgv: values["node-flag"] ?? [],
  });
  console.log("mmevol ingest peak RSS (each shard in a fresh process, local adapters)");
  console.table({
    [`${figures.smallLines} lines (${figures.smallShardMiB} MiB)`]: {
      "peak RSS (MiB)": figures.smallPeakMiB,
      "ingest time (s)": figures.smallSeconds,
    },
    [`${figures.largeLines} lines (${figures.largeShardMiB} MiB)`]: {
      "peak RSS (MiB)": figures.largePeakMiB,
      "ingest time (s)": figures.largeSeconds,
    },
  });
  console.log(
    `ratio large/small: ${figures.ratio} (target <= 1.2); RSS before ingest ${figures.baselineMiB} MiB`,
  );
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(
    JSON.stringify({ bench: "ingest-rss", date: new Date().toISOString().slice(0, 10), ...figures }),
  );
}
