#!/usr/bin/env node
// `npm run emulate`: the synthesized stack on an AWS emulator (moto) with its functions run in-process, so
// dropping a shard into the emulated bucket produces what the deployed stack would.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { basename, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { HeadObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { Command } from "commander";
import { startSimulator } from "../functions/adapters/simulated/server.ts";
import { startEmulatedStack } from "../functions/runtime/emulated-stack.ts";
import { ENV } from "../functions/runtime/env.ts";
import { positiveInt } from "./commands/arguments.ts";

const root = fileURLToPath(new URL("..", import.meta.url));

const program = new Command()
  .name("emulate")
  .description(
    "Run the mmevol stack on a local AWS emulator (moto): S3, SQS, DynamoDB, with the bundled functions",
  )
  .option(
    "--endpoint <url>",
    "emulator endpoint (default $AWS_ENDPOINT_URL, else start moto on 127.0.0.1:4566)",
  )
  .option("--cdk-out <dir>", "cloud assembly directory", "cdk.out")
  .option("--no-synth", "reuse the existing cloud assembly")
  .option("--drop <shard>", "after start, upload this shard (and the images beside it) to seeds/<run>/")
  .option("--run <name>", "run name for --drop", "demo")
  .option("--exit-when-done", "with --drop: stop once the shard's report is written")
  .option(
    "--batch",
    "with --drop: a run.json with mode batch goes along (Batch API; the batcher runs every 5 s)",
  )
  .option("--config <run.json>", "with --drop: upload this file as the run's run.json")
  .option(
    "--tpm <n>",
    "the provider's tokens-per-minute limit: the shared rate governor's budget (as `cdk deploy -c tokensPerMinute=`)",
    positiveInt,
  )
  .option("--rpm <n>", "the provider's requests-per-minute limit (as `-c requestsPerMinute=`)", positiveInt)
  .option(
    "--schedule-seconds <n>",
    "how often the scheduled functions (sweeper, batcher) run (default 30, 5 with --batch)",
    positiveInt,
  )
  .parse();
const opts = program.opts<{
  endpoint?: string;
  cdkOut: string;
  synth: boolean;
  drop?: string;
  run: string;
  exitWhenDone?: boolean;
  batch?: boolean;
  config?: string;
  tpm?: number;
  rpm?: number;
  scheduleSeconds?: number;
}>();
// Checked before the emulator and the stack start (a minute of work), not after them.
const usage = (message: string): never => {
  process.stderr.write(`emulate: ${message}\n`);
  process.exit(2);
};
if (opts.drop !== undefined && !(existsSync(opts.drop) && statSync(opts.drop).isFile()))
  usage(`--drop: no such shard file: ${opts.drop}`);
if (opts.config !== undefined && !(existsSync(opts.config) && statSync(opts.config).isFile()))
  usage(`--config: no such file: ${opts.config}`);
if (opts.batch && opts.config !== undefined)
  usage(
    `give --batch or "mode": "batch" in --config ${opts.config}, not both (--config is uploaded as it is)`,
  );
const { tpm, rpm } = opts;
const scheduleSeconds = opts.scheduleSeconds ?? (opts.batch ? 5 : 30);

const cleanups: (() => Promise<void> | void)[] = [];
async function shutdown(code: number): Promise<never> {
  for (const cleanup of cleanups.reverse()) await cleanup();
  process.exit(code);
}
process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));

async function reachable(url: string): Promise<boolean> {
  try {
    await fetch(`${url}/moto-api/`, { signal: AbortSignal.timeout(1_000) });
    return true;
  } catch {
    return false;
  }
}

let endpoint = opts.endpoint ?? process.env.AWS_ENDPOINT_URL;
if (!endpoint) {
  endpoint = "http://127.0.0.1:4566";
  if (!(await reachable(endpoint))) {
    const started = spawnSync("bash", [join(root, "scripts/start-moto.sh"), "4566"], { encoding: "utf8" });
    if (started.status !== 0) {
      process.stderr.write(
        `emulate: could not start moto (install it with: sudo bash scripts/install-emulator.sh)\n${started.stderr}`,
      );
      process.exit(1);
    }
    const pid = Number(started.stdout.trim());
    cleanups.push(() => {
      process.kill(pid, "SIGTERM");
    });
    process.stderr.write(`emulate: started moto at ${endpoint} (pid ${pid})\n`);
  } else {
    process.stderr.write(`emulate: using the emulator already listening at ${endpoint}\n`);
  }
}
process.env.AWS_ENDPOINT_URL = endpoint;
process.env.AWS_ACCESS_KEY_ID ??= "test";
process.env.AWS_SECRET_ACCESS_KEY ??= "test";
process.env.AWS_REGION ??= "us-east-1";

