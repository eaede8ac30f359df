import { CfnOutput, Duration, RemovalPolicy, Stack, type StackProps, Validations } from "aws-cdk-lib";
import { ComparisonOperator, TreatMissingData } from "aws-cdk-lib/aws-cloudwatch";
import { AttributeType, Billing, TableV2 } from "aws-cdk-lib/aws-dynamodb";
import { Rule, Schedule } from "aws-cdk-lib/aws-events";
import { LambdaFunction } from "aws-cdk-lib/aws-events-targets";
import type { RetentionDays } from "aws-cdk-lib/aws-logs";
import {
  BlockPublicAccess,
  Bucket,
  BucketEncryption,
  EventType,
  type IBucket,
  ObjectOwnership,
} from "aws-cdk-lib/aws-s3";
import { SqsDestination } from "aws-cdk-lib/aws-s3-notifications";
import { Secret } from "aws-cdk-lib/aws-secretsmanager";
import type { Construct } from "constructs";
import { TABLE_SCHEMA } from "../functions/adapters/aws/table-schema.ts";
import { type DirectionWeights, RunConfig } from "../functions/evolution/config.ts";
import {
  ENV,
  IMAGE_WAIT_MS,
  LLM_FUNCTION_TIMEOUT_SECONDS,
  LLM_MAX_RETRIES,
  LLM_TIMEOUT_MS,
  SWEEP_AFTER_MS,
} from "../functions/runtime/env.ts";
import { stageConcurrency } from "./concurrency.ts";
import { describeIssues, StackSettingsError } from "./context.ts";
import { STAGES, StageFunction, type StageName } from "./stage-function.ts";
import { StageQueue } from "./stage-queue.ts";

export interface MmevolStackProps extends StackProps {
  /** Model for evolution and judging. @default "gpt-4o-mini" */
  readonly model?: string;
  /** OpenAI-compatible base URL (vLLM, LiteLLM, ...). @default the OpenAI API */
  readonly baseUrl?: string;
  /** Evolution rounds per sample. @default 3 */
  readonly rounds?: number;
  /** Direction weights. @default { perception: 0.5, reasoning: 0.25, interaction: 0.25 } */
  readonly weights?: DirectionWeights;
  /** Seed of the direction choice. @default 3407 */
  readonly seed?: number;
  /**
   * `batch` sends each round through the provider's Batch API (half price, answers within 24 h); a run's
   * run.json may still choose either. @default "online"
   */
  readonly mode?: "online" | "batch";
  /** The API key's tokens-per-minute limit; sizes evolve/judge concurrency. @default 2_000_000 */
  readonly tokensPerMinute?: number;
  /** The API key's requests-per-minute limit. @default 5_000 */
  readonly requestsPerMinute?: number;
  /**
   * Records per evolve invocation (1..10), processed in parallel. An invocation waits on the model, so it is
   * billed about as long for ten records as for one: larger batches cut Lambda's cost per record. @default 10
   */
  readonly evolveBatchSize?: number;
  /** Records per judge invocation (1..10), processed in parallel. @default 10 */
  readonly judgeBatchSize?: number;
  /** What happens to the data bucket, its log bucket and the table when the stack is deleted. @default RETAIN */
  readonly dataRemovalPolicy?: RemovalPolicy;
  /** Lambda log retention. @default RetentionDays.ONE_MONTH */
  readonly logRetention?: RetentionDays;
}

export const DEFAULT_TOKENS_PER_MINUTE = 2_000_000;
export const DEFAULT_REQUESTS_PER_MINUTE = 5_000;
/** Per-call reservations against the token limit: prompt with a low-detail image plus max_tokens; text judge. */
export const EVOLVE_TOKENS_PER_CALL = 7_000;
export const JUDGE_TOKENS_PER_CALL = 3_500;
export const SECONDS_PER_CALL = 10;
/**
 * Evolve and judge wait up to this long to fill a batch: a few seconds next to a model call of several, and it
 * turns a trickle of messages into full invocations, each billed once for all of its records' waits.
 */
