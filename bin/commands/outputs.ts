import { existsSync, readFileSync } from "node:fs";
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { S3Client } from "@aws-sdk/client-s3";
import { SQSClient } from "@aws-sdk/client-sqs";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import { z } from "zod";
import { DynamoStateStore } from "../../functions/adapters/aws/dynamodb-state-store.ts";
import { InvalidInputError } from "../../functions/ports/errors.ts";
import type { Stage } from "../../functions/ports/messages.ts";

export const QUEUE_STAGES: readonly Stage[] = ["ingest", "evolve", "judge", "finalize"];

/** The CfnOutput names of the stack (lib/mmevol-stack.ts) for a stage's queue and its dead-letter queue. */
const OUTPUT_PREFIX: Record<Stage, string> = {
  ingest: "Ingest",
  evolve: "Evolve",
  judge: "Judge",
  finalize: "Finalize",
};

export interface StackOutputs {
  readonly stackName: string | null;
  readonly table: string;
  readonly bucket: string | null;
  readonly queues: Readonly<Record<Stage, { readonly url: string; readonly deadLetterUrl: string }>>;
  /** Set by the emulator's outputs file: the AWS endpoint to talk to. */
  readonly endpoint: string | null;
}

const Flat = z.record(z.string(), z.string());
/** `cdk deploy --outputs-file` writes `{ "<stack>": { "<output>": "<value>" } }`; a flat object is accepted too. */
const OutputsFile = z.union([Flat, z.record(z.string(), Flat)]);

/** Reads a stack's outputs from a `cdk deploy --outputs-file` file or the emulator's `emulated-outputs.json`. */
export function readStackOutputs(path: string, stack?: string): StackOutputs {
  if (!existsSync(path)) throw new InvalidInputError(`outputs file not found: ${path}`);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new InvalidInputError(`${path}: not valid JSON`, { cause: error });
  }
  const parsed = OutputsFile.safeParse(json);
  if (!parsed.success) {
    throw new InvalidInputError(`${path}: expected { "<stack>": { "<output>": "<value>" } }`);
  }
  let stackName: string | null = null;
  let values: Record<string, string>;
  const flat = Flat.safeParse(parsed.data);
  if (flat.success && "TableName" in flat.data) {
    values = flat.data;
  } else {
    const stacks = z.record(z.string(), Flat).parse(parsed.data);
    const names = Object.keys(stacks);
    const chosen = stack ?? (names.length === 1 ? names[0] : undefined);
    const found = chosen === undefined ? undefined : stacks[chosen];
    if (names.length === 0)
      throw new InvalidInputError(
        `${path}: no stack outputs in it (expected the file \`cdk deploy --outputs-file\` writes, or the emulator's emulated-outputs.json)`,
      );
    if (chosen === undefined || found === undefined) {
      throw new InvalidInputError(
        `${path}: ${stack ? `no stack "${stack}"` : "several stacks"}; choose one with --stack (${names.join(", ")})`,
      );
    }
    stackName = chosen;
    values = found;
  }
  const need = (key: string): string => {
    const value = values[key];
    if (value === undefined || value === "") {
      throw new InvalidInputError(`${path}: output ${key} is missing (is this an mmevol stack?)`);
    }
    return value;
  };
  const queue = (stage: Stage) => ({
    url: need(`${OUTPUT_PREFIX[stage]}QueueUrl`),
    deadLetterUrl: need(`${OUTPUT_PREFIX[stage]}DeadLetterQueueUrl`),
  });
  const queues = {
    ingest: queue("ingest"),
    evolve: queue("evolve"),
    judge: queue("judge"),
    finalize: queue("finalize"),
  };
  return {
    stackName,
    table: need("TableName"),
    bucket: values.BucketName ?? null,
    queues,
    endpoint: values.EmulatorEndpoint ?? null,
  };
}

export interface AwsClients {
  readonly sqs: SQSClient;
  readonly state: DynamoStateStore;
  readonly s3: S3Client;
}

/**
 * Clients for the stack: an explicit endpoint (flag, or the emulator's outputs) wins over AWS_ENDPOINT_URL.
 * Against an emulator, a region and dummy credentials are filled in when the environment has none.
 */
export function awsClientsFor(outputs: StackOutputs, endpoint?: string): AwsClients {
  const url = endpoint ?? outputs.endpoint ?? undefined;
  const config =
    url === undefined
      ? {}
      : {
          endpoint: url,
          region: process.env.AWS_REGION ?? "us-east-1",
          ...(process.env.AWS_ACCESS_KEY_ID
            ? {}
            : { credentials: { accessKeyId: "test", secretAccessKey: "test" } }),
        };
  const sqs = new SQSClient(config);
  const state = new DynamoStateStore({
    client: DynamoDBDocumentClient.from(new DynamoDBClient(config), {
      marshallOptions: { removeUndefinedValues: true },
    }),
    table: outputs.table,
  });
  // Path-style addressing where an endpoint is given: emulators serve buckets as paths, not host names.
  const s3 = new S3Client(url === undefined ? {} : { ...config, forcePathStyle: true });
  return { sqs, state, s3 };
}
