import { createReadStream, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  itemsToConversations,
  parseRecord,
  renderBoxes,
  sampleToLlava,
  stripImageToken,
} from "../../functions/evolution/formats.ts";
import { resolveImageKey } from "../../functions/evolution/image-path.ts";
import { Sample } from "../../functions/evolution/schemas.ts";
import { readShard } from "../../functions/evolution/shard-reader.ts";

function ok(value: unknown, line = 1, prefix?: string): Sample {
  const result = parseRecord(value, line, prefix);
  if (!result.ok) throw new Error(`expected ok, got: ${result.error}`);
  // The result must satisfy the shared schema, not just the TypeScript type.
  return Sample.parse(result.sample);
}

function error(value: unknown): string {
  const result = parseRecord(value, 1);
  if (result.ok) throw new Error("expected an error");
  return result.error;
}

const turns = (...values: string[]) =>
  values.map((value, i) => ({ from: i % 2 === 0 ? "human" : "gpt", value }));

describe("parseRecord: LLaVA", () => {
  it("turns each human/gpt pair into a norm item and strips <image>", () => {
    const sample = ok(
      {
        id: "s1",
        image: "coco/0001.jpg",
        conversations: turns("<image>\nWhat colour is the mug?", "Red.", "How many plates?", "One."),
      },
      7,
    );
    expect(sample).toEqual({
      id: "s1",
      line: 7,
      images: ["coco/0001.jpg"],
      caption: null,
      boxes: [],
      extra: {},
      source: "llava",
      items: [
        {
          id: "s1-r0-i0",
          parent: null,
          question: "What colour is the mug?",
          answer: "Red.",
          steps: [],
          objects: [],
          skills: [],
          format: "norm",
          imagePosition: "single",
        },
        {
          id: "s1-r0-i1",
          parent: null,
          question: "How many plates?",
          answer: "One.",
          steps: [],
          objects: [],
          skills: [],
          format: "norm",
          imagePosition: "single",
        },
      ],
    });
  });

  it("makes numeric ids strings and applies the prefix to sample and item ids", () => {
    const sample = ok({ id: 42, image: "a.png", conversations: turns("q", "a") }, 3, "shard1/");
    expect(sample.id).toBe("shard1/42");
    expect(sample.items[0]?.id).toBe("shard1/42-r0-i0");
    expect(ok({ id: 0, conversations: turns("q", "a") }).id).toBe("0");
  });

  it("accepts user/assistant as aliases", () => {
    const sample = ok({
      id: "x",
      conversations: [
        { from: "user", value: "Hi?" },
        { from: "assistant", value: "Hello." },
      ],
    });
    expect(sample.items.map((i) => [i.question, i.answer])).toEqual([["Hi?", "Hello."]]);
  });

  it("reads text-only rows (image absent, null or an empty list) with no images", () => {
    expect(ok({ id: "t", conversations: turns("2+2?", "4") }).images).toEqual([]);
    expect(ok({ id: "t", image: null, conversations: turns("2+2?", "4") }).images).toEqual([]);
    expect(ok({ id: "t", image: [], conversations: turns("2+2?", "4") }).images).toEqual([]);
  });

  it("reads an image list", () => {
    const sample = ok({
      id: "m",
      image: ["a.png", "b.jpg"],
      conversations: turns("<image>\n<image>\nSame?", "No."),
    });
    expect(sample.images).toEqual(["a.png", "b.jpg"]);
    expect(sample.items[0]?.question).toBe("Same?");
  });

  it("reads a caption as a string or as a two-turn conversation (the gpt turn)", () => {
    expect(
      ok({ id: "c", image: "a.png", conversations: turns("q", "a"), caption: "A red mug." }).caption,
    ).toBe("A red mug.");
    const twoTurn = ok({
      id: "c",
      image: "a.png",
      conversations: turns("q", "a"),
      caption: [
        { from: "human", value: "<image>\nDescribe the image in detail." },
        { from: "gpt", value: "A kitchen table with a red mug." },
      ],
    });
    expect(twoTurn.caption).toBe("A kitchen table with a red mug.");
    expect(ok({ id: "c", conversations: turns("q", "a"), caption: "  " }).caption).toBeNull();
  });

  it("reads det boxes", () => {
    const sample = ok({
      id: "d",
      image: "a.png",
      conversations: turns("q", "a"),
      det: [
        { label: "mug", bbox: [0.1, 0.2, 0.3, 0.4] },
        { label: "plate", bbox: [0, 0, 1, 1] },
      ],
    });
    expect(sample.boxes).toEqual([
      { label: "mug", bbox: [0.1, 0.2, 0.3, 0.4] },
      { label: "plate", bbox: [0, 0, 1, 1] },
    ]);
  });

  it("keeps unknown fields in extra, not the interpreted ones", () => {
    const sample = ok({
      id: "e",
      image: "a.png",
      conversations: turns("q", "a"),
      caption: "c",
      det: [],
      source: "coco",
      meta: { split: "train" },
    });
    expect(sample.extra).toEqual({ source: "coco", meta: { split: "train" } });
  });

  it("keeps a __proto__ field as plain data", () => {
    const sample = ok(
      JSON.parse(
        '{"id":"p","conversations":[{"from":"human","value":"q"},{"from":"gpt","value":"a"}],"__proto__":{"polluted":true}}',
      ),
    );
    expect(Object.getPrototypeOf(sample.extra)).toBe(Object.prototype);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe("parseRecord: rejections", () => {
  it.each([
    ["not an object", [1, 2], "record: expected a JSON object, got an array"],
    ["null", null, "record: expected a JSON object, got null"],
    [
      "no conversations",
      { id: "a" },
      'conversations: missing (expected a list of human/gpt turns, or "conversations_v0")',
    ],
    [
      "empty conversations",
      { id: "a", conversations: [] },
      "conversations: must hold at least one human/gpt pair",
    ],
    [
      "gpt first",
      { id: "a", conversations: [{ from: "gpt", value: "x" }] },
      'conversations[0]: expected a "human" turn first, got "gpt"',
    ],
    [
      "two humans",
      {
        id: "a",
        conversations: [...turns("q", "a"), { from: "human", value: "q2" }, { from: "human", value: "q3" }],
      },
      'conversations[3]: expected a "gpt" turn after "human", got "human"',
    ],
    [
      "two gpts",
      { id: "a", conversations: [...turns("q", "a"), { from: "gpt", value: "a2" }] },
      'conversations[2]: expected a "human" turn after "gpt", got "gpt"',
    ],
    [
      "trailing human",
      { id: "a", conversations: turns("q", "a", "q2") },
      'conversations[2]: a "human" turn without a "gpt" answer after it',
    ],
    [
      "unknown speaker",
      { id: "a", conversations: [{ from: "system", value: "be nice" }, ...turns("q", "a")] },
      'conversations[0].from: unknown speaker "system" (expected "human"/"user" or "gpt"/"assistant")',
    ],
    ["empty id", { id: " ", conversations: turns("q", "a") }, "id: must not be empty"],
    ["empty image path", { id: "a", image: "", conversations: turns("q", "a") }, "image: empty path"],
    [
      "empty image in list",
      { id: "a", image: ["a.png", ""], conversations: turns("q", "a") },
      "image[1]: empty path",
    ],
    [
      "box outside 0..1",
      { id: "a", conversations: turns("q", "a"), det: [{ label: "m", bbox: [0.1, 0.1, 1.2, 0.5] }] },
      "det[0].bbox: coordinates must lie within 0..1, got [0.1, 0.1, 1.2, 0.5]",
    ],
    [
      "box with x1 > x2",
      {
        id: "a",
        conversations: turns("q", "a"),
        det: [
          { label: "m", bbox: [0.1, 0.1, 0.2, 0.2] },
          { label: "n", bbox: [0.5, 0.1, 0.2, 0.3] },
        ],
      },
      "det[1].bbox: expected x1 <= x2 and y1 <= y2, got [0.5, 0.1, 0.2, 0.3]",
    ],
    [
      "caption without gpt turn",
      { id: "a", conversations: turns("q", "a"), caption: [{ from: "human", value: "Describe." }] },
      'caption: expected a "gpt" turn holding the description',
    ],
    [
      "empty conversations_v0",
      { id: "a", conversations_v0: [] },
      "conversations_v0: must hold at least one item",
    ],
  ])("%s", (_name, value, message) => {
    expect(error(value)).toBe(message);
  });

  it("names the field when a type is wrong", () => {
    expect(error({ id: "a", conversations: [{ from: "human", value: 3 }] })).toMatch(
      /^conversations\[0\]\.value: /,
    );
    expect(error({ id: true, conversations: turns("q", "a") })).toMatch(/^id: /);
    expect(
      error({ id: "a", conversations: turns("q", "a"), det: [{ label: "m", bbox: [0, 0, 1] }] }),
    ).toMatch(/^det\[0\]\.bbox/);
    expect(error({ id: "a", conversations_v0: [{ question: "q" }] })).toMatch(
      /^conversations_v0\[0\]\.answer: /,
    );
  });
});

describe("parseRecord: MMEvol conversations_v0", () => {
  it("keeps item fields and accepts snake_case and loose forms", () => {
    const sample = ok(
      {
        id: 9,
        image: "k.png",
        conversations_v0: [
          {
            question: "<image>\nWhere is the mug relative to the plate?",
            answer: "Left of it.",
            steps: [
              { manipulation: "Grounding(red mug)->bbox_1", description: "Find the mug." },
              { manipulation: null, description: "Compare x positions." },
              "Answer.",
            ],
            objects: ["mug", "plate"],
            skills: "grounding, relationship description",
            format: "complex_reasoning",
            image_position: "top left",
            score: 0.7,
          },
          { question: "Colour of the plate?", answer: "Blue." },
        ],
        caption: "A table.",
        det: [{ label: "mug", bbox: [0.2, 0.3, 0.4, 0.5] }],
        origin: "seed",
      },
      0,
    );
    expect(sample.source).toBe("mmevol");
    expect(sample.id).toBe("9");
    expect(sample.extra).toEqual({ origin: "seed" });
    expect(sample.items[0]).toEqual({
      id: "9-r0-i0",
      parent: null,
      question: "Where is the mug relative to the plate?",
      answer: "Left of it.",
      steps: [
        { manipulation: "Grounding(red mug)->bbox_1", description: "Find the mug." },
        { manipulation: "None", description: "Compare x positions." },
        { manipulation: "None", description: "Answer." },
      ],
      objects: ["mug", "plate"],
      skills: ["grounding", "relationship description"],
      format: "complex_reasoning",
      imagePosition: "top left",
    });
    expect(sample.items[1]).toMatchObject({
      id: "9-r0-i1",
      steps: [],
      objects: [],
      skills: [],
      format: "norm",
      imagePosition: "single",
    });
  });
});

describe("back to LLaVA", () => {
  it("round-trips conversations and a single image, <image> moved to the start", () => {
    const input = {
      id: "r1",
      image: "scenes/kitchen.png",
      conversations: turns(
        "What is on the table?\n<image>",
        "A mug and a plate.",
        "What colour is the mug?",
        "Red.",
      ),
      source: "demo",
    };
    const sample = ok(input);
    const out = sampleToLlava(sample, sample.items, { mmevol: { source: "r1", round: 0 } });
    expect(out).toEqual({
      id: "r1",
      image: "scenes/kitchen.png",
      conversations: turns(
        "<image>\nWhat is on the table?",
        "A mug and a plate.",
        "What colour is the mug?",
        "Red.",
      ),
      source: "demo",
      mmevol: { source: "r1", round: 0 },
    });
    expect(Object.keys(out)).toEqual(["id", "image", "conversations", "source", "mmevol"]);
    // A second pass is stable.
    const again = ok(out);
    expect(sampleToLlava(again, again.items).conversations).toEqual(out.conversations);
  });

  it("round-trips an image list with one <image> per image", () => {
    const input = {
      id: "r2",
      image: ["a.png", "b.png"],
      conversations: turns("<image>\n<image>\nSame?", "No."),
    };
    const sample = ok(input);
    const out = sampleToLlava(sample, sample.items);
    expect(out.image).toEqual(["a.png", "b.png"]);
    expect(out.conversations).toEqual(input.conversations);
  });

  it("writes text-only rows without image or <image>", () => {
    const input = { id: "r3", conversations: turns("2+2?", "4") };
    const sample = ok(input);
    const out = sampleToLlava(sample, sample.items);
    expect(out).toEqual({ id: "r3", conversations: input.conversations });
    expect("image" in out).toBe(false);
  });

  it("uses the given items, not the sample's", () => {
    const sample = ok({ id: "r4", image: "a.png", conversations: turns("q", "a") });
    const base = sample.items[0];
    if (base === undefined) throw new Error("no item");
    const evolved = [{ ...base, id: "r4-r1-i0", parent: base.id, question: "Harder q", answer: "Harder a" }];
    expect(sampleToLlava(sample, evolved).conversations).toEqual(turns("<image>\nHarder q", "Harder a"));
    expect(sample.items[0]?.question).toBe("q");
  });

  it("itemsToConversations gives human/gpt pairs", () => {
    const sample = ok({ id: "r5", conversations: turns("q1", "a1", "q2", "a2") });
    expect(itemsToConversations(sample.items)).toEqual(turns("q1", "a1", "q2", "a2"));
  });
});

describe("helpers", () => {
  it("renderBoxes writes one box per line with 3 decimals", () => {
    expect(
      renderBoxes([
        { label: "red mug", bbox: [0.1, 0.25, 0.3333333, 1] },
        { label: "plate", bbox: [0, 0.5, 0.75, 0.9999] },
      ]),
    ).toBe("red mug: [0.100, 0.250, 0.333, 1.000]\nplate: [0.000, 0.500, 0.750, 1.000]");
    expect(renderBoxes([])).toBe("");
  });

  it("stripImageToken removes the token and the newlines around it", () => {
    expect(stripImageToken("<image>\nWhat is it?")).toBe("What is it?");
    expect(stripImageToken("What is it?\n<image>")).toBe("What is it?");
    expect(stripImageToken("Look at <image> and say")).toBe("Look at and say");
    expect(stripImageToken("No token\nhere")).toBe("No token\nhere");
    // Nothing else: indentation and runs of spaces stay.
    expect(stripImageToken("<image>\nWhat does this print?\nfor i in x:\n    print(i)")).toBe(
      "What does this print?\nfor i in x:\n    print(i)",
    );
    expect(stripImageToken("<image>\n    indented first line")).toBe("    indented first line");
    expect(stripImageToken("a  |  b\n<image>")).toBe("a  |  b");
  });
});

describe("the demo seed shards", () => {
  const seeds = fileURLToPath(new URL("../../examples/seeds/", import.meta.url));

  async function load(file: string): Promise<Sample[]> {
    const samples: Sample[] = [];
    for await (const entry of readShard(createReadStream(`${seeds}${file}`, { highWaterMark: 256 }))) {
      if ("error" in entry) throw new Error(entry.error);
      const result = parseRecord(entry.value, entry.line);
      if (!result.ok) throw new Error(`${file} line ${entry.line}: ${result.error}`);
      samples.push(result.sample);
    }
    return samples;
  }

  it("parse, with every image present under the seeds folder", async () => {
    const llava = await load("demo.jsonl");
    const mmevol = await load("demo-mmevol.json");
    expect(llava.length).toBeGreaterThanOrEqual(8);
    expect(mmevol).toHaveLength(2);
    expect(mmevol.every((s) => s.source === "mmevol")).toBe(true);
    expect(llava.filter((s) => s.images.length === 0)).toHaveLength(1);
    expect(llava.some((s) => s.items.length >= 2)).toBe(true);
    expect(llava.filter((s) => s.caption !== null).length).toBeGreaterThanOrEqual(2);
    expect(llava.filter((s) => s.boxes.length > 0).length).toBeGreaterThanOrEqual(2);
    for (const sample of [...llava, ...mmevol]) {
      for (const image of sample.images) {
        const resolved = resolveImageKey(seeds, image);
        expect(resolved.ok && existsSync(resolved.key)).toBe(true);
      }
    }
  });
});
