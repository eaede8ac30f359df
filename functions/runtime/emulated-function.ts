// One Lambda function of the synthesized stack, run in this process against an emulated SQS queue: what the
// Lambda service's SQS event source mapping does (poll, build an SQSEvent, invoke, delete what succeeded).
// Started by the emulated stack with the function's resolved environment; the AWS SDK reads the emulator's
// endpoint from AWS_ENDPOINT_URL like any other client.
import {
  DeleteMessageBatchCommand,
  type Message,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
  SQSClient,
} from "@aws-sdk/client-sqs";
import type { Context, SQSEvent } from "aws-lambda";
import { z } from "zod";
import { loadBundledHandler } from "./emulated-handler.ts";

const Settings = z.object({
  EMU_NAME: z.string(),
  EMU_ASSET: z.string(),
  EMU_HANDLER: z.string().regex(/^[\w-]+\.[\w$]+$/),
  EMU_QUEUE_URL: z.string(),
  EMU_QUEUE_ARN: z.string(),
  EMU_BATCH_SIZE: z.coerce.number().int().min(1).max(10),
  /** The mapping's MaximumBatchingWindowInSeconds: how long to gather records before invoking. */
  EMU_BATCH_WINDOW_SECONDS: z.coerce.number().min(0).max(300).default(0),
  EMU_CONCURRENCY: z.coerce.number().int().min(1),
  EMU_TIMEOUT_SECONDS: z.coerce.number().int().min(1),
  AWS_REGION: z.string().default("us-east-1"),
  /** Test-only: share of handled messages delivered a second time (S3 events included). */
  EMU_DUPLICATE_RATE: z.coerce.number().min(0).max(1).default(0),
});
const settings = Settings.parse(process.env);
const duplicateRate = settings.EMU_DUPLICATE_RATE;
const handler = await loadBundledHandler(settings.EMU_ASSET, settings.EMU_HANDLER);
const BatchResponse = z
  .object({ batchItemFailures: z.array(z.object({ itemIdentifier: z.string() })) })
  .partial();

const sqs = new SQSClient({});
let stopping = false;
process.on("SIGTERM", () => {
  stopping = true;
});
process.on("SIGINT", () => {
  stopping = true;
});

const say = (line: string) => process.stdout.write(`[${settings.EMU_NAME}] ${line}\n`);

function toEvent(messages: readonly Message[]): SQSEvent {
  return {
    Records: messages.map((m) => ({
      messageId: m.MessageId ?? "",
      receiptHandle: m.ReceiptHandle ?? "",
      body: m.Body ?? "",
      attributes: {
        ApproximateReceiveCount: m.Attributes?.ApproximateReceiveCount ?? "1",
        SentTimestamp: m.Attributes?.SentTimestamp ?? String(Date.now()),
        SenderId: m.Attributes?.SenderId ?? "emulator",
        ApproximateFirstReceiveTimestamp:
          m.Attributes?.ApproximateFirstReceiveTimestamp ?? String(Date.now()),
      },
      // As Lambda's poller hands them over: string attributes only (the stack sends no binary ones).
      messageAttributes: Object.fromEntries(
        Object.entries(m.MessageAttributes ?? {}).map(([name, value]) => [
          name,
          {
            dataType: value.DataType ?? "String",
            ...(value.StringValue === undefined ? {} : { stringValue: value.StringValue }),
            stringListValues: [],
            binaryListValues: [],
          },
        ]),
      ),
      md5OfBody: m.MD5OfBody ?? "",
      eventSource: "aws:sqs",
      eventSourceARN: settings.EMU_QUEUE_ARN,
      awsRegion: settings.AWS_REGION,
    })),
  };
}

