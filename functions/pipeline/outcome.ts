import type { RunConfig } from "../evolution/config.ts";
import { LlmCallError } from "../ports/errors.ts";
import type { Message } from "../ports/messages.ts";
import { addUsageTotals, type SampleRecord, type SampleUpdate, zeroUsage } from "../ports/state-store.ts";
import { AnswerRejectedError, RequestInFlightError } from "./ask.ts";
import { DeferredToBatchError } from "./batch.ts";
import type { StageDeps, StageResult } from "./deps.ts";

export const finalizeIfDone = (run: string, shard: string, pending: number | null): Message[] =>
  pending === 0 ? [{ kind: "finalize", run, shard }] : [];

/**
 * For a message whose sample already ended: the finalize message again when its shard is complete but not
 * finalized (the stage that ended the last sample may have lost its send), else nothing.
 */
export async function lostFinalize(
  deps: Pick<StageDeps, "state">,
  run: string,
  shard: string,
): Promise<Message[]> {
  const shardRecord = await deps.state.getShard(run, shard);
  return finalizeIfDone(
    run,
    shard,
    shardRecord === null || shardRecord.finalized ? null : shardRecord.pending,
  );
}

/** Moves a sample to a terminal state; the store takes the shard's pending count down in the same write. */
export async function endSample(
  deps: Pick<StageDeps, "state" | "logger">,
  record: SampleRecord,
  update: SampleUpdate & { status: "DONE" | "PASSED_THROUGH" | "FAILED" },
  outcome: string,
): Promise<StageResult> {
  const result = await deps.state.transition(record, update);
  if (!result.applied) return { next: [], outcome: "duplicate" };
  return { next: finalizeIfDone(record.run, record.shard, result.shardPending), outcome };
}

/**
 * The one place a stage failure is decided: a retryable error goes back to the queue (rethrown) until the
 * attempts run out; then, or for a permanent error, the sample is FAILED with the reason.
 */
export async function failOrRetry(
  deps: Pick<StageDeps, "state" | "logger">,
  record: SampleRecord,
  error: unknown,
  attempt: number,
  config: RunConfig,
  stage: string,
): Promise<StageResult> {
  if (error instanceof RequestInFlightError) return { next: [], outcome: "duplicate" };
  // Batch mode: the request waits in a batch; its answer brings the message back.
  if (error instanceof DeferredToBatchError)
    return { next: [], outcome: error.queued ? "batched" : "waiting" };
  // Waiting for another receive of this message is not a failed try: it always goes back to the queue.
  if (error instanceof LlmCallError && error.inFlight) throw error;
  const retryable =
    typeof error === "object" && error !== null && "retryable" in error && error.retryable === true;
  if (retryable && attempt < config.maxAttempts) throw error;
  const reason = error instanceof Error ? error.message : String(error);
  const spent = error instanceof AnswerRejectedError ? error.usage : zeroUsage();
  deps.logger.warn("sample failed", {
    run: record.run,
    shard: record.shard,
    sample: record.key,
    stage,
    reason,
  });
  return endSample(
    deps,
    record,
    {
      status: "FAILED",
      error: `${stage} round ${Math.max(record.round, 1)}${retryable ? ` after ${attempt} attempts` : ""}: ${reason}`,
      usage: addUsageTotals(record.usage, spent),
      pending: null,
    },
    "failed",
  );
}
