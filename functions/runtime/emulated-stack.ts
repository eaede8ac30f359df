// The synthesized CDK stack brought up on an AWS emulator (moto): buckets, queues with redrive, the table,
// the secret and the bucket's notifications are created from the template, and every SQS event source
// mapping runs its bundled function from cdk.out in a child process (emulated-function.ts).
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import {
  CreateBucketCommand,
  PutBucketNotificationConfigurationCommand,
  S3Client,
  type Event as S3EventName,
} from "@aws-sdk/client-s3";
import { CreateSecretCommand, SecretsManagerClient } from "@aws-sdk/client-secrets-manager";
import { CreateQueueCommand, GetQueueAttributesCommand, SQSClient } from "@aws-sdk/client-sqs";
import { z } from "zod";
import { createTable } from "../adapters/aws/create-table.ts";
import { ENV } from "./env.ts";

const Resource = z.object({
  Type: z.string(),
  Properties: z.record(z.string(), z.unknown()).optional(),
  Metadata: z.record(z.string(), z.unknown()).optional(),
});
const Template = z.object({ Resources: z.record(z.string(), Resource) });
type Resource = z.infer<typeof Resource>;

const Manifest = z.object({
  artifacts: z.record(
    z.string(),
    z.object({ type: z.string(), properties: z.object({ templateFile: z.string() }).partial().optional() }),
  ),
});

export interface EmulatedStackOptions {
  /** The cloud assembly written by `cdk synth` (with bundled assets). */
  readonly cdkOut: string;
  /** The emulator's endpoint; the clients and the functions read it as AWS_ENDPOINT_URL. */
  readonly endpoint: string;
  /** Value put into the stack's OpenAI key secret. */
  readonly apiKey: string;
  /** Environment values that override what the stack set for every function (e.g. the LLM base URL). */
  readonly functionEnv?: Readonly<Record<string, string>>;
  /** Each line a function prints. */
  readonly onLine?: (line: string) => void;
  /** Queue visibility timeouts are capped at this in emulation (default 30 s). */
  readonly maxVisibilityTimeoutSeconds?: number;
  /** A separate DynamoDB endpoint (e.g. AWS's DynamoDB Local) for the table; moto's by default. */
  readonly dynamodbEndpoint?: string;
  /** Concurrent pollers per function process: the mapping's maximum concurrency, capped at this (default 8). */
  readonly maxPollers?: number;
  /** Scheduled functions (EventBridge rules, not emulated) are invoked this often instead (default 30 s). */
  readonly scheduleEverySeconds?: number;
  /**
   * Event source mappings' batching windows are capped at this (default: as the stack sets them). Tests that
   * drive many short runs through the stack set 0 so every hop does not wait for a fuller batch.
   */
  readonly maxBatchingWindowSeconds?: number;
  /**
   * Where to write the stack's outputs (default `<cdkOut>/emulated-outputs.json`). Stacks started at once from
   * one assembly, as test files running in parallel do, each need their own: a shared file names the last.
   */
  readonly outputsFile?: string;
}

export interface EmulatedStack {
  readonly bucket: string;
  readonly table: string;
  readonly queues: Readonly<Record<string, { url: string; arn: string }>>;
  readonly functions: readonly string[];
  /** The stack's outputs, resolved to the emulator's names, as `cdk deploy --outputs-file` writes them. */
  readonly outputsFile: string;
  stop(): Promise<void>;
}

interface Physical {
  ref: string;
  arn?: string;
}

const awsEnv = (endpoint: string) => ({
  AWS_ENDPOINT_URL: endpoint,
  AWS_REGION: process.env.AWS_REGION ?? "us-east-1",
  AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID ?? "test",
  AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY ?? "test",
});

export function readStackTemplate(cdkOut: string): Record<string, Resource> {
  const manifest = Manifest.parse(JSON.parse(readFileSync(join(cdkOut, "manifest.json"), "utf8")));
  const stack = Object.values(manifest.artifacts).find((a) => a.type === "aws:cloudformation:stack");
  const templateFile = stack?.properties?.templateFile;
  if (!templateFile) throw new Error(`no stack in ${cdkOut}/manifest.json`);
  return Template.parse(JSON.parse(readFileSync(join(cdkOut, templateFile), "utf8"))).Resources;
}

const EventSourceMapping = z.object({
  FunctionName: z.object({ Ref: z.string() }),
  EventSourceArn: z.unknown(),
  BatchSize: z.number().optional(),
  MaximumBatchingWindowInSeconds: z.number().optional(),
  ScalingConfig: z.object({ MaximumConcurrency: z.number() }).optional(),
});

