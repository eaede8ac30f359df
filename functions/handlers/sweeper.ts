import { sweepStuck } from "../pipeline/sweep.ts";
import { BATCH_WAIT_MS, ENV, readLambdaEnv, SWEEP_AFTER_MS } from "../runtime/env.ts";
import { createLambdaRuntime } from "../runtime/lambda.ts";

// The runtime is typed per queue stage; the sweeper has no queue of its own, so its logs are relabelled.
const { deps, logger } = createLambdaRuntime("finalize");
logger.appendPersistentKeys({ stage: "sweeper" });
const stuckAfterMs = readLambdaEnv()[ENV.sweepAfterMs] ?? SWEEP_AFTER_MS;

/** Scheduled by EventBridge: re-sends the message of every piece of work stuck past the deadline. */
export const handler = async (): Promise<{ sent: number }> => {
  const { messages, counts } = await sweepStuck(deps, {
    now: deps.clock.now(),
    stuckAfterMs,
    batchWaitMs: BATCH_WAIT_MS,
  });
  await deps.queue.send(messages);
  logger.info("sweep done", { ...counts, sent: messages.length, stuckAfterMs });
  return { sent: messages.length };
};
