import { RunConfig, type RunConfigInput } from "../evolution/config.ts";
import { InvalidInputError } from "../ports/errors.ts";
import type { ShardRecord, StateStore } from "../ports/state-store.ts";

/** Merges run settings: deployment or CLI defaults, then the run's own run.json. */
export function resolveRunConfig(defaults: RunConfigInput, runJson: unknown): RunConfig {
  const overrides = runJson === undefined ? {} : runJson;
  if (typeof overrides !== "object" || overrides === null || Array.isArray(overrides)) {
    throw new InvalidInputError("run.json must hold a JSON object");
  }
  const result = RunConfig.safeParse({ ...defaults, ...overrides });
  if (!result.success) {
    const reasons = result.error.issues
      .map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`)
      .join("; ");
    throw new InvalidInputError(`invalid run settings: ${reasons}`);
  }
  return result.data;
}

/** The settings frozen into a shard when it was ingested. */
export function shardConfig(shard: ShardRecord): RunConfig {
  return RunConfig.parse(shard.config);
}

/** Settings of the shards a store has served, by `run` and `shard`, per store (a store is one table or file). */
const settingsByStore = new WeakMap<StateStore, Map<string, RunConfig>>();
const SHARD_SETTINGS_KEPT = 256;

/**
 * A shard's settings, or null when the shard does not exist. They are fixed at ingest, so a process reads
 * the shard record once for them, not on every stage message (a DynamoDB read each, on AWS). Frozen: every
 * message of the shard shares the one object.
 */
export async function loadShardConfig(
  state: StateStore,
  run: string,
  shard: string,
): Promise<RunConfig | null> {
  let known = settingsByStore.get(state);
  if (known === undefined) {
    known = new Map();
    settingsByStore.set(state, known);
  }
  const id = `${run}\n${shard}`;
  const cached = known.get(id);
  if (cached !== undefined) return cached;
  const record = await state.getShard(run, shard);
  if (record === null) return null;
  const config = deepFreeze(shardConfig(record));
  if (known.size >= SHARD_SETTINGS_KEPT) known.clear();
  known.set(id, config);
  return config;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

/** A Map key for two names, e.g. (run, shard) or (run, model); no separator can make two pairs collide. */
export const pairKey = (a: string, b: string): string => JSON.stringify([a, b]);

/** Names in the storage layout (ARCHITECTURE.md). */
export const layout = {
  runJson: (run: string) => `seeds/${run}/run.json`,
  evolved: (run: string, shard: string) => `evolved/${run}/${shard}.jsonl`,
  lineage: (run: string, shard: string) => `evolved/${run}/${shard}.lineage.jsonl`,
  errors: (run: string, shard: string) => `errors/${run}/${shard}.jsonl`,
  report: (run: string, shard: string) => `reports/${run}/${shard}.json`,
  reportHtml: (run: string, shard: string) => `reports/${run}/${shard}.html`,
  imageCache: (run: string) => `work/${run}/images/`,
  /**
   * Batch mode: the bodies of requests queued together (JSON Lines, one `{custom_id, body}` each), written
   * when they are queued, read when their batch input is built.
   */
  batchBodies: (run: string, shard: string, id: string) =>
    `work/${run}/batches/${shard}/requests/${id}.jsonl`,
  /** Batch mode: the enqueued-token limits the provider refused a batch for, by model (JSON). */
  batchLimits: (run: string) => `work/${run}/batches/limits.json`,
};

/** `seeds/<run>/<name>.json[l]` → run and shard names, or null for any other key. */
export function parseSeedKey(key: string): { run: string; shard: string } | null {
  const match = /^seeds\/([^/]+)\/(.+)\.(jsonl|json)$/.exec(key);
  if (!match || match[2] === "run") return null;
  const [, run, shard] = match;
  if (!run || !shard) return null;
  return { run, shard: shard.replaceAll("/", "__") };
}

/** A sample's key within its shard: its line, zero-padded so keys sort in input order. */
export const sampleKey = (line: number): string => String(line).padStart(9, "0");
/** The prefix of a sample's item ids (`s17-r2-i3`): safe as a JSON schema property name. */
export const samplePrefix = (line: number): string => `s${line}`;
