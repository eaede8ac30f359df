import { createHash } from "node:crypto";
import { BatchProcessor, EventType, processPartialResponse } from "@aws-lambda-powertools/batch";
import { Logger as PowertoolsLogger } from "@aws-lambda-powertools/logger";
import { Metrics, MetricUnit } from "@aws-lambda-powertools/metrics";
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { S3Client } from "@aws-sdk/client-s3";
import {
  ChangeMessageVisibilityCommand,
  GetQueueUrlCommand,
  SendMessageCommand,
  SQSClient,
} from "@aws-sdk/client-sqs";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import type { Context, SQSBatchResponse, SQSEvent, SQSRecord } from "aws-lambda";
import type { z } from "zod";
import { DynamoRateGovernor } from "../adapters/aws/dynamodb-rate-governor.ts";
import { DynamoStateStore } from "../adapters/aws/dynamodb-state-store.ts";
import { S3BlobStore } from "../adapters/aws/s3-blob-store.ts";
import { readApiKey } from "../adapters/aws/secret-api-key.ts";
import { SqsWorkQueue } from "../adapters/aws/sqs-work-queue.ts";
import { GovernedPerModel } from "../adapters/governor/governed-llm.ts";
import { SharpImagePreparer } from "../adapters/images/sharp-image-preparer.ts";
import { OpenAiBatchCodec } from "../adapters/openai/batch-codec.ts";
import type { OpenAiClientOptions } from "../adapters/openai/client.ts";
import { OpenAiBatchApi } from "../adapters/openai/openai-batch-api.ts";
import { OpenAiLlm, type RateLimitSnapshot } from "../adapters/openai/openai-llm.ts";
import type { RunConfigInput } from "../evolution/config.ts";
import { BatchBodyWriter } from "../pipeline/batch-bodies.ts";
import { CompletionSizer } from "../pipeline/completion-sizer.ts";
import { runStage, type StageDeps } from "../pipeline/index.ts";
import type { BatchApi, BatchInfo } from "../ports/batch-api.ts";
import type { BlobStore } from "../ports/blob-store.ts";
import { InvalidInputError, NoRateBudgetError, NotYetError } from "../ports/errors.ts";
import type { Faults } from "../ports/faults.ts";
import { noFaults } from "../ports/faults.ts";
import type { Llm, LlmRequest, LlmResponse } from "../ports/llm.ts";
import type { Message, Stage, WorkQueue } from "../ports/messages.ts";
import { type Logger, systemClock } from "../ports/runtime.ts";
import { CountingLlm } from "./counting-llm.ts";
import { ENV, type LambdaEnv, readLambdaEnv } from "./env.ts";
import { FaultyQueue, faultsFromEnv } from "./faults.ts";
import { GatheredSends } from "./gathered-sends.ts";

/** The stage settings the environment may give (a claim's hold, the wait for images), only those it gives. */
const settingsOf = (config: LambdaEnv): Pick<StageDeps, "claimMs" | "imageWaitMs"> => {
  const claimMs = config[ENV.claimMs];
  const imageWaitMs = config[ENV.imageWaitMs];
  return {
    ...(claimMs === undefined ? {} : { claimMs }),
    ...(imageWaitMs === undefined ? {} : { imageWaitMs }),
  };
};

/** Our Logger port over Powertools' JSON logger. */
function portLogger(logger: PowertoolsLogger): Logger {
  return {
    debug: (message, fields) => logger.debug(message, { ...fields }),
    info: (message, fields) => logger.info(message, { ...fields }),
    warn: (message, fields) => logger.warn(message, { ...fields }),
    error: (message, fields) => logger.error(message, { ...fields }),
  };
}

/** Where both OpenAI adapters go, and with which key. */
export type Endpoint = Pick<OpenAiClientOptions, "apiKey" | "baseURL">;

/**
 * The key (from Secrets Manager, on first use, so functions without it still start) and the endpoint, for both
 * the Llm and the Batch API. Read at every use: readApiKey keeps the secret 5 minutes, so a key replaced in the
 * secret (a typo fixed, a leaked key rotated) reaches warm containers within that, where one read per container
 * kept the old key for hours and failed every sample with a 401.
 */
