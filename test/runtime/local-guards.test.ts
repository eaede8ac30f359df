import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { SimulatedBatches } from "../../functions/adapters/simulated/batches.ts";
import { startSimulator } from "../../functions/adapters/simulated/server.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { layout } from "../../functions/pipeline/shard-config.ts";
import { InvalidInputError } from "../../functions/ports/errors.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { runCli } from "../helpers/cli.ts";
import { repoRoot, tempDir } from "../helpers/files.ts";
import { batchApiDown } from "../helpers/llm.ts";

describe("the local runner refuses what it cannot run whole", () => {
  it("two shards with one name (a/train.jsonl, b/train.jsonl): refused, before anything is read", async () => {
    const dir = tempDir();
    try {
      const a = writeBenchShard(join(dir.path, "a"), { samples: 3, name: "train" });
      const b = writeBenchShard(join(dir.path, "b"), { samples: 6, name: "train" });
      const run = runLocal({
        shards: [a, b],
        out: join(dir.path, "out"),
        run: "r",
        concurrency: 4,
        config: { rounds: 1, dryRun: true },
        llm: new SimulatedLlm(),
      });
      await expect(run).rejects.toBeInstanceOf(InvalidInputError);
      await expect(run).rejects.toThrow(`two shards have the name "train": ${a} and ${b}`);
    } finally {
      dir.cleanup();
    }
  });

  it("resumes a shard only from the same file with the same settings: another file, other rounds or a real run over a dry one are refused", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 2, name: "same" });
      const out = join(dir.path, "out");
      const run = (config: { rounds: number; dryRun: boolean }) =>
        runLocal({ shards: [shard], out, run: "r", concurrency: 2, config, llm: new SimulatedLlm() });
      const first = await run({ rounds: 1, dryRun: true });
      expect(first.reports).toHaveLength(1);
      // The same command again: nothing to do, the same outputs.
      expect((await run({ rounds: 1, dryRun: true })).reports).toEqual(first.reports);
      await expect(run({ rounds: 2, dryRun: true })).rejects.toThrow(
        /made with other settings \(rounds 1 -> 2\): use a new --out/,
      );
      await expect(run({ rounds: 1, dryRun: false })).rejects.toThrow(
        /other settings \(dryRun true -> false\)/,
      );
      writeFileSync(shard, `${readFileSync(shard, "utf8").trim().split("\n")[0]}\n`);
      await expect(run({ rounds: 1, dryRun: true })).rejects.toThrow(
        new RegExp(`made from another file \\(${shard.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} changed since`),
      );
      await expect(run({ rounds: 1, dryRun: true })).rejects.toBeInstanceOf(InvalidInputError);
    } finally {
      dir.cleanup();
    }
  });

  it("a run that fails leaves no timer behind to query its closed state", async () => {
    const dir = tempDir();
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown) => uncaught.push(error);
    process.on("uncaughtException", onUncaught);
    try {
      const shard = writeBenchShard(dir.path, { samples: 2, name: "s" });
      let ended = false;
      let progressAfterEnd = 0;
      await expect(
        runLocal({
          shards: [shard],
          out: join(dir.path, "out"),
          run: "r",
          concurrency: 2,
          config: { rounds: 1, dryRun: true, mode: "batch" },
          llm: new SimulatedLlm(),
          // Every upload fails: the batch step gives up after its retries and the run rejects.
          batch: {
            api: batchApiDown(() => new Error("network down"), new SimulatedBatches()),
            codec: new OpenAiBatchCodec(),
          },
          batchMinPollMs: 1,
          batchMaxPollMs: 5,
          progressEveryMs: 10,
          onProgress: () => {
            if (ended) progressAfterEnd += 1;
          },
        }),
      ).rejects.toThrow("network down");
      ended = true;
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(progressAfterEnd).toBe(0);
      expect(uncaught).toEqual([]);
    } finally {
      process.off("uncaughtException", onUncaught);
      dir.cleanup();
    }
  });
});

describe("item ids", () => {
  it("are the sample's own in every round, also in a one-line JSON array", async () => {
    const dir = tempDir();
    try {
      const jsonl = writeBenchShard(dir.path, { samples: 3, name: "seed" });
      const lines = readFileSync(jsonl, "utf8").trim().split("\n");
      const array = join(dir.path, "array.json");
      writeFileSync(array, `[${lines.join(",")}]`);
      const out = join(dir.path, "out");
      await runLocal({
        shards: [array],
        out,
        run: "r",
        concurrency: 2,
        config: { rounds: 2, dryRun: true },
        llm: new SimulatedLlm(),
      });
      const lineage = readFileSync(join(out, layout.lineage("r", "array")), "utf8")
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as { key: string; versions: { items: { id: string }[] }[] });
      expect(lineage).toHaveLength(3);
      for (const sample of lineage) {
        const prefix = `s${Number(sample.key)}-`;
        for (const version of sample.versions)
          for (const item of version.items) expect(item.id.startsWith(prefix)).toBe(true);
      }
    } finally {
      dir.cleanup();
    }
  });
});

