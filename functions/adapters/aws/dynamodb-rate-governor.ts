import { type DynamoDBDocumentClient, GetCommand, PutCommand, UpdateCommand } from "@aws-sdk/lib-dynamodb";
import { z } from "zod";
import { LlmCallError, NoRateBudgetError } from "../../ports/errors.ts";
import { type Clock, systemClock } from "../../ports/runtime.ts";
import { bucketCapacity, MS_PER_MINUTE, refilledLevel, refillWaitMs } from "../governor/bucket-math.ts";
import type { Governor, RemainingSnapshot, Reservation } from "../governor/governor.ts";
import { RATE_GOVERNOR_KEY, TABLE_SCHEMA } from "./table-schema.ts";

export interface DynamoRateGovernorOptions {
  readonly client: DynamoDBDocumentClient;
  readonly table: string;
  /** The budget is per model: one item per model, shared by every governor (every Lambda) naming it. */
  readonly model: string;
  readonly tokensPerMinute?: number;
  readonly requestsPerMinute?: number;
  /** Epoch ms, compared across Lambdas (default Date.now). */
  readonly clock?: Clock;
  /** Factor applied to the effective rate on a 429 (default 0.7). */
  readonly decrease?: number;
  /** Share of the limit the effective rate regains per second of successful calls (default 0.01). */
  readonly increasePerSecond?: number;
  /** The effective rate never drops below this share of the limit (default 0.1). */
  readonly minFactor?: number;
  /** Pause after a 429 that carried no retry-after (default 1000 ms). */
  readonly defaultRetryAfterMs?: number;
  /** Writes tried when other governors keep changing the item in between (default 10). */
  readonly maxAttempts?: number;
  /** Jitter source in [0, 1) (default Math.random); tests pin it. */
  readonly random?: () => number;
  /** See ARRIVAL_LEAD_MS (the default); 0 lets a bucket fill to its whole capacity. */
  readonly arrivalLeadMs?: number;
}

/** The item's state as this governor sees it: a bucket not configured here is null. */
export interface DynamoGovernorState {
  readonly version: number;
  /** Share of the limit currently allowed, minFactor..1. */
  readonly factor: number;
  /** Refilled to the clock's now. */
  readonly tokensAvailable: number | null;
  readonly requestsAvailable: number | null;
  readonly tokenLimit: number | null;
  readonly requestLimit: number | null;
  readonly pausedUntil: number;
}

const PK = TABLE_SCHEMA.partitionKey;
const SK = TABLE_SCHEMA.sortKey;
/** An item idle this long is deleted by TTL: the next use starts from full buckets and the configured limits. */
const IDLE_TTL_SECONDS = 86_400;
/** Backoff before another write after losing the item to another governor: full jitter, capped. */
const BACKOFF_BASE_MS = 10;
const BACKOFF_CAP_MS = 250;

// The item is outside data (another version of the program may have written it): parse it.
const RateItem = z.object({
  version: z.number().int(),
  refilledAt: z.number(),
  factor: z.number().positive().max(1),
  cutAt: z.number(),
  grownAt: z.number(),
  pausedUntil: z.number(),
  tokenLevel: z.number().optional(),
  tokenLimit: z.number().positive().optional(),
  requestLevel: z.number().optional(),
  requestLimit: z.number().positive().optional(),
  // Absent in items written before the upward step: nothing admitted recently, as far as they tell.
  recentTokens: z.number().nonnegative().optional(),
  recentAt: z.number().optional(),
});

/** One budget as stored: `level` as of `refilledAt` (not yet refilled), `limit` per minute before the factor. */
interface Level {
  readonly level: number;
  readonly limit: number;
  /** This governor's configured limit: the most `limit` may be, whatever the headers report. Not stored. */
  readonly configured: number;
}

interface RateState {
  /** The share of a bucket's capacity it never holds (see ARRIVAL_LEAD_MS); configuration, not stored. */
  readonly headroom: number;
  readonly version: number;
  readonly refilledAt: number;
  readonly factor: number;
  readonly cutAt: number;
  readonly grownAt: number;
  readonly pausedUntil: number;
  readonly tokens: Level | null;
  readonly requests: Level | null;
  /** Tokens admitted lately by every governor, decaying (see RECENT_WINDOW_MS), as of `recentAt`. */
  readonly recentTokens: number;
  readonly recentAt: number;
}

