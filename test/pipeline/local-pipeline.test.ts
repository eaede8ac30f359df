import { join } from "node:path";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import { runLocal } from "../../functions/runtime/local.ts";
import { countLines, demoShard, readJson, readJsonl, tempDir } from "../helpers/files.ts";
import { ReportCounts } from "../helpers/report.ts";

const LlavaOut = z.object({
  id: z.string(),
  image: z.union([z.string(), z.array(z.string())]).optional(),
  conversations: z.array(z.object({ from: z.enum(["human", "gpt"]), value: z.string().min(1) })).min(2),
  mmevol: z.object({ source: z.string(), round: z.number().int().nonnegative() }).loose(),
});

const ChatBody = z.object({
  model: z.string(),
  messages: z.array(
    z.object({
      role: z.string(),
      content: z.union([
        z.string(),
        z.array(
          z.union([
            z.object({ type: z.literal("text"), text: z.string() }),
            z.object({
              type: z.literal("image_url"),
              image_url: z.object({ url: z.string(), detail: z.string() }),
            }),
          ]),
        ),
      ]),
    }),
  ),
  response_format: z.object({
    type: z.literal("json_schema"),
    json_schema: z.object({
      name: z.string(),
      strict: z.literal(true),
      schema: z.record(z.string(), z.unknown()),
    }),
  }),
  max_tokens: z.number(),
  temperature: z.number(),
  seed: z.number(),
});

