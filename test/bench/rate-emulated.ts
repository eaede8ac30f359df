// Rate-limit benchmark on the emulated stack: the synthesized stack on moto, its functions run in-process as
// Lambda would, every evolve and judge container sharing one rate budget through the table (DynamoDB rate
// governor). A metering proxy in front of the simulator (1-3 s latency, a tokens-per-minute limit) notes
// what its limiter charged each call. Prints the share of the limit used over the steady part of the run
// (target >= 0.95) and the share of requests answered 429 (target <= 1%).
// Run: node test/bench/rate-emulated.ts [--samples 120] [--rounds 1] [--tpm 200000] [--json out.json]
// Against another OpenAI-compatible server: --base-url <url> [--model <name>] (key in OPENAI_API_KEY); the
// proxy meters it the same way, and its limit is read from its headers unless --tpm gives it.
import { appendFileSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { S3Client } from "@aws-sdk/client-s3";
import { startSimulator, type TokenCharge } from "../../functions/adapters/simulated/server.ts";
import { startEmulatedStack } from "../../functions/runtime/emulated-stack.ts";
import { ENV } from "../../functions/runtime/env.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { testBucket } from "../helpers/bucket.ts";
import { ensureDynamoLocal } from "../helpers/dynamodb-local.ts";
import {
  awaitFullBudget,
  benchSamples,
  benchTokenLimit,
  exitOnSetupError,
  type ForeignEndpoint,
  foreignEndpoint,
  serverName,
} from "../helpers/endpoint.ts";
import { tempDir } from "../helpers/files.ts";
import { ensureMoto, motoClientConfig } from "../helpers/moto.ts";
import { limiterCharge, MIN_WINDOW_SECONDS, parseTokenCharge, steadyUse } from "../helpers/rate-window.ts";
import { synthOnce } from "../helpers/synth-once.ts";

interface Call {
  readonly at: number;
  readonly status: number;
  /** What the limiter charged: prompt + max_tokens (or prompt + completion, charging usage); 0 unless answered. */
  readonly charged: number;
}

/**
 * An HTTP proxy that forwards everything to the OpenAI base URL `target` (http or https, any path prefix) and
 * notes each chat completion's status and charge. Its URL has the same path as `target`.
 */
async function startMeteringProxy(
  target: string,
  tokenCharge: TokenCharge,
): Promise<{ url: string; calls: Call[]; close: () => void }> {
  const calls: Call[] = [];
  const upstream = new URL(target);
  const send = upstream.protocol === "https:" ? httpsRequest : httpRequest;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const at = performance.now();
      const forward = send(
        {
          protocol: upstream.protocol,
          hostname: upstream.hostname,
          port: upstream.port,
          method: req.method,
          path: req.url,
          headers: { ...req.headers, host: upstream.host },
        },
        (up) => {
          const out: Buffer[] = [];
          up.on("data", (c: Buffer) => out.push(c));
          up.on("end", () => {
            const text = Buffer.concat(out);
            if (req.url?.endsWith("/chat/completions")) {
              let charged = 0;
              if (up.statusCode === 200) {
                try {
                  const sent = JSON.parse(body.toString()) as {
                    max_tokens?: number;
                    max_completion_tokens?: number;
                  };
                  const got = JSON.parse(text.toString()) as {
                    usage?: { prompt_tokens?: number; completion_tokens?: number };
                  };
                  const usage = {
                    promptTokens: got.usage?.prompt_tokens ?? 0,
                    completionTokens: got.usage?.completion_tokens ?? 0,
                  };
                  charged = limiterCharge(
                    tokenCharge,
                    usage,
                    sent.max_tokens ?? sent.max_completion_tokens ?? 0,
                  );
                } catch {
                  charged = 0;
                }
              }
              calls.push({ at, status: up.statusCode ?? 0, charged });
            }
            res.writeHead(up.statusCode ?? 502, up.headers);
            res.end(text);
          });
        },
      );
      forward.on("error", () => {
        res.writeHead(502);
        res.end();
      });
      forward.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  const path = upstream.pathname.replace(/\/+$/, "");
  return { url: `http://127.0.0.1:${port}${path}`, calls, close: () => server.close() };
}

export interface RateFigures {
  readonly date: string;
  readonly runtime: "emulated-stack";
  /** The simulator, or the host of the server measured (`--base-url`). */
  readonly server: string;
  readonly model: string;
  readonly samples: number;
  readonly rounds: number;
  readonly tokensPerMinute: number;
  readonly requests: number;
  readonly rateLimited: number;
  /** When each 429 arrived, in seconds after the shard was put: a first-burst 429 and a steady one differ. */
  readonly rateLimitedAtSeconds: readonly number[];
  readonly share429: number;
  readonly steadyWindowSeconds: number;
  readonly steadyTokensPerMinute: number;
  /** Null when the steady window was under MIN_WINDOW_SECONDS: too short a run for a figure. */
  readonly useOfLimit: number | null;
  readonly totalSeconds: number;
  /** The functions' warnings and errors, by message. */
  readonly warnings: Record<string, number>;
}

function summarize(lines: readonly string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const line of lines) {
    const message = /"message":"([^"]*)"/.exec(line)?.[1] ?? "unparsed";
    counts[message] = (counts[message] ?? 0) + 1;
  }
  return counts;
}

