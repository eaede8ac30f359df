import type { Message, WorkQueue } from "../ports/messages.ts";
import type { StageDeps, StageResult } from "./deps.ts";
import { evolveSample } from "./evolve.ts";
import { finalizeShard } from "./finalize.ts";
import { ingestShard } from "./ingest.ts";
import { judgeSample } from "./judge.ts";

export {
  BatchTickError,
  type BatchTickResult,
  batchTick,
  DeferredToBatchError,
} from "./batch.ts";
export type { StageDeps, StageResult } from "./deps.ts";
export { evolveSample } from "./evolve.ts";
export { finalizeShard } from "./finalize.ts";
export { ingestShard, shardSettings } from "./ingest.ts";
export { judgeSample } from "./judge.ts";
export { layout, parseSeedKey, resolveRunConfig } from "./shard-config.ts";
export {
  nextMessageOf,
  recoverMessages,
  type SweepCounts,
  type SweepOptions,
  type SweepResult,
  shardMessageOf,
  sweepStuck,
  workKeyOf,
} from "./sweep.ts";

/** Runs the stage a message is for. Both runtimes route every message through here. */
export function runStage(
  message: Message,
  attempt: number,
  deps: StageDeps & { readonly queue: WorkQueue },
  delivery?: string,
): Promise<StageResult> {
  const input = delivery === undefined ? { attempt } : { attempt, delivery };
  switch (message.kind) {
    case "ingest":
      return ingestShard({ message, ...input }, deps);
    case "evolve":
      return evolveSample({ message, ...input }, deps);
    case "judge":
      return judgeSample({ message, ...input }, deps);
    case "finalize":
      return finalizeShard({ message, ...input }, deps);
  }
}
