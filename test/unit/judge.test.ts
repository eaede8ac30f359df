import { describe, expect, it } from "vitest";
import { z } from "zod";
import { fillSchema } from "../../functions/adapters/simulated/schema-fill.ts";
import { countTextTokens } from "../../functions/adapters/simulated/tokens.ts";
import {
  applyVerdicts,
  buildJudgeMessages,
  judgeAnswerSchema,
  judgeMaxTokens,
  judgeName,
  judgeSchema,
} from "../../functions/evolution/judge.ts";
import type { Item } from "../../functions/evolution/schemas.ts";

const item = (id: string, parent: string | null, question: string, answer: string): Item => ({
  id,
  parent,
  question,
  answer,
  steps: [{ manipulation: "Grounding(mug)->bbox_1", description: "find the mug" }],
  objects: ["mug"],
  skills: ["grounding"],
  format: "norm",
  imagePosition: "single",
});

const previous = [
  item("s1-r1-i1", "s1-r0-i1", "What colour is the mug?", "Red."),
  item("s1-r1-i2", "s1-r0-i2", "How many plates are there?", "Two."),
];
const candidates = [
  item(
    "s1-r2-i1",
    "s1-r1-i1",
    "What colour is the mug's handle, and why might it differ?",
    "White; a spare part.",
  ),
  item("s1-r2-i2", "s1-r1-i2", "Which plate holds more food? Let's think step by step.", "The left one..."),
  item("s1-r2-i3", null, "What is written on the napkin?", "Merci."),
];
/** What the judge calls the candidates: their ids without the sample's prefix. */
const ids = candidates.map((c) => judgeName(c.id));

describe("judgeName", () => {
  it("is an item's id without its sample's prefix, and leaves any other id as it is", () => {
    expect(judgeName("s1-r2-i1")).toBe("r2-i1");
    expect(judgeName("s123456-r0-i12")).toBe("r0-i12");
    expect(ids).toEqual(["r2-i1", "r2-i2", "r2-i3"]);
    for (const other of ["x-r1-i1", "s1-r2", "r2-i1", "s1-r2-i1-extra", "prefix-s1-r2-i1"])
      expect(judgeName(other)).toBe(other);
  });
});

