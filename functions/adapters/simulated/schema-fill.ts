import { createHash } from "node:crypto";
import { InvalidInputError } from "../../ports/errors.ts";

/** A pseudo-random source in [0, 1). */
export type Random = () => number;

/** mulberry32 seeded from sha256(seedText): same text, same stream, on every platform. */
export function seededRandom(seedText: string): Random {
  let state = createHash("sha256").update(seedText).digest().readUInt32LE(0);
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ADJECTIVES = [
  "red",
  "blue",
  "small",
  "large",
  "wooden",
  "bright",
  "old",
  "round",
  "striped",
  "green",
  "white",
  "dark",
  "metal",
  "yellow",
  "tall",
];
const NOUNS = [
  "mug",
  "table",
  "window",
  "dog",
  "bicycle",
  "sign",
  "lamp",
  "book",
  "car",
  "tree",
  "chair",
  "bottle",
  "clock",
  "person",
  "plate",
  "shelf",
  "bag",
  "door",
];
const RELATIONS = ["next to", "behind", "in front of", "on top of", "to the left of", "under", "near"];
const OPERATIONS = ["Grounding", "OCR", "Crop_and_Zoom", "Counting", "Calculate"];
const OUTPUTS: Record<string, string> = {
  Grounding: "bbox",
  OCR: "text",
  Crop_and_Zoom: "img",
  Counting: "n",
  Calculate: "res",
};

function pick<T>(rand: Random, options: readonly T[]): T {
  const value = options[Math.floor(rand() * options.length)];
  if (value === undefined) throw new RangeError("pick from an empty list");
  return value;
}

function thing(rand: Random): string {
  return `${pick(rand, ADJECTIVES)} ${pick(rand, NOUNS)}`;
}

function question(rand: Random): string {
  const a = thing(rand);
  const b = pick(rand, NOUNS);
  return pick(rand, [
    `What color is the ${a} ${pick(rand, RELATIONS)} the ${b}?`,
    `How many ${b}s are visible near the ${a}?`,
    `Where is the ${a} relative to the ${b}?`,
    `What is written on the ${a}?`,
    `Why might the ${a} be placed ${pick(rand, RELATIONS)} the ${b}?`,
  ]);
}

function sentence(rand: Random): string {
  const text = `The ${thing(rand)} is ${pick(rand, RELATIONS)} the ${thing(rand)}`;
  return rand() < 0.5 ? `${text}.` : `${text}, and the ${thing(rand)} is ${pick(rand, RELATIONS)} it.`;
}

function manipulation(rand: Random): string {
  if (rand() < 0.2) return "None";
  const op = pick(rand, OPERATIONS);
  return `${op}(${thing(rand)})->${OUTPUTS[op] ?? "out"}_${1 + Math.floor(rand() * 3)}`;
}

const QUESTION_KEYS = /^(question|query|prompt|instruction)s?$/i;
const SENTENCE_KEYS =
  /(answer|reason|reasoning|rationale|description|explanation|caption|summary|text|feedback|comment|analysis)s?$/i;

/** A string shaped by the property name it fills, so simulated MMEvol items read like real ones. */
function stringFor(key: string, rand: Random): string {
  if (QUESTION_KEYS.test(key)) return question(rand);
  if (/manipulation/i.test(key)) return manipulation(rand);
  if (SENTENCE_KEYS.test(key)) return rand() < 0.7 ? sentence(rand) : `${sentence(rand)} ${sentence(rand)}`;
  if (/^id$/i.test(key)) return `${pick(rand, NOUNS)}_${Math.floor(rand() * 10000)}`;
  return rand() < 0.5 ? pick(rand, NOUNS) : thing(rand);
}

function formatted(format: string, rand: Random): string | null {
  const n = Math.floor(rand() * 1e9);
  if (format === "date-time") return new Date(1.7e12 + n * 1000).toISOString();
  if (format === "date") return new Date(1.7e12 + n * 1000).toISOString().slice(0, 10);
  if (format === "email") return `${pick(rand, NOUNS)}${n % 1000}@example.com`;
  if (format === "uri" || format === "url") return `https://example.com/${pick(rand, NOUNS)}/${n}`;
  if (format === "uuid") {
    const hex = createHash("sha256").update(String(n)).digest("hex");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-8${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
  }
  return null;
}

type Schema = Record<string, unknown>;

function isSchema(value: unknown): value is Schema {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function numberOr(value: unknown, fallback: number): number {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

/** Past this nesting, arrays shrink to their minimum and unions prefer null, so recursive schemas end. */
const MAX_DEPTH = 8;

interface Context {
  readonly root: unknown;
  readonly rand: Random;
}

function resolveRef(ref: string, root: unknown): unknown {
  if (!ref.startsWith("#")) throw new InvalidInputError(`schema uses an external $ref: ${ref}`);
  let node = root;
  for (const raw of ref.slice(1).split("/").filter(Boolean)) {
    const key = decodeURIComponent(raw).replaceAll("~1", "/").replaceAll("~0", "~");
    node = Array.isArray(node) ? node[Number(key)] : isSchema(node) ? node[key] : undefined;
  }
  if (node === undefined) throw new InvalidInputError(`schema has an unresolvable $ref: ${ref}`);
  return node;
}

/** Chooses one alternative; real models rarely answer null when a value is allowed, so neither do we. */
function choose<T>(options: readonly T[], isNull: (option: T) => boolean, depth: number, rand: Random): T {
  const nulls = options.filter(isNull);
  const values = options.filter((option) => !isNull(option));
  if (values.length === 0 || (nulls.length > 0 && (depth >= MAX_DEPTH || rand() < 0.15))) {
    return pick(rand, nulls.length > 0 ? nulls : options);
  }
  return pick(rand, values);
}

function fill(node: unknown, key: string, depth: number, ctx: Context): unknown {
  const { rand } = ctx;
  if (!isSchema(node)) return stringFor(key, rand);
  if (typeof node.$ref === "string") return fill(resolveRef(node.$ref, ctx.root), key, depth + 1, ctx);
  if ("const" in node) return node.const;
  if (Array.isArray(node.enum) && node.enum.length > 0) return pick(rand, node.enum);
  const union = Array.isArray(node.anyOf) ? node.anyOf : Array.isArray(node.oneOf) ? node.oneOf : null;
  if (union !== null && union.length > 0) {
    const branch = choose(union, (s) => isSchema(s) && s.type === "null", depth, rand);
    return fill(branch, key, depth, ctx);
  }
  if (Array.isArray(node.allOf)) {
    const merged = node.allOf
      .filter(isSchema)
      .map((s) => (typeof s.$ref === "string" ? resolveRef(s.$ref, ctx.root) : s));
    const properties = Object.assign({}, ...merged.filter(isSchema).map((s) => s.properties));
    const required = merged.filter(isSchema).flatMap((s) => (Array.isArray(s.required) ? s.required : []));
    const { allOf: _allOf, ...rest } = node;
    return fill({ ...Object.assign({}, ...merged), ...rest, properties, required }, key, depth, ctx);
  }
  let type = node.type;
  if (Array.isArray(type)) type = choose(type, (t) => t === "null", depth, rand);
  if (type === undefined)
    type = isSchema(node.properties) ? "object" : node.items !== undefined ? "array" : "string";
  switch (type) {
    case "null":
      return null;
    case "boolean":
      return rand() < (/improved/i.test(key) ? 0.7 : 0.5);
    case "integer":
    case "number":
      return fillNumber(node, key, type === "integer", rand);
    case "array":
      return fillArray(node, key, depth, ctx);
    case "object":
      return fillObject(node, depth, ctx);
    default:
      return fillString(node, key, rand);
  }
}

function fillString(node: Schema, key: string, rand: Random): string {
  let text = (typeof node.format === "string" ? formatted(node.format, rand) : null) ?? stringFor(key, rand);
  const min = numberOr(node.minLength, 0);
  while (text.length < min) text = `${text} ${pick(rand, NOUNS)}`;
  return text.slice(0, numberOr(node.maxLength, Number.POSITIVE_INFINITY));
}

function fillNumber(node: Schema, key: string, integer: boolean, rand: Random): number {
  const step = integer ? 1 : 0.01;
  let lo = numberOr(node.minimum, Number.NaN);
  let hi = numberOr(node.maximum, Number.NaN);
  if (typeof node.exclusiveMinimum === "number") lo = node.exclusiveMinimum + step;
  if (typeof node.exclusiveMaximum === "number") hi = node.exclusiveMaximum - step;
  // A judge score without bounds still reads best as a 1..10 grade.
  const span = /score/i.test(key) ? 9 : 10;
  if (Number.isNaN(lo)) lo = Number.isNaN(hi) ? (span === 9 ? 1 : 0) : hi - span;
  if (Number.isNaN(hi)) hi = lo + span;
  if (integer) {
    const a = Math.ceil(lo);
    return a + Math.floor(rand() * (Math.floor(hi) - a + 1));
  }
  const value = Math.round((lo + rand() * (hi - lo)) * 100) / 100;
  return Math.min(hi, Math.max(lo, value));
}

function fillArray(node: Schema, key: string, depth: number, ctx: Context): unknown[] {
  const prefix = Array.isArray(node.prefixItems) ? node.prefixItems : [];
  const min = Math.max(numberOr(node.minItems, 0), prefix.length);
  const max = node.items === false ? prefix.length : numberOr(node.maxItems, Number.POSITIVE_INFINITY);
  const wanted = depth >= MAX_DEPTH ? 0 : 1 + Math.floor(ctx.rand() * 3);
  const count = Math.min(max, Math.max(min, wanted));
  const items: unknown[] = [];
  for (let i = 0; i < count; i++) {
    items.push(fill(i < prefix.length ? prefix[i] : node.items, key, depth + 1, ctx));
  }
  return items;
}

function fillObject(node: Schema, depth: number, ctx: Context): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const required = new Set(Array.isArray(node.required) ? node.required : []);
  const properties = isSchema(node.properties) ? node.properties : {};
  for (const [name, schema] of Object.entries(properties)) {
    if (required.has(name) || ctx.rand() < 0.5) out[name] = fill(schema, name, depth + 1, ctx);
  }
  // A record (additionalProperties as a schema, no fixed keys) gets a couple of invented keys.
  if (Object.keys(properties).length === 0 && isSchema(node.additionalProperties)) {
    const count = depth >= MAX_DEPTH ? 0 : 1 + Math.floor(ctx.rand() * 2);
    for (let i = 0; i < count; i++) {
      const name = `${pick(ctx.rand, NOUNS)}_${i + 1}`;
      out[name] = fill(node.additionalProperties, name, depth + 1, ctx);
    }
  }
  return out;
}

/**
 * A value valid against a strict JSON Schema (the structured-outputs subset), the same for the same
 * schema and seedText, and different for another seedText.
 */
export function fillSchema(schema: unknown, seedText: string): unknown {
  return fill(schema, "", 0, { root: schema, rand: seededRandom(seedText) });
}

/** A deterministic sentence or two, for answers that have no schema. */
export function fillText(seedText: string): string {
  const rand = seededRandom(seedText);
  return `${sentence(rand)} ${sentence(rand)}`;
}
