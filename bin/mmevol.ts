#!/usr/bin/env node
import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { SingleBar } from "cli-progress";
import { Command, InvalidArgumentError, Option } from "commander";
import { SqliteStateStore } from "../functions/adapters/local/sqlite-state-store.ts";
import { OpenAiBatchCodec } from "../functions/adapters/openai/batch-codec.ts";
import { OpenAiBatchApi } from "../functions/adapters/openai/openai-batch-api.ts";
import { OpenAiLlm } from "../functions/adapters/openai/openai-llm.ts";
import { SimulatedBatches } from "../functions/adapters/simulated/batches.ts";
import { SimulatedLlm } from "../functions/adapters/simulated/simulated-llm.ts";
import { judgeModelOf, RunConfig, type RunConfigInput } from "../functions/evolution/config.ts";
import { isPriced } from "../functions/evolution/pricing.ts";
import { InvalidInputError, MmevolError } from "../functions/ports/errors.ts";
import type { Llm } from "../functions/ports/llm.ts";
import type { Logger } from "../functions/ports/runtime.ts";
import {
  duplicateShardNames,
  type ErrorTally,
  type Progress,
  RUN_NAME,
  runLocal,
  runNameRefusal,
} from "../functions/runtime/local.ts";
import { RunDirectoryBusyError } from "../functions/runtime/run-lock.ts";
import { concurrencyArg, positiveInt, timeoutSeconds } from "./commands/arguments.ts";
import { registerStatusCommands } from "./commands/register.ts";

const anyInt = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError("expected a whole number");
  return n;
};
const weights = (value: string) => {
  const parts = value.split(",").map(Number);
  if (parts.length !== 3 || parts.some((p) => !Number.isFinite(p) || p < 0)) {
    throw new InvalidArgumentError("expected three non-negative numbers: perception,reasoning,interaction");
  }
  const [perception = 0, reasoning = 0, interaction = 0] = parts;
  return { perception, reasoning, interaction };
};

