import { InvalidInputError } from "../../ports/errors.ts";
import { type Random, seededRandom } from "./schema-fill.ts";

/** Faults drawn at random per request, by weight. */
export const RANDOM_FAULT_KINDS = [
  "rate_limit",
  "server_error",
  "unavailable",
  "slow",
  "reset",
  "malformed_json",
  "refusal",
  "length",
  "schema_violation",
  "judge_omits_verdict",
] as const;
export type RandomFaultKind = (typeof RANDOM_FAULT_KINDS)[number];
/** Every fault the simulator can inject; "storm" is a 429 for every request inside a storm window. */
export type FaultKind = RandomFaultKind | "storm";
export const FAULT_KINDS: readonly FaultKind[] = [...RANDOM_FAULT_KINDS, "storm"];

export interface StormOptions {
  /** A storm starts every `everyMs` (the first at the simulator's start)... */
  readonly everyMs: number;
  /** ...and lasts this long: every request inside it gets a 429. */
  readonly durationMs: number;
}

export interface FaultOptions {
  /** Share of first tries of a request that get a fault, 0..1; a retry of the same request gets rate/4. */
  readonly rate: number;
  /** Relative weights; every kind weighs 1 when absent. A kind missing from a given mix weighs 0. */
  readonly mix?: Partial<Record<RandomFaultKind, number>>;
  readonly seed?: number;
  /** How long a "slow" answer hangs before it is sent. Default 30 000 ms. */
  readonly slowMs?: number;
  readonly storms?: StormOptions;
  /**
   * Share of faulted requests that get the same fault on every later try too: the request the model always
   * gets wrong, or the call that keeps failing. Default 0 (later tries fault at rate/4, independently).
   */
  readonly persistentShare?: number;
}

export interface FaultDecision {
  readonly kind: FaultKind | null;
  /** For rate_limit and storm: the wait hint sent in retry-after. */
  readonly retryAfterMs: number;
  /** A seeded source for shaping the faulty answer (which key to drop, which malformed form). */
  readonly rand: Random;
}

/** Parses "rate_limit=2,reset=1" into weights; unknown kinds and bad numbers are errors. */
export function parseFaultMix(text: string): Partial<Record<RandomFaultKind, number>> {
  const mix: Partial<Record<RandomFaultKind, number>> = {};
  for (const part of text
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean)) {
    const [name, raw] = part.split("=");
    const kind = RANDOM_FAULT_KINDS.find((k) => k === name?.trim());
    const weight = raw === undefined ? 1 : Number(raw);
    if (kind === undefined) {
      throw new InvalidInputError(`unknown fault kind "${name}" (one of ${RANDOM_FAULT_KINDS.join(", ")})`);
    }
    if (!Number.isFinite(weight) || weight < 0) throw new InvalidInputError(`bad weight for ${kind}: ${raw}`);
    mix[kind] = weight;
  }
  return mix;
}

/**
 * Chooses faults from (seed, request digest, how many times that digest was seen), so a run is
 * reproducible and the same request asked again is less likely to fail than on its first try.
 */
export class FaultPlan {
  readonly slowMs: number;
  readonly #options: FaultOptions;
  readonly #weights: readonly (readonly [RandomFaultKind, number])[];
  readonly #total: number;
  readonly #seen = new Map<string, number>();
  readonly #persistent = new Map<string, RandomFaultKind>();

