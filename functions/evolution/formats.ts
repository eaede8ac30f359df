/**
 * The input record formats of METHOD.md §7 and the way back to LLaVA records.
 *
 * Two inputs are accepted: LLaVA records (`conversations` as alternating human/gpt turns) and
 * MMEvol's own per-image records (`conversations_v0` as a list of items). Both become a `Sample`;
 * the fields we do not interpret are kept in `extra` so the output records look like the input.
 */
import { z } from "zod";
import type { Box, Item, Sample, Step } from "./schemas.ts";

const HUMAN = "human";
const GPT = "gpt";
const SPEAKERS: Record<string, typeof HUMAN | typeof GPT> = {
  human: HUMAN,
  user: HUMAN,
  gpt: GPT,
  assistant: GPT,
};

/** One turn as found in the input; `from` is checked and mapped later so the error can name the turn. */
export const LlavaTurn = z.looseObject({ from: z.string(), value: z.string() });
export type LlavaTurn = z.infer<typeof LlavaTurn>;

const RecordId = z.union([z.string(), z.number()]);
const ImageField = z.union([z.string(), z.array(z.string()), z.null()]).optional();
const CaptionField = z.union([z.string(), z.array(LlavaTurn), z.null()]).optional();
const DetBox = z.looseObject({
  label: z.string(),
  bbox: z.tuple([z.number(), z.number(), z.number(), z.number()]),
});
const DetField = z.array(DetBox).nullable().optional();

/** A LLaVA record: `{ id, image?, conversations, caption?, det? }`, unknown fields kept. */
export const LlavaInput = z.looseObject({
  id: RecordId,
  image: ImageField,
  conversations: z.array(LlavaTurn),
  caption: CaptionField,
  det: DetField,
});
export type LlavaInput = z.infer<typeof LlavaInput>;

/** A list given as a list, or as one comma-separated string (seen in hand-written seeds). */
const StringList = z
  .union([z.array(z.string()), z.string(), z.null()])
  .optional()
  .transform((value) => {
    if (value === undefined || value === null) return [];
    if (typeof value === "string") {
      return value
        .split(",")
        .map((part) => part.trim())
        .filter((part) => part.length > 0);
    }
    return value;
  });

/** A step as an object, or as bare text (then it names no manipulation). */
const StepInput = z.union([
  z.string().transform((description): Step => ({ manipulation: "None", description })),
  z
    .looseObject({
      manipulation: z.string().nullable().optional(),
      description: z.string().nullable().optional(),
    })
    .transform(
      (step): Step => ({ manipulation: step.manipulation ?? "None", description: step.description ?? "" }),
    ),
]);

/** One item of MMEvol's `conversations_v0`; optional fields and snake_case names are accepted. */
export const MmevolItemInput = z.looseObject({
  question: z.string(),
  answer: z.string(),
  steps: z.array(StepInput).nullable().optional(),
  solving_steps: z.array(StepInput).nullable().optional(),
  objects: StringList,
  skills: StringList,
  format: z.string().nullable().optional(),
  imagePosition: z.string().nullable().optional(),
  image_position: z.string().nullable().optional(),
});
export type MmevolItemInput = z.infer<typeof MmevolItemInput>;

/** MMEvol's per-image record: `{ id, image, conversations_v0: [item, ...], caption?, det? }`. */
export const MmevolInput = z.looseObject({
  id: RecordId,
  image: ImageField,
  conversations_v0: z.array(MmevolItemInput),
  caption: CaptionField,
  det: DetField,
});
export type MmevolInput = z.infer<typeof MmevolInput>;

/** A training record written back out (METHOD.md §7, output a). */
export interface LlavaRecord {
  id: string;
  image?: string | string[];
  conversations: { from: "human" | "gpt"; value: string }[];
  mmevol?: Record<string, unknown>;
  [field: string]: unknown;
}

export type ParseResult = { ok: true; sample: Sample } | { ok: false; error: string };

/** Fields the converters interpret; everything else of a record goes to `Sample.extra`. */
const INTERPRETED = new Set(["id", "image", "conversations", "conversations_v0", "caption", "det"]);

/**
 * Turns one shard value into a Sample, or says which field is wrong and why.
 * `line` is stored on the sample; `sampleIdPrefix` is put before the record's id (to keep ids
 * from different shards apart) and so also begins every item id.
 */
export function parseRecord(value: unknown, line: number, sampleIdPrefix = ""): ParseResult {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return fail(`record: expected a JSON object, got ${describe(value)}`);
  }
  if ("conversations_v0" in value) return parseMmevol(value, line, sampleIdPrefix);
  if (!("conversations" in value)) {
    return fail(`conversations: missing (expected a list of human/gpt turns, or "conversations_v0")`);
  }
  return parseLlava(value, line, sampleIdPrefix);
}

