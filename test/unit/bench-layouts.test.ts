import { describe, expect, it } from "vitest";
import { buildEvolveMessages, evolveDirectionText } from "../../functions/evolution/prompts.ts";
import { DIRECTIONS, type Item } from "../../functions/evolution/schemas.ts";
import type { ChatMessage, ContentPart } from "../../functions/ports/llm.ts";
import { imageEarlyLayout, referenceLayout } from "../bench/cost.ts";

const items: Item[] = [
  {
    id: "s1-r0-i1",
    parent: null,
    question: "What colour is the mug?",
    answer: "Red.",
    steps: [],
    objects: ["mug"],
    skills: [],
    format: "norm",
    imagePosition: "single",
  },
];
const image = { dataUrl: "data:image/jpeg;base64,AAAA", detail: "low" as const };
const evolveMessages = (direction: (typeof DIRECTIONS)[number]) =>
  buildEvolveMessages(direction, { caption: "A red mug on a desk.", boxes: [], items }, [image]);

const partsOf = (message: ChatMessage | undefined): readonly ContentPart[] => {
  if (message === undefined) throw new Error("no message");
  return typeof message.content === "string" ? [{ type: "text", text: message.content }] : message.content;
};
const textOf = (part: ContentPart | undefined): string => (part?.type === "text" ? part.text : "");

describe("the cost benchmark's layouts", () => {
  it("reference: one user message, the image first, the sample spliced into the template", () => {
    const [only, ...rest] = referenceLayout(evolveMessages("reasoning"));
    expect(rest).toEqual([]);
    expect(only?.role).toBe("user");
    const parts = partsOf(only);
    expect(parts[0]?.type).toBe("image_url");
    const text = textOf(parts[1]);
    // The sample sits after the template's first paragraph, not at its end.
    expect(text.indexOf("What colour is the mug?")).toBeGreaterThan(0);
    expect(text.indexOf("What colour is the mug?")).toBeLessThan(
      text.indexOf(evolveDirectionText("reasoning")),
    );
  });

  it("image-early: the direction-independent prompt, then the image, then the direction and the sample", () => {
    const systems = new Set<string>();
    for (const direction of DIRECTIONS) {
      const original = evolveMessages(direction);
      const [system, user, ...rest] = imageEarlyLayout(original, direction);
      expect(rest).toEqual([]);
      expect(system?.role).toBe("system");
      systems.add(textOf(partsOf(system)[0]));
      const parts = partsOf(user);
      expect(parts.map((p) => p.type)).toEqual(["image_url", "text"]);
      expect(textOf(parts[1]).startsWith(evolveDirectionText(direction))).toBe(true);
      expect(textOf(parts[1])).toContain("What colour is the mug?");
      // Nothing is lost or added: the same text, reordered.
      const allText = (messages: readonly ChatMessage[]) =>
        messages
          .flatMap((m) => partsOf(m).map(textOf))
          .join("")
          .replace(/\s+/g, "");
      expect(allText([system, user].filter((m) => m !== undefined))).toHaveLength(allText(original).length);
    }
    // One system prompt for every direction: the prefix a sample's image extends is the same in every round.
    expect(systems.size).toBe(1);
  });

  it("image-early refuses a prompt that is not shaped as an evolve prompt", () => {
    const judgeLike: ChatMessage[] = [
      { role: "system", content: "judge these" },
      { role: "user", content: "items" },
    ];
    expect(() => imageEarlyLayout(judgeLike, "perception")).toThrow(
      /not a system prompt ending in the direction/,
    );
  });
});
