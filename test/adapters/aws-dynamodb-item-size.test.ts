import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createTable } from "../../functions/adapters/aws/create-table.ts";
import { DynamoStateStore } from "../../functions/adapters/aws/dynamodb-state-store.ts";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { RunConfig } from "../../functions/evolution/config.ts";
import { ingestShard } from "../../functions/pipeline/ingest.ts";
import { ensureDynamoLocal } from "../helpers/dynamodb-local.ts";
import { tempDir } from "../helpers/files.ts";
import { ingestOnlyDeps } from "../helpers/ingest.ts";
import { documentClient, dynamoClient, uniqueName } from "../helpers/moto.ts";

// AWS's DynamoDB Local: it enforces the 400 KB item limit, as DynamoDB does.
const { endpoint } = await ensureDynamoLocal();
const raw = dynamoClient(endpoint);

describe("the longest line a run accepts, in the deployed state store", () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it("fits one DynamoDB item even when nothing in it compresses; a longer one is rejected, and the rest goes on", async () => {
    const maxLineBytes = RunConfig.parse({}).maxLineBytes;
    const line = (i: number, filler: number) => {
      const record = (extra: string) =>
        JSON.stringify({
          id: `s-${i}`,
          image: "img.png",
          conversations: [
            { from: "human", value: `<image>\nQuestion ${i}?` },
            { from: "gpt", value: `Answer ${i}.` },
          ],
          // A field mmevol does not read is kept with the sample: random base64, which no compression shrinks.
          embedding: extra,
        });
      const base = Buffer.byteLength(record(""));
      return record(
        randomBytes(Math.ceil((filler - base) * 0.75))
          .toString("base64")
          .slice(0, filler - base),
      );
    };
    const longest = line(2, maxLineBytes);
    expect(Buffer.byteLength(longest)).toBe(maxLineBytes);
    mkdirSync(join(dir.path, "seeds/r"), { recursive: true });
    writeFileSync(
      join(dir.path, "seeds/r/shard.jsonl"),
      `${[line(1, 300), longest, line(3, maxLineBytes + 1), line(4, 300)].join("\n")}\n`,
    );
    const table = uniqueName("state");
    await createTable(raw, table);
    const state = new DynamoStateStore({ client: documentClient(raw), table });
    const deps = ingestOnlyDeps(new FsBlobStore(dir.path), state, { send: async () => {} });
    const message = { kind: "ingest" as const, run: "r", shard: "shard", key: "seeds/r/shard.jsonl" };
    await ingestShard({ message, attempt: 1 }, deps);
    expect(await state.getShard("r", "shard")).toMatchObject({ ingested: true, lines: 4 });
    const outcomes = new Map<number, string>();
    for await (const sample of state.listSamples("r", "shard"))
      outcomes.set(sample.line, sample.status === "REJECTED" ? String(sample.error) : sample.status);
    expect(outcomes.get(1)).toBe("INGESTED");
    expect(outcomes.get(2)).toBe("INGESTED");
    expect(outcomes.get(3)).toMatch(/^line 3: \d+ bytes exceeds the 262144-byte line limit/);
    expect(outcomes.get(4)).toBe("INGESTED");
  }, 120_000);
});
