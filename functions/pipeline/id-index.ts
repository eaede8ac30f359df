/**
 * The ids seen so far in a shard, for duplicate detection, in a fixed number of bytes per id whatever the
 * ids look like: a shard may hold millions of lines, and ingest must not keep their ids as strings.
 *
 * An open-addressing table (linear probing) over two typed arrays: a 32-bit hash of the id and the value it
 * was added with (the record's ordinal, > 0; 0 marks an empty slot), 8 bytes a slot, doubled when seven
 * eighths are used. A hash only says "maybe": the caller's `confirm` decides from the earlier record whether
 * its id really is the same, so two different ids that share a hash are never taken for a duplicate. With 32
 * bits, 200,000 distinct ids share a hash about 5 times in all (n^2 / 2^33): 5 reads of an earlier record,
 * against the 4 bytes an id a wider hash would cost (a 53-bit hash in a Float64Array took 12 bytes a slot).
 */

/** Hashes an id to an integer in [0, 2^32). Injected in tests to force collisions. */
export type IdHash = (id: string) => number;

export interface IdIndexOptions {
  readonly hash?: IdHash;
  /** Slots to start with (rounded up to a power of two); the table doubles as it fills. */
  readonly initialSlots?: number;
}

/** Bytes per slot: a Uint32 hash and an Int32 value. */
export const ID_INDEX_SLOT_BYTES = 8;

/**
 * The table doubles when more than this share of its slots is used. High for linear probing, on purpose: a
 * probe is a read of a typed array, nanoseconds against the tens of microseconds a line costs, while memory
 * is what this table exists to save. Between 7/16 and 7/8 full, an id costs 9.1 to 18.3 bytes.
 */
export const ID_INDEX_MAX_LOAD = 7 / 8;
const DEFAULT_INITIAL_SLOTS = 1024;
/** Int32Array values and typed array lengths: the ordinal of a line of a 2 GiB shard fits well below. */
const MAX_VALUE = 2 ** 31 - 1;
const MAX_SLOTS = 2 ** 30;

/** Murmur3's 32-bit finaliser: every input bit reaches every output bit. */
function fmix32(value: number): number {
  let h = value;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Two 32-bit hashes of the id's UTF-16 code units (FNV-1a and a multiply-xorshift), each finalised, then
 * mixed into one: ids that differ in one unit, or in length alone, land far apart.
 */
export const hashId: IdHash = (id) => {
  let a = 0x811c9dc5;
  let b = 0x9747b28c ^ id.length;
  for (let i = 0; i < id.length; i++) {
    const unit = id.charCodeAt(i);
    a = Math.imul(a ^ unit, 0x01000193);
    b = Math.imul(b ^ unit, 0x5bd1e995);
    b ^= b >>> 15;
  }
  return fmix32(fmix32(a) ^ Math.imul(fmix32(b), 0x9e3779b1));
};

export class IdIndex {
  readonly #hash: IdHash;
  #hashes: Uint32Array;
  #values: Int32Array;
  #mask: number;
  #size = 0;

  constructor(options: IdIndexOptions = {}) {
    this.#hash = options.hash ?? hashId;
    const wanted = Math.max(2, options.initialSlots ?? DEFAULT_INITIAL_SLOTS);
    const slots = Math.min(MAX_SLOTS, 2 ** Math.ceil(Math.log2(wanted)));
    this.#hashes = new Uint32Array(slots);
    this.#values = new Int32Array(slots);
    this.#mask = slots - 1;
  }

  /** How many ids are held. */
  get size(): number {
    return this.#size;
  }

  /** The bytes the table holds (both arrays), whatever the ids' lengths. */
  get bytes(): number {
    return this.#hashes.byteLength + this.#values.byteLength;
  }

  /**
   * Looks `id` up, and adds it with `value` when no earlier entry has it. For each earlier entry whose hash
   * matches, `confirm(earlierValue, id)` says whether that entry really holds `id`: it returns what the caller
   * wants to know about the earlier entry (for ingest, its line), or undefined when the id there is another
   * one. Returns the answer for the confirmed entry (the id is then not added again), else undefined.
   * `confirm` runs only on a hash match, so a new id costs no I/O.
   */
  async findOrAdd<T>(
    id: string,
    value: number,
    confirm: (earlier: number, id: string) => T | undefined | Promise<T | undefined>,
  ): Promise<T | undefined> {
    if (!Number.isInteger(value) || value <= 0 || value > MAX_VALUE) {
      throw new RangeError(`IdIndex values must be integers in 1..${MAX_VALUE}, got ${value}`);
    }
    const hash = this.#hash(id);
    if (!Number.isInteger(hash) || hash < 0 || hash >= 2 ** 32) {
      throw new RangeError(`an id hash must be an integer in [0, 2^32), got ${hash}`);
    }
    let slot = hash & this.#mask;
    for (;;) {
      const earlier = this.#values[slot] ?? 0;
      if (earlier === 0) break;
      if (this.#hashes[slot] === hash) {
        const answer = await confirm(earlier, id);
        if (answer !== undefined) return answer;
      }
      slot = (slot + 1) & this.#mask;
    }
    // `confirm` may have awaited, but nothing adds to the table meanwhile: ingest handles one line at a time.
    this.#hashes[slot] = hash;
    this.#values[slot] = value;
    this.#size += 1;
    if (this.#size > this.#values.length * ID_INDEX_MAX_LOAD) this.#grow();
    return undefined;
  }

  #grow(): void {
    const hashes = this.#hashes;
    const values = this.#values;
    if (values.length >= MAX_SLOTS) throw new RangeError(`IdIndex is full (${this.#size} ids)`);
    const slots = values.length * 2;
    this.#hashes = new Uint32Array(slots);
    this.#values = new Int32Array(slots);
    this.#mask = slots - 1;
    for (let from = 0; from < values.length; from++) {
      const value = values[from] ?? 0;
      if (value === 0) continue;
      const hash = hashes[from] ?? 0;
      let slot = hash & this.#mask;
      while ((this.#values[slot] ?? 0) !== 0) slot = (slot + 1) & this.#mask;
      this.#hashes[slot] = hash;
      this.#values[slot] = value;
    }
  }
}
