import { Match } from "aws-cdk-lib/assertions";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { TABLE_SCHEMA } from "../../functions/adapters/aws/table-schema.ts";
import {
  ENV,
  LLM_FUNCTION_TIMEOUT_SECONDS,
  LLM_MAX_RETRIES,
  LLM_TIMEOUT_MS,
} from "../../functions/runtime/env.ts";
import { stageConcurrency } from "../../lib/concurrency.ts";
import { readStackContext, StackSettingsError } from "../../lib/context.ts";
import {
  DEFAULT_REQUESTS_PER_MINUTE,
  DEFAULT_TOKENS_PER_MINUTE,
  EVOLVE_TOKENS_PER_CALL,
  JUDGE_TOKENS_PER_CALL,
  SECONDS_PER_CALL,
} from "../../lib/mmevol-stack.ts";
import { STAGES, type StageName } from "../../lib/stage-function.ts";
import { type Synthesized, synthesize } from "./synth.ts";

// Typed views of the template parts under test: parsing (not casting) keeps a template change a clear failure.
const Ref = z.object({ Ref: z.string() });
const GetAtt = z.object({ "Fn::GetAtt": z.tuple([z.string(), z.string()]) });
const LambdaFunction = z.object({
  Properties: z.object({
    Runtime: z.string(),
    Architectures: z.array(z.string()),
    Timeout: z.number(),
    MemorySize: z.number(),
    Role: GetAtt,
    LoggingConfig: z.object({ LogFormat: z.string(), LogGroup: Ref }),
    TracingConfig: z.object({ Mode: z.string() }).optional(),
    Environment: z.object({ Variables: z.record(z.string(), z.unknown()) }),
  }),
});
const Mapping = z.object({
  Properties: z.object({
    BatchSize: z.number(),
    MaximumBatchingWindowInSeconds: z.number().optional(),
    EventSourceArn: GetAtt,
    FunctionName: Ref,
    FunctionResponseTypes: z.array(z.string()),
    ScalingConfig: z.object({ MaximumConcurrency: z.number() }),
  }),
});
const QueueResource = z.object({
  Properties: z.object({
    VisibilityTimeout: z.number().optional(),
    MessageRetentionPeriod: z.number().optional(),
    SqsManagedSseEnabled: z.boolean().optional(),
    RedrivePolicy: z.object({ deadLetterTargetArn: GetAtt, maxReceiveCount: z.number() }).optional(),
  }),
});
const Statement = z.object({
  Effect: z.string(),
  Action: z.union([z.string(), z.array(z.string())]),
  Resource: z.unknown(),
});
const PolicyResource = z.object({
  Properties: z.object({
    PolicyDocument: z.object({ Statement: z.array(Statement) }),
    Roles: z.array(Ref),
  }),
});
type Statement = z.infer<typeof Statement>;

const actionsOf = (s: Statement): string[] => (Array.isArray(s.Action) ? s.Action : [s.Action]);
const resourcesOf = (s: Statement): unknown[] => (Array.isArray(s.Resource) ? s.Resource : [s.Resource]);
/** `{"Fn::Join": ["", [{"Fn::GetAtt": [bucket, "Arn"]}, "/seeds/*"]]}` -> "/seeds/*" (the object-key part). */
const keySuffixOf = (resource: unknown): string | null => {
  const join = z
    .object({ "Fn::Join": z.tuple([z.literal(""), z.tuple([GetAtt, z.string()])]) })
    .safeParse(resource);
  return join.success ? join.data["Fn::Join"][1][1] : null;
};

const STAGE_IDS: Record<StageName, string> = {
  ingest: "Ingest",
  evolve: "Evolve",
  judge: "Judge",
  finalize: "Finalize",
};

/** A record over the four stages, built explicitly so every key is present. */
const byStage = <T>(f: (stage: StageName) => T): Record<StageName, T> => ({
  ingest: f("ingest"),
  evolve: f("evolve"),
  judge: f("judge"),
  finalize: f("finalize"),
});

interface StageView {
  readonly fnId: string;
  readonly fn: z.infer<typeof LambdaFunction>;
  readonly mapping: z.infer<typeof Mapping>;
  /** The queue the stage consumes. */
  readonly queueId: string;
  /** Every statement of every policy attached to the stage's role. */
  readonly statements: Statement[];
}

