import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { OpenAiBatchCodec } from "../../functions/adapters/openai/batch-codec.ts";
import { BatchBodyWriter, type BatchBodyWriterOptions } from "../../functions/pipeline/batch-bodies.ts";
import type { BatchApi } from "../../functions/ports/batch-api.ts";
import { silentLogger } from "../../functions/ports/runtime.ts";
import { tempDir } from "./files.ts";
import { shardRecord } from "./state-store-contract.ts";

/**
 * A batch-mode shard (run r1, shard s1, one round) on the local stores, a clock the test moves, and the deps
 * that deferring a request and a batch tick need. `cleanup` removes the blob directory.
 */
export async function batchShard(
  api: BatchApi,
  options: { readonly prefix: string; readonly start: number; readonly bodies?: BatchBodyWriterOptions },
) {
  const dir = tempDir(options.prefix);
  let now = options.start;
  const clock = { now: () => now };
  const state = new SqliteStateStore(":memory:", { clock });
  const blobs = new FsBlobStore(dir.path);
  await state.createShard(shardRecord({ ingested: true, config: { rounds: 1, mode: "batch" } }));
  const deps = {
    state,
    blobs,
    clock,
    logger: silentLogger,
    defaults: {},
    batch: { api, codec: new OpenAiBatchCodec([]), bodies: new BatchBodyWriter(blobs, options.bodies) },
  };
  return { deps, state, blobs, clock, advance: (ms: number) => (now += ms), cleanup: dir.cleanup };
}