/**
 * How much later than the governor the provider may charge a call. The governor charges when it admits the
 * call; the provider when the request arrives, after the claim is written and the request sent. While a
 * bucket is full, the provider's refills nothing in that time, yet the governor counts refill from its own
 * charge. So buckets stay this much refill short of full: the rate is the limit's, only the burst is smaller.
 * (Measured on the emulated stack without it: the first burst of a run met a 429 about once in 120 calls,
 * with the simulator about 5,000 tokens, 1.5 s of refill at 200k TPM, short of what the governor counted.
 * With 3 s, still in about one run in three, 3-4 s into the burst: a container admits its records' calls one
 * by one and sends each after its claim is written, while the same thread counts the next records' tokens.
 * Each such 429 cuts the rate by 30% for half a minute: about 3 points of a three-minute run's use of the
 * limit, as computed, not measured.)
 */
const ARRIVAL_LEAD_MS = 6_000;

/**
 * What the shared item knows of the calls in flight: it cannot list them (a container that crashed never
 * settles its own), so it keeps the tokens every governor admitted, each fading by e every RECENT_WINDOW_MS.
 * At a steady rate that is about this window's worth of admissions, more than the calls in flight while a call
 * takes less; a call that takes longer is still more prompt than completion, and only its completion is
 * missing from a provider's remaining count. It lets the headers raise the budget (see raiseToHeaders).
 */
const RECENT_WINDOW_MS = 10_000;

/**
 * The headers raise a bucket only when they leave this share of its capacity more than the item has: a raise
 * is a read and a write, worth it for a real gap, not for the noise of calls in flight.
 */
const RAISE_MARGIN = 0.05;

type BucketName = "token" | "request";
const BUCKETS = [
  ["token", "tokens"],
  ["request", "requests"],
] as const satisfies readonly (readonly [BucketName, "tokens" | "requests"])[];

/**
 * The rate governor of every Lambda of the stack, kept in one item per model of the state table. It never
 * waits: when the budget does not allow a call, `acquire` throws a retryable, in-flight LlmCallError whose
 * retryAfterMs says when it will, and the message goes back to its queue for that long.
 *
 * Concurrency: read-modify-writes (acquire, rateLimited, observeHeaders) are conditional on the item's
 * version and write the levels as deltas (`level = level + :delta`); a settle that charges more than was
 * reserved is a bare atomic ADD at once. So a settle landing between another governor's read and write is
 * kept, and the result is the same as if it had come just after. A refund is not written on its own: it
 * rides on this governor's next write of the item (the next acquire, usually), or on `flush`, at the end of
 * an invocation. Until then only this governor counts it, so others see a little less budget, never more.
 * Growth (`succeeded`) only moves the factor, conditional on the factor and growth time it read: when
 * another governor grew it first, that one covered the time.
 *
 * The provider's headers lower the budget whenever they report less. They raise it too, when they report more
 * than the item has, less everything admitted lately (see RECENT_WINDOW_MS): a provider whose limiter charges
 * a call the tokens it used, not its prompt plus max_tokens, leaves more than the item counts.
 */
export class DynamoRateGovernor implements Governor {
  readonly #client: DynamoDBDocumentClient;
  readonly #table: string;
  readonly #model: string;
  readonly #key: Record<string, string>;
  readonly #tokensPerMinute: number | null;
  readonly #requestsPerMinute: number | null;
  readonly #clock: Clock;
  readonly #decrease: number;
  readonly #increasePerSecond: number;
  readonly #minFactor: number;
  readonly #defaultRetryAfterMs: number;
  readonly #maxAttempts: number;
  readonly #random: () => number;
  readonly #headroom: number;
  /** The item as last read or written by this governor; lets succeeded/observeHeaders skip needless calls. */
  #known: RateState | null = null;
  /** Refunds of this governor's reservations not written yet, by bucket (see the class comment). */
  readonly #unwritten: Record<BucketName, number> = { token: 0, request: 0 };
  /** The tail of this governor's serialized read-modify-writes (see #serially). */
  #queue: Promise<void> = Promise.resolve();

