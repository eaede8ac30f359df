/** Objects by key: a directory locally, S3 in AWS. Keys use `/` and never start with it. */
export interface BlobStore {
  get(key: string): Promise<Uint8Array>;
  /** Streams an object in chunks, so a large shard never sits in memory whole. */
  stream(key: string): AsyncIterable<Uint8Array>;
  put(key: string, body: Uint8Array | string, contentType?: string): Promise<void>;
  /**
   * Writes an object from text written in pieces, so an output larger than memory never sits in it whole
   * (a large shard's training data). Nothing is there until `close` resolves, then all of it is (a reader sees
   * the old object or the new one); after `abort`, or a failed write, the old one stays.
   */
  writer(key: string, contentType?: string): BlobWriter;
  exists(key: string): Promise<boolean>;
  /** Byte size, or null when the object does not exist. */
  size(key: string): Promise<number | null>;
  list(prefix: string): Promise<string[]>;
  /** Where a key's object is, for messages a person reads: a file's path locally, `s3://bucket/key` in AWS. */
  describe(key: string): string;
}

/** An object being written in pieces (BlobStore.writer). */
export interface BlobWriter {
  /** Resolves once the piece is taken, so a caller that awaits it holds no more than a few parts at once. */
  write(text: string): Promise<void>;
  /** Makes the object: everything written, atomically. */
  close(): Promise<void>;
  /** Drops what was written; the key keeps whatever it held before. Safe to call after a failure. */
  abort(): Promise<void>;
}

export class BlobNotFoundError extends Error {
  readonly retryable = false;
  readonly key: string;
  constructor(key: string) {
    super(`no object at ${key}`);
    this.key = key;
    this.name = "BlobNotFoundError";
  }
}
