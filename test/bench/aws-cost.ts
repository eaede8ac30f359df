// AWS cost benchmark: a generated shard through the synthesized stack on the emulator (moto), with the OpenAI
// simulator (1-3 s latency) as the model, and every request the functions make to S3, SQS, DynamoDB and
// Secrets Manager counted by a small proxy in front of moto; each Lambda invocation's wall time comes from the
// emulator's invocation log (EMU_INVOCATIONS_FILE, functions/runtime/emulated-handler.ts). The counts are priced
// with AWS list prices (AWS_PRICES) and set against the run's LLM cost: target AWS <= 2% of LLM.
// Run: node test/bench/aws-cost.ts [--samples 200] [--latency 1000-3000] [--mode online|batch] [--json out.json]
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import {
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import { z } from "zod";
import { DynamoStateStore } from "../../functions/adapters/aws/dynamodb-state-store.ts";
import { TABLE_SCHEMA } from "../../functions/adapters/aws/table-schema.ts";
import { startSimulator } from "../../functions/adapters/simulated/server.ts";
import { costOf, priceOf } from "../../functions/evolution/pricing.ts";
import { readStackTemplate, startEmulatedStack } from "../../functions/runtime/emulated-stack.ts";
import { ENV } from "../../functions/runtime/env.ts";
import { writeLlavaBenchShard } from "../helpers/bench-shard.ts";
import { ensureDynamoLocal } from "../helpers/dynamodb-local.ts";
import {
  BenchSetupError,
  benchTokenLimit,
  exitOnSetupError,
  type ForeignEndpoint,
  foreignEndpoint,
  NoLimitHeaderError,
  probeBatchApi,
  serverName,
} from "../helpers/endpoint.ts";
import { repoRoot } from "../helpers/files.ts";
import { ensureMoto, motoClientConfig } from "../helpers/moto.ts";
import { ReportCounts } from "../helpers/report.ts";
import { synthOnce } from "../helpers/synth-once.ts";

/**
 * AWS list prices used here: us-east-1, Lambda on arm64, DynamoDB on-demand after the November 2024 price cut,
 * S3 Standard. Source: the AWS pricing pages (aws.amazon.com/lambda/pricing, /sqs/pricing, /dynamodb/pricing/
 * on-demand, /s3/pricing, /secrets-manager/pricing, /cloudwatch/pricing), as of 2024-11. Free tiers ignored.
 */
export const AWS_PRICES = {
  asOf: "2024-11",
  source: "AWS public pricing pages, us-east-1 (Lambda arm64, SQS standard, DynamoDB on-demand, S3 Standard)",
  region: "us-east-1",
  lambdaPerGbSecond: 0.0000133334,
  lambdaPerMillionRequests: 0.2,
  sqsPerMillionRequests: 0.4,
  dynamodbPerMillionWriteUnits: 0.625,
  dynamodbPerMillionReadUnits: 0.125,
  s3PerThousandPutCopyPostList: 0.005,
  s3PerThousandGetHead: 0.0004,
  secretsManagerPerTenThousandCalls: 0.05,
  cloudwatchLogsPerGbIngested: 0.5,
  /** Monthly storage, for the "kept" figures only (not part of a run's cost). */
  dynamodbPerGbMonth: 0.25,
  dynamodbPitrPerGbMonth: 0.2,
  s3PerGbMonth: 0.023,
  /** EventBridge scheduled rules are free. */
  eventBridgeScheduled: 0,
} as const;

/** Scheduled functions' rates in the stack (lib/mmevol-stack.ts): invocations per 30-day month. */
const SCHEDULED_PER_MONTH: Readonly<Record<string, number>> = { Sweeper: 8_640, Batcher: 43_200 };
/** An idle SQS event source mapping long-polls with about 5 pollers, one 20 s ReceiveMessage each. */
const IDLE_RECEIVES_PER_QUEUE_MONTH = 5 * 3 * 60 * 24 * 30;
/** Per invocation, Lambda's own log events (JSON format: platform.start and platform.report), bytes. */
const PLATFORM_LOG_BYTES_PER_INVOCATION = 500;
/**
 * Typical latency of one call from a Lambda in the same region, ms (assumption, for the latency-adjusted
 * Lambda figure): DynamoDB single-item calls single-digit ms, transactions ~20, SQS ~15, S3 small objects ~20-30.
 */
const TYPICAL_AWS_MS: Readonly<Record<string, number>> = {
  dynamodb: 6,
  "dynamodb TransactWriteItems": 20,
  sqs: 15,
  s3: 20,
  "s3 PUT": 30,
  secretsmanager: 30,
};
const typicalMs = (service: string, op: string): number =>
  TYPICAL_AWS_MS[`${service} ${op.split(" ")[0]}`] ?? TYPICAL_AWS_MS[service] ?? 10;
/** Calls the event source mapping makes around an invocation, not the handler inside it. */
const POLLER_OPS = new Set(["sqs ReceiveMessage", "sqs DeleteMessageBatch"]);
/** CloudWatch Logs bills each event's bytes plus 26 bytes. */
const LOG_EVENT_OVERHEAD_BYTES = 26;

const say = (line: string) => process.stderr.write(`[aws-cost] ${line}\n`);
const round = (value: number, digits = 6) => +value.toFixed(digits);

// ---------------------------------------------------------------------------------------------------------
// The counting proxy

type AttributeValue = Record<string, unknown>;
type Item = Record<string, AttributeValue>;

const utf8 = (text: string) => Buffer.byteLength(text, "utf8");

/** DynamoDB's item size rules: names plus values; numbers ~1 byte per 2 digits + 1; lists/maps 3 + 1/element. */
function valueSize(value: unknown): number {
  if (typeof value !== "object" || value === null) return 0;
  const [[type, inner] = ["NULL", true]] = Object.entries(value);
  switch (type) {
    case "S":
      return utf8(String(inner));
    case "N":
      return numberSize(String(inner));
    case "B":
      return Math.floor((String(inner).replace(/=+$/, "").length * 3) / 4);
    case "BOOL":
    case "NULL":
      return 1;
    case "SS":
      return Array.isArray(inner) ? inner.reduce((n: number, s) => n + utf8(String(s)), 0) : 0;
    case "NS":
      return Array.isArray(inner) ? inner.reduce((n: number, s) => n + numberSize(String(s)), 0) : 0;
    case "BS":
      return Array.isArray(inner)
        ? inner.reduce((n: number, s) => n + Math.floor((String(s).replace(/=+$/, "").length * 3) / 4), 0)
        : 0;
    case "L":
      return Array.isArray(inner) ? 3 + inner.reduce((n: number, v) => n + 1 + valueSize(v), 0) : 3;
    case "M":
      return typeof inner === "object" && inner !== null
        ? 3 + Object.entries(inner).reduce((n, [k, v]) => n + utf8(k) + 1 + valueSize(v), 0)
        : 3;
    default:
      return 0;
  }
}

function numberSize(text: string): number {
  const digits = text.replace(/^-/, "").replace(".", "").replace(/^0+/, "").replace(/e.*$/i, "");
  return Math.ceil(Math.max(1, digits.length) / 2) + 1;
}

const itemSize = (item: Item): number =>
  Object.entries(item).reduce((n, [name, value]) => n + utf8(name) + valueSize(value), 0);

const attr = (item: Item | undefined, name: string): string | undefined => {
  const value = item?.[name];
  return value === undefined ? undefined : JSON.stringify(value);
};

/** What the proxy remembers of an item: its size and whether (under which key) it is in the GSI. */
interface ItemInfo {
  readonly bytes: number;
  readonly gsi: string | null;
}

function infoOf(item: Item): ItemInfo {
  const gpk = attr(item, TABLE_SCHEMA.gsi1.partitionKey);
  const gsk = attr(item, TABLE_SCHEMA.gsi1.sortKey);
  return { bytes: itemSize(item), gsi: gpk !== undefined && gsk !== undefined ? `${gpk}|${gsk}` : null };
}

/** The kind of item a key names (table-schema.ts), for the breakdown. */
function itemKind(key: Item | undefined): string {
  const pk = String(key?.[TABLE_SCHEMA.partitionKey]?.S ?? "");
  const sk = String(key?.[TABLE_SCHEMA.sortKey]?.S ?? "");
  if (pk.startsWith("SHARD#")) {
    if (sk === "META") return "shard";
    if (sk.startsWith("SAMPLE#")) return "sample";
    return `shard/${sk.split("#")[0] ?? sk}`;
  }
  return pk.split("#")[0] || "other";
}

interface Tally {
  requests: number;
  /** SQS: billed requests (64 KB chunks); DynamoDB: read units; S3: requests. */
  readUnits: number;
  writeUnits: number;
  billed: number;
  dollars: number;
  /** Summed time moto took to answer (the emulator's latency, not AWS's). */
  ms: number;
}
const emptyTally = (): Tally => ({ requests: 0, readUnits: 0, writeUnits: 0, billed: 0, dollars: 0, ms: 0 });

interface Forwarded {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  readonly ms: number;
}

type Service = "sqs" | "dynamodb" | "s3" | "secretsmanager" | "other";

/** Everything counted, by service, by operation, by caller (the function) and by resource. */
class Counts {
  readonly byService = new Map<Service, Tally>();
  readonly byOp = new Map<string, Tally>();
  readonly byResource = new Map<string, Tally>();
  readonly byCaller = new Map<string, Map<Service, Tally>>();
  /** `<caller>|<service> <op>` */
  readonly byCallerOp = new Map<string, Tally>();
  /** `<caller> <service> <resource> <op>`: where each dollar went, at the finest grain. */
  readonly byDetail = new Map<string, Tally>();
  emptyReceives = 0;
  emptyReceivesByCaller = new Map<string, number>();

  add(
    service: Service,
    caller: string,
    op: string,
    resource: string,
    units: Partial<Omit<Tally, "requests" | "dollars">> & { requests?: number },
  ): void {
    const ms = units.ms ?? 0;
    const dollars = priceOfUnits(service, op, units);
    const apply = (tally: Tally) => {
      tally.requests += units.requests ?? 1;
      tally.readUnits += units.readUnits ?? 0;
      tally.writeUnits += units.writeUnits ?? 0;
      tally.billed += units.billed ?? 0;
      tally.dollars += dollars;
      tally.ms += ms;
    };
    const get = <K>(map: Map<K, Tally>, key: K) => {
      let tally = map.get(key);
      if (!tally) {
        tally = emptyTally();
        map.set(key, tally);
      }
      return tally;
    };
    apply(get(this.byService, service));
    apply(get(this.byOp, `${service} ${op}`));
    apply(get(this.byResource, `${service} ${resource}`));
    apply(get(this.byCallerOp, `${caller}|${service} ${op}`));
    apply(get(this.byDetail, `${caller} ${service} ${resource} ${op}`));
    let callers = this.byCaller.get(caller);
    if (!callers) {
      callers = new Map();
      this.byCaller.set(caller, callers);
    }
    apply(get(callers, service));
  }
}

function priceOfUnits(
  service: Service,
  op: string,
  units: Partial<Omit<Tally, "requests" | "dollars">> & { requests?: number },
): number {
  const p = AWS_PRICES;
  switch (service) {
    case "sqs":
      return ((units.billed ?? 0) * p.sqsPerMillionRequests) / 1e6;
    case "dynamodb":
      return (
        ((units.readUnits ?? 0) * p.dynamodbPerMillionReadUnits +
          (units.writeUnits ?? 0) * p.dynamodbPerMillionWriteUnits) /
        1e6
      );
    case "s3":
      return s3Class(op) === "put"
        ? ((units.billed ?? 0) * p.s3PerThousandPutCopyPostList) / 1e3
        : s3Class(op) === "get"
          ? ((units.billed ?? 0) * p.s3PerThousandGetHead) / 1e3
          : 0;
    case "secretsmanager":
      return op === "GetSecretValue"
        ? ((units.requests ?? 1) * p.secretsManagerPerTenThousandCalls) / 1e4
        : 0;
    default:
      return 0;
  }
}

function s3Class(op: string): "put" | "get" | "free" {
  if (op === "GET" || op === "HEAD") return "get";
  if (op === "DELETE") return "free";
  return "put";
}

const SQS_CHUNK_BYTES = 64 * 1024;
/** Control-plane calls the emulator itself makes while setting up; never billed per request. */
const FREE_DYNAMODB_OPS = new Set(["DescribeTable", "CreateTable", "UpdateTimeToLive", "DescribeTimeToLive"]);

interface CountingProxy {
  readonly endpoint: string;
  readonly counts: Counts;
  /** Counting happens only while on (the stack's own setup calls are not the pipeline's). */
  setCounting(on: boolean): void;
  /** Bytes of the table's items as last seen (storage). */
  tableBytes(): number;
  /** Waits until every write's read-back is accounted. */
  settle(): Promise<void>;
  close(): Promise<void>;
}

const callerOf = (headers: IncomingHttpHeaders): string => {
  const ua = `${headers["user-agent"] ?? ""} ${headers["x-amz-user-agent"] ?? ""}`;
  // The function's name as emulated-handler.ts set it (Powertools appends its own tag after a dash).
  return /\bapp\/([A-Za-z0-9]+)/.exec(ua)?.[1] ?? "harness";
};

/** The queue's name without the emulator's suffix and CDK's hash: "EvolveQueue", "EvolveQueueDeadLetter", ... */
const queueLabel = (url: string): string =>
  (url.split("/").at(-1) ?? url).replace(/-[0-9a-f]{6}$/, "").replace(/[0-9A-F]{8}$/, "");

/** A proxy in front of moto (and of a separate DynamoDB endpoint when given) that counts what passes. */
async function startCountingProxy(target: string, dynamodbTarget = target): Promise<CountingProxy> {
  const motoUpstream = new URL(target);
  const dynamoUpstream = new URL(dynamodbTarget);
  const agent = new Agent({ keepAlive: true, maxSockets: 128 });
  const counts = new Counts();
  const items = new Map<string, ItemInfo>();
  /** Pending reads of an item's new size after a write, by item key: a later write of it waits for them. */
  const pending = new Map<string, Promise<void>>();
  let counting = false;

  const forward = (
    upstream: URL,
    method: string,
    path: string,
    headers: IncomingHttpHeaders,
    body: Buffer,
  ): Promise<Forwarded> =>
    new Promise((resolve, reject) => {
      const started = performance.now();
      const outHeaders: IncomingHttpHeaders = { ...headers, "content-length": String(body.length) };
      delete outHeaders["transfer-encoding"];
      delete outHeaders.expect;
      const req = httpRequest(
        {
          host: upstream.hostname,
          port: upstream.port,
          method,
          path,
          headers: outHeaders,
          agent,
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on("data", (chunk: Buffer) => chunks.push(chunk));
          response.on("end", () =>
            resolve({
              status: response.statusCode ?? 502,
              headers: response.headers,
              body: Buffer.concat(chunks),
              ms: performance.now() - started,
            }),
          );
          response.on("error", reject);
        },
      );
      req.on("error", reject);
      req.end(body);
    });

  /** A GetItem straight to moto, not counted: what an item looks like now. */
  const peek = async (table: string, key: Item): Promise<Item | undefined> => {
    const body = Buffer.from(JSON.stringify({ TableName: table, Key: key, ConsistentRead: true }));
    const out = await forward(
      dynamoUpstream,
      "POST",
      "/",
      {
        "content-type": "application/x-amz-json-1.0",
        "x-amz-target": "DynamoDB_20120810.GetItem",
        authorization:
          "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0",
        host: `${dynamoUpstream.hostname}:${dynamoUpstream.port}`,
      },
      body,
    );
    const parsed = z.object({ Item: z.record(z.string(), z.record(z.string(), z.unknown())).optional() });
    return parsed.parse(JSON.parse(out.body.toString() || "{}")).Item;
  };

  const keyId = (table: string, item: Item): string =>
    `${table}|${attr(item, TABLE_SCHEMA.partitionKey)}|${attr(item, TABLE_SCHEMA.sortKey)}`;
  const keyOnly = (item: Item): Item => {
    const out: Item = {};
    for (const name of [TABLE_SCHEMA.partitionKey, TABLE_SCHEMA.sortKey]) {
      const value = item[name];
      if (value !== undefined) out[name] = value;
    }
    return out;
  };
  /** The item's size as last seen; never waits, so a hot item (the rate governor's) is not slowed down. */
  const before = (table: string, key: Item): ItemInfo | undefined => items.get(keyId(table, key));
  /** Accounting that waits for a read-back; the response does not wait for it, `settle()` does. */
  const background = new Set<Promise<void>>();
  const later = (work: Promise<void>) => {
    background.add(work);
    void work.finally(() => background.delete(work));
  };
  /** After a committed update: the item's new size, read back in the background (in order per item). */
  const refresh = (table: string, key: Item): Promise<void> => {
    const id = keyId(table, key);
    const previous = pending.get(id) ?? Promise.resolve();
    const next = previous
      .then(() => peek(table, keyOnly(key)))
      .then((item) => {
        if (item === undefined) items.delete(id);
        else items.set(id, infoOf(item));
      })
      .catch(() => {})
      .finally(() => {
        if (pending.get(id) === next) pending.delete(id);
      });
    pending.set(id, next);
    return next;
  };

  /** Write units of one item write (factor 2 in a transaction), the GSI's included (projection ALL). */
  const writeUnits = (was: ItemInfo | undefined, now: ItemInfo | undefined, factor: number) => {
    const kb = (info: ItemInfo | undefined) => Math.ceil((info?.bytes ?? 0) / 1024);
    let units = factor * Math.max(1, kb(was), kb(now));
    if (now?.gsi && was?.gsi && now.gsi !== was.gsi) units += 1 + Math.max(1, kb(now));
    else if (now?.gsi) units += Math.max(1, kb(now));
    else if (was?.gsi) units += 1;
    return units;
  };

  const Json = z.record(z.string(), z.unknown());
  const ItemSchema = z.record(z.string(), z.record(z.string(), z.unknown()));

  /** DynamoDB: read/write units of one request, from the request, the response and the sizes seen so far. */
  const accountDynamo = async (
    op: string,
    request: Record<string, unknown>,
    send: () => Promise<Forwarded>,
    caller: string,
  ) => {
    const table = String(request.TableName ?? "");
    if (FREE_DYNAMODB_OPS.has(op)) {
      const out = await send();
      if (counting) counts.add("dynamodb", caller, op, "control", { ms: out.ms });
      return out;
    }
    if (op === "PutItem" || op === "UpdateItem" || op === "DeleteItem") {
      const source = op === "PutItem" ? request.Item : request.Key;
      const key = ItemSchema.parse(source ?? {});
      const was = before(table, key);
      const counted = counting;
      const out = await send();
      const ok = out.status === 200;
      const note = (now: ItemInfo | undefined) => {
        const units = ok ? writeUnits(was, now, 1) : Math.max(1, Math.ceil((was?.bytes ?? 0) / 1024));
        if (counted)
          counts.add("dynamodb", caller, ok ? op : `${op} (condition failed)`, itemKind(key), {
            writeUnits: units,
            ms: out.ms,
          });
      };
      if (ok && op === "PutItem") {
        items.set(keyId(table, key), infoOf(key));
        note(infoOf(key));
      } else if (ok && op === "UpdateItem") {
        later(refresh(table, key).then(() => note(items.get(keyId(table, key)))));
      } else {
        if (ok) items.delete(keyId(table, key));
        note(undefined);
      }
      return out;
    }
    if (op === "TransactWriteItems" || op === "BatchWriteItem") {
      const writes: { kind: string; table: string; key: Item; put?: Item }[] = [];
      if (op === "TransactWriteItems") {
        for (const entry of z.array(Json).parse(request.TransactItems ?? [])) {
          const [[kind = "", spec] = []] = Object.entries(entry);
          const body = Json.parse(spec ?? {});
          const t = String(body.TableName ?? "");
          const key = ItemSchema.parse((kind === "Put" ? body.Item : body.Key) ?? {});
          writes.push({ kind, table: t, key, ...(kind === "Put" ? { put: key } : {}) });
        }
      } else {
        for (const [t, list] of Object.entries(Json.parse(request.RequestItems ?? {}))) {
          for (const entry of z.array(Json).parse(list)) {
            const put = entry.PutRequest === undefined ? undefined : Json.parse(entry.PutRequest).Item;
            const del = entry.DeleteRequest === undefined ? undefined : Json.parse(entry.DeleteRequest).Key;
            const key = ItemSchema.parse(put ?? del ?? {});
            writes.push({ kind: put ? "Put" : "Delete", table: t, key, ...(put ? { put: key } : {}) });
          }
        }
      }
      const was = writes.map((w) => before(w.table, w.key));
      const counted = counting;
      const out = await send();
      const ok = out.status === 200;
      const factor = op === "TransactWriteItems" ? 2 : 1;
      const refreshed: Promise<void>[] = [];
      for (const w of writes) {
        if (!ok) continue;
        if (w.put) items.set(keyId(w.table, w.key), infoOf(w.put));
        else if (w.kind === "Update") refreshed.push(refresh(w.table, w.key));
        else if (w.kind === "Delete") items.delete(keyId(w.table, w.key));
      }
      const note = () => {
        for (const [i, w] of writes.entries()) {
          const now = !ok
            ? was[i]
            : w.put
              ? infoOf(w.put)
              : w.kind === "Update"
                ? items.get(keyId(w.table, w.key))
                : w.kind === "Delete"
                  ? undefined
                  : was[i];
          const units =
            ok && w.kind !== "ConditionCheck"
              ? writeUnits(was[i], now, factor)
              : factor * Math.max(1, Math.ceil((was[i]?.bytes ?? 0) / 1024));
          if (counted)
            counts.add("dynamodb", caller, `${op}${ok ? "" : " (cancelled)"} ${w.kind}`, itemKind(w.key), {
              writeUnits: units,
              // One request per call, counted on its first item.
              requests: i === 0 ? 1 : 0,
              ms: i === 0 ? out.ms : 0,
            });
        }
      };
      later(Promise.all(refreshed).then(note));
      return out;
    }
    // Reads.
    const out = await send();
    if (!counting) return out;
    const response = out.status === 200 ? Json.parse(JSON.parse(out.body.toString() || "{}")) : {};
    const consistent = request.ConsistentRead === true;
    const projected = request.ProjectionExpression !== undefined || request.AttributesToGet !== undefined;
    const sizeOf = (t: string, item: Item) =>
      (projected ? items.get(keyId(t, item))?.bytes : undefined) ?? itemSize(item);
    if (op === "GetItem") {
      const key = ItemSchema.parse(request.Key ?? {});
      const item = response.Item === undefined ? undefined : ItemSchema.parse(response.Item);
      const bytes = item ? sizeOf(table, item) : 0;
      const units = Math.max(1, Math.ceil(bytes / 4096)) * (consistent ? 1 : 0.5);
      counts.add("dynamodb", caller, op, itemKind(key), { readUnits: units, ms: out.ms });
    } else if (op === "Query" || op === "Scan") {
      const returned = z.array(ItemSchema).parse(response.Items ?? []);
      let bytes = returned.reduce((n, item) => n + sizeOf(table, item), 0);
      // A filter reads more than it returns: scale by what was scanned.
      const count = Number(response.Count ?? returned.length);
      const scanned = Number(response.ScannedCount ?? count);
      if (scanned > count) bytes = count > 0 ? (bytes * scanned) / count : scanned * 1024;
      const strong = consistent && request.IndexName === undefined;
      const units = Math.max(1, Math.ceil(bytes / 4096)) * (strong ? 1 : 0.5);
      const kind = request.IndexName ? `gsi ${request.IndexName}` : itemKind(returned[0]);
      counts.add("dynamodb", caller, `${op}${request.IndexName ? " (GSI)" : ""}`, kind, {
        readUnits: units,
        ms: out.ms,
      });
    } else if (op === "TransactGetItems" || op === "BatchGetItem") {
      const factor = op === "TransactGetItems" ? 2 : consistent ? 1 : 0.5;
      const found: Item[] = [];
      if (op === "TransactGetItems") {
        for (const r of z.array(Json).parse(response.Responses ?? [])) {
          if (r.Item !== undefined) found.push(ItemSchema.parse(r.Item));
        }
      } else {
        for (const list of Object.values(Json.parse(response.Responses ?? {})))
          found.push(...z.array(ItemSchema).parse(list));
      }
      const units = found.reduce((n, item) => n + factor * Math.max(1, Math.ceil(itemSize(item) / 4096)), 0);
      counts.add("dynamodb", caller, op, "batch", { readUnits: Math.max(units, factor), ms: out.ms });
    } else {
      counts.add("dynamodb", caller, op, "other", { ms: out.ms });
    }
    return out;
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const method = req.method ?? "GET";
      const path = req.url ?? "/";
      const caller = callerOf(req.headers);
      const target = String(req.headers["x-amz-target"] ?? "");
      const contentType = String(req.headers["content-type"] ?? "");
      let result: Promise<Forwarded>;
      const send = () =>
        forward(
          target.startsWith("DynamoDB_") ? dynamoUpstream : motoUpstream,
          method,
          path,
          req.headers,
          body,
        );
      if (path.startsWith("/moto-api")) {
        result = send();
      } else if (target.startsWith("DynamoDB_")) {
        const op = target.split(".")[1] ?? target;
        let request: Record<string, unknown> = {};
        try {
          request = Json.parse(JSON.parse(body.toString() || "{}"));
        } catch {
          // counted as "other" below
        }
        let forwarded: Promise<Forwarded> | undefined;
        const once = () => {
          forwarded ??= send();
          return forwarded;
        };
        result = accountDynamo(op, request, once, caller).then(() => once());
      } else if (
        target.startsWith("AmazonSQS.") ||
        (contentType.includes("x-www-form-urlencoded") && body.toString().includes("Action="))
      ) {
        result = send().then((out) => {
          if (!counting) return out;
          let op = target.split(".")[1] ?? "";
          let queueUrl = "";
          if (op) {
            try {
              queueUrl = String(Json.parse(JSON.parse(body.toString() || "{}")).QueueUrl ?? "");
            } catch {
              // no queue
            }
          } else {
            const form = new URLSearchParams(body.toString());
            op = form.get("Action") ?? "unknown";
            queueUrl = form.get("QueueUrl") ?? "";
          }
          const billed = Math.max(1, Math.ceil(Math.max(body.length, out.body.length) / SQS_CHUNK_BYTES));
          if (op === "ReceiveMessage" && !/"Messages"\s*:\s*\[\s*\{|<Message>/.test(out.body.toString())) {
            // Empty receives are the emulator's 1 s polling: counted apart (see the fixed costs).
            counts.emptyReceives += 1;
            counts.emptyReceivesByCaller.set(caller, (counts.emptyReceivesByCaller.get(caller) ?? 0) + 1);
            return out;
          }
          counts.add("sqs", caller, op, queueLabel(queueUrl), { billed, ms: out.ms });
          return out;
        });
      } else if (target.startsWith("secretsmanager.")) {
        result = send().then((out) => {
          if (counting)
            counts.add("secretsmanager", caller, target.split(".")[1] ?? target, "secret", { ms: out.ms });
          return out;
        });
      } else {
        // S3, path style: /<bucket>/<key>?query
        result = send().then((out) => {
          if (!counting) return out;
          const url = new URL(path, "http://proxy");
          const [, , ...rest] = url.pathname.split("/");
          const key = decodeURIComponent(rest.join("/"));
          const op =
            method === "PUT" && req.headers["x-amz-copy-source"]
              ? "COPY"
              : method === "GET" && key === ""
                ? "LIST"
                : method;
          const segments = key.split("/");
          const prefix =
            key === ""
              ? "(bucket)"
              : segments[0] === "work"
                ? `work/${segments[1] ?? ""}/`
                : segments.length > 1
                  ? `${segments[0]}/`
                  : key;
          counts.add("s3", caller, op, prefix, { billed: 1, ms: out.ms });
          return out;
        });
      }
      result
        .then((out) => {
          // A HEAD answer has no body but keeps the object's length.
          const headers: IncomingHttpHeaders =
            method === "HEAD"
              ? { ...out.headers }
              : { ...out.headers, "content-length": String(out.body.length) };
          delete headers["transfer-encoding"];
          delete headers.connection;
          delete headers["keep-alive"];
          res.writeHead(out.status, headers);
          res.end(out.body);
        })
        .catch((error: unknown) => {
          res.writeHead(502, { "content-type": "text/plain" });
          res.end(String(error));
        });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    counts,
    setCounting: (on) => {
      counting = on;
    },
    tableBytes: () => [...items.values()].reduce((n, info) => n + info.bytes, 0),
    settle: async () => {
      while (background.size > 0) await Promise.all([...background]);
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// The run

const Invocation = z.object({
  function: z.string(),
  ms: z.number().optional(),
  start: z.number().optional(),
  records: z.number().optional(),
  initMs: z.number().optional(),
});

const Report = z.object({
  model: z.string(),
  rounds: z.number(),
  counts: ReportCounts,
  usage: z.object({
    calls: z.number(),
    promptTokens: z.number(),
    cachedTokens: z.number(),
    completionTokens: z.number(),
    costUsd: z.number(),
  }),
});

export interface AwsCostOptions {
  /** Input lines of the generated shard (default 200). */
  samples?: number;
  /** The simulator's latency per request, fixed or a range (default [1000, 3000] ms). */
  latencyMs?: number | [number, number];
  /** Written into the run's run.json as "mode" (default "online"). */
  mode?: "online" | "batch";
  /** Written into the run's run.json as "model" when given (else the stack's default, gpt-4o-mini). */
  model?: string;
  /** Give up after this long (default 60 minutes). */
  timeoutMinutes?: number;
  /**
   * Where the table lives: AWS's DynamoDB Local (default), or moto, whose TransactWriteItems deep-copies every
   * table on each call (slow, and it fails with 500s under concurrent writes).
   */
  dynamodb?: "local" | "moto";
  /**
   * Another OpenAI-compatible server instead of the simulator (its own latency and batches); the run's LLM cost
   * is then its report's alone. `tokensPerMinute`: the limit the stack's shared governor is told (else learned).
   */
  endpoint?: ForeignEndpoint | null;
  tokensPerMinute?: number | null;
}

export interface ServiceCost {
  readonly lambda: number;
  readonly sqs: number;
  readonly dynamodb: number;
  readonly s3: number;
  readonly secretsManager: number;
  /** Estimate: the functions' INFO logs plus Lambda's platform lines. */
  readonly cloudwatchLogs: number;
  readonly total: number;
}

export interface AwsCostFigures {
  /** Set when the run stalled (lost work) and was priced as far as it got; the LLM cost is then the simulator's. */
  readonly incomplete?: string;
  readonly date: string;
  /** The simulator, or the host of the server measured (`--base-url`). */
  readonly server: string;
  readonly mode: "online" | "batch";
  readonly samples: number;
  readonly rounds: number;
  /** The simulator's latency; null against another server, whose own latency applies. */
  readonly latencyMs: number | [number, number] | null;
  readonly minutes: number;
  readonly counts: z.infer<typeof ReportCounts>;
  /** AWS cost of the run per 1,000 input samples, by service (US dollars). */
  readonly awsPer1000: ServiceCost;
  /** Lambda per 1,000 samples at the wall times measured on the emulator (an upper bound). */
  readonly lambdaMeasuredPer1000: number;
  /** The run's LLM cost per 1,000 samples, from its report (simulated tokens at list prices). */
  readonly llmPer1000: number;
  /** The same from the simulator's own token counts, as a cross-check; null against another server. */
  readonly llmPer1000FromSimulator: number | null;
  /**
   * awsPer1000.total / llmPer1000; target <= 0.02. Null when there is no such figure: a run that did not finish
   * (`incomplete`), or no LLM cost at all.
   */
  readonly ratio: number | null;
  /** The usage behind the figures, for the whole run. */
  readonly usage: {
    readonly lambda: {
      readonly invocations: number;
      /** Latency-adjusted GB-s (priced in awsPer1000.lambda), INIT included. */
      readonly gbSeconds: number;
      /** GB-s as measured on the emulator, an upper bound. */
      readonly measuredGbSeconds: number;
      readonly byFunction: Record<
        string,
        {
          invocations: number;
          records: number;
          /** As measured on the emulator (wall time, rounded up to 1 ms, x memory). */
          gbSeconds: number;
          /** With the emulator's excess call latency taken out (see TYPICAL_AWS_MS). */
          adjustedGbSeconds: number;
          memoryMb: number;
          avgMs: number;
        }
      >;
      /** Estimated cold starts (peak concurrent invocations per function) and their billed INIT GB-s. */
      readonly coldStarts: number;
      readonly initGbSeconds: number;
    };
    readonly sqs: {
      readonly requests: number;
      readonly billedRequests: number;
      readonly emptyReceivesExcluded: number;
    };
    readonly dynamodb: { readonly requests: number; readonly readUnits: number; readonly writeUnits: number };
    readonly s3: { readonly putClass: number; readonly getClass: number };
    readonly secretsManagerCalls: number;
    readonly logBytes: number;
    /** Per operation: requests, units (RRU/WRU, billed SQS requests, S3 requests), dollars, the emulator's mean latency. */
    readonly byOperation: Record<
      string,
      { requests: number; units: number; dollars: number; emulatorMs: number }
    >;
    /** Per function (the caller of each request; "harness" is the benchmark): dollars by service. */
    readonly byCaller: Record<string, Record<string, number>>;
    /** Per resource (queue, item kind, key prefix): dollars. */
    readonly byResource: Record<string, { requests: number; units: number; dollars: number }>;
    /** Per function, service, resource and operation, most dollars first. */
    readonly byDetail: Record<string, { requests: number; units: number; dollars: number }>;
  };
  /**
   * Costs that do not scale with samples, per month: idle queue polling (estimate), and each scheduled function
   * at its AWS rate, priced from its invocations in this run (the sweeper's grow with the open shards' size).
   */
  readonly fixedPerMonth: { readonly sqsIdlePolling: number; readonly scheduled: Record<string, number> };
  /** What 1,000 samples leave stored, and its monthly price if kept. */
  readonly storagePer1000: {
    readonly dynamodbMiB: number;
    readonly s3MiB: number;
    readonly perMonth: number;
  };
  readonly prices: typeof AWS_PRICES;
}

/** Runs one shard through the emulated stack and prices what it used. */
export async function measureAwsCost(opts: AwsCostOptions = {}): Promise<AwsCostFigures> {
  const samples = opts.samples ?? 200;
  const latencyMs = opts.latencyMs ?? [1000, 3000];
  const mode = opts.mode ?? "online";
  const timeoutMs = (opts.timeoutMinutes ?? 60) * 60_000;
  const run = `cost${Date.now().toString(36)}`;
  const shardName = "shard";

  const { endpoint: motoEndpoint } = await ensureMoto();
  const dynamodbEndpoint =
    (opts.dynamodb ?? "local") === "local" ? (await ensureDynamoLocal()).endpoint : motoEndpoint;
  say(
    `moto at ${motoEndpoint}, the table on ${dynamodbEndpoint}; synthesizing the stack (cached per source version)...`,
  );
  const cdkOut = await synthOnce();
  const template = readStackTemplate(cdkOut);
  const memoryOf = new Map<string, number>();
  for (const [id, resource] of Object.entries(template)) {
    if (resource.Type !== "AWS::Lambda::Function") continue;
    memoryOf.set(id.replace(/[A-F0-9]{8}$/, ""), Number(resource.Properties?.MemorySize ?? 128));
  }

  const dir = mkdtempSync(join(tmpdir(), "mmevol-aws-cost-"));
  const invocationsFile = join(dir, "invocations.jsonl");
  writeFileSync(invocationsFile, "");
  const proxy = await startCountingProxy(motoEndpoint, dynamodbEndpoint);
  const endpoint = opts.endpoint ?? null;
  const sim = endpoint === null ? await startSimulator({ latencyMs }) : null;
  /** Work the model did that this process can see: the simulator's counts, or the batcher's logs of another. */
  let batchEvents = 0;
  let logBytes = 0;
  let logEvents = 0;
  let handled = 0;
  const lastLines: string[] = [];
  // The stack logs at INFO in AWS (Powertools' default); the emulator would lower it to WARN. A closer look at
  // each record (AWS_COST_LOG_LEVEL=DEBUG) prices the extra lines too.
  const savedLogLevel = process.env.POWERTOOLS_LOG_LEVEL;
  process.env.POWERTOOLS_LOG_LEVEL = process.env.AWS_COST_LOG_LEVEL ?? "INFO";
  /** Every line the functions print, for a closer look (AWS_COST_LINES=<file>). */
  const linesFile = process.env.AWS_COST_LINES;
  let stack: Awaited<ReturnType<typeof startEmulatedStack>> | undefined;
  try {
    stack = await startEmulatedStack({
      cdkOut,
      endpoint: proxy.endpoint,
      dynamodbEndpoint: proxy.endpoint,
      apiKey: endpoint?.apiKey ?? "sk-aws-cost",
      // Long enough that a slow batch is never redelivered while it runs (AWS: 6x the function timeout).
      maxVisibilityTimeoutSeconds: 120,
      // Batch mode on the simulator (batches done in seconds) needs the batcher often; online, the schedules only
      // add their (separately priced) cost. Another server's batches take minutes or hours: every minute, as
      // deployed, or the emulated batcher's extra ticks are most of what is priced (12x the reads).
      scheduleEverySeconds: mode === "batch" && endpoint === null ? 5 : 60,
      functionEnv: {
        [ENV.openaiBaseUrl]: endpoint?.baseURL ?? sim?.url ?? "",
        ...(opts.tokensPerMinute ? { [ENV.tokensPerMinute]: String(opts.tokensPerMinute) } : {}),
        EMU_INVOCATIONS_FILE: invocationsFile,
        ...(mode === "batch" ? { [ENV.batchSettleMs]: "3000", [ENV.batchPollMs]: "2000" } : {}),
      },
      onLine: (line) => {
        if (linesFile) appendFileSync(linesFile, `${line}\n`);
        lastLines.push(line);
        if (lastLines.length > 40) lastLines.shift();
        if (line.startsWith("{")) {
          logBytes += utf8(line) + LOG_EVENT_OVERHEAD_BYTES;
          logEvents += 1;
          if (/"message":"batch (waiting|submitted|applied)/.test(line)) batchEvents += 1;
        } else if (/record\(s\)/.test(line)) {
          handled += 1;
        } else if (/failed|error/i.test(line)) {
          say(line);
        }
      },
    });
  } finally {
    if (savedLogLevel === undefined) delete process.env.POWERTOOLS_LOG_LEVEL;
    else process.env.POWERTOOLS_LOG_LEVEL = savedLogLevel;
  }

  const s3 = new S3Client({ ...motoClientConfig(motoEndpoint), forcePathStyle: true });
  const started = Date.now();
  // Interrupted: stop the function processes too (they would keep polling).
  const running = stack;
  const onSignal = () => {
    void running.stop().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    // Input: images straight to moto (the user's upload, not the pipeline's), then run.json and the shard.
    const imagesDir = join(repoRoot, "examples/seeds/images");
    const demo = readdirSync(imagesDir);
    const imageName = (i: number) => `images/s${i}-${demo[i % demo.length]}`;
    for (let i = 0; i < samples; i++) {
      await s3.send(
        new PutObjectCommand({
          Bucket: stack.bucket,
          Key: `seeds/${run}/${imageName(i)}`,
          Body: readFileSync(join(imagesDir, demo[i % demo.length] ?? "")),
        }),
      );
    }
    const shard = writeLlavaBenchShard(dir, { samples, name: shardName, image: imageName });
    proxy.setCounting(true);
    await s3.send(
      new PutObjectCommand({
        Bucket: stack.bucket,
        Key: `seeds/${run}/run.json`,
        Body: JSON.stringify({ mode, ...(opts.model === undefined ? {} : { model: opts.model }) }),
      }),
    );
    await s3.send(
      new PutObjectCommand({
        Bucket: stack.bucket,
        Key: `seeds/${run}/${shardName}.jsonl`,
        Body: readFileSync(shard.path),
      }),
    );
    say(
      `uploaded ${samples} images, run.json {"mode":"${mode}"} and a ${samples}-line shard; waiting for the report`,
    );

    const reportKey = `reports/${run}/${shardName}.json`;
    let lastProgress = Date.now();
    // Nothing moving for this long means lost work (the sweeper would only re-send it after 2 h).
    // Another server's batch may run for hours, polled at most 10 minutes apart (each poll logs a line).
    const stallMs = (sim === null ? 15 : 5) * 60_000;
    let lastActivity = -1;
    let activeAt = Date.now();
    let incomplete: string | undefined;
    for (;;) {
      try {
        await s3.send(new HeadObjectCommand({ Bucket: stack.bucket, Key: reportKey }));
        break;
      } catch {
        // not yet
      }
      if (Date.now() - started > timeoutMs) {
        throw new Error(
          `no report after ${opts.timeoutMinutes ?? 60} min; last lines:\n${lastLines.join("\n")}`,
        );
      }
      // The scheduled functions keep calling on a clock: only queue-driven work and the model count as progress.
      const activity =
        handled + batchEvents + (sim ? sim.stats().requests + sim.batches.stats().linesAnswered : 0);
      if (activity !== lastActivity) {
        lastActivity = activity;
        activeAt = Date.now();
      } else if (Date.now() - activeAt > stallMs) {
        incomplete = await diagnoseStall(dynamodbEndpoint, stack.table, run, shardName);
        say(`STALLED: nothing moved for ${stallMs / 60_000} min; ${incomplete}; pricing what ran so far`);
        break;
      }
      if (Date.now() - lastProgress > 15_000) {
        lastProgress = Date.now();
        const c = proxy.counts;
        say(
          `${Math.round((Date.now() - started) / 1000)} s: ` +
            (sim
              ? `${sim.stats().requests} LLM calls, ${sim.batches.stats().linesAnswered} batch lines, `
              : `${batchEvents} batch polls, `) +
            `${handled} batches handled, ` +
            `SQS ${c.byService.get("sqs")?.requests ?? 0} req, DynamoDB ${c.byService.get("dynamodb")?.requests ?? 0} req, ` +
            `S3 ${c.byService.get("s3")?.requests ?? 0} req`,
        );
      }
      await new Promise((r) => setTimeout(r, 1_000));
    }
    proxy.setCounting(false);
    await proxy.settle();
    const minutes = (Date.now() - started) / 60_000;
    if (!incomplete) say(`report written after ${(minutes * 60).toFixed(0)} s`);

    const report =
      incomplete === undefined
        ? Report.parse(
            JSON.parse(
              (await (
                await s3.send(new GetObjectCommand({ Bucket: stack.bucket, Key: reportKey }))
              ).Body?.transformToString()) ?? "{}",
            ),
          )
        : stalledReport(sim, samples);
    if (incomplete !== undefined && sim === null)
      say("the run stalled against another server: its LLM cost is unknown, the ratio is not a figure");

    // Storage left behind (bucket objects of this run, table items seen).
    let s3Bytes = 0;
    let token: string | undefined;
    do {
      const page = await s3.send(
        new ListObjectsV2Command({ Bucket: stack.bucket, ...(token ? { ContinuationToken: token } : {}) }),
      );
      for (const object of page.Contents ?? []) s3Bytes += object.Size ?? 0;
      token = page.NextContinuationToken;
    } while (token);

    return summarize({
      ...(incomplete === undefined ? {} : { incomplete }),
      server: serverName(endpoint),
      mode,
      samples,
      latencyMs: endpoint === null ? latencyMs : null,
      minutes,
      report,
      proxy,
      sim,
      memoryOf,
      invocationsFile,
      logBytes,
      logEvents,
      s3Bytes,
      queueCount: Object.keys(stack.queues).filter((name) => !/DeadLetter|Dlq|DLQ/i.test(name)).length,
    });
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await stack.stop();
    await sim?.close();
    await proxy.close();
    s3.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Tallies as requests, units and dollars, most dollars first. */
function dollarsFirst(
  tallies: ReadonlyMap<string, Tally>,
): Record<string, { requests: number; units: number; dollars: number }> {
  const out: Record<string, { requests: number; units: number; dollars: number }> = {};
  for (const [key, t] of [...tallies].sort((a, b) => b[1].dollars - a[1].dollars)) {
    out[key] = {
      requests: t.requests,
      units: round(t.readUnits + t.writeUnits + t.billed, 1),
      dollars: round(t.dollars, 8),
    };
  }
  return out;
}

/** No report (the run stalled): the model's cost from the simulator's counts, at list prices (none without it). */
function stalledReport(
  sim: Awaited<ReturnType<typeof startSimulator>> | null,
  samples: number,
): z.infer<typeof Report> {
  const model = "gpt-4o-mini";
  const none = { succeeded: 0, linesAnswered: 0, promptTokens: 0, cachedTokens: 0, completionTokens: 0 };
  const online = sim?.stats() ?? none;
  const batch = sim?.batches.stats() ?? none;
  const costUsd = costOf(priceOf(model), online, "online") + costOf(priceOf(model), batch, "batch");
  return {
    model,
    rounds: 3,
    counts: { lines: samples, evolved: 0, passedThrough: 0, failed: 0, rejected: 0, addsUp: false },
    usage: {
      calls: online.succeeded + batch.linesAnswered,
      promptTokens: online.promptTokens + batch.promptTokens,
      cachedTokens: online.cachedTokens + batch.cachedTokens,
      completionTokens: online.completionTokens + batch.completionTokens,
      costUsd,
    },
  };
}

/** Where the samples of a stalled run are: counts by status and round, and the first few open ones. */
async function diagnoseStall(endpoint: string, table: string, run: string, shard: string): Promise<string> {
  try {
    const state = new DynamoStateStore({
      client: DynamoDBDocumentClient.from(new DynamoDBClient(motoClientConfig(endpoint))),
      table,
    });
    const counts = new Map<string, number>();
    const open: string[] = [];
    for await (const sample of state.listSamples(run, shard)) {
      const key = `${sample.status} r${sample.round}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
      if (!["DONE", "PASSED_THROUGH", "FAILED", "REJECTED"].includes(sample.status) && open.length < 5)
        open.push(`${sample.key} ${sample.status} r${sample.round} v${sample.version}`);
    }
    return `samples by state ${JSON.stringify(Object.fromEntries(counts))}; open: ${open.join(", ")}`;
  } catch (error) {
    return `could not read the samples: ${String(error)}`;
  }
}

function summarize(input: {
  incomplete?: string;
  mode: "online" | "batch";
  samples: number;
  latencyMs: number | [number, number] | null;
  minutes: number;
  report: z.infer<typeof Report>;
  proxy: CountingProxy;
  sim: Awaited<ReturnType<typeof startSimulator>> | null;
  server: string;
  memoryOf: Map<string, number>;
  invocationsFile: string;
  logBytes: number;
  logEvents: number;
  s3Bytes: number;
  queueCount: number;
}): AwsCostFigures {
  const { samples, mode, proxy, memoryOf } = input;
  const p = AWS_PRICES;
  const per1000 = (dollars: number) => (dollars * 1000) / samples;
  // Scheduled functions run on a clock, not per sample: priced per month apart, except the batcher in batch
  // mode, which does the run's batch work.
  const perSampleCaller = (caller: string) =>
    !(caller in SCHEDULED_PER_MONTH) || (mode === "batch" && caller === "Batcher");

  // Lambda: billed duration is wall time rounded up to 1 ms, times the configured memory.
  const invocations = readFileSync(input.invocationsFile, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => Invocation.parse(JSON.parse(line)));
  const byFunction: AwsCostFigures["usage"]["lambda"]["byFunction"] = {};
  const intervals = new Map<string, { start: number; end: number }[]>();
  const initMs = new Map<string, number>();
  for (const inv of invocations) {
    const memoryMb = memoryOf.get(inv.function) ?? 128;
    if (inv.initMs !== undefined) {
      initMs.set(inv.function, Math.max(initMs.get(inv.function) ?? 0, inv.initMs));
      continue;
    }
    const ms = Math.ceil(inv.ms ?? 0);
    const entry = (byFunction[inv.function] ??= {
      invocations: 0,
      records: 0,
      gbSeconds: 0,
      adjustedGbSeconds: 0,
      memoryMb,
      avgMs: 0,
    });
    entry.invocations += 1;
    entry.records += inv.records ?? 0;
    entry.gbSeconds += (ms / 1000) * (memoryMb / 1024);
    entry.avgMs += ms;
    const list = intervals.get(inv.function) ?? [];
    list.push({ start: inv.start ?? 0, end: (inv.start ?? 0) + ms });
    intervals.set(inv.function, list);
  }
  let coldStarts = 0;
  let initGbSeconds = 0;
  for (const [fn, entry] of Object.entries(byFunction)) {
    entry.avgMs = round(entry.avgMs / Math.max(1, entry.invocations), 1);
    entry.gbSeconds = round(entry.gbSeconds, 4);
    if (!perSampleCaller(fn)) continue;
    // Peak concurrency ~ the containers Lambda would start, each paying one INIT (billed since 2025-08).
    const events = (intervals.get(fn) ?? []).flatMap((i) => [
      [i.start, 1],
      [i.end, -1],
    ]);
    events.sort((a, b) => (a[0] ?? 0) - (b[0] ?? 0) || (a[1] ?? 0) - (b[1] ?? 0));
    let live = 0;
    let peak = 0;
    for (const [, delta] of events) {
      live += delta ?? 0;
      peak = Math.max(peak, live);
    }
    coldStarts += peak;
    initGbSeconds += (peak * (initMs.get(fn) ?? 0) * (entry.memoryMb / 1024)) / 1000;
  }
  let lambdaInvocations = 0;
  let gbSeconds = initGbSeconds;
  let adjustedGbSeconds = initGbSeconds;
  const scheduled: Record<string, number> = {};
  for (const [fn, entry] of Object.entries(byFunction)) {
    // The emulator answers far slower than AWS (moto on a shared 2-core machine): take out of the wall time
    // what the handler's calls took beyond a typical AWS latency, divided by the records run in parallel.
    let excessMs = 0;
    for (const [key, t] of proxy.counts.byCallerOp) {
      const [caller = "", serviceOp = ""] = key.split("|");
      if (caller !== fn || POLLER_OPS.has(serviceOp)) continue;
      const [service = "", ...op] = serviceOp.split(" ");
      excessMs += Math.max(0, t.ms - t.requests * typicalMs(service, op.join(" ")));
    }
    const parallel = Math.max(1, entry.records / Math.max(1, entry.invocations));
    const wallMs = entry.avgMs * entry.invocations;
    const share = wallMs > 0 ? Math.max(0.05, (wallMs - excessMs / parallel) / wallMs) : 1;
    entry.adjustedGbSeconds = round(entry.gbSeconds * share, 4);
    if (perSampleCaller(fn)) {
      lambdaInvocations += entry.invocations;
      gbSeconds += entry.gbSeconds;
      adjustedGbSeconds += entry.adjustedGbSeconds;
    }
  }
  const requestDollars = (lambdaInvocations * p.lambdaPerMillionRequests) / 1e6;
  const lambdaMeasuredDollars = gbSeconds * p.lambdaPerGbSecond + requestDollars;
  const lambdaDollars = adjustedGbSeconds * p.lambdaPerGbSecond + requestDollars;

  // Requests, by service, of the callers that count per sample.
  const service = (name: Service) => {
    let dollars = 0;
    const tally = emptyTally();
    for (const [caller, services] of proxy.counts.byCaller) {
      if (!perSampleCaller(caller)) continue;
      const t = services.get(name);
      if (!t) continue;
      dollars += t.dollars;
      tally.requests += t.requests;
      tally.readUnits += t.readUnits;
      tally.writeUnits += t.writeUnits;
      tally.billed += t.billed;
    }
    return { dollars, tally };
  };
  const sqs = service("sqs");
  // S3 notifications of the two uploads (run.json and the shard) are SendMessage calls moto makes inside itself.
  const notifications = 2;
  sqs.dollars += (notifications * p.sqsPerMillionRequests) / 1e6;
  sqs.tally.requests += notifications;
  sqs.tally.billed += notifications;
  const dynamodb = service("dynamodb");
  const s3 = service("s3");
  const secrets = service("secretsmanager");
  const logDollars =
    ((input.logBytes + lambdaInvocations * PLATFORM_LOG_BYTES_PER_INVOCATION) / 1024 ** 3) *
    p.cloudwatchLogsPerGbIngested;

  const awsTotal = lambdaDollars + sqs.dollars + dynamodb.dollars + s3.dollars + secrets.dollars + logDollars;
  const awsPer1000: ServiceCost = {
    lambda: round(per1000(lambdaDollars)),
    sqs: round(per1000(sqs.dollars)),
    dynamodb: round(per1000(dynamodb.dollars)),
    s3: round(per1000(s3.dollars)),
    secretsManager: round(per1000(secrets.dollars)),
    cloudwatchLogs: round(per1000(logDollars)),
    total: round(per1000(awsTotal)),
  };
  const llmPer1000 = per1000(input.report.usage.costUsd);
  const price = priceOf(input.report.model);
  const simDollars =
    input.sim === null
      ? null
      : costOf(price, input.sim.stats(), "online") +
        costOf(
          price,
          {
            promptTokens: input.sim.batches.stats().promptTokens,
            cachedTokens: input.sim.batches.stats().cachedTokens,
            completionTokens: input.sim.batches.stats().completionTokens,
          },
          "batch",
        );

  // Fixed monthly: idle polling of the stage queues, and each scheduled function at its AWS rate.
  const sqsIdlePolling = (input.queueCount * IDLE_RECEIVES_PER_QUEUE_MONTH * p.sqsPerMillionRequests) / 1e6;
  for (const [fn, perMonth] of Object.entries(SCHEDULED_PER_MONTH)) {
    const entry = byFunction[fn];
    // In batch mode the batcher's ticks are the run's work, priced per sample above.
    if (!entry || entry.invocations === 0 || perSampleCaller(fn)) continue;
    const services = proxy.counts.byCaller.get(fn);
    const requestDollars = [...(services?.values() ?? [])].reduce((n, t) => n + t.dollars, 0);
    const perInvocation =
      (entry.adjustedGbSeconds * p.lambdaPerGbSecond + requestDollars) / entry.invocations +
      p.lambdaPerMillionRequests / 1e6;
    scheduled[fn] = round(perInvocation * perMonth, 4);
  }

  const byOperation: AwsCostFigures["usage"]["byOperation"] = {};
  for (const [op, t] of [...proxy.counts.byOp].sort((a, b) => b[1].dollars - a[1].dollars)) {
    byOperation[op] = {
      requests: t.requests,
      units: round(t.readUnits + t.writeUnits + t.billed, 1),
      dollars: round(t.dollars, 8),
      emulatorMs: round(t.ms / Math.max(1, t.requests), 1),
    };
  }
  const byResource = dollarsFirst(proxy.counts.byResource);
  const byDetail = dollarsFirst(proxy.counts.byDetail);
  const byCaller: AwsCostFigures["usage"]["byCaller"] = {};
  for (const [caller, services] of proxy.counts.byCaller) {
    const row: Record<string, number> = {};
    for (const [name, t] of services) row[name] = round(t.dollars, 8);
    const fn = byFunction[caller];
    if (fn)
      row.lambda = round(
        fn.gbSeconds * p.lambdaPerGbSecond + (fn.invocations * p.lambdaPerMillionRequests) / 1e6,
        8,
      );
    byCaller[caller] = row;
  }
  for (const [fn, entry] of Object.entries(byFunction)) {
    byCaller[fn] ??= {
      lambda: round(
        entry.gbSeconds * p.lambdaPerGbSecond + (entry.invocations * p.lambdaPerMillionRequests) / 1e6,
        8,
      ),
    };
  }

  const dynamoMiB = (proxy.tableBytes() * 1000) / samples / 1024 ** 2;
  const s3MiB = (input.s3Bytes * 1000) / samples / 1024 ** 2;
  return {
    ...(input.incomplete === undefined ? {} : { incomplete: input.incomplete }),
    date: new Date().toISOString().slice(0, 10),
    server: input.server,
    mode,
    samples,
    rounds: input.report.rounds,
    latencyMs: input.latencyMs,
    minutes: round(input.minutes, 1),
    counts: input.report.counts,
    awsPer1000,
    lambdaMeasuredPer1000: round(per1000(lambdaMeasuredDollars)),
    llmPer1000: round(llmPer1000),
    llmPer1000FromSimulator: simDollars === null ? null : round(per1000(simDollars)),
    ratio:
      input.incomplete !== undefined || input.report.usage.costUsd <= 0
        ? null
        : round(awsTotal / input.report.usage.costUsd, 4),
    usage: {
      lambda: {
        invocations: lambdaInvocations,
        gbSeconds: round(adjustedGbSeconds, 3),
        measuredGbSeconds: round(gbSeconds, 3),
        byFunction,
        coldStarts,
        initGbSeconds: round(initGbSeconds, 3),
      },
      sqs: {
        requests: sqs.tally.requests,
        billedRequests: sqs.tally.billed,
        emptyReceivesExcluded: proxy.counts.emptyReceives,
      },
      dynamodb: {
        requests: dynamodb.tally.requests,
        readUnits: round(dynamodb.tally.readUnits, 1),
        writeUnits: dynamodb.tally.writeUnits,
      },
      s3: {
        putClass: [...proxy.counts.byOp]
          .filter(([op]) => op.startsWith("s3 ") && s3Class(op.slice(3)) === "put")
          .reduce((n, [, t]) => n + t.requests, 0),
        getClass: [...proxy.counts.byOp]
          .filter(([op]) => op.startsWith("s3 ") && s3Class(op.slice(3)) === "get")
          .reduce((n, [, t]) => n + t.requests, 0),
      },
      secretsManagerCalls: secrets.tally.requests,
      logBytes: input.logBytes,
      byOperation,
      byCaller,
      byResource,
      byDetail,
    },
    fixedPerMonth: { sqsIdlePolling: round(sqsIdlePolling, 4), scheduled },
    storagePer1000: {
      dynamodbMiB: round(dynamoMiB, 2),
      s3MiB: round(s3MiB, 2),
      perMonth: round(
        (dynamoMiB / 1024) * (p.dynamodbPerGbMonth + p.dynamodbPitrPerGbMonth) +
          (s3MiB / 1024) * p.s3PerGbMonth,
        6,
      ),
    },
    prices: AWS_PRICES,
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  exitOnSetupError("aws-cost");
  const { values } = parseArgs({
    options: {
      samples: { type: "string", default: "200" },
      /** "2000" or "1000-3000" */
      latency: { type: "string", default: "1000-3000" },
      mode: { type: "string", default: "online" },
      "timeout-minutes": { type: "string", default: "60" },
      /** "local" (DynamoDB Local, default) or "moto" */
      dynamodb: { type: "string", default: "local" },
      /** Another OpenAI-compatible server (key in OPENAI_API_KEY); its latency applies, not --latency. */
      "base-url": { type: "string" },
      /** The limit the stack's governor is told; by default the server's x-ratelimit-limit-tokens, if it sends one. */
      tpm: { type: "string" },
      model: { type: "string", default: "gpt-4o-mini" },
      json: { type: "string" },
    },
  });
  const endpoint = foreignEndpoint(values["base-url"]);
  // The simulator has no limit here; another server's is read from its headers when not given.
  const tokensPerMinute =
    endpoint === null && values.tpm === undefined
      ? null
      : await benchTokenLimit(values.tpm, endpoint, values.model, 0).catch((error: unknown) => {
          // A server that answered with no limit header: the run goes on without one. Any other failure
          // (a wrong key, no server) would fail every call of the run too.
          if (!(error instanceof NoLimitHeaderError)) {
            console.error(`[bench:aws-cost] ${(error as Error).message}`);
            process.exit(error instanceof BenchSetupError ? error.exitCode : 1);
          }
          console.error(
            `[bench:aws-cost] ${error.message}; without it the stack's governor knows no limit and slows down only when answered 429`,
          );
          return null;
        });
  const [low, high] = values.latency.split("-").map(Number);
  const latencyMs: number | [number, number] = high === undefined ? Number(low) : [Number(low), high];
  const mode = z.enum(["online", "batch"]).parse(values.mode);
  // Without files and batches endpoints a batch run would only stall: say so before starting the stack.
  if (mode === "batch" && endpoint !== null) {
    await probeBatchApi(endpoint).catch((error: unknown) => {
      const reason = (error as Error).message;
      console.error(`[bench:aws-cost] ${reason}; no batch figures`);
      // `npm run bench` reads why from the figures.
      if (values.json)
        writeFileSync(
          values.json,
          `${JSON.stringify({ server: serverName(endpoint), mode, incomplete: reason, ratio: null }, null, 2)}\n`,
        );
      process.exit(error instanceof BenchSetupError ? error.exitCode : 1);
    });
  }
  const figures = await measureAwsCost({
    samples: Number(values.samples),
    latencyMs,
    mode,
    model: values.model,
    timeoutMinutes: Number(values["timeout-minutes"]),
    dynamodb: z.enum(["local", "moto"]).parse(values.dynamodb),
    endpoint,
    tokensPerMinute,
  });
  const usd = (n: number) => `$${n.toFixed(4)}`;
  console.log(
    `mmevol AWS cost on the emulated stack (${figures.samples} samples, ${figures.rounds} rounds, ${figures.mode}, ` +
      `${endpoint === null ? `LLM latency ${JSON.stringify(figures.latencyMs)} ms` : `LLM ${figures.server}`}, ${figures.minutes} min)`,
  );
  const a = figures.awsPer1000;
  console.table({
    "Lambda (GB-s + requests), latency-adjusted": usd(a.lambda),
    "  Lambda at emulator wall times (upper bound)": usd(figures.lambdaMeasuredPer1000),
    "SQS requests": usd(a.sqs),
    "DynamoDB read/write units": usd(a.dynamodb),
    "S3 requests": usd(a.s3),
    "Secrets Manager": usd(a.secretsManager),
    "CloudWatch Logs (estimate)": usd(a.cloudwatchLogs),
    "AWS total per 1,000 samples": usd(a.total),
    "LLM per 1,000 samples (report)": usd(figures.llmPer1000),
    "AWS / LLM (target <= 2%)":
      figures.ratio !== null
        ? `${(figures.ratio * 100).toFixed(2)}%`
        : figures.incomplete !== undefined
          ? "none: the run did not finish"
          : "none: the run cost nothing at the LLM",
  });
  console.log("top operations (whole run):");
  console.table(
    Object.fromEntries(
      Object.entries(figures.usage.byOperation)
        .slice(0, 12)
        .map(([op, t]) => [
          op,
          { requests: t.requests, units: t.units, $: t.dollars, "emulator ms (mean)": t.emulatorMs },
        ]),
    ),
  );
  console.log(
    `fixed per month: SQS idle polling $${figures.fixedPerMonth.sqsIdlePolling}, scheduled ${JSON.stringify(figures.fixedPerMonth.scheduled)}`,
  );
  if (figures.incomplete) console.log(`INCOMPLETE RUN: ${figures.incomplete}`);
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
  console.log(JSON.stringify({ bench: "aws-cost", ...figures }));
  // ensureMoto may have started moto: it stops with this process. A run that did not finish is a failure.
  process.exit(figures.incomplete === undefined ? 0 : 1);
}
