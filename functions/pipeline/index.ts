import type { Message, WorkQueue } from "../ports/messages.ts";
import type { StageDeps, StageResult } from "./deps.ts";
import { evolveSample } from "./evolve.ts";
import { finalizeShard } from "./finalize.ts";
import { ingestShard } from "./ingest.ts";
import { judgeSample } from "./judge.ts";

export type { StageDeps, StageResult } from "./deps.ts";
export { evolveSample } from "./evolve.ts";
export { finalizeShard } from "./finalize.ts";
export { ingestShard } from "./ingest.ts";
export { judgeSample } from "./judge.ts";
export { layout, parseSeedKey, resolveRunConfig } from "./shard-config.ts";

/** Runs the stage a message is for. Both runtimes route every message through here. */
export function runStage(
  message: Message,
  attempt: number,
  deps: StageDeps & { readonly queue: WorkQueue },
): Promise<StageResult> {
  switch (message.kind) {
    case "ingest":
      return ingestShard({ message, attempt }, deps);
    case "evolve":
      return evolveSample({ message, attempt }, deps);
    case "judge":
      return judgeSample({ message, attempt }, deps);
    case "finalize":
      return finalizeShard({ message, attempt }, deps);
  }
}

/** Messages that pick up every unfinished piece of work from the state alone: the sweeper and resume use it. */
export async function recoverMessages(deps: Pick<StageDeps, "state">, run?: string): Promise<Message[]> {
  const messages: Message[] = [];
  for (const shard of await deps.state.listShards(run)) {
    if (shard.finalized) continue;
    if (!shard.ingested) {
      messages.push({ kind: "ingest", run: shard.run, shard: shard.shard, key: shard.key });
      continue;
    }
    if (shard.pending === 0) {
      messages.push({ kind: "finalize", run: shard.run, shard: shard.shard });
      continue;
    }
    for await (const sample of deps.state.listSamples(shard.run, shard.shard)) {
      const base = { run: shard.run, shard: shard.shard, sample: sample.key };
      if (sample.status === "INGESTED") messages.push({ kind: "evolve", ...base, round: 1 });
      else if (sample.status === "EVOLVING") messages.push({ kind: "evolve", ...base, round: sample.round });
      else if (sample.status === "JUDGING") messages.push({ kind: "judge", ...base, round: sample.round });
    }
  }
  return messages;
}
