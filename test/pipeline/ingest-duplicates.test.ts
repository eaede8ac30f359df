import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import type { IdHash } from "../../functions/pipeline/id-index.ts";
import { ingestShard } from "../../functions/pipeline/ingest.ts";
import type { IngestMessage, Message, WorkQueue } from "../../functions/ports/messages.ts";
import { tempDir } from "../helpers/files.ts";
import { ingestOnlyDeps } from "../helpers/ingest.ts";

const record = (id: string | number, image: string | null, question = "What is it?") =>
  JSON.stringify({
    id,
    ...(image === null ? {} : { image }),
    conversations: [
      { from: "human", value: `<image>\n${question}` },
      { from: "gpt", value: "A thing." },
    ],
  });

/** Each line of the shard, and what ingest must make of it (null: a blank line, no record). */
const LINES: ReadonlyArray<readonly [line: string, outcome: RegExp | "INGESTED" | "PASSED_THROUGH" | null]> =
  [
    [record("a", "img/a.png"), "INGESTED"],
    [record("b", "img/b.png"), "INGESTED"],
    ["", null],
    // Rejected for their image, yet their ids count: later lines with them are duplicates of these.
    [record("c", "../c.png"), /^line 4: image: /],
    // Longer than the raw line a rejected record keeps, so its id cannot be read back from the store.
    [record("d", "/d.png", "x".repeat(3_000)), /^line 5: image: /],
    ["{broken", /^line 6: invalid JSON/],
    [record("a", "img/a2.png"), /^line 7: duplicate id "a" \(first at 1\)$/],
    [record("c", "img/c.png"), /^line 8: duplicate id "c" \(first at 4\)$/],
    [record("d", "img/d.png"), /^line 9: duplicate id "d" \(first at 5\)$/],
    [record("e", "img/e.png"), "INGESTED"],
    [record("e", "img/e.png"), /^line 11: duplicate id "e" \(first at 10\)$/],
    [record(12345, "img/n.png"), "INGESTED"],
    [record("12345", "img/n.png"), /^line 13: duplicate id "12345" \(first at 12\)$/],
    [record("f", null), "PASSED_THROUGH"],
    [record("b", "img/b.png"), /^line 15: duplicate id "b" \(first at 2\)$/],
    [record("f", null), /^line 16: duplicate id "f" \(first at 14\)$/],
    [record("g", "img/g.png"), "INGESTED"],
    // A duplicate of a duplicate still names the first line.
    [record("a", "img/a.png"), /^line 18: duplicate id "a" \(first at 1\)$/],
    [record("d", "img/d.png"), /^line 19: duplicate id "d" \(first at 5\)$/],
  ];

class CountingQueue implements WorkQueue {
  readonly sent: Message[] = [];
  async send(messages: readonly Message[]): Promise<void> {
    this.sent.push(...messages);
  }
}

describe("duplicate ids in a shard", () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());
  mkdirSync(join(dir.path, "seeds/dup"), { recursive: true });
  writeFileSync(join(dir.path, "seeds/dup/shard.jsonl"), `${LINES.map(([line]) => line).join("\n")}\n`);
  const blobs = new FsBlobStore(dir.path);

  async function ingest(options: { idHash?: IdHash; batchSize: number; continueEachBatch: boolean }) {
    const state = new SqliteStateStore(":memory:");
    const queue = new CountingQueue();
    const deps = {
      ...ingestOnlyDeps(blobs, state, queue),
      ingestBatchSize: options.batchSize,
      ...(options.continueEachBatch ? { remainingMs: () => 0 } : {}),
    };
    let message: IngestMessage | undefined = {
      kind: "ingest",
      run: "dup",
      shard: "shard",
      key: "seeds/dup/shard.jsonl",
    };
    let invocations = 0;
    while (message) {
      invocations += 1;
      const result = await ingestShard(
        { message, attempt: 1 },
        deps,
        options.idHash ? { idHash: options.idHash } : {},
      );
      const next = result.next.find((m) => m.kind === "ingest");
      message = next?.kind === "ingest" ? next : undefined;
    }
    const outcomes = new Map<number, string>();
    for await (const sample of state.listSamples("dup", "shard")) {
      outcomes.set(sample.line, sample.status === "REJECTED" ? String(sample.error) : sample.status);
    }
    state.close();
    return { outcomes, invocations, evolve: queue.sent.filter((m) => m.kind === "evolve").length };
  }

  const modes = {
    "a real hash, one invocation": { batchSize: 100, continueEachBatch: false },
    "every id hashing alike, one invocation": { idHash: () => 7, batchSize: 3, continueEachBatch: false },
    // Continuations read the lines before `from` again to rebuild the index: matches confirm against the store.
    "every id hashing alike, a continuation per batch": {
      idHash: () => 7,
      batchSize: 3,
      continueEachBatch: true,
    },
    "ids hashing by length, a continuation per 2 lines": {
      idHash: (id: string) => id.length,
      batchSize: 2,
      continueEachBatch: true,
    },
  } satisfies Record<string, { idHash?: IdHash; batchSize: number; continueEachBatch: boolean }>;

  for (const [name, mode] of Object.entries(modes)) {
    it(`rejects exactly the duplicates, naming the first line (${name})`, async () => {
      const { outcomes, invocations, evolve } = await ingest(mode);
      const expected = LINES.flatMap(([, outcome], i) =>
        outcome === null ? [] : [[i + 1, outcome] as const],
      );
      expect([...outcomes.keys()].sort((x, y) => x - y)).toEqual(expected.map(([line]) => line));
      for (const [line, outcome] of expected) {
        const got = outcomes.get(line);
        if (typeof outcome === "string") expect({ line, got }).toEqual({ line, got: outcome });
        else expect({ line, got }).toEqual({ line, got: expect.stringMatching(outcome) });
      }
      expect(evolve).toBe(expected.filter(([, outcome]) => outcome === "INGESTED").length);
      if (mode.continueEachBatch) expect(invocations).toBeGreaterThan(3);
    });
  }
});
