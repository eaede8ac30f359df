import { describe, expect, it } from "vitest";
import { z } from "zod";
import { countTextTokens } from "../../functions/adapters/simulated/tokens.ts";
import {
  ATOMIC_SKILLS,
  buildEvolveMessages,
  EVOLVE_SCHEMA,
  EvolveAnswer,
  evolveSampleText,
  evolveSystemPrompt,
  formatBoxes,
  INTERACTIVE_FORMATS,
} from "../../functions/evolution/prompts.ts";
import { type Box, DIRECTIONS, type Item } from "../../functions/evolution/schemas.ts";
import type { ContentPart } from "../../functions/ports/llm.ts";

const item = (id: string, question: string, answer: string, extra: Partial<Item> = {}): Item => ({
  id,
  parent: null,
  question,
  answer,
  steps: [],
  objects: [],
  skills: [],
  format: "norm",
  imagePosition: "single",
  ...extra,
});

const mugBoxes: Box[] = [
  { label: "mug", bbox: [0.1, 0.2, 0.30049, 0.4] },
  { label: "plate", bbox: [0.5, 0.55551, 0.9, 1] },
];

const sampleA = {
  caption: "A red mug stands next to a plate on a wooden table.",
  boxes: mugBoxes,
  items: [item("s1-r0-i1", "What colour is the mug?", "Red.")],
};
const sampleB = {
  caption: null,
  boxes: [],
  items: [
    item("s2-r0-i1", "What animal is shown?", "A dog.", {
      steps: [{ manipulation: "Grounding(dog)->bbox_1", description: "find it" }],
    }),
  ],
};

const IMG = "data:image/jpeg;base64,/9j/AAAA";

function userParts(
  direction: (typeof DIRECTIONS)[number],
  images: readonly { dataUrl: string; detail: "low" | "high" | "auto" }[] = [{ dataUrl: IMG, detail: "low" }],
) {
  const messages = buildEvolveMessages(direction, sampleA, images);
  const user = messages.find((m) => m.role === "user");
  if (!user || typeof user.content === "string") throw new Error("user message must be a list of parts");
  return { messages, parts: user.content };
}

const textOfParts = (parts: readonly ContentPart[]): string =>
  parts.flatMap((p) => (p.type === "text" ? [p.text] : [])).join("\n");

