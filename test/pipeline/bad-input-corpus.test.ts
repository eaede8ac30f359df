/**
 * Runs the bad-input corpus (test/fixtures/bad/cases.json) through the whole local pipeline and checks every
 * line's outcome and reason, then the input size limits. Megabyte inputs (a 5 MB line, a 21 MB image, a
 * decompression bomb) are made here at run time rather than committed.
 */
import { cpSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { crc32, deflateSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { RunConfigInput } from "../../functions/evolution/config.ts";
import { judgeName } from "../../functions/evolution/judge.ts";
import { EVOLVE_SCHEMA } from "../../functions/evolution/prompts.ts";
import type { Llm } from "../../functions/ports/llm.ts";
import type { LogFields, Logger } from "../../functions/ports/runtime.ts";
import { type LocalRunResult, runLocal } from "../../functions/runtime/local.ts";
import { readJson, readJsonl, repoRoot, tempDir } from "../helpers/files.ts";
import { ReportCounts } from "../helpers/report.ts";

const FIXTURES = join(repoRoot, "test/fixtures/bad");
const URL_PLACEHOLDER = "__COUNTING_SERVER__";
const API_KEY = "sk-bad-input-corpus-7f3a9c0d1e2b4f5a";

const Outcome = z.enum(["evolved", "passed_through", "rejected", "failed"]);
type Outcome = z.infer<typeof Outcome>;
const Manifest = z.object({
  description: z.string(),
  cases: z.array(
    z.object({
      name: z.string().min(1),
      shard: z.string().min(1),
      description: z.string().min(1),
      expect: z.array(
        z.object({
          line: z.number().int().positive(),
          outcome: Outcome,
          reasonMatches: z.string().optional(),
        }),
      ),
      notCounted: z.array(z.number().int().positive()).optional(),
    }),
  ),
});
type Case = z.infer<typeof Manifest>["cases"][number];
const manifest = Manifest.parse(JSON.parse(readFileSync(join(FIXTURES, "cases.json"), "utf8")));

const ErrorRecord = z.object({
  kind: z.enum(["rejected", "failed", "passed_through", "refused"]),
  line: z.number().int(),
  reason: z.string(),
});
const LineageRecord = z.looseObject({
  id: z.string().nullable(),
  line: z.number().int(),
  status: z.enum(["DONE", "PASSED_THROUGH", "FAILED"]),
  error: z.string().nullable(),
  rounds: z.array(
    z.looseObject({
      verdicts: z.array(
        z.object({
          id: z.string(),
          parent: z.string().nullable(),
          improved: z.boolean(),
          score: z.number(),
          reason: z.string(),
          by: z.enum(["judge", "rule"]),
        }),
      ),
    }),
  ),
});
const Counts = ReportCounts;
const TrainingRecord = z.looseObject({ id: z.string(), mmevol: z.looseObject({ source: z.string() }) });

const STATUS_OUTCOME: Record<z.infer<typeof LineageRecord>["status"], Outcome> = {
  DONE: "evolved",
  PASSED_THROUGH: "passed_through",
  FAILED: "failed",
};

interface LineResult {
  outcome: Outcome;
  reason: string | null;
  id: string | null;
}

/** What happened to each counted line of a shard, from its errors file and its lineage file. */
function outcomesOf(out: string, run: string, shard: string): Map<number, LineResult> {
  const results = new Map<number, LineResult>();
  const put = (line: number, result: LineResult) => {
    // Every corpus line is a record of its own, so two results for one line would be a pipeline bug.
    expect(results.has(line), `${shard}: line ${line} has two outcomes`).toBe(false);
    results.set(line, result);
  };
  const errors = readJsonl(join(out, `errors/${run}/${shard}.jsonl`)).map((e) => ErrorRecord.parse(e));
  for (const error of errors.filter((e) => e.kind === "rejected")) {
    put(error.line, { outcome: "rejected", reason: error.reason, id: null });
  }
  const lineage = readJsonl(join(out, `evolved/${run}/${shard}.lineage.jsonl`)).map((l) =>
    LineageRecord.parse(l),
  );
  for (const record of lineage) {
    const reported = errors.find((e) => e.line === record.line && e.kind !== "rejected");
    put(record.line, {
      outcome: STATUS_OUTCOME[record.status],
      reason: reported?.reason ?? null,
      id: record.id,
    });
    // The errors file and the lineage agree on the reason of a passed-through or failed sample.
    expect(reported?.reason ?? null).toBe(record.error);
  }
  return results;
}

/** Checks every case of `shard` against the run's outputs, and that the report's counts add up. */
function checkShard(out: string, run: string, shard: string, cases: readonly Case[]): void {
  const name = shard.replace(/\.[^.]+$/, "");
  const results = outcomesOf(out, run, name);
  const expected = cases.flatMap((c) => c.expect.map((e) => ({ ...e, case: c.name })));
  // Every counted line has an expectation, and nothing else was counted (blank lines are not lines).
  expect(
    [...results.keys()].sort((a, b) => a - b),
    shard,
  ).toEqual(expected.map((e) => e.line).sort((a, b) => a - b));
  for (const line of cases.flatMap((c) => c.notCounted ?? [])) expect(results.has(line)).toBe(false);

  for (const e of expected) {
    const got = results.get(e.line);
    // Soft, so one run shows every line that is off rather than only the first.
    expect.soft({ case: e.case, outcome: got?.outcome }, `reason: ${got?.reason}`).toEqual({
      case: e.case,
      outcome: e.outcome,
    });
    if (e.reasonMatches !== undefined) {
      expect
        .soft(got?.reason ?? "", `${e.case} (${shard} line ${e.line})`)
        .toMatch(new RegExp(e.reasonMatches));
    } else if (e.outcome === "passed_through") {
      // A text-only row passes through by design: no error is recorded for it.
      expect.soft(got?.reason ?? null, e.case).toBeNull();
    }
  }

  const report = readJson(join(out, `reports/${run}/${name}.json`));
  const count = (outcome: Outcome) => expected.filter((e) => e.outcome === outcome).length;
  expect(Counts.parse(report.counts), shard).toEqual({
    lines: expected.length,
    evolved: count("evolved"),
    passedThrough: count("passed_through"),
    failed: count("failed"),
    rejected: count("rejected"),
    addsUp: true,
  });

  // Training records come only from evolved and passed-through lines, never from a rejected one.
  const allowed = new Set(
    [...results.values()].filter((r) => r.outcome !== "rejected" && r.id !== null).map((r) => r.id),
  );
  const training = readJsonl(join(out, `evolved/${run}/${name}.jsonl`)).map((r) => TrainingRecord.parse(r));
  for (const record of training) expect(allowed.has(record.mmevol.source), record.id).toBe(true);
  if (count("evolved") + count("passed_through") > 0) expect(training.length).toBeGreaterThan(0);
}

/** A valid PNG whose header declares side x side pixels (1-bit grey, all black): a few KB on disk. */
function bombPng(side: number): Buffer {
  const chunk = (type: string, data: Buffer) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body) >>> 0);
    return Buffer.concat([head, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(side, 0);
  ihdr.writeUInt32BE(side, 4);
  ihdr[8] = 1; // bit depth; colour type, compression, filter and interlace stay 0
  const rows = Buffer.alloc((1 + Math.ceil(side / 8)) * side);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(rows, { level: 9 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

const record = (id: string, image: string | null, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    id,
    ...(image === null ? {} : { image }),
    conversations: [
      { from: "human", value: "<image>\nWhat is on the kitchen counter?" },
      { from: "gpt", value: "A red mug next to a kettle." },
    ],
    ...extra,
  });

/** A record line of exactly `bytes` bytes (ASCII), padded in an unused field. */
function lineOfBytes(id: string, bytes: number): string {
  const empty = record(id, "images/kitchen.png", { padding: "" });
  const line = record(id, "images/kitchen.png", { padding: "x".repeat(bytes - empty.length) });
  expect(Buffer.byteLength(line)).toBe(bytes);
  return line;
}

const MiB = 1024 * 1024;

/** The generated shard of cases.json: a 5 MB line, a 21 MB image and a decompression bomb between good lines. */
function writeGeneratedShard(corpus: string): void {
  writeFileSync(join(corpus, "images/huge.png"), Buffer.alloc(21 * MiB));
  const bomb = bombPng(12_000);
  expect(bomb.length).toBeLessThan(64 * 1024);
  writeFileSync(join(corpus, "images/bomb.png"), bomb);
  const lines = [
    record("gen-1", "images/kitchen.png"),
    lineOfBytes("five-mb", 5 * MiB),
    record("huge-image", "images/huge.png"),
    record("bomb", "images/bomb.png"),
    record("gen-2", "images/bookshelf.png"),
  ];
  writeFileSync(join(corpus, "generated.jsonl"), `${lines.join("\n")}\n`);
}

function run(
  shards: readonly string[],
  out: string,
  images: string,
  config: RunConfigInput,
  llm: Llm = new SimulatedLlm(),
  logger?: Logger,
): Promise<LocalRunResult> {
  return runLocal({
    shards,
    out,
    run: "r",
    images,
    concurrency: 4,
    config,
    llm,
    ...(logger === undefined ? {} : { logger }),
  });
}

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .map((relative) => join(dir, relative))
    .filter((path) => statSync(path).isFile());
}

describe("the bad-input corpus", () => {
  const dir = tempDir("mmevol-bad-corpus-");
  const corpus = join(dir.path, "corpus");
  let server: Server;
  let hits = 0;
  let simulator: Simulator | undefined;

  beforeAll(async () => {
    cpSync(FIXTURES, corpus, { recursive: true });
    server = createServer((_req, res) => {
      hits += 1;
      res.end("not an image");
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const { port } = server.address() as AddressInfo;
    const lines = join(corpus, "lines.jsonl");
    const text = readFileSync(lines, "utf8");
    expect(text).toContain(URL_PLACEHOLDER);
    writeFileSync(lines, text.replaceAll(URL_PLACEHOLDER, `http://127.0.0.1:${port}`));
    writeGeneratedShard(corpus);
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await simulator?.close();
    dir.cleanup();
  });

  it("holds at least 30 distinct cases, each naming a shard that exists", () => {
    const names = manifest.cases.map((c) => c.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names.length).toBeGreaterThanOrEqual(30);
    for (const c of manifest.cases) {
      const exists = c.shard === "generated.jsonl" || readdirSync(FIXTURES).includes(c.shard);
      expect(exists, c.shard).toBe(true);
    }
    // The committed corpus stays small: megabyte inputs are made by the test.
    const total = filesUnder(FIXTURES).reduce((sum, path) => sum + statSync(path).size, 0);
    expect(total).toBeLessThan(200 * 1024);
  });

  it("gives each line its expected outcome and reason, and evolves the good lines", async () => {
    const shards = [...new Set(manifest.cases.map((c) => c.shard))].filter((s) => s !== "injection.jsonl");
    const out = join(dir.path, "out");
    const result = await run(
      shards.map((s) => join(corpus, s)),
      out,
      corpus,
      { rounds: 2, dryRun: true },
    );
    expect(result.deadLetters).toBe(0);
    expect(result.reports).toHaveLength(shards.length);
    for (const shard of shards) {
      checkShard(
        out,
        "r",
        shard,
        manifest.cases.filter((c) => c.shard === shard),
      );
    }
    // URLs given as image paths are refused from the text alone: the local server saw no request.
    expect(hits).toBe(0);
    // An over-long line is kept only as a short preview in the errors file.
    const tooLong = readJsonl(join(out, "errors/r/generated.jsonl")).find((e) => e.line === 2);
    expect(String(tooLong?.raw).length).toBeLessThanOrEqual(2_001);
    // The __proto__ field of a record stayed data and polluted nothing.
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it("keeps prompt injection inside the data: same schemas, same verdict shape, no leak", async () => {
    simulator = await startSimulator({ apiKey: API_KEY });
    const llm = new OpenAiLlm({ apiKey: API_KEY, baseURL: simulator.url, maxRetries: 0 });
    const logs: string[] = [];
    const capture = (message: string, fields?: LogFields) => {
      logs.push(`${message} ${JSON.stringify(fields ?? {})}`);
    };
    const logger: Logger = { debug: capture, info: capture, warn: capture, error: capture };
    const out = join(dir.path, "out-injection");
    const result = await run([join(corpus, "injection.jsonl")], out, corpus, { rounds: 2 }, llm, logger);
    expect(result.deadLetters).toBe(0);
    const cases = manifest.cases.filter((c) => c.shard === "injection.jsonl");
    expect(cases.length).toBeGreaterThanOrEqual(3);
    checkShard(out, "r", "injection.jsonl", cases);

    const Body = z.looseObject({
      messages: z.array(z.looseObject({ role: z.string() })),
      response_format: z.object({
        type: z.literal("json_schema"),
        json_schema: z.object({
          name: z.string(),
          strict: z.boolean(),
          schema: z.record(z.string(), z.unknown()),
        }),
      }),
    });
    const bodies = simulator.lastRequests().map((b) => Body.parse(b));
    const log = simulator.stats().log;
    expect(bodies.length).toBe(log.length);
    expect(log.every((entry) => entry.status === 200)).toBe(true);

    const judged = new Set<string>();
    let asked = 0;
    let judgeCalls = 0;
    let evolveCalls = 0;
    for (const body of bodies) {
      const { name, strict, schema } = body.response_format.json_schema;
      expect(strict).toBe(true);
      expect(body.messages[0]?.role).toBe("system");
      if (name === "judge") {
        judgeCalls += 1;
        const verdicts = z
          .object({
            type: z.literal("object"),
            properties: z.object({
              verdicts: z.object({
                type: z.literal("object"),
                properties: z.record(z.string(), z.unknown()),
                required: z.array(z.string()),
                additionalProperties: z.literal(false),
              }),
            }),
            required: z.tuple([z.literal("verdicts")]),
            additionalProperties: z.literal(false),
          })
          .strict()
          .parse(schema).properties.verdicts;
        // Exactly the candidate names as required keys: ids the pipeline made (without the sample's prefix),
        // never text from the shard.
        expect(Object.keys(verdicts.properties).sort()).toEqual([...verdicts.required].sort());
        for (const name of verdicts.required) {
          expect(name).toMatch(/^r\d+-i\d+$/);
          judged.add(name);
          asked += 1;
        }
      } else {
        evolveCalls += 1;
        expect(name).toMatch(/^evolve_(perception|reasoning|interaction)$/);
        expect(schema).toEqual(EVOLVE_SCHEMA);
      }
    }
    expect(evolveCalls).toBeGreaterThanOrEqual(3);
    expect(judgeCalls).toBeGreaterThanOrEqual(3);

    // The verdicts recorded are for exactly the ids the judge was asked about.
    const lineage = readJsonl(join(out, "evolved/r/injection.lineage.jsonl")).map((l) =>
      LineageRecord.parse(l),
    );
    const recorded = lineage.flatMap((l) =>
      l.rounds.flatMap((r) => r.verdicts.filter((v) => v.by === "judge")),
    );
    // Each is the item's own id (its sample's prefix and the name the judge was asked about), one per name asked.
    for (const v of recorded) expect(v.id).toMatch(/^s\d+-r\d+-i\d+$/);
    expect(new Set(recorded.map((v) => judgeName(v.id)))).toEqual(judged);
    expect(recorded.length).toBeLessThanOrEqual(asked);
    expect(recorded.length).toBeGreaterThanOrEqual(judged.size);

    // The key is sent only as the Authorization header: no output file, state or log line holds it.
    for (const path of filesUnder(out)) {
      expect(readFileSync(path).includes(API_KEY), path).toBe(false);
    }
    expect(logs.some((line) => line.includes(API_KEY))).toBe(false);
    expect(JSON.stringify(simulator.lastRequests()).includes(API_KEY)).toBe(false);
    // Nor do the training records carry the system prompts the models were given.
    const training = readFileSync(join(out, "evolved/r/injection.jsonl"), "utf8");
    for (const body of bodies) {
      const system = z.object({ content: z.string() }).parse(body.messages[0]).content;
      expect(training.includes(system.slice(0, 80))).toBe(false);
    }
  });
});

describe("input size limits", () => {
  const dir = tempDir("mmevol-limits-");
  afterAll(() => dir.cleanup());
  const images = join(dir.path, "images");

  beforeAll(() => {
    cpSync(join(FIXTURES, "images"), images, { recursive: true });
  });

  const shardOf = (name: string, lines: readonly string[]) => {
    const path = join(dir.path, name);
    writeFileSync(path, `${lines.join("\n")}\n`);
    return path;
  };

  it("refuses a shard over maxShardBytes without reading it, and says why", async () => {
    const big = shardOf("big.jsonl", [record("b-1", "images/tiny.png"), record("b-2", "images/tiny.png")]);
    const small = shardOf("small.jsonl", [record("s-1", "images/tiny.png")]);
    const size = statSync(big).size;
    const limit = statSync(small).size + 10;
    expect(size).toBeGreaterThan(limit);
    const out = join(dir.path, "out-shard");
    await run([big, small], out, dir.path, { rounds: 3, dryRun: true, maxShardBytes: limit });

    const report = readJson(join(out, "reports/r/big.json"));
    expect(report.refused).toBe(
      `shard refused: ${size} bytes exceeds the ${limit}-byte shard limit (maxShardBytes); no line was read`,
    );
    expect(Counts.parse(report.counts)).toEqual({
      lines: 0,
      evolved: 0,
      passedThrough: 0,
      failed: 0,
      rejected: 0,
      addsUp: true,
    });
    const errors = readJsonl(join(out, "errors/r/big.jsonl")).map((e) => ErrorRecord.parse(e));
    expect(errors).toEqual([{ kind: "refused", line: 0, reason: report.refused }]);
    expect(readFileSync(join(out, "evolved/r/big.jsonl"), "utf8")).toBe("");
    expect(readFileSync(join(out, "evolved/r/big.lineage.jsonl"), "utf8")).toBe("");
    // Only the shard within the limit reached the model.
    const Usage = z.object({ usage: z.object({ calls: z.number() }) });
    expect(Usage.parse(report).usage.calls).toBe(0);
    const smallReport = readJson(join(out, "reports/r/small.json"));
    expect(Usage.parse(smallReport).usage.calls).toBeGreaterThan(0);
    expect(smallReport.refused).toBeUndefined();
    expect(Counts.parse(smallReport.counts)).toMatchObject({ lines: 1, evolved: 1 });
  });

  it("rejects a line or an array element over maxLineBytes, naming the limit", async () => {
    const lines = shardOf("long.jsonl", [
      record("l-1", "images/tiny.png"),
      lineOfBytes("l-long", 3000),
      record("l-2", "images/tiny.png"),
    ]);
    const array = shardOf("long-array.json", [
      "[",
      `${record("a-1", "images/tiny.png")},`,
      `${lineOfBytes("a-long", 2500)},`,
      record("a-2", "images/tiny.png"),
      "]",
    ]);
    const out = join(dir.path, "out-line");
    await run([lines, array], out, dir.path, { rounds: 3, dryRun: true, maxLineBytes: 1000 });
    checkShard(out, "r", "long.jsonl", [
      {
        name: "line over maxLineBytes",
        shard: "long.jsonl",
        description: "",
        expect: [
          { line: 1, outcome: "evolved" },
          {
            line: 2,
            outcome: "rejected",
            reasonMatches: "^line 2: 3000 bytes exceeds the 1000-byte line limit$",
          },
          { line: 3, outcome: "evolved" },
        ],
      },
    ]);
    checkShard(out, "r", "long-array.json", [
      {
        name: "element over maxLineBytes",
        shard: "long-array.json",
        description: "",
        expect: [
          { line: 2, outcome: "evolved" },
          {
            line: 3,
            outcome: "rejected",
            reasonMatches: "^element 1 \\(line 3\\): 2500 bytes exceeds the 1000-byte element limit$",
          },
          { line: 4, outcome: "evolved" },
        ],
      },
    ]);
  });

  it("passes through a sample whose image is over maxImageBytes or maxImagePixels, naming the limit", async () => {
    const shard = shardOf("images.jsonl", [
      record("i-1", "images/tiny.png"),
      record("i-2", "images/kitchen.png"),
    ]);
    const bytesOut = join(dir.path, "out-bytes");
    await run([shard], bytesOut, dir.path, { rounds: 3, dryRun: true, maxImageBytes: 1000 });
    const kitchenBytes = statSync(join(images, "kitchen.png")).size;
    checkShard(bytesOut, "r", "images.jsonl", [
      {
        name: "image over maxImageBytes",
        shard: "images.jsonl",
        description: "",
        expect: [
          { line: 1, outcome: "evolved" },
          {
            line: 2,
            outcome: "passed_through",
            reasonMatches: `^image unusable: image is ${kitchenBytes} bytes, over the limit of 1000 bytes \\(maxImageBytes\\): \\S*images/kitchen\\.png$`,
          },
        ],
      },
    ]);

    const pixelsOut = join(dir.path, "out-pixels");
    await run([shard], pixelsOut, dir.path, { rounds: 3, dryRun: true, maxImagePixels: 10_000 });
    checkShard(pixelsOut, "r", "images.jsonl", [
      {
        name: "image over maxImagePixels",
        shard: "images.jsonl",
        description: "",
        expect: [
          { line: 1, outcome: "evolved" },
          {
            line: 2,
            outcome: "passed_through",
            reasonMatches:
              "^image unusable: image is 640x480 \\(307200 pixels\\), over the pixel limit of 10000 \\(maxImagePixels\\): \\S*images/kitchen\\.png$",
          },
        ],
      },
    ]);
  });
});
