import { createHash } from "node:crypto";
import sharp from "sharp";
import type { BlobStore } from "../../ports/blob-store.ts";
import { InvalidInputError } from "../../ports/errors.ts";
import type { ImagePreparer, PreparedImage } from "../../ports/images.ts";

export interface SharpImagePreparerOptions {
  readonly blobs: BlobStore;
  /** Where prepared JPEGs are kept, e.g. `work/<run>/images/`. */
  readonly cachePrefix: string;
  /** Larger sources are refused before they are read. Default 20 MiB. */
  readonly maxInputBytes?: number;
  /** Larger decoded images (decompression bombs) are refused. Default 50 000 000 pixels. */
  readonly maxInputPixels?: number;
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

/** Shrinks each image once to a JPEG under `cachePrefix`; later rounds read the stored result. */
export class SharpImagePreparer implements ImagePreparer {
  readonly #blobs: BlobStore;
  readonly #cachePrefix: string;
  readonly #maxInputBytes: number;
  readonly #maxInputPixels: number;

  constructor(options: SharpImagePreparerOptions) {
    this.#blobs = options.blobs;
    this.#cachePrefix = options.cachePrefix;
    this.#maxInputBytes = options.maxInputBytes ?? 20 * 1024 * 1024;
    this.#maxInputPixels = options.maxInputPixels ?? 50_000_000;
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
    const cacheKey = `${this.#cachePrefix}${sha256(`${imagePath}\n${maxSide}`)}.jpg`;

    const cached = await this.#readCached(cacheKey);
    if (cached !== null) return cached;

    const source = await this.#readSource(imagePath, maxBytes);
    const jpeg = await this.#shrink(imagePath, source, maxSide, maxPixels);
    await this.#blobs.put(cacheKey, jpeg.data, "image/jpeg");
    return toPrepared(jpeg.data, jpeg.width, jpeg.height);
  }

  async #readCached(cacheKey: string): Promise<PreparedImage | null> {
    const size = await this.#blobs.size(cacheKey);
    if (size === null || size === 0) return null;
    const data = await this.#blobs.get(cacheKey);
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
    if (size === null) throw new InvalidInputError(`image not found: ${imagePath}`);
    if (size === 0) throw new InvalidInputError(`image is empty: ${imagePath}`);
    if (size > maxBytes) {
      throw new InvalidInputError(
        `image is ${size} bytes, over the limit of ${maxBytes} bytes (maxImageBytes): ${imagePath}`,
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
    try {
      // Header only, so no pixel cap is needed here; sharp's own cap would hide the sizes behind a bare message.
      const meta = await sharp(source, { failOn: "error", limitInputPixels: false }).metadata();
      if (meta.format === undefined || !acceptedFormats.has(meta.format)) {
        throw new InvalidInputError(
          `image format ${meta.format ?? "unknown"} is not supported: ${imagePath}`,
        );
      }
      // The header alone tells the size: refuse a bomb here, with the limit named, before anything is decoded.
      const pixels = (meta.width ?? 0) * (meta.height ?? 0);
      if (pixels > maxPixels) {
        throw new InvalidInputError(
          `image is ${meta.width}x${meta.height} (${pixels} pixels), over the pixel limit of ${maxPixels} (maxImagePixels): ${imagePath}`,
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
      throw new InvalidInputError(`image cannot be decoded: ${imagePath}: ${reasonOf(error)}`, {
        cause: error,
      });
    }
  }
}

const toPrepared = (jpeg: Uint8Array, width: number, height: number): PreparedImage => ({
  dataUrl: `data:image/jpeg;base64,${Buffer.from(jpeg).toString("base64")}`,
  digest: sha256(jpeg),
  width,
  height,
});