function parseLlava(value: object, line: number, prefix: string): ParseResult {
  const parsed = LlavaInput.safeParse(value);
  if (!parsed.success) return fail(zodMessage(parsed.error));
  const record = parsed.data;
  const common = parseCommon(record, prefix);
  if (!common.ok) return common;
  const pairs = pairTurns(record.conversations, "conversations");
  if (!pairs.ok) return pairs;
  const items = pairs.pairs.map((pair, n) =>
    makeItem(common.id, n, {
      question: stripImageToken(pair.question),
      answer: pair.answer,
      steps: [],
      objects: [],
      skills: [],
      format: "norm",
      imagePosition: "single",
    }),
  );
  return {
    ok: true,
    sample: { ...common.base, line, items, source: "llava" },
  };
}

function parseMmevol(value: object, line: number, prefix: string): ParseResult {
  const parsed = MmevolInput.safeParse(value);
  if (!parsed.success) return fail(zodMessage(parsed.error));
  const record = parsed.data;
  const common = parseCommon(record, prefix);
  if (!common.ok) return common;
  if (record.conversations_v0.length === 0) return fail("conversations_v0: must hold at least one item");
  const items = record.conversations_v0.map((item, n) =>
    makeItem(common.id, n, {
      question: stripImageToken(item.question),
      answer: item.answer,
      steps: item.steps ?? item.solving_steps ?? [],
      objects: item.objects,
      skills: item.skills,
      format: item.format ?? "norm",
      imagePosition: item.imagePosition ?? item.image_position ?? "single",
    }),
  );
  return {
    ok: true,
    sample: { ...common.base, line, items, source: "mmevol" },
  };
}

type Common =
  | { ok: true; id: string; base: Pick<Sample, "id" | "images" | "caption" | "boxes" | "extra"> }
  | { ok: false; error: string };

/** What both formats share: id, image, caption, det and the uninterpreted fields. */
function parseCommon(record: LlavaInput | MmevolInput, prefix: string): Common {
  const rawId = typeof record.id === "number" ? String(record.id) : record.id;
  if (rawId.trim().length === 0) return fail("id: must not be empty");
  const id = `${prefix}${rawId}`;

  const images = record.image === undefined || record.image === null ? [] : [record.image].flat();
  const emptyImage = images.findIndex((path) => path.trim().length === 0);
  if (emptyImage !== -1) {
    return fail(Array.isArray(record.image) ? `image[${emptyImage}]: empty path` : "image: empty path");
  }

  const caption = readCaption(record.caption);
  if (!caption.ok) return caption;

  const boxes: Box[] = [];
  for (const [i, det] of (record.det ?? []).entries()) {
    const [x1, y1, x2, y2] = det.bbox;
    if (det.bbox.some((c) => c < 0 || c > 1)) {
      return fail(`det[${i}].bbox: coordinates must lie within 0..1, got [${det.bbox.join(", ")}]`);
    }
    if (x1 > x2 || y1 > y2) {
      return fail(`det[${i}].bbox: expected x1 <= x2 and y1 <= y2, got [${det.bbox.join(", ")}]`);
    }
    boxes.push({ label: det.label, bbox: [x1, y1, x2, y2] });
  }

  // Object.fromEntries defines own properties, so a "__proto__" key stays data and cannot reach a prototype.
  const extra = Object.fromEntries(Object.entries(record).filter(([key]) => !INTERPRETED.has(key)));
  return { ok: true, id, base: { id, images, caption: caption.text, boxes, extra } };
}

function readCaption(
  caption: LlavaInput["caption"],
): { ok: true; text: string | null } | { ok: false; error: string } {
  if (caption === undefined || caption === null) return { ok: true, text: null };
  if (typeof caption === "string") return { ok: true, text: caption.trim() === "" ? null : caption };
  for (const [i, turn] of caption.entries()) {
    const speaker = SPEAKERS[turn.from];
    if (speaker === undefined) return fail(unknownSpeaker(`caption[${i}].from`, turn.from));
    if (speaker === GPT) return { ok: true, text: turn.value.trim() === "" ? null : turn.value };
  }
  return fail(`caption: expected a "gpt" turn holding the description`);
}