describe("buildJudgeMessages", () => {
  const messages = buildJudgeMessages(previous, candidates);

  it("is text only: no image part anywhere", () => {
    for (const message of messages) {
      if (typeof message.content === "string") continue;
      for (const part of message.content) expect(part.type).toBe("text");
    }
    expect(JSON.stringify(messages)).not.toMatch(/image_url|data:image/);
  });

  it("puts the static criteria in the system message, identical across calls", () => {
    const other = buildJudgeMessages(candidates.slice(0, 1), [item("x-r1-i1", null, "Q?", "A.")]);
    expect(messages[0]?.role).toBe("system");
    expect(messages[0]?.content).toBe(other[0]?.content);
    expect(String(messages[0]?.content)).toMatch(/visual dependence/i);
  });

  it("names each candidate and its parent, with the parent's text, by ids without the sample's prefix", () => {
    const user = String(messages[1]?.content);
    for (const c of candidates) expect(user).toContain(judgeName(c.id));
    for (const p of previous) {
      expect(user).toContain(`${judgeName(p.id)}: `);
      expect(user).toContain(p.question);
    }
    expect(user).toContain("r2-i1 (rewritten from r1-i1)");
    expect(user).toContain("r2-i2 (rewritten from r1-i2)");
    expect(user).toMatch(/r2-i3 \(rewritten from none/);
    expect(user).toContain("Return one verdict for each of these ids: r2-i1, r2-i2, r2-i3.");
    expect(user).toContain(candidates[1]?.question ?? "missing");
    // The sample's prefix is nowhere: it would make every sample's call differ.
    expect(JSON.stringify(messages)).not.toMatch(/s1-r\d/);
  });

  it("gives two samples' calls with the same candidates one schema and one system message", () => {
    const renamed = (list: readonly Item[], line: number) =>
      list.map((i) => ({
        ...i,
        id: i.id.replace(/^s1-/, `s${line}-`),
        parent: i.parent?.replace(/^s1-/, `s${line}-`) ?? null,
      }));
    const a = renamed(candidates, 7);
    const b = renamed(candidates, 90_210);
    expect(JSON.stringify(judgeSchema(a.map((c) => judgeName(c.id))))).toBe(
      JSON.stringify(judgeSchema(b.map((c) => judgeName(c.id)))),
    );
    expect(buildJudgeMessages(renamed(previous, 7), a)[0]).toEqual(
      buildJudgeMessages(renamed(previous, 90_210), b)[0],
    );
  });

  it("has a static prefix (schema, then system message) over the 1,024 tokens a provider caches", () => {
    // OpenAI puts the response schema before the messages; it bills a shared prefix as cached from 1,024 tokens.
    const system = String(messages[0]?.content);
    const schema = JSON.stringify(judgeSchema(["r1-i1"]));
    expect(countTextTokens(schema) + countTextTokens(system)).toBeGreaterThanOrEqual(1_100);
    // With margin under a cruder count too (about 4 characters a token), as another server may count.
    expect((schema.length + system.length) / 4).toBeGreaterThanOrEqual(1_100);
  });
});

const StrictObject = z.object({
  type: z.literal("object"),
  additionalProperties: z.literal(false),
  required: z.array(z.string()),
});
const JudgeSchemaShape = StrictObject.extend({
  properties: z.object({
    verdicts: StrictObject.extend({ properties: z.record(z.string(), StrictObject) }),
  }),
});

describe("judgeMaxTokens", () => {
  it("grows with the candidates, within the run's cap", () => {
    expect(judgeMaxTokens(1, 2048)).toBe(260);
    expect(judgeMaxTokens(3, 2048)).toBe(580);
    expect(judgeMaxTokens(0, 2048)).toBe(260);
    expect(judgeMaxTokens(40, 2048)).toBe(2048);
    expect(judgeMaxTokens(3, 300)).toBe(300);
  });

  it("leaves room for whole answers: the simulator's longest of 300, for 1 to 8 candidates, fits", () => {
    for (let n = 1; n <= 8; n++) {
      const names = Array.from({ length: n }, (_, i) => `r2-i${i + 1}`);
      let longest = 0;
      for (let seed = 0; seed < 300; seed++) {
        const answer = JSON.stringify(fillSchema(judgeSchema(names), `judge-${n}-${seed}`));
        longest = Math.max(longest, countTextTokens(answer));
      }
      expect(longest, `${n} candidates`).toBeLessThan(judgeMaxTokens(n, 4096));
    }
  });
});

describe("judgeSchema", () => {
  it("requires exactly the candidate ids as verdict keys, strictly", () => {
    const schema = JudgeSchemaShape.parse(judgeSchema(ids));
    expect(schema.required).toEqual(["verdicts"]);
    const verdicts = schema.properties.verdicts;
    expect([...verdicts.required].sort()).toEqual([...ids].sort());
    expect(Object.keys(verdicts.properties).sort()).toEqual([...ids].sort());
    for (const id of ids) {
      expect([...(verdicts.properties[id]?.required ?? [])].sort()).toEqual(["improved", "reason", "score"]);
    }
  });

  it("the shape check fails for a schema that lets extra ids through", () => {
    const loose = judgeSchema(ids);
    const result = JudgeSchemaShape.safeParse({
      ...loose,
      properties: { verdicts: { type: "object", properties: {}, required: [], additionalProperties: true } },
    });
    expect(result.success).toBe(false);
  });
});

const verdict = (improved: boolean, score: number, reason: string) => ({ improved, score, reason });

describe("judgeAnswerSchema", () => {
  const schema = judgeAnswerSchema(ids);

  it("accepts an answer with a verdict for every id", () => {
    const result = schema.safeParse({
      verdicts: {
        "r2-i1": verdict(true, 6, "a"),
        "r2-i2": verdict(true, 7, "b"),
        "r2-i3": verdict(false, 2, "c"),
      },
    });
    expect(result.success).toBe(true);
  });

  it("rejects an answer missing one id", () => {
    const result = schema.safeParse({
      verdicts: { "r2-i1": verdict(true, 6, "a"), "r2-i3": verdict(false, 2, "c") },
    });
    expect(result.success).toBe(false);
    expect(JSON.stringify(result.error?.issues)).toContain("r2-i2");
  });

  it("rejects a malformed verdict and a score out of range", () => {
    const base = { "r2-i1": verdict(true, 6, "a"), "r2-i2": verdict(true, 7, "b") };
    expect(
      schema.safeParse({ verdicts: { ...base, "r2-i3": { improved: "yes", score: 3, reason: "" } } }).success,
    ).toBe(false);
    expect(schema.safeParse({ verdicts: { ...base, "r2-i3": verdict(true, 11, "x") } }).success).toBe(false);
    expect(schema.safeParse({ verdicts: { ...base, "r2-i3": verdict(true, -1, "x") } }).success).toBe(false);
  });
});

describe("applyVerdicts", () => {
  // Keyed as the judge answers: by the names it was given.
  const scores: Record<string, ReturnType<typeof verdict>> = {
    "r2-i1": verdict(true, 6, "adds a second attribute"),
    "r2-i2": verdict(false, 3, "same difficulty"),
    "r2-i3": verdict(true, 8, "rare detail read from the image"),
  };

  // Every order of the verdict keys must give the same, id-matched result.
  const orders = [
    ["r2-i1", "r2-i2", "r2-i3"],
    ["r2-i3", "r2-i2", "r2-i1"],
    ["r2-i2", "r2-i3", "r2-i1"],
  ];

  for (const order of orders) {
    it(`matches verdicts by id, whatever the key order (${order.join(", ")})`, () => {
      const answer = judgeAnswerSchema(ids).parse({
        verdicts: Object.fromEntries(order.map((id) => [id, scores[id]])),
      });
      const { kept, verdicts } = applyVerdicts(candidates, answer);
      expect(kept.map((k) => k.id)).toEqual(["s1-r2-i1", "s1-r2-i3"]);
      expect(kept[0]).toEqual({ ...candidates[0], score: 6, reason: "adds a second attribute" });
      expect(kept[1]).toEqual({ ...candidates[2], score: 8, reason: "rare detail read from the image" });
      expect(verdicts).toHaveLength(3);
      for (const v of verdicts) {
        // Recorded under the item's own id, from the verdict for its name.
        expect(ids).not.toContain(v.id);
        const expected = scores[judgeName(v.id)];
        expect(v.score).toBe(expected?.score);
        expect(v.reason).toBe(expected?.reason);
        expect(v.improved).toBe(expected?.improved);
        expect(v.by).toBe("judge");
        expect(v.parent).toBe(candidates.find((c) => c.id === v.id)?.parent);
      }
    });
  }

  it("forces a score-0 item to not improved and does not keep it", () => {
    const answer = judgeAnswerSchema(ids).parse({
      verdicts: {
        "r2-i1": verdict(true, 0, "answerable without the image"),
        "r2-i2": verdict(true, 5, "ok"),
        "r2-i3": verdict(false, 9, "judge said no"),
      },
    });
    const { kept, verdicts } = applyVerdicts(candidates, answer);
    expect(kept.map((k) => k.id)).toEqual(["s1-r2-i2"]);
    expect(verdicts.find((v) => v.id === "s1-r2-i1")).toMatchObject({ improved: false, score: 0 });
    expect(verdicts.find((v) => v.id === "s1-r2-i3")).toMatchObject({ improved: false, score: 9 });
  });

  it("treats a missing verdict as a failed judgement (throws), not a silent drop", () => {
    expect(() =>
      applyVerdicts(candidates, {
        verdicts: { "r2-i1": verdict(true, 6, "a"), "r2-i3": verdict(true, 6, "c") },
      }),
    ).toThrow(/s1-r2-i2/);
    // A verdict under the full id is not the judge's answer for that name: still missing.
    expect(() =>
      applyVerdicts(candidates, {
        verdicts: { ...scores, "r2-i2": undefined, "s1-r2-i2": verdict(true, 6, "b") } as never,
      }),
    ).toThrow(/no verdict for s1-r2-i2/);
  });

  it("ignores verdicts for ids that are not candidates", () => {
    const answer = {
      verdicts: { ...scores, "r2-i9": verdict(true, 10, "stray") },
    };
    const { kept, verdicts } = applyVerdicts(candidates, answer);
    expect(verdicts.map((v) => v.id).sort()).toEqual(candidates.map((c) => c.id).sort());
    expect(kept.map((k) => k.id)).not.toContain("s1-r2-i9");
  });
});
