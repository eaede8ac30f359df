// `npm run bench`: every benchmark once, each in its own process, then one table of ratios (absolute times
// vary between machines) with the targets, written as JSON too. `--update-readme` puts the table, with the
// date, between the README's benchmark markers. `--quick` uses smaller sizes (a smoke run, not the figures).
// `--base-url <url>` measures the rate-limit and cost figures (dollars per kept item, and AWS next to the LLM
// on the emulated stack, batch mode through the server's files and batches) against another OpenAI-compatible
// server (key in OPENAI_API_KEY) instead of the simulator; the other benchmarks are about this code and stay
// as they are. Its batches take as long as it takes to run them. `--samples <n>` sets the cost benchmarks'
// samples (default 200): their online calls take about n x 120,000 tokens in all, which is two hours at
// 200,000 tokens/min, so against a server the run first prints that estimate at the server's limit.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { benchTokenLimit, foreignEndpoint, TOKENS_PER_SAMPLE } from "../helpers/endpoint.ts";
import { repoRoot } from "../helpers/files.ts";

const { values } = parseArgs({
  options: {
    json: { type: "string", default: "bench-results.json" },
    "update-readme": { type: "boolean", default: false },
    quick: { type: "boolean", default: false },
    only: { type: "string", multiple: true },
    "base-url": { type: "string" },
    /** Samples of the cost benchmarks (dollars per kept item, AWS next to the LLM). */
    samples: { type: "string" },
  },
});
const quick = values.quick === true;
const baseUrl = values["base-url"];
/** Where the rate and cost benchmarks send their requests. */
const foreign = (args: readonly string[]): string[] =>
  baseUrl === undefined ? [...args] : [...args, "--base-url", baseUrl];
const server = baseUrl === undefined ? "simulator" : new URL(baseUrl).host;
if (values.samples !== undefined && !/^[1-9]\d*$/.test(values.samples)) {
  process.stderr.write(`--samples must be a positive integer, got ${values.samples}\n`);
  process.exit(2);
}
/** The cost benchmarks' --samples: as given, else smaller under --quick, else their own default. */
const costArgs = (quickSamples: string): string[] =>
  values.samples !== undefined ? ["--samples", values.samples] : quick ? ["--samples", quickSamples] : [];
const latency = baseUrl === undefined ? "latency 1-3 s" : `on ${server}`;

interface Bench {
  readonly name: string;
  readonly script: string;
  readonly args: readonly string[];
}

const BENCHES: readonly Bench[] = [
  { name: "overhead", script: "local.ts", args: quick ? ["--samples", "200", "--repeat", "1"] : [] },
  { name: "rate", script: "rate-limit.ts", args: foreign(quick ? ["--samples", "60"] : []) },
  { name: "rate-stack", script: "rate-emulated.ts", args: foreign(quick ? ["--samples", "30"] : []) },
  { name: "cost", script: "cost.ts", args: foreign(costArgs("16")) },
  {
    name: "cost-4.1-mini",
    script: "cost.ts",
    args: foreign(["--model", "gpt-4.1-mini", ...costArgs("16")]),
  },
  { name: "ingest", script: "ingest-rss.ts", args: quick ? ["--large", "20000"] : [] },
  {
    name: "aws-online",
    script: "aws-cost.ts",
    args: foreign(["--mode", "online", ...costArgs("20")]),
  },
  {
    name: "aws-batch",
    script: "aws-cost.ts",
    args: foreign(["--mode", "batch", ...costArgs("20")]),
  },
];

type Figures = Record<string, unknown>;
const num = (figures: Figures | undefined, ...path: string[]): number | null => {
  let value: unknown = figures;
  for (const key of path)
    value = typeof value === "object" && value !== null ? (value as Figures)[key] : undefined;
  return typeof value === "number" && Number.isFinite(value) ? value : null;
};

/**
 * Against another server, how long the cost benchmarks' online calls take at its limit: two layouts (the
 * reference and ours) for each of two models, and the emulated stack online, 3 rounds each. Batch calls do not
 * count against the limit. Printed first, so a long run is a choice.
 */
async function announceCostMinutes(): Promise<void> {
  const online = { cost: 2, "cost-4.1-mini": 2, "aws-online": 1 } as const;
  const runs = Object.entries(online)
    .filter(([name]) => !values.only || values.only.includes(name))
    .reduce((sum, [, n]) => sum + n, 0);
  if (baseUrl === undefined || runs === 0) return;
  const samples = Number(values.samples ?? (quick ? 16 : 200));
  let tpm: number;
  try {
    tpm = await benchTokenLimit(undefined, foreignEndpoint(baseUrl), "gpt-4o-mini", 0);
  } catch (error) {
    process.stderr.write(
      `could not read ${server}'s limit (${(error as Error).message}); no time estimate\n`,
    );
    return;
  }
  const minutes = (runs * samples * 3 * TOKENS_PER_SAMPLE) / tpm;
  process.stderr.write(
    `${server} allows ${tpm.toLocaleString("en")} tokens/min: the cost benchmarks' online calls (${samples} samples) ` +
      `take about ${Math.ceil(minutes)} minute${Math.ceil(minutes) === 1 ? "" : "s"} at that rate${values.samples === undefined ? "; --samples <n> changes it" : ""}\n`,
  );
}
await announceCostMinutes();