describe("training record ids", () => {
  it("stay unique when an input id is another sample's round id (k-r1 next to k): the made one is renamed", async () => {
    const dir = tempDir();
    try {
      const seeds = readFileSync(writeBenchShard(dir.path, { samples: 3, name: "seed" }), "utf8")
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as { id: string; image: string; conversations: unknown });
      // Each evolved sample k is followed by text-only k-r1 and k-r2, which pass through with their own ids;
      // j and j-r1 both evolve, so j-r1 is an input id with no training record of that id.
      const lines: { id: string; image?: string; conversations: unknown }[] = [
        ...seeds.flatMap((seed, i) => [
          { ...seed, id: `k${i}` },
          ...[1, 2].map((round) => ({ id: `k${i}-r${round}`, conversations: seed.conversations })),
        ]),
        { ...seeds[0], id: "j", conversations: seeds[0]?.conversations },
        { ...seeds[1], id: "j-r1", conversations: seeds[1]?.conversations },
      ];
      const shard = join(dir.path, "mixed.jsonl");
      writeFileSync(shard, lines.map((line) => JSON.stringify(line)).join("\n"));
      const out = join(dir.path, "out");
      const result = await runLocal({
        shards: [shard],
        out,
        run: "r",
        concurrency: 2,
        config: { rounds: 2, dryRun: true },
        llm: new SimulatedLlm(),
      });
      const records = readFileSync(join(out, layout.evolved("r", "mixed")), "utf8")
        .trim()
        .split("\n")
        .map((line) => JSON.parse(line) as { id: string; mmevol: { source: string; round: number } });
      expect(records).toHaveLength(result.reports[0]?.trainingRecords ?? -1);
      expect(new Set(records.map((r) => r.id)).size).toBe(records.length);
      const made = records.filter((r) => r.mmevol.round > 0);
      expect(made.length).toBeGreaterThan(0);
      const inputIds = new Set(lines.map((line) => line.id));
      for (const record of made) {
        const id = `${record.mmevol.source}-r${record.mmevol.round}`;
        expect(record.id).toBe(inputIds.has(id) ? `${id}.2` : id);
      }
      expect(made.some((r) => r.mmevol.source === "j" && r.mmevol.round === 1)).toBe(true);
      for (const line of lines.filter((l) => l.image === undefined))
        expect(records.find((r) => r.id === line.id)?.mmevol).toMatchObject({ source: line.id, round: 0 });
    } finally {
      dir.cleanup();
    }
  });
});

