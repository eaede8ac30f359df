import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { OpenAI, toFile } from "openai";
import type { ChatCompletionCreateParamsNonStreaming } from "openai/resources/chat/completions";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { MAX_BATCH_INPUT_BYTES, OpenAiBatchApi } from "../../functions/adapters/openai/openai-batch-api.ts";
import { MAX_BATCH_FILE_BYTES } from "../../functions/adapters/simulated/batches.ts";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { type BatchInfo, FINISHED_BATCH_STATUSES } from "../../functions/ports/batch-api.ts";
import { LlmCallError } from "../../functions/ports/errors.ts";

const API_KEY = "sk-test-batch-0123456789abcdefghij";
const LONG_SYSTEM = Array.from({ length: 1500 }, (_, i) => `rule${i}`).join(" ");

const chatBody = (text: string, system: string | null = null): ChatCompletionCreateParamsNonStreaming => ({
  model: "gpt-4o-mini",
  messages: [
    ...(system === null ? [] : [{ role: "system" as const, content: system }]),
    { role: "user", content: text },
  ],
  max_completion_tokens: 200,
  seed: 1,
});
const inputLine = (customId: string, body: unknown) =>
  JSON.stringify({ custom_id: customId, method: "POST", url: "/v1/chat/completions", body });
const jsonl = (lines: readonly string[]): Uint8Array => new TextEncoder().encode(`${lines.join("\n")}\n`);
const requests = (count: number, prefix = "q") =>
  Array.from({ length: count }, (_, i) => inputLine(`${prefix}-${i}`, chatBody(`${prefix} question ${i}`)));

const OutputLine = z.object({
  id: z.string().startsWith("batch_req_"),
  custom_id: z.string(),
  response: z
    .object({
      status_code: z.number(),
      request_id: z.string(),
      body: z.object({
        object: z.literal("chat.completion"),
        choices: z.array(z.object({ message: z.object({ content: z.string() }) })).length(1),
        usage: z.object({
          prompt_tokens: z.number(),
          completion_tokens: z.number(),
          prompt_tokens_details: z.object({ cached_tokens: z.number() }),
        }),
      }),
    })
    .nullable(),
  error: z.null(),
});
const parseLines = (text: string) =>
  text
    .trim()
    .split("\n")
    .map((line) => OutputLine.parse(JSON.parse(line)));

const failureOf = async (promise: Promise<unknown>): Promise<LlmCallError> => {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  if (!(error instanceof LlmCallError)) throw new Error(`expected an LlmCallError, got ${String(error)}`);
  return error;
};

/** Polls until the batch is finished; `seen` holds every status observed on the way. */
async function pollFinished(api: OpenAiBatchApi, id: string): Promise<{ batch: BatchInfo; seen: string[] }> {
  const seen: string[] = [];
  for (let i = 0; i < 200; i++) {
    const batch = await api.getBatch(id);
    if (seen.at(-1) !== batch.status) seen.push(batch.status);
    if (FINISHED_BATCH_STATUSES.has(batch.status)) return { batch, seen };
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`batch ${id} did not finish`);
}
const waitFinished = async (api: OpenAiBatchApi, id: string) => (await pollFinished(api, id)).batch;

let sim: Simulator;
let api: OpenAiBatchApi;
let client: OpenAI;
beforeAll(async () => {
  // A one-request-per-minute chat limit: batch routes must not touch it.
  sim = await startSimulator({ apiKey: API_KEY, requestsPerMinute: 1, batch: { completeAfterMs: 150 } });
  api = new OpenAiBatchApi({ apiKey: API_KEY, baseURL: sim.url, maxRetries: 0, timeoutMs: 30_000 });
  client = new OpenAI({ apiKey: API_KEY, baseURL: sim.url, maxRetries: 0 });
});
afterAll(async () => {
  await sim.close();
});

