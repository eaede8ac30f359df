import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { writeBenchShard } from "../helpers/bench-shard.ts";
import { runCli } from "../helpers/cli.ts";
import { tempDir } from "../helpers/files.ts";

describe("mmevol run refuses a dot-only --run before the dry-run banner", () => {
  it.each([".", ".."])("--run %s: exit 2, the reason, no banner", async (run) => {
    const dir = tempDir();
    try {
      const shard = writeBenchShard(join(dir.path, "a"), { samples: 1, name: "train" });
      const { code, stderr } = await runCli([
        "run",
        shard,
        "--dry-run",
        "--run",
        run,
        "--out",
        join(dir.path, "o"),
      ]);
      expect(code).toBe(2);
      expect(stderr).toContain(`run name "${run}" is not usable`);
      expect(stderr).not.toContain("DRY RUN");
    } finally {
      dir.cleanup();
    }
  });
});
