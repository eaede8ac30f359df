import type { SQSRecord } from "aws-lambda";
import { z } from "zod";
import { parseSeedKey } from "../pipeline/shard-config.ts";
import { IngestMessage } from "../ports/messages.ts";

const S3EventRecord = z.object({
  eventName: z.string(),
  s3: z.object({
    bucket: z.object({ name: z.string() }),
    object: z.object({ key: z.string(), eTag: z.string().optional(), size: z.number().optional() }),
  }),
});
const S3Event = z.object({ Records: z.array(S3EventRecord) });
const TestEvent = z.object({ Event: z.literal("s3:TestEvent") });

/**
 * S3 URL-encodes keys in events (spaces as `+`). Emulators sometimes do not; a key that does not decode
 * cleanly is taken as it is.
 */
export function decodeS3Key(key: string): string {
  try {
    return decodeURIComponent(key.replace(/\+/g, " "));
  } catch {
    return key;
  }
}

/**
 * The ingest queue carries S3 notifications (one or more records) and our own continuation messages.
 * Test events and keys that are not seed shards (run.json, images) give no work.
 */
export function ingestMessagesOf(record: SQSRecord): IngestMessage[] {
  const body: unknown = JSON.parse(record.body);
  if (TestEvent.safeParse(body).success) return [];
  const own = IngestMessage.safeParse(body);
  if (own.success) return [own.data];
  const event = S3Event.parse(body);
  return event.Records.flatMap((r) => {
    if (!r.eventName.startsWith("ObjectCreated")) return [];
    const key = decodeS3Key(r.s3.object.key);
    const names = parseSeedKey(key);
    if (!names) return [];
    return [
      {
        kind: "ingest" as const,
        run: names.run,
        shard: names.shard,
        key,
        ...(r.s3.object.eTag ? { etag: r.s3.object.eTag } : {}),
      },
    ];
  });
}
