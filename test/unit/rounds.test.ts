import { describe, expect, it } from "vitest";
import type { EvolveAnswer } from "../../functions/evolution/prompts.ts";
import { candidatesFrom, itemId, latestNonEmpty, versionStats } from "../../functions/evolution/rounds.ts";
import type { Item, Version } from "../../functions/evolution/schemas.ts";

const item = (id: string, extra: Partial<Item> = {}): Item => ({
  id,
  parent: null,
  question: `Question ${id}?`,
  answer: `Answer ${id}.`,
  steps: [],
  objects: [],
  skills: [],
  format: "norm",
  imagePosition: "single",
  ...extra,
});

const version = (
  round: number,
  items: Item[],
  from: number | null = round === 0 ? null : round - 1,
): Version => ({
  round,
  direction: round === 0 ? null : "perception",
  from,
  items,
});

describe("latestNonEmpty", () => {
  const v0 = version(0, [item("s-r0-i1")]);
  const v1 = version(1, [item("s-r1-i1")]);
  const v2 = version(2, [item("s-r2-i1"), item("s-r2-i2")]);

  it("picks the latest version that has items", () => {
    expect(latestNonEmpty([v0])).toBe(v0);
    expect(latestNonEmpty([v0, v1])).toBe(v1);
    expect(latestNonEmpty([v0, v1, v2])).toBe(v2);
  });

  it("falls back past an empty round: round r+1 starts again from round r-1", () => {
    const v2empty = version(2, []);
    expect(latestNonEmpty([v0, v1, v2empty])).toBe(v1);
  });

  it("falls back past several empty rounds, down to the seed", () => {
    expect(latestNonEmpty([v0, version(1, []), version(2, [], 0)])).toBe(v0);
    expect(latestNonEmpty([v0, v1, version(2, []), version(3, [], 1)])).toBe(v1);
  });

  it("throws when a sample has no version at all", () => {
    expect(() => latestNonEmpty([])).toThrow();
  });
});

const written = (source: string | null, question: string, imagePosition = "single") => ({
  source,
  question,
  answer: `${question} answered`,
  steps: [{ manipulation: "None", description: "look" }],
  objects: ["mug"],
  skills: ["existence"],
  format: "norm",
  imagePosition,
});

describe("candidatesFrom", () => {
  const from = version(1, [
    item("s7-r1-i1", { imagePosition: "top-left" }),
    item("s7-r1-i2", { imagePosition: "bottom-right" }),
  ]);

  it("gives ids `${prefix}-r${round}-i${n}`, counting from 1", () => {
    expect(itemId("s7", 2, 0)).toBe("s7-r2-i1");
    const answer: EvolveAnswer = {
      items: [written("s7-r1-i1", "a"), written(null, "b"), written("s7-r1-i2", "c")],
    };
    const out = candidatesFrom(answer, from, "s7", 2, "reasoning");
    expect(out.map((c) => c.id)).toEqual(["s7-r2-i1", "s7-r2-i2", "s7-r2-i3"]);
    expect(out.map((c) => c.question)).toEqual(["a", "b", "c"]);
  });

  it("sets parent to the source only when it names an item of the version evolved from", () => {
    const answer: EvolveAnswer = {
      items: [
        written("s7-r1-i2", "known"),
        written("s7-r0-i1", "an id from an older version"),
        written("made-up", "unknown"),
        written(null, "new"),
      ],
    };
    const out = candidatesFrom(answer, from, "s7", 2, "perception");
    expect(out.map((c) => c.parent)).toEqual(["s7-r1-i2", null, null, null]);
  });

  it("drops `source` and carries every content field", () => {
    const [first] = candidatesFrom({ items: [written("s7-r1-i1", "q")] }, from, "s7", 2, "reasoning");
    expect(first).toEqual({
      id: "s7-r2-i1",
      parent: "s7-r1-i1",
      question: "q",
      answer: "q answered",
      steps: [{ manipulation: "None", description: "look" }],
      objects: ["mug"],
      skills: ["existence"],
      format: "norm",
      imagePosition: "single",
    });
    expect(first && "source" in first).toBe(false);
  });

  it("interaction keeps the parent's imagePosition, whatever the model wrote", () => {
    const answer: EvolveAnswer = {
      items: [written("s7-r1-i1", "a", "single"), written("s7-r1-i2", "b", "top-left")],
    };
    const out = candidatesFrom(answer, from, "s7", 2, "interaction");
    expect(out.map((c) => c.imagePosition)).toEqual(["top-left", "bottom-right"]);
  });

  it("other directions take the model's imagePosition; an empty one becomes single", () => {
    const answer: EvolveAnswer = {
      items: [written("s7-r1-i1", "a", "bottom-left"), written(null, "b", "")],
    };
    const out = candidatesFrom(answer, from, "s7", 2, "reasoning");
    expect(out.map((c) => c.imagePosition)).toEqual(["bottom-left", "single"]);
    const interactionNew = candidatesFrom(
      { items: [written(null, "c", "top-right")] },
      from,
      "s7",
      2,
      "interaction",
    );
    expect(interactionNew[0]?.imagePosition).toBe("top-right");
  });
});

describe("versionStats", () => {
  it("computes item count and mean skills, steps and score", () => {
    const stats = versionStats([
      item("a", { skills: ["grounding"], steps: [], score: 4 }),
      item("b", {
        skills: ["OCR", "calculating", "existence"],
        steps: [
          { manipulation: "None", description: "x" },
          { manipulation: "None", description: "y" },
          { manipulation: "None", description: "z" },
        ],
        score: 7,
      }),
      item("c", { skills: ["existence", "grounding"], steps: [{ manipulation: "None", description: "x" }] }),
    ]);
    expect(stats.items).toBe(3);
    expect(stats.meanSkills).toBeCloseTo(2, 10);
    expect(stats.meanSteps).toBeCloseTo(4 / 3, 10);
    // Only scored items count towards the mean score.
    expect(stats.meanScore).toBeCloseTo(5.5, 10);
  });

  it("gives a null score mean when nothing is scored (e.g. the seed) and zeros when empty", () => {
    expect(versionStats([item("a"), item("b", { score: null })]).meanScore).toBeNull();
    expect(versionStats([])).toEqual({ items: 0, meanSkills: 0, meanSteps: 0, meanScore: null });
  });

  it("counts a score of 0 as a score", () => {
    expect(versionStats([item("a", { score: 0 }), item("b", { score: 6 })]).meanScore).toBe(3);
  });
});
