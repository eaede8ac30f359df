import { describe, expect, it } from "vitest";
import { z } from "zod";
import {
  MAX_BATCH_FILE_BYTES,
  MAX_BATCH_LINES,
  SimBatchError,
  SimulatedBatches,
} from "../../functions/adapters/simulated/batches.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import type { Clock } from "../../functions/ports/runtime.ts";

const Answer = z.object({ question: z.string(), score: z.number().int().min(1).max(10) });
const schema = z.toJSONSchema(Answer);

/** About 3,000 tokens of distinct words: a static prefix long enough for the prompt cache. */
const LONG_SYSTEM = Array.from({ length: 1500 }, (_, i) => `rule${i}`).join(" ");

const chatBody = (text: string, model = "gpt-4o-mini", system: string | null = null) => ({
  model,
  messages: [
    ...(system === null ? [] : [{ role: "system", content: system }]),
    { role: "user", content: text },
  ],
  response_format: { type: "json_schema", json_schema: { name: "answer", strict: true, schema } },
  seed: 3,
  max_completion_tokens: 500,
});

const inputLine = (customId: string, body: unknown, overrides: Record<string, unknown> = {}) =>
  JSON.stringify({ custom_id: customId, method: "POST", url: "/v1/chat/completions", body, ...overrides });

const jsonl = (lines: readonly string[]): Uint8Array => new TextEncoder().encode(`${lines.join("\n")}\n`);

const requests = (count: number, prefix = "q") =>
  Array.from({ length: count }, (_, i) => inputLine(`${prefix}-${i}`, chatBody(`question ${i}`)));

const ErrorBody = z.object({
  error: z.object({
    message: z.string(),
    type: z.string(),
    param: z.string().nullable(),
    code: z.string().nullable(),
  }),
});

const Completion = z.object({
  id: z.string().startsWith("chatcmpl-"),
  object: z.literal("chat.completion"),
  created: z.number().int(),
  model: z.string(),
  choices: z
    .array(
      z.object({
        index: z.literal(0),
        message: z.object({ role: z.literal("assistant"), content: z.string(), refusal: z.null() }),
        logprobs: z.null(),
        finish_reason: z.enum(["stop", "length"]),
      }),
    )
    .length(1),
  usage: z.object({
    prompt_tokens: z.number().int().positive(),
    completion_tokens: z.number().int().positive(),
    total_tokens: z.number().int().positive(),
    prompt_tokens_details: z.object({ cached_tokens: z.number().int().nonnegative() }),
    completion_tokens_details: z.object({ reasoning_tokens: z.number().int() }),
  }),
  system_fingerprint: z.string(),
});

const OutputLine = z
  .object({
    id: z.string().regex(/^batch_req_[0-9a-f]+$/),
    custom_id: z.string(),
    response: z
      .object({ status_code: z.number().int(), request_id: z.string().regex(/^req_/), body: z.unknown() })
      .strict()
      .nullable(),
    error: z.object({ code: z.string(), message: z.string() }).strict().nullable(),
  })
  .strict();

const readLines = async (batches: SimulatedBatches, fileId: string | null) => {
  if (fileId === null) throw new Error("expected a file id");
  const text = await batches.fileText(fileId);
  expect(text.endsWith("\n")).toBe(true);
  return text
    .trimEnd()
    .split("\n")
    .map((line) => ({ raw: line, line: OutputLine.parse(JSON.parse(line)) }));
};

class ManualClock implements Clock {
  ms = 1_700_000_000_000;
  now(): number {
    return this.ms;
  }
}

