/**
 * Streams the records of a seed shard (METHOD.md §7): one JSON array, or JSON Lines.
 *
 * The shard is never held whole: JSON Lines are cut at `\n`, and the array form is cut into
 * top-level elements by a small byte scanner that follows strings, escapes and bracket depth.
 * Every structural byte of JSON is ASCII and every byte of a multi-byte UTF-8 sequence is >= 0x80,
 * so scanning bytes (not characters) cannot mistake part of a character for structure.
 */

/** One record of a shard, or the reason it could not be read. `index` is set for the array form only. */
export type ShardEntry =
  | { line: number; index?: number; raw: string; value: unknown }
  | { line: number; index?: number; raw: string; error: string };

export interface ReadShardOptions {
  /** The longest line (JSON Lines) or element (JSON array) kept, in bytes. Default 8 MiB. */
  maxLineBytes?: number;
}

/**
 * A record cut out of the shard but not decoded yet: records are decoded and parsed one at a time, as the
 * consumer asks for them, so a chunk's worth of parsed records never sits in memory at once.
 */
interface CutRecord {
  line: number;
  index?: number;
  /** The record's bytes, whitespace trimmed: our own copy, never the stream's buffer. */
  bytes: Uint8Array;
}

/** What one chunk completed: records still to decode, or entries already known to be errors. */
type Cut = CutRecord | ShardEntry;

export const DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024;

/** How much of an over-long line is kept as `raw`, so the error record says what the line was. */
const RAW_PREVIEW_BYTES = 1024;

const LF = 0x0a;
const CR = 0x0d;
const SPACE = 0x20;
const TAB = 0x09;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const BOM = [0xef, 0xbb, 0xbf] as const;

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const lenientUtf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

function isWhitespace(byte: number): boolean {
  return byte === SPACE || byte === LF || byte === CR || byte === TAB;
}

/** Reads a shard from a stream of byte chunks; see the module comment. */
export async function* readShard(
  chunks: AsyncIterable<Uint8Array>,
  options: ReadShardOptions = {},
): AsyncGenerator<ShardEntry, void, undefined> {
  const maxLineBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  if (!Number.isInteger(maxLineBytes) || maxLineBytes <= 0) {
    throw new RangeError(`maxLineBytes must be a positive integer, got ${maxLineBytes}`);
  }
  const parser = new ShardParser(maxLineBytes);
  for await (const chunk of chunks) {
    for (const cut of parser.push(chunk)) yield settle(cut);
    // Leaving the loop early closes the source, so a broken array does not make us download the rest.
    if (parser.finished) return;
  }
  for (const cut of parser.end()) yield settle(cut);
}

/**
 * Decodes a cut record (a line, or an element with its index) and parses it as JSON, or says why it cannot;
 * an error entry is already settled. The place is only spelled out for an error.
 */
function settle(cut: Cut): ShardEntry {
  if (!("bytes" in cut)) return cut;
  const { line, index, bytes } = cut;
  let raw: string;
  try {
    raw = strictUtf8.decode(bytes);
  } catch {
    return failed(line, index, lenientUtf8.decode(bytes), "not valid UTF-8");
  }
  try {
    const value: unknown = JSON.parse(raw);
    return index === undefined ? { line, raw, value } : { line, index, raw, value };
  } catch (err) {
    return failed(line, index, raw, `invalid JSON: ${err instanceof Error ? err.message : String(err)}`);
  }
}

function failed(line: number, index: number | undefined, raw: string, reason: string): ShardEntry {
  if (index === undefined) return { line, raw, error: `line ${line}: ${reason}` };
  return { line, index, raw, error: `element ${index} (line ${line}): ${reason}` };
}

/** Pieces of one line or element, kept until its end is seen. */
class ByteRun {
  private parts: Uint8Array[] = [];
  length = 0;

  append(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    // A copy, because a stream may reuse the buffer it handed us.
    this.parts.push(bytes.slice());
    this.length += bytes.length;
  }

  take(): Uint8Array {
    const out = this.parts.length === 1 && this.parts[0] ? this.parts[0] : concat(this.parts, this.length);
    this.parts = [];
    this.length = 0;
    return out;
  }

  clear(): void {
    this.parts = [];
    this.length = 0;
  }
}