/** The template's SQS event source mappings: which function (`FunctionName.Ref`) reads which queue, how. */
export function eventSourceMappings(
  resources: Readonly<Record<string, Resource>>,
): z.infer<typeof EventSourceMapping>[] {
  return Object.values(resources)
    .filter((r) => r.Type === "AWS::Lambda::EventSourceMapping")
    .map((r) => EventSourceMapping.parse(r.Properties));
}

/** The template's Outputs: each one's Value, unresolved. */
export function readStackOutputs(cdkOut: string): Record<string, unknown> {
  const manifest = Manifest.parse(JSON.parse(readFileSync(join(cdkOut, "manifest.json"), "utf8")));
  const stack = Object.values(manifest.artifacts).find((a) => a.type === "aws:cloudformation:stack");
  const templateFile = stack?.properties?.templateFile;
  if (!templateFile) throw new Error(`no stack in ${cdkOut}/manifest.json`);
  const template = z
    .object({ Outputs: z.record(z.string(), z.object({ Value: z.unknown() })).default({}) })
    .parse(JSON.parse(readFileSync(join(cdkOut, templateFile), "utf8")));
  return Object.fromEntries(Object.entries(template.Outputs).map(([key, output]) => [key, output.Value]));
}

export async function startEmulatedStack(options: EmulatedStackOptions): Promise<EmulatedStack> {
  const resources = readStackTemplate(options.cdkOut);
  const env = awsEnv(options.endpoint);
  const clientConfig = {
    endpoint: options.endpoint,
    region: env.AWS_REGION,
    credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY },
  };
  const s3 = new S3Client({ ...clientConfig, forcePathStyle: true });
  const sqs = new SQSClient(clientConfig);
  const secrets = new SecretsManagerClient(clientConfig);
  const dynamo = new DynamoDBClient({
    ...clientConfig,
    endpoint: options.dynamodbEndpoint ?? options.endpoint,
  });
  const suffix = randomBytes(3).toString("hex");
  const physical = new Map<string, Physical>();
  const entries = Object.entries(resources);
  const ofType = (type: string) => entries.filter(([, r]) => r.Type === type);

  const resolve = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(resolve);
    if (typeof value !== "object" || value === null) return value;
    const record = z.record(z.string(), z.unknown()).parse(value);
    if ("Ref" in record) {
      const id = z.string().parse(record.Ref);
      if (id === "AWS::Region") return env.AWS_REGION;
      if (id === "AWS::AccountId") return "123456789012";
      if (id === "AWS::Partition") return "aws";
      if (id === "AWS::URLSuffix") return "amazonaws.com";
      if (id === "AWS::StackName") return `mmevol-${suffix}`;
      return physical.get(id)?.ref ?? `unresolved-${id}`;
    }
    if ("Fn::GetAtt" in record) {
      const [id, attribute] = z.tuple([z.string(), z.string()]).parse(record["Fn::GetAtt"]);
      const p = physical.get(id);
      if (attribute === "Arn") return p?.arn ?? `unresolved-${id}`;
      if (attribute === "QueueName") return p?.ref.split("/").at(-1);
      return p?.ref ?? `unresolved-${id}.${attribute}`;
    }
    if ("Fn::Join" in record) {
      const [separator, parts] = z.tuple([z.string(), z.array(z.unknown())]).parse(record["Fn::Join"]);
      return parts.map((part) => String(resolve(part))).join(separator);
    }
    return Object.fromEntries(Object.entries(record).map(([k, v]) => [k, resolve(v)]));
  };

  const name = (id: string) =>
    `${id
      .toLowerCase()
      .replace(/[^a-z0-9-]/g, "")
      .slice(0, 40)}-${suffix}`;
  for (const [id] of ofType("AWS::S3::Bucket")) {
    const bucket = name(id);
    await s3.send(new CreateBucketCommand({ Bucket: bucket }));
    physical.set(id, { ref: bucket, arn: `arn:aws:s3:::${bucket}` });
  }
  // Dead-letter queues first: the others name them in their redrive policy.
  const queues = ofType("AWS::SQS::Queue").sort(
    ([, a], [, b]) =>
      Number(a.Properties?.RedrivePolicy !== undefined) - Number(b.Properties?.RedrivePolicy !== undefined),
  );
  const queueInfo: Record<string, { url: string; arn: string }> = {};
  for (const [id, queue] of queues) {
    const props = queue.Properties ?? {};
    const attributes: Record<string, string> = {};
    if (props.VisibilityTimeout !== undefined) {
      // Capped in emulation, so a crashed invocation's messages come back in seconds rather than many minutes.
      const cap = options.maxVisibilityTimeoutSeconds ?? 30;
      attributes.VisibilityTimeout = String(Math.min(Number(props.VisibilityTimeout), cap));
    }
    if (props.MessageRetentionPeriod !== undefined)
      attributes.MessageRetentionPeriod = String(props.MessageRetentionPeriod);
    if (props.RedrivePolicy !== undefined)
      attributes.RedrivePolicy = JSON.stringify(resolve(props.RedrivePolicy));
    const created = await sqs.send(
      new CreateQueueCommand({ QueueName: `${id.slice(0, 60)}-${suffix}`, Attributes: attributes }),
    );
    const url = z.string().parse(created.QueueUrl);
    const got = await sqs.send(
      new GetQueueAttributesCommand({ QueueUrl: url, AttributeNames: ["QueueArn"] }),
    );
    const arn = z.string().parse(got.Attributes?.QueueArn);
    physical.set(id, { ref: url, arn });
    queueInfo[id] = { url, arn };
  }
  let table = "";
  for (const [id] of [...ofType("AWS::DynamoDB::GlobalTable"), ...ofType("AWS::DynamoDB::Table")]) {
    table = name(id);
    await createTable(dynamo, table);
    physical.set(id, { ref: table, arn: `arn:aws:dynamodb:${env.AWS_REGION}:123456789012:table/${table}` });
  }
  for (const [id] of ofType("AWS::SecretsManager::Secret")) {
    const created = await secrets.send(
      new CreateSecretCommand({ Name: name(id), SecretString: options.apiKey }),
    );
    physical.set(id, { ref: z.string().parse(created.ARN), arn: z.string().parse(created.ARN) });
  }
  for (const [id] of ofType("AWS::Lambda::Function")) {
    physical.set(id, {
      ref: name(id),
      arn: `arn:aws:lambda:${env.AWS_REGION}:123456789012:function:${name(id)}`,
    });
  }
  for (const [, notifications] of ofType("Custom::S3BucketNotifications")) {
    const props = z
      .object({ BucketName: z.string(), NotificationConfiguration: z.record(z.string(), z.unknown()) })
      .parse(resolve(notifications.Properties));
    await s3.send(
      new PutBucketNotificationConfigurationCommand({
        Bucket: props.BucketName,
        NotificationConfiguration: z
          .object({
            QueueConfigurations: z
              .array(
                z.object({
                  QueueArn: z.string(),
                  Events: z.array(z.custom<S3EventName>((v) => typeof v === "string" && v.startsWith("s3:"))),
                  Filter: z
                    .object({
                      Key: z.object({
                        FilterRules: z.array(
                          z.object({ Name: z.enum(["prefix", "suffix"]), Value: z.string() }),
                        ),
                      }),
                    })
                    .optional(),
                }),
              )
              .optional(),
          })
          .parse(props.NotificationConfiguration),
      }),
    );
  }

  const workerScript = fileURLToPath(new URL("./emulated-function.ts", import.meta.url));
  const children = new Set<ChildProcess>();
  let stopping = false;
  const functions: string[] = [];

  /** A function's environment as Lambda would give it (resolved variables), plus the emulator's own. */
  const functionEnv = (fnId: string, fn: Resource) => {
    const props = z
      .object({
        Handler: z.string(),
        Timeout: z.number().default(3),
        Environment: z.object({ Variables: z.record(z.string(), z.unknown()) }).optional(),
      })
      .parse(fn.Properties);
    const label = fnId.replace(/[A-F0-9]{8}$/, "");
    const variables = Object.fromEntries(
      Object.entries(props.Environment?.Variables ?? {}).map(([k, v]) => [k, String(resolve(v))]),
    );
    return {
      label,
      timeout: props.Timeout,
      env: {
        ...process.env,
        ...env,
        ...variables,
        ...(options.dynamodbEndpoint ? { AWS_ENDPOINT_URL_DYNAMODB: options.dynamodbEndpoint } : {}),
        // Claims must end before a crashed receive's message comes back, and visibility is capped here.
        [ENV.claimMs]: String(Math.min(180, options.maxVisibilityTimeoutSeconds ?? 30) * 1000),
        // Batch mode at emulator speed: a round settles after 3 s of quiet, polls start at 1 s.
        [ENV.batchSettleMs]: "3000",
        [ENV.batchPollMs]: "1000",
        // Quiet unless this process's environment or the caller's functionEnv asks for more.
        POWERTOOLS_LOG_LEVEL: process.env.POWERTOOLS_LOG_LEVEL ?? "WARN",
        ...options.functionEnv,
        POWERTOOLS_METRICS_DISABLED: "true",
        EMU_NAME: label,
        EMU_ASSET: join(options.cdkOut, z.string().parse(fn.Metadata?.["aws:asset:path"])),
        EMU_HANDLER: props.Handler,
      },
    };
  };

  /** Runs a function's process; like Lambda, one that died (a crash, an OOM kill) starts again on a new one. */
  const launch = (label: string, script: string, processEnv: NodeJS.ProcessEnv) => {
    functions.push(label);
    const forward = (chunk: Buffer) => {
      for (const line of chunk.toString().split("\n")) if (line.trim()) options.onLine?.(line);
    };
    const start = () => {
      const child = spawn(process.execPath, [script], { env: processEnv, stdio: ["ignore", "pipe", "pipe"] });
      child.stdout?.on("data", forward);
      child.stderr?.on("data", forward);
      child.once("exit", (code, signal) => {
        children.delete(child);
        if (stopping) return;
        options.onLine?.(`[${label}] process ended (${signal ?? code}); starting a new one`);
        start();
      });
      children.add(child);
    };
    start();
  };
  for (const props of eventSourceMappings(resources)) {
    const fnId = props.FunctionName.Ref;
    const fn = resources[fnId];
    if (!fn) throw new Error(`event source mapping names a missing function ${fnId}`);
    const queueArn = String(resolve(props.EventSourceArn));
    const queue = Object.values(queueInfo).find((q) => q.arn === queueArn);
    if (!queue) throw new Error(`event source mapping of ${fnId} reads an unknown queue ${queueArn}`);
    const { label, timeout, env: fnEnv } = functionEnv(fnId, fn);
    launch(label, workerScript, {
      ...fnEnv,
      EMU_QUEUE_URL: queue.url,
      EMU_QUEUE_ARN: queue.arn,
      EMU_BATCH_SIZE: String(props.BatchSize ?? 10),
      EMU_BATCH_WINDOW_SECONDS: String(
        Math.min(
          props.MaximumBatchingWindowInSeconds ?? 0,
          options.maxBatchingWindowSeconds ?? Number.POSITIVE_INFINITY,
        ),
      ),
      EMU_CONCURRENCY: String(
        Math.min(props.ScalingConfig?.MaximumConcurrency ?? 2, options.maxPollers ?? 8),
      ),
      EMU_TIMEOUT_SECONDS: String(timeout),
    });
  }

  // EventBridge schedules: the rule's target function runs on a timer in its own process.
  const scheduleScript = fileURLToPath(new URL("./emulated-schedule.ts", import.meta.url));
  for (const [, rule] of ofType("AWS::Events::Rule")) {
    const ruleProps = z
      .object({
        ScheduleExpression: z.string().optional(),
        Targets: z.array(z.object({ Arn: z.object({ "Fn::GetAtt": z.tuple([z.string(), z.string()]) }) })),
      })
      .parse(rule.Properties);
    if (ruleProps.ScheduleExpression === undefined) continue;
    for (const target of ruleProps.Targets) {
      const fnId = target.Arn["Fn::GetAtt"][0];
      const fn = resources[fnId];
      if (fn?.Type !== "AWS::Lambda::Function") continue;
      const { label, timeout, env: fnEnv } = functionEnv(fnId, fn);
      launch(label, scheduleScript, {
        ...fnEnv,
        EMU_EVERY_SECONDS: String(options.scheduleEverySeconds ?? 30),
        EMU_TIMEOUT_SECONDS: String(timeout),
      });
    }
  }

  // What `mmevol status/redrive --outputs` reads: the same shape as `cdk deploy --outputs-file`, plus the endpoint.
  const outputsFile = options.outputsFile ?? join(options.cdkOut, "emulated-outputs.json");
  const outputs = Object.fromEntries(
    Object.entries(readStackOutputs(options.cdkOut)).map(([key, value]) => [key, String(resolve(value))]),
  );
  writeFileSync(
    outputsFile,
    `${JSON.stringify({ [`mmevol-${suffix}`]: { ...outputs, EmulatorEndpoint: options.endpoint } }, null, 2)}\n`,
  );

  const bucketId =
    ofType("AWS::S3::Bucket").find(([, r]) =>
      JSON.stringify(r.Properties ?? {}).includes("LoggingConfiguration"),
    )?.[0] ?? ofType("AWS::S3::Bucket")[0]?.[0];
  return {
    bucket: physical.get(bucketId ?? "")?.ref ?? "",
    table,
    queues: queueInfo,
    functions,
    outputsFile,
    stop: async () => {
      stopping = true;
      await Promise.all(
        [...children].map(
          (child) =>
            new Promise<void>((done) => {
              if (child.exitCode !== null) return done();
              child.once("exit", () => done());
              child.kill("SIGTERM");
              setTimeout(() => child.kill("SIGKILL"), 3_000).unref();
            }),
        ),
      );
    },
  };
}