interface RunFlags {
  out: string;
  run?: string;
  images?: string;
  concurrency: number | "auto";
  rounds?: number;
  model?: string;
  judgeModel?: string;
  seed?: number;
  weights?: { perception: number; reasoning: number; interaction: number };
  detail?: "low" | "high" | "auto";
  config?: string;
  dryRun?: boolean;
  baseUrl?: string;
  timeout: number;
  tpm?: number;
  rpm?: number;
  batch?: boolean;
  retryFailed?: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

function fail(message: string): never {
  process.stderr.write(`mmevol: ${message}\n`);
  process.exit(2);
}

function loadConfigFile(path: string): Record<string, unknown> {
  if (!existsSync(path)) fail(`config file not found: ${path}`);
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    fail(`${path}: not valid JSON: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value))
    fail(`${path}: expected a JSON object`);
  return { ...value };
}

function stderrLogger(verbose: boolean, quiet: boolean): Logger {
  const write = (level: string, message: string, fields?: Readonly<Record<string, unknown>>) =>
    process.stderr.write(`${level} ${message}${fields ? ` ${JSON.stringify(fields)}` : ""}\n`);
  return {
    debug: (m, f) => verbose && write("debug", m, f),
    // Batch progress is news a user waits for (minutes to hours): shown unless -q asks for no progress lines.
    info: (m, f) => (verbose || (!quiet && m.startsWith("batch "))) && write("info", m, f),
    warn: (m, f) => verbose && write("warn", m, f),
    error: (m, f) => write("error", m, f),
  };
}

const money = (usd: number) => `$${usd < 1 ? usd.toFixed(4) : usd.toFixed(2)}`;
const compact = (n: number) =>
  n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : String(n);
const duration = (ms: number) => {
  const s = Math.round(ms / 1000);
  return s >= 3600
    ? `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`
    : s >= 60
      ? `${Math.floor(s / 60)}m${s % 60}s`
      : `${s}s`;
};

function progressPrinter(quiet: boolean) {
  const done = (p: Progress) => p.counts.DONE + p.counts.PASSED_THROUGH + p.counts.FAILED + p.counts.REJECTED;
  // From the samples that went through the rounds: text-only and rejected lines end at once, and counted in
  // the rate they made the first estimate seconds for a run of minutes.
  const eta = (p: Progress) => {
    const worked = p.counts.DONE + p.counts.FAILED;
    return worked === 0 || p.total === 0 ? "?" : duration((p.elapsedMs / worked) * (p.total - done(p)));
  };
  if (quiet) return { update: (_: Progress) => {}, stop: () => {} };
  if (process.stderr.isTTY) {
    const bar = new SingleBar(
      {
        format:
          "{bar} {value}/{total} samples | failed {failed} | round {round} | {tokens} tokens | {cost} | ETA {eta}",
        hideCursor: true,
        stream: process.stderr,
        barsize: 24,
      },
      { barCompleteChar: "#", barIncompleteChar: "-", format: "" },
    );
    let started = false;
    return {
      update: (p: Progress) => {
        const payload = {
          failed: p.counts.FAILED,
          round: p.round,
          tokens: compact(p.llm.promptTokens + p.llm.completionTokens),
          cost: money(p.llm.costUsd),
          eta: eta(p),
        };
        if (!started) {
          bar.start(Math.max(p.total, 1), done(p), payload);
          started = true;
        }
        bar.setTotal(Math.max(p.total, 1));
        bar.update(done(p), payload);
      },
      stop: () => bar.stop(),
    };
  }
  let last = 0;
  let lastLine = "";
  return {
    update: (p: Progress) => {
      const now = Date.now();
      if (now - last < 5_000 && done(p) < p.total) return;
      // The round samples are in: none before the first evolve and after the last judge.
      const round = p.round > 0 ? `, round ${p.round}` : "";
      const line = `progress ${done(p)}/${p.total} samples, failed ${p.counts.FAILED}${round}, ${compact(p.llm.promptTokens + p.llm.completionTokens)} tokens, ${money(p.llm.costUsd)}, eta ${eta(p)}\n`;
      // The last update and the run's end report the same finished count: one line for it.
      if (line === lastLine) return;
      last = now;
      lastLine = line;
      process.stderr.write(line);
    },
    stop: () => {},
  };
}

/** Whether the state of output directory `out` holds run `run` (read only; false when there is no state). */
async function holdsRun(out: string, run: string): Promise<boolean> {
  const path = join(resolve(out), ".mmevol", "state.sqlite");
  if (!existsSync(path)) return false;
  const state = new SqliteStateStore(path);
  try {
    return (await state.listShards(run)).length > 0;
  } finally {
    state.close();
  }
}

async function runCommand(shards: string[], flags: RunFlags): Promise<void> {
  for (const shard of shards) {
    if (!existsSync(shard)) fail(`shard not found: ${shard}`);
    if (!statSync(shard).isFile())
      fail(`shard is not a file: ${shard} (give the .jsonl or .json files in it)`);
  }
  // A wrong image root would make every sample's image unusable: each would pass through unevolved.
  if (flags.images !== undefined && !(existsSync(flags.images) && statSync(flags.images).isDirectory()))
    fail(`image root is not a directory: ${flags.images} (--images)`);
  const fromFile = flags.config ? loadConfigFile(flags.config) : {};
  const apiKey = process.env.OPENAI_API_KEY?.trim() || undefined;
  const baseURL = flags.baseUrl ?? (process.env.OPENAI_BASE_URL?.trim() || undefined);
  const noEndpoint = apiKey === undefined && baseURL === undefined;
  const dryRun = flags.dryRun === true || noEndpoint;
  const input: RunConfigInput = {
    ...fromFile,
    ...(flags.rounds !== undefined ? { rounds: flags.rounds } : {}),
    ...(flags.model !== undefined ? { model: flags.model } : {}),
    ...(flags.judgeModel !== undefined ? { judgeModel: flags.judgeModel } : {}),
    ...(flags.seed !== undefined ? { seed: flags.seed } : {}),
    ...(flags.weights !== undefined ? { weights: flags.weights } : {}),
    ...(flags.detail !== undefined ? { imageDetail: flags.detail } : {}),
    ...(flags.batch === true ? { mode: "batch" as const } : {}),
    dryRun,
  };
  const checked = RunConfig.safeParse(input);
  if (!checked.success) {
    // Say where each bad setting came from: the flag that set it, or the file (a flag overrides the file).
    const given: Record<string, string | undefined> = {
      rounds: flags.rounds === undefined ? undefined : "--rounds",
      model: flags.model === undefined ? undefined : "--model",
      judgeModel: flags.judgeModel === undefined ? undefined : "--judge-model",
      seed: flags.seed === undefined ? undefined : "--seed",
      weights: flags.weights === undefined ? undefined : "--weights",
      imageDetail: flags.detail === undefined ? undefined : "--detail",
    };
    const sourceOf = (key: string): string => {
      const flag = given[key];
      if (flag !== undefined) return ` (${flag})`;
      return flags.config !== undefined && (key in fromFile || key === "") ? ` (in ${flags.config})` : "";
    };
    fail(
      `invalid settings: ${checked.error.issues
        .map((i) => {
          const key = String(i.path[0] ?? "");
          const where = i.code === "unrecognized_keys" ? sourceOf("") : sourceOf(key);
          return `${i.path.join(".") || "(root)"}: ${i.message}${where}`;
        })
        .join("; ")}`,
    );
  }
  const config = checked.data;
  // By default the output directory's name, in the characters a run name may hold.
  // An --out made before held its run under the directory's name as given (any characters): continued as such.
  const safeName = basename(resolve(flags.out)).replace(/[^A-Za-z0-9._-]/g, "_");
  const givenName = basename(flags.out);
  const run =
    flags.run ?? (givenName !== safeName && (await holdsRun(flags.out, givenName)) ? givenName : safeName);
  // Before anything is printed: a --run no new run may take (one this --out already holds is continued).
  if (!RUN_NAME.test(run) && !(await holdsRun(flags.out, run))) fail(runNameRefusal(run));
  const sameName = duplicateShardNames(shards);
  if (sameName !== null) fail(sameName);
  if (dryRun) {
    const why = flags.dryRun ? "--dry-run given" : "no OPENAI_API_KEY or OPENAI_BASE_URL set";
    process.stderr.write(
      `\n*** DRY RUN (${why}): no network; a simulated model answers. Outputs are marked as dry-run data;\n*** the report's tokens and dollars estimate what the real run would cost.\n\n`,
    );
  }
  const llm: Llm = dryRun
    ? new SimulatedLlm()
    : new OpenAiLlm({
        apiKey: apiKey ?? "no-key",
        ...(baseURL ? { baseURL } : {}),
        timeoutMs: flags.timeout * 1000,
        // With a rate limit given, a 429 must reach the governor (to cut the rate), not be retried around it.
        ...(flags.tpm !== undefined || flags.rpm !== undefined ? { maxRetries: 0 } : {}),
      });
  // Always available, so a run.json asking for batch mode works without the flag.
  const batch = {
    api: dryRun
      ? new SimulatedBatches()
      : new OpenAiBatchApi({
          apiKey: apiKey ?? "no-key",
          ...(baseURL ? { baseURL } : {}),
          timeoutMs: flags.timeout * 1000,
        }),
    codec: new OpenAiBatchCodec(apiKey === undefined ? [] : [apiKey]),
  };
  if (flags.quiet !== true)
    process.stderr.write(
      `mmevol: run "${run}", ${shards.length} shard(s), model ${config.model}${baseURL ? ` at ${baseURL}` : ""}, ${config.rounds} round${config.rounds === 1 ? "" : "s"}, ${config.mode === "batch" ? "Batch API" : "online"}, concurrency ${flags.concurrency}, output ${flags.out}\n`,
    );
  for (const model of new Set([config.model, judgeModelOf(config)]))
    if (!isPriced(model, config.prices))
      process.stderr.write(
        `mmevol: no list price for model ${model}: its calls count as $0 in the report; give its prices under "prices" in run.json\n`,
      );

