import { describe, expect, it } from "vitest";
import { readShard, type ShardEntry } from "../../functions/evolution/shard-reader.ts";

const encoder = new TextEncoder();

async function* chunksOf(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < bytes.length; at += size) yield bytes.subarray(at, at + size);
}

async function read(
  input: string | Uint8Array,
  chunkSize = 64 * 1024,
  maxLineBytes?: number,
): Promise<ShardEntry[]> {
  const bytes = typeof input === "string" ? encoder.encode(input) : input;
  const out: ShardEntry[] = [];
  const options = maxLineBytes === undefined ? {} : { maxLineBytes };
  for await (const entry of readShard(chunksOf(bytes, chunkSize), options)) out.push(entry);
  return out;
}

function values(entries: ShardEntry[]): unknown[] {
  return entries.map((entry) => ("value" in entry ? entry.value : { error: entry.error }));
}

describe("readShard: JSON Lines", () => {
  it("skips blank lines and keeps 1-based line numbers", async () => {
    const entries = await read('{"id":1}\n\n   \n{"id":2}\n\n');
    expect(entries).toEqual([
      { line: 1, raw: '{"id":1}', value: { id: 1 } },
      { line: 4, raw: '{"id":2}', value: { id: 2 } },
    ]);
  });

  it("handles CRLF, a BOM and a last line without newline", async () => {
    const entries = await read('\uFEFF{"id":"a"}\r\n\r\n{"id":"b"}');
    expect(entries).toEqual([
      { line: 1, raw: '{"id":"a"}', value: { id: "a" } },
      { line: 3, raw: '{"id":"b"}', value: { id: "b" } },
    ]);
  });

  it("handles a BOM and CRLF split over 1-byte chunks", async () => {
    const entries = await read('\uFEFF{"id":"a"}\r\n{"id":"b"}\r\n', 1);
    expect(values(entries)).toEqual([{ id: "a" }, { id: "b" }]);
    expect(entries.map((e) => e.raw)).toEqual(['{"id":"a"}', '{"id":"b"}']);
  });

  it("reports a bad line and goes on with the right line numbers", async () => {
    const text = ['{"id":1}', '{"id":2}', "{not json}", '{"id":4}', "", '{"id":6}'].join("\n");
    const entries = await read(text, 3);
    expect(entries.map((e) => e.line)).toEqual([1, 2, 3, 4, 6]);
    const bad = entries[2];
    expect(bad && "error" in bad ? bad.error : "").toMatch(/^line 3: invalid JSON: /);
    expect(bad?.raw).toBe("{not json}");
    expect(values(entries).filter((v) => typeof v === "object" && v !== null && "id" in v)).toEqual([
      { id: 1 },
      { id: 2 },
      { id: 4 },
      { id: 6 },
    ]);
  });

  it("gives an error for a non-UTF-8 line only", async () => {
    const bytes = new Uint8Array([
      ...encoder.encode('{"id":1}\n{"id":"'),
      0xff,
      0xfe,
      ...encoder.encode('"}\n{"id":"é"}\n'),
    ]);
    const entries = await read(bytes, 2);
    expect(entries).toHaveLength(3);
    expect(entries[1]).toMatchObject({ line: 2, error: "line 2: not valid UTF-8" });
    expect(entries[2]).toMatchObject({ line: 3, value: { id: "é" } });
  });

  it("gives an error for an over-long line without keeping it, then reads on", async () => {
    const long = `{"id":"${"x".repeat(5000)}"}`;
    const text = `{"id":1}\n${long}\r\n{"id":3}\n`;
    const entries = await read(text, 100, 1024);
    expect(entries).toHaveLength(3);
    expect(entries[1]).toMatchObject({
      line: 2,
      error: `line 2: ${long.length} bytes exceeds the 1024-byte line limit`,
    });
    expect(entries[1]?.raw.length).toBe(1024);
    expect(entries[2]).toMatchObject({ line: 3, value: { id: 3 } });
  });

  it("does not buffer a 64 MiB line beyond the limit", async () => {
    const piece = new Uint8Array(64 * 1024).fill(0x61);
    const pieces = 1024;
    async function* source(): AsyncGenerator<Uint8Array> {
      yield encoder.encode('{"id":1}\n"');
      // The same buffer every time: only the reader could make the heap grow.
      for (let i = 0; i < pieces; i++) yield piece;
      yield encoder.encode('"\n{"id":3}\n');
    }
    const before = process.memoryUsage().arrayBuffers;
    let peak = before;
    const entries: ShardEntry[] = [];
    for await (const entry of readShard(source(), { maxLineBytes: 1024 * 1024 })) {
      entries.push(entry);
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    }
    const size = piece.length * pieces + 2;
    expect(entries.map((e) => e.line)).toEqual([1, 2, 3]);
    expect(entries[1]).toMatchObject({ error: `line 2: ${size} bytes exceeds the 1048576-byte line limit` });
    expect(peak - before).toBeLessThan(16 * 1024 * 1024);
  });

  it("accepts a line of exactly the limit, with or without CR", async () => {
    const line = `{"id":"${"y".repeat(20)}"}`;
    const entries = await read(`${line}\r\n${line}\n`, 5, line.length);
    expect(values(entries)).toEqual([{ id: "y".repeat(20) }, { id: "y".repeat(20) }]);
    const over = await read(`${line}\n`, 5, line.length - 1);
    expect(over[0]).toMatchObject({
      error: `line 1: ${line.length} bytes exceeds the ${line.length - 1}-byte line limit`,
    });
  });

  it("reads nothing from an empty or blank shard", async () => {
    expect(await read("")).toEqual([]);
    expect(await read("\n \r\n")).toEqual([]);
    expect(await read("\uFEFF")).toEqual([]);
  });

  it("streams a 50,000-line shard from a generator with bounded memory", async () => {
    const lines = 50_000;
    async function* generate(): AsyncGenerator<Uint8Array> {
      let batch = "";
      for (let i = 1; i <= lines; i++) {
        batch += `{"id":${i},"conversations":[{"from":"human","value":"q ${i}"},{"from":"gpt","value":"a"}]}\n`;
        if (i % 500 === 0) {
          yield encoder.encode(batch);
          batch = "";
        }
      }
    }
    let count = 0;
    let lastLine = 0;
    let idsMatch = true;
    for await (const entry of readShard(generate())) {
      count++;
      lastLine = entry.line;
      if (!("value" in entry) || typeof entry.value !== "object" || entry.value === null) idsMatch = false;
      else if (!("id" in entry.value) || entry.value.id !== entry.line) idsMatch = false;
    }
    expect(count).toBe(lines);
    expect(lastLine).toBe(lines);
    expect(idsMatch).toBe(true);
  });
});

