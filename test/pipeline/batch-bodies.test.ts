import { describe, expect, it } from "vitest";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { BatchBodyReader, BatchBodyWriter } from "../../functions/pipeline/batch-bodies.ts";
import type { BlobStore } from "../../functions/ports/blob-store.ts";
import { tempDir } from "../helpers/files.ts";

/** A directory blob store that counts writes and can be told to fail them. */
function countingBlobs(path: string): { blobs: BlobStore; puts: string[]; fail: { next: boolean } } {
  const inner = new FsBlobStore(path);
  const puts: string[] = [];
  const fail = { next: false };
  const blobs: BlobStore = {
    get: (key) => inner.get(key),
    stream: (key) => inner.stream(key),
    exists: (key) => inner.exists(key),
    size: (key) => inner.size(key),
    list: (prefix) => inner.list(prefix),
    describe: (key) => inner.describe(key),
    writer: (key, contentType) => inner.writer(key, contentType),
    put: async (key, body, contentType) => {
      if (fail.next) {
        fail.next = false;
        throw new Error("disk full");
      }
      puts.push(key);
      await inner.put(key, body, contentType);
    },
  };
  return { blobs, puts, fail };
}

describe("batch request bodies", () => {
  it("bodies queued together share one object, and each is read back by its hash", async () => {
    const dir = tempDir();
    try {
      const { blobs, puts } = countingBlobs(dir.path);
      const writer = new BatchBodyWriter(blobs, { windowMs: 20 });
      const keys = await Promise.all([
        writer.write("r", "s1", "h1", { messages: ["one"] }),
        writer.write("r", "s1", "h2", { messages: ["two"] }),
        writer.write("r", "s2", "h3", { messages: ["three"] }),
        writer.write("r", "s1", "h4", { messages: ["four"] }),
      ]);
      // One object per shard, written once each.
      expect(puts).toHaveLength(2);
      expect(keys[0]).toBe(keys[1]);
      expect(keys[1]).toBe(keys[3]);
      expect(keys[2]).not.toBe(keys[0]);
      expect(keys[0]).toMatch(/^work\/r\/batches\/s1\/requests\/[0-9a-f-]{36}\.jsonl$/);

      // Later bodies go into a new object.
      const later = await writer.write("r", "s1", "h5", { messages: ["five"] });
      expect(later).not.toBe(keys[0]);

      const reader = new BatchBodyReader(blobs);
      expect(await reader.take(String(keys[1]), "h2")).toEqual({ messages: ["two"] });
      expect(await reader.take(String(keys[0]), "h1")).toEqual({ messages: ["one"] });
      expect(await reader.take(String(keys[2]), "h3")).toEqual({ messages: ["three"] });
      expect(await reader.take(later, "h5")).toEqual({ messages: ["five"] });
      await expect(reader.take(String(keys[0]), "h9")).rejects.toThrow(/h9 is not in/);
    } finally {
      dir.cleanup();
    }
  });

  it("writes an object at once when it reaches maxBytes, and fails every body of an object that was not stored", async () => {
    const dir = tempDir();
    try {
      const { blobs, puts, fail } = countingBlobs(dir.path);
      const writer = new BatchBodyWriter(blobs, { windowMs: 60_000, maxBytes: 100 });
      const big = "x".repeat(200);
      // Far inside the window: only the size can have written it.
      expect(await writer.write("r", "s", "h1", big)).toMatch(/\.jsonl$/);
      expect(puts).toHaveLength(1);

      const failing = new BatchBodyWriter(blobs, { windowMs: 10 });
      fail.next = true;
      const results = await Promise.allSettled([
        failing.write("r", "s", "h2", "a"),
        failing.write("r", "s", "h3", "b"),
      ]);
      expect(results.map((r) => r.status)).toEqual(["rejected", "rejected"]);
    } finally {
      dir.cleanup();
    }
  });

  it("reads a body queued alone as JSON by an earlier version", async () => {
    const dir = tempDir();
    try {
      const { blobs } = countingBlobs(dir.path);
      await blobs.put("work/r/batches/s/requests/h1.json", JSON.stringify({ model: "m" }));
      const reader = new BatchBodyReader(blobs);
      expect(await reader.take("work/r/batches/s/requests/h1.json", "h1")).toEqual({ model: "m" });
    } finally {
      dir.cleanup();
    }
  });
});
