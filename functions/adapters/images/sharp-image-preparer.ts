import { createHash } from "node:crypto";
import { availableParallelism } from "node:os";
import sharp from "sharp";
import { BlobNotFoundError, type BlobStore } from "../../ports/blob-store.ts";
import { ImageNotFoundError, InvalidInputError } from "../../ports/errors.ts";
import type { ImagePreparer, PreparedImage } from "../../ports/images.ts";

export interface SharpImagePreparerOptions {
  readonly blobs: BlobStore;
  /** Where prepared JPEGs are kept, e.g. `work/<run>/images/`. */
  readonly cachePrefix: string;
  /** Larger sources are refused before they are read. Default 20 MiB. */
  readonly maxInputBytes?: number;
  /** Larger decoded images (decompression bombs) are refused. Default 50 000 000 pixels. */
  readonly maxInputPixels?: number;
  /**
   * Prepared images kept in memory, by the length of their data URLs (0 turns it off). Default 32 MiB, a
   * thousand to a few thousand images at the default size: the rounds after the first reuse the data URL and
   * digest instead of reading the stored JPEG back and decoding its header. Least recently used out first.
   */
  readonly memoryCacheBytes?: number;
  /**
   * Sources read and shrunk at the same time; the others wait their turn. A decoded source may take up to
   * `maxInputPixels` x 4 bytes (200 MB at the default), so a Lambda that evolves a batch of records in
   * parallel must not decode them all at once. Default: the machine's available parallelism.
   */
  readonly shrinksAtOnce?: number;
}

/** A counting semaphore: at most `size` holders at once, the rest served in arrival order. */
class Gate {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(size: number) {
    this.#free = Math.max(1, Math.floor(size));
  }
  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free -= 1;
    else await new Promise<void>((resolve) => this.#waiting.push(resolve));
    try {
      return await work();
    } finally {
      // The slot passes straight to the next in line, or back to the pool.
      const next = this.#waiting.shift();
      if (next === undefined) this.#free += 1;
      else next();
    }
  }
}

/** Raster formats a vision model can use; SVG and friends are refused rather than rendered. */
const acceptedFormats: ReadonlySet<string> = new Set(["jpeg", "png", "webp", "gif", "tiff", "avif", "heif"]);

const JPEG_QUALITY = 85;

const sha256 = (data: Uint8Array | string): string => createHash("sha256").update(data).digest("hex");

const reasonOf = (error: unknown): string => (error instanceof Error ? error.message : String(error));

/**
 * Refuses keys that could leave the store's tree or name another scheme. The caller already
 * resolved the path against the image root; this is a second line of defence.
 */
export const assertSafeBlobKey = (key: string): void => {
  if (key === "") throw new InvalidInputError("image path is empty");
  if (key.includes("\0")) throw new InvalidInputError(`image path has a NUL byte: ${JSON.stringify(key)}`);
  if (key.startsWith("/") || key.startsWith("\\")) {
    throw new InvalidInputError(`image path must be relative: ${key}`);
  }
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(key)) {
    throw new InvalidInputError(`image path must not be a URL or drive path: ${key}`);
  }
  if (key.split(/[\\/]/).some((segment) => segment === "..")) {
    throw new InvalidInputError(`image path must not contain '..': ${key}`);
  }
};

/**
 * Shrinks each image once to a JPEG under `cachePrefix`; later rounds read the stored result, or, in the same
 * process, take it from memory. Concurrent requests for the same image share one preparation.
 */
export class SharpImagePreparer implements ImagePreparer {
  readonly #blobs: BlobStore;
  readonly #cachePrefix: string;
  readonly #maxInputBytes: number;
  readonly #maxInputPixels: number;
  readonly #memory: PreparedLru;
  readonly #inFlight = new Map<string, Promise<PreparedImage>>();
  readonly #shrinks: Gate;

  constructor(options: SharpImagePreparerOptions) {
    this.#blobs = options.blobs;
    this.#cachePrefix = options.cachePrefix;
    this.#maxInputBytes = options.maxInputBytes ?? 20 * 1024 * 1024;
    this.#maxInputPixels = options.maxInputPixels ?? 50_000_000;
    this.#memory = new PreparedLru(options.memoryCacheBytes ?? 32 * 1024 * 1024);
    this.#shrinks = new Gate(options.shrinksAtOnce ?? availableParallelism());
  }

  /**
   * `imageRoot` is not used here: the caller has already resolved `imagePath` to a blob key under it. The
   * run's limits (`maxInputBytes`, `maxInputPixels`) win over the constructor's defaults.
   */
  async prepare(imagePath: string, options: Parameters<ImagePreparer["prepare"]>[1]): Promise<PreparedImage> {
    assertSafeBlobKey(imagePath);
    const { maxSide } = options;
    if (!Number.isInteger(maxSide) || maxSide < 1) {
      throw new InvalidInputError(`maxSide must be a positive integer, got ${maxSide}`);
    }
    const maxBytes = options.maxInputBytes ?? this.#maxInputBytes;
    const maxPixels = options.maxInputPixels ?? this.#maxInputPixels;
    // The newline keeps "a.png" + "12" apart from "a.png1" + "2".
    const id = `${imagePath}\n${maxSide}`;
    // Like the stored JPEG, a prepared image is used whatever the limits of the caller that finds it.
    const remembered = this.#memory.get(id);
    if (remembered !== undefined) return remembered;
    // A preparation under way is shared only by callers with the same limits, which would all get its result.
    const flight = `${id}\n${maxBytes}\n${maxPixels}`;
    const running = this.#inFlight.get(flight);
    if (running !== undefined) return running;

    const work = this.#prepare(imagePath, id, maxSide, maxBytes, maxPixels);
    this.#inFlight.set(flight, work);
    try {
      const prepared = await work;
      this.#memory.set(id, prepared);
      return prepared;
    } finally {
      this.#inFlight.delete(flight);
    }
  }