export async function measureEmulatedRate(
  options: {
    samples?: number;
    rounds?: number;
    tpm?: number;
    /** Another OpenAI-compatible server instead of the simulator; `tpm` is then its limit. */
    endpoint?: ForeignEndpoint | null;
    model?: string;
    /** What the simulator's limiter charges (see SimulatorOptions.tokenCharge); max_tokens by default. */
    tokenCharge?: TokenCharge;
  } = {},
): Promise<RateFigures> {
  const samples = options.samples ?? 120;
  const rounds = options.rounds ?? 1;
  const tpm = options.tpm ?? 200_000;
  const server = options.endpoint ?? null;
  const model = options.model ?? "gpt-4o-mini";
  const { endpoint } = await ensureMoto();
  // The shared governor's conditional writes must be atomic under concurrency, which moto's are not.
  const { endpoint: dynamodbEndpoint } = await ensureDynamoLocal();
  const cdkOut = await synthOnce();
  const tokenCharge = options.tokenCharge ?? "max_tokens";
  const sim =
    server === null
      ? await startSimulator({ latencyMs: [1000, 3000], tokensPerMinute: tpm, tokenCharge })
      : null;
  const proxy = await startMeteringProxy(server?.baseURL ?? sim?.url ?? "", tokenCharge);
  const dir = tempDir("mmevol-rate-emulated-");
  const warnings: string[] = [];
  /** Every line the functions print, for a closer look (RATE_LINES=<file>). */
  const linesFile = process.env.RATE_LINES;
  const stack = await startEmulatedStack({
    cdkOut,
    endpoint,
    dynamodbEndpoint,
    apiKey: server?.apiKey ?? "sk-bench-rate",
    // As deployed with `-c tokensPerMinute=<limit>`: the shared governor's budget.
    functionEnv: { [ENV.openaiBaseUrl]: proxy.url, [ENV.tokensPerMinute]: String(tpm) },
    onLine: (line) => {
      if (linesFile) appendFileSync(linesFile, `${line}\n`);
      if (line.startsWith("{") && /"level":"(WARN|ERROR)"/.test(line)) warnings.push(line);
    },
  });
  try {
    const s3 = new S3Client({ ...motoClientConfig(endpoint), forcePathStyle: true });
    const bucket = testBucket(s3, stack.bucket);
    const run = `rate${Date.now().toString(36)}`;
    const shard = writeBenchShard(dir.path, { samples, name: "rate" });
    for (const name of readdirSync(join(dir.path, "images")))
      await bucket.put(`seeds/${run}/images/${name}`, readFileSync(join(dir.path, "images", name)));
    await bucket.put(`seeds/${run}/run.json`, JSON.stringify({ rounds, model }));
    // The shared governor and the steady window both start from a full budget: a foreign server's must be.
    if (server !== null) await awaitFullBudget(server, model, { limit: tpm });
    const started = performance.now();
    await bucket.put(`seeds/${run}/rate.jsonl`, readFileSync(shard));
    const progress = setInterval(() => {
      const ok = proxy.calls.filter((c) => c.status === 200).length;
      process.stderr.write(`  ${Math.round((performance.now() - started) / 1000)} s: ${ok} calls answered\n`);
    }, 30_000);
    try {
      await bucket.waitFor(`reports/${run}/rate.json`, 60 * 60_000);
    } finally {
      clearInterval(progress);
    }
    const totalSeconds = (performance.now() - started) / 1000;
    const calls = [...proxy.calls].sort((a, b) => a.at - b.at);
    const charged = calls.filter((c) => c.status === 200);
    const steady = steadyUse(
      charged.map((c) => ({ at: c.at, charged: c.charged })),
      started,
      tpm,
    );
    const limited = calls.filter((c) => c.status === 429);
    const rateLimited = limited.length;
    return {
      date: new Date().toISOString().slice(0, 10),
      runtime: "emulated-stack",
      server: serverName(server),
      model,
      samples,
      rounds,
      tokensPerMinute: tpm,
      requests: calls.length,
      rateLimited,
      rateLimitedAtSeconds: limited.map((c) => +((c.at - started) / 1000).toFixed(1)),
      share429: calls.length > 0 ? +(rateLimited / calls.length).toFixed(4) : 0,
      steadyWindowSeconds: steady.windowSeconds,
      steadyTokensPerMinute: steady.tokensPerMinute,
      useOfLimit: steady.useOfLimit,
      totalSeconds: +totalSeconds.toFixed(1),
      warnings: summarize(warnings),
    };
  } finally {
    await stack.stop();
    proxy.close();
    await sim?.close();
    dir.cleanup();
  }
}

