import { zodResponseFormat } from "openai/helpers/zod";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { fillSchema } from "../../functions/adapters/simulated/schema-fill.ts";

const Step = z.object({ manipulation: z.string(), description: z.string() });
const Candidate = z.object({
  question: z.string(),
  answer: z.string(),
  steps: z.array(Step).min(2).max(4),
  objects: z.array(z.string()),
  direction: z.enum(["perception", "reasoning", "interaction"]),
  caption: z.string().nullable(),
  imagePosition: z.union([z.literal("before"), z.literal("after")]),
  confidence: z.number().min(0).max(1),
  kind: z.literal("item"),
  extra: z.union([Step, z.null()]),
});
const Evolved = z.object({ items: z.array(Candidate).min(1).max(3), shared: Step, again: Step });
const Verdict = z.object({
  improved: z.boolean(),
  score: z.number().int().min(1).max(10),
  reason: z.string(),
});

const seeds = Array.from({ length: 40 }, (_, i) => `seed-${i}`);

describe("fillSchema", () => {
  it("fills z.toJSONSchema output (including $defs from reused schemas) so that zod parses it back", () => {
    for (const schema of [Evolved, Verdict]) {
      for (const json of [z.toJSONSchema(schema), z.toJSONSchema(schema, { reused: "ref" })]) {
        for (const seed of seeds) expect(() => schema.parse(fillSchema(json, seed))).not.toThrow();
      }
    }
    expect(JSON.stringify(z.toJSONSchema(Evolved, { reused: "ref" }))).toContain("$defs");
  });

  it("fills openai zodResponseFormat schemas (strict, draft-07)", () => {
    for (const [schema, name] of [
      [Evolved, "evolved"],
      [Verdict, "verdict"],
    ] as const) {
      const format = zodResponseFormat(schema, name);
      for (const seed of seeds) {
        const value = fillSchema(format.json_schema.schema, seed);
        expect(() => schema.parse(value)).not.toThrow();
      }
    }
  });

  it("ends recursive schemas and fills tuples and records", () => {
    type Node = { name: string; kids: Node[] };
    const Tree: z.ZodType<Node> = z.object({
      name: z.string(),
      get kids() {
        return z.array(Tree);
      },
    });
    const Other = z.object({
      box: z.tuple([z.number(), z.number(), z.number(), z.number()]),
      counts: z.record(z.string(), z.number().int().min(0).max(5)),
    });
    for (const seed of seeds) {
      expect(() => Tree.parse(fillSchema(z.toJSONSchema(Tree), seed))).not.toThrow();
      expect(() => Other.parse(fillSchema(z.toJSONSchema(Other), seed))).not.toThrow();
    }
  });

  it("fills record-like objects with required dynamic keys and a hand-written definitions $ref", () => {
    const schema = {
      type: "object",
      properties: {
        a: { $ref: "#/definitions/judged" },
        b: { $ref: "#/definitions/judged" },
      },
      required: ["a", "b"],
      additionalProperties: false,
      definitions: {
        judged: {
          type: "object",
          properties: {
            improved: { type: "boolean" },
            score: { type: ["integer", "null"], minimum: 1, maximum: 10 },
          },
          required: ["improved", "score"],
          additionalProperties: false,
        },
      },
    };
    const Judged = z.object({ improved: z.boolean(), score: z.number().int().min(1).max(10).nullable() });
    const Parsed = z.strictObject({ a: Judged, b: Judged });
    for (const seed of seeds) expect(() => Parsed.parse(fillSchema(schema, seed))).not.toThrow();
  });

  it("is deterministic per seed and varies across seeds", () => {
    const json = z.toJSONSchema(Evolved);
    expect(fillSchema(json, "x")).toEqual(fillSchema(json, "x"));
    const distinct = new Set(seeds.map((seed) => JSON.stringify(fillSchema(json, seed))));
    expect(distinct.size).toBe(seeds.length);
  });

  it("writes MMEvol-shaped values: questions, manipulations, scores, mostly improved", () => {
    const json = z.toJSONSchema(z.object({ items: z.array(Candidate), verdict: Verdict }));
    const many = Array.from({ length: 300 }, (_, i) =>
      z.object({ verdict: Verdict, items: z.array(Candidate) }).parse(fillSchema(json, `m${i}`)),
    );
    const first = many[0];
    expect(first?.items[0]?.question).toMatch(/\?$/);
    expect(first?.items[0]?.answer.split(" ").length).toBeGreaterThan(4);
    const manipulations = many.flatMap((v) =>
      v.items.flatMap((item) => item.steps.map((s) => s.manipulation)),
    );
    for (const m of manipulations) expect(m).toMatch(/^(None|[A-Za-z_]+\([a-z ]+\)->[a-z]+_\d)$/);
    expect(manipulations.some((m) => m.startsWith("Grounding("))).toBe(true);
    const scores = new Set(many.map((v) => v.verdict.score));
    expect(scores.size).toBe(10);
    const improvedShare = many.filter((v) => v.verdict.improved).length / many.length;
    expect(improvedShare).toBeGreaterThan(0.6);
    expect(improvedShare).toBeLessThan(0.8);
  });
});