describe("MmevolStack template (defaults)", () => {
  let synth: Synthesized;
  let stages: Record<StageName, StageView>;
  const fns = (stage: StageName) => stages[stage].fn;
  const queueId = (stage: StageName) => stages[stage].queueId;

  const resourcesOfType = (type: string): Record<string, unknown> => synth.template.findResources(type);
  const logicalIdOf = (type: string, prefix: string): string => {
    const ids = Object.keys(resourcesOfType(type)).filter((id) => id.startsWith(prefix));
    expect(ids, `${type} ${prefix}`).toHaveLength(1);
    return ids[0] ?? "";
  };

  beforeAll(() => {
    synth = synthesize();
    const functions = resourcesOfType("AWS::Lambda::Function");
    const allMappings = Object.values(resourcesOfType("AWS::Lambda::EventSourceMapping")).map((m) =>
      Mapping.parse(m),
    );
    const policies = Object.values(resourcesOfType("AWS::IAM::Policy")).map((p) => PolicyResource.parse(p));
    stages = byStage((stage) => {
      const fnId = logicalIdOf("AWS::Lambda::Function", STAGE_IDS[stage]);
      const fn = LambdaFunction.parse(functions[fnId]);
      const mapping = allMappings.find((m) => m.Properties.FunctionName.Ref === fnId);
      if (!mapping) throw new Error(`no event source mapping for ${stage}`);
      const role = fn.Properties.Role["Fn::GetAtt"][0];
      const statements = policies
        .filter((p) => p.Properties.Roles.some((r) => r.Ref === role))
        .flatMap((p) => p.Properties.PolicyDocument.Statement);
      return { fnId, fn, mapping, queueId: mapping.Properties.EventSourceArn["Fn::GetAtt"][0], statements };
    });
  });
  afterAll(() => synth.dispose());

  describe("data bucket", () => {
    const dataBucketId = () => logicalIdOf("AWS::S3::Bucket", "Data");
    const logsBucketId = () => logicalIdOf("AWS::S3::Bucket", "AccessLogs");

    it("blocks public access, encrypts, and logs access into the separate log bucket", () => {
      synth.template.hasResource("AWS::S3::Bucket", {
        Properties: Match.objectLike({
          PublicAccessBlockConfiguration: {
            BlockPublicAcls: true,
            BlockPublicPolicy: true,
            IgnorePublicAcls: true,
            RestrictPublicBuckets: true,
          },
          BucketEncryption: {
            ServerSideEncryptionConfiguration: [
              { ServerSideEncryptionByDefault: { SSEAlgorithm: "AES256" } },
            ],
          },
          LoggingConfiguration: { DestinationBucketName: { Ref: logsBucketId() }, LogFilePrefix: "data/" },
        }),
        DeletionPolicy: "Retain",
      });
      const data = synth.template.toJSON().Resources[dataBucketId()];
      expect(data.Properties.VersioningConfiguration).toBeUndefined();
    });

    it("expires work/ after 14 days and aborts incomplete multipart uploads after 1 day", () => {
      const rules = z
        .array(
          z.object({
            Status: z.string(),
            Prefix: z.string().optional(),
            ExpirationInDays: z.number().optional(),
            AbortIncompleteMultipartUpload: z.object({ DaysAfterInitiation: z.number() }).optional(),
          }),
        )
        .parse(synth.template.toJSON().Resources[dataBucketId()].Properties.LifecycleConfiguration.Rules);
      expect(rules).toContainEqual(
        expect.objectContaining({ Status: "Enabled", Prefix: "work/", ExpirationInDays: 14 }),
      );
      const abort = rules.find((r) => r.AbortIncompleteMultipartUpload !== undefined);
      expect(abort?.AbortIncompleteMultipartUpload?.DaysAfterInitiation).toBe(1);
      expect(abort?.Prefix).toBeUndefined();
      // No rule may expire anything outside work/: seeds and results are the user's data.
      for (const rule of rules.filter((r) => r.ExpirationInDays !== undefined))
        expect(rule.Prefix).toBe("work/");
    });

    it("denies non-TLS requests on both buckets", () => {
      for (const bucket of [dataBucketId(), logsBucketId()]) {
        synth.template.hasResourceProperties("AWS::S3::BucketPolicy", {
          Bucket: { Ref: bucket },
          PolicyDocument: {
            Statement: Match.arrayWith([
              Match.objectLike({
                Effect: "Deny",
                Action: "s3:*",
                Condition: { Bool: { "aws:SecureTransport": "false" } },
              }),
            ]),
          },
        });
      }
    });

    it("sends ObjectCreated for seeds/*.jsonl and seeds/*.json to the ingest queue", () => {
      const ingestQueue = queueId("ingest");
      const config = (suffix: string) => ({
        Events: ["s3:ObjectCreated:*"],
        Filter: {
          Key: {
            FilterRules: Match.arrayWith([
              { Name: "suffix", Value: suffix },
              { Name: "prefix", Value: "seeds/" },
            ]),
          },
        },
        QueueArn: { "Fn::GetAtt": [ingestQueue, "Arn"] },
      });
      synth.template.hasResourceProperties("Custom::S3BucketNotifications", {
        BucketName: { Ref: dataBucketId() },
        NotificationConfiguration: {
          QueueConfigurations: Match.arrayEquals([config(".jsonl"), config(".json")]),
        },
      });
      expect(ingestQueue).toMatch(/^IngestQueue/);
    });
  });

  describe("queues", () => {
    const queues = () => {
      const all = resourcesOfType("AWS::SQS::Queue");
      return Object.fromEntries(Object.entries(all).map(([id, q]) => [id, QueueResource.parse(q)]));
    };

    it("has 4 work queues, each with its own encrypted DLQ (14 days) and maxReceiveCount >= 5", () => {
      const all = queues();
      expect(Object.keys(all)).toHaveLength(8);
      const dlqs = new Set<string>();
      for (const stage of STAGES) {
        const queue = all[queueId(stage)];
        const redrive = queue?.Properties.RedrivePolicy;
        expect(redrive, stage).toBeDefined();
        expect(redrive?.maxReceiveCount).toBeGreaterThanOrEqual(5);
        const dlqId = redrive?.deadLetterTargetArn["Fn::GetAtt"][0] ?? "";
        dlqs.add(dlqId);
        const dlq = all[dlqId];
        expect(dlq?.Properties.MessageRetentionPeriod).toBe(14 * 24 * 3600);
        expect(dlq?.Properties.SqsManagedSseEnabled).toBe(true);
        expect(queue?.Properties.SqsManagedSseEnabled).toBe(true);
      }
      expect(dlqs.size).toBe(4);
    });

    it("sets each queue's visibility timeout to >= 6x its consumer's timeout", () => {
      for (const stage of STAGES) {
        const visibility = queues()[queueId(stage)]?.Properties.VisibilityTimeout ?? 0;
        expect(visibility, stage).toBeGreaterThanOrEqual(6 * fns(stage).Properties.Timeout);
      }
    });

    it("denies non-TLS access on all 8 queues", () => {
      const policies = Object.values(resourcesOfType("AWS::SQS::QueuePolicy"));
      const guarded = new Set<string>();
      for (const policy of policies) {
        const parsed = z
          .object({
            Properties: z.object({
              Queues: z.array(Ref),
              PolicyDocument: z.object({ Statement: z.array(z.record(z.string(), z.unknown())) }),
            }),
          })
          .parse(policy);
        const denies = parsed.Properties.PolicyDocument.Statement.some(
          (s) =>
            s.Effect === "Deny" &&
            JSON.stringify(s.Condition) === JSON.stringify({ Bool: { "aws:SecureTransport": "false" } }),
        );
        if (denies) for (const q of parsed.Properties.Queues) guarded.add(q.Ref);
      }
      expect([...guarded].sort()).toEqual(Object.keys(queues()).sort());
    });
  });

  describe("functions", () => {
    it("runs every stage on nodejs24.x arm64 with JSON logs into its own log group with retention", () => {
      const logGroups = resourcesOfType("AWS::Logs::LogGroup");
      for (const stage of STAGES) {
        const p = fns(stage).Properties;
        expect(p.Runtime).toBe("nodejs24.x");
        expect(p.Architectures).toEqual(["arm64"]);
        expect(p.LoggingConfig.LogFormat).toBe("JSON");
        const logGroup = z
          .object({ Properties: z.object({ RetentionInDays: z.number() }) })
          .parse(logGroups[p.LoggingConfig.LogGroup.Ref]);
        expect(logGroup.Properties.RetentionInDays).toBe(30);
        expect(p.TracingConfig?.Mode).not.toBe("Active");
        expect(p.Environment.Variables.NODE_OPTIONS).toBe("--enable-source-maps");
      }
    });

    it("sizes timeouts and memory per stage", () => {
      const expected: Record<StageName, [number, number]> = {
        ingest: [900, 1024],
        evolve: [LLM_FUNCTION_TIMEOUT_SECONDS, 512],
        judge: [LLM_FUNCTION_TIMEOUT_SECONDS, 256],
        finalize: [900, 2048],
      };
      for (const stage of STAGES) {
        expect([fns(stage).Properties.Timeout, fns(stage).Properties.MemorySize], stage).toEqual(
          expected[stage],
        );
      }
      // The LLM stages must outlast one call with all its client retries.
      expect(LLM_FUNCTION_TIMEOUT_SECONDS * 1000).toBeGreaterThan(LLM_TIMEOUT_MS * (LLM_MAX_RETRIES + 1));
    });

    it("sets exactly the ENV variables each stage needs, with names from env.ts", () => {
      const known = new Set<string>(Object.values(ENV));
      const expected: Record<StageName, string[]> = {
        ingest: [
          ENV.table,
          ENV.bucket,
          ENV.ingestQueueUrl,
          ENV.evolveQueueUrl,
          ENV.finalizeQueueUrl,
          ENV.runDefaults,
        ],
        // Evolve and judge have their own queue's URL: they send a delayed copy to it when no rate budget is left.
        evolve: [
          ENV.table,
          ENV.bucket,
          ENV.evolveQueueUrl,
          ENV.judgeQueueUrl,
          ENV.finalizeQueueUrl,
          ENV.openaiSecret,
          ENV.runDefaults,
          ENV.llmTimeoutMs,
          ENV.llmMaxRetries,
          ENV.tokensPerMinute,
          ENV.requestsPerMinute,
          // How long an image not uploaded yet is looked for again after its shard arrived.
          ENV.imageWaitMs,
        ],
        judge: [
          ENV.table,
          ENV.bucket,
          ENV.evolveQueueUrl,
          ENV.judgeQueueUrl,
          ENV.finalizeQueueUrl,
          ENV.openaiSecret,
          ENV.runDefaults,
          ENV.llmTimeoutMs,
          ENV.llmMaxRetries,
          ENV.tokensPerMinute,
          ENV.requestsPerMinute,
        ],
        finalize: [ENV.table, ENV.bucket, ENV.runDefaults],
      };
      const tableId = logicalIdOf("AWS::DynamoDB::GlobalTable", "State");
      for (const stage of STAGES) {
        const vars = fns(stage).Properties.Environment.Variables;
        const names = Object.keys(vars).filter((name) => name !== "NODE_OPTIONS");
        for (const name of names) expect(known.has(name), `${stage}: ${name}`).toBe(true);
        expect(names.sort(), stage).toEqual([...expected[stage]].sort());
        expect(vars[ENV.table]).toEqual({ Ref: tableId });
      }
      expect(fns("evolve").Properties.Environment.Variables[ENV.llmTimeoutMs]).toBe(String(LLM_TIMEOUT_MS));
      expect(fns("evolve").Properties.Environment.Variables[ENV.llmMaxRetries]).toBe(String(LLM_MAX_RETRIES));
      expect(fns("ingest").Properties.Environment.Variables[ENV.evolveQueueUrl]).toEqual({
        Ref: queueId("evolve"),
      });
      expect(fns("judge").Properties.Environment.Variables[ENV.evolveQueueUrl]).toEqual({
        Ref: queueId("evolve"),
      });
      expect(fns("evolve").Properties.Environment.Variables[ENV.judgeQueueUrl]).toEqual({
        Ref: queueId("judge"),
      });
    });

    it("puts the default run settings into the run defaults JSON", () => {
      const json = z.string().parse(fns("evolve").Properties.Environment.Variables[ENV.runDefaults]);
      expect(JSON.parse(json)).toEqual({
        model: "gpt-4o-mini",
        rounds: 3,
        weights: { perception: 0.5, reasoning: 0.25, interaction: 0.25 },
        seed: 3407,
        mode: "online",
      });
    });

    it("consumes each queue with partial batch failures, batch sizes and rate-limit-derived concurrency", () => {
      const limits = {
        tokensPerMinute: DEFAULT_TOKENS_PER_MINUTE,
        requestsPerMinute: DEFAULT_REQUESTS_PER_MINUTE,
      };
      const round = EVOLVE_TOKENS_PER_CALL + JUDGE_TOKENS_PER_CALL;
      const expected: Record<StageName, [number, number]> = {
        ingest: [1, 10],
        evolve: [
          10,
          stageConcurrency(limits, {
            tokensPerCall: EVOLVE_TOKENS_PER_CALL,
            secondsPerCall: SECONDS_PER_CALL,
            batchSize: 10,
            share: EVOLVE_TOKENS_PER_CALL / round,
          }),
        ],
        judge: [
          10,
          stageConcurrency(limits, {
            tokensPerCall: JUDGE_TOKENS_PER_CALL,
            secondsPerCall: SECONDS_PER_CALL,
            batchSize: 10,
            share: JUDGE_TOKENS_PER_CALL / round,
          }),
        ],
        finalize: [1, 10],
      };
      for (const stage of STAGES) {
        const p = stages[stage].mapping.Properties;
        expect(p.FunctionResponseTypes).toEqual(["ReportBatchItemFailures"]);
        expect([p.BatchSize, p.ScalingConfig.MaximumConcurrency], stage).toEqual(expected[stage]);
        // The model stages gather a full batch for up to 2 s: one billed wait for ten records.
        const window = stage === "evolve" || stage === "judge" ? 2 : undefined;
        expect(p.MaximumBatchingWindowInSeconds, stage).toBe(window);
      }
      // The numbers the defaults give, so a formula change is a visible diff: 31.7 calls in flight per stage.
      expect(stages.evolve.mapping.Properties.ScalingConfig.MaximumConcurrency).toBe(3);
      expect(stages.judge.mapping.Properties.ScalingConfig.MaximumConcurrency).toBe(3);
    });
  });

  describe("table and secret", () => {
    it("is an on-demand TableV2 with PITR, TTL, the shared keys and gsi1, retained on delete", () => {
      synth.template.hasResource("AWS::DynamoDB::GlobalTable", {
        Properties: Match.objectLike({
          BillingMode: "PAY_PER_REQUEST",
          KeySchema: [
            { AttributeName: TABLE_SCHEMA.partitionKey, KeyType: "HASH" },
            { AttributeName: TABLE_SCHEMA.sortKey, KeyType: "RANGE" },
          ],
          GlobalSecondaryIndexes: [
            Match.objectLike({
              IndexName: TABLE_SCHEMA.gsi1.indexName,
              KeySchema: [
                { AttributeName: TABLE_SCHEMA.gsi1.partitionKey, KeyType: "HASH" },
                { AttributeName: TABLE_SCHEMA.gsi1.sortKey, KeyType: "RANGE" },
              ],
            }),
          ],
          TimeToLiveSpecification: { AttributeName: TABLE_SCHEMA.ttlAttribute, Enabled: true },
          Replicas: [
            Match.objectLike({ PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true } }),
          ],
        }),
        DeletionPolicy: "Retain",
      });
    });

    it("creates the OpenAI key secret and passes only its ARN to evolve and judge", () => {
      const secretId = logicalIdOf("AWS::SecretsManager::Secret", "OpenAiKey");
      expect(fns("evolve").Properties.Environment.Variables[ENV.openaiSecret]).toEqual({ Ref: secretId });
      expect(fns("judge").Properties.Environment.Variables[ENV.openaiSecret]).toEqual({ Ref: secretId });
      // The key itself is never in the template.
      expect(JSON.stringify(synth.template.toJSON())).not.toMatch(/sk-[A-Za-z0-9]/);
    });
  });

  describe("IAM", () => {
    const allows = (stage: StageName, action: string) =>
      stages[stage].statements.filter((s) => s.Effect === "Allow" && actionsOf(s).includes(action));

    it("lets only evolve and judge read the secret", () => {
      const secretId = logicalIdOf("AWS::SecretsManager::Secret", "OpenAiKey");
      for (const stage of ["evolve", "judge"] as const) {
        const grants = allows(stage, "secretsmanager:GetSecretValue");
        expect(grants.flatMap(resourcesOf), stage).toEqual([{ Ref: secretId }]);
      }
      for (const stage of ["ingest", "finalize"] as const) {
        const anySecret = stages[stage].statements
          .flatMap(actionsOf)
          .filter((a) => a.startsWith("secretsmanager:"));
        expect(anySecret, stage).toEqual([]);
      }
    });

    it("limits S3 object access to the stage's prefixes", () => {
      const objectSuffixes = (stage: StageName, action: string) =>
        allows(stage, action).flatMap(resourcesOf).map(keySuffixOf).sort();
      expect(objectSuffixes("finalize", "s3:PutObject")).toEqual(["/errors/*", "/evolved/*", "/reports/*"]);
      expect(objectSuffixes("finalize", "s3:GetObject")).toEqual([]);
      expect(objectSuffixes("ingest", "s3:GetObject")).toEqual(["/seeds/*"]);
      expect(objectSuffixes("ingest", "s3:PutObject")).toEqual([]);
      expect(objectSuffixes("evolve", "s3:GetObject")).toEqual(["/*"]);
      expect(objectSuffixes("evolve", "s3:PutObject")).toEqual(["/work/*"]);
      // Batch mode keeps a judge request's body under work/ until its batch is built; the judge reads nothing.
      expect(objectSuffixes("judge", "s3:PutObject")).toEqual(["/work/*"]);
      expect(objectSuffixes("judge", "s3:GetObject")).toEqual([]);
      // No S3 action wildcards (s3:* / s3:GetObject*) on any stage.
      for (const stage of STAGES) {
        for (const action of stages[stage].statements.flatMap(actionsOf))
          expect(action, stage).not.toMatch(/\*/);
      }
    });

    it("lets each stage send only to the queues it routes to", () => {
      const sendTargets = (stage: StageName) =>
        allows(stage, "sqs:SendMessage")
          .flatMap(resourcesOf)
          .map((r) => GetAtt.parse(r)["Fn::GetAtt"][0])
          .sort();
      expect(sendTargets("ingest")).toEqual(
        [queueId("evolve"), queueId("finalize"), queueId("ingest")].sort(),
      );
      // Each LLM stage also sends to its own queue: the delayed copy of a message that found no rate budget.
      expect(sendTargets("evolve")).toEqual(
        [queueId("evolve"), queueId("finalize"), queueId("judge")].sort(),
      );
      expect(sendTargets("judge")).toEqual([queueId("evolve"), queueId("finalize"), queueId("judge")].sort());
      expect(sendTargets("finalize")).toEqual([]);
    });

    it("uses no managed policies and no bare '*' resource on the stage roles", () => {
      for (const stage of STAGES) {
        for (const resource of stages[stage].statements.flatMap(resourcesOf))
          expect(resource, stage).not.toBe("*");
        const roleId = fns(stage).Properties.Role["Fn::GetAtt"][0];
        const role = synth.template.toJSON().Resources[roleId];
        expect(role.Properties.ManagedPolicyArns, stage).toBeUndefined();
      }
    });
  });

  it("alarms on every DLQ having a message and every stage function erroring", () => {
    const alarms = Object.values(resourcesOfType("AWS::CloudWatch::Alarm")).map((a) =>
      z
        .object({
          Properties: z.object({
            MetricName: z.string(),
            Namespace: z.string(),
            Threshold: z.number(),
            Period: z.number(),
            ComparisonOperator: z.string(),
            Dimensions: z.array(z.object({ Name: z.string(), Value: z.unknown() })),
          }),
        })
        .parse(a),
    );
    const queues = synth.template.findResources("AWS::SQS::Queue");
    for (const stage of STAGES) {
      const dlqId = QueueResource.parse(queues[queueId(stage)]).Properties.RedrivePolicy?.deadLetterTargetArn[
        "Fn::GetAtt"
      ][0];
      const dlqAlarm = alarms.find(
        (a) =>
          a.Properties.MetricName === "ApproximateNumberOfMessagesVisible" &&
          JSON.stringify(a.Properties.Dimensions[0]?.Value) ===
            JSON.stringify({ "Fn::GetAtt": [dlqId, "QueueName"] }),
      );
      expect(dlqAlarm?.Properties, stage).toMatchObject({
        Threshold: 1,
        ComparisonOperator: "GreaterThanOrEqualToThreshold",
      });
      const errorAlarm = alarms.find(
        (a) =>
          a.Properties.MetricName === "Errors" &&
          JSON.stringify(a.Properties.Dimensions[0]?.Value) === JSON.stringify({ Ref: stages[stage].fnId }),
      );
      expect(errorAlarm?.Properties, stage).toMatchObject({
        Namespace: "AWS/Lambda",
        Threshold: 1,
        Period: 300,
        ComparisonOperator: "GreaterThanOrEqualToThreshold",
      });
    }
    expect(alarms).toHaveLength(8);
  });

  it("outputs the bucket, table, secret and every queue and DLQ URL", () => {
    const outputs = synth.template.toJSON().Outputs;
    const names = [
      "BucketName",
      "TableName",
      "OpenAiSecretArn",
      ...STAGES.flatMap((s) => [`${STAGE_IDS[s]}QueueUrl`, `${STAGE_IDS[s]}DeadLetterQueueUrl`]),
    ];
    expect(Object.keys(outputs).sort()).toEqual(names.sort());
    expect(outputs.EvolveQueueUrl.Value).toEqual({ Ref: queueId("evolve") });
  });
});