  const controller = new AbortController();
  let interrupts = 0;
  const onSignal = () => {
    interrupts += 1;
    if (interrupts > 1) {
      // The progress line may be half written: end it, so the shell's prompt starts on a line of its own.
      process.stderr.write("\n");
      process.exit(130);
    }
    process.stderr.write(
      "\nmmevol: stopping after the calls in flight (Ctrl-C again to quit now); run the same command to continue\n",
    );
    controller.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const printer = progressPrinter(flags.quiet === true);
  const result = await runLocal({
    shards,
    out: flags.out,
    run,
    ...(flags.images ? { images: flags.images } : {}),
    concurrency: flags.concurrency,
    config: { ...input, dryRun },
    llm,
    batch,
    ...(flags.retryFailed === true ? { retryFailed: true } : {}),
    logger: stderrLogger(flags.verbose === true, flags.quiet === true),
    onProgress: printer.update,
    signal: controller.signal,
    ...(flags.tpm !== undefined || flags.rpm !== undefined
      ? {
          rateLimit: {
            ...(flags.tpm !== undefined ? { tokensPerMinute: flags.tpm } : {}),
            ...(flags.rpm !== undefined ? { requestsPerMinute: flags.rpm } : {}),
          },
        }
      : {}),
  }).catch((error: unknown) => {
    printer.stop();
    if (error instanceof RunDirectoryBusyError || error instanceof InvalidInputError) fail(error.message);
    // A failure the run knows (the provider or the network kept failing): one line, not a stack trace.
    if (error instanceof MmevolError) {
      process.stderr.write(
        `mmevol: ${error.message}\nmmevol: the run stopped; answered calls are stored, run the same command to continue\n`,
      );
      process.exit(1);
    }
    throw error;
  });
  printer.stop();

  if (result.stoppedFor !== null) {
    process.stderr.write(
      `mmevol: stopped: ${result.stoppedFor}\nmmevol: no sample failed for it; answered calls are stored: ${result.stoppedRemedy ?? "run the same command to continue"}\n`,
    );
    process.exit(3);
  }
  if (result.interrupted) {
    process.stderr.write(
      "mmevol: interrupted; answered calls are stored, run the same command to continue\n",
    );
    process.exit(130);
  }
  for (const report of result.reports) {
    const c = report.counts;
    const kept = Object.entries(report.keptByRound)
      .map(([r, k]) => `${r} ${k.ratio === null ? "n/a" : `${(k.ratio * 100).toFixed(0)}%`}`)
      .join(", ");
    process.stdout.write(
      [
        `shard ${report.shard}: ${c.lines} lines = ${c.evolved} evolved + ${c.passedThrough} passed through + ${c.failed} failed + ${c.rejected} rejected${c.addsUp ? "" : " (DOES NOT ADD UP)"}`,
        `  kept by the judge: ${kept || "n/a"}; ${report.trainingRecords} training records`,
        `  ${report.usage.calls} LLM calls, ${compact(report.usage.promptTokens)} prompt tokens (${compact(report.usage.cachedTokens)} cached), ${compact(report.usage.completionTokens)} completion tokens, ${money(report.usage.costUsd)}${report.dryRun ? " estimated (dry run)" : ""}`,
      ].join("\n") + "\n",
    );
  }
  process.stdout.write(
    result.outputs.length === 0
      ? "outputs: none yet (no shard finished)\n"
      : `outputs:\n${result.outputs.map((o) => `  ${o}`).join("\n")}\n`,
  );
  const imageRoot = resolve(flags.images ?? dirname(resolve(shards[0] ?? ".")));
  // A rerun with another image root is another run's settings (refused on this --out): once the images are where
  // this run looks, --retry-failed starts those samples again.
  const imagesHint = ` (this run resolves image paths under ${imageRoot}${flags.images === undefined ? ", the first shard's directory: --images sets another" : ""}; once the images are there, the same command with --retry-failed evolves those samples; other images need a new --out)`;
  // The reasons kept in the errors file may start with what this line says already.
  const firstOf = (t: ErrorTally) =>
    t.first === null
      ? ""
      : `; the first, line ${t.first.line}: ${t.first.reason.replace(`line ${t.first.line}: `, "").replace(/^image unusable: /, "")}`;
  for (const p of result.problems) {
    if (p.rejected.count > 0)
      process.stderr.write(
        `mmevol: shard ${p.shard}: ${p.rejected.count} line(s) rejected as invalid input${firstOf(p.rejected)}\n`,
      );
    if (p.unusableImage.count > 0)
      process.stderr.write(
        `mmevol: shard ${p.shard}: ${p.unusableImage.count} sample(s) passed through unevolved, their image unusable${firstOf(p.unusableImage)}${imagesHint}\n`,
      );
    if (p.failed.count > 0)
      process.stderr.write(
        `mmevol: shard ${p.shard}: ${p.failed.count} sample(s) FAILED and are not in the training data${firstOf(p.failed)}\n`,
      );
    process.stderr.write(
      `mmevol: each is listed with its reason in ${p.errorsFile}${p.failed.count > 0 ? "; fix the cause, then run the same command with --retry-failed to evolve them again (answers already stored are not paid again)" : ""}\n`,
    );
  }
  if (result.problems.some((p) => p.failed.count > 0)) process.exitCode = 4;
  for (const u of result.unfinished) {
    process.stderr.write(
      `mmevol: shard ${u.shard} is not finished (${u.openSamples} sample(s) still open, no report yet); run the same command to continue\n`,
    );
    process.exitCode = 1;
  }
  if (result.deadLetters > 0) {
    process.stderr.write(
      `mmevol: ${result.deadLetters} message(s) gave up after repeated errors; run the same command to retry them\n`,
    );
    process.exitCode = 1;
  }
}

const { version } = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
  version: string;
};