function endpointOf(env: LambdaEnv): () => Promise<Endpoint> {
  return async () => {
    const secret = env[ENV.openaiSecret];
    if (!secret) throw new InvalidInputError("this function was not granted the OpenAI key secret");
    const apiKey = await readApiKey(secret);
    const baseURL = env[ENV.openaiBaseUrl];
    return { apiKey, ...(baseURL ? { baseURL } : {}) };
  };
}

/** One `T` built per key: the same client while the key stays, a new one once the secret holds another. */
export function perKey<T>(
  endpoint: () => Promise<Endpoint>,
  build: (endpoint: Endpoint) => T,
): () => Promise<T> {
  let current: { readonly key: string; readonly value: T } | null = null;
  return async () => {
    const now = await endpoint();
    if (current?.key !== now.apiKey) current = { key: now.apiKey, value: build(now) };
    return current.value;
  };
}

/** The Llm over the endpoint, built on first use; passes the provider's rate-limit headers on. */
class SecretKeyLlm implements Llm {
  #built: OpenAiLlm | null = null;
  readonly #llm: () => Promise<OpenAiLlm>;
  constructor(endpoint: () => Promise<Endpoint>, env: LambdaEnv, logger: Logger) {
    this.#llm = perKey(endpoint, (now) => {
      this.#built = new OpenAiLlm({
        ...now,
        timeoutMs: env[ENV.llmTimeoutMs],
        // Under the shared rate governor, a 429 must reach it (to cut the rate), not be retried around it.
        maxRetries: rateLimited(env) ? 0 : env[ENV.llmMaxRetries],
        logger,
      });
      return this.#built;
    });
  }
  complete(request: LlmRequest): Promise<LlmResponse> {
    return this.#llm().then((llm) => llm.complete(request));
  }
  /** The provider's x-ratelimit-* headers of the last answer for `model`, for the rate governor; null before one. */
  lastRateLimit(model: string): RateLimitSnapshot | null {
    return this.#built?.lastRateLimit(model) ?? null;
  }
}

/** The Batch API over the same endpoint, built on first use: only the batcher ever calls it. */
class SecretKeyBatchApi implements BatchApi {
  readonly #api: () => Promise<BatchApi>;
  constructor(endpoint: () => Promise<Endpoint>, logger: Logger) {
    this.#api = perKey(endpoint, (now) => new OpenAiBatchApi({ ...now, logger }));
  }
  uploadFile(name: string, content: Uint8Array): Promise<string> {
    return this.#api().then((api) => api.uploadFile(name, content));
  }
  createBatch(inputFileId: string, metadata: Readonly<Record<string, string>>): Promise<BatchInfo> {
    return this.#api().then((api) => api.createBatch(inputFileId, metadata));
  }
  getBatch(id: string): Promise<BatchInfo> {
    return this.#api().then((api) => api.getBatch(id));
  }
  listBatches(since: number): Promise<BatchInfo[]> {
    return this.#api().then((api) => api.listBatches(since));
  }
  fileText(fileId: string): Promise<string> {
    return this.#api().then((api) => api.fileText(fileId));
  }
}

const rateLimited = (env: LambdaEnv): boolean =>
  env[ENV.tokensPerMinute] !== undefined || env[ENV.requestsPerMinute] !== undefined;

/** One rate budget per model, shared by every function through the table; none when no limit is set. */
function governedByTable(
  inner: Llm,
  env: LambdaEnv,
  client: DynamoDBDocumentClient,
): Llm & { flush(): Promise<void> } {
  const tokensPerMinute = env[ENV.tokensPerMinute];
  const requestsPerMinute = env[ENV.requestsPerMinute];
  if (!rateLimited(env)) return { complete: (request) => inner.complete(request), flush: async () => {} };
  return new GovernedPerModel(
    inner,
    (model) =>
      new DynamoRateGovernor({
        client,
        table: env[ENV.table],
        model,
        ...(tokensPerMinute === undefined ? {} : { tokensPerMinute }),
        ...(requestsPerMinute === undefined ? {} : { requestsPerMinute }),
      }),
  );
}

/** The longest a record's next-stage messages wait for the other records' to go in one SQS batch (GatheredSends). */
const GATHER_SENDS_MS = 2_000;
/**
 * The first retry's delay when the error names none (a 5xx, a reset), doubling per receive: 30 s, 1, 2 and 4
 * minutes, so the default 5 attempts outlast a provider's outage of about 7 minutes before the sample fails
 * for good. (From 2 s, they were spent in about 30 s.)
 */