describe("local pipeline on the demo shard, through the real openai client and the simulator", () => {
  let sim: Simulator;
  const dir = tempDir();
  const out = join(dir.path, "out");
  let result: Awaited<ReturnType<typeof runLocal>>;
  const bodies: z.infer<typeof ChatBody>[] = [];

  beforeAll(async () => {
    sim = await startSimulator({ apiKey: "sk-test-not-a-real-key" });
    result = await runLocal({
      shards: [demoShard],
      out,
      run: "demo",
      concurrency: 4,
      config: { rounds: 3 },
      llm: new OpenAiLlm({ apiKey: "sk-test-not-a-real-key", baseURL: sim.url, maxRetries: 1 }),
    });
    for (const body of sim.lastRequests()) bodies.push(ChatBody.parse(body));
  });
  afterAll(async () => {
    await sim.close();
    dir.cleanup();
  });

  it("accounts for every input line and writes every output", () => {
    const report = readJson(join(out, "reports/demo/demo.json"));
    const counts = ReportCounts.parse(report.counts);
    expect(counts.lines).toBe(countLines(demoShard));
    expect(counts.evolved + counts.passedThrough + counts.failed + counts.rejected).toBe(counts.lines);
    expect(counts.addsUp).toBe(true);
    expect(counts.evolved).toBeGreaterThan(0);
    expect(counts.passedThrough).toBeGreaterThanOrEqual(1); // the text-only row
    expect(result.outputs).toHaveLength(5);
    expect(result.deadLetters).toBe(0);
  });

  it("writes valid LLaVA records with <image> in the first human turn and no duplicates", () => {
    const records = readJsonl(join(out, "evolved/demo/demo.jsonl")).map((r) => LlavaOut.parse(r));
    expect(records.length).toBeGreaterThan(0);
    expect(new Set(records.map((r) => r.id)).size).toBe(records.length);
    for (const record of records) {
      const turns = record.conversations;
      turns.forEach((turn, i) => expect(turn.from).toBe(i % 2 === 0 ? "human" : "gpt"));
      const imageTokens = turns.map((t) => (t.value.match(/<image>/g) ?? []).length);
      if (record.image !== undefined) {
        expect(turns[0]?.value.startsWith("<image>\n")).toBe(true);
        expect(imageTokens.slice(1).every((n) => n === 0)).toBe(true);
      } else {
        expect(imageTokens.every((n) => n === 0)).toBe(true);
      }
    }
    const evolved = records.filter((r) => r.mmevol.round > 0);
    expect(evolved.length).toBeGreaterThan(0);
    for (const r of evolved)
      expect(r.mmevol).toMatchObject({ direction: expect.any(String), scores: expect.any(Array) });
  });

  it("keeps a lineage with every version and each item's parent", () => {
    const lineage = readJsonl(join(out, "evolved/demo/demo.lineage.jsonl"));
    const done = lineage.filter((l) => l.status === "DONE");
    expect(done.length).toBeGreaterThan(0);
    for (const entry of done) {
      const versions = z
        .array(
          z.object({
            round: z.number(),
            items: z.array(z.object({ id: z.string(), parent: z.string().nullable() })),
          }),
        )
        .parse(entry.versions);
      expect(versions.map((v) => v.round)).toEqual([0, 1, 2, 3]);
      const rounds = z
        .array(
          z.object({
            round: z.number(),
            from: z.number(),
            candidates: z.array(z.object({ id: z.string() })),
            verdicts: z.array(z.object({ id: z.string() })),
          }),
        )
        .parse(entry.rounds);
      expect(rounds).toHaveLength(3);
      for (const round of rounds) {
        // One verdict per candidate, matched by id.
        expect(round.verdicts.map((v) => v.id).sort()).toEqual(round.candidates.map((c) => c.id).sort());
        // Each round evolves the latest earlier version that kept items.
        expect(round.from).toBeLessThan(round.round);
      }
      const ids = new Set(versions.flatMap((v) => v.items.map((i) => i.id)));
      for (const version of versions.slice(1)) {
        for (const item of version.items) if (item.parent !== null) expect(ids.has(item.parent)).toBe(true);
      }
    }
  });

  it("sends the image shrunk to 512 px at low detail, last, after an identical static prefix", async () => {
    const evolves = bodies.filter((b) => b.response_format.json_schema.name.startsWith("evolve_"));
    expect(evolves.length).toBeGreaterThan(0);
    const byDirection = new Map<string, Set<string>>();
    for (const body of evolves) {
      const [system, user] = body.messages;
      expect(system?.role).toBe("system");
      expect(typeof system?.content).toBe("string");
      const name = body.response_format.json_schema.name;
      byDirection.set(name, (byDirection.get(name) ?? new Set()).add(String(system?.content)));
      const parts = Array.isArray(user?.content) ? user.content : [];
      const last = parts.at(-1);
      expect(last?.type).toBe("image_url");
      if (last?.type !== "image_url") continue;
      expect(last.image_url.detail).toBe("low");
      expect(last.image_url.url.startsWith("data:image/jpeg;base64,")).toBe(true);
      const meta = await sharp(Buffer.from(last.image_url.url.split(",")[1] ?? "", "base64")).metadata();
      expect(meta.format).toBe("jpeg");
      expect(Math.max(meta.width ?? 0, meta.height ?? 0)).toBeLessThanOrEqual(512);
      // Sized from the answers seen, under METHOD.md's 4096 (the first calls of each direction go at 4096).
      expect(body.max_tokens).toBeLessThanOrEqual(4096);
      expect(body.max_tokens).toBeGreaterThanOrEqual(256);
      expect(body.temperature).toBe(1);
      expect(body.seed).toBe(3407);
    }
    for (const prompts of byDirection.values()) expect(prompts.size).toBe(1);
    for (const name of byDirection.keys()) {
      expect(evolves.find((b) => b.response_format.json_schema.name === name)?.max_tokens).toBe(4096);
    }
  });

  it("judges with text only, one required key per candidate", () => {
    const judges = bodies.filter((b) => b.response_format.json_schema.name === "judge");
    expect(judges.length).toBeGreaterThan(0);
    for (const body of judges) {
      expect(JSON.stringify(body.messages)).not.toContain("image_url");
      const schema = z
        .object({
          properties: z.object({
            verdicts: z.object({ required: z.array(z.string()), additionalProperties: z.literal(false) }),
          }),
        })
        .parse(body.response_format.json_schema.schema);
      expect(schema.properties.verdicts.required.length).toBeGreaterThan(0);
    }
    expect(
      sim
        .stats()
        .log.filter((e) => e.schemaName === "judge")
        .every((e) => !e.hasImage),
    ).toBe(true);
  });

  it("a dry run estimates exactly the tokens the real run was billed", async () => {
    const dry = tempDir();
    try {
      const dryRun = await runLocal({
        shards: [demoShard],
        out: join(dry.path, "out"),
        run: "demo",
        concurrency: 4,
        config: { rounds: 3, dryRun: true },
        llm: new SimulatedLlm(),
      });
      const real = readJson(join(out, "reports/demo/demo.json"));
      const estimate = readJson(join(dry.path, "out/reports/demo/demo.json"));
      expect(estimate.dryRun).toBe(true);
      expect(real.dryRun).toBe(false);
      const usage = z.object({ calls: z.number(), promptTokens: z.number(), completionTokens: z.number() });
      expect(usage.parse(estimate.usage)).toEqual(usage.parse(real.usage));
      expect(dryRun.reports[0]?.usage.costUsd).toBeGreaterThan(0);
      for (const record of readJsonl(join(dry.path, "out/evolved/demo/demo.jsonl"))) {
        expect(
          z
            .object({ mmevol: z.object({ dryRun: z.literal(true) }).loose() })
            .loose()
            .parse(record),
        ).toBeTruthy();
      }
    } finally {
      dry.cleanup();
    }
  });
});
