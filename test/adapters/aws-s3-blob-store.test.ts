import { CreateBucketCommand, HeadObjectCommand } from "@aws-sdk/client-s3";
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
