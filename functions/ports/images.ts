/** An image ready to send to a vision model. */
export interface PreparedImage {
  /** `data:image/jpeg;base64,...` */
  readonly dataUrl: string;
  /** sha256 hex of the prepared bytes: part of the answer cache key. */
  readonly digest: string;
  readonly width: number;
  readonly height: number;
}

/**
 * Resolves an image path under the run's image root, and shrinks it once per image
 * (longer side at most `maxSide`, JPEG); later rounds reuse the stored result.
 * Throws InvalidInputError for a missing, corrupt, escaping or oversized image.
 */
export interface ImagePreparer {
  prepare(
    imagePath: string,
    options: {
      readonly imageRoot: string;
      readonly maxSide: number;
      /** Refuse a larger source file before reading it; the preparer's own default when absent. */
      readonly maxInputBytes?: number;
      /** Refuse an image whose header declares more pixels (a decompression bomb); the preparer's default when absent. */
      readonly maxInputPixels?: number;
    },
  ): Promise<PreparedImage>;
}