if (import.meta.main) {
  exitOnSetupError("rate-emulated");
  const { values } = parseArgs({
    options: {
      /**
       * Default: 120 with the simulator at 200,000 tokens/min (a steady window of about 300 s); against another
       * server, 4 minutes of work at its limit (benchSamples). The stack's governor keeps 6 s of refill unspent
       * (ARRIVAL_LEAD_MS), which the window counts as unused at its close: up to 5% of a 2-minute window.
       */
      samples: { type: "string" },
      rounds: { type: "string", default: "1" },
      /** The limit: the simulator's (default 200000), or a foreign server's when its headers do not say. */
      tpm: { type: "string" },
      "base-url": { type: "string" },
      /** What the simulator's limiter charges: "max_tokens" (prompt + max_tokens, OpenAI's) or "usage". */
      "token-charge": { type: "string" },
      model: { type: "string", default: "gpt-4o-mini" },
      json: { type: "string" },
    },
  });
  const tokenCharge = parseTokenCharge(values["token-charge"]);
  const endpoint = foreignEndpoint(values["base-url"]);
  const tpm = await benchTokenLimit(values.tpm, endpoint, values.model, 200_000);
  const figures = await measureEmulatedRate({
    samples: benchSamples(values.samples, tpm, { samples: 120, tpm: 200_000 }, endpoint !== null),
    rounds: Number(values.rounds),
    tpm,
    endpoint,
    model: values.model,
    tokenCharge,
  });
  console.log(
    `mmevol rate-limit benchmark on the emulated stack (${figures.samples} samples, shared DynamoDB governor; ${figures.server}, ${figures.tokensPerMinute} tokens/min, ${endpoint === null ? "latency 1-3 s" : "the server's latency"})`,
  );
  console.table({
    [`requests to ${figures.server}`]: figures.requests,
    "answered 429": figures.rateLimited,
    "429s at (s after the shard was put)": figures.rateLimitedAtSeconds.join(", ") || "-",
    "429 share (target <= 1%)": `${(figures.share429 * 100).toFixed(2)}%`,
    "steady window (s)": figures.steadyWindowSeconds,
    "tokens/min charged in the window": figures.steadyTokensPerMinute,
    "use of the limit (target >= 0.95)": figures.useOfLimit ?? `none: window under ${MIN_WINDOW_SECONDS} s`,
    "total time (s)": figures.totalSeconds,
  });
  console.log("function warnings:", JSON.stringify(figures.warnings));
  if (figures.useOfLimit === null)
    console.log(
      `The steady window was ${figures.steadyWindowSeconds} s, under the ${MIN_WINDOW_SECONDS} s a figure needs: run more --samples.`,
    );
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(JSON.stringify({ useOfLimit: figures.useOfLimit, share429: figures.share429 }));
  process.exit(0);
}
