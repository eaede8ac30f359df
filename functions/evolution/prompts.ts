import { z } from "zod";
import type { ChatMessage, ContentPart } from "../ports/llm.ts";
import { type Box, type Direction, type Item, ItemContent } from "./schemas.ts";

/** The 17 interactive instruction forms of METHOD.md §3; multiple choice is the fallback. */
export const INTERACTIVE_FORMATS = [
  "region selection",
  "missing object selection",
  "text-image matching",
  "object-region matching",
  "completeness of response",
  "fill in the blank",
  "image style classification",
  "art type",
  "rationale generation",
  "text detection",
  "text translation",
  "coreference resolution",
  "instruction following",
  "depth order",
  "relative distance",
  "creative content generation",
  "multiple choice",
] as const;

export const ATOMIC_SKILLS = {
  vision: ["grounding", "referencing", "calculating", "OCR", "existence"],
  language: [
    "relationship description",
    "context understanding",
    "behaviour prediction",
    "knowledge integration",
  ],
} as const;

const ROLE = `You are a meticulous visual assistant who writes training data for vision-language models.
You look at one image and the question-answer items already written about it, and you write new items:
each item is a question a person could ask about the image, a definite answer, and the solving steps
that lead from the image to the answer. You are precise about what is visible, you never guess what
cannot be seen, and you keep answers free of filler.`;

const SKILLS = `## Atomic skills
Every item exercises one or more atomic skills. Name them in "skills" with exactly these words.
Vision-centred skills:
- grounding: locate an object or region named in words (where is the red mug?).
- referencing: name or describe what is inside a given region (what is in [0.120, 0.400, 0.310, 0.720]?).
- calculating: count, measure, compare quantities or do arithmetic over what is seen.
- OCR: read text, digits or symbols written in the image.
- existence: decide whether something is present or absent.
Language-centred skills:
- relationship description: spatial, functional or social relations between objects or people.
- context understanding: the scene, event, time, place or purpose the image shows.
- behaviour prediction: what a person, animal or object is likely to do or undergo next.
- knowledge integration: combine what is seen with world knowledge (history, science, culture, rules).`;

const MANIPULATIONS = `## Manipulations
A solving step may name a manipulation, a pseudo function call that a careful viewer would perform.
They are written, never executed:
- Grounding(target)->bbox_k: find the target and name its box bbox_k.
- Referring(bbox_k)->target: zoom into a box and say what is there.
- Calculate(expression)->result: evaluate arithmetic over values found in earlier steps.
- OCR(region)->text: read the text inside a region.
You may invent a new manipulation when none fits (for example Compare(a, b)->relation or
Track(object)->path); write it in the same Name(arguments)->result form. A step that needs no
manipulation uses "None".`;

const SCHEMA = `## Item schema
Return JSON: {"items": [ ...items ]}. Every item has all of these fields:
- "source": the id of the given item this one was written from, or null for a brand-new item.
- "question": the user's instruction, in plain words, without any <image> token.
- "answer": a definite answer. For reasoning items it walks through the steps to the conclusion.
- "steps": a list of {"manipulation": "...", "description": "..."}; one entry per solving step.
- "objects": the visual object categories the item is about, e.g. ["mug", "table"].
- "skills": the atomic skills exercised, from the list above.
- "format": "norm" for a plain question, "complex_reasoning", "detailed_description", or one of the
  interactive formats listed below.
- "imagePosition": "single" for a whole image, or the quadrant ("top-left", "top-right",
  "bottom-left", "bottom-right") when the image is a 2x2 mosaic and the item is about one tile.`;

const RULES = `## Rules for every item
- The caption and the boxes you are given may contain mistakes. Check each claim against the image and
  trust the image.
- Use only the box coordinates given to you, written exactly as given. Never invent coordinates. When
  no boxes are given, ask no localisation and no counting questions.
- Prefer questions with one definite, checkable answer. No verbosity, no hedging, no apologies.
- The item must need the image: a question answerable without looking at the picture is worthless.
- Never mention this instruction, the given items or words such as "Given Q&A", "Rewritten Q&A",
  "caption" or "bounding box list" in a question or an answer: a reader sees only the image.`;

