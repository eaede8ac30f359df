import { createHash, randomBytes } from "node:crypto";
import { crc32, deflateSync } from "node:zlib";
import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { SharpImagePreparer } from "../../functions/adapters/images/sharp-image-preparer.ts";
import { BlobNotFoundError, type BlobStore, type BlobWriter } from "../../functions/ports/blob-store.ts";
import { InvalidInputError } from "../../functions/ports/errors.ts";

/** A BlobStore in a Map that counts reads, so a test can tell a cache hit from a re-read. */
class MemoryBlobs implements BlobStore {
  readonly objects = new Map<string, Uint8Array>();
  readonly reads = new Map<string, number>();

  async get(key: string): Promise<Uint8Array> {
    this.reads.set(key, (this.reads.get(key) ?? 0) + 1);
    const body = this.objects.get(key);
    if (body === undefined) throw new BlobNotFoundError(key);
    return body;
  }
  async *stream(key: string): AsyncIterable<Uint8Array> {
    yield await this.get(key);
  }
  async put(key: string, body: Uint8Array | string): Promise<void> {
    this.objects.set(key, typeof body === "string" ? new TextEncoder().encode(body) : new Uint8Array(body));
  }
  writer(key: string): BlobWriter {
    let text = "";
    return {
      write: async (piece) => {
        text += piece;
      },
      close: () => this.put(key, text),
      abort: async () => {},
    };
  }
  async exists(key: string): Promise<boolean> {
    return this.objects.has(key);
  }
  async size(key: string): Promise<number | null> {
    return this.objects.get(key)?.byteLength ?? null;
  }
  async list(prefix: string): Promise<string[]> {
    return [...this.objects.keys()].filter((key) => key.startsWith(prefix)).sort();
  }
  describe(key: string): string {
    return `memory:${key}`;
  }
}

const CACHE = "work/run-1/images/";
const options = { imageRoot: "", maxSide: 512 };

const solidPng = async (width: number, height: number, alpha = 1): Promise<Uint8Array> =>
  sharp({ create: { width, height, channels: 4, background: { r: 200, g: 30, b: 30, alpha } } })
    .png()
    .toBuffer();

const pngChunk = (type: string, data: Buffer): Buffer => {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const typed = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typed));
  return Buffer.concat([length, typed, crc]);
};

/** A valid 1-bit PNG of side x side black pixels: about 50 KB on disk, 400 M pixels decoded. */
const bombPng = (side: number): Buffer => {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(side, 0);
  header.writeUInt32BE(side, 4);
  header[8] = 1; // bit depth
  header[9] = 0; // greyscale
  const rows = Buffer.alloc((1 + Math.ceil(side / 8)) * side);
  return Buffer.concat([
    Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
    pngChunk("IHDR", header),
    pngChunk("IDAT", deflateSync(rows, { level: 9 })),
    pngChunk("IEND", Buffer.alloc(0)),
  ]);
};

const decodeDataUrl = (dataUrl: string): Buffer => {
  const prefix = "data:image/jpeg;base64,";
  expect(dataUrl.startsWith(prefix)).toBe(true);
  return Buffer.from(dataUrl.slice(prefix.length), "base64");
};

const invalidInput = async (promise: Promise<unknown>): Promise<InvalidInputError> => {
  try {
    await promise;
  } catch (error) {
    if (error instanceof InvalidInputError) return error;
    throw error;
  }
  throw new Error("expected InvalidInputError");
};

