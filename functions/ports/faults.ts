/**
 * Step boundaries where a test may make the process die, to prove that nothing is lost or paid twice.
 * In production no fault plan is installed and every point is a no-op.
 */
export const CRASH_POINTS = [
  "ingest:after-batch-write",
  "evolve:after-answer-stored",
  "evolve:after-state-write",
  "judge:after-answer-stored",
  "judge:after-state-write",
  "finalize:mid-write",
  "finalize:before-mark",
  "queue:between-sends",
] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

export interface Faults {
  /** Called at a step boundary; a fault plan may end the process (or the invocation) here. */
  point(name: CrashPoint): void;
  /** Whether a sent message should also be delivered a second time. */
  duplicate(): boolean;
}

export const noFaults: Faults = { point: () => {}, duplicate: () => false };
