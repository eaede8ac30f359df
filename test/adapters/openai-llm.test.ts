import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { LlmAnswerError, LlmCallError } from "../../functions/ports/errors.ts";
import type { LlmRequest } from "../../functions/ports/llm.ts";

interface Reply {
  readonly status: number;
  readonly body?: unknown;
  readonly headers?: Record<string, string>;
  /** Never answer, to exercise the client timeout. */
  readonly hang?: boolean;
  /** Sent as it is instead of `body` as JSON (a body cut off mid-way). */
  readonly raw?: string;
}

interface Seen {
  readonly url: string;
  readonly authorization: string | undefined;
  readonly body: unknown;
}

const API_KEY = "sk-test-0123456789abcdefghijklmnop";

let server: Server;
let baseURL: string;
let replies: Reply[] = [];
let seen: Seen[] = [];

const readBody = async (request: IncomingMessage): Promise<string> => {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks).toString("utf8");
};

const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
  const text = await readBody(request);
  seen.push({ url: request.url ?? "", authorization: request.headers.authorization, body: JSON.parse(text) });
  const reply = replies.shift() ?? { status: 500, body: { error: { message: "no scripted reply" } } };
  if (reply.hang === true) return;
  response.writeHead(reply.status, { "content-type": "application/json", ...reply.headers });
  response.end(reply.raw ?? JSON.stringify(reply.body ?? {}));
};

const completion = (
  message: { content: string | null; refusal?: string | null },
  finishReason = "stop",
  usage: unknown = {
    prompt_tokens: 1200,
    completion_tokens: 80,
    total_tokens: 1280,
    prompt_tokens_details: { cached_tokens: 1024 },
  },
): unknown => ({
  id: "chatcmpl-1",
  object: "chat.completion",
  created: 1_700_000_000,
  model: "gpt-4o-mini-2024-07-18",
  choices: [
    {
      index: 0,
      message: { role: "assistant", content: message.content, refusal: message.refusal ?? null },
      finish_reason: finishReason,
      logprobs: null,
    },
  ],
  // null leaves usage out, as some compatible servers do.
  ...(usage === null ? {} : { usage }),
});

const answer = JSON.stringify({ questions: ["What colour is the bus?"] });

const request: LlmRequest = {
  model: "gpt-4o-mini",
  messages: [
    { role: "system", content: "You evolve instructions." },
    {
      role: "user",
      content: [
        { type: "text", text: "Evolve this sample." },
        { type: "image_url", imageUrl: "data:image/jpeg;base64,AAAA", detail: "low" },
      ],
    },
  ],
  schemaName: "evolved_sample",
  schema: {
    type: "object",
    properties: { questions: { type: "array", items: { type: "string" } } },
    required: ["questions"],
    additionalProperties: false,
  },
  temperature: 0.7,
  maxTokens: 321,
  seed: 3407,
};

const llm = (options: { maxRetries?: number; timeoutMs?: number; baseURL?: string } = {}): OpenAiLlm =>
  new OpenAiLlm({
    apiKey: API_KEY,
    baseURL: options.baseURL ?? baseURL,
    maxRetries: options.maxRetries ?? 2,
    timeoutMs: options.timeoutMs ?? 5_000,
  });

const portOf = (listening: Server): number => {
  const address = listening.address();
  if (address === null || typeof address === "string") throw new Error("server is not listening on TCP");
  return address.port;
};

const failureOf = async (promise: Promise<unknown>): Promise<unknown> => {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the call to fail");
};

