import { fileURLToPath } from "node:url";
import { CfnElement, type Duration, Stack, Validations } from "aws-cdk-lib";
import type { ITableV2 } from "aws-cdk-lib/aws-dynamodb";
import { Effect, PolicyStatement, Role, ServicePrincipal } from "aws-cdk-lib/aws-iam";
import { Architecture, LoggingFormat, Runtime, Tracing } from "aws-cdk-lib/aws-lambda";
import { SqsEventSource } from "aws-cdk-lib/aws-lambda-event-sources";
import { NodejsFunction, OutputFormat } from "aws-cdk-lib/aws-lambda-nodejs";
import { LogGroup, RetentionDays } from "aws-cdk-lib/aws-logs";
import type { IBucket } from "aws-cdk-lib/aws-s3";
import type { ISecret } from "aws-cdk-lib/aws-secretsmanager";
import type { IQueue } from "aws-cdk-lib/aws-sqs";
import type { Construct } from "constructs";
import { TABLE_SCHEMA } from "../functions/adapters/aws/table-schema.ts";
import { ENV, type EnvName } from "../functions/runtime/env.ts";

/** The repository root: bundling resolves the handlers and the lockfile from here. */
export const PROJECT_ROOT = fileURLToPath(new URL("..", import.meta.url));

export const STAGES = ["ingest", "evolve", "judge", "finalize"] as const;
export type StageName = (typeof STAGES)[number];
/** Every function's role: a queue stage, or the scheduled sweeper (functions/handlers/sweeper.ts). */
export type FunctionStage = StageName | "sweeper" | "batcher";

const QUEUE_URL_ENV: Record<StageName, EnvName> = {
  ingest: ENV.ingestQueueUrl,
  evolve: ENV.evolveQueueUrl,
  judge: ENV.judgeQueueUrl,
  finalize: ENV.finalizeQueueUrl,
};

// Narrow structural views: aws-cdk-lib's classes do not satisfy their own interfaces under
// exactOptionalPropertyTypes, and these methods need only these members anyway.
export type TableRef = Pick<ITableV2, "tableArn" | "tableName">;
export type BucketRef = Pick<IBucket, "bucketArn" | "bucketName" | "arnForObjects" | "node">;
export type SecretRef = Pick<ISecret, "secretArn" | "grantRead">;

export interface StageFunctionProps {
  /** The stage; its entry point is `functions/handlers/<stage>.ts`, exporting `handler`. */
  readonly stage: FunctionStage;
  readonly timeout: Duration;
  readonly memorySize: number;
  /** @default RetentionDays.ONE_MONTH */
  readonly logRetention?: RetentionDays;
  /** Variables that no bind* method sets (run defaults, LLM budget). */
  readonly environment?: Readonly<Record<string, string>>;
}

/** Object key prefixes (ending in `/`, or "" for the whole bucket) a function may read or write. */
export interface BucketAccess {
  readonly read?: readonly string[];
  readonly write?: readonly string[];
}

export interface ConsumeOptions {
  readonly batchSize: number;
  readonly maxConcurrency: number;
  /** How long Lambda gathers records to fill a batch before it invokes. @default none: invoke at once */
  readonly maxBatchingWindow?: Duration;
}

/**
 * One pipeline stage's Lambda function with the house defaults: Node 24 on arm64, ESM bundle with source maps,
 * sharp installed for linux-arm64, JSON logs into its own log group, and a role that holds only what the
 * bind* methods grant (no managed policies). Each bind* method grants access AND sets the variable that the
 * runtime reads, so the two cannot drift apart.
 */
export class StageFunction extends NodejsFunction {
  readonly stage: FunctionStage;
  readonly logGroupOfStage: LogGroup;

  constructor(scope: Construct, id: string, props: StageFunctionProps) {
    // The role and log group are created beside the function (in `scope`) because `this` is not usable
    // before super(); an explicit role avoids the AWSLambdaBasicExecutionRole managed policy.
    const logGroup = new LogGroup(scope, `${id}Logs`, {
      retention: props.logRetention ?? RetentionDays.ONE_MONTH,
    });
    const role = new Role(scope, `${id}Role`, {
      assumedBy: new ServicePrincipal("lambda.amazonaws.com"),
      description: `mmevol ${props.stage} stage`,
    });
    logGroup.grantWrite(role);
    super(scope, id, {
      entry: `${PROJECT_ROOT}functions/handlers/${props.stage}.ts`,
      handler: "handler",
      runtime: Runtime.NODEJS_24_X,
      architecture: Architecture.ARM_64,
      timeout: props.timeout,
      memorySize: props.memorySize,
      role,
      logGroup,
      loggingFormat: LoggingFormat.JSON,
      tracing: Tracing.DISABLED,
      depsLockFilePath: `${PROJECT_ROOT}package-lock.json`,
      projectRoot: PROJECT_ROOT,
      environment: { NODE_OPTIONS: "--enable-source-maps", ...props.environment },
      bundling: {
        format: OutputFormat.ESM,
        target: "node24",
        minify: true,
        sourceMap: true,
        mainFields: ["module", "main"],
        // Bundled CommonJS dependencies call require(); ESM output has none unless we make one.
        banner:
          "import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);",
        // sharp ships a native binary per platform: install it for the Lambda's platform, not the build host's.
        nodeModules: ["sharp"],
        environment: { npm_config_os: "linux", npm_config_cpu: "arm64", npm_config_libc: "glibc" },
      },
    });
    this.stage = props.stage;
    this.logGroupOfStage = logGroup;
  }