  constructor(options: DynamoRateGovernorOptions) {
    this.#client = options.client;
    this.#table = options.table;
    this.#model = options.model;
    this.#key = {
      [PK]: `${RATE_GOVERNOR_KEY.partitionKeyPrefix}${options.model}`,
      [SK]: RATE_GOVERNOR_KEY.sortKey,
    };
    this.#tokensPerMinute = positive(options.tokensPerMinute) ? options.tokensPerMinute : null;
    this.#requestsPerMinute = positive(options.requestsPerMinute) ? options.requestsPerMinute : null;
    this.#clock = options.clock ?? systemClock;
    this.#decrease = options.decrease ?? 0.7;
    this.#increasePerSecond = options.increasePerSecond ?? 0.01;
    this.#minFactor = options.minFactor ?? 0.1;
    this.#defaultRetryAfterMs = options.defaultRetryAfterMs ?? 1000;
    this.#maxAttempts = Math.max(1, options.maxAttempts ?? 10);
    this.#random = options.random ?? Math.random;
    this.#headroom = Math.min(1, Math.max(0, options.arrivalLeadMs ?? ARRIVAL_LEAD_MS) / MS_PER_MINUTE);
  }

  /**
   * Takes `estimate.tokens` and one request from the shared budget, or throws a retryable, in-flight
   * LlmCallError with the ms until they would fit (never waits). Common case: one write, on this governor's
   * last view of the item; a read first only when that view is stale or shows too little.
   */
  acquire(estimate: { readonly tokens: number }): Promise<Reservation> {
    return this.#serially(() => this.#acquire(Math.max(0, Math.ceil(estimate.tokens))));
  }

  async #acquire(tokens: number): Promise<Reservation> {
    // The item as this governor last wrote or read it is tried first: the write is conditional on its version,
    // so a stale view costs one refused write and then the reads below. From that view, too little budget is
    // only a hint (others may have refunded): the item has the say.
    const known = this.#known;
    if (known !== null) {
      const now = this.#clock.now();
      if (
        waitMs(this.#withUnwritten(known), now, tokens) <= 0 &&
        (await this.#replace(known, take(advance(known, now), tokens)))
      )
        return this.#reservation(tokens, now);
    }
    for (let attempt = 1; ; attempt++) {
      const read = await this.#read();
      const now = this.#clock.now();
      if (read === null) {
        // First use: the buckets start full, so the call fits (one larger than a full bucket goes into debt).
        if (await this.#create(take(this.#fresh(now), tokens))) return this.#reservation(tokens, now);
      } else {
        const wait = waitMs(this.#withUnwritten(read), now, tokens);
        if (wait > 0) throw this.#noBudget(wait);
        if (await this.#replace(read, take(advance(read, now), tokens)))
          return this.#reservation(tokens, now);
      }
      if (attempt >= this.#maxAttempts) throw this.#contended(attempt);
      await this.#backoff(attempt);
    }
  }

  /**
   * The call behind `reservation` was answered 429: it is refunded, the rate is cut once per burst (only a
   * call admitted after the last cut cuts again), and every governor pauses for the retry-after.
   */
  async rateLimited(reservation: Reservation | null, retryAfterMs: number | null): Promise<void> {
    try {
      await this.#serially(() => this.#rateLimited(reservation, retryAfterMs));
    } finally {
      // Given back only once the pause is written: a refund first would let this container's next calls in.
      await reservation?.settle(0, false);
    }
  }

  async #rateLimited(reservation: Reservation | null, retryAfterMs: number | null): Promise<void> {
    const pause = retryAfterMs !== null && retryAfterMs >= 0 ? retryAfterMs : this.#defaultRetryAfterMs;
    const done = await this.#modify((state, now) => {
      const cut = reservation === null || reservation.admittedAt > state.cutAt;
      const factor = cut ? Math.max(this.#minFactor, state.factor * this.#decrease) : state.factor;
      const pausedUntil = Math.max(state.pausedUntil, now + pause);
      return capLevels({
        ...state,
        factor,
        cutAt: cut ? now : state.cutAt,
        pausedUntil,
        // Growth restarts after the pause, so the time spent waiting does not count as success.
        grownAt: Math.max(state.grownAt, pausedUntil),
      });
    });
    if (!done) throw this.#contended(this.#maxAttempts);
  }

  /**
   * A call succeeded: the factor grows by `increasePerSecond` of the limit per second since the last growth
   * (at most 5 s per call). At full rate it costs no call at all; otherwise one conditional write.
   */
  succeeded(): Promise<void> {
    return this.#serially(() => this.#succeeded());
  }

  async #succeeded(): Promise<void> {
    const known = this.#known ?? (await this.#read());
    if (known === null || known.factor >= 1) return;
    const now = this.#clock.now();
    // Capped, so one success after a long idle spell does not restore the full rate at once.
    const seconds = Math.min(5, Math.max(0, now - known.grownAt) / 1000);
    if (seconds <= 0) return;
    const factor = Math.min(1, known.factor + this.#increasePerSecond * seconds);
    const grownAt = Math.max(known.grownAt, now);
    const applied =
      (await this.#conditional(
        new UpdateCommand({
          TableName: this.#table,
          Key: this.#key,
          UpdateExpression: "SET #factor = :factor, #grownAt = :grownAt",
          ConditionExpression: "#factor = :knownFactor AND #grownAt = :knownGrownAt",
          ExpressionAttributeNames: { "#factor": "factor", "#grownAt": "grownAt" },
          ExpressionAttributeValues: {
            ":factor": factor,
            ":grownAt": grownAt,
            ":knownFactor": known.factor,
            ":knownGrownAt": known.grownAt,
          },
        }),
      )) !== null;
    // Lost to another governor: it grew the factor for the same time (or cut it). Nothing left to do.
    this.#known = applied ? { ...known, factor, grownAt } : null;
  }

  /**
   * The provider knows best: when it reports a lower limit or less left than the item says, the item takes
   * it; when it reports more than the item has plus everything admitted lately, the item takes that (see
   * raiseToHeaders). Skipped without a call when this governor's last view of the item calls for neither.
   */
  observeHeaders(reported: RemainingSnapshot): Promise<void> {
    return this.#serially(async () => {
      // Refunds not yet written ride along with the write (#replace) and land on top of what it sets: the
      // levels compared and set here leave room for them, so the item ends at what the provider reported.
      const unwritten = { ...this.#unwritten };
      const less = (remaining: number | null, refund: number) =>
        remaining === null ? null : remaining - refund;
      const snapshot: RemainingSnapshot = {
        ...reported,
        remainingTokens: less(reported.remainingTokens, unwritten.token),
        remainingRequests: less(reported.remainingRequests, unwritten.request),
      };
      const change = (state: RateState): RateState | null =>
        followHeaders(state, snapshot) ?? raiseToHeaders(state, snapshot);
      const known = this.#known;
      if (known !== null && change(advance(known, this.#clock.now())) === null) return;
      // Advisory: when other governors keep the item busy, the next response brings fresh headers anyway.
      await this.#modify((state) => change(state));
    });
  }

  /**
   * Runs read-modify-writes of this governor one at a time. The calls of one container (a batch of records
   * in parallel) would otherwise race each other for the same item version: all but one write fails and
   * reads again, several requests per call on the hottest item of the table.
   */
  #serially<T>(work: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(work);
    this.#queue = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** The shared state, refilled to now; null before the first acquire. For tests and reports. */
  async state(): Promise<DynamoGovernorState | null> {
    const read = await this.#read();
    if (read === null) return null;
    const state = advance(read, this.#clock.now());
    return {
      version: state.version,
      factor: state.factor,
      tokensAvailable: state.tokens?.level ?? null,
      requestsAvailable: state.requests?.level ?? null,
      tokenLimit: state.tokens?.limit ?? null,
      requestLimit: state.requests?.limit ?? null,
      pausedUntil: state.pausedUntil,
    };
  }

  #reservation(tokens: number, admittedAt: number): Reservation {
    let settled = false;
    return {
      tokens,
      admittedAt,
      settle: async (actualTokens: number, requestCharged = true) => {
        if (settled) return;
        settled = true;
        const deltas: [BucketName, number][] = [];
        if (this.#tokensPerMinute !== null && actualTokens !== tokens)
          deltas.push(["token", tokens - actualTokens]);
        if (this.#requestsPerMinute !== null && !requestCharged) deltas.push(["request", 1]);
        if (deltas.length === 0) return;
        const charged = deltas.some(([, delta]) => delta < 0);
        if (!charged) {
          // A refund waits for this governor's next write (see the class comment).
          for (const [name, delta] of deltas) this.#unwritten[name] += delta;
          return;
        }
        await this.#add(deltas, true);
      },
    };
  }

  /**
   * Writes the refunds not written yet, if any: at the end of an invocation, so a container that then idles
   * does not keep budget from the others.
   */
  flush(): Promise<void> {
    return this.#serially(async () => {
      const deltas = BUCKETS.map(([name]) => [name, this.#unwritten[name]] as [BucketName, number]).filter(
        ([, delta]) => delta !== 0,
      );
      if (deltas.length === 0) return;
      await this.#add(deltas, false);
      for (const [name, delta] of deltas) this.#unwritten[name] -= delta;
    });
  }

  /** The state with this governor's unwritten refunds in it, as it will be once they are written. */
  #withUnwritten(state: RateState): RateState {
    return capLevels(addToLevels(state, this.#unwritten));
  }

  /**
   * One atomic ADD of `deltas` to the levels, without a read: an ADD commutes with every other write (see the
   * class comment). A refund leaves the version alone: a governor whose view misses it only thinks it has
   * less. A charge beyond the reservation bumps it, so no governor admits a call on a view that thinks it has
   * more than the item.
   */
  async #add(deltas: readonly [BucketName, number][], charged: boolean): Promise<void> {
    const adds = deltas.map(([name]) => `#${name}Level :${name}`);
    if (charged) adds.push("#version :one");
    const written = await this.#conditional(
      new UpdateCommand({
        TableName: this.#table,
        Key: this.#key,
        UpdateExpression: `ADD ${adds.join(", ")}`,
        // An item deleted by TTL meanwhile is not re-created as a stub holding only the refund.
        ConditionExpression: "attribute_exists(#pk)",
        ExpressionAttributeNames: {
          "#pk": PK,
          ...(charged ? { "#version": "version" } : {}),
          ...Object.fromEntries(deltas.map(([name]) => [`#${name}Level`, `${name}Level`])),
        },
        ExpressionAttributeValues: {
          ...(charged ? { ":one": 1 } : {}),
          ...Object.fromEntries(deltas.map(([name, delta]) => [`:${name}`, delta])),
        },
        ...(charged ? { ReturnValues: "UPDATED_NEW" as const } : {}),
      }),
    );
    const known = this.#known;
    if (charged && known !== null) {
      // Still current only if nobody else wrote in between.
      const version = written?.version;
      this.#known =
        typeof version === "number" && version === known.version + 1 ? { ...known, version } : null;
    }
    const current = this.#known;
    if (current !== null) this.#known = addToLevels(current, Object.fromEntries(deltas));
  }

  /** Reads the item (strongly consistent), applies `change`, writes it back if it changed; retries on conflict. */
  async #modify(change: (state: RateState, now: number) => RateState | null): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      const read = await this.#read();
      if (read === null) return true;
      const now = this.#clock.now();
      const next = change(advance(read, now), now);
      if (next === null) return true;
      if (await this.#replace(read, next)) return true;
      if (attempt >= this.#maxAttempts) return false;
      await this.#backoff(attempt);
    }
  }

  async #read(): Promise<RateState | null> {
    const out = await this.#call(() =>
      this.#client.send(new GetCommand({ TableName: this.#table, Key: this.#key, ConsistentRead: true })),
    );
    this.#known = out.Item === undefined ? null : this.#parse(out.Item);
    return this.#known;
  }

  #parse(raw: Record<string, unknown>): RateState {
    const item = RateItem.parse(raw);
    const level = (configured: number | null, stored?: number, limit?: number): Level | null => {
      if (configured === null) return null;
      // The item stores a limit only when the headers reported one below a configuration's: a limit configured
      // higher since (a tier upgrade, redeployed) holds until the headers report less again.
      const effective = Math.min(configured, limit ?? configured);
      // A bucket this governor has but the item lacks (another configuration made it) starts full.
      return {
        limit: effective,
        configured,
        level: stored ?? fullLevel(effective, item.factor, this.#headroom),
      };
    };
    return {
      headroom: this.#headroom,
      version: item.version,
      refilledAt: item.refilledAt,
      factor: item.factor,
      cutAt: item.cutAt,
      grownAt: item.grownAt,
      pausedUntil: item.pausedUntil,
      tokens: level(this.#tokensPerMinute, item.tokenLevel, item.tokenLimit),
      requests: level(this.#requestsPerMinute, item.requestLevel, item.requestLimit),
      recentTokens: item.recentTokens ?? 0,
      recentAt: item.recentAt ?? item.refilledAt,
    };
  }

  #fresh(now: number): RateState {
    const full = (limit: number | null): Level | null =>
      limit === null ? null : { limit, configured: limit, level: fullLevel(limit, 1, this.#headroom) };
    return {
      headroom: this.#headroom,
      version: 0,
      refilledAt: now,
      factor: 1,
      cutAt: 0,
      grownAt: now,
      pausedUntil: 0,
      tokens: full(this.#tokensPerMinute),
      requests: full(this.#requestsPerMinute),
      recentTokens: 0,
      recentAt: now,
    };
  }

  /** Creates the item as `state` (version 1); false when another governor created it first. */
  async #create(state: RateState): Promise<boolean> {
    const item: Record<string, unknown> = {
      ...this.#key,
      version: 1,
      refilledAt: state.refilledAt,
      factor: state.factor,
      cutAt: state.cutAt,
      grownAt: state.grownAt,
      pausedUntil: state.pausedUntil,
      recentTokens: state.recentTokens,
      recentAt: state.recentAt,
      [TABLE_SCHEMA.ttlAttribute]: this.#expiresAt(state.refilledAt),
    };
    for (const [name, field] of BUCKETS) {
      const bucket = state[field];
      if (bucket === null) continue;
      item[`${name}Level`] = bucket.level;
      // Never the configured limit itself (see #parse): a configuration raised later would be held to it.
      if (bucket.limit < bucket.configured) item[`${name}Limit`] = bucket.limit;
    }
    const created =
      (await this.#conditional(
        new PutCommand({
          TableName: this.#table,
          Item: item,
          ConditionExpression: "attribute_not_exists(#pk)",
          ExpressionAttributeNames: { "#pk": PK },
        }),
      )) !== null;
    if (created) this.#known = { ...state, version: 1 };
    return created;
  }

  /**
   * Writes `next` over `read` if the item's version is still `read`'s. Levels go as deltas against what is
   * stored (so a concurrent settle's ADD survives); other fields only when they changed.
   */
  async #replace(read: RateState, computed: RateState): Promise<boolean> {
    // This governor's unwritten refunds ride along (as they stand now: one settled meanwhile waits its turn).
    const riding = { ...this.#unwritten };
    const next = this.#withUnwritten(computed);
    const sets = ["#version = :nextVersion", "#expiresAt = :expiresAt"];
    const names: Record<string, string> = {
      "#version": "version",
      "#expiresAt": TABLE_SCHEMA.ttlAttribute,
    };
    const values: Record<string, unknown> = {
      ":version": read.version,
      ":nextVersion": read.version + 1,
      ":expiresAt": this.#expiresAt(next.refilledAt),
    };
    const set = (field: string, value: unknown) => {
      sets.push(`#${field} = :${field}`);
      names[`#${field}`] = field;
      values[`:${field}`] = value;
    };
    for (const field of [
      "refilledAt",
      "factor",
      "cutAt",
      "grownAt",
      "pausedUntil",
      "recentTokens",
      "recentAt",
    ] as const) {
      if (next[field] !== read[field]) set(field, next[field]);
    }
    for (const [name, field] of BUCKETS) {
      const before = read[field];
      const after = next[field];
      if (before === null || after === null) continue;
      if (after.level !== before.level) {
        // `if_not_exists`: a bucket the item lacked was read as full; the base is what was read then.
        sets.push(`#${name}Level = if_not_exists(#${name}Level, :${name}Base) + :${name}Delta`);
        names[`#${name}Level`] = `${name}Level`;
        values[`:${name}Base`] = before.level;
        values[`:${name}Delta`] = after.level - before.level;
      }
      if (after.limit !== before.limit) set(`${name}Limit`, after.limit);
    }
    const applied =
      (await this.#conditional(
        new UpdateCommand({
          TableName: this.#table,
          Key: this.#key,
          UpdateExpression: `SET ${sets.join(", ")}`,
          ConditionExpression: "#version = :version",
          ExpressionAttributeNames: names,
          ExpressionAttributeValues: values,
        }),
      )) !== null;
    if (applied) {
      this.#known = { ...next, version: read.version + 1 };
      for (const [name] of BUCKETS) this.#unwritten[name] -= riding[name];
    }
    return applied;
  }

  #expiresAt(now: number): number {
    return Math.floor(now / 1000) + IDLE_TTL_SECONDS;
  }

  /** Sends a conditional write: the attributes it returned ({} unless asked for), or null when its condition failed. */
  async #conditional(command: PutCommand | UpdateCommand): Promise<Record<string, unknown> | null> {
    try {
      // The client's send is overloaded per command type: narrow the union first.
      const out = await this.#call(() =>
        command instanceof PutCommand ? this.#client.send(command) : this.#client.send(command),
      );
      return out.Attributes ?? {};
    } catch (error) {
      if (isConditionFailed(error)) return null;
      throw error;
    }
  }

  /**
   * Every DynamoDB call: a failed condition is passed on as is; anything else (throttling on the hot item, a
   * network error) becomes a retryable LlmCallError, so the pipeline tries the call again rather than
   * failing the sample.
   */
  async #call<T>(send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } catch (error) {
      if (isConditionFailed(error)) throw error;
      throw new LlmCallError(`rate governor of ${this.#model} unavailable: ${String(error)}`, {
        retryable: true,
        cause: error,
      });
    }
  }

  #noBudget(waitMs: number): NoRateBudgetError {
    // Spread the waiting messages, so they do not all come back at the same instant.
    const jitter = this.#random() * Math.min(5_000, 250 + waitMs / 10);
    return new NoRateBudgetError(
      `no rate budget for ${this.#model} for ${Math.ceil(waitMs)} ms`,
      Math.ceil(waitMs + jitter),
    );
  }

  #contended(attempts: number): NoRateBudgetError {
    return new NoRateBudgetError(
      `rate governor item of ${this.#model} changed under ${attempts} writes in a row; try again`,
      Math.ceil(250 + this.#random() * 1000),
    );
  }

  #backoff(attempt: number): Promise<void> {
    const ms = this.#random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
    return new Promise((resolve) => setTimeout(resolve, ms));
  }
}

