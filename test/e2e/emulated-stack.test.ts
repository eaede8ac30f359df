import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { ListObjectsV2Command, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { deployedRedriveFailed } from "../../bin/commands/redrive.ts";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { type EmulatedStack, startEmulatedStack } from "../../functions/runtime/emulated-stack.ts";
import { ENV } from "../../functions/runtime/env.ts";
import { testBucket } from "../helpers/bucket.ts";
import { demoShard, tempDir } from "../helpers/files.ts";
import { ensureMoto } from "../helpers/moto.ts";
import { ReportCounts } from "../helpers/report.ts";
import { synthOnce } from "../helpers/synth-once.ts";

const SECRET = "sk-e2e-secret-must-never-be-logged-0123456789";

/**
 * A pass-through in front of the simulator that answers every judge request with a 400 while `down()` says
 * so: a model endpoint that refuses the judge for good, until it is fixed.
 */
async function startGate(target: string, down: () => boolean): Promise<Server> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", async () => {
      const body = Buffer.concat(chunks);
      if (down() && req.url?.endsWith("/chat/completions") && body.includes('"name":"judge"')) {
        res.writeHead(400, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: { message: "the judge is down", type: "invalid_request_error" } }));
        return;
      }
      try {
        const headers = Object.fromEntries(
          Object.entries(req.headers).filter(
            (entry): entry is [string, string] =>
              typeof entry[1] === "string" && !["host", "content-length", "connection"].includes(entry[0]),
          ),
        );
        const answer = await fetch(`${target.replace(/\/v1$/, "")}${req.url ?? ""}`, {
          method: req.method ?? "GET",
          headers,
          ...(body.length > 0 ? { body } : {}),
        });
        const out = Buffer.from(await answer.arrayBuffer());
        const passed: Record<string, string> = {};
        answer.headers.forEach((value, key) => {
          if (!["content-length", "content-encoding", "transfer-encoding", "connection"].includes(key))
            passed[key] = value;
        });
        res.writeHead(answer.status, passed);
        res.end(out);
      } catch (error) {
        res.writeHead(502);
        res.end(String(error));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

const gateUrl = (server: Server): string => `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;

describe("the synthesized stack on the emulator, end to end", () => {
  let cdkOut = "";
  let stack: EmulatedStack;
  let sim: Simulator;
  let s3: S3Client;
  const lines: string[] = [];

  // This stack's own outputs file: other test files start stacks from the same assembly at the same time.
  const outputsDir = tempDir("mmevol-e2e-stack-");

  /** While true, the model's endpoint refuses every judge request with a 400 (a permanent error). */
  let judgeDown = false;
  let gate: Server;

  beforeAll(async () => {
    const { endpoint } = await ensureMoto();
    cdkOut = await synthOnce();
    sim = await startSimulator({ apiKey: SECRET });
    gate = await startGate(sim.url, () => judgeDown);
    stack = await startEmulatedStack({
      cdkOut,
      outputsFile: join(outputsDir.path, "outputs.json"),
      endpoint,
      apiKey: SECRET,
      functionEnv: {
        [ENV.openaiBaseUrl]: gateUrl(gate),
        POWERTOOLS_LOG_LEVEL: "INFO",
        // Images missing after their shard arrived are looked for again for 20 s (every 2 s), not 30 minutes.
        [ENV.imageWaitMs]: "20000",
      },
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
    outputsDir.cleanup();
    await new Promise((resolve) => gate?.close(resolve));
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
    // One finalize of a shard runs at a time and the second finds it finalized, so the report is written once.
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

  it("starts FAILED samples again with `mmevol redrive --failed`, and writes the shard's outputs again", async () => {
    await testBucket(s3, stack.bucket).uploadDemoImages("seeds/e2ef/");
    // Its own seed: the first run's answers are stored under requests this run would make too.
    await put("seeds/e2ef/run.json", JSON.stringify({ rounds: 1, seed: 11 }));
    const Report = z.object({ counts: ReportCounts, trainingRecords: z.number() });
    const report = async () => Report.parse(JSON.parse(await text("reports/e2ef/demo.json")));
    judgeDown = true;
    try {
      await put("seeds/e2ef/demo.jsonl", readFileSync(demoShard, "utf8"));
      await waitForKey("reports/e2ef/demo.json");
    } finally {
      judgeDown = false;
    }
    const failed = await report();
    expect(failed.counts).toMatchObject({ evolved: 0, addsUp: true });
    expect(failed.counts.failed).toBeGreaterThan(0);
    const evolveCalls = () => sim.stats().log.filter((e) => e.schemaName?.startsWith("evolve_")).length;
    const evolvedBefore = evolveCalls();

    const redriven = await deployedRedriveFailed({ outputs: stack.outputsFile, run: "e2ef" });
    expect(redriven.reopened.flatMap((r) => r.samples)).toHaveLength(failed.counts.failed);
    const until = Date.now() + 150_000;
    let again = failed;
    while (again.counts.failed > 0) {
      if (Date.now() > until) throw new Error(`report not written again\n${lines.slice(-40).join("\n")}`);
      await new Promise((r) => setTimeout(r, 500));
      again = await report();
    }
    expect(again.counts).toMatchObject({ lines: failed.counts.lines, failed: 0, addsUp: true });
    expect(again.counts.evolved).toBeGreaterThan(0);
    expect(again.trainingRecords).toBeGreaterThan(failed.trainingRecords);
    // The evolve answers stored before the judge failed were read back, not asked again.
    expect(evolveCalls()).toBe(evolvedBefore);
    const evolved = (await text("evolved/e2ef/demo.jsonl")).split("\n").filter(Boolean);
    expect(evolved.length).toBe(again.trainingRecords);
  }, 240_000);

  it("evolves the samples of a shard uploaded before its images, once the images arrive", async () => {
    const Report = z.object({ counts: ReportCounts });
    await put("seeds/e2ei/run.json", JSON.stringify({ rounds: 1, seed: 13 }));
    await put("seeds/e2ei/demo.jsonl", readFileSync(demoShard, "utf8"));
    // The shard is in: its samples find no image for a few seconds.
    const waitedBefore = lines.filter((l) => l.includes('"waiting for its input"')).length;
    const until = Date.now() + 30_000;
    while (lines.filter((l) => l.includes('"waiting for its input"')).length === waitedBefore) {
      if (Date.now() > until)
        throw new Error(`no sample waited for its image\n${lines.slice(-40).join("\n")}`);
      await new Promise((r) => setTimeout(r, 250));
    }
    await testBucket(s3, stack.bucket).uploadDemoImages("seeds/e2ei/");
    await waitForKey("reports/e2ei/demo.json");
    const report = Report.parse(JSON.parse(await text("reports/e2ei/demo.json")));
    expect(report.counts).toMatchObject({ failed: 0, addsUp: true });
    expect(report.counts.evolved).toBeGreaterThan(0);
    // No sample passed through for want of its image: the errors file names each one that did (a round that
    // keeps nothing of a sample passes it through too, with no error).
    const bucket = testBucket(s3, stack.bucket);
    const errors = (await bucket.exists("errors/e2ei/demo.jsonl"))
      ? await text("errors/e2ei/demo.jsonl")
      : "";
    expect(errors).not.toContain("image unusable");
  }, 120_000);

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