// A reader that went away (`mmevol run ... | head -1`) is no reason to fail a run that finished: later output is
// dropped, and the exit code stays the run's own (an EPIPE used to end it with a stack trace and exit 1).
for (const stream of [process.stdout, process.stderr])
  stream.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code !== "EPIPE") throw error;
  });

const program = new Command()
  .name("mmevol")
  .version(version, "-V, --version", "print the version")
  .description("Evolve multimodal instruction data (LLaVA format) with the MMEvol method")
  .showHelpAfterError("(run with --help for usage)")
  // Bad usage exits 2, as documented (commander's own is 1, which means "some work gave up: rerun"); help and
  // --version exit 0. Set before the commands are added, so each of them inherits it.
  .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : 2));

program
  .command("run")
  .description("evolve seed shards on this machine (resumable: run the same command again to continue)")
  .argument("<shards...>", "seed shards: JSON Lines or one JSON array of LLaVA records")
  .option("-o, --out <dir>", "output directory", "out/mmevol")
  .option("--run <name>", "run name: letters, digits, '.', '_', '-' (default: the output directory's name)")
  .option("--images <dir>", "directory that image paths resolve under (default: the first shard's directory)")
  .option(
    "-c, --concurrency <n|auto>",
    "LLM calls in flight at most; auto: sized from the model's rate limit and its calls' latency (8 until both are known, at most 128)",
    concurrencyArg,
    "auto" as const,
  )
  .option("-r, --rounds <n>", "evolution rounds (default 3)", positiveInt)
  .option("-m, --model <name>", "model for evolving and judging (default gpt-4o-mini)")
  .option("--judge-model <name>", "a different model for the judge")
  .option("--seed <n>", "seed for direction choice and the model (default 3407)", anyInt)
  .option(
    "--weights <p,r,i>",
    "direction weights: perception,reasoning,interaction (default 0.5,0.25,0.25)",
    weights,
  )
  .addOption(
    new Option("--detail <level>", "image detail sent to the model (default low)").choices([
      "low",
      "high",
      "auto",
    ]),
  )
  .option("--config <run.json>", "run settings file (flags override it)")
  .option("--dry-run", "no network: a simulated model answers; the report estimates the real cost")
  .option("--base-url <url>", "OpenAI-compatible endpoint (default $OPENAI_BASE_URL, else OpenAI)")
  .option(
    "--timeout <seconds>",
    "timeout of one LLM call (at most 2147483, about 24 days)",
    timeoutSeconds,
    60,
  )
  .option(
    "--tpm <n>",
    "the model's tokens-per-minute limit: calls are paced to stay under it (default: the server's x-ratelimit-limit-tokens header, when it sends one)",
    positiveInt,
  )
  .option(
    "--rpm <n>",
    "the model's requests-per-minute limit: calls are paced to stay under it (default: the server's x-ratelimit-limit-requests header, when it sends one)",
    positiveInt,
  )
  .option(
    "--batch",
    "send each round through the provider's Batch API: half price, answers within 24 h (polls until done; rerun to resume)",
  )
  .option(
    "--retry-failed",
    "start FAILED samples of this --out again from their seed, once the cause is fixed, and those passed through for an unusable image (stored answers are reused, not paid again)",
  )
  .option("-q, --quiet", "no banner and no progress lines (warnings, errors and the summary still print)")
  .option("-v, --verbose", "log every retry and warning to stderr")
  .addHelpText(
    "after",
    `
Environment: OPENAI_API_KEY (never printed), OPENAI_BASE_URL. With neither set, the run is a dry run.
Exit codes: 0 done; 1 some work gave up after repeated errors, a shard did not finish, or the run stopped on
a failure it names (rerun to retry it); 2 bad usage, another run works on the same --out, or the --out holds
this run made from another file or with other settings; 3 the provider says the account is out of quota or
refuses the key, or the endpoint cannot be reached (top it up, fix the key or the endpoint, rerun to
resume); 4 done, but some samples FAILED (each is in the errors file with its reason; rerun with
--retry-failed once the cause is fixed); 130 interrupted (rerun to resume).
Examples:
  mmevol run examples/seeds/demo.jsonl --out out/demo --dry-run
  OPENAI_BASE_URL=http://127.0.0.1:11434/v1 mmevol run seeds.jsonl --model qwen2.5vl --out out/q`,
  )
  .action(runCommand);

registerStatusCommands(program);

await program.parseAsync(process.argv);
