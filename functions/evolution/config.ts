import { z } from "zod";

/** Direction weights of METHOD.md §3: fine-grained perception 0.5, cognitive reasoning 0.25, interaction 0.25. */
export const DirectionWeights = z
  .object({
    perception: z.number().nonnegative(),
    reasoning: z.number().nonnegative(),
    interaction: z.number().nonnegative(),
  })
  .refine((w) => w.perception + w.reasoning + w.interaction > 0, "direction weights must not all be zero");
export type DirectionWeights = z.infer<typeof DirectionWeights>;

export const ModelPrice = z.object({
  /** US dollars per million tokens. */
  input: z.number().nonnegative(),
  cachedInput: z.number().nonnegative(),
  output: z.number().nonnegative(),
  batchInput: z.number().nonnegative(),
  batchOutput: z.number().nonnegative(),
});
export type ModelPrice = z.infer<typeof ModelPrice>;

/** Run settings (METHOD.md §6 defaults); a `run.json` or CLI flags override them. */
/** The most `maxAttempts` a run may ask for: one less than the deployed queues' deliveries (lib/stage-queue.ts). */
export const MAX_ATTEMPTS = 9;

export const RunConfig = z.strictObject({
  model: z.string().min(1).default("gpt-4o-mini"),
  /** The judge's model; the evolution model when absent. */
  judgeModel: z.string().min(1).optional(),
  rounds: z.number().int().min(1).max(10).default(3),
  weights: DirectionWeights.default({ perception: 0.5, reasoning: 0.25, interaction: 0.25 }),
  seed: z.number().int().default(3407),
  temperature: z.number().min(0).max(2).default(1),
  /** The most an evolve answer may use: the cap `max_tokens` is sized under (see `sizeMaxTokens`). */
  maxTokens: z.number().int().positive().default(4096),
  judgeMaxTokens: z.number().int().positive().default(2048),
  /**
   * Online calls go out with `max_tokens` sized from the completions seen so far (1.25 times the longest
   * recent one), under the caps above: the provider's rate limiter charges the whole `max_tokens`, so more
   * calls fit its limit. An answer cut at the smaller size is asked again at the cap. Off: always the caps.
   */
  sizeMaxTokens: z.boolean().default(true),
  imageDetail: z.enum(["low", "high", "auto"]).default("low"),
  maxImageSide: z.number().int().min(64).max(4096).default(512),
  /**
   * Image paths resolve under this root only (a blob key prefix; "" is the store's root). When absent, ingest
   * sets it to the shard's own folder, so paths are relative to the shard as in LLaVA datasets.
   */
  imageRoot: z.string().optional(),
  /**
   * Input size limits: shards come from users, so every size that costs memory, time or money is capped and
   * an input over a cap gets an error naming the cap, rather than exhausting a Lambda or the budget.
   * A shard larger than this is not read at all: the report says it was refused. 2 GiB.
   */
  maxShardBytes: z
    .number()
    .int()
    .positive()
    .default(2 * 1024 ** 3),
  /**
   * A longer line (or JSON array element) is rejected without being parsed. 256 KiB, and at most that: the
   * deployed state keeps a sample in one DynamoDB item (400 KB at most, compressed), and a line whose record
   * would not fit failed every write of its whole ingest batch, again and again, so its shard never finished.
   */
  maxLineBytes: z
    .number()
    .int()
    .positive()
    .max(256 * 1024)
    .default(256 * 1024),
  /** A larger image file is refused from its size alone, before it is read; the sample passes through. 20 MiB. */
  maxImageBytes: z
    .number()
    .int()
    .positive()
    .default(20 * 1024 ** 2),
  /**
   * An image whose header declares more pixels is refused before it is decoded (a decompression bomb: a
   * small file that would decode to gigabytes); the sample passes through. 50 million pixels.
   */
  maxImagePixels: z.number().int().positive().default(50_000_000),
  /**
   * Rule pre-filters (METHOD.md §4: empty or copied answers, refusals, leaked scaffolding, invented boxes,
   * unchanged items) drop candidates before the judge is paid for them. Off only to measure what they save.
   */
  preFilter: z.boolean().default(true),
  /** How many times a schema-invalid answer is asked again before the sample round fails. */
  maxAnswerRetries: z.number().int().min(0).max(10).default(2),
  /**
   * How many deliveries of a stage message before the sample is FAILED. At most MAX_ATTEMPTS: the deployed
   * queues dead-letter a message on its next delivery, and a sample its handler never failed would be sent
   * again by the sweeper, its deliveries counted from 1, for ever.
   */
  maxAttempts: z.number().int().min(1).max(MAX_ATTEMPTS).default(5),
  /** Per-model price overrides, US dollars per million tokens. */
  prices: z.record(z.string(), ModelPrice).default({}),
  dryRun: z.boolean().default(false),
  /**
   * `online` asks each request as its sample reaches it; `batch` collects each round of a shard into the
   * provider's Batch API (half price, answers within 24 h) and applies the answers when they come back.
   */
  mode: z.enum(["online", "batch"]).default("online"),
  /** Batch mode: requests that failed or expired in this many batches are asked online instead. */
  maxBatchTries: z.number().int().min(1).max(10).default(2),
});
export type RunConfig = z.infer<typeof RunConfig>;
export type RunConfigInput = z.input<typeof RunConfig>;

export const judgeModelOf = (config: RunConfig): string => config.judgeModel ?? config.model;
