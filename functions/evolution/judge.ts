import { z } from "zod";
import { LlmAnswerError } from "../ports/errors.ts";
import type { ChatMessage } from "../ports/llm.ts";
import type { Item, Verdict } from "./schemas.ts";

const JUDGE_SYSTEM = `You are a strict reviewer of training data for vision-language models. You do not see the
image. You compare rewritten question-answer items with the items they were rewritten from, and decide
for each rewritten item whether it is an improvement.

## Criteria
Judge each rewritten item against its parent (or, for a brand-new item, against the previous items as a
whole) on:
1. Length: a longer, fuller question and answer, without padding.
2. Semantic complexity: more reasoning steps, more atomic skills, harder inference.
3. Visual information: more objects, scene elements and spatial relations that must be read from the image.
4. Variety of format: multiple choice, matching, fill in the blank, creative and other interactive forms
   rank above plain questions.
5. Visual dependence: an item that can be answered without the image (pure world knowledge, or the answer
   is given away in the question) gets score 0 and is not improved, whatever else it does well.
An item that is wrong in itself (answer contradicts the question or its own steps) is not improved.

## The items
Each item is one JSON object: its \`question\` and \`answer\`; \`steps\`, how many solving steps the answer
shows, and \`stepList\`, the manipulation each step names (Grounding(target)->bbox, Referring(bbox)->target,
Calculate(expression)->result, OCR(region)->text, None, or a new one); \`objects\`, the image regions it relies
on; \`skills\`, the atomic skills it exercises (grounding, referencing, calculating, OCR, existence,
relationship description, context understanding, behaviour prediction, knowledge integration); \`format\`,
the form of its question. An id names an item within this sample: r2-i1 is the first item written in
round 2, r0-i1 the first of the seed. A rewritten item names the item it came from; judge it against that one.

## Score: the difficulty of the rewritten item, 0 to 10
Ten graded examples anchor the scale:
1 - "What colour is the sky in the picture?" rephrased as "Which colour does the sky have?"
2 - "Is there a dog in the image?" (existence of one salient object)
3 - "How many people are sitting on the bench?" (one count of a salient object)
4 - "What is written on the red sign?" (one OCR read)
5 - "What is the woman on the left holding, and what is it used for?" (grounding plus knowledge)
6 - "Which of these objects is missing from the table: A. cup B. spoon C. knife D. plate?" (selection)
7 - "Is the car at [0.10, 0.50, 0.30, 0.70] closer to the camera than the tree at [0.60, 0.20, 0.80, 0.90]? Explain." (depth with grounding)
8 - "If every shelf holds as many books as the top one, how many books fit on the whole bookcase? Let's think step by step." (count, multiply, reason)
9 - "From the shadows and the shop signs, estimate the time of day and the country, explaining each clue." (several skills chained)
10 - "Describe the whole scene as a short story: who is where, what each person is doing, and what will probably happen next, citing what you see." (whole-scene narrative with prediction)
0 - any item answerable without the image.

## A worked example
Previous items:
r0-i1: {"question":"What is on the desk?","answer":"A laptop and a mug.","steps":0,"stepList":[],"objects":["desk"],"skills":["existence"],"format":"open question"}
Rewritten items:
r1-i1 (rewritten from r0-i1): {"question":"Which object on the desk at [0.20, 0.55, 0.70, 0.90] is nearest to the mug, and what is the person likely to do with it next? A. laptop B. phone C. notebook D. lamp","answer":"A. The laptop: it is open beside the mug, so the person will probably go on typing.","steps":2,"stepList":["Grounding(desk)->bbox","Referring(bbox)->laptop"],"objects":["desk","laptop","mug"],"skills":["grounding","referencing","behaviour prediction"],"format":"multiple choice"}
r1-i2 (rewritten from none: a new item): {"question":"What is the capital city of France?","answer":"Paris.","steps":0,"stepList":[],"objects":[],"skills":["knowledge integration"],"format":"open question"}
Verdicts:
{"verdicts": {"r1-i1": {"improved": true, "score": 7, "reason": "Adds grounding, a choice among four and a prediction, all read from the image."}, "r1-i2": {"improved": false, "score": 0, "reason": "Answerable without the image."}}}

## Output
Return JSON with one verdict for every rewritten item id, and no other ids:
{"verdicts": {"<id>": {"improved": true|false, "score": 0-10, "reason": "<one short sentence>"}}}`;

function itemText(item: Item): string {
  return JSON.stringify({
    question: item.question,
    answer: item.answer,
    steps: item.steps.length,
    stepList: item.steps.map((s) => s.manipulation),
    objects: item.objects,
    skills: item.skills,
    format: item.format,
  });
}

/**
 * The name the judge knows an item by: its id without the sample's prefix (`s12-r2-i1` is `r2-i1`). One
 * sample's items share that prefix, so names stay unique within a call, and answers are still matched to
 * items by id. What it buys: a call's schema, whose required keys are these names, is the same for every
 * sample with the same candidates in the same round. Providers bill a prompt prefix at the cached rate only
 * when it is identical from the first token, and OpenAI puts the schema first: with the sample's own ids in
 * it, no two judge calls shared a prefix at all.
 */