const dir = mkdtempSync(join(tmpdir(), "mmevol-bench-"));
const results: Record<string, Figures> = {};
const failures: string[] = [];
const started = Date.now();
try {
  for (const bench of BENCHES) {
    if (values.only && !values.only.includes(bench.name)) continue;
    const out = join(dir, `${bench.name}.json`);
    process.stderr.write(`\n=== ${bench.name}: node test/bench/${bench.script} ${bench.args.join(" ")}\n`);
    const t0 = Date.now();
    const child = spawnSync(
      process.execPath,
      [join(repoRoot, "test/bench", bench.script), ...bench.args, "--json", out],
      {
        cwd: repoRoot,
        stdio: ["ignore", "inherit", "inherit"],
      },
    );
    if (child.status !== 0) {
      failures.push(`${bench.name} exited with ${child.status ?? child.signal}`);
      continue;
    }
    results[bench.name] = {
      ...JSON.parse(readFileSync(out, "utf8")),
      seconds: Math.round((Date.now() - t0) / 1000),
    };
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

interface Row {
  readonly measure: string;
  readonly value: number | null;
  readonly target: string;
  readonly ok: boolean | null;
  readonly note: string;
}
const at = (value: number | null, digits: number) => (value === null ? "n/a" : value.toFixed(digits));
const atMost = (value: number | null, limit: number) => (value === null ? null : value <= limit);
const atLeast = (value: number | null, limit: number) => (value === null ? null : value >= limit);
const r = results;
const rows: Row[] = [
  (() => {
    const v = num(r.overhead, "overheadRatio");
    return {
      measure: "pipeline overhead (total / bare LLM calls, zero latency)",
      value: v,
      target: "<= 1.1",
      ok: atMost(v, 1.1),
      note: `${num(r.overhead, "samples") ?? "?"} samples x ${num(r.overhead, "rounds") ?? "?"} rounds, ${num(r.overhead, "llmCalls") ?? "?"} calls`,
    };
  })(),
  (() => {
    const v = num(r.rate, "useOfLimit");
    return {
      measure: "rate limit used (tokens/min achieved / limit)",
      value: v,
      target: ">= 0.95",
      ok: atLeast(v, 0.95),
      note: `limit ${num(r.rate, "tokensPerMinute") ?? "?"} TPM, ${latency}; evolve max_tokens sized to a median ${num(r.rate, "evolveMedianMaxTokensSent") ?? "?"} (cap ${num(r.rate, "evolveMaxTokensCap") ?? "?"}): ${num(r.rate, "evolveCallsPerLimitGain") ?? "?"}x the evolve calls a flat cap fits (computed)`,
    };
  })(),
  (() => {
    const v = num(r.rate, "share429");
    return {
      measure: "requests answered 429",
      value: v === null ? null : v * 100,
      target: "<= 1 %",
      ok: atMost(v, 0.01),
      note: `${num(r.rate, "rateLimited") ?? "?"} of ${num(r.rate, "requests") ?? "?"}`,
    };
  })(),
  (() => {
    const v = num(r["rate-stack"], "useOfLimit");
    return {
      measure: "rate limit used, emulated stack (shared DynamoDB governor)",
      value: v,
      target: ">= 0.95",
      ok: atLeast(v, 0.95),
      note: `limit ${num(r["rate-stack"], "tokensPerMinute") ?? "?"} TPM, ${latency}`,
    };
  })(),
  (() => {
    const v = num(r["rate-stack"], "share429");
    return {
      measure: "requests answered 429, emulated stack",
      value: v === null ? null : v * 100,
      target: "<= 1 %",
      ok: atMost(v, 0.01),
      note: `${num(r["rate-stack"], "rateLimited") ?? "?"} of ${num(r["rate-stack"], "requests") ?? "?"}`,
    };
  })(),
  (() => {
    const v = num(r.cost, "onlineRatio");
    return {
      measure: "$/kept item, ours online / reference (gpt-4o-mini)",
      value: v,
      target: "<= 0.7",
      ok: atMost(v, 0.7),
      note: `$ per call ${at(num(r.cost, "onlinePerCallRatio"), 3)}; vs the reference with a cold cache between rounds: ${at(num(r.cost, "onlineRatioToCold"), 3)}${baseUrl === undefined ? "" : `; on ${server}`}`,
    };
  })(),
  (() => {
    const v = num(r.cost, "batchRatio");
    return {
      measure: "$/kept item, ours batch / reference (gpt-4o-mini)",
      value: v,
      target: "<= 0.35",
      ok: atMost(v, 0.35),
      note: `$ per call ${at(num(r.cost, "batchPerCallRatio"), 3)}; vs cold reference: ${at(num(r.cost, "batchRatioToCold"), 3)}`,
    };
  })(),
  (() => {
    const v = num(r["cost-4.1-mini"], "onlineRatio");
    return {
      measure: "$/kept item, ours online / reference (gpt-4.1-mini)",
      value: v,
      target: "<= 0.7",
      ok: atMost(v, 0.7),
      note: `$ per call ${at(num(r["cost-4.1-mini"], "onlinePerCallRatio"), 3)}; evolve prompt cached: ${at((num(r["cost-4.1-mini"], "online", "evolveCachedShare") ?? Number.NaN) * 100, 0)} % vs ${at((num(r["cost-4.1-mini"], "reference", "evolveCachedShare") ?? Number.NaN) * 100, 0)} %`,
    };
  })(),
  (() => {
    const v = num(r["cost-4.1-mini"], "batchRatio");
    return {
      measure: "$/kept item, ours batch / reference (gpt-4.1-mini)",
      value: v,
      target: "<= 0.35",
      ok: atMost(v, 0.35),
      note: `$ per call ${at(num(r["cost-4.1-mini"], "batchPerCallRatio"), 3)}`,
    };
  })(),
  (() => {
    const v = num(r.ingest, "ratio");
    return {
      measure: "ingest peak RSS, 200,000 / 2,000 lines",
      value: v,
      target: "<= 1.2",
      ok: atMost(v, 1.2),
      note: `${num(r.ingest, "smallPeakMiB") ?? "?"} MiB vs ${num(r.ingest, "largePeakMiB") ?? "?"} MiB`,
    };
  })(),
  (() => {
    const v = num(r["aws-online"], "ratio");
    return {
      measure: "AWS cost / LLM cost, online (emulated stack)",
      value: v === null ? null : v * 100,
      target: "<= 2 %",
      ok: atMost(v, 0.02),
      note: `$${at(num(r["aws-online"], "awsPer1000", "total"), 4)} AWS vs $${at(num(r["aws-online"], "llmPer1000"), 3)} LLM per 1,000 samples${baseUrl === undefined ? "" : ` (${server})`}`,
    };
  })(),
  (() => {
    const v = num(r["aws-batch"], "ratio");
    return {
      measure: "AWS cost / LLM cost, batch (emulated stack)",
      value: v === null ? null : v * 100,
      target: "<= 2 %",
      ok: atMost(v, 0.02),
      note: `$${at(num(r["aws-batch"], "awsPer1000", "total"), 4)} AWS vs $${at(num(r["aws-batch"], "llmPer1000"), 3)} LLM per 1,000 samples${baseUrl === undefined ? "" : ` (${server})`}`,
    };
  })(),
];

const date = new Date().toISOString().slice(0, 10);
const mark = (ok: boolean | null) => (ok === null ? "not measured" : ok ? "met" : "missed");
/** A Markdown table with padded columns, as the README's formatter (Biome) writes it. */
function markdownTable(header: readonly string[], body: readonly (readonly string[])[]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((cells) => (cells[i] ?? "").length)));
  const line = (cells: readonly string[]) =>
    `| ${widths.map((w, i) => (cells[i] ?? "").padEnd(w)).join(" | ")} |`;
  return [line(header), line(widths.map((w) => "-".repeat(w))), ...body.map(line)];
}
const table = [
  `Measured ${date}${quick ? " (quick sizes)" : ""} with \`npm run bench${baseUrl === undefined ? "" : ` -- --base-url ${baseUrl}`}\`; ratios, since absolute times vary between machines.`,
  "",
  ...markdownTable(
    ["Measure", "Value", "Target", "Result", "Notes"],
    rows.map((row) => [
      row.measure,
      at(row.value, row.measure.includes("429") || row.measure.includes("AWS") ? 2 : 3),
      row.target,
      mark(row.ok),
      row.note,
    ]),
  ),
].join("\n");
process.stdout.write(`\n${table}\n`);
writeFileSync(
  values.json,
  `${JSON.stringify({ date, quick, rows, results, failures, seconds: Math.round((Date.now() - started) / 1000) }, null, 2)}\n`,
);
process.stdout.write(`\nwritten: ${values.json}\n`);
if (values["update-readme"]) {
  const readme = join(repoRoot, "README.md");
  const text = readFileSync(readme, "utf8");
  const begin = "<!-- bench:begin -->";
  const end = "<!-- bench:end -->";
  const from = text.indexOf(begin);
  const to = text.indexOf(end);
  if (from < 0 || to < from) {
    failures.push(`README.md has no ${begin} ... ${end} markers`);
  } else {
    writeFileSync(readme, `${text.slice(0, from + begin.length)}\n${table}\n${text.slice(to)}`);
    process.stdout.write("README.md benchmark table updated\n");
  }
}
if (failures.length > 0) {
  process.stderr.write(`\nbenchmarks that did not finish: ${failures.join("; ")}\n`);
  process.exitCode = 1;
}
