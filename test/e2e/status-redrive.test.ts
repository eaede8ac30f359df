import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CreateBucketCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import {
  CreateQueueCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
} from "@aws-sdk/client-sqs";
import { afterAll, describe, expect, it } from "vitest";
import { deployedRedrive, deployedRedriveFailed, localRedrive } from "../../bin/commands/redrive.ts";
import { deployedStatus, localStatus } from "../../bin/commands/status.ts";
import { createTable } from "../../functions/adapters/aws/create-table.ts";
import { DynamoStateStore } from "../../functions/adapters/aws/dynamodb-state-store.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { CrashPoint } from "../../functions/ports/faults.ts";
import type { Stage } from "../../functions/ports/messages.ts";
import { DEAD_LETTERS_FILE, runLocal } from "../../functions/runtime/local.ts";
import { tempDir } from "../helpers/files.ts";
import {
  documentClient,
  dynamoClient,
  ensureMoto,
  s3Client,
  sqsClient,
  uniqueName,
} from "../helpers/moto.ts";
import { sampleRecord, shardRecord } from "../helpers/state-store-contract.ts";

const STAGES: readonly Stage[] = ["ingest", "evolve", "judge", "finalize"];
const OUTPUT: Record<Stage, string> = {
  ingest: "Ingest",
  evolve: "Evolve",
  judge: "Judge",
  finalize: "Finalize",
};