/** How long until `read`, refilled to `now`, has `tokens` and a request to spare (0: now). */
function waitMs(read: RateState, now: number, tokens: number): number {
  const state = advance(read, now);
  // A cost above what the bucket ever holds waits for a full bucket.
  const wait = (bucket: Level | null, cost: number): number =>
    bucket === null
      ? 0
      : refillWaitMs(Math.min(cost, ceiling(state, bucket)), bucket.level, capacity(state, bucket));
  return Math.max(state.pausedUntil - now, wait(state.tokens, tokens), wait(state.requests, 1));
}

/** The bucket's refill per minute (and its size, but for the headroom). */
function capacity(state: RateState, bucket: Level): number {
  return bucketCapacity(bucket.limit, state.factor);
}

/** The most a bucket holds: its capacity less the headroom (see ARRIVAL_LEAD_MS). */
function fullLevel(limit: number, factor: number, headroom: number): number {
  return bucketCapacity(limit, factor) * (1 - headroom);
}

function ceiling(state: RateState, bucket: Level): number {
  return fullLevel(bucket.limit, state.factor, state.headroom);
}

/** The state with `deltas` added to its levels. */
function addToLevels(state: RateState, deltas: Readonly<Partial<Record<BucketName, number>>>): RateState {
  const plus = (bucket: Level | null, delta = 0): Level | null =>
    bucket === null || delta === 0 ? bucket : { ...bucket, level: bucket.level + delta };
  return {
    ...state,
    tokens: plus(state.tokens, deltas.token),
    requests: plus(state.requests, deltas.request),
  };
}

