import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
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
