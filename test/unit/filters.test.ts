import { describe, expect, it } from "vitest";
import { ruleFailure } from "../../functions/evolution/filters.ts";
import type { Box, Item } from "../../functions/evolution/schemas.ts";

const item = (question: string, answer: string, extra: Partial<Item> = {}): Item => ({
  id: "s1-r1-i1",
  parent: "s1-r0-i1",
  question,
  answer,
  steps: [],
  objects: [],
  skills: [],
  format: "norm",
  imagePosition: "single",
  ...extra,
});

const parent = item("What colour is the mug?", "Red.", { id: "s1-r0-i1", parent: null });
const boxes: Box[] = [
  { label: "mug", bbox: [0.12345, 0.2, 0.3, 0.4] },
  { label: "plate", bbox: [0.5, 0.55551, 0.9, 1] },
];

const good = item(
  "What is printed on the mug at [0.123, 0.200, 0.300, 0.400], and what does it suggest about its owner?",
  "The mug reads 'World's Best Dad', so it probably belongs to a father.",
  {
    steps: [
      { manipulation: "Referring([0.123, 0.200, 0.300, 0.400])->mug", description: "Zoom into the mug." },
      { manipulation: "OCR(mug)->World's Best Dad", description: "Read the print." },
    ],
  },
);

describe("ruleFailure", () => {
  it("passes a good item", () => {
    expect(ruleFailure(good, parent, boxes)).toBeNull();
    expect(ruleFailure(item("What is on the shelf?", "Three books."), null, [])).toBeNull();
  });

  it("catches an empty or blank question", () => {
    expect(ruleFailure(item("", "Red."), parent, boxes)).toMatch(/empty question/);
    expect(ruleFailure(item("  \n\t ", "Red."), parent, boxes)).toMatch(/empty question/);
  });

  it("catches an empty or blank answer", () => {
    expect(ruleFailure(item("What is this?", ""), parent, boxes)).toMatch(/empty answer/);
    expect(ruleFailure(item("What is this?", "   "), parent, boxes)).toMatch(/empty answer/);
  });

  it("catches an answer that copies the question, whatever the case and spacing", () => {
    expect(ruleFailure(item("What is on the table?", "What is on the table?"), parent, boxes)).toMatch(
      /copies/,
    );
    expect(ruleFailure(item("What is on the table?", "  what IS on\nthe   table? "), parent, boxes)).toMatch(
      /copies/,
    );
  });

  it("catches refusals", () => {
    for (const answer of [
      "I'm sorry, I can't help with that.",
      "I am sorry, but I cannot see the image.",
      "As an AI, I have no eyes.",
      "as an AI language model I cannot answer.",
      "I can't see the image you are referring to.",
      "Im sorry, that is not possible.",
    ]) {
      expect(ruleFailure(item("What is on the table?", answer), parent, boxes), answer).toBe("refusal");
    }
  });

  // BUG (reported): REFUSAL only knows the ASCII apostrophe, but models often write U+2019 (I’m, can’t).
  it("catches refusals written with a typographic apostrophe (U+2019)", () => {
    expect(
      ruleFailure(item("What is on the table?", "I\u2019m sorry, I can\u2019t help."), parent, boxes),
    ).toBe("refusal");
  });

  it("catches a refusal written into the question", () => {
    expect(ruleFailure(item("I'm sorry, I can't write a question.", "None."), parent, boxes)).toBe("refusal");
  });

  it("does not take 'sorry' inside an ordinary answer for a refusal", () => {
    expect(
      ruleFailure(item("What does the card say?", "It says 'Sorry for your loss'."), parent, boxes),
    ).toBeNull();
  });

  it("catches leaked prompt scaffolding in question, answer or steps", () => {
    const leaks: Item[] = [
      item("Given Q&A: what is red?", "The mug."),
      item("What is red?", "Rewritten Q&A: the mug."),
      item("<image>\nWhat is red?", "The mug."),
      item("What is red?", "The mug.", {
        steps: [{ manipulation: "None", description: "As the given q&a says, the mug." }],
      }),
      item("What is red?", "The mug.", {
        steps: [{ manipulation: "Look(<image>)->mug", description: "look" }],
      }),
    ];
    for (const leak of leaks) {
      expect(ruleFailure(leak, parent, boxes), JSON.stringify(leak)).toBe("leaked prompt scaffolding");
    }
  });

  it("catches coordinates that are not among the given boxes", () => {
    const invented = item("What is at [0.600, 0.100, 0.700, 0.300]?", "A lamp.");
    expect(ruleFailure(invented, parent, boxes)).toMatch(/not among the given boxes/);
    // One number off by more than rounding.
    const nearlyMug = item("What is at [0.123, 0.200, 0.300, 0.410]?", "A mug.");
    expect(ruleFailure(nearlyMug, parent, boxes)).toMatch(/not among the given boxes/);
    // Invented coordinates hidden in a step.
    const inStep = item("Where is the lamp?", "Top right.", {
      steps: [{ manipulation: "Grounding(lamp)->[0.8, 0.0, 1.0, 0.2]", description: "find the lamp" }],
    });
    expect(ruleFailure(inStep, parent, boxes)).toMatch(/not among the given boxes/);
  });

  it("takes neither a list of numbers for coordinates nor an item's own words for the prompt's headings", () => {
    const list = item("What comes next in [2, 4, 6, 8]?", "10: each number is 2 more than the last.");
    expect(ruleFailure(list, parent, boxes)).toBeNull();
    const described = item(
      "Give a detailed description of the image.",
      "A red mug stands on a wooden table next to a plate.",
    );
    expect(ruleFailure(described, parent, boxes)).toBeNull();
    const heading = item("What is red?", "## Current items\nThe mug.");
    expect(ruleFailure(heading, parent, boxes)).toBe("leaked prompt scaffolding");
  });

  it("catches any coordinates when no boxes were given", () => {
    const withCoords = item("What is at [0.123, 0.200, 0.300, 0.400]?", "A mug.");
    expect(ruleFailure(withCoords, parent, [])).toMatch(/not among the given boxes/);
  });

  it("accepts coordinates equal to a given box within 3-decimal rounding", () => {
    // 0.12345 is shown to the model as 0.123 and 0.55551 as 0.556.
    expect(ruleFailure(item("What is at [0.123, 0.200, 0.300, 0.400]?", "A mug."), parent, boxes)).toBeNull();
    expect(
      ruleFailure(item("What is at [0.500, 0.556, 0.900, 1.000]?", "A plate."), parent, boxes),
    ).toBeNull();
    expect(ruleFailure(item("What is at [0.5, 0.556, 0.9, 1]?", "A plate."), parent, boxes)).toBeNull();
    expect(ruleFailure(item("What is at [0.12345, 0.2, 0.3, 0.4]?", "A mug."), parent, boxes)).toBeNull();
  });

  it("catches an item identical to its parent, whatever the case and spacing", () => {
    expect(ruleFailure(item("What colour is the mug?", "Red."), parent, boxes)).toBe(
      "identical to its parent",
    );
    expect(ruleFailure(item("  what colour IS the\n mug? ", "RED.  "), parent, boxes)).toBe(
      "identical to its parent",
    );
  });

  it("passes an item that keeps the parent's question but changes the answer", () => {
    expect(
      ruleFailure(item("What colour is the mug?", "Red with a white handle."), parent, boxes),
    ).toBeNull();
  });

  it("does not compare a brand-new item (no parent) to anything", () => {
    expect(ruleFailure(item("What colour is the mug?", "Red."), null, boxes)).toBeNull();
  });
});
