// Soak: 2,000 samples through the emulated stack (moto for S3/SQS, DynamoDB Local for the table) with 20% of
// LLM requests faulted and 5% of all deliveries (S3 events included) duplicated, then the identity's
// figures. Run: npm run soak [-- --samples 2000 --fault-rate 0.2 --duplicate-rate 0.05]
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { GetQueueAttributesCommand, SQSClient } from "@aws-sdk/client-sqs";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import { z } from "zod";
import { DynamoStateStore } from "../../functions/adapters/aws/dynamodb-state-store.ts";
import { parseFaultMix } from "../../functions/adapters/simulated/faults.ts";
import { startSimulator } from "../../functions/adapters/simulated/server.ts";
import { startEmulatedStack } from "../../functions/runtime/emulated-stack.ts";
import { ENV } from "../../functions/runtime/env.ts";
import { testBucket } from "../helpers/bucket.ts";
import { ensureDynamoLocal } from "../helpers/dynamodb-local.ts";
import { ensureMoto } from "../helpers/moto.ts";
import { ReportCounts } from "../helpers/report.ts";
import { synthOnce } from "../helpers/synth-once.ts";

const { values } = parseArgs({
  options: {
    samples: { type: "string", default: "2000" },
    "fault-rate": { type: "string", default: "0.2" },
    "duplicate-rate": { type: "string", default: "0.05" },
    "bad-every": { type: "string", default: "100" },
    /** e.g. rate_limit=2,reset=1 (all kinds alike by default) */
    "fault-mix": { type: "string" },
    json: { type: "string" },
    /** Writes the simulator's request log here, for a closer look at any replay. */
    log: { type: "string" },
  },
});
const samples = Number(values.samples);
const faultRate = Number(values["fault-rate"]);
const duplicateRate = Number(values["duplicate-rate"]);
const badEvery = Number(values["bad-every"]);
const say = (line: string) => process.stderr.write(`[soak] ${line}\n`);

const { endpoint } = await ensureMoto();
const { endpoint: dynamodbEndpoint } = await ensureDynamoLocal();
say(`moto at ${endpoint}, DynamoDB Local at ${dynamodbEndpoint}; synthesizing...`);
const cdkOut = await synthOnce();
const mix = values["fault-mix"] ? parseFaultMix(values["fault-mix"]) : undefined;
const sim = await startSimulator({
  faults: { rate: faultRate, seed: 11, slowMs: 15_000, ...(mix ? { mix } : {}) },
});
const stack = await startEmulatedStack({
  cdkOut,
  endpoint,
  dynamodbEndpoint,
  apiKey: "sk-soak",
  // Long enough that a batch slowed by faults is never redelivered while it still runs (as in AWS, where the
  // visibility timeout is six times the function timeout).
  maxVisibilityTimeoutSeconds: 90,
  functionEnv: {
    [ENV.openaiBaseUrl]: sim.url,
    [ENV.llmTimeoutMs]: "8000",
    EMU_DUPLICATE_RATE: String(duplicateRate),
  },
  onLine: (line) => {
    if (!/record\(s\)/.test(line)) say(line);
  },
});
const s3 = new S3Client({
  endpoint,
  region: "us-east-1",
  forcePathStyle: true,
  credentials: { accessKeyId: "test", secretAccessKey: "test" },
});
const bucket = testBucket(s3, stack.bucket);
const started = Date.now();

