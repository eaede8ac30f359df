import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { BlobNotFoundError } from "../../functions/ports/blob-store.ts";
import { InvalidInputError } from "../../functions/ports/errors.ts";

const base = mkdtempSync(path.join(os.tmpdir(), "mmevol-blobs-"));
afterAll(() => rmSync(base, { recursive: true, force: true }));

let counter = 0;
const freshStore = (): { store: FsBlobStore; root: string } => {
  counter += 1;
  const root = path.join(base, `root-${counter}`);
  return { store: new FsBlobStore(root), root };
};

const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);

const allFiles = (dir: string): string[] =>
  readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(dir, path.join(entry.parentPath, entry.name)));

describe("FsBlobStore", () => {
  it("puts and gets strings and bytes, creating parent directories", async () => {
    const { store, root } = freshStore();
    await store.put("seeds/r1/a.jsonl", '{"id":1}\n');
    await store.put("evolved/r1/deep/b.bin", new Uint8Array([0, 1, 255]));
    expect(text(await store.get("seeds/r1/a.jsonl"))).toBe('{"id":1}\n');
    expect([...(await store.get("evolved/r1/deep/b.bin"))]).toEqual([0, 1, 255]);
    expect(allFiles(root).sort()).toEqual(["evolved/r1/deep/b.bin", "seeds/r1/a.jsonl"]);
  });

  it("overwrites atomically and leaves no temp files", async () => {
    const { store, root } = freshStore();
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.put("reports/r1/s.json", `version ${i}`)));
    expect(text(await store.get("reports/r1/s.json"))).toMatch(/^version \d+$/);
    expect(allFiles(root)).toEqual(["reports/r1/s.json"]);
  });

  it("writes an object in pieces that appears whole on close, and not before", async () => {
    const { store, root } = freshStore();
    await store.put("out/data.jsonl", "old\n");
    const writer = store.writer("out/data.jsonl");
    const lines = Array.from({ length: 20_000 }, (_, i) => `{"line":${i},"pad":"${"x".repeat(40)}"}\n`);
    for (const line of lines) await writer.write(line);
    // More than the writer's buffer went to its temp file, and the key still holds the old object.
    expect(text(await store.get("out/data.jsonl"))).toBe("old\n");
    expect(
      readdirSync(path.join(root, "out")).filter((name) => name.startsWith(".mmevol-tmp-")),
    ).toHaveLength(1);
    await writer.close();
    expect(text(await store.get("out/data.jsonl"))).toBe(lines.join(""));
    expect(readdirSync(path.join(root, "out"))).toEqual(["data.jsonl"]);
    await expect(writer.write("late\n")).rejects.toThrow(/closed/);
  });

  it("writes an empty object when nothing was written, and keeps the old one when aborted", async () => {
    const { store, root } = freshStore();
    const empty = store.writer("a/empty.jsonl");
    await empty.close();
    expect(await store.size("a/empty.jsonl")).toBe(0);
    await store.put("a/kept.jsonl", "kept\n");
    const dropped = store.writer("a/kept.jsonl");
    await dropped.write("x".repeat(600_000));
    await dropped.abort();
    await dropped.abort();
    expect(text(await store.get("a/kept.jsonl"))).toBe("kept\n");
    expect(readdirSync(path.join(root, "a")).sort()).toEqual(["empty.jsonl", "kept.jsonl"]);
    // A writer aborted before it wrote anything leaves nothing either.
    await store.writer("b/never.jsonl").abort();
    expect(await store.list("b/")).toEqual([]);
  });

  it("reports missing objects", async () => {
    const { store } = freshStore();
    await store.put("a/b.txt", "x");
    await expect(store.get("a/missing.txt")).rejects.toBeInstanceOf(BlobNotFoundError);
    // A directory is not an object.
    await expect(store.get("a")).rejects.toBeInstanceOf(BlobNotFoundError);
    await expect(store.get("a/b.txt/c")).rejects.toBeInstanceOf(BlobNotFoundError);
    expect(await store.exists("a/b.txt")).toBe(true);
    expect(await store.exists("a/missing.txt")).toBe(false);
    expect(await store.exists("a")).toBe(false);
    expect(await store.size("a/b.txt")).toBe(1);
    expect(await store.size("a/missing.txt")).toBeNull();
    expect(await store.size("a")).toBeNull();
  });

  it("streams a large object in 64 KiB chunks", async () => {
    const { store } = freshStore();
    const body = new Uint8Array(200 * 1024).map((_, i) => i % 251);
    await store.put("big.bin", body);
    expect(await store.size("big.bin")).toBe(body.length);
    const chunks: Uint8Array[] = [];
    for await (const chunk of store.stream("big.bin")) chunks.push(chunk);
    expect(chunks.map((c) => c.length)).toEqual([65536, 65536, 65536, 8192]);
    expect(Buffer.concat(chunks).equals(Buffer.from(body))).toBe(true);
  });

  it("stops streaming early without trouble, and fails a missing stream with BlobNotFoundError", async () => {
    const { store } = freshStore();
    await store.put("big.bin", new Uint8Array(300 * 1024));
    for await (const chunk of store.stream("big.bin")) {
      expect(chunk.length).toBe(65536);
      break;
    }
    const consume = async () => {
      for await (const _ of store.stream("nope.bin")) {
        // nothing
      }
    };
    await expect(consume()).rejects.toBeInstanceOf(BlobNotFoundError);
  });

  it("lists keys under a prefix, recursively and sorted", async () => {
    const { store, root } = freshStore();
    for (const key of [
      "seeds/r1/b.jsonl",
      "seeds/r1/a.jsonl",
      "seeds/r1/sub/c.jsonl",
      "seeds/r10/x",
      "evolved/r1/a",
    ]) {
      await store.put(key, key);
    }
    // A temp file of a write in progress is not an object.
    writeFileSync(path.join(root, "seeds/r1/.mmevol-tmp-123"), "partial");
    expect(await store.list("seeds/r1/")).toEqual([
      "seeds/r1/a.jsonl",
      "seeds/r1/b.jsonl",
      "seeds/r1/sub/c.jsonl",
    ]);
    expect(await store.list("seeds/r1")).toEqual([
      "seeds/r1/a.jsonl",
      "seeds/r1/b.jsonl",
      "seeds/r1/sub/c.jsonl",
      "seeds/r10/x",
    ]);
    expect(await store.list("seeds/r1/a")).toEqual(["seeds/r1/a.jsonl"]);
    expect(await store.list("")).toHaveLength(5);
    expect(await store.list("nothing/here/")).toEqual([]);
  });

  it("refuses keys that could escape the root", async () => {
    const { store } = freshStore();
    const bad = ["../outside", "a/../../outside", "/etc/passwd", "a\\b", "a\0b", "", "a//b", "./a", "a/"];
    for (const key of bad) {
      await expect(store.put(key, "x"), key).rejects.toBeInstanceOf(InvalidInputError);
      await expect(store.get(key), key).rejects.toBeInstanceOf(InvalidInputError);
      await expect(store.exists(key), key).rejects.toBeInstanceOf(InvalidInputError);
    }
    await expect(store.list("../")).rejects.toBeInstanceOf(InvalidInputError);
    expect(readdirSync(base)).not.toContain("outside");
  });
});