/** Checks that turns alternate human/gpt, starting with human, and pairs them up. */
function pairTurns(
  turns: LlavaTurn[],
  field: string,
): { ok: true; pairs: { question: string; answer: string }[] } | { ok: false; error: string } {
  if (turns.length === 0) return fail(`${field}: must hold at least one human/gpt pair`);
  const pairs: { question: string; answer: string }[] = [];
  let question = "";
  for (const [i, turn] of turns.entries()) {
    const speaker = SPEAKERS[turn.from];
    if (speaker === undefined) return fail(unknownSpeaker(`${field}[${i}].from`, turn.from));
    const expected = i % 2 === 0 ? HUMAN : GPT;
    if (speaker !== expected) {
      return fail(
        expected === HUMAN
          ? `${field}[${i}]: expected a "human" turn ${i === 0 ? "first" : 'after "gpt"'}, got "${turn.from}"`
          : `${field}[${i}]: expected a "gpt" turn after "human", got "${turn.from}"`,
      );
    }
    if (speaker === HUMAN) question = turn.value;
    else pairs.push({ question, answer: turn.value });
  }
  if (turns.length % 2 === 1) {
    return fail(`${field}[${turns.length - 1}]: a "human" turn without a "gpt" answer after it`);
  }
  return { ok: true, pairs };
}

function makeItem(sampleId: string, n: number, content: Omit<Item, "id" | "parent">): Item {
  return { id: `${sampleId}-r0-i${n}`, parent: null, ...content };
}

/**
 * Removes `<image>` markers with the line breaks (or the spaces, inline) around them; the writer puts one back
 * at the start. Nothing else changes: a code question's indentation or an aligned table stays as it was.
 */
export function stripImageToken(text: string): string {
  if (!text.includes("<image>")) return text;
  const parts = text.split("<image>");
  return parts
    .map((part, index) => {
      let kept = part;
      // After a marker: the line break that ends its line, else the spaces before inline text.
      if (index > 0)
        kept = /^[ \t]*[\r\n]/.test(kept) ? kept.replace(/^[ \t]*[\r\n]+/, "") : kept.trimStart();
      // Before a marker: the line break (and indentation) of its line, else the spaces after inline text.
      if (index < parts.length - 1)
        kept = /[\r\n][ \t]*$/.test(kept) ? kept.replace(/[\r\n]+[ \t]*$/, "") : kept.trimEnd();
      return kept;
    })
    .filter((part) => part.trim().length > 0)
    .join(" ");
}

/** Items as LLaVA turns: one human/gpt pair per item. */
export function itemsToConversations(items: readonly Item[]): LlavaRecord["conversations"] {
  return items.flatMap((item) => [
    { from: HUMAN, value: item.question },
    { from: GPT, value: item.answer },
  ]);
}

/**
 * A LLaVA training record for a sample with the given items. The image comes back as a string for one
 * image and as a list for several; `<image>` (one per image) opens the first human turn.
 */
export function sampleToLlava(
  sample: Sample,
  items: readonly Item[],
  extra: { mmevol?: Record<string, unknown> } = {},
): LlavaRecord {
  const conversations = itemsToConversations(items);
  const first = conversations[0];
  if (first !== undefined && sample.images.length > 0) {
    first.value = `${"<image>\n".repeat(sample.images.length)}${first.value}`;
  }
  const image =
    sample.images.length === 1 ? sample.images[0] : sample.images.length > 1 ? [...sample.images] : undefined;
  const head: LlavaRecord =
    image === undefined ? { id: sample.id, conversations } : { id: sample.id, image, conversations };
  // Spread (not Object.assign) so a "__proto__" field stays data; interpreted keys never come from extra.
  const own = Object.fromEntries(Object.entries(sample.extra).filter(([key]) => !INTERPRETED.has(key)));
  const out: LlavaRecord = { ...head, ...own };
  if (extra.mmevol !== undefined) out.mmevol = extra.mmevol;
  return out;
}

/** Boxes as the prompt shows them: one `label: [x1, y1, x2, y2]` per line, 3 decimals. */
export function renderBoxes(boxes: readonly Box[]): string {
  return boxes.map((box) => `${box.label}: [${box.bbox.map((c) => c.toFixed(3)).join(", ")}]`).join("\n");
}

function fail(error: string): { ok: false; error: string } {
  return { ok: false, error };
}

function unknownSpeaker(path: string, from: string): string {
  return `${path}: unknown speaker "${from}" (expected "human"/"user" or "gpt"/"assistant")`;
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value;
}

/** The first zod issue as `field.path[2]: reason`. */
function zodMessage(error: z.ZodError): string {
  const issue = error.issues[0];
  if (issue === undefined) return "record: invalid";
  return `${formatPath(issue.path)}: ${issue.message}`;
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const key of path) {
    if (typeof key === "number") out += `[${key}]`;
    else out += out === "" ? String(key) : `.${String(key)}`;
  }
  return out === "" ? "record" : out;
}
