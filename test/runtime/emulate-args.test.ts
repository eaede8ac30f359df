import { describe, expect, it } from "vitest";
import { runNode } from "../helpers/cli.ts";

describe("npm run emulate with a --drop or --config it cannot use", () => {
  it("says so at once, exit 2, before starting the emulator and the stack", async () => {
    const missing = await runNode(["bin/emulate.ts", "--drop", "no-such-shard.jsonl", "--exit-when-done"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe("emulate: --drop: no such shard file: no-such-shard.jsonl\n");
    const both = await runNode([
      "bin/emulate.ts",
      "--drop",
      "examples/seeds/demo.jsonl",
      "--batch",
      "--config",
      "examples/run.json",
    ]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('give --batch or "mode": "batch" in --config examples/run.json, not both');
  }, 30_000);
});