describe("mmevol status / redrive on a deployed (emulated) stack", () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  /** Queues with dead-letter queues, a table and an outputs file naming them, as the emulator writes it. */
  async function emulatedOutputs() {
    const { endpoint } = await ensureMoto();
    const sqs = sqsClient(endpoint);
    const prefix = uniqueName("sr");
    const outputs: Record<string, string> = { EmulatorEndpoint: endpoint };
    const urls: Partial<Record<Stage, { url: string; dlq: string }>> = {};
    for (const stage of STAGES) {
      const dlq = await sqs.send(new CreateQueueCommand({ QueueName: `${prefix}-${stage}-dlq` }));
      const dlqUrl = dlq.QueueUrl ?? "";
      const arn = await sqs.send(
        new GetQueueAttributesCommand({ QueueUrl: dlqUrl, AttributeNames: ["QueueArn"] }),
      );
      const main = await sqs.send(
        new CreateQueueCommand({
          QueueName: `${prefix}-${stage}`,
          Attributes: {
            RedrivePolicy: JSON.stringify({
              deadLetterTargetArn: arn.Attributes?.QueueArn,
              maxReceiveCount: 10,
            }),
          },
        }),
      );
      urls[stage] = { url: main.QueueUrl ?? "", dlq: dlqUrl };
      outputs[`${OUTPUT[stage]}QueueUrl`] = main.QueueUrl ?? "";
      outputs[`${OUTPUT[stage]}DeadLetterQueueUrl`] = dlqUrl;
    }
    const table = `${prefix}-table`;
    const dynamo = dynamoClient(endpoint);
    await createTable(dynamo, table);
    outputs.TableName = table;
    outputs.BucketName = `${prefix}-bucket`;
    const outputsFile = join(dir.path, `${prefix}-outputs.json`);
    writeFileSync(outputsFile, JSON.stringify({ [`${prefix}-stack`]: outputs }));

    return { endpoint, sqs, prefix, urls, table, dynamo, outputsFile };
  }

  it("shows a dead letter and a stuck sample, moves the letter back, and shows it gone", async () => {
    const { sqs, prefix, urls, table, dynamo, outputsFile } = await emulatedOutputs();
    const hourAgo = Date.now() - 60 * 60_000;
    const state = new DynamoStateStore({
      client: documentClient(dynamo),
      table,
      clock: { now: () => hourAgo },
    });
    await state.createShard(shardRecord({ run: prefix, updatedAt: hourAgo }));
    await state.putSamples([
      sampleRecord("stuck-one", { run: prefix, status: "JUDGING", round: 2, updatedAt: hourAgo }),
      sampleRecord("finished", { run: prefix, status: "DONE", round: 3, updatedAt: hourAgo }),
    ]);
    const dead = JSON.stringify({ kind: "evolve", run: prefix, shard: "s1", sample: "stuck-one", round: 2 });
    await sqs.send(new SendMessageCommand({ QueueUrl: urls.evolve?.dlq, MessageBody: dead }));

    const before = await deployedStatus({
      outputs: outputsFile,
      run: prefix,
      stuckAfterMs: 30 * 60_000,
      peek: 3,
    });
    const evolveBefore = before.queues.find((q) => q.stage === "evolve");
    expect(evolveBefore).toMatchObject({ deadLetters: 1, visible: 0 });
    expect(evolveBefore?.peeked.map((p) => p.body)).toEqual([dead]);
    expect(before.shards).toHaveLength(1);
    expect(before.shards[0]?.stuck.map((s) => s.key)).toEqual(["stuck-one"]);
    expect(before.shards[0]?.counts).toMatchObject({ JUDGING: 1, DONE: 1 });
    const text = before.lines.join("\n");
    expect(text).toContain("dead letters 1");
    expect(text).toContain(dead);
    expect(text).toContain("raises their receive counts");
    expect(text).toMatch(/line 1: JUDGING round 2, 1h0m \(key stuck-one\)/);

    const redriven = await deployedRedrive({ outputs: outputsFile, queue: "all" });
    expect(redriven.moved).toEqual({ ingest: 0, evolve: 1, judge: 0, finalize: 0 });

    const after = await deployedStatus({
      outputs: outputsFile,
      run: prefix,
      stuckAfterMs: 30 * 60_000,
      peek: 3,
    });
    const evolveAfter = after.queues.find((q) => q.stage === "evolve");
    expect(evolveAfter).toMatchObject({ deadLetters: 0, visible: 1 });
    expect(after.lines.join("\n")).not.toContain(dead);
    expect(after.queues.every((q) => q.deadLetters === 0)).toBe(true);
  }, 30_000);

  it("with --failed, starts FAILED samples again from their seed and sends their evolve messages", async () => {
    const { sqs, prefix, urls, table, dynamo, outputsFile } = await emulatedOutputs();
    const state = new DynamoStateStore({ client: documentClient(dynamo), table });
    await state.createShard(shardRecord({ run: prefix }));
    const seed = { round: 0, direction: null, from: null, items: [] };
    await state.putSamples([
      sampleRecord("a", { run: prefix, line: 3, versions: [seed] }),
      sampleRecord("b", { run: prefix, line: 7 }),
    ]);
    await state.completeIngest(prefix, "s1", 2);
    const a = await state.getSample(prefix, "s1", "a");
    const b = await state.getSample(prefix, "s1", "b");
    if (a === null || b === null) throw new Error("samples not stored");
    await state.transition(a, { status: "FAILED", round: 2, error: "evolve: answer invalid after 3 tries" });
    await state.transition(b, { status: "DONE", round: 3 });
    expect(await state.markFinalized(prefix, "s1", 0)).toBe(true);

    const redriven = await deployedRedriveFailed({ outputs: outputsFile, run: prefix });
    expect(redriven.reopened.map((r) => r.samples.map((s) => s.key))).toEqual([["a"]]);
    expect(redriven.lines.join("\n")).toContain(`${prefix}/s1: 1 sample(s), line(s) 3`);
    expect(await state.getSample(prefix, "s1", "a")).toMatchObject({
      status: "INGESTED",
      round: 0,
      versions: [seed],
      retries: 1,
      error: null,
    });
    expect(await state.getShard(prefix, "s1")).toMatchObject({ pending: 1, finalized: false });
    const got = await sqs.send(
      new ReceiveMessageCommand({ QueueUrl: urls.evolve?.url, MaxNumberOfMessages: 10, WaitTimeSeconds: 1 }),
    );
    expect((got.Messages ?? []).map((m) => JSON.parse(m.Body ?? ""))).toEqual([
      { kind: "evolve", run: prefix, shard: "s1", sample: "a", round: 1 },
    ]);
    // Unfinished now, the shard's counts show in status, without a FAILED one left to hint at.
    const status = await deployedStatus({ outputs: outputsFile, run: prefix, stuckAfterMs: 60_000, peek: 0 });
    expect(status.shards[0]?.counts).toMatchObject({ INGESTED: 1, DONE: 1, FAILED: 0 });
    expect(status.lines.join("\n")).not.toContain("redrive --failed");
    // Nothing FAILED is left; the sample started again and not begun gets its message again (a duplicate is
    // only acknowledged), in case the first send failed after the state was changed.
    const again = await deployedRedriveFailed({ outputs: outputsFile, run: prefix });
    expect(again.reopened).toEqual([]);
    expect(again.lines).toEqual([
      `no FAILED samples, and none passed through for an unusable image, in run ${prefix}: nothing to retry`,
      "sent 1 evolve message(s) again, for samples started again earlier that have not begun",
    ]);
  }, 30_000);

  it("names `redrive --failed` when an unfinished shard holds FAILED samples", async () => {
    const { prefix, table, dynamo, outputsFile } = await emulatedOutputs();
    const state = new DynamoStateStore({ client: documentClient(dynamo), table });
    await state.createShard(shardRecord({ run: prefix }));
    await state.putSamples([sampleRecord("a", { run: prefix }), sampleRecord("b", { run: prefix })]);
    const a = await state.getSample(prefix, "s1", "a");
    if (a === null) throw new Error("sample not stored");
    await state.transition(a, { status: "FAILED", error: "judge: answer invalid after 3 tries" });
    const status = await deployedStatus({ outputs: outputsFile, run: prefix, stuckAfterMs: 60_000, peek: 0 });
    expect(status.lines.join("\n")).toContain("`mmevol redrive --failed --outputs FILE`");
  }, 30_000);

  it("says which shards arrived before their run's run.json, and so run without it", async () => {
    const { endpoint, prefix, table, dynamo, outputsFile } = await emulatedOutputs();
    const state = new DynamoStateStore({ client: documentClient(dynamo), table });
    const s3 = s3Client(endpoint);
    await s3.send(new CreateBucketCommand({ Bucket: `${prefix}-bucket` }));
    const now = Date.now();
    await state.createShard(shardRecord({ run: prefix, shard: "early", createdAt: now - 60 * 60_000 }));
    await state.createShard(shardRecord({ run: prefix, shard: "late", createdAt: now + 5_000 }));
    const status = () =>
      deployedStatus({ outputs: outputsFile, run: prefix, stuckAfterMs: 60_000, peek: 0, now });
    // No run.json: nothing to say.
    expect((await status()).lines.join("\n")).not.toContain("run.json");
    await s3.send(
      new PutObjectCommand({ Bucket: `${prefix}-bucket`, Key: `seeds/${prefix}/run.json`, Body: "{}" }),
    );
    const lines = (await status()).lines.filter((line) => line.includes("run.json"));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      new RegExp(
        `^run ${prefix}: run\\.json changed at \\S+, after 1 of its shards arrived \\(early\\): they run with the settings`,
      ),
    );
  }, 30_000);
});