describe("mmevol run's usage errors", () => {
  it("exit 2 with a one-line reason (bad options, a directory, shards that share a name); help exits 0", async () => {
    const dir = tempDir();
    try {
      const a = writeBenchShard(join(dir.path, "a"), { samples: 1, name: "train" });
      const b = writeBenchShard(join(dir.path, "b"), { samples: 1, name: "train" });
      const config = join(dir.path, "run.json");
      writeFileSync(config, JSON.stringify({ rounds: 0, model: "gpt-4o-mini", colour: "red" }));
      const escaped = config.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      const cases: [string[], RegExp][] = [
        // A bad setting says where it came from: the file, or the flag that set it.
        [
          ["run", a, "--dry-run", "--config", config],
          new RegExp(
            `rounds: .*>=1 \\(in ${escaped}\\); \\(root\\): Unrecognized key: "colour" \\(in ${escaped}\\)`,
          ),
        ],
        [
          ["run", a, "--dry-run", "--config", config, "--rounds", "2", "--model", ""],
          /model: .* \(--model\)/,
        ],
        [["run", a, "--bogus"], /unknown option '--bogus'/],
        [
          ["run", a, "--dry-run", "--run", "../x", "--out", join(dir.path, "o")],
          /run name "\.\.\/x" is not usable/,
        ],
        [["run", a, "--dry-run", "--run", "", "--out", join(dir.path, "o")], /run name "" is not usable/],
        [["run", a, "-c", "0"], /from 1 to 1000/],
        [["run", a, "--timeout", "2147484"], /at most 2147483 seconds/],
        [["run", dir.path, "--dry-run"], /shard is not a file/],
        [
          ["run", a, "--dry-run", "--images", join(dir.path, "nowhere")],
          /image root is not a directory: .*nowhere/,
        ],
        [["run", a, b, "--dry-run", "--out", join(dir.path, "out")], /two shards have the name "train"/],
        [[], /Usage: mmevol/],
      ];
      for (const [args, reason] of cases) {
        const { code, stderr } = await runCli(args);
        expect({ args, code, reason: reason.test(stderr) }).toEqual({ args, code: 2, reason: true });
        // The reason, not the whole help after it.
        if (args.length > 0) expect(stderr).not.toMatch(/Options:/);
        // Refused before the run starts: no dry-run banner above the reason.
        expect(stderr).not.toContain("DRY RUN");
      }
      expect((await runCli(["run", "--help"])).code).toBe(0);
      const printed = await runCli(["--version"]);
      expect(printed.code).toBe(0);
      expect(printed.stdout.trim()).toBe(
        (JSON.parse(readFileSync(join(repoRoot, "package.json"), "utf8")) as { version: string }).version,
      );
    } finally {
      dir.cleanup();
    }
  }, 60_000);

  it("says so when the model has no price, as its calls then count as $0", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 1, name: "priced" });
      const run = (model: string, ...more: string[]) =>
        runCli([
          "run",
          shard,
          "--dry-run",
          "--model",
          model,
          "--rounds",
          "1",
          "--out",
          join(dir.path, model),
          ...more,
        ]);
      expect((await run("my-azure-deployment")).stderr).toMatch(
        /no list price for model my-azure-deployment: its calls count as \$0 in the report; give its prices under "prices" in run.json/,
      );
      const priced = await run("gpt-4o-mini-2024-07-18");
      expect(priced.stderr).not.toMatch(/no list price/);
      expect(priced.stderr).toMatch(/^mmevol: run "gpt-4o-mini-2024-07-18"/m);
      // -q: no banner, but the warning still shows.
      const quiet = await run("my-other-deployment", "-q");
      expect(quiet.stderr).not.toMatch(/^mmevol: run "/m);
      expect(quiet.stderr).toMatch(/no list price for model my-other-deployment/);
    } finally {
      dir.cleanup();
    }
  }, 60_000);

  it("exit 4 when samples FAILED, naming the first reason and the errors file", async () => {
    const dir = tempDir();
    // Every call is refused for good (a 400 that is not about a field): each sample fails at its first call.
    const server = createServer((request, response) => {
      request.resume();
      request.on("end", () => {
        response.writeHead(400, { "content-type": "application/json" });
        response.end(
          JSON.stringify({
            error: { message: "Invalid image data", type: "invalid_request_error", code: null },
          }),
        );
      });
    });
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    try {
      const shard = writeBenchShard(dir.path, { samples: 3, name: "refused" });
      const out = join(dir.path, "out");
      const { port } = server.address() as AddressInfo;
      const args = ["run", shard, "--rounds", "1", "--out", out, "--base-url", `http://127.0.0.1:${port}/v1`];
      const { code, stderr } = await runCli(args, { OPENAI_API_KEY: "sk-test-not-a-real-key" });
      expect(code).toBe(4);
      expect(stderr).toMatch(
        /shard refused: 3 sample\(s\) FAILED and are not in the training data; the first, line 1: .*Invalid image data/,
      );
      const errorsFile = join(out, layout.errors("out", "refused"));
      expect(stderr).toContain(`listed with its reason in ${errorsFile}`);
      expect(readFileSync(errorsFile, "utf8").trim().split("\n")).toHaveLength(3);
      expect(stderr).not.toContain("sk-test-not-a-real-key");
    } finally {
      server.close();
      dir.cleanup();
    }
  }, 60_000);
});

