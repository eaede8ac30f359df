// Local benchmark: a 1,000-sample, 3-round run against the OpenAI simulator (a separate process, zero
// latency), then the same LLM requests replayed bare with the same concurrency. Prints sample-rounds per
// second, the pipeline's overhead (total time / bare LLM time) and peak RSS. Run: npm run bench:local
//
// Both timings start from the same conditions, so the ratio is the pipeline's cost alone:
// - each phase gets its own fresh simulator process, so neither inherits the other's prefix cache, request log
//   or JIT state (the replay used to run against the simulator the run had just warmed);
// - each simulator and each client is warmed by the same small request (not recorded, under the prompt-cache
//   minimum) before its timing starts: the simulator's first request builds its tokenizer (about a second),
//   which used to be charged to the run alone;
// - the same client options, the same concurrency, the requests in the order the run made them;
// - the run is timed around `runLocal` itself, so closing the state (its last WAL checkpoint) counts too.
// On a shared machine both wall times stretch with other load, and the run more (it needs more CPU): on this
// 2-core VM one pair measured 0.84 and the next 1.24, with the same code. So the benchmark times several
// run/bare pairs (--repeat, 3 by default), each pair side by side and in alternating order, and reports the
// median of the pairs' ratios. The CPU figures (this process, and the simulator's, which should match
// between the phases) are steadier.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import type { Llm, LlmRequest, LlmResponse } from "../../functions/ports/llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { tinyRequest } from "../helpers/endpoint.ts";

const { values } = parseArgs({
  options: {
    samples: { type: "string", default: "1000" },
    rounds: { type: "string", default: "3" },
    concurrency: { type: "string", default: "16" },
    /** Run/bare pairs; the ratio is their median. */
    repeat: { type: "string", default: "3" },
    json: { type: "string" },
  },
});
const samples = Number(values.samples);
const rounds = Number(values.rounds);
const concurrency = Number(values.concurrency);
const repeat = Math.max(1, Number(values.repeat));
const root = fileURLToPath(new URL("../..", import.meta.url));

interface SimulatorProcess {
  readonly url: string;
  /** CPU the simulator process has used so far, in ms; null where /proc is not available. */
  cpuMs(): number | null;
  stop(): Promise<void>;
}