export const judgeName = (id: string): string => /^s\d+-(r\d+-i\d+)$/.exec(id)?.[1] ?? id;

/**
 * The judge is text only (no image): static criteria first (with the schema, over the 1,024 tokens a provider
 * caches), then the previous and rewritten items, by their judge names.
 */
export function buildJudgeMessages(previous: readonly Item[], candidates: readonly Item[]): ChatMessage[] {
  const parents = previous.map((item) => `${judgeName(item.id)}: ${itemText(item)}`).join("\n");
  const rewritten = candidates
    .map(
      (item) =>
        `${judgeName(item.id)} (rewritten from ${item.parent === null ? "none: a new item" : judgeName(item.parent)}): ${itemText(item)}`,
    )
    .join("\n");
  const user = `## Previous items\n${parents}\n\n## Rewritten items\n${rewritten}\n\nReturn one verdict for each of these ids: ${candidates.map((c) => judgeName(c.id)).join(", ")}.`;
  return [
    { role: "system", content: JUDGE_SYSTEM },
    { role: "user", content: user },
  ];
}

/** A verdict as written: its id, the flag, the score and a one-sentence reason, about 40 tokens; 4x room. */
export const JUDGE_TOKENS_PER_VERDICT = 160;
/** The answer's frame around its verdicts. */
const JUDGE_TOKENS_FRAME = 100;

/**
 * The judge's max_tokens for `candidates` items, at most `cap` (the run's `judgeMaxTokens`). A provider's
 * tokens-per-minute limiter charges a call its whole max_tokens when it is admitted, whatever the answer
 * uses: a judge call of two items that asked for 2,048 held 1,700 tokens of the limit it never wrote, and
 * evolve calls waited for them.
 */
export const judgeMaxTokens = (candidates: number, cap: number): number =>
  Math.min(cap, JUDGE_TOKENS_FRAME + JUDGE_TOKENS_PER_VERDICT * Math.max(1, candidates));

const VERDICT_SCHEMA = {
  type: "object",
  properties: {
    improved: { type: "boolean" },
    score: { type: "integer", minimum: 0, maximum: 10 },
    reason: { type: "string" },
  },
  required: ["improved", "score", "reason"],
  additionalProperties: false,
} as const;

/** A schema per call: the candidate ids are required keys, so strict decoding yields exactly one verdict per item. */
export function judgeSchema(candidateIds: readonly string[]): Record<string, unknown> {
  return {
    type: "object",
    properties: {
      verdicts: {
        type: "object",
        properties: Object.fromEntries(candidateIds.map((id) => [id, VERDICT_SCHEMA])),
        required: [...candidateIds],
        additionalProperties: false,
      },
    },
    required: ["verdicts"],
    additionalProperties: false,
  };
}

const JudgeVerdict = z.object({
  improved: z.boolean(),
  score: z.number().min(0).max(10),
  reason: z.string(),
});

const JudgeAnswer = z.object({ verdicts: z.record(z.string(), JudgeVerdict) });
export type JudgeAnswer = z.infer<typeof JudgeAnswer>;

/**
 * Validates a judge answer for these ids; a missing verdict is a failed judgement, not a silent drop. The
 * shape is one schema for every call, piped into the per-call id check: zod compiles an object schema on its
 * first parse, and building a new object schema per call made each validation three times slower (measured:
 * 116 us against 37 us).
 */
export function judgeAnswerSchema(candidateIds: readonly string[]) {
  return JudgeAnswer.pipe(
    z.custom<JudgeAnswer>().superRefine((value, ctx) => {
      const missing = candidateIds.filter((id) => !(id in value.verdicts));
      if (missing.length > 0)
        ctx.addIssue({ code: "custom", message: `no verdict for ${missing.join(", ")}` });
    }),
  );
}

/**
 * Matches verdicts to candidates by id (never by position), as the judge named them (`judgeName`). Only
 * improved items are kept, with their score.
 */
export function applyVerdicts(
  candidates: readonly Item[],
  answer: JudgeAnswer,
): { kept: Item[]; verdicts: Verdict[] } {
  const kept: Item[] = [];
  const verdicts: Verdict[] = [];
  for (const candidate of candidates) {
    const verdict = answer.verdicts[judgeName(candidate.id)];
    if (!verdict) throw new LlmAnswerError(`no verdict for ${candidate.id}`);
    // An item scored 0 is answerable without the image: never kept, whatever the judge's flag says.
    const improved = verdict.improved && verdict.score > 0;
    verdicts.push({
      id: candidate.id,
      parent: candidate.parent,
      improved,
      score: verdict.score,
      reason: verdict.reason,
      by: "judge",
    });
    if (improved) kept.push({ ...candidate, score: verdict.score, reason: verdict.reason });
  }
  return { kept, verdicts };
}