describe("readShard: JSON array", () => {
  const tricky = [
    { id: "a", text: 'brackets ] } [ { and "quotes" and \\ backslash' },
    { id: "b", nested: [[1, 2], { x: "]" }], s: "\\" },
    "a plain string",
    42,
  ];

  it("cuts top-level elements, with strings holding brackets and escaped quotes", async () => {
    const text = `[\n${tricky.map((v) => JSON.stringify(v)).join(",\n")}\n]\n`;
    const entries = await read(text);
    expect(values(entries)).toEqual(tricky);
    expect(entries.map((e) => e.index)).toEqual([0, 1, 2, 3]);
    expect(entries.map((e) => e.line)).toEqual([2, 3, 4, 5]);
  });

  it("gives the same result fed 1 byte at a time", async () => {
    const text = `\uFEFF  [${JSON.stringify(tricky, null, 2).slice(1)}`;
    const whole = await read(text);
    const bytewise = await read(text, 1);
    expect(values(bytewise)).toEqual(tricky);
    expect(bytewise).toEqual(whole);
  });

  it("reports the start line of multi-line elements", async () => {
    const text = JSON.stringify([{ a: 1 }, { b: [1, 2] }], null, 2);
    const entries = await read(text, 7);
    // Lines: "[", "  {", '    "a": 1', "  },", "  {": the second element opens on line 5.
    expect(entries.map((e) => e.line)).toEqual([2, 5]);
  });

  it("reports a bad element and goes on", async () => {
    const entries = await read('[{"id":1}, {"id": nope}, {"id":3}]');
    expect(entries).toHaveLength(3);
    expect(entries[1]).toMatchObject({ index: 1, line: 1 });
    const bad = entries[1];
    expect(bad && "error" in bad ? bad.error : "").toMatch(/^element 1 \(line 1\): invalid JSON: /);
    expect(entries[2]).toMatchObject({ index: 2, value: { id: 3 } });
  });

  it("reads an empty array as nothing", async () => {
    expect(await read(" [ ] ")).toEqual([]);
  });

  it("reports a trailing comma and empty elements", async () => {
    const entries = await read("[1,,2,]");
    expect(entries).toEqual([
      { line: 1, index: 0, raw: "1", value: 1 },
      { line: 1, index: 1, raw: "", error: "element 1 (line 1): empty element between commas" },
      { line: 1, index: 2, raw: "2", value: 2 },
      { line: 1, index: 3, raw: "", error: 'element 3 (line 1): trailing comma before "]"' },
    ]);
  });

  it("stops with one error when the array is not closed", async () => {
    const entries = await read('[{"id":1},\n{"id":2');
    expect(entries).toHaveLength(2);
    expect(entries[0]).toMatchObject({ value: { id: 1 } });
    expect(entries[1]).toMatchObject({
      line: 2,
      error: "line 2: broken JSON array: the shard ends early (element 1 starting at line 2 is incomplete)",
    });
  });

  it("stops with one error on a stray closing brace or content after the array", async () => {
    const brace = await read('[{"id":1}}, {"id":2}]');
    expect(brace).toHaveLength(1);
    expect(brace[0]).toMatchObject({ error: 'line 1: broken JSON array: "}" without a matching "{"' });

    const after = await read('[{"id":1}]\n{"id":2}\n{"id":3}\n');
    expect(after).toHaveLength(2);
    expect(after[1]).toMatchObject({
      line: 2,
      error: 'line 2: broken JSON array: unexpected content after the closing "]"',
    });
  });

  it("stops pulling chunks once the structure is broken", async () => {
    let pulled = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      yield encoder.encode('[{"id":1}}');
      for (let i = 0; i < 100; i++) {
        pulled++;
        yield encoder.encode(', {"id":2}');
      }
    }
    const entries: ShardEntry[] = [];
    for await (const entry of readShard(source())) entries.push(entry);
    expect(entries).toHaveLength(1);
    expect(pulled).toBe(0);
  });

  it("gives an error for an over-long element and reads on", async () => {
    const big = { id: "big", text: "z".repeat(3000) };
    const text = JSON.stringify([{ id: 1 }, big, { id: 3 }]);
    const entries = await read(text, 50, 1000);
    expect(entries).toHaveLength(3);
    expect(entries[1]).toMatchObject({
      index: 1,
      error: `element 1 (line 1): ${JSON.stringify(big).length} bytes exceeds the 1000-byte element limit`,
    });
    expect(entries[2]).toMatchObject({ index: 2, value: { id: 3 } });
  });

  it("gives an error for a non-UTF-8 element only", async () => {
    const bytes = new Uint8Array([
      ...encoder.encode('["ok", "'),
      0xc3,
      0x28,
      ...encoder.encode('", "fine"]'),
    ]);
    const entries = await read(bytes, 1);
    expect(values(entries)).toEqual(["ok", { error: "element 1 (line 1): not valid UTF-8" }, "fine"]);
  });
});
