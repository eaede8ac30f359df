import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it, vi } from "vitest";
import { localRedrive } from "../../bin/commands/redrive.ts";
import {
  activeRunPid,
  processStartTime,
  RunDirectoryBusyError,
  runLockPath,
  takeRunLock,
} from "../../functions/runtime/run-lock.ts";
import { runCli } from "../helpers/cli.ts";
import { repoRoot } from "../helpers/files.ts";

const dir = mkdtempSync(path.join(os.tmpdir(), "mmevol-run-lock-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let count = 0;
/** A fresh output directory with its `.mmevol` folder, and the path of its lock. */
const outDir = () => {
  const out = path.join(dir, `out-${++count}`);
  mkdirSync(path.join(out, ".mmevol"), { recursive: true });
  return { out, file: runLockPath(out) };
};

/** The pid of a process that has exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ["-e", "process.exit(0)"]);
  if (child.pid === undefined) throw new Error("no pid");
  return child.pid;
}

const busyError = (work: () => unknown): RunDirectoryBusyError => {
  try {
    work();
  } catch (error) {
    if (error instanceof RunDirectoryBusyError) return error;
    throw error;
  }
  throw new Error("the lock was taken");
};

/** What this process's lock holds: its pid and when it started (from /proc). */
const ownLock = `${process.pid} ${processStartTime(process.pid)}`;

describe("takeRunLock", () => {
  it("holds this process's pid until released, and refuses a second taker meanwhile", () => {
    const { out, file } = outDir();
    const lock = takeRunLock(out);
    expect(readFileSync(file, "utf8")).toBe(ownLock);
    const error = busyError(() => takeRunLock(out));
    expect(error.pid).toBe(process.pid);
    expect(error.message).toContain(`pid ${process.pid}`);
    expect(error.message).toContain(out);
    // What `mmevol status` says: a run is going on here, by this pid; then none.
    expect(activeRunPid(out)).toBe(process.pid);
    lock.release();
    expect(existsSync(file)).toBe(false);
    expect(activeRunPid(out)).toBeNull();
    takeRunLock(out).release();
  });

  it("takes over the lock of a process that is gone", () => {
    const { out, file } = outDir();
    writeFileSync(file, String(deadPid()));
    const lock = takeRunLock(out);
    expect(readFileSync(file, "utf8")).toBe(ownLock);
    lock.release();
  });

  it("waits out a lock being taken right now, but not an empty one left long ago", () => {
    const { out, file } = outDir();
    writeFileSync(file, "");
    expect(busyError(() => takeRunLock(out)).message).toContain("starting now");
    const old = new Date(Date.now() - 60_000);
    utimesSync(file, old, old);
    takeRunLock(out).release();
  });

  it("takes over a lock whose pid lives on in another process (a pid reused, as by a restarted container)", () => {
    const other = spawn(process.execPath, ["-e", "setTimeout(() => {}, 30_000)"], { stdio: "ignore" });
    try {
      const { out, file } = outDir();
      const pid = other.pid ?? 0;
      // Both alive, but neither started when the lock says its holder did.
      for (const holder of [pid, process.pid]) {
        writeFileSync(file, `${holder} 1`);
        takeRunLock(out).release();
      }
      // The holder as it started: held.
      let started: string | null = null;
      for (let i = 0; i < 100 && started === null; i++) started = processStartTime(pid);
      writeFileSync(file, `${pid} ${started}`);
      expect(busyError(() => takeRunLock(out)).pid).toBe(pid);
    } finally {
      other.kill();
    }
  });

  it("takes over a stale lock only if no other run took it over first", () => {
    const other = spawn(process.execPath, ["-e", "setTimeout(() => {}, 30_000)"], { stdio: "ignore" });
    const kill = vi.spyOn(process, "kill");
    try {
      const { out, file } = outDir();
      const gone = deadPid();
      writeFileSync(file, String(gone));
      // Another run finds the same stale lock and takes it over between our look and our removal.
      kill.mockImplementation((pid: number) => {
        if (pid !== gone) return true;
        writeFileSync(file, String(other.pid));
        const error = Object.assign(new Error("no such process"), { code: "ESRCH" });
        throw error;
      });
      expect(busyError(() => takeRunLock(out)).pid).toBe(other.pid);
      expect(readFileSync(file, "utf8")).toBe(String(other.pid));
    } finally {
      kill.mockRestore();
      other.kill();
    }
  });

  it("does not remove a lock another process has taken over since", () => {
    const { out, file } = outDir();
    const lock = takeRunLock(out);
    writeFileSync(file, "1");
    lock.release();
    expect(readFileSync(file, "utf8")).toBe("1");
  });
});

/** The README's dry run of the demo shard into `out`. */
const runDemo = (out: string) =>
  runCli(["run", path.join(repoRoot, "examples/seeds/demo.jsonl"), "--out", out, "--dry-run", "--quiet"]);

describe("mmevol run on a directory another run is using", () => {
  it("stops with a clear error and exit code 2, and leaves the state alone", async () => {
    const out = path.join(dir, "busy-out");
    mkdirSync(path.join(out, ".mmevol"), { recursive: true });
    const other = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)"], { stdio: "ignore" });
    try {
      writeFileSync(path.join(out, ".mmevol", "run.lock"), String(other.pid));
      const result = await runDemo(out);
      expect(result.code).toBe(2);
      expect(result.stderr).toContain(`another mmevol run (pid ${other.pid}) is working on ${out}`);
      expect(result.stderr).not.toContain("    at ");
      expect(existsSync(path.join(out, ".mmevol", "state.sqlite"))).toBe(false);
    } finally {
      other.kill();
    }
    // Once the other run is gone, the same command runs.
    await new Promise((resolve) => other.once("exit", resolve));
    const again = await runDemo(out);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("shard demo:");
    expect(existsSync(path.join(out, ".mmevol", "run.lock"))).toBe(false);
  }, 120_000);
});

describe("mmevol redrive on a directory a run is using", () => {
  it("refuses while the run holds the lock, and redrives once it is gone", async () => {
    const out = path.join(dir, "redrive-out");
    const first = await runDemo(out);
    expect(first.code).toBe(0);
    const other = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)"], { stdio: "ignore" });
    try {
      writeFileSync(runLockPath(out), String(other.pid));
      await expect(localRedrive({ out })).rejects.toThrow(`another mmevol run (pid ${other.pid})`);
    } finally {
      other.kill();
    }
    await new Promise((resolve) => other.once("exit", resolve));
    const redriven = await localRedrive({ out });
    expect(redriven.lines[0]).toMatch(/dead letter/);
    expect(existsSync(runLockPath(out))).toBe(false);
  }, 120_000);
});