describe("MmevolStack settings", () => {
  it("carries model, rounds, weights, seed and base URL into the environment and rate limits into concurrency", () => {
    const synth = synthesize({
      model: "gpt-4.1-mini",
      rounds: 2,
      weights: { perception: 1, reasoning: 0, interaction: 0 },
      seed: 7,
      mode: "batch",
      baseUrl: "http://127.0.0.1:8000/v1",
      tokensPerMinute: 200_000,
      requestsPerMinute: 500,
      evolveBatchSize: 1,
      judgeBatchSize: 1,
    });
    try {
      const vars = LambdaFunction.parse(
        Object.entries(synth.template.findResources("AWS::Lambda::Function")).find(([id]) =>
          id.startsWith("Evolve"),
        )?.[1],
      ).Properties.Environment.Variables;
      expect(JSON.parse(z.string().parse(vars[ENV.runDefaults]))).toEqual({
        model: "gpt-4.1-mini",
        rounds: 2,
        weights: { perception: 1, reasoning: 0, interaction: 0 },
        seed: 7,
        mode: "batch",
      });
      expect(vars[ENV.openaiBaseUrl]).toBe("http://127.0.0.1:8000/v1");
      // 200k TPM: evolve gets 2/3 -> 2222 tok/s x 10 s / 7000 = 3.17 -> 3; judge 1111 x 10 / 3500 = 3.17 -> 3.
      const concurrency = Object.values(synth.template.findResources("AWS::Lambda::EventSourceMapping"))
        .map((m) => Mapping.parse(m).Properties)
        .filter((p) => p.BatchSize === 1)
        .map((p) => p.ScalingConfig.MaximumConcurrency);
      expect(concurrency.sort()).toEqual([10, 10, 3, 3].sort());
    } finally {
      synth.dispose();
    }
  });

  it("rejects invalid settings at synth time", () => {
    expect(() => synthesize({ rounds: 0 })).toThrow(StackSettingsError);
    expect(() => synthesize({ rounds: 0 })).toThrow(/invalid run defaults: rounds/);
    expect(() => synthesize({ evolveBatchSize: 11 })).toThrow(/evolveBatchSize/);
    expect(() => synthesize({ weights: { perception: 0, reasoning: 0, interaction: 0 } })).toThrow(/weights/);
  });
});

