import type { StageDeps, StageResult } from "../../functions/pipeline/deps.ts";
import { finalizeShard } from "../../functions/pipeline/finalize.ts";
import type { BlobStore } from "../../functions/ports/blob-store.ts";
import { silentLogger, systemClock } from "../../functions/ports/runtime.ts";
import type { StateStore } from "../../functions/ports/state-store.ts";

/** What the finalize stage uses of StageDeps: the state, the blobs, a clock and a logger. */
export const finalizeDeps = (state: StateStore, blobs: BlobStore): StageDeps =>
  ({ state, blobs, clock: systemClock, logger: silentLogger, defaults: {} }) as unknown as StageDeps;

/** Runs the finalize of shard `run`/`shard`, as one receive (`delivery`, `<message>#<receive>`) of its message. */
export const runFinalize = (
  deps: StageDeps,
  options: { readonly run?: string; readonly shard?: string; readonly delivery?: string } = {},
): Promise<StageResult> =>
  finalizeShard(
    {
      message: { kind: "finalize", run: options.run ?? "r1", shard: options.shard ?? "s1" },
      attempt: 1,
      ...(options.delivery === undefined ? {} : { delivery: options.delivery }),
    },
    deps,
  );
