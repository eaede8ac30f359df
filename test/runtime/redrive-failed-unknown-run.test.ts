import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { localRedriveFailed } from "../../bin/commands/redrive.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { runCli } from "../helpers/cli.ts";
import { tempDir } from "../helpers/files.ts";
import { sampleRecord, shardRecord } from "../helpers/state-store-contract.ts";

const dir = tempDir("mmevol-redrive-unknown-");
afterAll(() => dir.cleanup());

describe("mmevol redrive --failed --run NAME", () => {
  it("says a run of that name is not there, rather than that nothing FAILED", async () => {
    mkdirSync(join(dir.path, ".mmevol"), { recursive: true });
    const state = new SqliteStateStore(join(dir.path, ".mmevol", "state.sqlite"));
    await state.createShard(shardRecord());
    await state.putSamples([sampleRecord("a")]);
    const a = await state.getSample("r1", "s1", "a");
    if (a === null) throw new Error("sample missing");
    await state.transition(a, { status: "FAILED", error: "judge round 1: HTTP 400" });
    state.close();

    // A misspelt run name (r-1 for r1): the FAILED sample of r1 is left as it is, and the user is told why.
    await expect(localRedriveFailed({ out: dir.path, run: "r-1" })).rejects.toThrow(/no run named "r-1"/);
    // --queue and --max are for dead letters: with --failed they are refused, not ignored.
    for (const extra of [
      ["--max", "3"],
      ["--queue", "evolve"],
    ]) {
      const refused = await runCli(["redrive", "--out", dir.path, "--failed", "--run", "r1", ...extra]);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain("--queue and --max move dead letters; --failed moves none");
    }
    // The same for status, and --max / --queue on a local run's dead letters (which all go back at the next run).
    const status = await runCli(["status", "--out", dir.path, "--run", "r-1"]);
    expect(status.code).toBe(2);
    expect(status.stderr).toContain('no run named "r-1" here');
    const local = await runCli(["redrive", "--out", dir.path, "--max", "2"]);
    expect(local.code).toBe(2);
    expect(local.stderr).toContain("--queue and --max are for a deployed stack's dead-letter queues");
    const redriven = await localRedriveFailed({ out: dir.path, run: "r1" });
    expect(redriven.lines[0]).toMatch(/^1 sample\(s\) start again from their seed/);
  }, 30_000);
});
