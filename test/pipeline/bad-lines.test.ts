import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { readJson, readJsonl, repoRoot, tempDir } from "../helpers/files.ts";
import { ReportCounts } from "../helpers/report.ts";

const good = (id: string) =>
  JSON.stringify({
    id,
    image: "images/kitchen.png",
    conversations: [
      { from: "human", value: "<image>\nWhat colour is the mug?" },
      { from: "gpt", value: "Red." },
    ],
  });

describe("a shard with bad lines", () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it("rejects each bad line with its line number and reason, and evolves the rest", async () => {
    mkdirSync(join(dir.path, "images"));
    copyFileSync(join(repoRoot, "examples/seeds/images/kitchen.png"), join(dir.path, "images/kitchen.png"));
    const lines = [
      good("ok-1"),
      "{not json",
      JSON.stringify({ id: "no-conv", image: "images/kitchen.png" }),
      good("ok-2"),
      JSON.stringify({
        id: "escape",
        image: "../../etc/passwd",
        conversations: [
          { from: "human", value: "q" },
          { from: "gpt", value: "a" },
        ],
      }),
      JSON.stringify({
        id: "url",
        image: "http://169.254.169.254/latest/meta-data",
        conversations: [
          { from: "human", value: "q" },
          { from: "gpt", value: "a" },
        ],
      }),
      good("ok-1"),
      "",
      JSON.stringify({
        id: "order",
        image: "images/kitchen.png",
        conversations: [
          { from: "gpt", value: "a" },
          { from: "human", value: "q" },
        ],
      }),
      good("ok-3"),
      JSON.stringify({
        id: "gone",
        image: "images/missing.png",
        conversations: [
          { from: "human", value: "q" },
          { from: "gpt", value: "a" },
        ],
      }),
    ];
    const shard = join(dir.path, "bad.jsonl");
    writeFileSync(shard, `${lines.join("\n")}\n`);
    const out = join(dir.path, "out");
    await runLocal({
      shards: [shard],
      out,
      run: "r",
      concurrency: 3,
      config: { rounds: 2, dryRun: true },
      llm: new SimulatedLlm(),
    });

    const errors = readJsonl(join(out, "errors/r/bad.jsonl"));
    const rejected = errors.filter((e) => e.kind === "rejected");
    expect(rejected.map((e) => e.line)).toEqual([2, 3, 5, 6, 7, 9]);
    const reasons = rejected.map((e) => String(e.reason));
    expect(reasons[0]).toMatch(/^line 2: invalid JSON/);
    expect(reasons[1]).toMatch(/^line 3: conversations/);
    expect(reasons[2]).toMatch(/^line 5: image: .*\.\./);
    expect(reasons[3]).toMatch(/^line 6: image: .*(URL|scheme)/i);
    expect(reasons[4]).toMatch(/^line 7: duplicate id "ok-1" \(first at 1\)/);
    expect(reasons[5]).toMatch(/^line 9: conversations/);
    const passed = errors.filter((e) => e.kind === "passed_through");
    expect(passed.map((e) => e.line)).toEqual([11]);
    // Named where the user put it (the shard's directory here), not by the run's internal key (images/images/…).
    expect(String(passed[0]?.reason)).toBe(
      `image unusable: image not found: ${join(dir.path, "images/missing.png")}`,
    );

    const report = readJson(join(out, "reports/r/bad.json"));
    const counts = ReportCounts.parse(report.counts);
    expect(counts).toMatchObject({ lines: 10, rejected: 6, addsUp: true });
    expect(counts.evolved + counts.passedThrough).toBe(4);
    const lineage = readJsonl(join(out, "evolved/r/bad.lineage.jsonl"));
    const byId = new Map(lineage.map((l) => [String(l.id), l]));
    expect([...byId.keys()].sort()).toEqual(["gone", "ok-1", "ok-2", "ok-3"]);
    expect(byId.get("gone")?.status).toBe("PASSED_THROUGH");
    // The good lines went through both rounds; each is DONE unless the judge kept none of its rewrites (the
    // simulator's verdicts follow the prompts), when it passes through unchanged.
    for (const id of ["ok-1", "ok-2", "ok-3"]) {
      const record = z
        .object({ status: z.string(), rounds: z.array(z.object({ kept: z.number() })) })
        .parse(byId.get(id));
      expect(record.rounds).toHaveLength(2);
      const kept = record.rounds.some((r) => r.kept > 0);
      expect(record.status).toBe(kept ? "DONE" : "PASSED_THROUGH");
    }
    expect(counts.passedThrough).toBe(
      1 + ["ok-1", "ok-2", "ok-3"].filter((id) => byId.get(id)?.status === "PASSED_THROUGH").length,
    );
  });
});
