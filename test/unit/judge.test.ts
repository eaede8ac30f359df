import { describe, expect, it } from "vitest";
import { z } from "zod";
import {
  applyVerdicts,
  buildJudgeMessages,
  judgeAnswerSchema,
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
const ids = candidates.map((c) => c.id);

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

  it("includes each candidate id and the id and text of its parent", () => {
    const text = JSON.stringify(messages.map((m) => m.content));
    for (const c of candidates) expect(text).toContain(c.id);
    for (const p of previous) {
      expect(text).toContain(p.id);
      expect(text).toContain(p.question);
    }
    const user = String(messages[1]?.content);
    expect(user).toContain("s1-r2-i1 (rewritten from s1-r1-i1)");
    expect(user).toContain("s1-r2-i2 (rewritten from s1-r1-i2)");
    expect(user).toMatch(/s1-r2-i3 \(rewritten from none/);
    expect(user).toContain(candidates[1]?.question ?? "missing");
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
        "s1-r2-i1": verdict(true, 6, "a"),
        "s1-r2-i2": verdict(true, 7, "b"),
        "s1-r2-i3": verdict(false, 2, "c"),
      },
    });
    expect(result.success).toBe(true);
  });

  it("rejects an answer missing one id", () => {
    const result = schema.safeParse({
      verdicts: { "s1-r2-i1": verdict(true, 6, "a"), "s1-r2-i3": verdict(false, 2, "c") },
    });
    expect(result.success).toBe(false);
    expect(JSON.stringify(result.error?.issues)).toContain("s1-r2-i2");
  });

  it("rejects a malformed verdict and a score out of range", () => {
    const base = { "s1-r2-i1": verdict(true, 6, "a"), "s1-r2-i2": verdict(true, 7, "b") };
    expect(
      schema.safeParse({ verdicts: { ...base, "s1-r2-i3": { improved: "yes", score: 3, reason: "" } } })
        .success,
    ).toBe(false);
    expect(schema.safeParse({ verdicts: { ...base, "s1-r2-i3": verdict(true, 11, "x") } }).success).toBe(
      false,
    );
    expect(schema.safeParse({ verdicts: { ...base, "s1-r2-i3": verdict(true, -1, "x") } }).success).toBe(
      false,
    );
  });
});

describe("applyVerdicts", () => {
  const scores: Record<string, ReturnType<typeof verdict>> = {
    "s1-r2-i1": verdict(true, 6, "adds a second attribute"),
    "s1-r2-i2": verdict(false, 3, "same difficulty"),
    "s1-r2-i3": verdict(true, 8, "rare detail read from the image"),
  };

  // Every order of the verdict keys must give the same, id-matched result.
  const orders = [
    ["s1-r2-i1", "s1-r2-i2", "s1-r2-i3"],
    ["s1-r2-i3", "s1-r2-i2", "s1-r2-i1"],
    ["s1-r2-i2", "s1-r2-i3", "s1-r2-i1"],
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
        const expected = scores[v.id];
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
        "s1-r2-i1": verdict(true, 0, "answerable without the image"),
        "s1-r2-i2": verdict(true, 5, "ok"),
        "s1-r2-i3": verdict(false, 9, "judge said no"),
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
        verdicts: { "s1-r2-i1": verdict(true, 6, "a"), "s1-r2-i3": verdict(true, 6, "c") },
      }),
    ).toThrow(/s1-r2-i2/);
  });

  it("ignores verdicts for ids that are not candidates", () => {
    const answer = {
      verdicts: { ...scores, "s1-r2-i9": verdict(true, 10, "stray") },
    };
    const { kept, verdicts } = applyVerdicts(candidates, answer);
    expect(verdicts.map((v) => v.id).sort()).toEqual([...ids].sort());
    expect(kept.map((k) => k.id)).not.toContain("s1-r2-i9");
  });
});
