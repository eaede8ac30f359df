import {
  SendMessageBatchCommand,
  type SendMessageBatchRequestEntry,
  type SQSClient,
} from "@aws-sdk/client-sqs";
import { MmevolError } from "../../ports/errors.ts";
import { Message, type Stage, type WorkQueue } from "../../ports/messages.ts";

export interface SqsWorkQueueOptions {
  readonly client: SQSClient;
  /** Only the queues this function was granted; sending to another stage is a wiring bug. */
  readonly queueUrls: Partial<Record<Stage, string>>;
  /** How many SendMessageBatch calls run at once. Default 8. */
  readonly parallelBatches?: number;
  /** How many times entries SQS reports as failed are sent again. Default 3. */
  readonly maxRetries?: number;
}

/** SQS takes at most 10 entries per SendMessageBatch. */
const BATCH_SIZE = 10;

/** A send that could not be completed: the message was not granted a queue, or SQS kept refusing entries. */
export class QueueSendError extends MmevolError {}

/** The WorkQueue over one SQS queue per stage. Bodies are the message JSON (keys only). */
export class SqsWorkQueue implements WorkQueue {
  private readonly client: SQSClient;
  private readonly queueUrls: Partial<Record<Stage, string>>;
  private readonly parallelBatches: number;
  private readonly maxRetries: number;

  constructor(options: SqsWorkQueueOptions) {
    this.client = options.client;
    this.queueUrls = options.queueUrls;
    this.parallelBatches = options.parallelBatches ?? 8;
    this.maxRetries = options.maxRetries ?? 3;
  }

  async send(messages: readonly Message[]): Promise<void> {
    // Route everything first, so a missing queue fails the call before anything is sent.
    const byUrl = new Map<string, string[]>();
    for (const message of messages) {
      const parsed = Message.parse(message);
      const url = this.queueUrls[parsed.kind];
      if (url === undefined || url === "") {
        throw new QueueSendError(
          `no queue URL for "${parsed.kind}" messages: this function was not granted the ${parsed.kind} queue`,
          { retryable: false },
        );
      }
      const bodies = byUrl.get(url) ?? [];
      bodies.push(JSON.stringify(parsed));
      byUrl.set(url, bodies);
    }
    const batches: { url: string; bodies: string[] }[] = [];
    for (const [url, bodies] of byUrl) {
      for (let i = 0; i < bodies.length; i += BATCH_SIZE)
        batches.push({ url, bodies: bodies.slice(i, i + BATCH_SIZE) });
    }
    // A fixed number of workers drain the batch list: fast fan-out without unbounded concurrency.
    let next = 0;
    const worker = async (): Promise<void> => {
      for (;;) {
        const batch = batches[next];
        next += 1;
        if (batch === undefined) return;
        await this.sendBatch(batch.url, batch.bodies);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.parallelBatches, batches.length) }, worker));
  }

  private async sendBatch(url: string, bodies: readonly string[]): Promise<void> {
    let entries: SendMessageBatchRequestEntry[] = bodies.map((body, i) => ({
      Id: String(i),
      MessageBody: body,
    }));
    for (let attempt = 0; ; attempt += 1) {
      const out = await this.client.send(new SendMessageBatchCommand({ QueueUrl: url, Entries: entries }));
      const failed = out.Failed ?? [];
      if (failed.length === 0) return;
      if (attempt >= this.maxRetries) {
        const codes = [...new Set(failed.map((f) => f.Code ?? "unknown"))].join(", ");
        throw new QueueSendError(
          `SQS refused ${failed.length} message(s) after ${attempt + 1} attempts: ${codes}`,
          {
            // A sender fault (bad message) will not go away on a retry.
            retryable: !failed.some((f) => f.SenderFault === true),
          },
        );
      }
      const failedIds = new Set(failed.map((f) => f.Id));
      entries = entries.filter((entry) => failedIds.has(entry.Id));
      await sleep(100 * 2 ** attempt);
    }
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