if (opts.synth) {
  process.stderr.write("emulate: synthesizing the stack (cdk synth, local esbuild bundling)...\n");
  const synth = await new Promise<number | null>((resolve) =>
    spawn("npx", ["cdk", "synth", "-q", "--no-notices", "-o", opts.cdkOut], {
      cwd: root,
      stdio: "inherit",
      env: { ...process.env, CDK_DISABLE_CLI_TELEMETRY: "true" },
    }).on("exit", resolve),
  );
  if (synth !== 0) {
    process.stderr.write("emulate: cdk synth failed\n");
    await shutdown(1);
  }
}

const functionEnv: Record<string, string> = {};
if (tpm !== undefined) functionEnv[ENV.tokensPerMinute] = String(tpm);
if (rpm !== undefined) functionEnv[ENV.requestsPerMinute] = String(rpm);
let apiKey = process.env.OPENAI_API_KEY ?? "";
const baseUrl = process.env.OPENAI_BASE_URL;
if (baseUrl) functionEnv[ENV.openaiBaseUrl] = baseUrl;
if (!apiKey && !baseUrl) {
  const sim = await startSimulator({});
  cleanups.push(() => sim.close());
  functionEnv[ENV.openaiBaseUrl] = sim.url;
  apiKey = "sk-emulated";
  process.stderr.write(
    `\n*** DRY RUN: no OPENAI_API_KEY or OPENAI_BASE_URL; the functions call the OpenAI simulator at ${sim.url}\n\n`,
  );
}

const stack = await startEmulatedStack({
  cdkOut: join(root, opts.cdkOut),
  endpoint,
  apiKey: apiKey || "sk-none",
  functionEnv,
  scheduleEverySeconds: scheduleSeconds,
  onLine: (line) => process.stdout.write(`${line}\n`),
});
cleanups.push(() => stack.stop());
process.stderr.write(
  [
    `emulate: stack up on ${endpoint}`,
    `  bucket ${stack.bucket}, table ${stack.table}`,
    `  functions: ${stack.functions.join(", ")}`,
    `  outputs: ${stack.outputsFile} (mmevol status --outputs ${stack.outputsFile})`,
    "  drop a shard: AWS_ENDPOINT_URL=... aws s3 cp seeds/ s3://<bucket>/seeds/<run>/ --recursive",
    "  results: evolved/<run>/, reports/<run>/, errors/<run>/ in the bucket. Ctrl-C stops.",
    "",
  ].join("\n"),
);

if (opts.drop) {
  const s3 = new S3Client({ forcePathStyle: true });
  const dir = join(opts.drop, "..");
  const files = (function walk(d: string): string[] {
    return readdirSync(d).flatMap((name) => {
      const path = join(d, name);
      // Not a dependency tree or a hidden folder (a shard dropped from a project's root).
      if (statSync(path).isDirectory())
        return name === "node_modules" || name.startsWith(".") ? [] : walk(path);
      return [path];
    });
  })(dir).filter((path) => /\.(png|jpe?g|webp|gif)$/i.test(path));
  for (const file of files) {
    await s3.send(
      new PutObjectCommand({
        Bucket: stack.bucket,
        Key: `seeds/${opts.run}/${relative(dir, file)}`,
        Body: readFileSync(file),
      }),
    );
  }
  const runJson = opts.config
    ? readFileSync(opts.config, "utf8")
    : opts.batch
      ? JSON.stringify({ mode: "batch" })
      : null;
  if (runJson !== null) {
    await s3.send(
      new PutObjectCommand({ Bucket: stack.bucket, Key: `seeds/${opts.run}/run.json`, Body: runJson }),
    );
  }
  const shardKey = `seeds/${opts.run}/${basename(opts.drop)}`;
  await s3.send(new PutObjectCommand({ Bucket: stack.bucket, Key: shardKey, Body: readFileSync(opts.drop) }));
  process.stderr.write(`emulate: uploaded ${files.length} images and ${shardKey}\n`);
  if (opts.exitWhenDone) {
    const report = `reports/${opts.run}/${basename(opts.drop).replace(/\.jsonl?$/, "")}.json`;
    for (;;) {
      try {
        await s3.send(new HeadObjectCommand({ Bucket: stack.bucket, Key: report }));
        process.stderr.write(`emulate: report written: s3://${stack.bucket}/${report}\n`);
        await shutdown(0);
      } catch {
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }
}