async function startSimulatorProcess(): Promise<SimulatorProcess> {
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
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return {
    url,
    cpuMs: () => procCpuMs(child.pid),
    stop: async () => {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** One small request, the same before each phase: under 1,024 tokens, so it leaves no prefix in the cache. */
const WARM_UP: LlmRequest = tinyRequest("gpt-4o-mini", "Warm-up");

const cpuMs = (usage: NodeJS.CpuUsage): number => (usage.user + usage.system) / 1000;

/** utime + stime of a Linux process from /proc (clock ticks of 10 ms), or null. */
function procCpuMs(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
    const ticks = Number(fields[11]) + Number(fields[12]);
    return Number.isFinite(ticks) ? ticks * 10 : null;
  } catch {
    return null;
  }
}

const between = (before: number | null, after: number | null): number | null =>
  before === null || after === null ? null : +((after - before) / 1000).toFixed(2);

const clientOf = (url: string): OpenAiLlm => new OpenAiLlm({ apiKey: "bench", baseURL: url, maxRetries: 2 });

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

interface Phase {
  readonly ms: number;
  readonly cpuMs: number;
  readonly simulatorCpuSeconds: number | null;
}

/** Times `work` against a fresh, warmed simulator: this process's CPU and the simulator's, per phase. */
async function timed(
  work: (llm: Llm) => Promise<void>,
  wrap: (llm: Llm) => Llm = (llm) => llm,
): Promise<Phase> {
  const sim = await startSimulatorProcess();
  sims.push(sim);
  try {
    const client = clientOf(sim.url);
    await client.complete(WARM_UP);
    const simCpu = sim.cpuMs();
    const cpu = process.cpuUsage();
    const started = performance.now();
    await work(wrap(client));
    const ms = performance.now() - started;
    return { ms, cpuMs: cpuMs(process.cpuUsage(cpu)), simulatorCpuSeconds: between(simCpu, sim.cpuMs()) };
  } finally {
    await sim.stop();
    sims.splice(sims.indexOf(sim), 1);
  }
}

const median = (values: readonly number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[middle] ?? Number.NaN)
    : ((sorted[middle - 1] ?? Number.NaN) + (sorted[middle] ?? Number.NaN)) / 2;
};

const dir = mkdtempSync(join(tmpdir(), "mmevol-bench-"));
const sims: SimulatorProcess[] = [];
try {
  const shard = writeBenchShard(dir, { samples, name: "bench", withBoxes: true });
  const rssBefore = process.memoryUsage().rss;
  let recorder: RecordingLlm | null = null;
  let report: Awaited<ReturnType<typeof runLocal>>["reports"][number] | undefined;
  /** One whole run, timed around `runLocal` (not result.elapsedMs: that stops before the state is closed). */
  const run = (index: number) =>
    timed(
      async (llm) => {
        const result = await runLocal({
          shards: [shard],
          out: join(dir, `out-${index}`),
          run: "bench",
          concurrency,
          config: { rounds },
          llm,
        });
        report = result.reports[0];
        if (!report?.counts.addsUp) throw new Error("counts do not add up");
      },
      // The first run records its requests, for the bare replays.
      (llm) => (recorder === null ? (recorder = new RecordingLlm(llm)) : llm),
    );
  const bare = () =>
    timed(async (llm) => {
      if (recorder === null) throw new Error("no run recorded yet");
      await replayBare(llm, recorder.requests);
    });
  // Pairs of phases side by side, in alternating order (run first, then bare first...), so drift in the
  // machine's speed (a shared VM's neighbours) falls on both sides; the ratio is the median of the pairs'.
  const pairs: { run: Phase; bare: Phase }[] = [];
  for (let index = 0; index < repeat; index++) {
    if (index % 2 === 0) {
      const r = await run(index);
      pairs.push({ run: r, bare: await bare() });
    } else {
      const b = await bare();
      pairs.push({ run: await run(index), bare: b });
    }
    const last = pairs.at(-1);
    if (last)
      process.stderr.write(
        `[bench:local] pair ${index + 1}/${repeat}: run ${(last.run.ms / 1000).toFixed(1)} s (CPU ${(last.run.cpuMs / 1000).toFixed(1)} s), bare ${(last.bare.ms / 1000).toFixed(1)} s: ratio ${(last.run.ms / last.bare.ms).toFixed(3)}\n`,
      );
  }
  const ratioOf = (pair: { run: Phase; bare: Phase }) => pair.run.ms / pair.bare.ms;
  const ratios = pairs.map(ratioOf);
  const ratio = median(ratios);
  // The pair at the middle of the ratios gives the other figures.
  const chosen = [...pairs].sort((a, b) => ratioOf(a) - ratioOf(b))[Math.floor(pairs.length / 2)];
  const recorded = recorder as RecordingLlm | null;
  const counts = (report as typeof report)?.counts;
  if (!chosen || recorded === null || counts === undefined) throw new Error("no run was measured");
  const peakRssMiB = process.resourceUsage().maxRSS / 1024;
  const sampleRounds = (counts.evolved + counts.passedThrough) * rounds;
  const figures = {
    date: new Date().toISOString().slice(0, 10),
    samples,
    rounds,
    concurrency,
    llmCalls: recorded.requests.length,
    pairs: pairs.length,
    ratios: ratios.map((r) => +r.toFixed(3)),
    totalSeconds: +(chosen.run.ms / 1000).toFixed(2),
    bareLlmSeconds: +(chosen.bare.ms / 1000).toFixed(2),
    overheadRatio: +ratio.toFixed(3),
    // CPU of this process (pipeline and client, or client alone) and of the simulator, per phase.
    runCpuSeconds: +(chosen.run.cpuMs / 1000).toFixed(2),
    bareCpuSeconds: +(chosen.bare.cpuMs / 1000).toFixed(2),
    runSimulatorCpuSeconds: chosen.run.simulatorCpuSeconds,
    bareSimulatorCpuSeconds: chosen.bare.simulatorCpuSeconds,
    sampleRoundsPerSecond: +(sampleRounds / (chosen.run.ms / 1000)).toFixed(1),
    peakRssMiB: +peakRssMiB.toFixed(0),
    rssBeforeMiB: +(rssBefore / 1024 / 1024).toFixed(0),
    counts,
  };
  console.log("mmevol local benchmark (simulator in its own process, zero latency)");
  console.table({
    "sample-rounds per second": figures.sampleRoundsPerSecond,
    "LLM calls": figures.llmCalls,
    "total time (s)": figures.totalSeconds,
    "bare LLM calls, same concurrency (s)": figures.bareLlmSeconds,
    [`overhead ratio, median of ${pairs.length} (target <= 1.1)`]: figures.overheadRatio,
    "ratios of the pairs": figures.ratios.join(" / "),
    "CPU of this process, run (s)": figures.runCpuSeconds,
    "CPU of this process, bare replay (s)": figures.bareCpuSeconds,
    "simulator CPU, run / bare replay (s)": `${figures.runSimulatorCpuSeconds} / ${figures.bareSimulatorCpuSeconds}`,
    "peak RSS (MiB)": figures.peakRssMiB,
  });
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
} finally {
  await Promise.all(sims.map((sim) => sim.stop()));
  rmSync(dir, { recursive: true, force: true });
}