/** The state refilled to `now` (never backwards, should another Lambda's clock run ahead), its recent tokens faded. */
function advance(state: RateState, now: number): RateState {
  const refill = (bucket: Level | null): Level | null =>
    bucket === null
      ? null
      : {
          ...bucket,
          level: Math.min(
            ceiling(state, bucket),
            refilledLevel(bucket.level, capacity(state, bucket), now - state.refilledAt),
          ),
        };
  const recentAt = Math.max(state.recentAt, now);
  return {
    ...state,
    refilledAt: Math.max(state.refilledAt, now),
    tokens: refill(state.tokens),
    requests: refill(state.requests),
    recentTokens: state.recentTokens * Math.exp(-(recentAt - state.recentAt) / RECENT_WINDOW_MS),
    recentAt,
  };
}

/** Levels no higher than the ceiling at the state's factor and limits. */
function capLevels(state: RateState): RateState {
  const cap = (bucket: Level | null): Level | null =>
    bucket === null ? null : { ...bucket, level: Math.min(bucket.level, ceiling(state, bucket)) };
  return { ...state, tokens: cap(state.tokens), requests: cap(state.requests) };
}

function take(state: RateState, tokens: number): RateState {
  const minus = (bucket: Level | null, cost: number): Level | null =>
    bucket === null ? null : { ...bucket, level: bucket.level - cost };
  return {
    ...state,
    tokens: minus(state.tokens, tokens),
    requests: minus(state.requests, 1),
    recentTokens: state.recentTokens + tokens,
  };
}

