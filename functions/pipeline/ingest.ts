import { parseRecord } from "../evolution/formats.ts";
import { resolveImageKey } from "../evolution/image-path.ts";
import { itemId } from "../evolution/rounds.ts";
import type { Sample } from "../evolution/schemas.ts";
import { readShard, type ShardEntry } from "../evolution/shard-reader.ts";
import type { EvolveMessage, IngestMessage, WorkQueue } from "../ports/messages.ts";
import { type SampleRecord, type ShardRecord, zeroUsage } from "../ports/state-store.ts";
import type { StageDeps, StageInput, StageResult } from "./deps.ts";
import { layout, resolveRunConfig, sampleKey, samplePrefix, shardConfig } from "./shard-config.ts";

const RAW_LIMIT = 2_000;

/** Where an entry sits, for error messages: a line of JSON Lines, an element of a JSON array. */
export const locate = (entry: Pick<ShardEntry, "line" | "index">): string =>
  entry.index === undefined ? `line ${entry.line}` : `element ${entry.index} (line ${entry.line})`;

async function readRunJson(deps: StageDeps, run: string): Promise<unknown> {
  const key = layout.runJson(run);
  if (!(await deps.blobs.exists(key))) return undefined;
  const text = new TextDecoder().decode(await deps.blobs.get(key));
  try {
    return JSON.parse(text);
  } catch (error) {
    return { invalidJson: error instanceof Error ? error.message : String(error) };
  }
}

/**
 * Registers a shard and its samples, rejecting invalid lines with their reason. Ingest streams the shard and
 * fans samples out in batches (written first, then sent) rather than returning them, so memory stays bounded
 * whatever the shard size. Rerunning it resumes: existing samples are left as they are.
 */
/** Time kept in hand when a continuation is sent: the batch in progress and the sends must still fit. */
const CONTINUATION_MARGIN_MS = 90_000;

export async function ingestShard(
  input: StageInput<IngestMessage>,
  deps: StageDeps & { readonly queue: WorkQueue },
): Promise<StageResult> {
  const { run, key } = input.message;
  const size = await deps.blobs.size(key);
  if (size === null) return { next: [], outcome: "shard gone" };
  const etag = input.message.etag ?? `size-${size}`;
  const registered = await registerShard(deps, { ...input.message, etag }, key);
  const { shard, record: shardRecord } = registered;
  if (shardRecord.ingested) {
    const lost = shardRecord.pending === 0 && !shardRecord.finalized;
    return { next: lost ? [{ kind: "finalize", run, shard }] : [], outcome: "already ingested" };
  }
  const config = shardConfig(shardRecord);
  const imageRoot = config.imageRoot ?? "";
  const refused = shardRefusal(size, config.maxShardBytes);
  if (refused !== null) {
    // Not read at all: zero lines, and finalize writes a report and an errors file that give the reason.
    const pending = await deps.state.completeIngest(run, shard, 0);
    deps.logger.warn("shard refused", { run, shard, reason: refused });
    return { next: pending === 0 ? [{ kind: "finalize", run, shard }] : [], outcome: "refused" };
  }

  const batchSize = deps.ingestBatchSize ?? 100;
  const from = input.message.from ?? 1;
  const seenIds = new Map<string, number>();
  let batch: SampleRecord[] = [];
  let ordinal = 0;
  const flush = async () => {
    if (batch.length === 0) return;
    await deps.state.putSamples(batch);
    deps.faults?.point("ingest:after-batch-write");
    const evolve: EvolveMessage[] = batch
      .filter((r) => r.status === "INGESTED")
      .map((r) => ({ kind: "evolve", run, shard, sample: r.key, round: 1 }));
    await deps.queue.send(evolve);
    batch = [];
  };

  for await (const entry of readShard(deps.blobs.stream(key), { maxLineBytes: config.maxLineBytes })) {
    ordinal += 1;
    const record = toRecord(entry, ordinal, run, shard, imageRoot, seenIds, deps.clock.now());
    // Records before `from` were written by an earlier invocation; they are read again only to know their ids.
    if (ordinal < from) continue;
    batch.push(record);
    if (batch.length >= batchSize) {
      await flush();
      if (deps.remainingMs && deps.remainingMs() < CONTINUATION_MARGIN_MS) {
        deps.logger.info("shard continues in a new invocation", { run, shard, from: ordinal + 1 });
        return {
          next: [{ ...input.message, shard, etag, from: ordinal + 1 }],
          outcome: `ingesting:${ordinal}`,
        };
      }
    }
  }
  await flush();
  const pending = await deps.state.completeIngest(run, shard, ordinal);
  deps.logger.info("shard ingested", { run, shard, lines: ordinal });
  return { next: pending === 0 ? [{ kind: "finalize", run, shard }] : [], outcome: `ingested:${ordinal}` };
}

