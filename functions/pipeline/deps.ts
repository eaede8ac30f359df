import type { RunConfigInput } from "../evolution/config.ts";
import type { BatchPorts } from "../ports/batch-api.ts";
import type { BlobStore } from "../ports/blob-store.ts";
import type { Faults } from "../ports/faults.ts";
import type { ImagePreparer } from "../ports/images.ts";
import type { Llm } from "../ports/llm.ts";
import type { Message, WorkQueue } from "../ports/messages.ts";
import type { Clock, Logger } from "../ports/runtime.ts";
import type { StateStore } from "../ports/state-store.ts";
import type { BatchBodyWriter } from "./batch-bodies.ts";
import type { CompletionSizer } from "./completion-sizer.ts";

/**
 * Batch mode: the Batch API and wire format, and the writer of queued requests' bodies (one per process, so
 * bodies queued together share one object).
 */
export interface BatchDeps extends BatchPorts {
  readonly bodies: BatchBodyWriter;
}

/** What every stage may use: ports only, built once by a composition root. */
export interface StageDeps {
  readonly blobs: BlobStore;
  readonly state: StateStore;
  readonly llm: Llm;
  readonly images: ImagePreparer;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Settings below a run's own run.json: the deployment's or the CLI's. */
  readonly defaults: RunConfigInput;
  /** Ingest writes samples in batches of this size and yields between them. */
  readonly ingestBatchSize?: number;
  /**
   * Milliseconds left before the runtime stops this invocation (Lambda's remaining time); absent locally.
   * Ingest hands the rest of a large shard to a continuation message before it runs out.
   */
  readonly remainingMs?: () => number;
  /** How long a receive may hold a request it pays for (below the queue's visibility timeout). */
  readonly claimMs?: number;
  /**
   * A deployed stack's wait for images: an image not found within this long after its shard arrived is looked
   * for again (ImageNotUploadedError, every tenth of it, at most a minute apart), since the shard may have been
   * uploaded before its images; after it, the sample passes through as for any unusable image. Absent (a
   * local run, whose images are files in place): no wait.
   */
  readonly imageWaitMs?: number;
  /** Sizes online calls' max_tokens from the completions seen (one per process); absent: always the caps. */
  readonly sizer?: CompletionSizer;
  /** Batch mode's Batch API and wire format; absent when the runtime offers online calls only. */
  readonly batch?: BatchDeps;
  /** Test-only fault injection at step boundaries; absent in production. */
  readonly faults?: Faults;
}

/** What a stage asks the runtime to do next; a stage never calls the next stage itself. */
export interface StageResult {
  readonly next: readonly Message[];
  /** A short word for logs and progress: what happened. */
  readonly outcome: string;
}

export interface StageInput<M> {
  readonly message: M;
  /** 1 on first delivery; the runtime counts redeliveries. */
  readonly attempt: number;
  /** The delivery's identity, `<message>#<receive>`: one receive of one queue message (see messageOf). */
  readonly delivery?: string;
}

/** A delivery is `<message>#<receive>`: the message part survives redelivery, the receive part does not. */
export const messageOf = (delivery: string): string => delivery.split("#")[0] ?? delivery;

export type { WorkQueue };
