import { batchTick, QueuedListings } from "../pipeline/batch.ts";
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
  const tick = await batchTick(deps, {
    now: deps.clock.now(),
    settleMs,
    minPollMs,
    maxPollMs: 10 * 60_000,
    listings,
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
