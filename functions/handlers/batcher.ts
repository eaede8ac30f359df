import { BatchTickError, batchTick, QueuedListings, SUBMITTING_GRACE_MS } from "../pipeline/batch.ts";
import { ENV, readLambdaEnv } from "../runtime/env.ts";
import { createLambdaRuntime } from "../runtime/lambda.ts";

// The runtime is typed per queue stage; the batcher has no queue of its own, so its logs are relabelled.
const { deps, logger } = createLambdaRuntime("evolve");
logger.appendPersistentKeys({ stage: "batcher" });

const env = readLambdaEnv();
/** A round is submitted once no request was added to it for this long. */
const settleMs = env[ENV.batchSettleMs] ?? 60_000;
const minPollMs = env[ENV.batchPollMs] ?? 30_000;
/** Kept while the container is warm: shards waiting on their batches are not listed at every tick. */
const listings = new QueuedListings();

/**
 * Scheduled by EventBridge every minute: submits each batch-mode shard's collected round, polls open batches
 * whose time has come, and applies finished ones by sending their stage messages again.
 */
export const handler = async (): Promise<{
  sent: number;
  submitted: number;
  applied: number;
  open: number;
}> => {
  const options = {
    now: deps.clock.now(),
    settleMs,
    minPollMs,
    maxPollMs: 10 * 60_000,
    listings,
    // Ticks overlap when one outlasts its minute: a job being submitted is left to its own tick.
    submittingGraceMs: SUBMITTING_GRACE_MS,
  };
  const tick = await batchTick(deps, options).catch(async (error: unknown) => {
    // Some step failed, the rest went on: the batches applied still send their messages, then the
    // invocation fails (an error in the function's metrics), and the next tick tries the failed steps again.
    if (error instanceof BatchTickError) await deps.queue.send(error.result.messages);
    throw error;
  });
  await deps.queue.send(tick.messages);
  logger.info("batch tick done", {
    sent: tick.messages.length,
    submitted: tick.submitted,
    applied: tick.applied,
    open: tick.open,
    queued: tick.queued,
  });
  return { sent: tick.messages.length, submitted: tick.submitted, applied: tick.applied, open: tick.open };
};
