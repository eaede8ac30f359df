import type { EvolveAnswer } from "./prompts.ts";
import type { Direction, Item, Version } from "./schemas.ts";

/** The latest version with items: round r evolves it (METHOD.md §5). */
export function latestNonEmpty(versions: readonly Version[]): Version {
  for (let i = versions.length - 1; i >= 0; i--) {
    const version = versions[i];
    if (version && version.items.length > 0) return version;
  }
  const seed = versions[0];
  if (!seed) throw new Error("a sample has no seed version");
  return seed;
}

export const itemId = (samplePrefix: string, round: number, index: number): string =>
  `${samplePrefix}-r${round}-i${index + 1}`;

/** Gives each model-written item its id and parent; a `source` that names no given item means a new item. */
export function candidatesFrom(
  answer: EvolveAnswer,
  from: Version,
  samplePrefix: string,
  round: number,
  direction: Direction,
): Item[] {
  const known = new Set(from.items.map((item) => item.id));
  return answer.items.map((written, index) => {
    const { source, ...content } = written;
    const parent = source !== null && known.has(source) ? source : null;
    // Interaction keeps the image position of the item it rewrote (METHOD.md §3).
    const parentItem = parent === null ? undefined : from.items.find((item) => item.id === parent);
    const imagePosition =
      direction === "interaction" && parentItem
        ? parentItem.imagePosition
        : content.imagePosition || "single";
    return { ...content, imagePosition, id: itemId(samplePrefix, round, index), parent };
  });
}

export interface VersionStats {
  readonly items: number;
  readonly meanSkills: number;
  readonly meanSteps: number;
  readonly meanScore: number | null;
}

const mean = (values: readonly number[]): number =>
  values.length === 0 ? 0 : values.reduce((a, b) => a + b, 0) / values.length;

export function versionStats(items: readonly Item[]): VersionStats {
  const scores = items.flatMap((item) => (typeof item.score === "number" ? [item.score] : []));
  return {
    items: items.length,
    meanSkills: mean(items.map((item) => item.skills.length)),
    meanSteps: mean(items.map((item) => item.steps.length)),
    meanScore: scores.length > 0 ? mean(scores) : null,
  };
}
