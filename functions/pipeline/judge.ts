import { judgeModelOf } from "../evolution/config.ts";
import { ruleFailure } from "../evolution/filters.ts";
import {
  applyVerdicts,
  buildJudgeMessages,
  judgeAnswerSchema,
  judgeMaxTokens,
  judgeName,
  judgeSchema,
} from "../evolution/judge.ts";
import { priceOf } from "../evolution/pricing.ts";
import type { Item, RoundRecord, Verdict, Version } from "../evolution/schemas.ts";
import type { JudgeMessage } from "../ports/messages.ts";
import { addUsageTotals, zeroUsage } from "../ports/state-store.ts";
import { askStructured } from "./ask.ts";
import type { StageDeps, StageInput, StageResult } from "./deps.ts";
import { endSample, failOrRetry, lostFinalize } from "./outcome.ts";
import { loadShardConfig } from "./shard-config.ts";
import { workKeyOf } from "./sweep.ts";

/** Instruction elimination: rule filters, then one text-only judge call; only improved items are kept. */
export async function judgeSample(input: StageInput<JudgeMessage>, deps: StageDeps): Promise<StageResult> {
  const { run, shard, sample: key, round } = input.message;
  const record = await deps.state.getSample(run, shard, key);
  const config = await loadShardConfig(deps.state, run, shard);
  if (!record || !config) return { next: [], outcome: "unknown sample" };
  if (record.status === "EVOLVING" && record.round === round + 1) {
    return { next: [{ kind: "evolve", run, shard, sample: key, round: round + 1 }], outcome: "duplicate" };
  }
  if (record.status !== "JUDGING" || record.round !== round || !record.pending) {
    return { next: await lostFinalize(deps, run, shard), outcome: "duplicate" };
  }
  const pending = record.pending;
  const from = record.versions.find((v) => v.round === pending.from) ?? record.versions[0];
  const parents = new Map((from?.items ?? []).map((item) => [item.id, item]));

  const verdicts: Verdict[] = [];
  const survivors: Item[] = [];
  for (const candidate of pending.items) {
    const parent = candidate.parent === null ? null : (parents.get(candidate.parent) ?? null);
    const failure = config.preFilter ? ruleFailure(candidate, parent, record.sample?.boxes ?? []) : null;
    if (failure === null) survivors.push(candidate);
    else
      verdicts.push({
        id: candidate.id,
        parent: candidate.parent,
        improved: false,
        score: 0,
        reason: failure,
        by: "rule",
      });
  }

  let kept: Item[] = [];
  let usage = zeroUsage();
  if (survivors.length > 0) {
    // The names the judge knows them by: the same for every sample, so the schema is too (see judgeName).
    const ids = survivors.map((item) => judgeName(item.id));
    const model = judgeModelOf(config);
    try {
      const asked = await askStructured(
        deps,
        {
          model,
          messages: buildJudgeMessages(from?.items ?? [], survivors),
          schemaName: "judge",
          schema: judgeSchema(ids),
          temperature: config.temperature,
          maxTokens: judgeMaxTokens(survivors.length, config.judgeMaxTokens),
          seed: config.seed,
        },
        {
          imageDigest: null,
          schema: judgeAnswerSchema(ids),
          maxRetries: config.maxAnswerRetries,
          sizeMaxTokens: config.sizeMaxTokens,
          price: priceOf(model, config.prices),
          delivery: input.delivery ?? `${run}/${shard}/${key}/judge/${round}#local`,
          payer: workKeyOf(input.message),
          retries: record.retries ?? 0,
          ...(config.mode === "batch"
            ? { batch: { run, shard, message: input.message, maxTries: config.maxBatchTries } }
            : {}),
        },
      );
      deps.faults?.point("judge:after-answer-stored");
      const applied = applyVerdicts(survivors, asked.value);
      kept = applied.kept;
      verdicts.push(...applied.verdicts);
      usage = asked.usage;
    } catch (error) {
      return failOrRetry(deps, record, error, input.attempt, config, "judge");
    }
  }

  const order = new Map(pending.items.map((item, index) => [item.id, index]));
  verdicts.sort((a, b) => (order.get(a.id) ?? 0) - (order.get(b.id) ?? 0));
  const version: Version = { round, direction: pending.direction, from: pending.from, items: kept };
  const roundRecord: RoundRecord = {
    round,
    direction: pending.direction,
    from: pending.from,
    candidates: pending.items,
    verdicts,
    kept: kept.length,
  };
  const update = {
    versions: [...record.versions, version],
    rounds: [...record.rounds, roundRecord],
    pending: null,
    usage: addUsageTotals(record.usage, usage),
  };
  if (round < config.rounds) {
    const result = await deps.state.transition(record, {
      ...update,
      status: "EVOLVING",
      round: round + 1,
    });
    if (!result.applied) return { next: [], outcome: "duplicate" };
    deps.faults?.point("judge:after-state-write");
    return {
      next: [{ kind: "evolve", run, shard, sample: key, round: round + 1 }],
      outcome: `judged:${kept.length}`,
    };
  }
  const evolved = update.versions.some((v) => v.round > 0 && v.items.length > 0);
  // Every round eliminated: the sample passes through unchanged (ARCHITECTURE.md).
  const ended = await endSample(
    deps,
    record,
    { ...update, status: evolved ? "DONE" : "PASSED_THROUGH" },
    "done",
  );
  deps.faults?.point("judge:after-state-write");
  return ended;
}
