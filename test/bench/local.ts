// Local benchmark: a 1,000-sample, 3-round run against the OpenAI simulator (a separate process, zero
// latency), then the same LLM requests replayed bare with the same concurrency. Prints sample-rounds per
// second, the pipeline's overhead (total time / bare LLM time) and peak RSS. Run: npm run bench:local
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";

const { values } = parseArgs({
  options: {
    samples: { type: "string", default: "1000" },
    rounds: { type: "string", default: "3" },
    concurrency: { type: "string", default: "16" },
    json: { type: "string" },
  },
});
const samples = Number(values.samples);
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);
const root = fileURLToPath(new URL("../..", import.meta.url));

async function startSimulatorProcess(): Promise<{ url: string; stop: () => void }> {
  const child = spawn(process.execPath, [join(root, "bin/sim-openai.ts"), "--port", "0"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let text = "";
    child.stderr.on("data", (chunk: Buffer) => {
      text += chunk.toString();
      const match = /listening on (\S+)/.exec(text);
      if (match?.[1]) resolve(match[1]);
    });
    child.on("exit", (code) => reject(new Error(`simulator exited with ${code}: ${text}`)));
  });
  return { url, stop: () => child.kill("SIGTERM") };
}

/** Records every request the pipeline makes, so the same calls can be timed bare afterwards. */
class RecordingLlm implements Llm {
  readonly requests: LlmRequest[] = [];
  readonly #inner: Llm;
  constructor(inner: Llm) {
    this.#inner = inner;
  }
  complete(request: LlmRequest): Promise<LlmResponse> {
    this.requests.push(request);
    return this.#inner.complete(request);
  }
}

async function replayBare(llm: Llm, requests: readonly LlmRequest[]): Promise<number> {
  const started = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < requests.length) {
      const request = requests[next++];
      if (request) await llm.complete(request);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return performance.now() - started;
}

const dir = mkdtempSync(join(tmpdir(), "mmevol-bench-"));
const sim = await startSimulatorProcess();
try {
  const shard = writeBenchShard(dir, { samples, name: "bench", withBoxes: true });
  const client = () => new OpenAiLlm({ apiKey: "bench", baseURL: sim.url, maxRetries: 2 });
  const recorder = new RecordingLlm(client());
  const rssBefore = process.memoryUsage().rss;
  const result = await runLocal({
    shards: [shard],
    out: join(dir, "out"),
    run: "bench",
    concurrency,
    config: { rounds },
    llm: recorder,
  });
  const peakRssMiB = process.resourceUsage().maxRSS / 1024;
  const report = result.reports[0];
  if (!report?.counts.addsUp) throw new Error("counts do not add up");
  const sampleRounds = (report.counts.evolved + report.counts.passedThrough) * rounds;
  const bareMs = await replayBare(client(), recorder.requests);
  const figures = {
    date: new Date().toISOString().slice(0, 10),
    samples,
    rounds,
    concurrency,
    llmCalls: recorder.requests.length,
    totalSeconds: +(result.elapsedMs / 1000).toFixed(2),
    bareLlmSeconds: +(bareMs / 1000).toFixed(2),
    overheadRatio: +(result.elapsedMs / bareMs).toFixed(3),
    sampleRoundsPerSecond: +(sampleRounds / (result.elapsedMs / 1000)).toFixed(1),
    peakRssMiB: +peakRssMiB.toFixed(0),
    rssBeforeMiB: +(rssBefore / 1024 / 1024).toFixed(0),
    counts: report.counts,
  };
  console.log("mmevol local benchmark (simulator in its own process, zero latency)");
  console.table({
    "sample-rounds per second": figures.sampleRoundsPerSecond,
    "LLM calls": figures.llmCalls,
    "total time (s)": figures.totalSeconds,
    "bare LLM calls, same concurrency (s)": figures.bareLlmSeconds,
    "overhead ratio (target <= 1.3)": figures.overheadRatio,
    "peak RSS (MiB)": figures.peakRssMiB,
  });
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
} finally {
  sim.stop();
  rmSync(dir, { recursive: true, force: true });
}