describe("evolveSystemPrompt: the static part", () => {
  for (const direction of DIRECTIONS) {
    describe(direction, () => {
      const prompt = evolveSystemPrompt(direction);

      it("states the role of a visual assistant writing questions, answers and steps", () => {
        expect(prompt).toMatch(/visual assistant/i);
        expect(prompt).toMatch(/question/i);
        expect(prompt).toMatch(/answer/i);
        expect(prompt).toMatch(/steps/i);
      });

      it("names all 9 atomic skills", () => {
        const all = [...ATOMIC_SKILLS.vision, ...ATOMIC_SKILLS.language];
        expect(all).toHaveLength(9);
        for (const skill of [
          "grounding",
          "referencing",
          "calculating",
          "OCR",
          "existence",
          "relationship description",
          "context understanding",
          "behaviour prediction",
          "knowledge integration",
        ]) {
          expect(prompt).toContain(skill);
        }
      });

      it("names the 4 manipulations and allows new ones", () => {
        expect(prompt).toContain("Grounding(target)->bbox");
        expect(prompt).toContain("Referring(bbox");
        expect(prompt).toContain("Calculate(expression)->result");
        expect(prompt).toContain("OCR(region)->text");
        expect(prompt).toMatch(/invent a new manipulation/i);
      });

      it("describes every field of the item schema", () => {
        for (const field of [
          "source",
          "question",
          "answer",
          "steps",
          "manipulation",
          "description",
          "objects",
          "skills",
          "format",
          "imagePosition",
        ]) {
          expect(prompt).toContain(`"${field}"`);
        }
      });

      it("carries worked examples", () => {
        expect(prompt).toMatch(/worked examples/i);
        // Each example is a JSON item written out in full.
        expect(prompt.match(/"question":/g)?.length ?? 0).toBeGreaterThanOrEqual(3);
      });

      it("carries the shared rules: check caption/boxes, given coordinates only, no scaffolding", () => {
        expect(prompt).toMatch(/may contain mistakes|may contain errors/i);
        expect(prompt).toMatch(/never invent coordinates/i);
        expect(prompt).toMatch(/no localisation and no counting questions/i);
        expect(prompt).toContain("Given Q&A");
      });

      it("is long enough for provider prefix caching (>= 1024 tokens)", () => {
        expect(countTextTokens(prompt)).toBeGreaterThanOrEqual(1024);
      });
    });
  }

  it("perception asks for rarer objects in the long tail", () => {
    const prompt = evolveSystemPrompt("perception");
    expect(prompt).toMatch(/fine-grained perception/i);
    expect(prompt).toMatch(/rarer/i);
    expect(prompt).toMatch(/long tail/i);
  });

  it("reasoning asks for a step-by-step cue and one or two new objects or skills", () => {
    const prompt = evolveSystemPrompt("reasoning");
    expect(prompt).toMatch(/cognitive reasoning/i);
    expect(prompt).toContain("Let's think step by step");
    expect(prompt).toMatch(/one or two new object categories or atomic skills/i);
  });

  it("interaction lists all 17 interactive formats and the multiple-choice fallback", () => {
    const prompt = evolveSystemPrompt("interaction");
    expect(INTERACTIVE_FORMATS).toHaveLength(17);
    for (const format of INTERACTIVE_FORMATS) expect(prompt).toContain(`- ${format}`);
    expect(prompt).toMatch(/multiple choice is the fallback/i);
    expect(prompt).toMatch(/keep "imagePosition"/i);
  });

  it("only the interaction prompt lists the interactive formats as a task", () => {
    expect(evolveSystemPrompt("perception")).not.toContain("- coreference resolution");
    expect(evolveSystemPrompt("reasoning")).not.toContain("- coreference resolution");
  });

  it("is byte-identical across samples for one direction and differs between directions", () => {
    for (const direction of DIRECTIONS) {
      const a = buildEvolveMessages(direction, sampleA, [{ dataUrl: IMG, detail: "low" }]);
      const b = buildEvolveMessages(direction, sampleB, [{ dataUrl: `${IMG}BBBB`, detail: "high" }]);
      expect(a[0]?.role).toBe("system");
      expect(a[0]?.content).toBe(b[0]?.content);
      expect(a[0]?.content).toBe(evolveSystemPrompt(direction));
      // The sample's own data never leaks into the static part.
      expect(String(a[0]?.content)).not.toContain("red mug stands");
    }
    const prompts = new Set(DIRECTIONS.map((d) => evolveSystemPrompt(d)));
    expect(prompts.size).toBe(3);
  });
});

describe("buildEvolveMessages: the sample's part", () => {
  it("sends the system prompt first, then one user message", () => {
    const { messages } = userParts("reasoning");
    expect(messages.map((m) => m.role)).toEqual(["system", "user"]);
  });

  it("puts caption, then boxes, then current items, in that order", () => {
    const { parts } = userParts("perception");
    const text = textOfParts(parts);
    const caption = text.indexOf("A red mug stands next to a plate");
    const boxes = text.indexOf("mug: [0.100, 0.200, 0.300, 0.400]");
    const items = text.indexOf("What colour is the mug?");
    expect(caption).toBeGreaterThanOrEqual(0);
    expect(boxes).toBeGreaterThan(caption);
    expect(items).toBeGreaterThan(boxes);
  });

  it("formats boxes one per line as `label: [x1, y1, x2, y2]` with 3 decimals", () => {
    expect(formatBoxes(mugBoxes)).toBe(
      "mug: [0.100, 0.200, 0.300, 0.400]\nplate: [0.500, 0.556, 0.900, 1.000]",
    );
    const text = evolveSampleText(sampleA);
    expect(text).toContain("mug: [0.100, 0.200, 0.300, 0.400]\nplate: [0.500, 0.556, 0.900, 1.000]");
  });

  it("includes every field of the current items, with their ids", () => {
    const text = evolveSampleText(sampleB);
    const line = text.split("\n").find((l) => l.includes("s2-r0-i1"));
    expect(line).toBeDefined();
    const parsed: unknown = JSON.parse(line ?? "null");
    expect(parsed).toEqual({
      id: "s2-r0-i1",
      question: "What animal is shown?",
      answer: "A dog.",
      steps: [{ manipulation: "Grounding(dog)->bbox_1", description: "find it" }],
      objects: [],
      skills: [],
      format: "norm",
      imagePosition: "single",
    });
  });

  it("with no boxes, tells the model to ask no localisation or counting questions", () => {
    const text = evolveSampleText(sampleB);
    expect(text).toMatch(/ask no localisation or counting questions/i);
    expect(evolveSampleText(sampleA)).not.toMatch(/ask no localisation or counting questions/i);
  });

  it("puts the image part(s) last, with the detail given", () => {
    const { parts } = userParts("interaction", [
      { dataUrl: `${IMG}1`, detail: "low" },
      { dataUrl: `${IMG}2`, detail: "high" },
    ]);
    expect(parts.length).toBe(3);
    expect(parts[0]?.type).toBe("text");
    expect(parts.slice(1)).toEqual([
      { type: "image_url", imageUrl: `${IMG}1`, detail: "low" },
      { type: "image_url", imageUrl: `${IMG}2`, detail: "high" },
    ]);
    const lastText = parts.map((p) => p.type).lastIndexOf("text");
    const firstImage = parts.map((p) => p.type).indexOf("image_url");
    expect(lastText).toBeLessThan(firstImage);
  });

  it("sends the detail through unchanged (auto)", () => {
    const { parts } = userParts("perception", [{ dataUrl: IMG, detail: "auto" }]);
    const last = parts.at(-1);
    expect(last).toEqual({ type: "image_url", imageUrl: IMG, detail: "auto" });
  });
});