const LLM_BATCHING_WINDOW = Duration.seconds(2);
/** Stages without LLM calls: enough to keep up with many shards without hammering the table. */
const INGEST_CONCURRENCY = 10;
const FINALIZE_CONCURRENCY = 10;
/** Ingest streams large shards and finalize writes whole shards: both get Lambda's full 15 minutes. */
const LONG_STAGE_TIMEOUT = Duration.seconds(900);

const STAGE_SETTINGS: Record<StageName, { readonly timeout: Duration; readonly memorySize: number }> = {
  ingest: { timeout: LONG_STAGE_TIMEOUT, memorySize: 1024 },
  // Both stages spend nearly all their time waiting on the model, and Lambda bills memory x time: they get
  // what they need, not CPU they would not use. Evolve decodes one image at a time (SharpImagePreparer's
  // shrinksAtOnce: 1; up to 200 MB for a 50 MP source) and shrinks each image once per sample; judge is text.
  evolve: { timeout: Duration.seconds(LLM_FUNCTION_TIMEOUT_SECONDS), memorySize: 512 },
  judge: { timeout: Duration.seconds(LLM_FUNCTION_TIMEOUT_SECONDS), memorySize: 256 },
  finalize: { timeout: LONG_STAGE_TIMEOUT, memorySize: 2048 },
};

function checkedInteger(name: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new StackSettingsError(`${name} must be an integer in ${min}..${max}, got ${value}`);
  }
  return value;
}

const RunDefaults = RunConfig.pick({ model: true, rounds: true, weights: true, seed: true, mode: true });

/**
 * The serverless pipeline: a bucket whose seed uploads feed an ingest queue, one queue + DLQ + Lambda per stage,
 * a single DynamoDB table for state, and a secret for the OpenAI key. Infrastructure only.
 */
export class MmevolStack extends Stack {
  readonly bucket: Bucket;
  readonly table: TableV2;
  readonly secret: Secret;
  readonly queues: Readonly<Record<StageName, StageQueue>>;
  readonly functions: Readonly<Record<StageName, StageFunction>>;
  /** Re-sends stuck work (lost or dead-lettered messages) on a schedule. */
  readonly sweeper: StageFunction;
  /** Batch mode: submits, polls and applies Batch API jobs on a schedule. */
  readonly batcher: StageFunction;