describe("readStackContext", () => {
  const fromMap = (values: Record<string, unknown>) => (key: string) => values[key];

  it("parses CLI strings (numbers, JSON weights) and leaves absent settings out", () => {
    const { stackName, props } = readStackContext(
      fromMap({
        model: "gpt-4o-mini",
        tokensPerMinute: "2000000",
        rounds: "4",
        weights: '{"perception":0.6,"reasoning":0.2,"interaction":0.2}',
        unrelated: "ignored",
      }),
    );
    expect(stackName).toBe("Mmevol");
    expect(props).toEqual({
      model: "gpt-4o-mini",
      tokensPerMinute: 2_000_000,
      rounds: 4,
      weights: { perception: 0.6, reasoning: 0.2, interaction: 0.2 },
    });
  });

  it("accepts cdk.json JSON values", () => {
    const { props } = readStackContext(
      fromMap({ seed: 11, requestsPerMinute: 10_000, stackName: "MmevolDev" }),
    );
    expect(props).toEqual({ seed: 11, requestsPerMinute: 10_000 });
  });

  it("names every bad value in one clear error", () => {
    const read = () =>
      readStackContext(fromMap({ tokensPerMinute: "lots", baseUrl: "not a url", rounds: "11" }));
    expect(read).toThrow(/^invalid stack context: /);
    for (const key of ["tokensPerMinute", "baseUrl", "rounds"]) expect(read).toThrow(`-c ${key}: `);
  });
});
