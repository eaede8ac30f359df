import type { SQSRecord } from "aws-lambda";
import { describe, expect, it } from "vitest";
import { decodeS3Key, ingestMessagesOf } from "../../functions/handlers/s3-event.ts";

const record = (body: unknown): SQSRecord => ({
  messageId: "m1",
  receiptHandle: "r",
  body: JSON.stringify(body),
  attributes: {
    ApproximateReceiveCount: "1",
    SentTimestamp: "0",
    SenderId: "s3",
    ApproximateFirstReceiveTimestamp: "0",
  },
  messageAttributes: {},
  md5OfBody: "",
  eventSource: "aws:sqs",
  eventSourceARN: "arn:aws:sqs:us-east-1:123456789012:ingest",
  awsRegion: "us-east-1",
});

const s3Event = (key: string, eTag = "abc123", eventName = "ObjectCreated:Put") => ({
  Records: [{ eventName, s3: { bucket: { name: "b" }, object: { key, eTag, size: 10 } } }],
});

describe("ingest messages from the ingest queue", () => {
  it("skips the s3:TestEvent sent when notifications are configured", () => {
    expect(ingestMessagesOf(record({ Service: "Amazon S3", Event: "s3:TestEvent", Bucket: "b" }))).toEqual(
      [],
    );
  });

  it("turns a seed shard upload into an ingest message with run, shard, key and ETag", () => {
    expect(ingestMessagesOf(record(s3Event("seeds/my-run/part-0001.jsonl")))).toEqual([
      {
        kind: "ingest",
        run: "my-run",
        shard: "part-0001",
        key: "seeds/my-run/part-0001.jsonl",
        etag: "abc123",
      },
    ]);
  });

  it("decodes keys the way S3 encodes them, and tolerates emulators that do not", () => {
    expect(decodeS3Key("seeds/r/my+shard%C3%BC.jsonl")).toBe("seeds/r/my shardü.jsonl");
    expect(decodeS3Key("seeds/r/100%.jsonl")).toBe("seeds/r/100%.jsonl");
    const [message] = ingestMessagesOf(record(s3Event("seeds/r/a+b.json")));
    expect(message?.key).toBe("seeds/r/a b.json");
  });

  it("gives no work for run.json, images, other prefixes and deletions", () => {
    expect(ingestMessagesOf(record(s3Event("seeds/r/run.json")))).toEqual([]);
    expect(ingestMessagesOf(record(s3Event("seeds/r/images/a.png")))).toEqual([]);
    expect(ingestMessagesOf(record(s3Event("evolved/r/a.jsonl")))).toEqual([]);
    expect(ingestMessagesOf(record(s3Event("seeds/r/a.jsonl", "e", "ObjectRemoved:Delete")))).toEqual([]);
  });

  it("passes our own continuation messages through", () => {
    const continuation = {
      kind: "ingest",
      run: "r",
      shard: "s",
      key: "seeds/r/s.jsonl",
      etag: "e",
      from: 5001,
    };
    expect(ingestMessagesOf(record(continuation))).toEqual([continuation]);
  });

  it("throws on a body that is neither, so the message is retried and then dead-lettered, not lost", () => {
    expect(() => ingestMessagesOf(record({ hello: "world" }))).toThrow();
  });
});
