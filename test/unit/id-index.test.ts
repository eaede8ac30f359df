import { describe, expect, it } from "vitest";
import {
  hashId,
  ID_INDEX_MAX_LOAD,
  ID_INDEX_SLOT_BYTES,
  IdIndex,
} from "../../functions/pipeline/id-index.ts";

/** The ids the index has been given, by value, as the state store holds them for ingest. */
function withRecords(options: ConstructorParameters<typeof IdIndex>[0] = {}) {
  const index = new IdIndex(options);
  const idOf = new Map<number, string>();
  const confirmed: Array<[earlier: number, id: string]> = [];
  /** Confirms like ingest does: the earlier record's id must equal the one looked up; answers its value. */
  const confirm = (earlier: number, id: string): number | undefined => {
    confirmed.push([earlier, id]);
    return idOf.get(earlier) === id ? earlier : undefined;
  };
  const findOrAdd = async (id: string, value: number) => {
    const first = await index.findOrAdd(id, value, confirm);
    if (first === undefined) idOf.set(value, id);
    return first;
  };
  return { index, findOrAdd, confirmed };
}

describe("IdIndex", () => {
  it("adds new ids and finds a duplicate's first value, asking to confirm only on a hash match", async () => {
    const { index, findOrAdd, confirmed } = withRecords();
    expect(await findOrAdd("a", 1)).toBeUndefined();
    expect(await findOrAdd("b", 2)).toBeUndefined();
    expect(confirmed).toEqual([]);
    expect(await findOrAdd("a", 3)).toBe(1);
    expect(await findOrAdd("a", 4)).toBe(1);
    expect(await findOrAdd("b", 5)).toBe(2);
    expect(confirmed).toEqual([
      [1, "a"],
      [1, "a"],
      [2, "b"],
    ]);
    expect(index.size).toBe(2);
  });

  it("never takes two different ids that share a hash for duplicates", async () => {
    // Every id hashes alike: each lookup meets every earlier id and must ask about each.
    const { index, findOrAdd, confirmed } = withRecords({ hash: () => 42 });
    expect(await findOrAdd("first", 1)).toBeUndefined();
    expect(await findOrAdd("second", 2)).toBeUndefined();
    expect(confirmed).toEqual([[1, "second"]]);
    expect(await findOrAdd("third", 3)).toBeUndefined();
    expect(index.size).toBe(3);
    // The real duplicates are still found, each pointing at its own first value.
    expect(await findOrAdd("second", 4)).toBe(2);
    expect(await findOrAdd("first", 5)).toBe(1);
    expect(await findOrAdd("third", 6)).toBe(3);
    expect(index.size).toBe(3);
  });

  it("confirms through an asynchronous read, as ingest does against the state store", async () => {
    const index = new IdIndex({ hash: (id) => id.length });
    const stored = new Map<number, string>([[1, "xy"]]);
    const read = async (earlier: number, id: string) => {
      await new Promise((resolve) => setTimeout(resolve, 1));
      return stored.get(earlier) === id ? `line of ${earlier}` : undefined;
    };
    expect(await index.findOrAdd("xy", 1, read)).toBeUndefined();
    expect(await index.findOrAdd("ab", 2, read)).toBeUndefined();
    stored.set(2, "ab");
    expect(await index.findOrAdd("ab", 3, read)).toBe("line of 2");
    expect(await index.findOrAdd("xy", 4, read)).toBe("line of 1");
  });

  it("stays exact while it grows, colliding hashes included", async () => {
    // Ids of seven lengths hash to seven values: long probe runs that every doubling must keep findable.
    const colliding = withRecords({ hash: (id) => id.length % 7, initialSlots: 2 });
    const spread = withRecords({ initialSlots: 2 });
    const ids = Array.from({ length: 3_000 }, (_, i) => `id-${i * 7919}`);
    for (const [i, id] of ids.entries()) {
      expect(await colliding.findOrAdd(id, i + 1)).toBeUndefined();
      expect(await spread.findOrAdd(id, i + 1)).toBeUndefined();
    }
    for (const [i, id] of ids.entries()) {
      expect(await colliding.findOrAdd(id, 10_000 + i)).toBe(i + 1);
      expect(await spread.findOrAdd(id, 10_000 + i)).toBe(i + 1);
    }
    expect(spread.index.size).toBe(ids.length);
    expect(colliding.index.size).toBe(ids.length);
    expect(spread.index.bytes).toBe(4_096 * ID_INDEX_SLOT_BYTES);
  });

  it("holds a fixed number of bytes per id, however long the ids", async () => {
    const { index, findOrAdd } = withRecords();
    const long = "x".repeat(200);
    for (let i = 1; i <= 100_000; i++) await findOrAdd(`${long}${i}`, i);
    expect(index.size).toBe(100_000);
    // 8 bytes a slot, the table at least 7/16 full after it doubles: under 19 bytes an id (a Map held the string).
    expect(ID_INDEX_SLOT_BYTES).toBe(8);
    expect(index.bytes / index.size).toBeLessThanOrEqual(ID_INDEX_SLOT_BYTES / (ID_INDEX_MAX_LOAD / 2));
    expect(index.bytes).toBe(2 ** 17 * ID_INDEX_SLOT_BYTES);
  });

  it("refuses values it cannot store and hashes outside [0, 2^32)", async () => {
    const index = new IdIndex();
    const never = () => {
      throw new Error("no confirm expected");
    };
    await expect(index.findOrAdd("a", 0, never)).rejects.toThrow(RangeError);
    await expect(index.findOrAdd("a", 1.5, never)).rejects.toThrow(RangeError);
    await expect(index.findOrAdd("a", 2 ** 31, never)).rejects.toThrow(RangeError);
    await expect(new IdIndex({ hash: () => -1 }).findOrAdd("a", 1, never)).rejects.toThrow(RangeError);
    await expect(new IdIndex({ hash: () => 2 ** 32 }).findOrAdd("a", 1, never)).rejects.toThrow(RangeError);
    await expect(new IdIndex({ hash: () => 0.5 }).findOrAdd("a", 1, never)).rejects.toThrow(RangeError);
    // The top of the range is a hash like any other (a Uint32Array holds it).
    expect(await new IdIndex({ hash: () => 2 ** 32 - 1 }).findOrAdd("a", 1, never)).toBeUndefined();
    expect(index.size).toBe(0);
  });
});

