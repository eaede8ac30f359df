import { z } from "zod";

/** Queue messages carry keys only, never sample bodies or images. */
export const IngestMessage = z.object({
  kind: z.literal("ingest"),
  run: z.string().min(1),
  shard: z.string().min(1),
  /** The shard's blob key, e.g. `seeds/<run>/<shard>.jsonl`. */
  key: z.string().min(1),
  /** The object's ETag when the event carried one: the same key uploaded again is a new shard version. */
  etag: z.string().optional(),
  /** Set on a continuation: the 1-based record to resume at, after an invocation ran out of time. */
  from: z.number().int().positive().optional(),
});
export const EvolveMessage = z.object({
  kind: z.literal("evolve"),
  run: z.string().min(1),
  shard: z.string().min(1),
  sample: z.string().min(1),
  round: z.number().int().positive(),
});
export const JudgeMessage = z.object({
  kind: z.literal("judge"),
  run: z.string().min(1),
  shard: z.string().min(1),
  sample: z.string().min(1),
  round: z.number().int().positive(),
});
export const FinalizeMessage = z.object({
  kind: z.literal("finalize"),
  run: z.string().min(1),
  shard: z.string().min(1),
});
export const Message = z.discriminatedUnion("kind", [
  IngestMessage,
  EvolveMessage,
  JudgeMessage,
  FinalizeMessage,
]);

export type IngestMessage = z.infer<typeof IngestMessage>;
export type EvolveMessage = z.infer<typeof EvolveMessage>;
export type JudgeMessage = z.infer<typeof JudgeMessage>;
export type FinalizeMessage = z.infer<typeof FinalizeMessage>;
export type Message = z.infer<typeof Message>;
export type Stage = Message["kind"];

/** Sends messages to the queue of their stage (`kind`). */
export interface WorkQueue {
  send(messages: readonly Message[]): Promise<void>;
}