  constructor(options: FaultOptions) {
    if (!(options.rate >= 0 && options.rate <= 1)) throw new InvalidInputError("fault rate must be in 0..1");
    const share = options.persistentShare ?? 0;
    if (!(share >= 0 && share <= 1)) throw new InvalidInputError("persistentShare must be in 0..1");
    if (options.storms && !(options.storms.everyMs > 0 && options.storms.durationMs >= 0)) {
      throw new InvalidInputError("storms need everyMs > 0 and durationMs >= 0");
    }
    this.#options = options;
    this.slowMs = options.slowMs ?? 30_000;
    const mix = options.mix;
    this.#weights = RANDOM_FAULT_KINDS.map(
      (kind) => [kind, mix === undefined ? 1 : (mix[kind] ?? 0)] as const,
    );
    this.#total = this.#weights.reduce((sum, [, w]) => sum + w, 0);
  }

  /** The fault for this try of `digest` (null: answer normally); `elapsedMs` since the simulator started. */
  decide(digest: string, elapsedMs: number): FaultDecision {
    const tries = this.#seen.get(digest) ?? 0;
    this.#seen.set(digest, tries + 1);
    const rand = seededRandom(`fault:${this.#options.seed ?? 0}:${digest}:${tries}`);
    const storms = this.#options.storms;
    if (storms !== undefined) {
      const into = elapsedMs % storms.everyMs;
      if (into < storms.durationMs) {
        // The hint points at the end of the storm, as a provider's limiter would.
        return { kind: "storm", retryAfterMs: Math.max(100, Math.ceil(storms.durationMs - into)), rand };
      }
    }
    const retryAfterMs = Math.round(100 + rand() * 1900);
    const stuck = this.#persistent.get(digest);
    if (stuck !== undefined) return { kind: stuck, retryAfterMs, rand };
    const p = tries === 0 ? this.#options.rate : this.#options.rate / 4;
    if (this.#total <= 0 || rand() >= p) return { kind: null, retryAfterMs, rand };
    let pick = rand() * this.#total;
    let kind: RandomFaultKind = "server_error";
    for (const [k, w] of this.#weights) {
      if (w <= 0) continue;
      kind = k;
      pick -= w;
      if (pick < 0) break;
    }
    if (tries === 0 && rand() < (this.#options.persistentShare ?? 0)) this.#persistent.set(digest, kind);
    return { kind, retryAfterMs, rand };
  }
}

/** Text that is not JSON but looks like what models send instead: prose around it, fences, quotes. */
export function malformedJson(json: string, rand: Random): string {
  const forms = [
    () => `Sure! Here is the JSON you asked for:\n${json}`,
    () => `\`\`\`json\n${json}\n\`\`\``,
    () => json.replaceAll('"', "'"),
    () => `${json.slice(0, -1)},}`,
  ];
  const form = forms[Math.floor(rand() * forms.length)] ?? forms[0];
  return form === undefined ? `${json}}` : form();
}

type Json = Record<string, unknown>;

const isObject = (value: unknown): value is Json =>
  typeof value === "object" && value !== null && !Array.isArray(value);

/** Every object inside `value`, depth first. */
function objectsIn(value: unknown, out: Json[] = []): Json[] {
  if (Array.isArray(value)) for (const item of value) objectsIn(item, out);
  else if (isObject(value)) {
    out.push(value);
    for (const child of Object.values(value)) objectsIn(child, out);
  }
  return out;
}

/** A value of another JSON type than `value`'s, so any typed schema rejects it. */
function wrongType(value: unknown): unknown {
  if (typeof value === "string") return 42;
  if (typeof value === "number") return "high";
  if (typeof value === "boolean") return "yes";
  if (value === null) return 7;
  if (Array.isArray(value)) return "none";
  return ["unexpected"];
}

/**
 * Breaks a parsed answer in place so it still parses but violates the strict schema it was filled from:
 * in strict schemas every property is required, so dropping one or changing its type always breaks it.
 */
export function violateSchema(value: unknown, rand: Random): unknown {
  const objects = objectsIn(value).filter((o) => Object.keys(o).length > 0);
  const target = objects[Math.floor(rand() * objects.length)];
  if (target === undefined) return 42;
  const keys = Object.keys(target);
  const key = keys[Math.floor(rand() * keys.length)] ?? keys[0];
  if (key === undefined) return value;
  if (rand() < 0.5) delete target[key];
  else target[key] = wrongType(target[key]);
  return value;
}

/**
 * The route (property names) to the deepest object schema whose required keys all share one object
 * schema: a map keyed by ids, like the judge's `verdicts`. Null when the schema has none.
 */
export function dynamicKeysRoute(schema: unknown): string[] | null {
  const best: { route: string[] | null } = { route: null };
  const walk = (node: unknown, route: string[]) => {
    if (!isObject(node) || !isObject(node.properties)) return;
    const required = Array.isArray(node.required) ? node.required.filter((k) => typeof k === "string") : [];
    const shapes = required.map((key) => (isObject(node.properties) ? node.properties[key] : undefined));
    const first = JSON.stringify(shapes[0]);
    const mapLike =
      shapes.length > 0 &&
      shapes.every((s) => isObject(s) && s.type === "object" && JSON.stringify(s) === first);
    if (mapLike && (best.route === null || route.length > best.route.length)) best.route = route;
    for (const [name, child] of Object.entries(node.properties)) walk(child, [...route, name]);
  };
  walk(schema, []);
  return best.route;
}

/** Drops one key of the object at `route` (a judge answer missing one verdict); false if there is none. */
export function omitDynamicKey(value: unknown, route: readonly string[], rand: Random): boolean {
  let node: unknown = value;
  for (const name of route) node = isObject(node) ? node[name] : undefined;
  if (!isObject(node)) return false;
  const keys = Object.keys(node);
  const key = keys[Math.floor(rand() * keys.length)];
  if (key === undefined) return false;
  delete node[key];
  return true;
}