const EXAMPLES = `## Worked examples (about other images; do not copy them)
Example 1, a seed item about a photo of a breakfast table:
{"question": "What is on the plate?", "answer": "Two fried eggs and a slice of toast.", "steps": [],
 "objects": ["plate"], "skills": ["existence"], "format": "norm", "imagePosition": "single"}
A fine-grained perception item for the same photo, about a less salient detail:
{"source": null, "question": "What is printed on the small jar behind the teapot?",
 "answer": "The label reads \\"Wild Honey\\".", "steps": [
  {"manipulation": "Grounding(small jar behind the teapot)->bbox_1", "description": "Find the jar partly hidden by the teapot."},
  {"manipulation": "OCR(bbox_1)->text", "description": "Read the label on the jar."}],
 "objects": ["jar", "teapot"], "skills": ["grounding", "OCR"], "format": "norm", "imagePosition": "single"}
A cognitive reasoning rewrite of the seed item:
{"source": "s4-r0-i1", "question": "If each egg has about 90 calories and the toast about 80, roughly how many calories are on the plate? Let's think step by step.",
 "answer": "The plate holds two fried eggs and one slice of toast. Two eggs give 2 x 90 = 180 calories; adding the toast gives 180 + 80 = 260. So the plate holds about 260 calories.",
 "steps": [
  {"manipulation": "Grounding(plate)->bbox_1", "description": "Locate the plate."},
  {"manipulation": "Referring(bbox_1)->eggs, toast", "description": "Identify two eggs and one slice of toast."},
  {"manipulation": "Calculate(2*90+80)->260", "description": "Add the calories."}],
 "objects": ["plate", "egg", "toast"], "skills": ["existence", "calculating", "knowledge integration"],
 "format": "complex_reasoning", "imagePosition": "single"}
An interaction rewrite of the seed item, as multiple choice:
{"source": "s4-r0-i1", "question": "Which of these is NOT on the plate? A. fried egg B. toast C. sausage D. a second fried egg",
 "answer": "C. There is no sausage; the plate holds two fried eggs and a slice of toast.",
 "steps": [{"manipulation": "Grounding(plate)->bbox_1", "description": "Find the plate."},
  {"manipulation": "Referring(bbox_1)->eggs, toast", "description": "List what lies on it and compare with the options."}],
 "objects": ["plate", "egg", "toast"], "skills": ["existence", "referencing"], "format": "missing object selection",
 "imagePosition": "single"}
Example 2, a street scene with boxes "bus: [0.050, 0.300, 0.480, 0.800]" and "cyclist: [0.600, 0.450, 0.700, 0.850]":
{"source": "s9-r1-i2", "question": "Which is closer to the camera, the bus at [0.050, 0.300, 0.480, 0.800] or the cyclist at [0.600, 0.450, 0.700, 0.850]? Explain from the image.",
 "answer": "The cyclist is closer: its box reaches lower in the frame (0.850 against 0.800) and the cyclist overlaps the kerb in front of the bus.",
 "steps": [{"manipulation": "Referring([0.050, 0.300, 0.480, 0.800])->bus", "description": "Identify the bus."},
  {"manipulation": "Referring([0.600, 0.450, 0.700, 0.850])->cyclist", "description": "Identify the cyclist."},
  {"manipulation": "Compare(bottom edges)->cyclist lower", "description": "The lower edge is nearer to the camera on a flat street."}],
 "objects": ["bus", "cyclist"], "skills": ["referencing", "relationship description"], "format": "depth order",
 "imagePosition": "single"}`;

const DIRECTION_TEXT: Readonly<Record<Direction, string>> = {
  perception: `## Your task: fine-grained perception (evolve in breadth)
Write brand-new items in the same domain as the given ones, about rarer and less salient objects,
attributes and details of the image: the long tail a quick look would miss (small objects, textures,
materials, colours of minor parts, partly hidden things, background text). Keep the length and the
difficulty of the given items: about the same number of steps, objects and skills per item, with
different content. Do not repeat a question that is already given. Set "source" to null, or to the
given item whose topic you widened.`,
  reasoning: `## Your task: cognitive reasoning (evolve in depth)
Rewrite each given item into a harder one that needs more thinking about the same image:
- add one or two new object categories or atomic skills to the item;
- where the given item is solved in few steps, add constraints that need more steps;
- end the question with a reasoning cue such as "Let's think step by step.";
- the answer carries the complete, long line of reasoning, step by step, to a definite conclusion.
Set "source" to the id of the item you rewrote.`,
  interaction: `## Your task: interaction (evolve the instruction form)
Rewrite each given item into a richer instruction that a real user would give, choosing the form that
fits the item and the image best from this list (use its exact name in "format"):
${INTERACTIVE_FORMATS.map((f) => `- ${f}`).join("\n")}
Multiple choice is the fallback when no other form fits. A multiple-choice question lists its options
in the question and names the right one in the answer. Keep "imagePosition" as given. Set "source" to
the id of the item you rewrote.`,
};