/**
 * `state` (refilled to now) lowered to what the headers report, or null when they report nothing lower. The
 * limit they report is taken either way, up to the configured one: a limit learned lower earlier rises again
 * when the provider raises it.
 */
function followHeaders(state: RateState, snapshot: RemainingSnapshot): RateState | null {
  let changed = false;
  const lower = (bucket: Level | null, reported: number | null, remaining: number | null): Level | null => {
    if (bucket === null) return null;
    let next = bucket;
    const limit = reported !== null && reported > 0 ? Math.min(reported, bucket.configured) : next.limit;
    if (limit !== next.limit) {
      next = { ...next, limit, level: Math.min(next.level, bucketCapacity(limit, state.factor)) };
      changed = true;
    }
    if (remaining !== null && remaining < next.level) {
      // Below 0 only by this governor's unwritten refunds (see observeHeaders), which land on it.
      next = { ...next, level: remaining };
      changed = true;
    }
    return next;
  };
  const next = {
    ...state,
    tokens: lower(state.tokens, snapshot.limitTokens ?? null, snapshot.remainingTokens),
    requests: lower(state.requests, snapshot.limitRequests ?? null, snapshot.remainingRequests),
  };
  return changed ? next : null;
}

/**
 * `state` (refilled to now) with its token level raised to what the headers report less everything admitted
 * lately, or null when that is not RAISE_MARGIN of the capacity more than it has. Calls admitted but not yet
 * charged by the provider are among those admitted lately, so the item never holds more than the provider
 * would allow once they are. Requests are not raised: every provider counts a request the same.
 */
function raiseToHeaders(state: RateState, snapshot: RemainingSnapshot): RateState | null {
  const bucket = state.tokens;
  const remaining = snapshot.remainingTokens;
  if (bucket === null || remaining === null) return null;
  const target = Math.min(ceiling(state, bucket), remaining - state.recentTokens);
  if (target - bucket.level <= RAISE_MARGIN * capacity(state, bucket)) return null;
  return { ...state, tokens: { ...bucket, level: target } };
}

const isConditionFailed = (error: unknown): boolean =>
  error instanceof Error && error.name === "ConditionalCheckFailedException";

function positive(value: number | undefined): value is number {
  return value !== undefined && Number.isFinite(value) && value > 0;
}