/** Why a shard of `size` bytes is not read, or null when it is within `maxShardBytes`. */
export function shardRefusal(size: number, maxShardBytes: number): string | null {
  if (size <= maxShardBytes) return null;
  return `shard refused: ${size} bytes exceeds the ${maxShardBytes}-byte shard limit (maxShardBytes); no line was read`;
}

/**
 * Registers the shard once per uploaded object: the same key and ETag (a redelivered event, or the same file
 * dropped twice) finds the existing shard; the same key with new content becomes a new shard `<name>.<etag>`.
 */
async function registerShard(
  deps: StageDeps,
  message: IngestMessage & { etag: string },
  key: string,
): Promise<{ shard: string; record: ShardRecord }> {
  const { run } = message;
  const existing = await deps.state.getShard(run, message.shard);
  // The same upload again (a redelivered event, a continuation): its settings were frozen when it was created.
  if (existing && existing.etag === message.etag) return { shard: message.shard, record: existing };
  const shard =
    existing && existing.etag !== message.etag && existing.key === key
      ? `${message.shard}.${message.etag.replace(/[^A-Za-z0-9]/g, "").slice(0, 12)}`
      : message.shard;
  const runJson = await readRunJson(deps, run);
  const config = resolveRunConfig(deps.defaults, runJson);
  const withRoot = { ...config, imageRoot: config.imageRoot ?? key.slice(0, key.lastIndexOf("/") + 1) };
  const now = deps.clock.now();
  const { shard: record } = await deps.state.createShard({
    run,
    shard,
    key,
    etag: message.etag,
    pending: 1,
    ingested: false,
    finalized: false,
    lines: 0,
    config: withRoot,
    createdAt: now,
    updatedAt: now,
  });
  return { shard, record };
}

function toRecord(
  entry: ShardEntry,
  ordinal: number,
  run: string,
  shard: string,
  imageRoot: string,
  seenIds: Map<string, number>,
  now: number,
): SampleRecord {
  const base: SampleRecord = {
    run,
    shard,
    key: sampleKey(ordinal),
    status: "REJECTED",
    round: 0,
    version: 0,
    line: entry.line,
    sample: null,
    versions: [],
    rounds: [],
    pending: null,
    attempts: 0,
    error: null,
    raw: entry.raw.length > RAW_LIMIT ? `${entry.raw.slice(0, RAW_LIMIT)}…` : entry.raw,
    usage: zeroUsage(),
    updatedAt: now,
  };
  const where = locate(entry);
  if ("error" in entry)
    // The reader's errors already say where (line N, or element N (line L)).
    return { ...base, error: entry.error };
  const parsed = parseRecord(entry.value, entry.line);
  if (!parsed.ok) return { ...base, error: `${where}: ${parsed.error}` };
  const first = seenIds.get(parsed.sample.id);
  if (first !== undefined)
    return { ...base, error: `${where}: duplicate id "${parsed.sample.id}" (first at ${first})` };
  seenIds.set(parsed.sample.id, entry.line);
  for (const path of parsed.sample.images) {
    const resolved = resolveImageKey(imageRoot, path);
    if (!resolved.ok) return { ...base, error: `${where}: image: ${resolved.error}` };
  }
  const sample = withItemIds(parsed.sample, samplePrefix(ordinal));
  const seed = { round: 0, direction: null, from: null, items: sample.items };
  // Text-only rows are not evolved (METHOD.md §1): they pass through unchanged.
  const textOnly = sample.images.length === 0;
  return {
    ...base,
    status: textOnly ? "PASSED_THROUGH" : "INGESTED",
    sample,
    versions: [seed],
    raw: null,
    error: null,
  };
}

/** Seed items get ids that are safe as JSON schema keys, whatever the input ids look like. */
function withItemIds(sample: Sample, prefix: string): Sample {
  return {
    ...sample,
    items: sample.items.map((item, index) => ({ ...item, id: itemId(prefix, 0, index), parent: null })),
  };
}
