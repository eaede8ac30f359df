import { readFileSync } from "node:fs";
import { ListObjectsV2Command, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { type EmulatedStack, startEmulatedStack } from "../../functions/runtime/emulated-stack.ts";
import { ENV } from "../../functions/runtime/env.ts";
import { testBucket } from "../helpers/bucket.ts";
import { demoShard } from "../helpers/files.ts";
import { ensureMoto } from "../helpers/moto.ts";
import { ReportCounts } from "../helpers/report.ts";
import { synthOnce } from "../helpers/synth-once.ts";

const SECRET = "sk-e2e-secret-must-never-be-logged-0123456789";

describe("the synthesized stack on the emulator, end to end", () => {
  let cdkOut = "";
  let stack: EmulatedStack;
  let sim: Simulator;
  let s3: S3Client;
  const lines: string[] = [];

  beforeAll(async () => {
    const { endpoint } = await ensureMoto();
    cdkOut = await synthOnce();
    sim = await startSimulator({ apiKey: SECRET });
    stack = await startEmulatedStack({
      cdkOut,
      endpoint,
      apiKey: SECRET,
      functionEnv: { [ENV.openaiBaseUrl]: sim.url, POWERTOOLS_LOG_LEVEL: "INFO" },
      // The batcher's EventBridge schedule, at test speed.
      scheduleEverySeconds: 2,
      onLine: (line) => lines.push(line),
    });
    s3 = new S3Client({
      endpoint,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
    });
  }, 180_000);

  afterAll(async () => {
    await stack?.stop();
    await sim?.close();
  });

  const put = (key: string, body: Uint8Array | string) =>
    s3.send(new PutObjectCommand({ Bucket: stack.bucket, Key: key, Body: body }));
  const text = (key: string) => testBucket(s3, stack.bucket).text(key);
  const waitForKey = (key: string, timeoutMs = 150_000) =>
    testBucket(s3, stack.bucket).waitFor(key, timeoutMs, () => lines.slice(-40).join("\n"));

  it("evolves a dropped shard into evolved/, reports/ and errors/ with counts that add up", async () => {
    await testBucket(s3, stack.bucket).uploadDemoImages("seeds/e2e/");
    const shard = `${readFileSync(demoShard, "utf8")}{"id": "broken"\n`;
    await put("seeds/e2e/demo.jsonl", shard);
    await waitForKey("reports/e2e/demo.json");

    const report = z
      .object({
        counts: ReportCounts,
      })
      .parse(JSON.parse(await text("reports/e2e/demo.json")));
    const inputLines = shard.split("\n").filter((l) => l.trim()).length;
    expect(report.counts.lines).toBe(inputLines);
    expect(report.counts.addsUp).toBe(true);
    expect(report.counts.evolved).toBeGreaterThan(0);
    expect(report.counts.rejected).toBe(1);
    const evolved = (await text("evolved/e2e/demo.jsonl")).split("\n").filter(Boolean);
    expect(evolved.length).toBeGreaterThan(0);
    expect(new Set(evolved.map((l) => z.object({ id: z.string() }).parse(JSON.parse(l)).id)).size).toBe(
      evolved.length,
    );
    const errors = (await text("errors/e2e/demo.jsonl")).split("\n").filter(Boolean);
    expect(errors.some((e) => e.includes(`line ${inputLines}`))).toBe(true);
    await waitForKey("reports/e2e/demo.html", 5_000);
    await waitForKey("evolved/e2e/demo.lineage.jsonl", 5_000);
    // The real handlers called the model through the real openai client: evolve with the image, judge without.
    const log = sim.stats().log.filter((e) => e.status === 200);
    expect(
      log.some((e) => e.schemaName?.startsWith("evolve_") && e.hasImage && e.imageDetail === "low"),
    ).toBe(true);
    expect(log.filter((e) => e.schemaName === "judge").every((e) => !e.hasImage)).toBe(true);
  });

  it("evolves the same shard dropped twice only once", async () => {
    const callsBefore = sim.stats().requests;
    const reportBefore = await text("reports/e2e/demo.json");
    await put("seeds/e2e/demo.jsonl", `${readFileSync(demoShard, "utf8")}{"id": "broken"\n`);
    // Give the ingest function time to see the event and acknowledge it as a duplicate.
    await new Promise((r) => setTimeout(r, 6_000));
    expect(sim.stats().requests).toBe(callsBefore);
    expect(await text("reports/e2e/demo.json")).toBe(reportBefore);
    const keys = await s3.send(new ListObjectsV2Command({ Bucket: stack.bucket, Prefix: "reports/e2e/" }));
    expect((keys.Contents ?? []).map((o) => o.Key).sort()).toEqual([
      "reports/e2e/demo.html",
      "reports/e2e/demo.json",
    ]);
  });

  it("in batch mode (run.json), evolves through the files and batches endpoints with no online call", async () => {
    const chatBefore = sim.stats().requests;
    await testBucket(s3, stack.bucket).uploadDemoImages("seeds/e2eb/");
    await put("seeds/e2eb/run.json", JSON.stringify({ mode: "batch", rounds: 2, seed: 7 }));
    await put("seeds/e2eb/demo.jsonl", readFileSync(demoShard, "utf8"));
    await waitForKey("reports/e2eb/demo.json", 170_000);
    const report = z
      .object({ counts: ReportCounts, usage: z.object({ costUsd: z.number() }) })
      .parse(JSON.parse(await text("reports/e2eb/demo.json")));
    expect(report.counts.addsUp).toBe(true);
    expect(report.counts.evolved).toBeGreaterThan(0);
    expect(report.counts.failed).toBe(0);
    expect(report.usage.costUsd).toBeGreaterThan(0);
    expect(sim.stats().requests).toBe(chatBefore);
    // Two rounds, each an evolve batch and a judge batch.
    expect(sim.batches.stats().batchesCreated).toBe(4);
  }, 180_000);

  it("logs each stage invocation once, with its records' outcomes, not a line per record", async () => {
    const entries = lines.flatMap((line) => {
      if (!line.startsWith("{")) return [];
      const parsed = z.object({ message: z.string() }).passthrough().safeParse(JSON.parse(line));
      return parsed.success ? [parsed.data] : [];
    });
    expect(entries.some((entry) => entry.message === "stage done")).toBe(false);
    const done = entries
      .filter((entry) => entry.message === "records done")
      .map((entry) =>
        z
          .object({ records: z.number(), failed: z.number(), outcomes: z.record(z.string(), z.number()) })
          .parse(entry),
      );
    expect(done.length).toBeGreaterThan(0);
    for (const invocation of done) {
      const counted = Object.values(invocation.outcomes).reduce((a, b) => a + b, 0);
      expect(counted + invocation.failed).toBe(invocation.records);
    }
    expect(
      done.some((invocation) => Object.keys(invocation.outcomes).some((o) => o.startsWith("evolved:"))),
    ).toBe(true);
  });

  it("never writes the API key to logs, outputs or reports", async () => {
    expect(lines.join("\n")).not.toContain(SECRET);
    for (const key of [
      "reports/e2e/demo.json",
      "evolved/e2e/demo.jsonl",
      "errors/e2e/demo.jsonl",
      "evolved/e2e/demo.lineage.jsonl",
    ]) {
      expect(await text(key)).not.toContain(SECRET);
    }
  });
});