const RETRY_BASE_MS = 30_000;
/** The longest a message waits for rate budget before it looks again. */
const BUDGET_RECHECK_MAX_SECONDS = 30;
/** Message attribute of a delayed copy: how many times in a row the message found no rate budget. */
const BUDGET_WAITS_ATTRIBUTE = "mmevol-budget-waits";

/**
 * How long a message that failed with a retryable error stays hidden before its `attempt`+1-th receive: the
 * provider's retry-after when it gave one, else RETRY_BASE_MS doubling. Whole seconds, 1 to 900 (SQS's cap).
 */
export function retryDelaySeconds(attempt: number, retryAfterMs: number | null): number {
  const ms = retryAfterMs ?? RETRY_BASE_MS * 2 ** Math.max(0, attempt - 1);
  return Math.min(900, Math.max(1, Math.ceil(ms / 1000)));
}

/**
 * The delay of a message's copy after it found no rate budget for the `waits`+1-th time in a row. The
 * budget's own wait (`retryAfterMs`) is for this call alone, while every message that found the budget empty
 * is waiting too: each look that finds none doubles the delay (1, 2, 4 ... s, jittered to between half and
 * all of it), so a crowd of waiters thins out instead of coming back every second. Whole seconds (SQS
 * DelaySeconds), at least 1, at most 30: a wait computed while the rate was cut is pessimistic, and looking
 * again costs only a receive.
 */
export function budgetDelaySeconds(waits: number, retryAfterMs: number | null, random = Math.random): number {
  const backoff = Math.min(2 ** Math.max(0, waits), BUDGET_RECHECK_MAX_SECONDS) * (0.5 + random() / 2);
  const budget = Math.ceil((retryAfterMs ?? 1_000) / 1000);
  return Math.min(BUDGET_RECHECK_MAX_SECONDS, Math.max(1, budget, Math.round(backoff)));
}

/** Blob store stand-in for functions that were given no bucket: any use is a wiring error. */
const noBucket: BlobStore = new Proxy({} as BlobStore, {
  get: () => () => {
    throw new Error("this function was not granted the bucket");
  },
});

export interface LambdaRuntime {
  readonly deps: StageDeps & { readonly queue: WorkQueue; readonly faults: Faults };
  readonly sqs: SQSClient;
  readonly llm: CountingLlm;
  /** Writes the refunds the shared rate governors held back; at the end of every invocation. */
  flushGovernors(): Promise<void>;
  readonly logger: PowertoolsLogger;
  readonly metrics: Metrics;
}

/** The composition root of every function: built once per container, from the validated environment. */
export function createLambdaRuntime(stage: Stage, env: NodeJS.ProcessEnv = process.env): LambdaRuntime {
  const config = readLambdaEnv(env);
  const logger = new PowertoolsLogger({ serviceName: "mmevol", persistentKeys: { stage } });
  const metrics = new Metrics({ namespace: "mmevol", serviceName: "mmevol", defaultDimensions: { stage } });
  const log = portLogger(logger);
  const bucket = config[ENV.bucket];
  const blobs: BlobStore = bucket ? new S3BlobStore({ client: new S3Client({}), bucket }) : noBucket;
  const documents = DynamoDBDocumentClient.from(new DynamoDBClient({}), {
    marshallOptions: { removeUndefinedValues: true },
  });
  const state = new DynamoStateStore({ client: documents, table: config[ENV.table] });
  const urls: Partial<Record<Stage, string>> = {};
  const setUrl = (kind: Stage, url: string | undefined) => {
    if (url) urls[kind] = url;
  };
  setUrl("ingest", config[ENV.ingestQueueUrl]);
  setUrl("evolve", config[ENV.evolveQueueUrl]);
  setUrl("judge", config[ENV.judgeQueueUrl]);
  setUrl("finalize", config[ENV.finalizeQueueUrl]);
  const sqs = new SQSClient({});
  const faults = faultsFromEnv(env);
  const sqsQueue = new SqsWorkQueue({ client: sqs, queueUrls: urls });
  const queue: WorkQueue = faults === noFaults ? sqsQueue : new FaultyQueue(sqsQueue, faults);
  const endpoint = endpointOf(config);
  const governed = governedByTable(new SecretKeyLlm(endpoint, config, log), config, documents);
  const llm = new CountingLlm(governed);
  const defaults: RunConfigInput = { ...(config[ENV.runDefaults] ?? {}) };
  const deps = {
    blobs,
    state,
    llm,
    // One image decoded at a time: a batch of ten records must fit in the function's memory whatever the images.
    images: new SharpImagePreparer({ blobs, cachePrefix: "work/images/", shrinksAtOnce: 1 }),
    clock: systemClock,
    logger: log,
    defaults,
    queue,
    faults,
    // Learns this container's completion lengths; a new container starts at the caps.
    sizer: new CompletionSizer(),
    // Batch mode: evolve and judge queue requests (encoding them); the batcher also calls the API.
    // The records of one invocation queue their bodies in one object.
    batch: {
      api: new SecretKeyBatchApi(endpoint, log),
      codec: new OpenAiBatchCodec(),
      bodies: new BatchBodyWriter(blobs),
    },
    ...settingsOf(config),
  };
  return { deps, sqs, llm, flushGovernors: () => governed.flush(), logger, metrics };
}

