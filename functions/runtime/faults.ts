import { appendFileSync, existsSync, readFileSync } from "node:fs";
import { z } from "zod";
import { seededRandom } from "../evolution/directions.ts";
import { CRASH_POINTS, type CrashPoint, type Faults, noFaults } from "../ports/faults.ts";
import type { Message, WorkQueue } from "../ports/messages.ts";

/**
 * Test-only fault injection, enabled by this environment variable alone (the stack never sets it).
 * Value: JSON of FaultPlan.
 */
export const FAULTS_ENV = "MMEVOL_TEST_FAULTS";

export const FaultPlan = z.strictObject({
  /** Crash at a point: on its `hit`-th pass in a process, or with `probability` on every pass. */
  crash: z
    .array(
      z.strictObject({
        point: z.enum(CRASH_POINTS),
        hit: z.number().int().positive().optional(),
        probability: z.number().min(0).max(1).optional(),
      }),
    )
    .default([]),
  /** Share of sent messages that are delivered twice. */
  duplicateRate: z.number().min(0).max(1).default(0),
  seed: z.number().int().default(1),
  /** "exit" kills the process at once (like kill -9); "throw" fails only the current step. */
  mode: z.enum(["exit", "throw"]).default("exit"),
  /**
   * A file shared by every process of a test: each crash is written there first, so a restarted process
   * does not crash again at the same place, and `maxCrashes` bounds the total.
   */
  ledger: z.string().optional(),
  maxCrashes: z.number().int().nonnegative().default(1),
});
export type FaultPlan = z.infer<typeof FaultPlan>;

export class InjectedCrashError extends Error {
  readonly retryable = true;
  constructor(point: CrashPoint) {
    super(`injected crash at ${point}`);
    this.name = "InjectedCrashError";
  }
}

function crashesSoFar(ledger: string | undefined): number {
  if (!ledger || !existsSync(ledger)) return 0;
  return readFileSync(ledger, "utf8").split("\n").filter(Boolean).length;
}

/** The fault plan of this process, or no faults at all when the variable is not set. */
export function faultsFromEnv(env: NodeJS.ProcessEnv = process.env): Faults {
  const text = env[FAULTS_ENV];
  if (!text) return noFaults;
  const plan = FaultPlan.parse(JSON.parse(text));
  const random = seededRandom(`${plan.seed}:${process.pid}`);
  const hits = new Map<CrashPoint, number>();
  return {
    point(name) {
      const count = (hits.get(name) ?? 0) + 1;
      hits.set(name, count);
      const rule = plan.crash.find((c) => c.point === name);
      if (!rule) return;
      const due = rule.hit !== undefined ? count === rule.hit : random() < (rule.probability ?? 0);
      if (!due || crashesSoFar(plan.ledger) >= plan.maxCrashes) return;
      if (plan.ledger)
        appendFileSync(plan.ledger, `${JSON.stringify({ point: name, pid: process.pid, at: Date.now() })}\n`);
      if (plan.mode === "throw") throw new InjectedCrashError(name);
      process.kill(process.pid, "SIGKILL");
    },
    duplicate: () => plan.duplicateRate > 0 && random() < plan.duplicateRate,
  };
}

/** A queue that delivers some messages twice, and may crash between two parts of one send. */
export class FaultyQueue implements WorkQueue {
  readonly #inner: WorkQueue;
  readonly #faults: Faults;
  constructor(inner: WorkQueue, faults: Faults) {
    this.#inner = inner;
    this.#faults = faults;
  }
  async send(messages: readonly Message[]): Promise<void> {
    const withCopies = messages.flatMap((m) => (this.#faults.duplicate() ? [m, m] : [m]));
    const half = Math.ceil(withCopies.length / 2);
    await this.#inner.send(withCopies.slice(0, half));
    if (withCopies.length > 1) this.#faults.point("queue:between-sends");
    await this.#inner.send(withCopies.slice(half));
  }
}
