import { createHash } from "node:crypto";
import type { RunConfig } from "../evolution/config.ts";
import { parseRecord } from "../evolution/formats.ts";
import { resolveImageKey } from "../evolution/image-path.ts";
import { itemId } from "../evolution/rounds.ts";
import type { Sample } from "../evolution/schemas.ts";
import { readShard, type ShardEntry } from "../evolution/shard-reader.ts";
import { MmevolError } from "../ports/errors.ts";
import type { EvolveMessage, IngestMessage, WorkQueue } from "../ports/messages.ts";
import { type SampleRecord, type ShardRecord, zeroUsage } from "../ports/state-store.ts";
import type { StageDeps, StageInput, StageResult } from "./deps.ts";
import { type IdHash, IdIndex } from "./id-index.ts";
import { layout, resolveRunConfig, sampleKey, samplePrefix, shardConfig } from "./shard-config.ts";

const RAW_LIMIT = 2_000;

/** Where an entry sits, for error messages: a line of JSON Lines, an element of a JSON array. */
export const locate = (entry: Pick<ShardEntry, "line" | "index">): string =>
  entry.index === undefined ? `line ${entry.line}` : `element ${entry.index} (line ${entry.line})`;

async function readRunJson(deps: Pick<StageDeps, "blobs">, run: string): Promise<unknown> {
  const key = layout.runJson(run);
  if (!(await deps.blobs.exists(key))) return undefined;
  const text = new TextDecoder().decode(await deps.blobs.get(key));
  try {
    return JSON.parse(text);
  } catch (error) {
    return { invalidJson: error instanceof Error ? error.message : String(error) };
  }
}

export interface IngestOptions {
  /** How ids are hashed for duplicate detection; tests give a colliding one to prove matches are confirmed. */
  readonly idHash?: IdHash;
}

/** Time kept in hand when a continuation is sent: the batch in progress and the sends must still fit. */
const CONTINUATION_MARGIN_MS = 90_000;

/**
 * Registers a shard and its samples, rejecting invalid lines with their reason. Ingest streams the shard and
 * fans samples out in batches (written first, then sent) rather than returning them, so memory stays bounded
 * whatever the shard size. Rerunning it resumes: existing samples are left as they are.
 */