describe("mmevol run's messages", () => {
  it("an endpoint nothing listens on stops the run with exit 3, no sample failed; the right one finishes it", async () => {
    const dir = tempDir();
    // A port that was free a moment ago: nothing listens there.
    const probe = createServer();
    await new Promise<void>((done) => probe.listen(0, "127.0.0.1", done));
    const { port } = probe.address() as AddressInfo;
    await new Promise<void>((done) => probe.close(() => done()));
    try {
      const shard = writeBenchShard(dir.path, { samples: 2, name: "unreached" });
      const out = join(dir.path, "out");
      const run = (baseUrl: string) =>
        runCli(["run", shard, "--rounds", "1", "--out", out, "--base-url", baseUrl], {
          OPENAI_API_KEY: "sk-test-unreached",
        });
      const first = await run(`http://127.0.0.1:${port}/v1`);
      expect(first.code).toBe(3);
      expect(first.stderr).toMatch(/stopped: cannot reach the LLM endpoint \(ECONNREFUSED\)/);
      expect(first.stderr).toMatch(
        /no sample failed for it; .*check the endpoint \(--base-url or OPENAI_BASE_URL\)/,
      );
      const sim = await startSimulator();
      try {
        const second = await run(sim.url);
        expect(second.code).toBe(0);
        expect(second.stdout).toMatch(
          /shard unreached: 2 lines = \d evolved \+ \d passed through \+ 0 failed \+ 0 rejected/,
        );
        expect(sim.stats().requests).toBeGreaterThan(0);
      } finally {
        await sim.close();
      }
    } finally {
      dir.cleanup();
    }
  }, 120_000);

  it("say how many lines were rejected and images unusable, with the first reason and where images resolve", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 2, name: "partly" });
      const missing = JSON.stringify({
        id: "gone",
        image: "images/missing.png",
        conversations: [
          { from: "human", value: "<image>\nq" },
          { from: "gpt", value: "a" },
        ],
      });
      writeFileSync(shard, `${readFileSync(shard, "utf8")}{"broken\n${missing}\n`);
      const { code, stderr } = await runCli([
        "run",
        shard,
        "--dry-run",
        "--rounds",
        "1",
        "--out",
        join(dir.path, "out"),
      ]);
      expect(code).toBe(0);
      expect(stderr).toContain(
        "mmevol: shard partly: 1 line(s) rejected as invalid input; the first, line 3: invalid JSON",
      );
      expect(stderr).toContain(
        `mmevol: shard partly: 1 sample(s) passed through unevolved, their image unusable; the first, line 4: image not found: ${join(dir.path, "images/missing.png")} (this run resolves image paths under ${dir.path}, the first shard's directory: --images sets another; once the images are there, the same command with --retry-failed evolves those samples; other images need a new --out)`,
      );
      expect(stderr).toContain(
        `each is listed with its reason in ${join(dir.path, "out", layout.errors("out", "partly"))}`,
      );
      const status = await runCli(["status", "--out", join(dir.path, "out")]);
      expect(status.stdout).toContain("  passed through because their image could not be used: 1");
      expect(status.stdout).toContain("with `mmevol run ... --retry-failed`");
      // The image put where it was looked for: --retry-failed evolves that sample too.
      copyFileSync(join(repoRoot, "examples/seeds/images/clock.png"), join(dir.path, "images/missing.png"));
      const args = ["run", shard, "--dry-run", "--rounds", "1", "--out", join(dir.path, "out")];
      const retried = await runCli([...args, "--retry-failed"]);
      expect(retried.code).toBe(0);
      expect(retried.stderr).not.toContain("their image unusable");
      const errors = readFileSync(join(dir.path, "out", layout.errors("out", "partly")), "utf8");
      expect(errors).not.toContain("missing.png");
      expect(errors).toContain("invalid JSON");
      const after = await runCli(["status", "--out", join(dir.path, "out")]);
      expect(after.stdout).not.toContain("their image could not be used");
      expect(after.stdout).not.toContain("--retry-failed");
    } finally {
      dir.cleanup();
    }
  }, 60_000);

  it("a bad --weights is blamed on the flag, not on the --config file it overrides", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 1, name: "w" });
      const config = join(dir.path, "run.json");
      writeFileSync(config, JSON.stringify({ weights: { perception: 1, reasoning: 0, interaction: 0 } }));
      const out = join(dir.path, "out");
      const { code, stderr } = await runCli([
        "run",
        shard,
        "--dry-run",
        "--config",
        config,
        "--weights",
        "0,0,0",
        "--out",
        out,
      ]);
      expect(code).toBe(2);
      expect(stderr).toMatch(/weights: direction weights must not all be zero \(--weights\)/);
      expect(stderr).not.toContain(`(in ${config})`);
    } finally {
      dir.cleanup();
    }
  }, 60_000);

  it("-q prints no batch progress lines (README: 'no banner and no progress lines on stderr')", async () => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(dir.path, { samples: 2, name: "q" });
      const out = join(dir.path, "out");
      const { code, stderr } = await runCli([
        "run",
        shard,
        "--dry-run",
        "--batch",
        "--rounds",
        "1",
        "-q",
        "--out",
        out,
      ]);
      expect(code).toBe(0);
      expect(stderr).not.toMatch(/^info batch (submitted|waiting|applied)/m);
    } finally {
      dir.cleanup();
    }
  }, 60_000);
});