  constructor(scope: Construct, id: string, props: MmevolStackProps = {}) {
    super(scope, id, props);
    const dataRemovalPolicy = props.dataRemovalPolicy ?? RemovalPolicy.RETAIN;
    const limits = {
      tokensPerMinute: props.tokensPerMinute ?? DEFAULT_TOKENS_PER_MINUTE,
      requestsPerMinute: props.requestsPerMinute ?? DEFAULT_REQUESTS_PER_MINUTE,
    };
    const evolveBatchSize = checkedInteger("evolveBatchSize", props.evolveBatchSize ?? 10, 1, 10);
    const judgeBatchSize = checkedInteger("judgeBatchSize", props.judgeBatchSize ?? 10, 1, 10);
    // The same RunConfig schema the runtime uses fills in and checks the defaults, so they cannot disagree.
    const parsedDefaults = RunDefaults.safeParse({
      model: props.model,
      rounds: props.rounds,
      weights: props.weights,
      seed: props.seed,
      mode: props.mode,
    });
    if (!parsedDefaults.success) {
      throw new StackSettingsError(`invalid run defaults: ${describeIssues(parsedDefaults.error)}`, {
        cause: parsedDefaults.error,
      });
    }
    const runDefaults = parsedDefaults.data;

    const accessLogs = new Bucket(this, "AccessLogs", {
      blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
      // Log delivery cannot write to SSE-KMS buckets.
      encryption: BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      objectOwnership: ObjectOwnership.BUCKET_OWNER_ENFORCED,
      lifecycleRules: [{ id: "expire-access-logs", expiration: Duration.days(90) }],
      removalPolicy: dataRemovalPolicy,
    });
    // cdk-nag S1 does not apply here: it recognises this bucket as another bucket's access-log destination.

    this.bucket = new Bucket(this, "Data", {
      blockPublicAccess: BlockPublicAccess.BLOCK_ALL,
      encryption: BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      objectOwnership: ObjectOwnership.BUCKET_OWNER_ENFORCED,
      // aws-cdk-lib's Bucket class declares optional members as `T | undefined`, which exactOptionalPropertyTypes
      // does not match to IBucket's `member?: T`; it is the library's own object, so the widening is sound.
      serverAccessLogsBucket: accessLogs as IBucket,
      serverAccessLogsPrefix: "data/",
      lifecycleRules: [
        { id: "abort-incomplete-uploads", abortIncompleteMultipartUploadAfter: Duration.days(1) },
        // Intermediate objects (shrunk images and the like) only need to outlive a run.
        { id: "expire-work", prefix: "work/", expiration: Duration.days(14) },
      ],
      removalPolicy: dataRemovalPolicy,
    });

    this.table = new TableV2(this, "State", {
      partitionKey: { name: TABLE_SCHEMA.partitionKey, type: AttributeType.STRING },
      sortKey: { name: TABLE_SCHEMA.sortKey, type: AttributeType.STRING },
      globalSecondaryIndexes: [
        {
          indexName: TABLE_SCHEMA.gsi1.indexName,
          partitionKey: { name: TABLE_SCHEMA.gsi1.partitionKey, type: AttributeType.STRING },
          sortKey: { name: TABLE_SCHEMA.gsi1.sortKey, type: AttributeType.STRING },
        },
      ],
      billing: Billing.onDemand(),
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      timeToLiveAttribute: TABLE_SCHEMA.ttlAttribute,
      removalPolicy: dataRemovalPolicy,
    });

    this.secret = new Secret(this, "OpenAiKey", {
      description: "OpenAI API key for mmevol: put the key as the secret's plain-text value",
    });
    Validations.of(this.secret).acknowledge({
      id: "AwsSolutions-SMG4",
      reason: "The value is a third-party (OpenAI) API key; AWS cannot rotate it, the user replaces it.",
    });

    const queue = (stage: StageName, name: string) =>
      new StageQueue(this, name, { functionTimeout: STAGE_SETTINGS[stage].timeout });
    this.queues = {
      ingest: queue("ingest", "IngestQueue"),
      evolve: queue("evolve", "EvolveQueue"),
      judge: queue("judge", "JudgeQueue"),
      finalize: queue("finalize", "FinalizeQueue"),
    };

    // Shards are JSON Lines or a JSON array. `seeds/<run>/run.json` also matches `.json`; the ingest handler
    // recognises and skips it (it is read when a shard of the run is ingested).
    for (const suffix of [".jsonl", ".json"]) {
      this.bucket.addEventNotification(
        EventType.OBJECT_CREATED,
        new SqsDestination(this.queues.ingest.queue),
        {
          prefix: "seeds/",
          suffix,
        },
      );
    }

    // The notification is configured by a CDK-provided singleton Lambda (one per stack) whose role CDK builds
    // with the basic-execution managed policy; the construct offers no way to pass another role.
    const notificationsHandler = this.node.children.find((child) =>
      child.node.id.startsWith("BucketNotificationsHandler"),
    );
    if (notificationsHandler !== undefined) {
      Validations.of(notificationsHandler).acknowledge({
        id: "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
        reason: "CDK's own bucket-notifications custom resource; its role cannot be replaced, it only logs",
      });
    }

    const runDefaultsJson = JSON.stringify(runDefaults);
    const llmEnvironment: Record<string, string> = {
      [ENV.runDefaults]: runDefaultsJson,
      [ENV.llmTimeoutMs]: String(LLM_TIMEOUT_MS),
      [ENV.llmMaxRetries]: String(LLM_MAX_RETRIES),
      // One budget per model in the table, shared by every evolve and judge container (maxConcurrency stays
      // the hard cap); it adapts to the provider's x-ratelimit headers when they report less.
      [ENV.tokensPerMinute]: String(limits.tokensPerMinute),
      [ENV.requestsPerMinute]: String(limits.requestsPerMinute),
      ...(props.baseUrl === undefined ? {} : { [ENV.openaiBaseUrl]: props.baseUrl }),
    };
    const stageFunction = (stage: StageName, name: string, environment: Record<string, string>) =>
      new StageFunction(this, name, {
        stage,
        ...STAGE_SETTINGS[stage],
        environment,
        ...(props.logRetention === undefined ? {} : { logRetention: props.logRetention }),
      });

    const ingest = stageFunction("ingest", "Ingest", { [ENV.runDefaults]: runDefaultsJson })
      .bindTable(this.table)
      .bindBucket(this.bucket, { read: ["seeds/"] })
      // A large shard is ingested in slices: each slice enqueues the next onto the ingest queue itself.
      .bindQueue("ingest", this.queues.ingest.queue)
      .bindQueue("evolve", this.queues.evolve.queue)
      .bindQueue("finalize", this.queues.finalize.queue)
      .consume(this.queues.ingest.queue, { batchSize: 1, maxConcurrency: INGEST_CONCURRENCY });

    // Evolve and judge share one API key. In steady state every sample-round makes one call of each, so the
    // token budget is split in proportion to their per-call reservations: both stages then run at the same rate.
    const tokensPerRound = EVOLVE_TOKENS_PER_CALL + JUDGE_TOKENS_PER_CALL;
    const evolveConcurrency = stageConcurrency(limits, {
      tokensPerCall: EVOLVE_TOKENS_PER_CALL,
      secondsPerCall: SECONDS_PER_CALL,
      batchSize: evolveBatchSize,
      share: EVOLVE_TOKENS_PER_CALL / tokensPerRound,
    });
    const judgeConcurrency = stageConcurrency(limits, {
      tokensPerCall: JUDGE_TOKENS_PER_CALL,
      secondsPerCall: SECONDS_PER_CALL,
      batchSize: judgeBatchSize,
      share: JUDGE_TOKENS_PER_CALL / tokensPerRound,
    });

    // Image paths resolve under the run's image root, which may be anywhere in the bucket: read all, write work/.
    const evolve = stageFunction("evolve", "Evolve", {
      ...llmEnvironment,
      [ENV.imageWaitMs]: String(IMAGE_WAIT_MS),
    })
      .bindTable(this.table)
      .bindBucket(this.bucket, { read: [""], write: ["work/"] })
      // Its own queue too: a message that finds no rate budget goes back to it as a delayed copy.
      .bindQueue("evolve", this.queues.evolve.queue)
      .bindQueue("judge", this.queues.judge.queue)
      .bindQueue("finalize", this.queues.finalize.queue)
      .bindSecret(this.secret)
      .consume(this.queues.evolve.queue, {
        batchSize: evolveBatchSize,
        maxConcurrency: evolveConcurrency,
        maxBatchingWindow: LLM_BATCHING_WINDOW,
      });

    const judge = stageFunction("judge", "Judge", llmEnvironment)
      .bindTable(this.table)
      // Batch mode: the judge request's body is kept under work/ until its batch is built.
      .bindBucket(this.bucket, { write: ["work/"] })
      .bindQueue("evolve", this.queues.evolve.queue)
      .bindQueue("judge", this.queues.judge.queue)
      .bindQueue("finalize", this.queues.finalize.queue)
      .bindSecret(this.secret)
      .consume(this.queues.judge.queue, {
        batchSize: judgeBatchSize,
        maxConcurrency: judgeConcurrency,
        maxBatchingWindow: LLM_BATCHING_WINDOW,
      });

    const finalize = stageFunction("finalize", "Finalize", { [ENV.runDefaults]: runDefaultsJson })
      .bindTable(this.table)
      .bindBucket(this.bucket, { write: ["evolved/", "reports/", "errors/"] })
      .consume(this.queues.finalize.queue, { batchSize: 1, maxConcurrency: FINALIZE_CONCURRENCY });

    this.functions = { ingest, evolve, judge, finalize };

    // Every 5 minutes: re-sends the message of any work whose state has not moved past the deadline (a
    // message lost between a transition and its send, or dead-lettered), and finalizes every shard whose samples
    // are all terminal. It only sends; it never reads a queue (the DLQs are for `mmevol redrive`).
    this.sweeper = new StageFunction(this, "Sweeper", {
      stage: "sweeper",
      timeout: LONG_STAGE_TIMEOUT,
      memorySize: 512,
      environment: { [ENV.sweepAfterMs]: String(SWEEP_AFTER_MS) },
      ...(props.logRetention === undefined ? {} : { logRetention: props.logRetention }),
    })
      .bindTable(this.table)
      .bindQueue("ingest", this.queues.ingest.queue)
      .bindQueue("evolve", this.queues.evolve.queue)
      .bindQueue("judge", this.queues.judge.queue)
      .bindQueue("finalize", this.queues.finalize.queue);
    new Rule(this, "SweepSchedule", {
      description: "mmevol: re-send stuck work",
      schedule: Schedule.rate(Duration.minutes(5)),
      targets: [new LambdaFunction(this.sweeper, { retryAttempts: 0 })],
    });

    // Every minute: batch mode's loop. Submits each shard's collected round as a batch, polls open batches
    // (backing off per job), and applies finished ones by sending their stage messages again. No Lambda waits.
    this.batcher = new StageFunction(this, "Batcher", {
      stage: "batcher",
      timeout: LONG_STAGE_TIMEOUT,
      memorySize: 1024,
      environment: llmEnvironment,
      ...(props.logRetention === undefined ? {} : { logRetention: props.logRetention }),
    })
      .bindTable(this.table)
      // Writes: the enqueued-token limits a provider refused a batch for (work/<run>/batches/limits.json).
      .bindBucket(this.bucket, { read: ["work/"], write: ["work/"] })
      .bindQueue("evolve", this.queues.evolve.queue)
      .bindQueue("judge", this.queues.judge.queue)
      .bindSecret(this.secret);
    new Rule(this, "BatchSchedule", {
      description: "mmevol: submit, poll and apply Batch API jobs",
      schedule: Schedule.rate(Duration.minutes(1)),
      targets: [new LambdaFunction(this.batcher, { retryAttempts: 0 })],
    });

    for (const fn of Object.values(this.functions)) {
      fn.metricErrors({ period: Duration.minutes(5), statistic: "Sum" }).createAlarm(
        this,
        `${fn.node.id}Errors`,
        {
          alarmDescription: `${fn.stage}: function errors`,
          threshold: 1,
          evaluationPeriods: 1,
          comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
          treatMissingData: TreatMissingData.NOT_BREACHING,
        },
      );
    }

    new CfnOutput(this, "BucketName", { value: this.bucket.bucketName });
    new CfnOutput(this, "TableName", { value: this.table.tableName });
    new CfnOutput(this, "OpenAiSecretArn", { value: this.secret.secretArn });
    const outputName: Record<StageName, string> = {
      ingest: "Ingest",
      evolve: "Evolve",
      judge: "Judge",
      finalize: "Finalize",
    };
    for (const stage of STAGES) {
      new CfnOutput(this, `${outputName[stage]}QueueUrl`, { value: this.queues[stage].queue.queueUrl });
      new CfnOutput(this, `${outputName[stage]}DeadLetterQueueUrl`, {
        value: this.queues[stage].deadLetterQueue.queueUrl,
      });
    }
  }
}