/** Every object node must list all its properties as required and forbid others (OpenAI strict mode). */
function strictProblems(node: unknown, path = "$"): string[] {
  if (Array.isArray(node)) return node.flatMap((child, i) => strictProblems(child, `${path}[${i}]`));
  if (node === null || typeof node !== "object") return [];
  const record = new Map<string, unknown>(Object.entries(node));
  const problems: string[] = [];
  const type = record.get("type");
  const isObject = type === "object" || (Array.isArray(type) && type.includes("object"));
  if (isObject) {
    if (record.get("additionalProperties") !== false)
      problems.push(`${path}: additionalProperties is not false`);
    const props = record.get("properties");
    const required = record.get("required");
    if (props === null || typeof props !== "object") problems.push(`${path}: no properties`);
    else {
      for (const key of Object.keys(props)) {
        if (!Array.isArray(required) || !required.includes(key)) {
          problems.push(`${path}: property ${key} is not required`);
        }
      }
    }
  }
  for (const [key, value] of record) problems.push(...strictProblems(value, `${path}.${key}`));
  return problems;
}

describe("EVOLVE_SCHEMA and EvolveAnswer", () => {
  it("the checker itself finds a non-strict schema", () => {
    expect(
      strictProblems({
        type: "object",
        properties: { a: { type: "object", properties: { b: { type: "string" } }, required: [] } },
        required: ["a"],
        additionalProperties: false,
      }),
    ).toEqual([
      "$.properties.a: additionalProperties is not false",
      "$.properties.a: property b is not required",
    ]);
  });

  it("is strict: every object forbids extra properties and requires all of its properties", () => {
    expect(strictProblems(EVOLVE_SCHEMA)).toEqual([]);
  });

  it("covers every item field", () => {
    const shape = z.object({
      properties: z.object({ items: z.object({ items: z.object({ required: z.array(z.string()) }) }) }),
    });
    const items = shape.parse(EVOLVE_SCHEMA).properties.items.items;
    expect([...items.required].sort()).toEqual(
      ["answer", "format", "imagePosition", "objects", "question", "skills", "source", "steps"].sort(),
    );
  });

  const good = {
    source: null,
    question: "What is on the jar?",
    answer: "Wild Honey.",
    steps: [{ manipulation: "OCR(jar)->text", description: "read it" }],
    objects: ["jar"],
    skills: ["OCR"],
    format: "norm",
    imagePosition: "single",
  };

  it("accepts a well-formed answer", () => {
    expect(EvolveAnswer.safeParse({ items: [good] }).success).toBe(true);
    expect(EvolveAnswer.safeParse({ items: [{ ...good, source: "s1-r0-i1" }] }).success).toBe(true);
  });

  it("rejects an empty item list", () => {
    expect(EvolveAnswer.safeParse({ items: [] }).success).toBe(false);
  });

  it("rejects items with a missing field", () => {
    for (const field of Object.keys(good)) {
      const { [field as keyof typeof good]: _dropped, ...rest } = good;
      expect(EvolveAnswer.safeParse({ items: [rest] }).success, `without ${field}`).toBe(false);
    }
  });

  it("rejects a step without its description", () => {
    expect(EvolveAnswer.safeParse({ items: [{ ...good, steps: [{ manipulation: "None" }] }] }).success).toBe(
      false,
    );
  });
});
