import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { repoRoot } from "./files.ts";

/** The emulated stack's bucket as tests and benchmarks use it: put, read, wait for an output to appear. */
export function testBucket(s3: S3Client, bucket: string) {
  const put = async (key: string, body: Uint8Array | string) => {
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  };
  const exists = async (key: string): Promise<boolean> => {
    try {
      await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
      return true;
    } catch {
      return false;
    }
  };
  return {
    put,
    exists,
    text: async (key: string): Promise<string> =>
      (await (await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }))).Body?.transformToString()) ??
      "",
    /** Polls until the object exists; on time-out, throws with `context()` (e.g. the functions' last lines). */
    waitFor: async (key: string, timeoutMs: number, context: () => string = () => ""): Promise<void> => {
      const until = Date.now() + timeoutMs;
      while (!(await exists(key))) {
        if (Date.now() > until) throw new Error(`timed out waiting for ${key}\n${context()}`);
        await new Promise((r) => setTimeout(r, 250));
      }
    },
    /** The demo images under `<prefix>images/`, where the demo shard's paths point. */
    uploadDemoImages: async (prefix: string): Promise<string[]> => {
      const dir = join(repoRoot, "examples/seeds/images");
      const names = readdirSync(dir);
      for (const name of names) await put(`${prefix}images/${name}`, readFileSync(join(dir, name)));
      return names;
    },
  };
}