describe("mmevol status / redrive on a local run", () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it("keeps what gave up in dead-letters.jsonl, shows it, and the next run after redrive finishes it", async () => {
    const shard = join(dir.path, "tiny.jsonl");
    const rows = Array.from({ length: 3 }, (_, i) => ({
      id: `t-${i}`,
      conversations: [
        { from: "human", value: `Question ${i}?` },
        { from: "gpt", value: `Answer ${i}.` },
      ],
    }));
    writeFileSync(shard, rows.map((r) => JSON.stringify(r)).join("\n"));
    const out = join(dir.path, "out");
    // A clock running 1000x fast: the runner's retry backoff (seconds) passes in milliseconds.
    const start = performance.now();
    const base = Date.now();
    const clock = { now: () => base + (performance.now() - start) * 1000 };
    const options = {
      shards: [shard],
      out,
      run: "tiny",
      concurrency: 2,
      config: { dryRun: true },
      llm: new SimulatedLlm(),
      clock,
    };

    // Finalize fails on every delivery (say, the disk is full), until its deliveries run out.
    const first = await runLocal({
      ...options,
      faults: {
        point: (name: CrashPoint) => {
          if (name === "finalize:mid-write") throw new Error("no space left on device");
        },
        duplicate: () => false,
      },
    });
    expect(first.deadLetters).toBe(1);
    expect(first.reports).toEqual([]);
    const status = await localStatus({ out, stuckAfterMs: 30 * 60_000 });
    expect(status.deadLetters).toHaveLength(1);
    expect(status.deadLetters[0]).toMatchObject({
      message: { kind: "finalize", run: "tiny", shard: "tiny" },
      error: "no space left on device",
    });
    expect(status.shards[0]).toMatchObject({ finalized: false, ingested: true, pending: 0, lines: 3 });
    expect(status.lines.join("\n")).toContain(
      "finalize tiny/tiny: 6 deliveries, last error: no space left on device",
    );
    // Nothing runs now: the state says what is unfinished, not that it runs.
    expect(status.lines[0]).toBe(
      "no run is going on in this directory: `mmevol run` with the same shards and --out continues the unfinished shards",
    );
    expect(status.lines[1]).toMatch(/^tiny\/tiny: unfinished, 3 lines/);

    const redrive = await localRedrive({ out });
    expect(redrive.requeued).toHaveLength(1);
    expect(redrive.archived).not.toBeNull();
    expect(existsSync(join(out, DEAD_LETTERS_FILE))).toBe(false);
    expect(readdirSync(join(out, ".mmevol")).some((f) => f.endsWith(".redriven.jsonl"))).toBe(true);
    expect((await localStatus({ out, stuckAfterMs: 30 * 60_000 })).deadLetters).toEqual([]);

    const second = await runLocal(options);
    expect(second.deadLetters).toBe(0);
    expect(second.reports).toHaveLength(1);
    expect(readFileSync(join(out, DEAD_LETTERS_FILE), "utf8")).toBe("");
    const done = await localStatus({ out, stuckAfterMs: 30 * 60_000 });
    expect(done.shards[0]).toMatchObject({ finalized: true, counts: { PASSED_THROUGH: 3 } });
    expect(done.lines.join("\n")).toContain("dead letters of the last run: 0");
    expect(done.lines[0]).toBe("no run is going on in this directory");
  }, 20_000);
});
