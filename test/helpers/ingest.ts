import type { BlobStore } from "../../functions/ports/blob-store.ts";
import type { ImagePreparer } from "../../functions/ports/images.ts";
import type { Llm } from "../../functions/ports/llm.ts";
import type { WorkQueue } from "../../functions/ports/messages.ts";
import { silentLogger, systemClock } from "../../functions/ports/runtime.ts";
import type { StateStore } from "../../functions/ports/state-store.ts";

const llm: Llm = { complete: () => Promise.reject(new Error("ingest must not call the LLM")) };
const images: ImagePreparer = { prepare: () => Promise.reject(new Error("ingest must not prepare images")) };

/** What ingestShard needs, with an LLM and an image preparer that fail if ingest ever calls them. */
export function ingestOnlyDeps<Queue extends WorkQueue>(blobs: BlobStore, state: StateStore, queue: Queue) {
  return { blobs, state, llm, images, clock: systemClock, logger: silentLogger, defaults: {}, queue };
}
