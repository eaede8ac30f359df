import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, readdir, readFile, rename, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { BlobNotFoundError, type BlobStore, type BlobWriter } from "../../ports/blob-store.ts";
import { InvalidInputError } from "../../ports/errors.ts";

/** Prefix of the temp files `put` renames into place; `list` hides them and keys may not use it. */
const TEMP_PREFIX = ".mmevol-tmp-";
const CHUNK_BYTES = 64 * 1024;
/** A writer gathers this much text before it writes to its file: one system call per line would be slow. */
const WRITE_BUFFER_CHARS = 256 * 1024;

/** Error codes that mean "no object at this key" (a directory on the way, or in place of the file). */
const MISSING_CODES = new Set(["ENOENT", "ENOTDIR", "EISDIR"]);

const errorCode = (error: unknown): string | undefined =>
  error instanceof Error && "code" in error && typeof error.code === "string" ? error.code : undefined;

const isMissing = (error: unknown): boolean => MISSING_CODES.has(errorCode(error) ?? "");

/**
 * The BlobStore over a directory, laid out like the bucket (`seeds/<run>/...` etc.).
 * Keys are checked so that no key can name a file outside the root.
 */
export class FsBlobStore implements BlobStore {
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  async get(key: string): Promise<Uint8Array> {
    try {
      return await readFile(this.pathOf(key));
    } catch (error) {
      if (isMissing(error)) throw new BlobNotFoundError(key);
      throw error;
    }
  }

  async *stream(key: string): AsyncIterable<Uint8Array> {
    const file = this.pathOf(key);
    const reader = createReadStream(file, { highWaterMark: CHUNK_BYTES });
    try {
      for await (const chunk of reader) {
        if (!(chunk instanceof Uint8Array)) throw new TypeError(`unexpected chunk type reading ${key}`);
        yield chunk;
      }
    } catch (error) {
      if (isMissing(error)) throw new BlobNotFoundError(key);
      throw error;
    } finally {
      // A consumer that stops early must not leave the descriptor open.
      reader.destroy();
    }
  }

  /** Writes atomically: a reader sees the old object or the new one, never half of it. `contentType` is ignored. */
  async put(key: string, body: Uint8Array | string, _contentType?: string): Promise<void> {
    const file = this.pathOf(key);
    const dir = path.dirname(file);
    await mkdir(dir, { recursive: true });
    const temp = path.join(dir, `${TEMP_PREFIX}${randomUUID()}`);
    try {
      const handle = await open(temp, "w");
      try {
        await handle.writeFile(body);
        // Flush before the rename so a crash cannot leave a renamed but empty file.
        await handle.sync();
      } finally {
        await handle.close();
      }
      await rename(temp, file);
    } catch (error) {
      await unlink(temp).catch(() => {});
      throw error;
    }
  }

  /** Writes to a temp file beside the key's, renamed into place on close (as `put`). `contentType` is ignored. */
  writer(key: string, _contentType?: string): BlobWriter {
    const file = this.pathOf(key);
    const dir = path.dirname(file);
    const temp = path.join(dir, `${TEMP_PREFIX}${randomUUID()}`);
    const opened = mkdir(dir, { recursive: true }).then(() => open(temp, "w"));
    // A writer aborted before its first write still owns the open; its failure is reported by the next call.
    opened.catch(() => {});
    let pending = "";
    let ended = false;
    const flush = async () => {
      if (pending === "") return;
      const text = pending;
      pending = "";
      // writeFile on a handle writes all of it at the current position (write may stop short).
      await (await opened).writeFile(text);
    };
    const finish = async (keep: boolean) => {
      if (ended) return;
      ended = true;
      // Kept: a directory or file that could not be made is the error (not the rename of a temp file never made).
      const handle = keep ? await opened : await opened.catch(() => null);
      try {
        if (keep) {
          await flush();
          await handle?.sync();
        }
      } finally {
        await handle?.close();
      }
      if (keep) await rename(temp, file);
    };
    return {
      write: async (text) => {
        if (ended) throw new Error(`writer of ${key} is closed`);
        pending += text;
        if (pending.length >= WRITE_BUFFER_CHARS) await flush();
      },
      close: async () => {
        try {
          await finish(true);
        } catch (error) {
          await unlink(temp).catch(() => {});
          throw error;
        }
      },
      abort: async () => {
        pending = "";
        await finish(false).catch(() => {});
        await unlink(temp).catch(() => {});
      },
    };
  }

  async exists(key: string): Promise<boolean> {
    return (await this.size(key)) !== null;
  }

  async size(key: string): Promise<number | null> {
    try {
      const info = await stat(this.pathOf(key));
      return info.isFile() ? info.size : null;
    } catch (error) {
      if (isMissing(error)) return null;
      throw error;
    }
  }

  /** Every key starting with `prefix` (a plain string prefix, as in S3), at any depth, sorted. */
  async list(prefix: string): Promise<string[]> {
    // Only the directory part of the prefix can be walked; the rest filters names.
    const slash = prefix.lastIndexOf("/");
    const dirKey = slash < 0 ? "" : prefix.slice(0, slash);
    const start = dirKey === "" ? this.root : this.pathOf(dirKey);
    const keys: string[] = [];
    await this.walk(start, dirKey, keys);
    return keys.filter((key) => key.startsWith(prefix)).sort();
  }

  private async walk(dir: string, dirKey: string, into: string[]): Promise<void> {
    const entries = await readdir(dir, { withFileTypes: true }).catch((error: unknown) => {
      if (isMissing(error)) return [];
      throw error;
    });
    for (const entry of entries) {
      if (entry.name.startsWith(TEMP_PREFIX)) continue;
      const key = dirKey === "" ? entry.name : `${dirKey}/${entry.name}`;
      if (entry.isDirectory()) await this.walk(path.join(dir, entry.name), key, into);
      else if (entry.isFile()) into.push(key);
    }
  }

  /** The key's file path (the key itself when it is not a valid key). */
  describe(key: string): string {
    try {
      return this.pathOf(key);
    } catch {
      return key;
    }
  }

  /** Maps a key to its file, refusing anything that could escape the root. */
  private pathOf(key: string): string {
    const refuse = (why: string): never => {
      throw new InvalidInputError(`invalid blob key ${JSON.stringify(key)}: ${why}`);
    };
    if (key === "") refuse("empty");
    if (key.startsWith("/")) refuse("absolute");
    if (key.includes("\\")) refuse("backslash");
    if (key.includes("\0")) refuse("NUL byte");
    for (const segment of key.split("/")) {
      if (segment === "") refuse("empty segment");
      if (segment === "." || segment === "..") refuse("dot segment");
      if (segment.startsWith(TEMP_PREFIX)) refuse("reserved name");
    }
    const file = path.resolve(this.root, ...key.split("/"));
    // Belt and braces: the checks above should make this impossible.
    if (!file.startsWith(this.root + path.sep)) refuse("outside the root");
    return file;
  }
}
