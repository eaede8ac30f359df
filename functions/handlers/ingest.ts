import { makeSqsHandler } from "../runtime/lambda.ts";
import { ingestMessagesOf } from "./s3-event.ts";

/** S3 ObjectCreated events for seeds/<run>/<shard>.json[l] (and continuations of large shards). */
export const handler = makeSqsHandler("ingest", ingestMessagesOf);