describe("OpenAiBatchApi against the simulator", () => {
  it("uploads, creates, polls to completed and reads the output file", async () => {
    const fileId = await api.uploadFile("evolve.jsonl", jsonl(requests(3)));
    const file = await client.files.retrieve(fileId);
    expect(file).toMatchObject({
      id: fileId,
      object: "file",
      filename: "evolve.jsonl",
      purpose: "batch",
      status: "processed",
      bytes: jsonl(requests(3)).byteLength,
    });
    expect(await api.fileText(fileId)).toBe(new TextDecoder().decode(jsonl(requests(3))));

    const created = await api.createBatch(fileId, { job: "job-1", shard: "s7" });
    expect(created).toMatchObject({ status: "validating", inputFileId: fileId, outputFileId: null });
    const { batch: done, seen } = await pollFinished(api, created.id);
    expect(done.status).toBe("completed");
    expect(done.metadata).toEqual({ job: "job-1", shard: "s7" });
    // completeAfterMs keeps it running for a while, so a poller sees it in progress first.
    expect(seen).toEqual(["in_progress", "completed"]);
    expect(done.requestCounts).toEqual({ total: 3, completed: 3, failed: 0 });
    expect(done.errorFileId).toBeNull();
    if (done.outputFileId === null) throw new Error("no output file");
    const lines = parseLines(await api.fileText(done.outputFileId));
    expect(lines.map((l) => l.custom_id)).toEqual(["q-0", "q-1", "q-2"]);
    expect(lines.every((l) => l.response?.status_code === 200)).toBe(true);

    const raw = await client.batches.retrieve(created.id);
    expect(raw).toMatchObject({
      object: "batch",
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
    });
    expect(raw.completed_at).toBeGreaterThan(0);
  });

  it("lists batches newest first, those created since a time, across pages of the raw client too", async () => {
    const ids: string[] = [];
    // The API's created_at is in whole seconds.
    const since = Math.floor(Date.now() / 1000) * 1000;
    for (let i = 0; i < 3; i++) {
      const fileId = await api.uploadFile(`list-${i}.jsonl`, jsonl(requests(1, `l${i}`)));
      ids.push((await api.createBatch(fileId, { n: String(i) })).id);
    }
    const listed = await api.listBatches(since);
    expect(listed.slice(0, 3).map((b) => b.id)).toEqual([ids[2], ids[1], ids[0]]);
    expect(listed.slice(0, 3).map((b) => b.metadata.n)).toEqual(["2", "1", "0"]);
    expect(listed.every((b) => b.createdAt !== null && b.createdAt >= since)).toBe(true);
    expect(await api.listBatches(Date.now() + 60_000)).toEqual([]);
    const paged: string[] = [];
    for await (const batch of client.batches.list({ limit: 1 })) paged.push(batch.id);
    expect(paged.slice(0, 3)).toEqual([ids[2], ids[1], ids[0]]);
    expect(paged.length).toBe(sim.batches.stats().batchesCreated);
  });

  it("does not spend the chat rate limit, and shares the chat endpoint's prefix cache", async () => {
    const before = sim.stats().requests;
    const chat = await client.chat.completions.create(chatBody("warm the cache", LONG_SYSTEM));
    expect(chat.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    const fileId = await api.uploadFile(
      "cached.jsonl",
      jsonl([inputLine("c", chatBody("next", LONG_SYSTEM))]),
    );
    const done = await waitFinished(api, (await api.createBatch(fileId, {})).id);
    const [line] = parseLines(await api.fileText(done.outputFileId ?? ""));
    expect(line?.response?.body.usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(1024);
    // All the batch traffic above went through, yet the chat limiter saw exactly one request.
    expect(sim.stats().requests - before).toBe(1);
    expect(sim.stats().rateLimited).toBe(0);
  });

  it("reports line failures in the error file and file failures in errors", async () => {
    const failing = await startSimulator({ batch: { failShare: 1 } });
    try {
      const failingApi = new OpenAiBatchApi({ apiKey: "any", baseURL: failing.url, maxRetries: 0 });
      const fileId = await failingApi.uploadFile("f.jsonl", jsonl(requests(2)));
      const done = await waitFinished(failingApi, (await failingApi.createBatch(fileId, {})).id);
      expect(done).toMatchObject({
        status: "completed",
        outputFileId: null,
        requestCounts: { total: 2, completed: 0, failed: 2 },
      });
      const errors = (await failingApi.fileText(done.errorFileId ?? "")).trim().split("\n");
      expect(
        errors.map((l) => z.object({ response: z.object({ status_code: z.number() }) }).parse(JSON.parse(l))),
      ).toEqual([{ response: { status_code: 500 } }, { response: { status_code: 500 } }]);
    } finally {
      await failing.close();
    }

    const dupes = await api.uploadFile(
      "dupes.jsonl",
      jsonl([inputLine("a", chatBody("x")), inputLine("a", chatBody("y"))]),
    );
    const failed = await waitFinished(api, (await api.createBatch(dupes, {})).id);
    expect(failed.status).toBe("failed");
    expect(failed.errors).toEqual([expect.stringMatching(/^duplicate_custom_id: .*\(line 2\)$/)]);
  });

  it("turns an unknown id or a wrong key into a non-retryable error without the key", async () => {
    const missing = await failureOf(api.getBatch("batch_does_not_exist"));
    expect(missing).toMatchObject({ retryable: false, status: 404 });
    expect(missing.message).toContain("batch_does_not_exist");
    const missingFile = await failureOf(api.fileText("file-nope"));
    expect(missingFile).toMatchObject({ retryable: false, status: 404 });
    const missingInput = await failureOf(api.createBatch("file-nope", {}));
    expect(missingInput).toMatchObject({ retryable: false, status: 404 });

    const wrongKey = "sk-wrong-key-abcdefghijklmnop";
    const wrong = new OpenAiBatchApi({ apiKey: wrongKey, baseURL: sim.url, maxRetries: 0 });
    const denied = await failureOf(wrong.listBatches(5));
    expect(denied).toMatchObject({ name: "KeyRefusedError", status: 401 });
    expect(denied.message).not.toContain(wrongKey);
  });

  it("answers 400 for another endpoint or completion window, and 404 for unknown routes", async () => {
    const fileId = await api.uploadFile("x.jsonl", jsonl(requests(1)));
    await expect(
      client.batches.create({ input_file_id: fileId, endpoint: "/v1/embeddings", completion_window: "24h" }),
    ).rejects.toMatchObject({ status: 400, param: "endpoint" });
    const response = await fetch(`${sim.url}/batches`, {
      method: "POST",
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({
        input_file_id: fileId,
        endpoint: "/v1/chat/completions",
        completion_window: "48h",
      }),
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({
      error: { param: "completion_window", type: "invalid_request_error" },
    });
    await expect(client.batches.cancel("batch_nope")).rejects.toMatchObject({ status: 404 });
  });

  it("refuses a batch input over 200 MB, in the adapter and on the server", async () => {
    expect(MAX_BATCH_INPUT_BYTES).toBe(MAX_BATCH_FILE_BYTES);
    const uploadsBefore = sim.batches.stats().filesUploaded;
    const big = new Uint8Array(MAX_BATCH_FILE_BYTES + 128 * 1024);
    const refused = await failureOf(api.uploadFile("big.jsonl", big));
    expect(refused.retryable).toBe(false);
    expect(refused.message).toMatch(/at most/);

    expect(sim.batches.stats().filesUploaded).toBe(uploadsBefore);

    // The raw client sends it anyway: the server refuses it from its declared length. On a server whose limit
    // is 1 MiB: 200 MB through the multipart encoder and the socket took long enough on a loaded machine that
    // the test saw a reset connection instead of the answer.
    const small = await startSimulator({ apiKey: API_KEY, batch: { maxFileBytes: 1024 * 1024 } });
    try {
      const raw = new OpenAI({ apiKey: API_KEY, baseURL: small.url, maxRetries: 0 });
      const upload = async (bytes: number) =>
        raw.files.create({ file: await toFile(new Uint8Array(bytes), "f.jsonl"), purpose: "batch" }).then(
          () => null,
          (e: unknown) => e,
        );
      const error = await upload(2 * 1024 * 1024);
      expect(error).toBeInstanceOf(OpenAI.APIError);
      expect(error).toMatchObject({ status: 413, code: "file_too_large" });
      expect(small.batches.stats().filesUploaded).toBe(0);
      // Under the limit, the same upload is taken.
      expect(await upload(512 * 1024)).toBeNull();
      expect(small.batches.stats().filesUploaded).toBe(1);
    } finally {
      await small.close();
    }
  }, 60_000);
});

describe("OpenAiBatchApi against a server that says the creation time its own way", () => {
  it("reads a batch whose created_at is not a time in seconds, as not said", async () => {
    const createdAt: Record<string, unknown> = {
      batch_iso: "2026-01-01T00:00:00Z",
      batch_zero: 0,
      batch_s: 1_800_000_000,
    };
    const server = createServer((req, res) => {
      const id = req.url?.split("/").pop() ?? "";
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({ id, status: "validating", input_file_id: "file-1", created_at: createdAt[id] }),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const api = new OpenAiBatchApi({
        apiKey: API_KEY,
        baseURL: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`,
        maxRetries: 0,
      });
      expect(await api.getBatch("batch_iso")).toMatchObject({ id: "batch_iso", createdAt: null });
      expect(await api.getBatch("batch_zero")).toMatchObject({ createdAt: null });
      expect(await api.getBatch("batch_s")).toMatchObject({ createdAt: 1_800_000_000_000 });
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
