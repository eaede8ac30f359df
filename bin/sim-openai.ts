#!/usr/bin/env node
import { Command, InvalidArgumentError, Option } from "commander";
import type { SimBatchStats } from "../functions/adapters/simulated/batches.ts";
import { type FaultOptions, parseFaultMix } from "../functions/adapters/simulated/faults.ts";
import {
  type SimStats,
  startSimulator,
  TOKEN_CHARGES,
  type TokenCharge,
} from "../functions/adapters/simulated/server.ts";

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("expected a non-negative integer");
  return n;
}

function rate(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0 || n > 1) throw new InvalidArgumentError("expected a number in 0..1");
  return n;
}

function mix(value: string): ReturnType<typeof parseFaultMix> {
  try {
    return parseFaultMix(value);
  } catch (error) {
    throw new InvalidArgumentError(error instanceof Error ? error.message : String(error));
  }
}

/** "1500" or "1000-3000". */
function latency(value: string): number | [number, number] {
  const match = /^(\d+)(?:-(\d+))?$/.exec(value.trim());
  if (match === null) throw new InvalidArgumentError('expected milliseconds, e.g. "0" or "1000-3000"');
  const min = Number(match[1]);
  const max = match[2] === undefined ? null : Number(match[2]);
  if (max === null) return min;
  if (max < min) throw new InvalidArgumentError("the range must be min-max");
  return [min, max];
}

function line(stats: SimStats, previous: SimStats | null, batches: SimBatchStats): string {
  const done = stats.requests - (previous?.requests ?? 0);
  return (
    `[sim-openai] ${new Date().toISOString()} requests=${stats.requests} (+${done}/min) ok=${stats.succeeded} ` +
    `429=${stats.rateLimited} failed=${stats.failed} prompt=${stats.promptTokens} cached=${stats.cachedTokens} ` +
    `completion=${stats.completionTokens}` +
    (Object.values(stats.faults).some((n) => n > 0)
      ? ` faults=${Object.entries(stats.faults)
          .filter(([, n]) => n > 0)
          .map(([kind, n]) => `${kind}:${n}`)
          .join(",")}`
      : "") +
    (batches.batchesCreated > 0
      ? ` batches=${batches.batchesCreated} batch_lines=${batches.linesAnswered} ` +
        `batch_failed=${batches.linesFailed} batch_prompt=${batches.promptTokens} ` +
        `batch_cached=${batches.cachedTokens} batch_completion=${batches.completionTokens}`
      : "")
  );
}

const program = new Command()
  .name("sim-openai")
  .description(
    "An OpenAI-compatible chat completions and Batch API simulator: schema-valid answers, real token counts",
  )
  .option("--port <port>", "port to listen on (0 picks one)", positiveInt, 8787)
  .option("--host <host>", "address to bind", "127.0.0.1")
  .option("--latency-ms <ms>", 'latency per request: "0", "1500" or a range "1000-3000"', latency, 0)
  .option("--rpm <n>", "requests per minute before 429s", positiveInt)
  .option("--tpm <n>", "tokens per minute (prompt + max_tokens) before 429s", positiveInt)
  .addOption(
    new Option("--token-charge <what>", "what --tpm counts: the prompt plus max_tokens, or the tokens used")
      .choices(TOKEN_CHARGES)
      .default("max_tokens"),
  )
  .option("--api-key <key>", "require this bearer token")
  .option(
    "--fault-rate <rate>",
    "share of requests that get a fault, 0..1 (retries of a request: rate/4)",
    rate,
  )
  .option(
    "--fault-mix <weights>",
    "fault weights, e.g. rate_limit=2,reset=1 (rate_limit, server_error, unavailable, slow, reset, " +
      "malformed_json, refusal, length, schema_violation, judge_omits_verdict; default all equal)",
    mix,
  )
  .option("--fault-seed <n>", "seed of the fault choice", positiveInt, 0)
  .option("--slow-ms <ms>", "how long a slow answer hangs", positiveInt, 30_000)
  .option("--fault-persistent <share>", "share of faulted requests that fault on every retry too, 0..1", rate)
  .option("--storm-every-ms <ms>", "a 429 storm starts every this many ms", positiveInt)
  .option("--storm-ms <ms>", "how long each 429 storm lasts", positiveInt)
  .option("--batch-complete-after-ms <ms>", "a batch completes this long after it is created", positiveInt, 0)
  .option(
    "--batch-fail-share <share>",
    "share of batch lines answered with a 500 (in the error file), chosen by custom_id, 0..1",
    rate,
  )
  .option("--batch-expire", "batches end expired, every line in the error file")
  .parse();

const opts = program.opts<{
  port: number;
  host: string;
  latencyMs: number | [number, number];
  rpm?: number;
  tpm?: number;
  tokenCharge: TokenCharge;
  apiKey?: string;
  faultRate?: number;
  faultMix?: ReturnType<typeof parseFaultMix>;
  faultSeed: number;
  faultPersistent?: number;
  slowMs: number;
  stormEveryMs?: number;
  stormMs?: number;
  batchCompleteAfterMs: number;
  batchFailShare?: number;
  batchExpire?: boolean;
}>();

if ((opts.stormEveryMs === undefined) !== (opts.stormMs === undefined)) {
  program.error("--storm-every-ms and --storm-ms go together");
}
const faults: FaultOptions | undefined =
  opts.faultRate === undefined && opts.stormEveryMs === undefined
    ? undefined
    : {
        rate: opts.faultRate ?? 0,
        seed: opts.faultSeed,
        slowMs: opts.slowMs,
        ...(opts.faultMix === undefined ? {} : { mix: opts.faultMix }),
        ...(opts.faultPersistent === undefined ? {} : { persistentShare: opts.faultPersistent }),
        ...(opts.stormEveryMs === undefined || opts.stormMs === undefined
          ? {}
          : { storms: { everyMs: opts.stormEveryMs, durationMs: opts.stormMs } }),
      };

const sim = await startSimulator({
  port: opts.port,
  host: opts.host,
  latencyMs: opts.latencyMs,
  ...(opts.rpm === undefined ? {} : { requestsPerMinute: opts.rpm }),
  ...(opts.tpm === undefined ? {} : { tokensPerMinute: opts.tpm }),
  tokenCharge: opts.tokenCharge,
  ...(opts.apiKey === undefined ? {} : { apiKey: opts.apiKey }),
  ...(faults === undefined ? {} : { faults }),
  batch: {
    completeAfterMs: opts.batchCompleteAfterMs,
    ...(opts.batchFailShare === undefined ? {} : { failShare: opts.batchFailShare }),
    expire: opts.batchExpire === true,
  },
});
process.stderr.write(`[sim-openai] listening on ${sim.url}\n`);

let previous: SimStats | null = null;
const timer = setInterval(() => {
  const stats = sim.stats();
  process.stderr.write(`${line(stats, previous, sim.batches.stats())}\n`);
  previous = stats;
}, 60_000);

const stop = () => {
  clearInterval(timer);
  sim.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.once("SIGINT", stop);
process.once("SIGTERM", stop);
