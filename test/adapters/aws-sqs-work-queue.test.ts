import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { CreateQueueCommand, ReceiveMessageCommand, type Message as SqsMessage } from "@aws-sdk/client-sqs";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { QueueSendError, SqsWorkQueue } from "../../functions/adapters/aws/sqs-work-queue.ts";
import { Message } from "../../functions/ports/messages.ts";
import { ensureMoto, sqsClient, uniqueName } from "../helpers/moto.ts";

const { endpoint } = await ensureMoto();
const client = sqsClient(endpoint);

const createQueue = async (stage: string): Promise<string> => {
  const out = await client.send(new CreateQueueCommand({ QueueName: uniqueName(stage) }));
  if (out.QueueUrl === undefined) throw new Error("no queue URL");
  return out.QueueUrl;
};

/** Everything currently in the queue (receives until an empty answer). */
async function drain(url: string): Promise<Message[]> {
  const received: SqsMessage[] = [];
  for (;;) {
    const out = await client.send(
      new ReceiveMessageCommand({ QueueUrl: url, MaxNumberOfMessages: 10, VisibilityTimeout: 60 }),
    );
    if (out.Messages === undefined || out.Messages.length === 0) break;
    received.push(...out.Messages);
  }
  return received.map((m) => Message.parse(JSON.parse(m.Body ?? "")));
}

describe("SqsWorkQueue", () => {
  it("routes each message to the queue of its kind", async () => {
    const evolve = await createQueue("evolve");
    const judge = await createQueue("judge");
    const finalize = await createQueue("finalize");
    const queue = new SqsWorkQueue({ client, queueUrls: { evolve, judge, finalize } });
    await queue.send([
      { kind: "evolve", run: "r", shard: "s", sample: "a", round: 1 },
      { kind: "judge", run: "r", shard: "s", sample: "b", round: 2 },
      { kind: "finalize", run: "r", shard: "s" },
      { kind: "evolve", run: "r", shard: "s", sample: "c", round: 1 },
    ]);
    expect((await drain(evolve)).map((m) => (m.kind === "evolve" ? m.sample : "")).sort()).toEqual([
      "a",
      "c",
    ]);
    expect(await drain(judge)).toEqual([{ kind: "judge", run: "r", shard: "s", sample: "b", round: 2 }]);
    expect(await drain(finalize)).toEqual([{ kind: "finalize", run: "r", shard: "s" }]);
  });

  it("fans out more messages than one batch holds, each exactly once", async () => {
    const evolve = await createQueue("evolve");
    const queue = new SqsWorkQueue({ client, queueUrls: { evolve }, parallelBatches: 4 });
    const messages: Message[] = Array.from({ length: 95 }, (_, i) => ({
      kind: "evolve",
      run: "r",
      shard: "s",
      sample: `k${i}`,
      round: 1,
    }));
    await queue.send(messages);
    const got = await drain(evolve);
    expect(got).toHaveLength(95);
    expect(new Set(got.map((m) => (m.kind === "evolve" ? m.sample : ""))).size).toBe(95);
  });

  it("refuses a message whose stage it was not granted, before sending anything", async () => {
    const evolve = await createQueue("evolve");
    const queue = new SqsWorkQueue({ client, queueUrls: { evolve } });
    const sent = queue.send([
      { kind: "evolve", run: "r", shard: "s", sample: "a", round: 1 },
      { kind: "judge", run: "r", shard: "s", sample: "a", round: 1 },
    ]);
    await expect(sent).rejects.toBeInstanceOf(QueueSendError);
    await expect(sent).rejects.toThrow(/not granted the judge queue/);
    expect(await drain(evolve)).toEqual([]);
  });

  it("sends keys only: unknown fields are dropped, bad messages refused", async () => {
    const ingest = await createQueue("ingest");
    const queue = new SqsWorkQueue({ client, queueUrls: { ingest } });
    const message = {
      kind: "ingest" as const,
      run: "r",
      shard: "s",
      key: "seeds/r/s.jsonl",
      extra: "big body",
    };
    await queue.send([message]);
    expect(await drain(ingest)).toEqual([{ kind: "ingest", run: "r", shard: "s", key: "seeds/r/s.jsonl" }]);
    await expect(queue.send([{ kind: "ingest", run: "", shard: "s", key: "k" }])).rejects.toThrow();
  });

  it("fails loudly on a queue that does not exist", async () => {
    const queue = new SqsWorkQueue({
      client,
      queueUrls: { evolve: `${endpoint}/123456789012/${uniqueName("none")}` },
    });
    await expect(
      queue.send([{ kind: "evolve", run: "r", shard: "s", sample: "a", round: 1 }]),
    ).rejects.toThrow();
  });

  it("sends again only the entries SQS reported as failed, then gives up", async () => {
    // moto never fails single entries, so a small SQS stand-in on 127.0.0.1 does: it refuses entry "1" a set
    // number of times and accepts everything else.
    const seen: string[][] = [];
    let refusals = 2;
    const server = createServer((request, response) => {
      let body = "";
      request.on("data", (chunk: Buffer) => {
        body += chunk.toString();
      });
      request.on("end", () => {
        const entries = BatchBody.parse(JSON.parse(body)).Entries;
        seen.push(entries.map((e) => e.Id));
        const failed = entries.filter((e) => e.Id === "1" && refusals > 0);
        if (failed.length > 0) refusals -= 1;
        response.setHeader("content-type", "application/x-amz-json-1.0");
        response.end(
          JSON.stringify({
            Successful: entries
              .filter((e) => !failed.includes(e))
              .map((e) => ({ Id: e.Id, MessageId: `m-${e.Id}`, MD5OfMessageBody: md5(e.MessageBody) })),
            Failed: failed.map((e) => ({
              Id: e.Id,
              Code: "InternalError",
              SenderFault: false,
              Message: "busy",
            })),
          }),
        );
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const address = server.address();
    const port = typeof address === "object" && address !== null ? address.port : 0;
    try {
      const standIn = sqsClient(`http://127.0.0.1:${port}`);
      const queue = new SqsWorkQueue({
        client: standIn,
        queueUrls: { evolve: `http://127.0.0.1:${port}/123456789012/q` },
        maxRetries: 3,
      });
      const three: Message[] = ["a", "b", "c"].map((sample) => ({
        kind: "evolve",
        run: "r",
        shard: "s",
        sample,
        round: 1,
      }));
      await queue.send(three);
      expect(seen).toEqual([["0", "1", "2"], ["1"], ["1"]]);

      seen.length = 0;
      refusals = 10;
      const error = await queue.send(three).then(
        () => null,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(QueueSendError);
      expect(error instanceof QueueSendError && error.retryable).toBe(true);
      expect(seen).toHaveLength(4);
    } finally {
      server.close();
    }
  });
});

const BatchBody = z.object({ Entries: z.array(z.object({ Id: z.string(), MessageBody: z.string() })) });
const md5 = (text: string): string => createHash("md5").update(text).digest("hex");