function contextFor(deadline: number): Context {
  return {
    callbackWaitsForEmptyEventLoop: false,
    functionName: settings.EMU_NAME,
    functionVersion: "$LATEST",
    invokedFunctionArn: `arn:aws:lambda:${settings.AWS_REGION}:123456789012:function:${settings.EMU_NAME}`,
    memoryLimitInMB: "1024",
    awsRequestId: crypto.randomUUID(),
    logGroupName: `/aws/lambda/${settings.EMU_NAME}`,
    logStreamName: "emulated",
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    done: () => {},
    fail: () => {},
    succeed: () => {},
  };
}

const receive = async (max: number, waitSeconds: number): Promise<Message[]> => {
  const received = await sqs.send(
    new ReceiveMessageCommand({
      QueueUrl: settings.EMU_QUEUE_URL,
      MaxNumberOfMessages: max,
      WaitTimeSeconds: waitSeconds,
      MessageSystemAttributeNames: ["All"],
      MessageAttributeNames: ["All"],
    }),
  );
  return received.Messages ?? [];
};

/**
 * Like Lambda's poller with a batching window: from the first record, keep gathering until the batch is full
 * or the window has passed, then invoke once.
 */
async function gather(): Promise<Message[]> {
  const messages = await receive(settings.EMU_BATCH_SIZE, 1);
  if (messages.length === 0) return messages;
  const closes = Date.now() + settings.EMU_BATCH_WINDOW_SECONDS * 1000;
  while (!stopping && messages.length < settings.EMU_BATCH_SIZE && Date.now() < closes) {
    // Long polls of a whole second while one fits in the window; then one look at its close.
    const lastLook = closes - Date.now() < 1000;
    if (lastLook) await new Promise((resolve) => setTimeout(resolve, Math.max(0, closes - Date.now())));
    messages.push(...(await receive(settings.EMU_BATCH_SIZE - messages.length, lastLook ? 0 : 1)));
    if (lastLook) break;
  }
  return messages;
}

async function poll(): Promise<void> {
  while (!stopping) {
    const messages = await gather();
    if (messages.length === 0) continue;
    const started = Date.now();
    let failed = new Set<string>();
    try {
      const output = await handler(
        toEvent(messages),
        contextFor(started + settings.EMU_TIMEOUT_SECONDS * 1000),
      );
      const response = BatchResponse.parse(output ?? {});
      failed = new Set((response.batchItemFailures ?? []).map((f) => f.itemIdentifier));
    } catch (error) {
      say(`invocation failed: ${error instanceof Error ? error.message : String(error)}`);
      failed = new Set(messages.map((m) => m.MessageId ?? ""));
    }
    const ok = messages.filter((m) => !failed.has(m.MessageId ?? ""));
    const bad = messages.filter((m) => failed.has(m.MessageId ?? ""));
    if (ok.length > 0) {
      await sqs.send(
        new DeleteMessageBatchCommand({
          QueueUrl: settings.EMU_QUEUE_URL,
          Entries: ok.map((m, i) => ({ Id: String(i), ReceiptHandle: m.ReceiptHandle ?? "" })),
        }),
      );
    }
    // Failed records stay in the queue: SQS redelivers them after their visibility timeout (which the handler
    // shortens to the provider's retry-after), and moves them to the DLQ after maxReceiveCount.
    if (duplicateRate > 0) {
      // At-least-once delivery made visible: a share of what was handled arrives once more.
      const copies = ok.filter(() => Math.random() < duplicateRate);
      if (copies.length > 0) {
        await sqs.send(
          new SendMessageBatchCommand({
            QueueUrl: settings.EMU_QUEUE_URL,
            Entries: copies.map((m, i) => ({ Id: String(i), MessageBody: m.Body ?? "" })),
          }),
        );
      }
    }
    say(`${messages.length} record(s): ${ok.length} ok, ${bad.length} failed (${Date.now() - started} ms)`);
  }
}

say(
  `polling ${settings.EMU_QUEUE_URL} (batch ${settings.EMU_BATCH_SIZE}, concurrency ${settings.EMU_CONCURRENCY})`,
);
await Promise.all(Array.from({ length: settings.EMU_CONCURRENCY }, poll));