describe("SimulatedBatches lifecycle", () => {
  it("goes validating -> in_progress -> completed after completeAfterMs, with request_counts", async () => {
    const clock = new ManualClock();
    const batches = new SimulatedBatches({ clock, completeAfterMs: 1000 });
    const fileId = await batches.uploadFile("in.jsonl", jsonl(requests(3)));
    expect(fileId).toMatch(/^file-/);
    expect(batches.file(fileId)).toMatchObject({ object: "file", purpose: "batch", status: "processed" });

    const created = await batches.createBatch(fileId, { job: "j1" });
    expect(created).toMatchObject({
      status: "validating",
      inputFileId: fileId,
      outputFileId: null,
      errorFileId: null,
      metadata: { job: "j1" },
      errors: [],
    });
    expect(created.id).toMatch(/^batch_/);

    const running = await batches.getBatch(created.id);
    expect(running.status).toBe("in_progress");
    expect(running.requestCounts).toEqual({ total: 3, completed: 0, failed: 0 });
    clock.ms += 999;
    expect((await batches.getBatch(created.id)).status).toBe("in_progress");
    expect(batches.stats().linesAnswered).toBe(0);

    clock.ms += 1;
    const done = await batches.getBatch(created.id);
    expect(done.status).toBe("completed");
    expect(done.requestCounts).toEqual({ total: 3, completed: 3, failed: 0 });
    expect(done.outputFileId).toMatch(/^file-/);
    expect(done.errorFileId).toBeNull();

    const wire = await batches.retrieve(created.id);
    const createdAt = Math.floor((clock.ms - 1000) / 1000);
    expect(wire).toMatchObject({
      object: "batch",
      endpoint: "/v1/chat/completions",
      completion_window: "24h",
      model: "gpt-4o-mini",
      errors: null,
      created_at: createdAt,
      in_progress_at: createdAt,
      expires_at: createdAt + 86_400,
      completed_at: Math.floor(clock.ms / 1000),
      failed_at: null,
      expired_at: null,
      metadata: { job: "j1" },
    });
    expect(batches.stats()).toMatchObject({
      filesUploaded: 1,
      batchesCreated: 1,
      linesAnswered: 3,
      linesFailed: 0,
    });
    // Looking again changes nothing: the batch is finished and its lines were answered once.
    await batches.getBatch(created.id);
    expect(batches.stats().linesAnswered).toBe(3);
  });

  it("lists newest first, those created since a time, and pages with after", async () => {
    let now = 1_000_000;
    const batches = new SimulatedBatches({ clock: { now: () => now } });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const file = await batches.uploadFile(`in-${i}.jsonl`, jsonl(requests(1, `b${i}`)));
      ids.push((await batches.createBatch(file, { n: String(i) })).id);
      now += 1_000;
    }
    const listed = await batches.listBatches(1_001_000);
    expect(listed.map((b) => b.id)).toEqual([ids[2], ids[1]]);
    expect(listed.map((b) => b.createdAt)).toEqual([1_002_000, 1_001_000]);
    expect(listed.every((b) => b.status === "completed")).toBe(true);
    expect(await batches.listBatches(now)).toEqual([]);
    const first = await batches.list({ limit: 2 });
    expect(first).toMatchObject({ object: "list", has_more: true, first_id: ids[2], last_id: ids[1] });
    const second = await batches.list({ limit: 2, after: ids[1] ?? "" });
    expect(second.data.map((b) => b.id)).toEqual([ids[0]]);
    expect(second.has_more).toBe(false);
  });

  it("cancels a running batch: cancelling, then cancelled with nothing answered", async () => {
    const clock = new ManualClock();
    const batches = new SimulatedBatches({ clock, completeAfterMs: 10_000 });
    const batch = await batches.createBatch(await batches.uploadFile("in.jsonl", jsonl(requests(2))), {});
    expect((await batches.cancel(batch.id)).status).toBe("cancelling");
    clock.ms += 20_000;
    const cancelled = await batches.getBatch(batch.id);
    expect(cancelled).toMatchObject({ status: "cancelled", outputFileId: null, errorFileId: null });
    expect(batches.stats().linesAnswered).toBe(0);
    await expect(batches.cancel(batch.id)).rejects.toMatchObject({ status: 400 });
  });
});

