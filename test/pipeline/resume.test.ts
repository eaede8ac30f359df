import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { demoShard, readJson, readJsonl, repoRoot, tempDir } from "../helpers/files.ts";

function startCli(args: string[], sim: Simulator): { child: ChildProcess; done: Promise<number | null> } {
  const child = spawn(process.execPath, [join(repoRoot, "bin/mmevol.ts"), "run", ...args], {
    cwd: repoRoot,
    env: { ...process.env, OPENAI_BASE_URL: sim.url, OPENAI_API_KEY: "sk-test-resume" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const done = new Promise<number | null>((resolve) =>
    child.on("exit", (code) => {
      if (code !== 0 && code !== null) process.stderr.write(stderr);
      resolve(code);
    }),
  );
  return { child, done };
}

const waitFor = async (condition: () => boolean, timeoutMs = 30_000) => {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe("a run killed with SIGKILL and run again", () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it("continues where it stopped, pays no answered call twice, and writes what an uninterrupted run writes", async () => {
    const concurrency = 2;
    // Uninterrupted reference run.
    const reference = await startSimulator({ latencyMs: 5 });
    const ref = startCli(
      [demoShard, "--out", join(dir.path, "ref"), "--run", "demo", "-q", "-c", String(concurrency)],
      reference,
    );
    expect(await ref.done).toBe(0);
    const referenceCalls = reference.stats().succeeded;
    await reference.close();

    const sim = await startSimulator({ latencyMs: 20 });
    try {
      const args = [
        demoShard,
        "--out",
        join(dir.path, "killed"),
        "--run",
        "demo",
        "-q",
        "-c",
        String(concurrency),
      ];
      const first = startCli(args, sim);
      await waitFor(() => sim.stats().succeeded >= Math.floor(referenceCalls / 2));
      first.child.kill("SIGKILL");
      expect(await first.done).toBeNull();
      const beforeResume = sim.stats().succeeded;
      expect(beforeResume).toBeLessThan(referenceCalls);

      const second = startCli(args, sim);
      expect(await second.done).toBe(0);

      const log = sim.stats().log.filter((e) => e.status === 200);
      const distinct = new Set(log.map((e) => e.request)).size;
      // Only calls in flight at the kill (answered by the server, never stored) may be asked again.
      expect(log.length - distinct).toBeLessThanOrEqual(concurrency);
      expect(log.length).toBeLessThanOrEqual(referenceCalls + concurrency);

      const killed = join(dir.path, "killed/evolved/demo/demo.jsonl");
      const records = readJsonl(killed);
      expect(new Set(records.map((r) => r.id)).size).toBe(records.length);
      expect(readFileSync(killed, "utf8")).toBe(
        readFileSync(join(dir.path, "ref/evolved/demo/demo.jsonl"), "utf8"),
      );
      const report = readJson(join(dir.path, "killed/reports/demo/demo.json"));
      expect(report.counts).toEqual(readJson(join(dir.path, "ref/reports/demo/demo.json")).counts);
    } finally {
      await sim.close();
    }
  });
});
