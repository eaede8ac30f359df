/** Objects by key: a directory locally, S3 in AWS. Keys use `/` and never start with it. */
export interface BlobStore {
  get(key: string): Promise<Uint8Array>;
  /** Streams an object in chunks, so a large shard never sits in memory whole. */
  stream(key: string): AsyncIterable<Uint8Array>;
  put(key: string, body: Uint8Array | string, contentType?: string): Promise<void>;
  exists(key: string): Promise<boolean>;
  /** Byte size, or null when the object does not exist. */
  size(key: string): Promise<number | null>;
  list(prefix: string): Promise<string[]>;
  /** Where a key's object is, for messages a person reads: a file's path locally, `s3://bucket/key` in AWS. */
  describe(key: string): string;
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