describe("SharpImagePreparer", () => {
  it("shrinks a 2000x1000 PNG to a 512x256 JPEG once and reuses it", async () => {
    const blobs = new MemoryBlobs();
    await blobs.put("images/wide.png", await solidPng(2000, 1000));
    const preparer = new SharpImagePreparer({ blobs, cachePrefix: CACHE });

    const first = await preparer.prepare("images/wide.png", options);
    expect(first.width).toBe(512);
    expect(first.height).toBe(256);
    const jpeg = decodeDataUrl(first.dataUrl);
    expect(first.digest).toBe(createHash("sha256").update(jpeg).digest("hex"));
    const meta = await sharp(jpeg).metadata();
    expect([meta.format, meta.width, meta.height]).toEqual(["jpeg", 512, 256]);

    const cached = await blobs.list(CACHE);
    expect(cached).toHaveLength(1);
    expect(cached[0]).toMatch(/^work\/run-1\/images\/[0-9a-f]{64}\.jpg$/);
    expect(blobs.reads.get("images/wide.png")).toBe(1);

    // A later round, even through a fresh preparer, reads the stored JPEG, not the source.
    const again = await new SharpImagePreparer({ blobs, cachePrefix: CACHE }).prepare(
      "images/wide.png",
      options,
    );
    expect(again).toEqual(first);
    expect(blobs.reads.get("images/wide.png")).toBe(1);

    // Another size is another cache entry.
    const small = await preparer.prepare("images/wide.png", { imageRoot: "", maxSide: 128 });
    expect([small.width, small.height]).toEqual([128, 64]);
    expect(small.digest).not.toBe(first.digest);
    expect(blobs.reads.get("images/wide.png")).toBe(2);
  });

  it("decodes no more than shrinksAtOnce images at the same time, and prepares them all", async () => {
    /** Counts source reads in progress: a read is where a shrink starts holding its source in memory. */
    class SlowBlobs extends MemoryBlobs {
      inProgress = 0;
      most = 0;
      override async get(key: string): Promise<Uint8Array> {
        if (key.startsWith(CACHE)) return super.get(key);
        this.inProgress += 1;
        this.most = Math.max(this.most, this.inProgress);
        await new Promise((resolve) => setTimeout(resolve, 20));
        this.inProgress -= 1;
        return super.get(key);
      }
    }
    const prepareAll = async (shrinksAtOnce: number) => {
      const blobs = new SlowBlobs();
      const png = await solidPng(800, 600);
      for (let i = 0; i < 6; i++) await blobs.put(`images/${i}.png`, png);
      const preparer = new SharpImagePreparer({ blobs, cachePrefix: CACHE, shrinksAtOnce });
      const prepared = await Promise.all(
        Array.from({ length: 6 }, (_, i) => preparer.prepare(`images/${i}.png`, options)),
      );
      expect(prepared.map((p) => [p.width, p.height])).toEqual(Array.from({ length: 6 }, () => [512, 384]));
      return blobs.most;
    };
    expect(await prepareAll(1)).toBe(1);
    expect(await prepareAll(2)).toBe(2);
    expect(await prepareAll(6)).toBe(6);
  });

  it("never enlarges a small image", async () => {
    const blobs = new MemoryBlobs();
    await blobs.put("tiny.png", await solidPng(100, 40));
    const prepared = await new SharpImagePreparer({ blobs, cachePrefix: CACHE }).prepare("tiny.png", options);
    expect([prepared.width, prepared.height]).toEqual([100, 40]);
  });

  it("applies the EXIF orientation before resizing", async () => {
    const blobs = new MemoryBlobs();
    // Stored 1000x500, but orientation 6 says "rotate 90° clockwise to view".
    const rotated = await sharp({ create: { width: 1000, height: 500, channels: 3, background: "#3366cc" } })
      .jpeg()
      .withMetadata({ orientation: 6 })
      .toBuffer();
    await blobs.put("photo.jpg", rotated);
    const prepared = await new SharpImagePreparer({ blobs, cachePrefix: CACHE }).prepare(
      "photo.jpg",
      options,
    );
    expect([prepared.width, prepared.height]).toEqual([256, 512]);
  });

  it("flattens transparency onto white", async () => {
    const blobs = new MemoryBlobs();
    await blobs.put("clear.png", await solidPng(64, 64, 0));
    const prepared = await new SharpImagePreparer({ blobs, cachePrefix: CACHE }).prepare(
      "clear.png",
      options,
    );
    const { data, info } = await sharp(decodeDataUrl(prepared.dataUrl))
      .raw()
      .toBuffer({ resolveWithObject: true });
    expect(info.channels).toBe(3);
    expect(Math.min(...data)).toBeGreaterThan(245);
  });

  it("refuses missing, empty and oversized images", async () => {
    const blobs = new MemoryBlobs();
    await blobs.put("empty.png", new Uint8Array());
    await blobs.put("big.png", await solidPng(300, 300));
    const preparer = new SharpImagePreparer({ blobs, cachePrefix: CACHE, maxInputBytes: 100 });

    expect((await invalidInput(preparer.prepare("nope.png", options))).message).toBe(
      "image not found: memory:nope.png",
    );
    expect((await invalidInput(preparer.prepare("empty.png", options))).message).toContain("image is empty");
    const big = await invalidInput(preparer.prepare("big.png", options));
    expect(big.message).toMatch(/^image is \d+ bytes, over the limit of 100/);
    expect(big.retryable).toBe(false);
    // Oversized sources are refused from their size alone, before any read.
    expect(blobs.reads.get("big.png")).toBeUndefined();
  });

  it("refuses corrupt bytes with the decoder's reason", async () => {
    const blobs = new MemoryBlobs();
    await blobs.put("noise.png", randomBytes(4096));
    const png = Buffer.from(await solidPng(400, 400));
    await blobs.put("truncated.png", png.subarray(0, Math.floor(png.length / 2)));
    const preparer = new SharpImagePreparer({ blobs, cachePrefix: CACHE });

    const noise = await invalidInput(preparer.prepare("noise.png", options));
    expect(noise.message).toMatch(/^image cannot be decoded: memory:noise\.png: .+/);
    expect(await invalidInput(preparer.prepare("truncated.png", options))).toBeInstanceOf(InvalidInputError);
    expect(await blobs.list(CACHE)).toEqual([]);
  });

  it("refuses a decompression bomb from its header", async () => {
    const blobs = new MemoryBlobs();
    const bomb = bombPng(20_000);
    expect(bomb.length).toBeLessThan(200_000);
    await blobs.put("bomb.png", bomb);
    const preparer = new SharpImagePreparer({ blobs, cachePrefix: CACHE, maxInputPixels: 1_000_000 });
    const error = await invalidInput(preparer.prepare("bomb.png", options));
    expect(error.message).toMatch(/pixel limit/);
  });

  it("refuses SVG rather than rendering it", async () => {
    const blobs = new MemoryBlobs();
    await blobs.put(
      "vector.svg",
      '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
    );
    const error = await invalidInput(
      new SharpImagePreparer({ blobs, cachePrefix: CACHE }).prepare("vector.svg", options),
    );
    expect(error.message).toContain("format svg is not supported");
  });

  it.each([
    "../secret.png",
    "images/../../etc/passwd",
    "/etc/passwd",
    "s3://bucket/key.png",
    "https://example.com/a.png",
    "C:\\images\\a.png",
    "images\\..\\a.png",
    "",
  ])("refuses the unsafe key %j before touching the store", async (key) => {
    const blobs = new MemoryBlobs();
    await invalidInput(new SharpImagePreparer({ blobs, cachePrefix: CACHE }).prepare(key, options));
    expect(blobs.reads.size).toBe(0);
  });
});