beforeAll(async () => {
  server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      res.writeHead(599);
      res.end(String(error));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseURL = `http://127.0.0.1:${portOf(server)}/v1`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(() => {
  replies = [];
  seen = [];
});

describe("OpenAiLlm", () => {
  it("sends a strict json_schema request and maps the answer", async () => {
    replies = [
      {
        status: 200,
        body: completion({ content: answer }),
        headers: {
          "x-ratelimit-limit-requests": "5000",
          "x-ratelimit-remaining-requests": "4999",
          "x-ratelimit-limit-tokens": "2000000",
          "x-ratelimit-remaining-tokens": "1998720",
        },
      },
    ];
    const client = llm();
    expect(client.lastRateLimit(request.model)).toBeNull();
    const response = await client.complete(request);

    expect(response).toEqual({
      content: answer,
      usage: { promptTokens: 1200, cachedTokens: 1024, completionTokens: 80 },
      model: "gpt-4o-mini-2024-07-18",
      finishReason: "stop",
      refusal: null,
    });
    expect(client.lastRateLimit(request.model)).toEqual({
      limitRequests: 5000,
      remainingRequests: 4999,
      limitTokens: 2_000_000,
      remainingTokens: 1_998_720,
    });
    // Kept per model: a provider limits each model on its own.
    expect(client.lastRateLimit("gpt-4.1-mini")).toBeNull();

    expect(seen).toHaveLength(1);
    const sent = seen[0];
    expect(sent?.url).toBe("/v1/chat/completions");
    expect(sent?.authorization).toBe(`Bearer ${API_KEY}`);
    expect(sent?.body).toEqual({
      model: "gpt-4o-mini",
      messages: [
        { role: "system", content: "You evolve instructions." },
        {
          role: "user",
          content: [
            { type: "text", text: "Evolve this sample." },
            { type: "image_url", image_url: { url: "data:image/jpeg;base64,AAAA", detail: "low" } },
          ],
        },
      ],
      response_format: {
        type: "json_schema",
        json_schema: { name: "evolved_sample", strict: true, schema: request.schema },
      },
      temperature: 0.7,
      max_tokens: 321,
      seed: 3407,
    });
  });

  it("reports zero usage when the server sends none", async () => {
    replies = [{ status: 200, body: completion({ content: answer }, "stop", null) }];
    const response = await llm().complete(request);
    expect(response.usage).toEqual({ promptTokens: 0, cachedTokens: 0, completionTokens: 0 });
  });

  it("reads null token counts (some compatible servers send them) as 0 instead of refusing a paid answer", async () => {
    replies = [
      {
        status: 200,
        body: completion({ content: answer }, "stop", {
          prompt_tokens: null,
          completion_tokens: 5,
          total_tokens: null,
        }),
      },
    ];
    const response = await llm().complete(request);
    expect(response.usage).toEqual({ promptTokens: 0, cachedTokens: 0, completionTokens: 5 });
  });

  it("treats a 200 whose body is cut off mid-way as a retryable server fault", async () => {
    replies = [{ status: 200, raw: '{"id":"chatcmpl-1","choices":[{"message":{"content":"{}"' }];
    const error = await failureOf(llm({ maxRetries: 0 }).complete(request));
    expect(error).toBeInstanceOf(LlmCallError);
    expect(error).toMatchObject({ retryable: true });
  });

  it("waits out a 429 with retry-after and then succeeds", async () => {
    replies = [
      { status: 429, body: { error: { message: "Rate limit reached" } }, headers: { "retry-after": "0" } },
      { status: 200, body: completion({ content: answer }) },
    ];
    const response = await llm().complete(request);
    expect(response.content).toBe(answer);
    expect(seen).toHaveLength(2);
  });

  it("retries a 500 and then succeeds", async () => {
    replies = [
      { status: 500, body: { error: { message: "server had an error" } } },
      { status: 200, body: completion({ content: answer }) },
    ];
    const response = await llm().complete(request);
    expect(response.content).toBe(answer);
    expect(seen).toHaveLength(2);
  });

  it("gives up on a 429 after its retries, as a retryable error carrying the wait hint", async () => {
    replies = [
      { status: 429, body: { error: { message: "Rate limit reached" } }, headers: { "retry-after-ms": "0" } },
      { status: 429, body: { error: { message: "Rate limit reached" } }, headers: { "retry-after": "3" } },
    ];
    const error = await failureOf(llm({ maxRetries: 1 }).complete(request));
    expect(error).toBeInstanceOf(LlmCallError);
    expect(error).toMatchObject({ retryable: true, status: 429, retryAfterMs: 3000 });
    expect(seen).toHaveLength(2);
  });

  it("gives up on repeated 503s as retryable", async () => {
    const unavailable: Reply = {
      status: 503,
      body: { error: { message: "overloaded" } },
      headers: { "retry-after-ms": "1" },
    };
    replies = [unavailable, unavailable, unavailable];
    const error = await failureOf(llm({ maxRetries: 2 }).complete(request));
    expect(error).toMatchObject({ retryable: true, status: 503 });
    expect(seen).toHaveLength(3);
  });

  it("does not retry a 400 and fails permanently", async () => {
    replies = [{ status: 400, body: { error: { message: "Invalid schema for response_format" } } }];
    const error = await failureOf(llm().complete(request));
    expect(error).toBeInstanceOf(LlmCallError);
    expect(error).toMatchObject({ retryable: false, status: 400 });
    expect(error instanceof Error ? error.message : "").toContain("Invalid schema");
    expect(seen).toHaveLength(1);
  });

  it("keeps the key out of a 401 message", async () => {
    replies = [{ status: 401, body: { error: { message: `Incorrect API key provided: ${API_KEY}.` } } }];
    const error = await failureOf(llm().complete(request));
    // The key, not the request: a KeyRefusedError, which stops a run instead of failing its samples.
    expect(error).toMatchObject({ name: "KeyRefusedError", retryable: true, inFlight: true, status: 401 });
    const message = error instanceof Error ? error.message : "";
    expect(message).toContain("Incorrect API key provided");
    expect(message).not.toContain(API_KEY);
  });

  it("reads a refusal and a content-filter stop as unusable answers, with what they were billed", async () => {
    replies = [
      { status: 200, body: completion({ content: null, refusal: "I can't help with that." }) },
      { status: 200, body: completion({ content: "" }, "content_filter") },
    ];
    const billed = { promptTokens: 1200, cachedTokens: 1024, completionTokens: 80 };
    const refused = await failureOf(llm().complete(request));
    expect(refused).toBeInstanceOf(LlmAnswerError);
    expect(refused).toMatchObject({ retryable: true, usage: billed });
    expect(refused instanceof Error ? refused.message : "").toContain("I can't help with that.");
    const filtered = await failureOf(llm().complete(request));
    expect(filtered).toBeInstanceOf(LlmAnswerError);
    expect(filtered).toMatchObject({ retryable: true, usage: billed });
    expect(filtered instanceof Error ? filtered.message : "").toContain("content filter");
  });

  it("asks to re-ask when the answer was cut at max_tokens or is empty", async () => {
    replies = [
      { status: 200, body: completion({ content: '{"questions": ["What' }, "length") },
      { status: 200, body: completion({ content: "" }) },
    ];
    const cut = await failureOf(llm().complete(request));
    expect(cut).toBeInstanceOf(LlmAnswerError);
    // Billed in full, and said where it was cut: the caller stores what it cost and may ask with more room.
    expect(cut).toMatchObject({
      retryable: true,
      cutAt: 321,
      usage: { promptTokens: 1200, cachedTokens: 1024, completionTokens: 80 },
    });
    expect(cut instanceof Error ? cut.message : "").toContain("321");
    const empty = await failureOf(llm().complete(request));
    expect(empty).toBeInstanceOf(LlmAnswerError);
  });

  it("treats a 200 that is not a chat completion as a retryable server fault", async () => {
    replies = [{ status: 200, body: { choices: [] } }];
    const error = await failureOf(llm().complete(request));
    expect(error).toBeInstanceOf(LlmCallError);
    expect(error).toMatchObject({ retryable: true });
  });

  it("turns a timeout into a retryable error", async () => {
    replies = [{ status: 200, hang: true }];
    const started = Date.now();
    const error = await failureOf(llm({ maxRetries: 0, timeoutMs: 200 }).complete(request));
    expect(error).toBeInstanceOf(LlmCallError);
    expect(error).toMatchObject({ retryable: true, status: null });
    expect(error instanceof Error ? error.message : "").toMatch(/timed out/);
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it("turns a refused connection into a retryable error", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = portOf(closed);
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const error = await failureOf(
      llm({ maxRetries: 0, baseURL: `http://127.0.0.1:${port}/v1` }).complete(request),
    );
    expect(error).toBeInstanceOf(LlmCallError);
    expect(error).toMatchObject({ retryable: true, status: null });
  });
});

describe("OpenAiLlm against a model that refuses a request field", () => {
  const refusal = (param: string, code = "unsupported_parameter") => ({
    status: 400,
    body: {
      error: {
        message: `Unsupported parameter: '${param}' is not supported with this model.`,
        type: "invalid_request_error",
        param,
        code,
      },
    },
  });

  it("sends max_completion_tokens instead of max_tokens, and no temperature, from then on", async () => {
    replies = [
      refusal("max_tokens"),
      refusal("temperature", "unsupported_value"),
      { status: 200, body: completion({ content: answer }) },
      { status: 200, body: completion({ content: answer }) },
    ];
    const client = llm();
    const o = { ...request, model: "o4-mini" };
    expect((await client.complete(o)).content).toBe(answer);
    expect(seen).toHaveLength(3);
    const last = seen[2]?.body as Record<string, unknown>;
    expect(last.max_completion_tokens).toBe(request.maxTokens);
    expect(last).not.toHaveProperty("max_tokens");
    expect(last).not.toHaveProperty("temperature");
    expect(last.seed).toBe(request.seed);
    // The next request to that model goes without them at once; another model keeps them.
    await client.complete(o);
    expect(seen).toHaveLength(4);
    expect(seen[3]?.body).toMatchObject({ max_completion_tokens: request.maxTokens });
    replies = [{ status: 200, body: completion({ content: answer }) }];
    await client.complete(request);
    expect(seen[4]?.body).toMatchObject({ max_tokens: request.maxTokens, temperature: request.temperature });
  });

  it("fails as before on a field it cannot go without, or a field refused twice", async () => {
    replies = [refusal("messages")];
    await expect(llm().complete(request)).rejects.toMatchObject({ retryable: false, status: 400 });
    expect(seen).toHaveLength(1);
    seen = [];
    replies = [refusal("seed"), refusal("seed")];
    await expect(llm().complete(request)).rejects.toMatchObject({ retryable: false, status: 400 });
    expect(seen).toHaveLength(2);
  });
});

describe("a 429 'Request too large'", () => {
  it("is sent once: no wait helps, so the client must not retry it either", async () => {
    const tooLarge = {
      status: 429,
      headers: { "retry-after": "0" },
      body: {
        error: {
          message:
            "Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 36153. The input or output tokens must be reduced in order to run successfully.",
          type: "tokens",
          code: "rate_limit_exceeded",
        },
      },
    };
    replies = [tooLarge, tooLarge, tooLarge];
    const error = await failureOf(llm().complete(request));
    expect(error).toMatchObject({ retryable: false, status: 429 });
    expect(seen).toHaveLength(1);
  });
});