function concat(parts: Uint8Array[], length: number): Uint8Array {
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

function trimWhitespace(bytes: Uint8Array): Uint8Array {
  let start = 0;
  let end = bytes.length;
  while (start < end && isWhitespace(bytes[start] ?? 0)) start++;
  while (end > start && isWhitespace(bytes[end - 1] ?? 0)) end--;
  return bytes.subarray(start, end);
}

type Mode = "bom" | "detect" | "lines" | "array" | "done";
type ArrayPhase = "between" | "element" | "closed";

/** The push-style state machine behind `readShard`. Each push returns what that chunk completed. */
class ShardParser {
  private readonly maxBytes: number;
  private mode: Mode = "bom";
  /** The first bytes, held until we know whether they are a BOM. */
  private head: number[] = [];
  /** Number of `\n` seen so far, so the current line is `newlines + 1`. */
  private newlines = 0;

  // JSON Lines state.
  private readonly current = new ByteRun();
  private overflowBytes = 0;
  private overflowPreview = "";
  private lastByteCR = false;

  // JSON array state.
  private phase: ArrayPhase = "between";
  private afterComma = false;
  private index = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private elementLine = 0;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  get finished(): boolean {
    return this.mode === "done";
  }

  push(chunk: Uint8Array): Cut[] {
    const out: Cut[] = [];
    this.feed(chunk, out);
    return out;
  }

  end(): Cut[] {
    const out: Cut[] = [];
    if (this.mode === "bom") {
      // Fewer than three bytes in the whole shard: they cannot be a BOM.
      const head = Uint8Array.from(this.head);
      this.head = [];
      this.mode = "detect";
      this.feed(head, out);
    }
    if (this.mode === "lines") this.finishLine(out);
    if (this.mode === "array") this.finishArray(out);
    this.mode = "done";
    return out;
  }

  private feed(chunk: Uint8Array, out: Cut[]): void {
    let bytes = chunk;
    if (this.mode === "bom") {
      let used = 0;
      while (this.head.length < BOM.length && used < bytes.length) this.head.push(bytes[used++] ?? 0);
      if (this.head.length < BOM.length) return;
      const isBom = this.head.every((byte, i) => byte === BOM[i]);
      const replay = isBom ? new Uint8Array(0) : Uint8Array.from(this.head);
      this.head = [];
      this.mode = "detect";
      this.feed(replay, out);
      bytes = bytes.subarray(used);
    }
    if (this.mode === "detect") {
      let at = 0;
      while (at < bytes.length && isWhitespace(bytes[at] ?? 0)) {
        if (bytes[at] === LF) this.newlines++;
        at++;
      }
      if (at === bytes.length) return;
      if (bytes[at] === OPEN_BRACKET) {
        this.mode = "array";
        at++;
      } else {
        this.mode = "lines";
      }
      bytes = bytes.subarray(at);
    }
    if (this.mode === "lines") this.feedLines(bytes, out);
    else if (this.mode === "array") this.feedArray(bytes, out);
  }

  // ---- JSON Lines ----

  private feedLines(bytes: Uint8Array, out: Cut[]): void {
    let start = 0;
    while (start < bytes.length) {
      const newline = bytes.indexOf(LF, start);
      const stop = newline === -1 ? bytes.length : newline;
      this.addToLine(bytes.subarray(start, stop));
      if (newline === -1) return;
      this.finishLine(out);
      this.newlines++;
      start = newline + 1;
    }
  }

  private addToLine(segment: Uint8Array): void {
    if (segment.length === 0) return;
    this.lastByteCR = segment[segment.length - 1] === CR;
    // One byte of slack for the `\r` of a CRLF line, which does not count towards the limit.
    this.addBounded(segment, this.maxBytes + 1);
  }

  /**
   * Holds a segment of the current line or element; past `limit` bytes only its size and a preview are kept,
   * so an over-long record costs no more memory than the limit.
   */
  private addBounded(segment: Uint8Array, limit: number): void {
    if (this.overflowBytes > 0) {
      this.overflowBytes += segment.length;
      return;
    }
    if (this.current.length + segment.length > limit) {
      const held = this.current.take();
      const preview = concat(
        [held, segment.subarray(0, RAW_PREVIEW_BYTES)],
        held.length + Math.min(RAW_PREVIEW_BYTES, segment.length),
      );
      this.overflowPreview = lenientUtf8.decode(preview.subarray(0, RAW_PREVIEW_BYTES));
      this.overflowBytes = held.length + segment.length;
      return;
    }
    this.current.append(segment);
  }

  private finishLine(out: Cut[]): void {
    const line = this.newlines + 1;
    const crlf = this.lastByteCR ? 1 : 0;
    this.lastByteCR = false;
    if (this.overflowBytes > 0) {
      const size = this.overflowBytes - crlf;
      out.push({ line, raw: this.overflowPreview, error: this.tooLong(`line ${line}`, size, "line") });
      this.overflowBytes = 0;
      this.overflowPreview = "";
      return;
    }
    const all = this.current.take();
    const body = all.subarray(0, all.length - crlf);
    if (body.length > this.maxBytes) {
      const raw = lenientUtf8.decode(body.subarray(0, RAW_PREVIEW_BYTES));
      out.push({ line, raw, error: this.tooLong(`line ${line}`, body.length, "line") });
      return;
    }
    const text = trimWhitespace(body);
    if (text.length === 0) return;
    out.push({ line, bytes: text });
  }

  private tooLong(where: string, size: number, what: "line" | "element"): string {
    return `${where}: ${size} bytes exceeds the ${this.maxBytes}-byte ${what} limit`;
  }

  // ---- JSON array ----

  private feedArray(bytes: Uint8Array, out: Cut[]): void {
    /** Where the part of the current element that lies in this chunk starts. */
    let segmentStart = 0;
    for (let at = 0; at < bytes.length; at++) {
      const byte = bytes[at] ?? 0;
      if (this.phase === "element") {
        if (this.inString) {
          if (this.escaped) this.escaped = false;
          else if (byte === BACKSLASH) this.escaped = true;
          else if (byte === QUOTE) this.inString = false;
          else if (byte === LF) this.newlines++;
          continue;
        }
        if (byte === QUOTE) this.inString = true;
        else if (byte === OPEN_BRACKET || byte === OPEN_BRACE) this.depth++;
        else if (this.depth > 0 && (byte === CLOSE_BRACKET || byte === CLOSE_BRACE)) this.depth--;
        else if (this.depth === 0 && (byte === COMMA || byte === CLOSE_BRACKET)) {
          this.addBounded(bytes.subarray(segmentStart, at), this.maxBytes);
          this.finishElement(out);
          this.index++;
          this.phase = byte === COMMA ? "between" : "closed";
          this.afterComma = byte === COMMA;
        } else if (this.depth === 0 && byte === CLOSE_BRACE) {
          this.stop(out, `line ${this.newlines + 1}: broken JSON array: "}" without a matching "{"`);
          return;
        } else if (byte === LF) this.newlines++;
        continue;
      }
      if (byte === LF) {
        this.newlines++;
        continue;
      }
      if (isWhitespace(byte)) continue;
      if (this.phase === "closed") {
        this.stop(
          out,
          `line ${this.newlines + 1}: broken JSON array: unexpected content after the closing "]"`,
        );
        return;
      }
      // Between elements.
      if (byte === CLOSE_BRACKET) {
        if (this.afterComma) {
          out.push({
            line: this.newlines + 1,
            index: this.index,
            raw: "",
            error: `element ${this.index} (line ${this.newlines + 1}): trailing comma before "]"`,
          });
        }
        this.phase = "closed";
      } else if (byte === COMMA) {
        out.push({
          line: this.newlines + 1,
          index: this.index,
          raw: "",
          error: `element ${this.index} (line ${this.newlines + 1}): empty element between commas`,
        });
        this.index++;
        this.afterComma = true;
      } else {
        this.phase = "element";
        this.elementLine = this.newlines + 1;
        segmentStart = at;
        // Re-read this byte as the first byte of the element.
        at--;
      }
    }
    if (this.phase === "element") this.addBounded(bytes.subarray(segmentStart), this.maxBytes);
  }

  private finishElement(out: Cut[]): void {
    const base = { line: this.elementLine, index: this.index };
    if (this.overflowBytes > 0) {
      const where = `element ${this.index} (line ${this.elementLine})`;
      out.push({
        ...base,
        raw: this.overflowPreview,
        error: this.tooLong(where, this.overflowBytes, "element"),
      });
      this.overflowBytes = 0;
      this.overflowPreview = "";
      return;
    }
    const text = trimWhitespace(this.current.take());
    out.push({ ...base, bytes: text });
  }

  private finishArray(out: Cut[]): void {
    if (this.phase === "closed") return;
    const what =
      this.phase === "element"
        ? `element ${this.index} starting at line ${this.elementLine} is incomplete`
        : `missing the closing "]"`;
    this.stop(out, `line ${this.newlines + 1}: broken JSON array: the shard ends early (${what})`);
  }

  /** The array's structure is broken: nothing after this point can be cut reliably. */
  private stop(out: Cut[], error: string): void {
    out.push({ line: this.newlines + 1, raw: "", error });
    this.current.clear();
    this.overflowBytes = 0;
    this.mode = "done";
  }
}