describe("hashId", () => {
  it("spreads 200,000 COCO-like ids over 32 bits about as well as chance", () => {
    const seen = new Set<number>();
    let outOfRange = 0;
    for (let i = 0; i < 200_000; i++) {
      const hash = hashId(String(100_000_000 + i).padStart(12, "0"));
      if (!Number.isInteger(hash) || hash < 0 || hash >= 2 ** 32) outOfRange += 1;
      seen.add(hash);
    }
    expect(outOfRange).toBe(0);
    // Chance alone gives about 4.7 shared hashes (n^2 / 2^33); a poor mix of sequential ids gives thousands.
    expect(200_000 - seen.size).toBeLessThan(25);
  });

  it("uses the high bits too, so the table's slot (the low bits) is not all it spreads", () => {
    const high = new Set<number>();
    for (let i = 0; i < 4_096; i++) high.add(hashId(`id-${i}`) >>> 20);
    // 4,096 ids over 4,096 values of the top 12 bits: chance leaves about 63% of them used.
    expect(high.size).toBeGreaterThan(2_300);
  });

  it("tells apart ids that differ in one code unit, in length only, or beyond Latin-1", () => {
    const ids = ["", "a", "b", "ab", "ba", "a\u0000", "é", "e\u0301", "😀", "\ud83d", "12345", "12346"];
    expect(new Set(ids.map(hashId)).size).toBe(ids.length);
  });
});
