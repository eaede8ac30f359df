import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.ts";
import { repoRoot, tempDir } from "../helpers/files.ts";

describe("mmevol run piped into a reader that goes away (`| head -1`)", () => {
  it("keeps the run's own exit code, with no EPIPE stack trace", async () => {
    const dir = tempDir();
    try {
      const child = spawn(
        process.execPath,
        [
          join(repoRoot, "bin/mmevol.ts"),
          "run",
          join(repoRoot, "examples/seeds/demo.jsonl"),
          "--out",
          join(dir.path, "out"),
          "--dry-run",
          "-q",
        ],
        { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] },
      );
      // The reader closes before the run prints its outputs.
      child.stdout.destroy();
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
      expect(stderr).not.toContain("EPIPE");
      expect(code).toBe(0);
    } finally {
      dir.cleanup();
    }
  }, 60_000);
});

describe("mmevol run's progress lines (stderr not a terminal)", () => {
  it("print the finished count once, and no round before the first or after the last", async () => {
    const dir = tempDir();
    try {
      const run = await runCli([
        "run",
        join(repoRoot, "examples/seeds/demo.jsonl"),
        "--out",
        join(dir.path, "out"),
        "--dry-run",
      ]);
      expect(run.code).toBe(0);
      const progress = run.stderr.split("\n").filter((line) => line.startsWith("progress "));
      expect(progress.filter((line) => line.startsWith("progress 9/9 samples"))).toHaveLength(1);
      expect(progress.join("\n")).not.toContain("round 0");
    } finally {
      dir.cleanup();
    }
  }, 60_000);
});