export async function ingestShard(
  input: StageInput<IngestMessage>,
  deps: StageDeps & { readonly queue: WorkQueue },
  options: IngestOptions = {},
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

  const batchSize = deps.ingestBatchSize ?? 25;
  const from = input.message.from ?? 1;
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
  /** The record of an earlier line: still in the batch (the lines just before this one), else written. */
  const earlierRecord = async (earlier: number): Promise<SampleRecord> => {
    const key = sampleKey(earlier);
    const held = batch[earlier - (ordinal - batch.length)];
    if (held?.key === key) return held;
    const stored = await deps.state.getSample(run, shard, key);
    if (stored === null) throw new EarlierSampleMissingError(run, shard, key);
    return stored;
  };
  const cutIds = new Map<number, string>();
  /** The line of an earlier record whose id hashes like `id`, when its id really is `id`. */
  const firstLine = async (earlier: number, id: string): Promise<number | undefined> => {
    const record = await earlierRecord(earlier);
    return registeredId(record, cutIds.get(earlier)) === id ? record.line : undefined;
  };
  const context: LineContext = {
    run,
    shard,
    imageRoot,
    ids: new IdIndex(options.idHash === undefined ? {} : { hash: options.idHash }),
    cutIds,
    firstLine,
  };

  for await (const entry of readShard(deps.blobs.stream(key), { maxLineBytes: config.maxLineBytes })) {
    ordinal += 1;
    const record = await toRecord(entry, ordinal, context, deps.clock.now());
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
 * The settings a shard of this run, read from `key`, is created with (the run's defaults and its run.json), and
 * which of them the run sets itself rather than leaving to their defaults (`given`).
 */
export async function shardSettings(
  deps: Pick<StageDeps, "blobs" | "defaults">,
  run: string,
  key: string,
): Promise<{ config: RunConfig & { imageRoot: string }; given: Set<string> }> {
  const runJson = await readRunJson(deps, run);
  const config = resolveRunConfig(deps.defaults, runJson);
  const own = typeof runJson === "object" && runJson !== null && !Array.isArray(runJson) ? runJson : {};
  return {
    config: { ...config, imageRoot: config.imageRoot ?? key.slice(0, key.lastIndexOf("/") + 1) },
    given: new Set([...Object.keys(deps.defaults), ...Object.keys(own)]),
  };
}

/**
 * Registers the shard once per uploaded object: the same key and ETag (a redelivered event, or the same file
 * dropped twice) finds the existing shard; the same key with new content becomes a new shard `<name>.<etag>`;
 * another key with the same name (`x.json` next to `x.jsonl`, `a/x.jsonl` next to `a__x.jsonl`) a shard
 * `<name>.<hash of the key>`, where it used to find the first file's shard and its own lines went nowhere.
 */
async function registerShard(
  deps: StageDeps,
  message: IngestMessage & { etag: string },
  key: string,
): Promise<{ shard: string; record: ShardRecord }> {
  const { run } = message;
  const existing = await deps.state.getShard(run, message.shard);
  const ours = (record: ShardRecord) => record.key === key && record.etag === message.etag;
  // The same upload again (a redelivered event, a continuation): its settings were frozen when it was created.
  if (existing && ours(existing)) return { shard: message.shard, record: existing };
  const byKey = `${message.shard}.${createHash("sha256").update(key).digest("hex").slice(0, 8)}`;
  const first =
    existing === null
      ? message.shard
      : existing.key === key
        ? `${message.shard}.${message.etag.replace(/[^A-Za-z0-9]/g, "").slice(0, 12)}`
        : byKey;
  const { config: withRoot } = await shardSettings(deps, run, key);
  const now = deps.clock.now();
  // Another file may take the name between the look above and this create (two uploads at once): the shard
  // created is then not ours, and this file takes its own by its key.
  for (const shard of new Set([first, byKey])) {
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
    if (ours(record)) return { shard, record };
  }
  throw new MmevolError(`seed file ${key}: shard ${message.shard} and ${byKey} are taken by other files`, {
    retryable: true,
  });
}

/** What the records of one shard share while it is read. */
interface LineContext {
  readonly run: string;
  readonly shard: string;
  readonly imageRoot: string;
  /**
   * The id of every record that got past parsing, as a hash and the record's ordinal: a few bytes an id
   * whatever the shard's size, where a map of the id strings grew with it. A hash match is confirmed against
   * the earlier record, so a distinct id that happens to share a hash is never rejected.
   */
  readonly ids: IdIndex;
  /**
   * Ids of the few registered records the store cannot give their id back for: rejected for their image (so no
   * sample is stored) with a line longer than the `raw` kept. Keyed by ordinal.
   */
  readonly cutIds: Map<number, string>;
  readonly firstLine: (earlier: number, id: string) => Promise<number | undefined>;
}

async function toRecord(
  entry: ShardEntry,
  ordinal: number,
  context: LineContext,
  now: number,
): Promise<SampleRecord> {
  // The reader's errors already say where (line N, or element N (line L)).
  if ("error" in entry) return makeRecord(context, entry, ordinal, now, null, entry.error);
  const parsed = parseRecord(entry.value, entry.line);
  if (!parsed.ok) return makeRecord(context, entry, ordinal, now, null, `${locate(entry)}: ${parsed.error}`);
  const { sample } = parsed;
  const first = await context.ids.findOrAdd(sample.id, ordinal, context.firstLine);
  if (first !== undefined) {
    const error = `${locate(entry)}: duplicate id "${sample.id}" (first at ${first})`;
    return makeRecord(context, entry, ordinal, now, null, error);
  }
  for (const path of sample.images) {
    const resolved = resolveImageKey(context.imageRoot, path);
    if (!resolved.ok) {
      // The id stays registered (a later line with it is a duplicate of this one), so it must be readable back.
      if (entry.raw.length > RAW_LIMIT) context.cutIds.set(ordinal, sample.id);
      return makeRecord(context, entry, ordinal, now, null, `${locate(entry)}: image: ${resolved.error}`);
    }
  }
  giveItemIds(sample, samplePrefix(ordinal));
  return makeRecord(context, entry, ordinal, now, sample, null);
}

/** A rejected record (no sample: its raw line and the reason), or an accepted one with its seed version. */
function makeRecord(
  context: LineContext,
  entry: ShardEntry,
  ordinal: number,
  now: number,
  sample: Sample | null,
  error: string | null,
): SampleRecord {
  // Text-only rows are not evolved (METHOD.md §1): they pass through unchanged.
  const status = sample === null ? "REJECTED" : sample.images.length === 0 ? "PASSED_THROUGH" : "INGESTED";
  return {
    run: context.run,
    shard: context.shard,
    key: sampleKey(ordinal),
    status,
    round: 0,
    version: 0,
    line: entry.line,
    sample,
    versions: sample === null ? [] : [{ round: 0, direction: null, from: null, items: sample.items }],
    rounds: [],
    pending: null,
    attempts: 0,
    error,
    raw:
      sample !== null ? null : entry.raw.length > RAW_LIMIT ? `${entry.raw.slice(0, RAW_LIMIT)}…` : entry.raw,
    usage: zeroUsage(),
    updatedAt: now,
  };
}

/**
 * The id a registered record was read with: its sample's, or for one rejected for its image, the id in its raw
 * line (read again as it was the first time) or in `cut`.
 */
function registeredId(record: SampleRecord, cut: string | undefined): string {
  if (record.sample !== null) return record.sample.id;
  if (cut !== undefined) return cut;
  if (record.raw !== null) {
    try {
      const parsed = parseRecord(JSON.parse(record.raw), record.line);
      if (parsed.ok) return parsed.sample.id;
    } catch {
      // Not JSON: not a registered record; reported below.
    }
  }
  throw new EarlierSampleMissingError(record.run, record.shard, record.key, "holds no readable id");
}

/**
 * An earlier record that duplicate detection needs is missing or unreadable: the state is not what ingest wrote.
 * Retryable, so a redelivery reads the state again; if it stays so, the message ends in the dead-letter queue.
 */
export class EarlierSampleMissingError extends MmevolError {
  constructor(run: string, shard: string, key: string, what = "is missing") {
    super(`ingest of ${run}/${shard}: the earlier sample ${key} ${what}`, { retryable: true });
  }
}

/**
 * Seed items get ids that are safe as JSON schema keys, whatever the input ids look like. In place: the sample
 * was just built by `parseRecord` and nothing else holds it, so a copy of every item would only be garbage.
 */
function giveItemIds(sample: Sample, prefix: string): void {
  const { items } = sample;
  for (let index = 0; index < items.length; index++) {
    const item = items[index];
    if (item === undefined) continue;
    item.id = itemId(prefix, 0, index);
    item.parent = null;
  }
}
