import { chooseDirection } from "../evolution/directions.ts";
import { resolveImageKey } from "../evolution/image-path.ts";
import { priceOf } from "../evolution/pricing.ts";
import { buildEvolveMessages, EVOLVE_SCHEMA, EvolveAnswer } from "../evolution/prompts.ts";
import { candidatesFrom, latestNonEmpty } from "../evolution/rounds.ts";
import { ImageNotFoundError, ImageNotUploadedError, InvalidInputError } from "../ports/errors.ts";
import type { PreparedImage } from "../ports/images.ts";
import type { EvolveMessage } from "../ports/messages.ts";
import { addUsageTotals, TERMINAL_STATUSES, UNUSABLE_IMAGE_ERROR } from "../ports/state-store.ts";
import { askStructured } from "./ask.ts";
import type { StageDeps, StageInput, StageResult } from "./deps.ts";
import { endSample, failOrRetry, lostFinalize } from "./outcome.ts";
import { loadShardConfig, samplePrefix } from "./shard-config.ts";
import { workKeyOf } from "./sweep.ts";

/** One evolve call: the sample's latest non-empty version, one direction, the image last. */
export async function evolveSample(input: StageInput<EvolveMessage>, deps: StageDeps): Promise<StageResult> {
  const { run, shard, sample: key, round } = input.message;
  const record = await deps.state.getSample(run, shard, key);
  const config = await loadShardConfig(deps.state, run, shard);
  if (!record || !config || !record.sample) return { next: [], outcome: "unknown sample" };
  // A redelivered message whose work was done but whose next message may have been lost: send it again.
  if (record.status === "JUDGING" && record.round === round) {
    return { next: [{ kind: "judge", run, shard, sample: key, round }], outcome: "duplicate" };
  }
  const expected =
    (record.status === "INGESTED" && round === 1) || (record.status === "EVOLVING" && record.round === round);
  if (!expected) {
    // Ended here (an image it could not use) or later: its shard's finalize may be the message that was lost.
    const ended = TERMINAL_STATUSES.has(record.status);
    return { next: ended ? await lostFinalize(deps, run, shard) : [], outcome: "duplicate" };
  }

  const sample = record.sample;
  const direction = chooseDirection(config.seed, sample.id, round, config.weights);
  const from = latestNonEmpty(record.versions);
  try {
    const images: PreparedImage[] = [];
    for (const path of sample.images) {
      const imageRoot = config.imageRoot ?? "";
      const resolved = resolveImageKey(imageRoot, path);
      if (!resolved.ok) throw new InvalidInputError(resolved.error);
      images.push(
        await deps.images.prepare(resolved.key, {
          imageRoot,
          maxSide: config.maxImageSide,
          maxInputBytes: config.maxImageBytes,
          maxInputPixels: config.maxImagePixels,
        }),
      );
    }
    const messages = buildEvolveMessages(
      direction,
      { caption: sample.caption, boxes: sample.boxes, items: from.items },
      images.map((image) => ({ dataUrl: image.dataUrl, detail: config.imageDetail })),
    );
    const asked = await askStructured(
      deps,
      {
        model: config.model,
        messages,
        schemaName: `evolve_${direction}`,
        schema: EVOLVE_SCHEMA,
        temperature: config.temperature,
        maxTokens: config.maxTokens,
        seed: config.seed,
      },
      {
        imageDigest: images.map((image) => image.digest).join(","),
        schema: EvolveAnswer,
        maxRetries: config.maxAnswerRetries,
        sizeMaxTokens: config.sizeMaxTokens,
        price: priceOf(config.model, config.prices),
        delivery: input.delivery ?? `${run}/${shard}/${key}/evolve/${round}#local`,
        payer: workKeyOf(input.message),
        retries: record.retries ?? 0,
        ...(config.mode === "batch"
          ? { batch: { run, shard, message: input.message, maxTries: config.maxBatchTries } }
          : {}),
      },
    );
    deps.faults?.point("evolve:after-answer-stored");
    // The sample's ordinal, as its seed items' ids (ingest): its line is 1 for every record of a one-line JSON
    // array, which gave every sample's evolved items the same ids.
    const items = candidatesFrom(asked.value, from, samplePrefix(Number(record.key)), round, direction);
    const result = await deps.state.transition(record, {
      status: "JUDGING",
      round,
      pending: { round, direction, from: from.round, items },
      usage: addUsageTotals(record.usage, asked.usage),
    });
    if (!result.applied) return { next: [], outcome: "duplicate" };
    deps.faults?.point("evolve:after-state-write");
    return { next: [{ kind: "judge", run, shard, sample: key, round }], outcome: `evolved:${direction}` };
  } catch (error) {
    // Not in the bucket yet, shortly after the shard arrived: its upload may still be running.
    if (error instanceof ImageNotFoundError && deps.imageWaitMs !== undefined) {
      const arrived = (await deps.state.getShard(run, shard))?.createdAt ?? 0;
      const left = arrived + deps.imageWaitMs - deps.clock.now();
      if (left > 0)
        throw new ImageNotUploadedError(
          `${error.message} (yet: looking again for ${Math.ceil(left / 60_000)} more minute(s), in case it is still being uploaded)`,
          Math.min(left, 60_000, Math.ceil(deps.imageWaitMs / 10)),
        );
    }
    // An image that cannot be used means the sample cannot be evolved: it passes through, with the reason kept.
    if (error instanceof InvalidInputError) {
      return endSample(
        deps,
        record,
        { status: "PASSED_THROUGH", error: `${UNUSABLE_IMAGE_ERROR}${error.message}` },
        "passed",
      );
    }
    return failOrRetry(deps, record, error, input.attempt, config, "evolve");
  }
}