describe("SimulatedBatches output", () => {
  it("writes OpenAI's output line format with a full chat.completion, the chat engine's answer", async () => {
    const batches = new SimulatedBatches();
    const body = chatBody("What is shown?");
    const file = await batches.uploadFile("in.jsonl", jsonl([inputLine("a", body), ...requests(2)]));
    const batch = await batches.getBatch((await batches.createBatch(file, {})).id);
    const lines = await readLines(batches, batch.outputFileId);
    expect(lines.map((l) => l.line.custom_id)).toEqual(["a", "q-0", "q-1"]);
    for (const { raw, line } of lines) {
      // Key order as the provider writes it, not just the same keys.
      expect(Object.keys(JSON.parse(raw))).toEqual(["id", "custom_id", "response", "error"]);
      expect(line.error).toBeNull();
      expect(line.response?.status_code).toBe(200);
      const completion = Completion.parse(line.response?.body);
      expect(completion.usage.total_tokens).toBe(
        completion.usage.prompt_tokens + completion.usage.completion_tokens,
      );
      expect(Answer.safeParse(JSON.parse(completion.choices[0]?.message.content ?? "")).success).toBe(true);
    }
    expect(new Set(lines.map((l) => l.line.id)).size).toBe(3);

    const direct = await new SimulatedLlm().complete({
      model: body.model,
      messages: [{ role: "user", content: "What is shown?" }],
      schemaName: "answer",
      schema,
      temperature: 1,
      maxTokens: 500,
      seed: 3,
    });
    const first = Completion.parse(lines[0]?.line.response?.body);
    expect(first.choices[0]?.message.content).toBe(direct.content);
    expect(first.usage.prompt_tokens).toBe(direct.usage.promptTokens);
    expect(first.usage.completion_tokens).toBe(direct.usage.completionTokens);
  });

  it("bills cached tokens for a repeated static prefix of >= 1024 tokens", async () => {
    const batches = new SimulatedBatches();
    const lines = Array.from({ length: 4 }, (_, i) =>
      inputLine(`c${i}`, chatBody(`question ${i}`, "gpt-4o-mini", LONG_SYSTEM)),
    );
    const batch = await batches.getBatch(
      (await batches.createBatch(await batches.uploadFile("in.jsonl", jsonl(lines)), {})).id,
    );
    const usages = (await readLines(batches, batch.outputFileId)).map(
      ({ line }) => Completion.parse(line.response?.body).usage,
    );
    expect(usages[0]?.prompt_tokens).toBeGreaterThan(3000);
    expect(usages[0]?.prompt_tokens_details.cached_tokens).toBe(0);
    for (const usage of usages.slice(1)) {
      expect(usage.prompt_tokens_details.cached_tokens).toBeGreaterThanOrEqual(3000);
      expect(usage.prompt_tokens_details.cached_tokens % 128).toBe(0);
      expect(usage.prompt_tokens_details.cached_tokens).toBeLessThan(usage.prompt_tokens);
    }
    const sum = (pick: (u: (typeof usages)[number]) => number) => usages.reduce((n, u) => n + pick(u), 0);
    expect(batches.stats()).toMatchObject({
      linesAnswered: 4,
      promptTokens: sum((u) => u.prompt_tokens),
      cachedTokens: sum((u) => u.prompt_tokens_details.cached_tokens),
      completionTokens: sum((u) => u.completion_tokens),
    });
    expect((await batches.retrieve(batch.id)).usage).toMatchObject({
      input_tokens: sum((u) => u.prompt_tokens),
      input_tokens_details: { cached_tokens: sum((u) => u.prompt_tokens_details.cached_tokens) },
    });
  });

  it("puts a line whose body fails validation in the error file with a 400", async () => {
    const batches = new SimulatedBatches();
    const bad = inputLine("bad", { model: "gpt-4o-mini", messages: [] });
    const file = await batches.uploadFile("in.jsonl", jsonl([bad, ...requests(2)]));
    const batch = await batches.getBatch((await batches.createBatch(file, {})).id);
    expect(batch).toMatchObject({
      status: "completed",
      requestCounts: { total: 3, completed: 2, failed: 1 },
    });
    const failed = await readLines(batches, batch.errorFileId);
    expect(failed).toHaveLength(1);
    expect(failed[0]?.line).toMatchObject({ custom_id: "bad", response: { status_code: 400 }, error: null });
    expect(ErrorBody.parse(failed[0]?.line.response?.body).error).toMatchObject({
      type: "invalid_request_error",
      param: "messages",
    });
    expect((await readLines(batches, batch.outputFileId)).map((l) => l.line.custom_id)).toEqual([
      "q-0",
      "q-1",
    ]);
    expect(batches.stats()).toMatchObject({ linesAnswered: 2, linesFailed: 1 });
  });

  it("fails a deterministic share of lines with a 500, chosen by custom_id", async () => {
    const run = async () => {
      const batches = new SimulatedBatches({ failShare: 0.5 });
      const file = await batches.uploadFile("in.jsonl", jsonl(requests(40)));
      const batch = await batches.getBatch((await batches.createBatch(file, {})).id);
      const failed = await readLines(batches, batch.errorFileId);
      const answered = await readLines(batches, batch.outputFileId);
      return { batch, failed, answered, stats: batches.stats() };
    };
    const first = await run();
    const { failed, answered, batch } = first;
    expect(failed.length).toBeGreaterThan(8);
    expect(failed.length).toBeLessThan(32);
    expect(batch.requestCounts).toEqual({ total: 40, completed: answered.length, failed: failed.length });
    expect(answered.length + failed.length).toBe(40);
    for (const { line } of failed) {
      expect(line.response?.status_code).toBe(500);
      expect(ErrorBody.parse(line.response?.body).error.type).toBe("server_error");
    }
    const second = await run();
    expect(second.failed.map((l) => l.line.custom_id)).toEqual(failed.map((l) => l.line.custom_id));
    // Failed lines are not billed.
    expect(first.stats.linesFailed).toBe(failed.length);
    const billed = answered.reduce(
      (n, { line }) => n + Completion.parse(line.response?.body).usage.prompt_tokens,
      0,
    );
    expect(first.stats.promptTokens).toBe(billed);
  });

  it("expires: every line in the error file with batch_expired and no response, nothing billed", async () => {
    const batches = new SimulatedBatches({ expire: true });
    const file = await batches.uploadFile("in.jsonl", jsonl(requests(3)));
    const batch = await batches.getBatch((await batches.createBatch(file, {})).id);
    expect(batch).toMatchObject({
      status: "expired",
      outputFileId: null,
      requestCounts: { total: 3, completed: 0, failed: 3 },
    });
    const failed = await readLines(batches, batch.errorFileId);
    expect(failed.map((l) => l.line.custom_id)).toEqual(["q-0", "q-1", "q-2"]);
    for (const { line } of failed) {
      expect(line.response).toBeNull();
      expect(line.error?.code).toBe("batch_expired");
    }
    expect((await batches.retrieve(batch.id)).expired_at).not.toBeNull();
    expect(batches.stats()).toMatchObject({ linesAnswered: 0, linesFailed: 3, promptTokens: 0 });
  });
});

