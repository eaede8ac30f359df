import { createHash } from "node:crypto";
import type { z } from "zod";
import type { ModelPrice } from "../evolution/config.ts";
import { LlmAnswerError, LlmCallError, MmevolError } from "../ports/errors.ts";
import type { LlmRequest } from "../ports/llm.ts";
import type { Message } from "../ports/messages.ts";
import { addUsage, type StoredAnswer, type UsageTotals, zeroUsage } from "../ports/state-store.ts";
import { storedAnswer, unusableAnswer } from "./answers.ts";
import { deferToBatch } from "./batch.ts";
import { messageOf, type StageDeps } from "./deps.ts";

/** The cache key of a request: model, request (image data replaced by its digest) and attempt. */
export function answerHash(request: LlmRequest, imageDigest: string | null, attempt: number): string {
  const messages = request.messages.map((m) => ({
    role: m.role,
    content:
      typeof m.content === "string"
        ? m.content
        : m.content.map((part) => (part.type === "text" ? part : { type: part.type, detail: part.detail })),
  }));
  const body = JSON.stringify({
    model: request.model,
    messages,
    schemaName: request.schemaName,
    schema: request.schema,
    temperature: request.temperature,
    maxTokens: request.maxTokens,
    seed: request.seed,
    imageDigest,
    attempt,
  });
  return createHash("sha256").update(body).digest("hex");
}

/**
 * How long a receive may hold a request before another may pay for it: past one call with its client retries
 * (the Lambda function's timeout), and well within the queue's visibility timeout.
 */
const CLAIM_MS = 3 * 60_000;

/** A claim's owner: the work that pays and the delivery that holds it (older claims hold the delivery only). */
const claimOwner = (payer: string, delivery: string): string => `${payer}\n${delivery}`;
const ownerParts = (owner: string): { payer: string | null; delivery: string } => {
  const cut = owner.lastIndexOf("\n");
  return cut < 0
    ? { payer: null, delivery: owner }
    : { payer: owner.slice(0, cut), delivery: owner.slice(cut + 1) };
};

/** The longest another work's claim on the same request is waited for before looking again. */
const OTHER_WORK_RECHECK_MS = 10_000;

export interface Asked<T> {
  readonly value: T;
  /** Every answer this ask used, stored or new: the sample pays them once, when its transition applies. */
  readonly usage: UsageTotals;
}

/**
 * One structured request. Every answer is stored under its hash before it is used, so a rerun after a crash
 * reads it back instead of paying again. A schema-invalid answer is asked again (a new attempt, a new key)
 * up to `maxRetries` times, then fails with the reason.
 */