  /** Read/write items of the single table and its GSI (no Scan, no table administration). */
  bindTable(table: TableRef): this {
    // Transactions are authorised through the item actions they contain, so these cover TransactWriteItems.
    this.addToRolePolicy(
      new PolicyStatement({
        effect: Effect.ALLOW,
        actions: [
          "dynamodb:GetItem",
          "dynamodb:BatchGetItem",
          "dynamodb:Query",
          "dynamodb:PutItem",
          "dynamodb:UpdateItem",
          "dynamodb:DeleteItem",
          "dynamodb:BatchWriteItem",
          "dynamodb:ConditionCheckItem",
        ],
        resources: [table.tableArn, `${table.tableArn}/index/${TABLE_SCHEMA.gsi1.indexName}`],
      }),
    );
    this.addEnvironment(ENV.table, table.tableName);
    return this;
  }

  /** Object access limited to key prefixes; "" stands for the whole bucket. */
  bindBucket(bucket: BucketRef, access: BucketAccess): this {
    const read = access.read ?? [];
    const write = access.write ?? [];
    if (read.length > 0) {
      this.addToRolePolicy(
        new PolicyStatement({
          actions: ["s3:GetObject"],
          resources: read.map((prefix) => bucket.arnForObjects(`${prefix}*`)),
        }),
      );
      // Without ListBucket a HeadObject on a missing key answers 403 instead of 404, and the blob store's
      // exists()/size() (optional run.json) could not tell "absent" from "forbidden".
      this.addToRolePolicy(
        new PolicyStatement({ actions: ["s3:ListBucket"], resources: [bucket.bucketArn] }),
      );
    }
    if (write.length > 0) {
      this.addToRolePolicy(
        new PolicyStatement({
          actions: ["s3:PutObject", "s3:AbortMultipartUpload"],
          resources: write.map((prefix) => bucket.arnForObjects(`${prefix}*`)),
        }),
      );
    }
    this.acknowledgePrefixWildcards(bucket, [...new Set([...read, ...write])]);
    this.addEnvironment(ENV.bucket, bucket.bucketName);
    return this;
  }

  /**
   * cdk-nag flags every `*` in a policy resource. An object ARN for a key prefix must end in `*`, so each such
   * resource is acknowledged by its exact finding id; any other wildcard on the role still fails the check.
   */
  private acknowledgePrefixWildcards(bucket: BucketRef, prefixes: readonly string[]): void {
    const cfnBucket = bucket.node.defaultChild;
    // An imported bucket's ARN is a literal, which cdk-nag prints as is.
    const arn =
      cfnBucket instanceof CfnElement
        ? `<${Stack.of(cfnBucket).getLogicalId(cfnBucket)}.Arn>`
        : bucket.bucketArn;
    const role = this.role;
    if (role === undefined) return;
    for (const prefix of prefixes) {
      Validations.of(role).acknowledge({
        id: `AwsSolutions-IAM5[Resource::${arn}/${prefix}*]`,
        reason: `prefix-scoped object access: objects under "${prefix || "(whole bucket)"}" need a trailing *`,
      });
    }
  }

  /** Permission to send to another stage's queue, and that queue's URL. */
  bindQueue(name: StageName, queue: IQueue): this {
    queue.grantSendMessages(this);
    this.addEnvironment(QUEUE_URL_ENV[name], queue.queueUrl);
    return this;
  }

  /** The OpenAI key is read at run time; the environment holds only the secret's ARN. */
  bindSecret(secret: SecretRef): this {
    secret.grantRead(this);
    this.addEnvironment(ENV.openaiSecret, secret.secretArn);
    return this;
  }

  /** This stage's own queue, with partial batch failures so one bad record does not redeliver the batch. */
  consume(queue: IQueue, options: ConsumeOptions): this {
    this.addEventSource(
      new SqsEventSource(queue, {
        batchSize: options.batchSize,
        maxConcurrency: options.maxConcurrency,
        ...(options.maxBatchingWindow === undefined ? {} : { maxBatchingWindow: options.maxBatchingWindow }),
        reportBatchItemFailures: true,
      }),
    );
    return this;
  }
}
