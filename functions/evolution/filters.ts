import type { Box, Item } from "./schemas.ts";

const REFUSAL =
  /\b(i['’]?m sorry|i am sorry|sorry, i (cannot|can['’]?t)|as an ai\b|as a language model|i (cannot|can['’]?t) (help|assist|answer|see|provide|comply)|unable to (see|view|analy[sz]e) (the )?image)/i;
/\b(i'?m sorry|i am sorry|as an ai\b|as a language model|i cannot (help|assist|answer|see)|i can'?t (help|assist|answer|see)|unable to (see|view|analy[sz]e) (the )?image)/i;
// The prompt's section headings count only as headings: "a detailed description of the image" is also what a
// detailed_description item may well say of itself.
const SCAFFOLDING =
  /(given q&a|rewritten q&a|created q&a|#given|#rewritten|#+\s*(bounding box list|object boxes|detailed description of the image|current items)|<image>)/i;
const COORDINATES = /\[\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*,\s*(-?\d*\.?\d+)\s*\]/g;

const normalise = (text: string): string => text.toLowerCase().replace(/\s+/g, " ").trim();

function textOf(item: Item): string {
  return [item.question, item.answer, ...item.steps.flatMap((s) => [s.manipulation, s.description])].join(
    "\n",
  );
}

/**
 * Boxes are given normalised to 0..1 (METHOD.md §2), so four numbers in brackets are taken for coordinates only
 * when all are in 0..1: "[2, 4, 6, 8]" in a counting or calculation item is a list, not an invented box.
 */
function coordinatesIn(text: string): number[][] {
  return [...text.matchAll(COORDINATES)]
    .map((m) => m.slice(1, 5).map(Number))
    .filter((coords) => coords.every((v) => v >= 0 && v <= 1));
}

function isGivenBox(coords: readonly number[], boxes: readonly Box[]): boolean {
  return boxes.some((box) => box.bbox.every((v, i) => Math.abs(v - (coords[i] ?? Number.NaN)) <= 0.0015));
}

/**
 * Cheap failures dropped by rule before any judge call is paid for (METHOD.md §4).
 * Returns the reason an item fails, or null when it may go to the judge.
 */
export function ruleFailure(item: Item, parent: Item | null, boxes: readonly Box[]): string | null {
  const question = normalise(item.question);
  const answer = normalise(item.answer);
  if (question.length === 0) return "empty question";
  if (answer.length === 0) return "empty answer";
  if (answer === question) return "answer copies the question";
  if (REFUSAL.test(item.answer) || REFUSAL.test(item.question)) return "refusal";
  if (SCAFFOLDING.test(textOf(item))) return "leaked prompt scaffolding";
  for (const coords of coordinatesIn(textOf(item))) {
    if (!isGivenBox(coords, boxes)) return `coordinates [${coords.join(", ")}] are not among the given boxes`;
  }
  if (parent && normalise(parent.question) === question && normalise(parent.answer) === answer) {
    return "identical to its parent";
  }
  return null;
}
