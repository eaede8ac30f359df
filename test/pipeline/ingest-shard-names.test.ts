import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { ingestShard } from "../../functions/pipeline/ingest.ts";
import { parseSeedKey } from "../../functions/pipeline/shard-config.ts";
import { tempDir } from "../helpers/files.ts";
import { ingestOnlyDeps } from "../helpers/ingest.ts";

const record = (id: string) =>
  JSON.stringify({
    id,
    image: "img.png",
    conversations: [
      { from: "human", value: "<image>\nWhat is it?" },
      { from: "gpt", value: "A thing." },
    ],
  });

describe("seed files in the bucket whose names make one shard name", () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it("x.json next to x.jsonl: each file is its own shard, and every line of both is counted", async () => {
    mkdirSync(join(dir.path, "seeds/r"), { recursive: true });
    writeFileSync(join(dir.path, "seeds/r/x.json"), `[${record("a")},${record("b")}]`);
    writeFileSync(
      join(dir.path, "seeds/r/x.jsonl"),
      `${[record("c"), record("d"), record("e")].join("\n")}\n`,
    );
    const state = new SqliteStateStore(":memory:");
    const deps = ingestOnlyDeps(new FsBlobStore(dir.path), state, { send: async () => {} });
    const ingest = async (key: string, etag: string) => {
      const names = parseSeedKey(key);
      if (names === null) throw new Error(`not a seed key: ${key}`);
      return ingestShard({ message: { kind: "ingest", ...names, key, etag }, attempt: 1 }, deps);
    };
    expect((await ingest("seeds/r/x.json", "one")).outcome).not.toBe("already ingested");
    expect((await ingest("seeds/r/x.jsonl", "two")).outcome).not.toBe("already ingested");
    // The same event again (redelivered) finds its own shard.
    expect((await ingest("seeds/r/x.jsonl", "two")).outcome).toBe("already ingested");
    const shards = await state.listShards("r");
    expect(shards.map((s) => [s.shard, s.key, s.lines]).sort()).toEqual([
      ["x", "seeds/r/x.json", 2],
      [expect.stringMatching(/^x\.[0-9a-f]{8}$/), "seeds/r/x.jsonl", 3],
    ]);
    state.close();
  });
});