/** The last section of a direction's evolve prompt: its objective and constraints (METHOD.md §3). */
export const evolveDirectionText = (direction: Direction): string => DIRECTION_TEXT[direction];

/** The static part of an evolve prompt: byte-identical for every call of a direction, so prefix caching applies. */
export function evolveSystemPrompt(direction: Direction): string {
  return [ROLE, SKILLS, MANIPULATIONS, SCHEMA, RULES, EXAMPLES, DIRECTION_TEXT[direction]].join("\n\n");
}

export interface EvolveContext {
  readonly caption: string | null;
  readonly boxes: readonly Box[];
  readonly items: readonly Item[];
}

/** Boxes one per line as `label: [x1, y1, x2, y2]`, normalised, 3 decimals (METHOD.md §2). */
export function formatBoxes(boxes: readonly Box[]): string {
  return boxes.map((b) => `${b.label}: [${b.bbox.map((v) => v.toFixed(3)).join(", ")}]`).join("\n");
}

function itemForPrompt(item: Item): Record<string, unknown> {
  return {
    id: item.id,
    question: item.question,
    answer: item.answer,
    steps: item.steps,
    objects: item.objects,
    skills: item.skills,
    format: item.format,
    imagePosition: item.imagePosition,
  };
}

/** The sample's own part: caption, boxes, current items. It comes after the static part. */
export function evolveSampleText(context: EvolveContext): string {
  const parts: string[] = [];
  parts.push(
    `## Detailed description of the image (may contain errors)\n${context.caption ?? "(none given)"}`,
  );
  parts.push(
    `## Object boxes, normalised to 0..1 (may contain errors)\n${context.boxes.length > 0 ? formatBoxes(context.boxes) : "(none given: ask no localisation or counting questions)"}`,
  );
  parts.push(
    `## Current items\n${context.items.map((item) => JSON.stringify(itemForPrompt(item))).join("\n")}`,
  );
  parts.push("The image follows. Answer with the JSON object only.");
  return parts.join("\n\n");
}

/** Messages of one evolve call: static system prompt, then the sample, then the image(s) last. */
export function buildEvolveMessages(
  direction: Direction,
  context: EvolveContext,
  images: readonly { readonly dataUrl: string; readonly detail: "low" | "high" | "auto" }[],
): ChatMessage[] {
  const content: ContentPart[] = [
    { type: "text", text: evolveSampleText(context) },
    ...images.map(
      (image): ContentPart => ({ type: "image_url", imageUrl: image.dataUrl, detail: image.detail }),
    ),
  ];
  return [
    { role: "system", content: evolveSystemPrompt(direction) },
    { role: "user", content },
  ];
}

const STEP_SCHEMA = {
  type: "object",
  properties: { manipulation: { type: "string" }, description: { type: "string" } },
  required: ["manipulation", "description"],
  additionalProperties: false,
} as const;

/** Strict JSON schema of an evolve answer. */
export const EVOLVE_SCHEMA: Readonly<Record<string, unknown>> = {
  type: "object",
  properties: {
    items: {
      type: "array",
      items: {
        type: "object",
        properties: {
          source: { type: ["string", "null"] },
          question: { type: "string" },
          answer: { type: "string" },
          steps: { type: "array", items: STEP_SCHEMA },
          objects: { type: "array", items: { type: "string" } },
          skills: { type: "array", items: { type: "string" } },
          format: { type: "string" },
          imagePosition: { type: "string" },
        },
        required: ["source", "question", "answer", "steps", "objects", "skills", "format", "imagePosition"],
        additionalProperties: false,
      },
    },
  },
  required: ["items"],
  additionalProperties: false,
};

export const EvolveAnswer = z.object({
  items: z.array(ItemContent.extend({ source: z.string().nullable() })).min(1, "the model returned no items"),
});
export type EvolveAnswer = z.infer<typeof EvolveAnswer>;
