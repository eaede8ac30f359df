import { CreateBucketCommand, HeadObjectCommand, ListMultipartUploadsCommand } from "@aws-sdk/client-s3";
import { describe, expect, it } from "vitest";
import { S3BlobStore } from "../../functions/adapters/aws/s3-blob-store.ts";
import { BlobNotFoundError } from "../../functions/ports/blob-store.ts";
import { ensureMoto, s3Client, uniqueName } from "../helpers/moto.ts";

const { endpoint } = await ensureMoto();
const client = s3Client(endpoint);
const bucket = uniqueName("blobs");
await client.send(new CreateBucketCommand({ Bucket: bucket }));
// Small list pages, so listing crosses page boundaries.
const store = new S3BlobStore({ client, bucket, listPageSize: 7 });

const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

describe("S3BlobStore", () => {
  it("puts and gets bytes and strings, with their content type and size", async () => {
    await store.put("a/one.json", '{"x":1}', "application/json");
    const bytes = new Uint8Array([0, 1, 2, 250, 255]);
    await store.put("a/two.bin", bytes);
    expect(text(await store.get("a/one.json"))).toBe('{"x":1}');
    expect(await store.get("a/two.bin")).toEqual(bytes);
    expect(await store.size("a/one.json")).toBe(7);
    expect(await store.exists("a/two.bin")).toBe(true);
    const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: "a/one.json" }));
    expect(head.ContentType).toBe("application/json");
  });

  it("reports a missing object as BlobNotFoundError, false and null", async () => {
    await expect(store.get("missing/key")).rejects.toBeInstanceOf(BlobNotFoundError);
    expect(await store.exists("missing/key")).toBe(false);
    expect(await store.size("missing/key")).toBeNull();
    expect(await store.headEtag("missing/key")).toBeNull();
    const consume = async () => {
      for await (const _ of store.stream("missing/key")) {
        // never reached
      }
    };
    await expect(consume()).rejects.toBeInstanceOf(BlobNotFoundError);
  });

  it("streams a large object in several chunks that add up to it", async () => {
    const big = new Uint8Array(3 * 1024 * 1024).map((_, i) => i % 251);
    await store.put("big/object.bin", big);
    const chunks: Uint8Array[] = [];
    for await (const chunk of store.stream("big/object.bin")) chunks.push(chunk);
    expect(chunks.length).toBeGreaterThan(1);
    expect(Buffer.concat(chunks).equals(Buffer.from(big))).toBe(true);
    // Stopping early must not hang or throw.
    for await (const _ of store.stream("big/object.bin")) break;
  });

  it("writes an object larger than a part in pieces: a multipart upload that appears whole on close", async () => {
    await store.put("w/training.jsonl", "old\n");
    const writer = store.writer("w/training.jsonl", "application/x-ndjson");
    // 12 MiB in 1 KiB lines: three of lib-storage's 5 MiB parts.
    const line = `${JSON.stringify({ pad: "y".repeat(1000) })}\n`;
    const count = Math.ceil((12 * 1024 * 1024) / line.length);
    for (let i = 0; i < count; i++) await writer.write(line);
    expect(text(await store.get("w/training.jsonl"))).toBe("old\n");
    await writer.close();
    const body = text(await store.get("w/training.jsonl"));
    expect(body.length).toBe(count * line.length);
    expect(body.startsWith(line) && body.endsWith(line)).toBe(true);
    // A multipart object's ETag ends with its part count.
    expect(await store.headEtag("w/training.jsonl")).toMatch(/-3$/);
    const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: "w/training.jsonl" }));
    expect(head.ContentType).toBe("application/x-ndjson");
  }, 60_000);

  it("writes a small or empty object in one PUT, and an aborted writer leaves the old object and no parts", async () => {
    const small = store.writer("w/small.jsonl");
    await small.write('{"a":1}\n');
    await small.write('{"a":2}\n');
    await small.close();
    expect(text(await store.get("w/small.jsonl"))).toBe('{"a":1}\n{"a":2}\n');
    expect(await store.headEtag("w/small.jsonl")).not.toMatch(/-/);
    const empty = store.writer("w/empty.jsonl");
    await empty.close();
    expect(await store.size("w/empty.jsonl")).toBe(0);

    await store.put("w/kept.jsonl", "kept\n");
    const dropped = store.writer("w/kept.jsonl");
    const chunk = "z".repeat(1024 * 1024);
    for (let i = 0; i < 7; i++) await dropped.write(chunk);
    const uploads = async () =>
      (await client.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: "w/" }))).Uploads ?? [];
    // More than a part was written: the multipart upload is open before the abort.
    for (let waited = 0; (await uploads()).length === 0 && waited < 5000; waited += 50)
      await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await uploads()).toHaveLength(1);
    await dropped.abort();
    expect(text(await store.get("w/kept.jsonl"))).toBe("kept\n");
    expect(await uploads()).toEqual([]);
  }, 60_000);

  it("returns the ETag without quotes, changing with the content", async () => {
    await store.put("etag/x.txt", "hello");
    const first = await store.headEtag("etag/x.txt");
    // S3's single-part ETag is the MD5 of the body.
    expect(first).toBe("5d41402abc4b2a76b9719d911017c592");
    await store.put("etag/x.txt", "hello again");
    expect(await store.headEtag("etag/x.txt")).not.toBe(first);
  });

  it("lists every key under a prefix at any depth, across pages", async () => {
    const keys = Array.from({ length: 40 }, (_, i) => `list/p/${String(i).padStart(4, "0")}.txt`);
    await Promise.all(keys.map((key) => store.put(key, "x")));
    await store.put("list/deep/er/k.txt", "x");
    await store.put("listing-not-under.txt", "x");
    const listed = await store.list("list/");
    expect(listed).toHaveLength(41);
    expect(listed[0]).toBe("list/deep/er/k.txt");
    expect(listed.slice(1)).toEqual(keys);
    expect(await store.list("list/p/001")).toHaveLength(10);
    expect(await store.list("nothing/")).toEqual([]);
  });
});
