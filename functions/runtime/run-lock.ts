import { randomBytes } from "node:crypto";
import {
  closeSync,
  linkSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
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
      if (typeof holder === "object" && holder !== null) {
        removeStale(path, holder);
        continue;
      }
      throw new RunDirectoryBusyError(out, holder);
    }
    try {
      // The start time too: a pid alone is reused (a restarted container's run gets the same one).
      const started = processStartTime(process.pid);
      writeSync(fd, started === null ? String(process.pid) : `${process.pid} ${started}`);
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

/** The pid of the live process running on this output directory, or null when no run is going on there. */
export function activeRunPid(out: string): number | null {
  const holder = holderOf(runLockPath(out));
  return typeof holder === "number" ? holder : null;
}

/** A lock file as read when it was found stale: what it held and when it was written. */
interface StaleLock {
  readonly text: string;
  readonly mtimeMs: number;
}

/**
 * The pid of the live process holding the lock (null: it is writing its pid right now), the stale lock when
 * nobody holds it, "gone" when the file vanished meanwhile.
 */
function holderOf(path: string): number | null | StaleLock | "gone" {
  let text: string;
  let mtimeMs: number;
  try {
    text = readFileSync(path, "utf8");
    mtimeMs = statSync(path).mtimeMs;
  } catch (error) {
    if (isCode(error, "ENOENT")) return "gone";
    throw error;
  }
  const [pidText = "", started] = text.trim().split(/\s+/);
  const pid = Number.parseInt(pidText, 10);
  if (!Number.isInteger(pid) || pid <= 0) return Date.now() - mtimeMs < TAKING_MS ? null : { text, mtimeMs };
  // A lock with a start time is held only by the process with that pid that started then: the pid may have
  // been reused (by this very process, when a container restarts, or by any other).
  const alive = pid === process.pid || processAlive(pid);
  if (!alive) return { text, mtimeMs };
  if (started !== undefined) {
    const now = processStartTime(pid);
    if (now !== null && now !== started) return { text, mtimeMs };
  }
  return pid;
}

/**
 * Removes the stale lock `seen`, unless another run took it over first: the file is moved aside in one step,
 * and put back if it is not the one found stale (a check then a delete could delete the other run's new lock).
 */
function removeStale(path: string, seen: StaleLock): void {
  const aside = `${path}.${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    renameSync(path, aside);
  } catch (error) {
    if (isCode(error, "ENOENT")) return;
    throw error;
  }
  let moved: StaleLock | null = null;
  try {
    moved = { text: readFileSync(aside, "utf8"), mtimeMs: statSync(aside).mtimeMs };
  } catch {
    // Unreadable: treated as someone else's, and put back.
  }
  if (moved === null || moved.text !== seen.text || moved.mtimeMs !== seen.mtimeMs) {
    try {
      // A link, not a rename: it never replaces a lock a third run made meanwhile.
      linkSync(aside, path);
    } catch (error) {
      if (!isCode(error, "EEXIST")) throw error;
    }
  }
  rmSync(aside, { force: true });
}

/** When process `pid` started (clock ticks since boot, from /proc on Linux), or null where that is unknown. */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // After the command name (in parentheses, and free to hold spaces): field 3 on; the start time is field 22.
    const started = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
    return started !== undefined && /^\d+$/.test(started) ? started : null;
  } catch {
    return null;
  }
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