export async function askStructured<S extends z.ZodType>(
  deps: Pick<StageDeps, "llm" | "state" | "logger" | "clock" | "claimMs" | "blobs" | "batch" | "sizer">,
  request: LlmRequest,
  options: {
    imageDigest: string | null;
    schema: S;
    maxRetries: number;
    price: ModelPrice;
    /** Who holds the call: one receive of one message, as `<message id>#<receive id>`. */
    delivery: string;
    /**
     * The work that pays: the same for every message and receive of one stage of one sample's round
     * (`workKeyOf` the message), so a duplicate pays once and another sample with the same request not at all.
     * Default: the delivery's message.
     */
    payer?: string;
    /** Batch mode: where the request is queued on a cache miss, and the message its answer brings back. */
    batch?: { run: string; shard: string; message: Message; maxTries: number };
    /** Online calls go out with `max_tokens` sized by `deps.sizer` under the request's own (see the sizer). */
    sizeMaxTokens?: boolean;
    /**
     * How many times the sample was started again after it FAILED (`--retry-failed`): each adds a fresh set of
     * tries after the stored ones, so answers that failed it before are not all there is to read again.
     */
    retries?: number;
  },
): Promise<Asked<z.infer<S>>> {
  let usage = zeroUsage();
  const payer = options.payer ?? messageOf(options.delivery);
  const owner = claimOwner(payer, options.delivery);
  let lastReason = "";
  // Sizes this request's tries until one is cut at a sized max_tokens: the rest go out at the request's own,
  // and that try does not count against maxRetries (sizing may cost a call, never a sample).
  let sizer = options.sizeMaxTokens ? deps.sizer : undefined;
  const cutWhenSized = (answer: StoredAnswer) =>
    answer.cutAt !== undefined && answer.cutAt < request.maxTokens;
  let sizedCuts = 0;
  const retried = (options.retries ?? 0) * (options.maxRetries + 1);
  for (let attempt = 0; attempt <= options.maxRetries + sizedCuts + retried; attempt++) {
    // The hash is the request as configured, whatever max_tokens goes out: a rerun finds the same answers.
    const hash = answerHash(request, options.imageDigest, attempt);
    let answer = await deps.state.getAnswer(hash);
    // "answered": the same request of other work was answered while this one was about to wait for it.
    if (!answer && options.batch && (await deferToBatch(deps, options.batch, request, hash)) === "answered")
      answer = await deps.state.getAnswer(hash);
    if (!answer) {
      const sent = sizer === undefined ? request : { ...request, maxTokens: sizer.maxTokensFor(request) };
      // The rate budget first, then the claim: a message with no budget steps aside before it claims (a claim
      // taken and given back is two writes for nothing), and the claim is held only while the call runs.
      const admitted = deps.llm.admit ? await deps.llm.admit(sent) : null;
      const claimMs = deps.claimMs ?? CLAIM_MS;
      const claimedAt = deps.clock.now();
      const claim = await deps.state.claimRequest(hash, owner, claimMs).catch(async (error: unknown) => {
        await admitted?.cancel();
        throw error;
      });
      if (!claim.granted) {
        await admitted?.cancel();
        const holder = ownerParts(claim.holder);
        // Another receive of this same message (a redelivery while it still runs, or after a crash): try again
        // once that claim ends.
        if (messageOf(holder.delivery) === messageOf(options.delivery)) {
          throw new LlmCallError("this message is already being answered by another receive of it", {
            retryable: true,
            retryAfterMs: Math.max(1_000, claim.until - deps.clock.now() + 1_000),
            inFlight: true,
          });
        }
        // Other work with the very same request (an identical sample): its answer is this one's too, stored
        // within seconds; look again then, rather than drop this work as a duplicate.
        if (holder.payer !== null && holder.payer !== payer) {
          throw new LlmCallError("the same request is being answered for other work; its answer will serve", {
            retryable: true,
            retryAfterMs: Math.max(
              1_000,
              Math.min(OTHER_WORK_RECHECK_MS, claim.until - deps.clock.now() + 1_000),
            ),
            inFlight: true,
          });
        }
        // Another message of this same work (a duplicate send): this one has nothing to do.
        throw new RequestInFlightError();
      }
      let fresh: StoredAnswer;
      try {
        fresh = storedAnswer(
          await (admitted ? admitted.complete() : deps.llm.complete(sent)),
          options.price,
          "online",
        );
      } catch (error) {
        if (!(error instanceof LlmAnswerError)) {
          // No answer: give the claim up so a redelivery or a duplicate may try at once.
          await deps.state.releaseClaim(hash, owner);
          throw error;
        }
        // An answer cut at the token limit or empty is a bad answer, not a failed call: the try is spent
        // (stored with what it cost, so a rerun does not pay for it again) and the model is asked again.
        fresh = unusableAnswer(error, request.model, options.price, "online");
        const log = { schema: request.schemaName, attempt, reason: error.message };
        if (cutWhenSized(fresh))
          deps.logger.debug("answer cut at a sized max_tokens; asked again at the cap", log);
        else deps.logger.warn("unusable answer", log);
      }
      const heldMs = deps.clock.now() - claimedAt;
      if (heldMs > claimMs) {
        // Past the claim, another delivery may have claimed and paid for this same request.
        deps.logger.warn("answer arrived after its claim ended", {
          schema: request.schemaName,
          heldMs,
          claimMs,
        });
      }
      answer = { ...fresh, paidBy: payer };
      await deps.state.putAnswer(hash, answer);
    }
    // Every answer is paid for, a spent try too: by the work that asked for it (again, after a crash), not by
    // other work that found it stored.
    if (answer.paidBy === undefined || answer.paidBy === payer) usage = addUsage(usage, answer);
    if (answer.unusable !== undefined) {
      lastReason = answer.unusable;
      if (sizer !== undefined && cutWhenSized(answer)) {
        // Cut at a sized max_tokens: ask again at the request's own, on a try of its own.
        sizer = undefined;
        sizedCuts += 1;
      }
      continue;
    }
    deps.sizer?.observe(request, answer.completionTokens);
    const parsed = parseJson(answer.content);
    const result = parsed.ok ? options.schema.safeParse(parsed.value) : null;
    if (result?.success) return { value: result.data, usage };
    lastReason = parsed.ok ? (result?.error.issues.map(describeIssue).join("; ") ?? "invalid") : parsed.error;
    deps.logger.warn("schema-invalid answer", { schema: request.schemaName, attempt, reason: lastReason });
  }
  throw new AnswerRejectedError(
    `${request.schemaName}: answer invalid after ${options.maxRetries + 1 + sizedCuts + retried} tries: ${lastReason}`,
    usage,
  );
}

/**
 * Another delivery of the same message is paying for this very request right now: this one is a duplicate
 * and is acknowledged without work (if the other crashes, its own message comes back and claims again).
 */
export class RequestInFlightError extends MmevolError {
  constructor() {
    super("the same request is being answered for another delivery of this message", { retryable: false });
  }
}

/** The model kept answering outside the schema; carries what those answers cost. */
export class AnswerRejectedError extends MmevolError {
  readonly usage: UsageTotals;
  constructor(message: string, usage: UsageTotals) {
    super(message, { retryable: false });
    this.usage = usage;
  }
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const path = issue.path.map(String).join(".");
  return path ? `${path}: ${issue.message}` : issue.message;
}

function parseJson(text: string): { ok: true; value: unknown } | { ok: false; error: string } {
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (error) {
    return { ok: false, error: `not JSON: ${error instanceof Error ? error.message : String(error)}` };
  }
}