describe("SimulatedBatches validation", () => {
  const body = chatBody("hi");
  const cases: ReadonlyArray<readonly [string, () => Uint8Array, string]> = [
    ["a line that is not JSON", () => jsonl([inputLine("a", body), "{not json"]), "invalid_json_line"],
    [
      "a line without custom_id",
      () => jsonl([JSON.stringify({ method: "POST", url: "/v1/chat/completions", body })]),
      "invalid_request",
    ],
    ["a GET line", () => jsonl([inputLine("a", body, { method: "GET" })]), "invalid_request"],
    [
      "duplicate custom_ids",
      () => jsonl([inputLine("a", body), inputLine("a", body)]),
      "duplicate_custom_id",
    ],
    [
      "mixed models",
      () => jsonl([inputLine("a", body), inputLine("b", chatBody("hi", "gpt-4o"))]),
      "mismatched_model",
    ],
    ["another url", () => jsonl([inputLine("a", body, { url: "/v1/embeddings" })]), "invalid_url"],
    ["an empty file", () => jsonl([]), "empty_file"],
    [
      "more than 50,000 lines",
      () => jsonl(Array.from({ length: MAX_BATCH_LINES + 1 }, (_, i) => inputLine(`l${i}`, { model: "m" }))),
      "too_many_requests",
    ],
  ];

  it.each(cases)("fails the whole batch for %s", async (_name, file, code) => {
    const batches = new SimulatedBatches();
    const created = await batches.createBatch(await batches.uploadFile("in.jsonl", file()), {});
    expect(created.status).toBe("validating");
    const failed = await batches.getBatch(created.id);
    expect(failed.status).toBe("failed");
    expect(failed.errors.some((error) => error.startsWith(`${code}:`))).toBe(true);
    expect(failed).toMatchObject({ outputFileId: null, errorFileId: null });
    const wire = await batches.retrieve(created.id);
    expect(wire.failed_at).not.toBeNull();
    expect(wire.errors?.data.map((e) => e.code)).toContain(code);
    expect(batches.stats().linesAnswered).toBe(0);
  });

  it("names the offending line", async () => {
    const batches = new SimulatedBatches();
    const file = jsonl([
      inputLine("a", chatBody("x")),
      inputLine("b", chatBody("y")),
      inputLine("a", chatBody("z")),
    ]);
    const failed = await batches.getBatch(
      (await batches.createBatch(await batches.uploadFile("f", file), {})).id,
    );
    expect(failed.errors).toEqual([expect.stringMatching(/^duplicate_custom_id: .* \(line 3\)$/)]);
  });

  it("refuses an upload over 200 MB, unknown ids, and other endpoints or windows", async () => {
    const batches = new SimulatedBatches();
    const big = new Uint8Array(MAX_BATCH_FILE_BYTES + 1);
    const tooBig = await batches.uploadFile("big.jsonl", big).then(
      () => null,
      (error: unknown) => error,
    );
    expect(tooBig).toBeInstanceOf(SimBatchError);
    expect(tooBig).toMatchObject({ status: 413, code: "file_too_large", retryable: false });
    expect(batches.stats().filesUploaded).toBe(0);

    await expect(batches.getBatch("batch_nope")).rejects.toMatchObject({ status: 404 });
    await expect(batches.fileText("file-nope")).rejects.toMatchObject({ status: 404 });
    await expect(batches.createBatch("file-nope", {})).rejects.toMatchObject({ status: 404 });
    const file = await batches.uploadFile("in.jsonl", jsonl(requests(1)));
    expect(() =>
      batches.create({ inputFileId: file, endpoint: "/v1/embeddings", completionWindow: "24h" }),
    ).toThrow(expect.objectContaining({ status: 400, param: "endpoint" }));
    expect(() =>
      batches.create({ inputFileId: file, endpoint: "/v1/chat/completions", completionWindow: "48h" }),
    ).toThrow(expect.objectContaining({ status: 400, param: "completion_window" }));
    expect(batches.stats().batchesCreated).toBe(0);
  });
});
