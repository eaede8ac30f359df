#!/usr/bin/env node
import { Command, InvalidArgumentError } from "commander";
import { type SimStats, startSimulator } from "../functions/adapters/simulated/server.ts";

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("expected a non-negative integer");
  return n;
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

function line(stats: SimStats, previous: SimStats | null): string {
  const done = stats.requests - (previous?.requests ?? 0);
  return (
    `[sim-openai] ${new Date().toISOString()} requests=${stats.requests} (+${done}/min) ok=${stats.succeeded} ` +
    `429=${stats.rateLimited} failed=${stats.failed} prompt=${stats.promptTokens} cached=${stats.cachedTokens} ` +
    `completion=${stats.completionTokens}`
  );
}

const program = new Command()
  .name("sim-openai")
  .description("An OpenAI-compatible chat completions simulator: schema-valid answers, real token counts")
  .option("--port <port>", "port to listen on (0 picks one)", positiveInt, 8787)
  .option("--host <host>", "address to bind", "127.0.0.1")
  .option("--latency-ms <ms>", 'latency per request: "0", "1500" or a range "1000-3000"', latency, 0)
  .option("--rpm <n>", "requests per minute before 429s", positiveInt)
  .option("--tpm <n>", "tokens per minute (prompt + max_tokens) before 429s", positiveInt)
  .option("--api-key <key>", "require this bearer token")
  .parse();

const opts = program.opts<{
  port: number;
  host: string;
  latencyMs: number | [number, number];
  rpm?: number;
  tpm?: number;
  apiKey?: string;
}>();

const sim = await startSimulator({
  port: opts.port,
  host: opts.host,
  latencyMs: opts.latencyMs,
  ...(opts.rpm === undefined ? {} : { requestsPerMinute: opts.rpm }),
  ...(opts.tpm === undefined ? {} : { tokensPerMinute: opts.tpm }),
  ...(opts.apiKey === undefined ? {} : { apiKey: opts.apiKey }),
});
process.stderr.write(`[sim-openai] listening on ${sim.url}\n`);

let previous: SimStats | null = null;
const timer = setInterval(() => {
  const stats = sim.stats();
  process.stderr.write(`${line(stats, previous)}\n`);
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