/** When nothing moves for a minute: what is open, and where its messages are. */
async function diagnose(): Promise<void> {
  const state = new DynamoStateStore({
    client: DynamoDBDocumentClient.from(
      new DynamoDBClient({
        endpoint: dynamodbEndpoint,
        region: "us-east-1",
        credentials: { accessKeyId: "test", secretAccessKey: "test" },
      }),
    ),
    table: stack.table,
  });
  const open: string[] = [];
  for await (const sample of state.listSamples("soak", "shard")) {
    if (!["DONE", "PASSED_THROUGH", "FAILED", "REJECTED"].includes(sample.status)) {
      open.push(
        `${sample.key} ${sample.status} r${sample.round} v${sample.version} attempts=${sample.attempts}`,
      );
    }
  }
  say(`stalled: ${open.length} open samples: ${open.slice(0, 10).join("; ")}`);
  const sqs = new SQSClient({
    endpoint,
    region: "us-east-1",
    credentials: { accessKeyId: "test", secretAccessKey: "test" },
  });
  for (const [name, queue] of Object.entries(stack.queues)) {
    const got = await sqs.send(
      new GetQueueAttributesCommand({
        QueueUrl: queue.url,
        AttributeNames: ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
      }),
    );
    say(
      `  ${name}: visible ${got.Attributes?.ApproximateNumberOfMessages}, in flight ${got.Attributes?.ApproximateNumberOfMessagesNotVisible}`,
    );
  }
}
try {
  const images = await bucket.uploadDemoImages("seeds/soak/");
  const lines = Array.from({ length: samples }, (_, i) =>
    badEvery > 0 && i % badEvery === badEvery - 1
      ? `{"id": "bad-${i}", "conversations": [`
      : JSON.stringify({
          id: `soak-${i}`,
          image: `images/${images[i % images.length]}`,
          conversations: [
            { from: "human", value: `<image>\nWhat stands out in this picture (${i})?` },
            { from: "gpt", value: `Several objects, the most visible being number ${i % 17}.` },
          ],
        }),
  );
  await s3.send(
    new PutObjectCommand({
      Bucket: stack.bucket,
      Key: "seeds/soak/shard.jsonl",
      Body: `${lines.join("\n")}\n`,
    }),
  );
  say(`uploaded ${samples} lines; waiting for the report`);
  let lastRequests = -1;
  let quietSince = Date.now();
  for (;;) {
    const now = sim.stats().requests;
    if (now !== lastRequests) {
      lastRequests = now;
      quietSince = Date.now();
    } else if (Date.now() - quietSince > 60_000) {
      await diagnose();
      quietSince = Date.now();
    }
    if (await bucket.exists("reports/soak/shard.json")) break;
    await new Promise((r) => setTimeout(r, 2_000));
    {
      const stats = sim.stats();
      if ((Date.now() - started) % 30_000 < 2_000)
        say(
          `${Math.round((Date.now() - started) / 1000)} s: ${stats.requests} LLM requests, ${stats.succeeded} answered`,
        );
    }
  }
  const text = bucket.text;
  const report = z
    .object({
      counts: ReportCounts,
      usage: z.object({ calls: z.number() }),
    })
    .parse(JSON.parse(await text("reports/soak/shard.json")));
  const records = (await text("evolved/soak/shard.jsonl")).split("\n").filter(Boolean);
  const ids = records.map((l) => z.object({ id: z.string() }).parse(JSON.parse(l)).id);
  const log = sim.stats().log;
  const answered = log.filter((e) => e.status === 200);
  const goodBefore = new Set<string>();
  let replays = 0;
  let retriesOfFailed = 0;
  for (const entry of log) {
    // A "slow" answer is logged when it completes, after the client gave up and retried: a failed call.
    if (entry.fault === "slow") continue;
    if (entry.status === 200 && entry.fault === null) {
      if (goodBefore.has(entry.request)) replays += 1;
      goodBefore.add(entry.request);
    } else if (goodBefore.has(entry.request)) {
      replays += 1;
    }
  }
  const distinct = new Set(log.filter((e) => e.request).map((e) => e.request)).size;
  retriesOfFailed = log.filter((e) => e.request).length - distinct - replays;
  const c = report.counts;
  const figures = {
    date: new Date().toISOString().slice(0, 10),
    inputLines: samples,
    evolved: c.evolved,
    passedThrough: c.passedThrough,
    failed: c.failed,
    rejected: c.rejected,
    addsUp: c.addsUp && c.lines === samples,
    duplicateRecords: ids.length - new Set(ids).size,
    llmRequests: log.length,
    paidCalls: answered.length,
    distinctRequests: distinct,
    retriesOfFailedCalls: retriesOfFailed,
    replaysOfAnsweredCalls: replays,
    injectedFaults: sim.stats().faults,
    minutes: +((Date.now() - started) / 60_000).toFixed(1),
  };
  console.log("mmevol soak on the emulated stack");
  console.table({
    "input lines": figures.inputLines,
    evolved: figures.evolved,
    "passed through": figures.passedThrough,
    failed: figures.failed,
    rejected: figures.rejected,
    "counts add up": figures.addsUp,
    "duplicate output records": figures.duplicateRecords,
    "LLM requests (all)": figures.llmRequests,
    "paid calls (answered)": figures.paidCalls,
    "distinct requests": figures.distinctRequests,
    "retries of failed calls": figures.retriesOfFailedCalls,
    "replays of answered calls": figures.replaysOfAnsweredCalls,
    minutes: figures.minutes,
  });
  console.log("injected faults:", JSON.stringify(figures.injectedFaults));
  if (values.json) writeFileSync(values.json, `${JSON.stringify(figures, null, 2)}\n`);
  if (values.log) writeFileSync(values.log, log.map((e) => JSON.stringify(e)).join("\n"));
  process.exitCode = figures.addsUp && figures.duplicateRecords === 0 ? 0 : 1;
} finally {
  await stack.stop();
  await sim.close();
}