/**
 * An SQS handler over one stage: parse each body (zod), run the stage, send what it returns next, report
 * failed records so that only they are redelivered (and dead-lettered after maxReceiveCount).
 */
export function makeSqsHandler<S extends z.ZodType<Message>>(
  stage: Stage,
  toMessages: (record: SQSRecord) => readonly z.infer<S>[],
): (event: SQSEvent, context: Context) => Promise<SQSBatchResponse> {
  const runtime = createLambdaRuntime(stage);
  const { deps, sqs, llm, logger, metrics } = runtime;
  const queueUrls = new Map<string, Promise<string>>();
  const queueUrlOf = (arn: string): Promise<string> => {
    let url = queueUrls.get(arn);
    if (!url) {
      const [, , , , account, name] = arn.split(":");
      url = sqs
        .send(new GetQueueUrlCommand({ QueueName: name, QueueOwnerAWSAccountId: account }))
        .then((r) => r.QueueUrl ?? Promise.reject(new Error(`no URL for ${arn}`)));
      queueUrls.set(arn, url);
    }
    return url;
  };

  /**
   * A retryable failure goes back to the queue hidden for the provider's retry-after (or a backoff) instead of
   * the queue's long visibility timeout; no Lambda sleeps waiting for it.
   */
  const delayRetry = async (record: SQSRecord, error: unknown, attempt: number) => {
    if (typeof error !== "object" || error === null || !("retryable" in error) || error.retryable !== true)
      return;
    const hinted =
      "retryAfterMs" in error && typeof error.retryAfterMs === "number" ? error.retryAfterMs : null;
    const seconds = retryDelaySeconds(attempt, hinted);
    try {
      await sqs.send(
        new ChangeMessageVisibilityCommand({
          QueueUrl: await queueUrlOf(record.eventSourceARN),
          ReceiptHandle: record.receiptHandle,
          VisibilityTimeout: seconds,
        }),
      );
    } catch (visibilityError) {
      logger.warn("could not shorten the retry delay", { error: String(visibilityError) });
    }
  };

  const requeueDelayed = async (record: SQSRecord, error: NotYetError): Promise<boolean> => {
    const waits = Number(record.messageAttributes?.[BUDGET_WAITS_ATTRIBUTE]?.stringValue) || 0;
    // A budget waiter backs off (see budgetDelaySeconds); other work comes back when it said it might be done.
    const budget = error instanceof NoRateBudgetError;
    const seconds = budget
      ? budgetDelaySeconds(waits, error.retryAfterMs)
      : retryDelaySeconds(1, error.retryAfterMs);
    try {
      await sqs.send(
        new SendMessageCommand({
          QueueUrl: await queueUrlOf(record.eventSourceARN),
          MessageBody: record.body,
          DelaySeconds: seconds,
          MessageAttributes: {
            [BUDGET_WAITS_ATTRIBUTE]: { DataType: "Number", StringValue: String(budget ? waits + 1 : waits) },
          },
        }),
      );
      metrics.addMetric(budget ? "rate_budget_waits" : "input_waits", MetricUnit.Count, 1);
      logger.debug(budget ? "no rate budget, message delayed" : "not ready yet, message delayed", {
        messageId: record.messageId,
        seconds,
        ...(budget ? {} : { reason: error.message }),
      });
      return true;
    } catch (sendError) {
      logger.warn("could not delay the message; it returns by visibility", { error: String(sendError) });
      return false;
    }
  };

  /**
   * Outcomes of one invocation's messages, logged once at its end: a line per record cost more than the work
   * it logged. A record with no message for this stage (an S3 event for an image) counts as "no message".
   */
  type Outcomes = Map<string, number>;
  const count = (outcomes: Outcomes, outcome: string) =>
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
  const recordHandler = async (
    record: SQSRecord,
    context: Context,
    outcomes: Outcomes,
    sends: GatheredSends,
  ) => {
    const attempt = Number(record.attributes.ApproximateReceiveCount) || 1;
    try {
      const messages = toMessages(record);
      if (messages.length === 0) count(outcomes, "no message");
      for (const message of messages) {
        const stageDeps = { ...deps, remainingMs: () => context.getRemainingTimeInMillis() };
        // One receive of one message: a receipt handle is new on every receive.
        const receive = createHash("sha256").update(record.receiptHandle).digest("hex").slice(0, 16);
        const result = await runStage(message, attempt, stageDeps, `${record.messageId}#${receive}`);
        await sends.send(result.next);
        logger.debug("stage done", {
          messageId: record.messageId,
          outcome: result.outcome,
          next: result.next.length,
        });
        count(outcomes, result.outcome);
        metrics.addMetric(`outcome_${result.outcome.split(":")[0]}`, MetricUnit.Count, 1);
      }
    } catch (error) {
      // No rate budget (or an image still being uploaded): a copy goes back on the queue, delayed until the
      // budget refills, and this receive succeeds. Waiting by visibility would count a receive and dead-letter a
      // message that only waited.
      if (error instanceof NotYetError && (await requeueDelayed(record, error))) {
        count(
          outcomes,
          error instanceof NoRateBudgetError ? "waiting for rate budget" : "waiting for its input",
        );
        return;
      }
      logger.warn("record failed, back to the queue", {
        messageId: record.messageId,
        attempt,
        error: error instanceof Error ? error.message : String(error),
      });
      await delayRetry(record, error, attempt);
      throw error;
    } finally {
      sends.finished();
    }
  };

  return async (event, context) => {
    logger.addContext(context);
    const before = { ...llm.totals };
    const outcomes: Outcomes = new Map();
    const sends = new GatheredSends(deps.queue, event.Records.length, GATHER_SENDS_MS);
    let failed: number | null = null;
    try {
      // One processor per invocation: it keeps the batch's successes and failures as state, and invocations
      // that overlap in one process (the emulator's pollers; any future in-process concurrency) must not share
      // it, or one invocation's failures are wiped by another's and their messages deleted as done.
      const response = await processPartialResponse(
        event,
        (record: SQSRecord) => recordHandler(record, context, outcomes, sends),
        new BatchProcessor(EventType.SQS),
        {
          context,
          throwOnFullBatchFailure: false,
        },
      );
      failed = response.batchItemFailures.length;
      return response;
    } finally {
      // One line per invocation; each record's own line is at DEBUG, and each failure has its WARN line.
      logger.info("records done", {
        records: event.Records.length,
        failed,
        outcomes: Object.fromEntries(outcomes),
      });
      try {
        await runtime.flushGovernors();
      } catch (error) {
        // Budget held back until this container's next call: the others see a little less, never more.
        logger.warn("could not write the rate budget's refunds", { error: String(error) });
      }
      const t = llm.totals;
      if (t.calls > before.calls) {
        metrics.addMetric("llm_calls", MetricUnit.Count, t.calls - before.calls);
        metrics.addMetric("prompt_tokens", MetricUnit.Count, t.promptTokens - before.promptTokens);
        metrics.addMetric(
          "completion_tokens",
          MetricUnit.Count,
          t.completionTokens - before.completionTokens,
        );
        metrics.addMetric("cost_usd", MetricUnit.NoUnit, t.costUsd - before.costUsd);
      }
      // Nothing to publish (every record failed before it counted): Powertools would warn of empty metrics.
      if (metrics.hasStoredMetrics()) metrics.publishStoredMetrics();
    }
  };
}
