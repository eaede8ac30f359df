import { z } from "zod";

/**
 * Environment variable names, shared by the CDK stack (which sets them) and the Lambda runtime (which reads
 * them), so the two cannot drift apart. A construct that grants access to a resource also sets its variable.
 */
export const ENV = {
  /** The data bucket: seeds/, evolved/, reports/, errors/, work/. */
  bucket: "MMEVOL_BUCKET",
  /** The single DynamoDB table. */
  table: "MMEVOL_TABLE",
  ingestQueueUrl: "MMEVOL_INGEST_QUEUE_URL",
  evolveQueueUrl: "MMEVOL_EVOLVE_QUEUE_URL",
  judgeQueueUrl: "MMEVOL_JUDGE_QUEUE_URL",
  finalizeQueueUrl: "MMEVOL_FINALIZE_QUEUE_URL",
  /** ARN (or name) of the Secrets Manager secret holding the OpenAI key; only LLM-calling functions get it. */
  openaiSecret: "MMEVOL_OPENAI_SECRET",
  /** Optional OpenAI-compatible base URL. */
  openaiBaseUrl: "MMEVOL_OPENAI_BASE_URL",
  /** JSON of the stack's run defaults (a RunConfig input: model, rounds, weights, ...). */
  runDefaults: "MMEVOL_RUN_DEFAULTS",
  /** Timeout of one LLM call attempt, ms, and the client's own retries. */
  llmTimeoutMs: "MMEVOL_LLM_TIMEOUT_MS",
  llmMaxRetries: "MMEVOL_LLM_MAX_RETRIES",
  /** How long one receive may hold a request it pays for; must stay below the queue's visibility timeout. */
  claimMs: "MMEVOL_CLAIM_MS",
  /** Evolve: how long after its shard arrived a missing image is looked for again (an upload still running). */
  imageWaitMs: "MMEVOL_IMAGE_WAIT_MS",
  /** The sweeper re-sends work whose state has not moved for this many ms. */
  sweepAfterMs: "MMEVOL_SWEEP_AFTER_MS",
  /** Batch mode: a shard's round is submitted once no request was added for this many ms (default 60 000). */
  batchSettleMs: "MMEVOL_BATCH_SETTLE_MS",
  /** Batch mode: the first poll delay of a batch, ms, doubling per poll up to 10 minutes (default 30 000). */
  batchPollMs: "MMEVOL_BATCH_POLL_MS",
  /** Rate governor shared through the table: the model's tokens and requests per minute (absent: no governor). */
  tokensPerMinute: "MMEVOL_TOKENS_PER_MINUTE",
  requestsPerMinute: "MMEVOL_REQUESTS_PER_MINUTE",
} as const;

export type EnvName = (typeof ENV)[keyof typeof ENV];

const jsonObject = z.string().transform((text, ctx) => {
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value === "object" && value !== null && !Array.isArray(value)) return { ...value };
  } catch {
    // reported below
  }
  ctx.addIssue({ code: "custom", message: "expected a JSON object" });
  return z.NEVER;
});

/** What a Lambda function may find in its environment; each function gets only what it needs. */
export const LambdaEnv = z.object({
  [ENV.bucket]: z.string().min(1).optional(),
  [ENV.table]: z.string().min(1),
  [ENV.ingestQueueUrl]: z.string().min(1).optional(),
  [ENV.evolveQueueUrl]: z.string().min(1).optional(),
  [ENV.judgeQueueUrl]: z.string().min(1).optional(),
  [ENV.finalizeQueueUrl]: z.string().min(1).optional(),
  [ENV.openaiSecret]: z.string().min(1).optional(),
  [ENV.openaiBaseUrl]: z.string().url().optional(),
  [ENV.runDefaults]: jsonObject.optional(),
  [ENV.llmTimeoutMs]: z.coerce.number().int().positive().default(60_000),
  [ENV.llmMaxRetries]: z.coerce.number().int().nonnegative().default(1),
  [ENV.claimMs]: z.coerce.number().int().positive().optional(),
  [ENV.imageWaitMs]: z.coerce.number().int().nonnegative().optional(),
  [ENV.sweepAfterMs]: z.coerce.number().int().positive().optional(),
  [ENV.batchSettleMs]: z.coerce.number().int().nonnegative().optional(),
  [ENV.batchPollMs]: z.coerce.number().int().positive().optional(),
  [ENV.tokensPerMinute]: z.coerce.number().int().positive().optional(),
  [ENV.requestsPerMinute]: z.coerce.number().int().positive().optional(),
});
export type LambdaEnv = z.infer<typeof LambdaEnv>;

/** Reads and validates the environment once, with one clear message naming every problem. */
export function readLambdaEnv(env: NodeJS.ProcessEnv = process.env): LambdaEnv {
  const result = LambdaEnv.safeParse(env);
  if (!result.success) {
    const problems = result.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ");
    throw new Error(`invalid Lambda environment: ${problems}`);
  }
  return result.data;
}

/** The LLM client's budget: the function timeout must exceed timeout x (retries + 1) plus state writes. */
export const LLM_TIMEOUT_MS = 60_000;
export const LLM_MAX_RETRIES = 1;
export const LLM_FUNCTION_TIMEOUT_SECONDS = Math.ceil((LLM_TIMEOUT_MS * (LLM_MAX_RETRIES + 1)) / 1000) + 60;

/**
 * When the deployed sweeper takes work as stuck. A message legitimately waits in a throttled queue and retries
 * with the queue's visibility timeout (minutes each), so the deadline is long; a re-send is harmless anyway.
 */
export const SWEEP_AFTER_MS = 2 * 60 * 60_000;
/**
 * How long the deployed evolve stage looks for an image that is not in the bucket yet after its shard arrived:
 * `aws s3 cp --recursive` of a folder may upload the shard first and its images over the next minutes. Past
 * it, the sample passes through as for any unusable image. Well under SWEEP_AFTER_MS: a waiting sample's state
 * does not move.
 */
export const IMAGE_WAIT_MS = 30 * 60_000;
/**
 * A sample of a shard with a batch open is stuck only after this long: the provider's 24-hour batch window,
 * and an hour to apply the answers.
 */
export const BATCH_WAIT_MS = 25 * 60 * 60_000;
