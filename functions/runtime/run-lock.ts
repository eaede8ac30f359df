import { closeSync, openSync, readFileSync, rmSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import { MmevolError } from "../ports/errors.ts";

/** The lock of a local output directory, next to its state. */
export const runLockPath = (out: string): string => join(out, ".mmevol", "run.lock");

/**
 * Another process is running on this output directory. Two runs on one state would both ask the model for the
 * same requests (each drops the other's claims when it starts), so the second one stops before it starts.
 */
export class RunDirectoryBusyError extends MmevolError {
  /** The other process, or null when it is starting right now and has not written its pid yet. */
  readonly pid: number | null;
  constructor(out: string, pid: number | null) {
    super(
      `another mmevol run (${pid === null ? "starting now" : `pid ${pid}`}) is working on ${out}; wait for it to finish (or stop it), or use another --out`,
      { retryable: false },
    );
    this.pid = pid;
  }
}

export interface RunLock {
  release(): void;
}

/** Runs `work` holding the lock of the output directory `out` (see takeRunLock). */
export async function withRunLock<T>(out: string, work: () => Promise<T>): Promise<T> {
  const lock = takeRunLock(out);
  try {
    return await work();
  } finally {
    lock.release();
  }
}

/** A lock file with no pid yet is being taken right now, unless it has been empty this long. */
const TAKING_MS = 10_000;

/**
 * Takes the lock of the output directory `out` (`runLockPath(out)`, a file holding this process's pid), or
 * throws RunDirectoryBusyError naming the live process that holds it. A lock whose process is gone (a run
 * killed with `kill -9`, a power loss) is taken over.
 */
export function takeRunLock(out: string): RunLock {
  const path = runLockPath(out);
  for (let attempt = 0; attempt < 3; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, "wx");
    } catch (error) {
      if (!isCode(error, "EEXIST")) throw error;
      const holder = holderOf(path);
      if (holder === "gone") continue;
      if (holder !== "stale") throw new RunDirectoryBusyError(out, holder);
      rmSync(path, { force: true });
      continue;
    }
    try {
      writeSync(fd, String(process.pid));
    } finally {
      closeSync(fd);
    }
    return {
      release: () => {
        // Only our own lock: a run that overran and was taken over must not delete its successor's.
        if (readPid(path) === process.pid) rmSync(path, { force: true });
      },
    };
  }
  throw new RunDirectoryBusyError(out, readPid(path));
}

/**
 * The pid of the live process holding the lock (null: it is writing its pid right now), "stale" when nobody
 * holds it, "gone" when the file vanished meanwhile.
 */
function holderOf(path: string): number | null | "stale" | "gone" {
  let text: string;
  let ageMs: number;
  try {
    text = readFileSync(path, "utf8");
    ageMs = Date.now() - statSync(path).mtimeMs;
  } catch (error) {
    if (isCode(error, "ENOENT")) return "gone";
    throw error;
  }
  const pid = Number.parseInt(text, 10);
  if (!Number.isInteger(pid) || pid <= 0) return ageMs < TAKING_MS ? null : "stale";
  if (pid === process.pid) return pid;
  return processAlive(pid) ? pid : "stale";
}

function readPid(path: string): number | null {
  try {
    const pid = Number.parseInt(readFileSync(path, "utf8"), 10);
    return Number.isInteger(pid) ? pid : null;
  } catch {
    return null;
  }
}

/** Whether process `pid` exists (on this machine). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return isCode(error, "EPERM");
  }
}

const isCode = (error: unknown, code: string): boolean =>
  typeof error === "object" && error !== null && "code" in error && error.code === code;
