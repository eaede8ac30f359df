import { once } from "node:events";
import { PassThrough, Readable } from "node:stream";
import {
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { BlobNotFoundError, type BlobStore, type BlobWriter } from "../../ports/blob-store.ts";

export interface S3BlobStoreOptions {
  readonly client: S3Client;
  readonly bucket: string;
  /** Keys per ListObjectsV2 page (MaxKeys); S3's default is 1000. Small values test paging. */
  readonly listPageSize?: number;
}

/** Parts of one writer's upload in flight at once: with lib-storage's 5 MiB parts, about 10 MiB a writer. */
const WRITER_PARTS_IN_FLIGHT = 2;

/** The BlobStore over one S3 bucket. */
export class S3BlobStore implements BlobStore {
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly maxKeys: { MaxKeys?: number };

  constructor(options: S3BlobStoreOptions) {
    this.client = options.client;
    this.bucket = options.bucket;
    this.maxKeys = options.listPageSize === undefined ? {} : { MaxKeys: options.listPageSize };
  }

  async get(key: string): Promise<Uint8Array> {
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      if (out.Body === undefined) return new Uint8Array();
      return await out.Body.transformToByteArray();
    } catch (error) {
      if (isNoSuchKey(error)) throw new BlobNotFoundError(key);
      throw error;
    }
  }

  /** Streams the object body as it arrives, so a large shard never sits in memory whole. */
  async *stream(key: string): AsyncIterable<Uint8Array> {
    let body: unknown;
    try {
      body = (await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }))).Body;
    } catch (error) {
      if (isNoSuchKey(error)) throw new BlobNotFoundError(key);
      throw error;
    }
    if (body === undefined) return;
    // In Node the SDK hands back an http.IncomingMessage (a Readable); anything else is a wiring mistake.
    if (!(body instanceof Readable)) throw new TypeError(`S3 body of ${key} is not a Node stream`);
    try {
      for await (const chunk of body) {
        if (!(chunk instanceof Uint8Array)) throw new TypeError(`unexpected chunk type reading ${key}`);
        yield chunk;
      }
    } finally {
      // A consumer that stops early must not leave the socket busy.
      body.destroy();
    }
  }

  async put(key: string, body: Uint8Array | string, contentType?: string): Promise<void> {
    // Bytes with an explicit length: the SDK cannot size an empty string and warns about a stream.
    const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: key,
        Body: bytes,
        ContentLength: bytes.byteLength,
        ...(contentType === undefined ? {} : { ContentType: contentType }),
      }),
    );
  }

  /**
   * A multipart upload (lib-storage's Upload) fed as the text comes: S3 makes the object only when the upload
   * completes, and an aborted one leaves no parts behind. An object smaller than one part is a single PUT.
   */
  writer(key: string, contentType?: string): BlobWriter {
    const body = new PassThrough();
    const upload = new Upload({
      client: this.client,
      params: {
        Bucket: this.bucket,
        Key: key,
        Body: body,
        ...(contentType === undefined ? {} : { ContentType: contentType }),
      },
      queueSize: WRITER_PARTS_IN_FLIGHT,
    });
    const done = upload.done();
    // Awaited by close; a failure before it reaches a waiting write through `stopped`.
    done.catch(() => {});
    const stopped = done.then(() => {
      throw new Error(`upload of ${key} ended before its writer was closed`);
    });
    stopped.catch(() => {});
    return {
      write: async (text) => {
        if (body.write(text)) return;
        // A failed upload destroys the body as it stops reading it (an AbortError, "The operation was
        // aborted"): wait for the upload's own error instead, which says why.
        await Promise.race([once(body, "drain").catch(() => stopped), stopped]);
      },
      close: async () => {
        body.end();
        await done;
      },
      abort: async () => {
        // A body that fails (not Upload.abort, whose done settles before the parts are dropped) makes the
        // upload send its AbortMultipartUpload before done settles.
        body.destroy(new Error(`writer of ${key} aborted`));
        await done.catch(() => {});
      },
    };
  }

  async exists(key: string): Promise<boolean> {
    return (await this.head(key)) !== null;
  }

  async size(key: string): Promise<number | null> {
    const head = await this.head(key);
    return head === null ? null : (head.size ?? 0);
  }

  /** The object's ETag without its quotes (the shard identity used for deduplication), or null when missing. */
  async headEtag(key: string): Promise<string | null> {
    const head = await this.head(key);
    if (head === null || head.etag === undefined) return null;
    return head.etag.replace(/^"|"$/g, "");
  }

  describe(key: string): string {
    return `s3://${this.bucket}/${key}`;
  }

  /** Every key starting with `prefix`, at any depth, in S3's (byte) order. */
  async list(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const out = await this.client.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: prefix,
          ...this.maxKeys,
          ...(token === undefined ? {} : { ContinuationToken: token }),
        }),
      );
      for (const object of out.Contents ?? []) if (object.Key !== undefined) keys.push(object.Key);
      token = out.IsTruncated === true ? out.NextContinuationToken : undefined;
    } while (token !== undefined);
    return keys;
  }

  private async head(key: string): Promise<{ size: number | undefined; etag: string | undefined } | null> {
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return { size: out.ContentLength, etag: out.ETag };
    } catch (error) {
      // HEAD has no body, so the SDK only knows the status: the error is named NotFound (or carries 404).
      if (isNoSuchKey(error) || httpStatus(error) === 404) return null;
      throw error;
    }
  }
}

const errorName = (error: unknown): string | undefined => (error instanceof Error ? error.name : undefined);

const isNoSuchKey = (error: unknown): boolean => {
  const name = errorName(error);
  return name === "NoSuchKey" || name === "NotFound";
};

/** The HTTP status of an AWS SDK error, when it has one. */
export const httpStatus = (error: unknown): number | undefined => {
  if (typeof error !== "object" || error === null || !("$metadata" in error)) return undefined;
  const metadata = error.$metadata;
  if (typeof metadata !== "object" || metadata === null || !("httpStatusCode" in metadata)) return undefined;
  return typeof metadata.httpStatusCode === "number" ? metadata.httpStatusCode : undefined;
};