  async #prepare(
    imagePath: string,
    id: string,
    maxSide: number,
    maxBytes: number,
    maxPixels: number,
  ): Promise<PreparedImage> {
    const cacheKey = `${this.#cachePrefix}${sha256(id)}.jpg`;
    const cached = await this.#readCached(cacheKey);
    if (cached !== null) return cached;

    const jpeg = await this.#shrinks.run(async () =>
      this.#shrink(imagePath, await this.#readSource(imagePath, maxBytes), maxSide, maxPixels),
    );
    await this.#blobs.put(cacheKey, jpeg.data, "image/jpeg");
    return toPrepared(jpeg.data, jpeg.width, jpeg.height);
  }

  async #readCached(cacheKey: string): Promise<PreparedImage | null> {
    // One read, no separate size check: a miss is the store's not-found error (in S3, one GET instead of a
    // HEAD and a GET on every hit).
    let data: Uint8Array;
    try {
      data = await this.#blobs.get(cacheKey);
    } catch (error) {
      if (error instanceof BlobNotFoundError) return null;
      throw error;
    }
    if (data.byteLength === 0) return null;
    try {
      // Header only: our JPEG carries no EXIF rotation, so these are the sent dimensions.
      const { width, height } = await sharp(data).metadata();
      if (width === undefined || height === undefined) return null;
      return toPrepared(data, width, height);
    } catch {
      // A damaged cache entry is rebuilt from the source rather than failing the sample.
      return null;
    }
  }

  async #readSource(imagePath: string, maxBytes: number): Promise<Uint8Array> {
    const size = await this.#blobs.size(imagePath);
    const where = this.#blobs.describe(imagePath);
    if (size === null) throw new ImageNotFoundError(`image not found: ${where}`);
    if (size === 0) throw new InvalidInputError(`image is empty: ${where}`);
    if (size > maxBytes) {
      throw new InvalidInputError(
        `image is ${size} bytes, over the limit of ${maxBytes} bytes (maxImageBytes): ${where}`,
      );
    }
    return this.#blobs.get(imagePath);
  }

  async #shrink(
    imagePath: string,
    source: Uint8Array,
    maxSide: number,
    maxPixels: number,
  ): Promise<{ data: Uint8Array; width: number; height: number }> {
    const decoderOptions = { limitInputPixels: maxPixels, failOn: "error" } as const;
    const where = this.#blobs.describe(imagePath);
    try {
      // Header only, so no pixel cap is needed here; sharp's own cap would hide the sizes behind a bare message.
      const meta = await sharp(source, { failOn: "error", limitInputPixels: false }).metadata();
      if (meta.format === undefined || !acceptedFormats.has(meta.format)) {
        throw new InvalidInputError(`image format ${meta.format ?? "unknown"} is not supported: ${where}`);
      }
      // The header alone tells the size: refuse a bomb here, with the limit named, before anything is decoded.
      const pixels = (meta.width ?? 0) * (meta.height ?? 0);
      if (pixels > maxPixels) {
        throw new InvalidInputError(
          `image is ${meta.width}x${meta.height} (${pixels} pixels), over the pixel limit of ${maxPixels} (maxImagePixels): ${where}`,
        );
      }
      const { data, info } = await sharp(source, decoderOptions)
        .rotate()
        .resize({ width: maxSide, height: maxSide, fit: "inside", withoutEnlargement: true })
        .flatten({ background: "#ffffff" })
        .jpeg({ quality: JPEG_QUALITY })
        .toBuffer({ resolveWithObject: true });
      return { data, width: info.width, height: info.height };
    } catch (error) {
      if (error instanceof InvalidInputError) throw error;
      throw new InvalidInputError(`image cannot be decoded: ${where}: ${reasonOf(error)}`, {
        cause: error,
      });
    }
  }
}

/** Prepared images by id, least recently used first, bounded by the total length of their data URLs. */
class PreparedLru {
  readonly #entries = new Map<string, PreparedImage>();
  readonly #maxChars: number;
  #chars = 0;

  constructor(maxChars: number) {
    this.#maxChars = maxChars;
  }

  get(id: string): PreparedImage | undefined {
    const entry = this.#entries.get(id);
    if (entry !== undefined) {
      this.#entries.delete(id);
      this.#entries.set(id, entry);
    }
    return entry;
  }

  set(id: string, prepared: PreparedImage): void {
    const size = prepared.dataUrl.length;
    if (size > this.#maxChars) return;
    const old = this.#entries.get(id);
    if (old !== undefined) {
      this.#entries.delete(id);
      this.#chars -= old.dataUrl.length;
    }
    this.#entries.set(id, prepared);
    this.#chars += size;
    for (const [oldest, entry] of this.#entries) {
      if (this.#chars <= this.#maxChars) break;
      this.#entries.delete(oldest);
      this.#chars -= entry.dataUrl.length;
    }
  }
}

/** Frozen: one prepared image may be handed to many callers. */
const toPrepared = (jpeg: Uint8Array, width: number, height: number): PreparedImage =>
  Object.freeze({
    dataUrl: `data:image/jpeg;base64,${Buffer.from(jpeg).toString("base64")}`,
    digest: sha256(jpeg),
    width,
    height,
  });
