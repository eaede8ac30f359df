import { z } from "zod";

/** One solving step behind an answer; `manipulation` is a pseudo call such as `Grounding(red mug)->bbox_1` or `None`. */
export const Step = z.object({
  manipulation: z.string(),
  description: z.string(),
});
export type Step = z.infer<typeof Step>;

export const DIRECTIONS = ["perception", "reasoning", "interaction"] as const;
export const Direction = z.enum(DIRECTIONS);
export type Direction = z.infer<typeof Direction>;

/** The fields of an item that the model writes (METHOD.md §1). */
export const ItemContent = z.object({
  question: z.string(),
  answer: z.string(),
  steps: z.array(Step),
  objects: z.array(z.string()),
  skills: z.array(z.string()),
  format: z.string(),
  imagePosition: z.string(),
});
export type ItemContent = z.infer<typeof ItemContent>;

/** An item with its identity and lineage. */
export const Item = ItemContent.extend({
  id: z.string(),
  parent: z.string().nullable(),
  score: z.number().nullable().optional(),
  reason: z.string().optional(),
});
export type Item = z.infer<typeof Item>;

/** A box normalised to 0..1: [x1, y1, x2, y2]. */
export const Box = z.object({
  label: z.string(),
  bbox: z.tuple([z.number(), z.number(), z.number(), z.number()]),
});
export type Box = z.infer<typeof Box>;

/** One version of a sample: v0 is the seed, v1..vR the kept items of each round. */
export const Version = z.object({
  round: z.number().int().nonnegative(),
  direction: Direction.nullable(),
  /** The round whose version this one was evolved from (null for the seed). */
  from: z.number().int().nonnegative().nullable(),
  items: z.array(Item),
});
export type Version = z.infer<typeof Version>;

/** A rewritten item the judge looked at, kept or not, for the lineage. */
export const Verdict = z.object({
  id: z.string(),
  parent: z.string().nullable(),
  improved: z.boolean(),
  score: z.number(),
  reason: z.string(),
  /** "judge" when the model decided, "rule" when a pre-filter dropped it unpaid. */
  by: z.enum(["judge", "rule"]),
});
export type Verdict = z.infer<typeof Verdict>;

export const RoundRecord = z.object({
  round: z.number().int().positive(),
  direction: Direction,
  from: z.number().int().nonnegative(),
  candidates: z.array(Item),
  verdicts: z.array(Verdict),
  kept: z.number().int().nonnegative(),
});
export type RoundRecord = z.infer<typeof RoundRecord>;

/** A sample in the internal model: an image (or none) and its items. */
export const Sample = z.object({
  id: z.string(),
  /** 1-based line of the shard (JSONL) or 0-based index (JSON array) the sample came from. */
  line: z.number().int().nonnegative(),
  images: z.array(z.string()),
  caption: z.string().nullable(),
  boxes: z.array(Box),
  items: z.array(Item),
  /** Fields of the input record we do not interpret, kept for the way back. */
  extra: z.record(z.string(), z.unknown()),
  /** The input format, so output records look like the input. */
  source: z.enum(["llava", "mmevol"]),
});
export type Sample = z.infer<typeof Sample>;
