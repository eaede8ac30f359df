import { randomUUID } from "node:crypto";
import type { BlobStore } from "../ports/blob-store.ts";
import { layout, pairKey } from "./shard-config.ts";

/** One line of a bodies object: the request's answer hash (its batch `custom_id`) and its encoded body. */
interface BodyLine {
  readonly custom_id: string;
  readonly body: unknown;
}

interface OpenGroup {
  readonly key: string;
  readonly lines: string[];
  bytes: number;
  readonly waiters: { resolve: (key: string) => void; reject: (error: unknown) => void }[];
  timer: NodeJS.Timeout | null;
}

export interface BatchBodyWriterOptions {
  /** How long the first body of an object waits for others to join it. Default 250 ms. */
  readonly windowMs?: number;
  /** An object is written at once when its bodies reach this many bytes. Default 8 MiB. */
  readonly maxBytes?: number;
}

/**
 * Batch mode keeps each queued request's body until its batch input is built. Bodies queued together (the
 * records of one Lambda invocation, a local run's concurrent samples) go into one JSON Lines object per
 * shard, `{"custom_id": <hash>, "body": ...}` a line: one PUT for all of them, where one per request was the
 * largest AWS cost of batch mode. `write` resolves with the object's key once the object is stored, so an
 * item is never queued without its body.
 */
export class BatchBodyWriter {
  readonly #blobs: BlobStore;
  readonly #windowMs: number;
  readonly #maxBytes: number;
  readonly #open = new Map<string, OpenGroup>();

  constructor(blobs: BlobStore, options: BatchBodyWriterOptions = {}) {
    this.#blobs = blobs;
    this.#windowMs = options.windowMs ?? 250;
    this.#maxBytes = options.maxBytes ?? 8 * 1024 * 1024;
  }

  write(run: string, shard: string, hash: string, body: unknown): Promise<string> {
    const id = pairKey(run, shard);
    let group = this.#open.get(id);
    if (group === undefined) {
      group = {
        key: layout.batchBodies(run, shard, randomUUID()),
        lines: [],
        bytes: 0,
        waiters: [],
        timer: null,
      };
      this.#open.set(id, group);
      const opened = group;
      opened.timer = setTimeout(() => this.#flush(id, opened), this.#windowMs);
    }
    const line = `${JSON.stringify({ custom_id: hash, body } satisfies BodyLine)}\n`;
    group.lines.push(line);
    group.bytes += Buffer.byteLength(line);
    const written = new Promise<string>((resolve, reject) => group.waiters.push({ resolve, reject }));
    if (group.bytes >= this.#maxBytes) this.#flush(id, group);
    return written;
  }

  #flush(id: string, group: OpenGroup): void {
    if (group.timer !== null) clearTimeout(group.timer);
    if (this.#open.get(id) === group) this.#open.delete(id);
    this.#blobs.put(group.key, group.lines.join(""), "application/x-ndjson").then(
      () => {
        for (const waiter of group.waiters) waiter.resolve(group.key);
      },
      (error: unknown) => {
        for (const waiter of group.waiters) waiter.reject(error);
      },
    );
  }
}

/**
 * Reads request bodies back for building batch input, each object once: a JSON Lines object of several
 * bodies (BatchBodyWriter), or one body alone as JSON (as queued by earlier versions).
 */
export class BatchBodyReader {
  readonly #blobs: BlobStore;
  readonly #objects = new Map<string, Map<string, unknown>>();

  constructor(blobs: BlobStore) {
    this.#blobs = blobs;
  }

  /**
   * The body of request `hash`, stored in object `key`, handed out once (so only bodies not yet used stay in
   * memory); throws when the object does not hold it.
   */
  async take(key: string, hash: string): Promise<unknown> {
    let bodies = this.#objects.get(key);
    if (bodies === undefined) {
      const text = new TextDecoder().decode(await this.#blobs.get(key));
      bodies = new Map();
      if (key.endsWith(".jsonl")) {
        for (const line of text.split("\n")) {
          if (line.trim() === "") continue;
          const parsed = JSON.parse(line) as BodyLine;
          bodies.set(parsed.custom_id, parsed.body);
        }
      } else {
        bodies.set(hash, JSON.parse(text));
      }
      this.#objects.set(key, bodies);
    }
    if (!bodies.has(hash)) throw new Error(`batch request body ${hash} is not in ${key}`);
    const body = bodies.get(hash);
    bodies.delete(hash);
    if (bodies.size === 0) this.#objects.delete(key);
    return body;
  }
}
