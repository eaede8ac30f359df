// `npm run bench`: every benchmark once, each in its own process, then one table of ratios (absolute times
// vary between machines) with the targets, written as JSON too. `--update-readme` puts the table, with the
// date, between the README's benchmark markers. `--quick` uses smaller sizes (a smoke run, not the figures).
// `--base-url <url>` measures the rate-limit and cost figures (dollars per kept item, and AWS next to the LLM
// on the emulated stack, batch mode through the server's files and batches) against another OpenAI-compatible
// server (key in OPENAI_API_KEY) instead of the simulator; the other benchmarks are about this code and stay
// as they are. Its batches take as long as it takes to run them. `--samples <n>` sets the cost benchmarks'
// samples (default 200): their online calls take about n x 120,000 tokens in all, which is two hours at
// 200,000 tokens/min, so against a server the run first prints that estimate at the server's limit. `--tpm <n>`
// gives that server's tokens-per-minute limit to every benchmark that sends it requests, for a server whose
// x-ratelimit-* headers do not say it.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
    /** The server's tokens-per-minute limit, when its headers do not say it. */
    tpm: { type: "string" },
  },
});
const quick = values.quick === true;
const baseUrl = values["base-url"];
/** Where the rate and cost benchmarks send their requests, and the limit given for it. */
const foreign = (args: readonly string[]): string[] => [
  ...args,
  ...(baseUrl === undefined ? [] : ["--base-url", baseUrl]),
  ...(values.tpm === undefined ? [] : ["--tpm", values.tpm]),
];
const server = baseUrl === undefined ? "simulator" : new URL(baseUrl).host;
if (values.tpm !== undefined && baseUrl === undefined) {
  process.stderr.write("--tpm gives another server's limit: use it with --base-url\n");
  process.exit(2);
}
for (const option of ["samples", "tpm"] as const) {
  const given = values[option];
  if (given !== undefined && !/^[1-9]\d*$/.test(given)) {
    process.stderr.write(`--${option} must be a positive integer, got ${given}\n`);
    process.exit(2);
  }
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
/** The figure at `path` in a benchmark's JSON. */
const pick = (figures: Figures | undefined, path: readonly string[]): unknown =>
  path.reduce<unknown>(
    (value, key) => (typeof value === "object" && value !== null ? (value as Figures)[key] : undefined),
    figures,
  );
const num = (figures: Figures | undefined, ...path: string[]): number | null => {
  const value = pick(figures, path);
  return typeof value === "number" && Number.isFinite(value) ? value : null;
};
const str = (figures: Figures | undefined, ...path: string[]): string | null => {
  const value = pick(figures, path);
  return typeof value === "string" ? value : null;
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
    tpm = await benchTokenLimit(values.tpm, foreignEndpoint(baseUrl), "gpt-4o-mini", 0);
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
/** The benchmarks run (all, or those `--only` names). */
const ran = new Set<string>();
const failures: string[] = [];
const started = Date.now();
try {
  for (const bench of BENCHES) {
    if (values.only && !values.only.includes(bench.name)) continue;
    ran.add(bench.name);
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
    if (child.status !== 0) failures.push(`${bench.name} exited with ${child.status ?? child.signal}`);
    // A benchmark that failed may still have written its figures (a layout that did not finish, a run that
    // stalled): they are shown, with why; its rows say what is missing.
    if (!existsSync(out)) continue;
    results[bench.name] = {
      ...JSON.parse(readFileSync(out, "utf8")),
      seconds: Math.round((Date.now() - t0) / 1000),
      ...(child.status === 0 ? {} : { exitStatus: child.status ?? child.signal }),
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
const percent = (share: number | null) => (share === null ? "n/a" : `${(share * 100).toFixed(0)} %`);
/** Why a row has no value, when its benchmark said: a steady window too short, a layout or a run that failed. */
const missing = (name: string, value: number | null, ...reasons: (string | null)[]): string => {
  const figures = r[name];
  if (value !== null) return "";
  const window = num(figures, "steadyWindowSeconds");
  const said = reasons.find((reason) => reason !== null);
  if (said !== undefined && said !== null) return `; not measured: ${said}`;
  if (figures !== undefined && num(figures, "useOfLimit") === null && window !== null)
    return `; not measured: a steady window of ${window} s is too short for a figure (run more samples)`;
  return figures === undefined && ran.has(name) ? "; not measured: the benchmark wrote no figures" : "";
};
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
      note: `limit ${num(r.rate, "tokensPerMinute") ?? "?"} TPM, ${latency}${missing("rate", v)}; evolve max_tokens sized to a median ${num(r.rate, "evolveMedianMaxTokensSent") ?? "?"} (cap ${num(r.rate, "evolveMaxTokensCap") ?? "?"}): ${num(r.rate, "evolveCallsPerLimitGain") ?? "?"}x the evolve calls a flat cap fits (computed)`,
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
      note: `limit ${num(r["rate-stack"], "tokensPerMinute") ?? "?"} TPM, ${latency}${missing("rate-stack", v)}`,
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
      note: `$ per call ${at(num(r.cost, "onlinePerCallRatio"), 3)}; vs the reference with a cold cache between rounds: ${at(num(r.cost, "onlineRatioToCold"), 3)}${baseUrl === undefined ? "" : `; on ${server}`}${missing("cost", v, str(r.cost, "failed", "reference"), str(r.cost, "failed", "online"))}`,
    };
  })(),
  (() => {
    const v = num(r.cost, "batchRatio");
    return {
      measure: "$/kept item, ours batch / reference (gpt-4o-mini)",
      value: v,
      target: "<= 0.35",
      ok: atMost(v, 0.35),
      note: `$ per call ${at(num(r.cost, "batchPerCallRatio"), 3)}; vs cold reference: ${at(num(r.cost, "batchRatioToCold"), 3)}${missing("cost", v, str(r.cost, "failed", "reference"), str(r.cost, "failed", "batch"))}`,
    };
  })(),
  (() => {
    const v = num(r["cost-4.1-mini"], "onlineRatio");
    return {
      measure: "$/kept item, ours online / reference (gpt-4.1-mini)",
      value: v,
      target: "<= 0.7",
      ok: atMost(v, 0.7),
      note: `$ per call ${at(num(r["cost-4.1-mini"], "onlinePerCallRatio"), 3)}; evolve prompt cached: ${percent(num(r["cost-4.1-mini"], "online", "evolveCachedShare"))} vs ${percent(num(r["cost-4.1-mini"], "reference", "evolveCachedShare"))}${missing("cost-4.1-mini", v, str(r["cost-4.1-mini"], "failed", "reference"), str(r["cost-4.1-mini"], "failed", "online"))}`,
    };
  })(),
  (() => {
    const v = num(r["cost-4.1-mini"], "batchRatio");
    return {
      measure: "$/kept item, ours batch / reference (gpt-4.1-mini)",
      value: v,
      target: "<= 0.35",
      ok: atMost(v, 0.35),
      note: `$ per call ${at(num(r["cost-4.1-mini"], "batchPerCallRatio"), 3)}${missing("cost-4.1-mini", v, str(r["cost-4.1-mini"], "failed", "reference"), str(r["cost-4.1-mini"], "failed", "batch"))}`,
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
      note: `$${at(num(r["aws-online"], "awsPer1000", "total"), 4)} AWS vs $${at(num(r["aws-online"], "llmPer1000"), 3)} LLM per 1,000 samples${baseUrl === undefined ? "" : ` (${server})`}${missing("aws-online", v, str(r["aws-online"], "incomplete"))}`,
    };
  })(),
  (() => {
    const v = num(r["aws-batch"], "ratio");
    return {
      measure: "AWS cost / LLM cost, batch (emulated stack)",
      value: v === null ? null : v * 100,
      target: "<= 2 %",
      ok: atMost(v, 0.02),
      note: `$${at(num(r["aws-batch"], "awsPer1000", "total"), 4)} AWS vs $${at(num(r["aws-batch"], "llmPer1000"), 3)} LLM per 1,000 samples${baseUrl === undefined ? "" : ` (${server})`}${missing("aws-batch", v, str(r["aws-batch"], "incomplete"))}`,
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
