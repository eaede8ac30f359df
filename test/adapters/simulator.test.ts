import { OpenAI } from "openai";
import sharp from "sharp";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { formatDuration, type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { SimulatedLlm } from "../../functions/adapters/simulated/simulated-llm.ts";
import {
  countRequestTokens,
  countSchemaTokens,
  dataUrlImageSize,
  imageTokens,
} from "../../functions/adapters/simulated/tokens.ts";
import { LlmAnswerError } from "../../functions/ports/errors.ts";
import type { LlmRequest } from "../../functions/ports/llm.ts";

const Answer = z.object({
  question: z.string(),
  answer: z.string(),
  steps: z.array(z.object({ manipulation: z.string(), description: z.string() })),
  score: z.number().int().min(1).max(10),
});
const schema = z.toJSONSchema(Answer);
const responseFormat = {
  type: "json_schema",
  json_schema: { name: "answer", strict: true, schema },
} as const;

/** About 3,000 tokens of distinct words, shared by requests that should hit the prefix cache. */
const LONG_SYSTEM = Array.from({ length: 1500 }, (_, i) => `rule${i}`).join(" ");

async function imageDataUrl(format: "jpeg" | "png", width: number, height: number): Promise<string> {
  const image = sharp({ create: { width, height, channels: 3, background: { r: 200, g: 30, b: 30 } } });
  const bytes = await (format === "jpeg" ? image.jpeg() : image.png()).toBuffer();
  return `data:image/${format};base64,${bytes.toString("base64")}`;
}

let jpeg = "";
let png = "";
beforeAll(async () => {
  jpeg = await imageDataUrl("jpeg", 1024, 768);
  png = await imageDataUrl("png", 3000, 1000);
});

describe("token accounting", () => {
  it("applies the provider's image rule", () => {
    expect(imageTokens("gpt-4o-mini", "low", 4000, 4000)).toBe(2833);
    expect(imageTokens("gpt-4o", "low", 4000, 4000)).toBe(85);
    // 1024x768 stays as is (shortest side already 768): 2x2 tiles.
    expect(imageTokens("gpt-4o", "high", 1024, 768)).toBe(85 + 4 * 170);
    // 3000x1000 -> 2048x683: 4x2 tiles.
    expect(imageTokens("gpt-4.1", "auto", 3000, 1000)).toBe(85 + 8 * 170);
    expect(imageTokens("gpt-4o-mini", "high", 512, 512)).toBe(2833 + 5667);
  });

  it("writes rate-limit resets as OpenAI does, minutes and seconds that carry over", () => {
    expect([20, 1_500, 59_996, 60_000, 119_999, 361_250].map(formatDuration)).toEqual([
      "20ms",
      "1.5s",
      "1m0s",
      "1m0s",
      "2m0s",
      "6m1.25s",
    ]);
  });

  it("bills gpt-4.1-mini, gpt-4.1-nano and o4-mini by 32-px patches times their multiplier, whatever the detail", () => {
    // 16 x 12 patches.
    expect(imageTokens("gpt-4.1-mini", "high", 512, 384)).toBe(Math.ceil(192 * 1.62));
    expect(imageTokens("gpt-4.1-mini-2025-04-14", "low", 512, 384)).toBe(Math.ceil(192 * 1.62));
    expect(imageTokens("gpt-4.1-nano", "auto", 512, 384)).toBe(Math.ceil(192 * 2.46));
    expect(imageTokens("o4-mini", "high", 100, 100)).toBe(Math.ceil(16 * 1.72));
    // A patch may reach past the edge: 33 px take two.
    expect(imageTokens("gpt-4.1-mini", "high", 33, 32)).toBe(Math.ceil(2 * 1.62));
    // Over 1,536 patches the image is scaled down to fit in them: 1,800 x 2,400 would take 4,200.
    const large = imageTokens("gpt-4.1-mini", "high", 1800, 2400);
    expect(large).toBeLessThanOrEqual(Math.ceil(1536 * 1.62));
    expect(large).toBeGreaterThan(Math.ceil(1400 * 1.62));
    // gpt-4.1 itself keeps the tiles.
    expect(imageTokens("gpt-4.1", "low", 512, 384)).toBe(85);
  });

  it("reads JPEG and PNG sizes from data URL headers", () => {
    expect(dataUrlImageSize(jpeg)).toEqual({ width: 1024, height: 768 });
    expect(dataUrlImageSize(png)).toEqual({ width: 3000, height: 1000 });
    expect(dataUrlImageSize("https://example.com/a.jpg")).toBeNull();
    expect(
      countRequestTokens("gpt-4o", [
        { role: "user", content: [{ type: "image_url", imageUrl: png, detail: "high" }] },
      ]),
    ).toBe(3 + 3 + 1 + 1445);
  });
});

describe("SimulatedLlm", () => {
  // Built per test: the image exists only once beforeAll has run.
  const buildRequest = (): LlmRequest => ({
    model: "gpt-4o-mini",
    messages: [
      { role: "system", content: LONG_SYSTEM },
      {
        role: "user",
        content: [
          { type: "text", text: "Evolve this question." },
          { type: "image_url", imageUrl: jpeg, detail: "low" },
        ],
      },
    ],
    schemaName: "answer",
    schema,
    temperature: 0.7,
    maxTokens: 2000,
    seed: 1,
  });

  it("answers schema-valid JSON, deterministically, with billed and cached tokens", async () => {
    const request = buildRequest();
    const llm = new SimulatedLlm();
    const first = await llm.complete({ ...request, messages: request.messages.map((m) => ({ ...m })) });
    const second = await llm.complete(request);
    expect(Answer.parse(JSON.parse(first.content))).toEqual(JSON.parse(second.content));
    expect(first.usage.promptTokens).toBe(
      countRequestTokens(request.model, request.messages) + countSchemaTokens(schema),
    );
    expect(first.usage.promptTokens).toBeGreaterThan(2833 + 3000);
    expect(first.usage.cachedTokens).toBe(0);
    expect(second.usage.cachedTokens).toBeGreaterThanOrEqual(1024);
    expect(second.usage.cachedTokens % 128).toBe(0);
    expect(second.usage.cachedTokens).toBeLessThanOrEqual(second.usage.promptTokens);
    const other = await new SimulatedLlm().complete({ ...request, seed: 2 });
    expect(other.content).not.toBe(first.content);
    expect(other.usage.cachedTokens).toBe(0);
  });

  it("caches a prefix for the model that computed it only", async () => {
    const request = buildRequest();
    const llm = new SimulatedLlm();
    await llm.complete(request);
    expect((await llm.complete({ ...request, model: "gpt-4.1-mini" })).usage.cachedTokens).toBe(0);
    expect((await llm.complete({ ...request, model: "gpt-4.1-mini" })).usage.cachedTokens).toBeGreaterThan(0);
  });

  it("cuts the answer at maxTokens like the provider, and reads it as OpenAiLlm does: unusable, and billed", async () => {
    const cut = await new SimulatedLlm().complete({ ...buildRequest(), maxTokens: 5 }).then(
      () => null,
      (error: unknown) => error,
    );
    expect(cut).toBeInstanceOf(LlmAnswerError);
    expect(cut).toMatchObject({ cutAt: 5, usage: { completionTokens: 5 } });
    expect((cut as LlmAnswerError).usage?.promptTokens).toBeGreaterThan(0);
  });
});

describe("simulator server with the openai client", () => {
  let sim: Simulator;
  let limited: Simulator;
  let client: OpenAI;
  beforeAll(async () => {
    sim = await startSimulator({ apiKey: "test" });
    limited = await startSimulator({ requestsPerMinute: 2, tokensPerMinute: 1_000_000 });
    client = new OpenAI({ baseURL: sim.url, apiKey: "test", maxRetries: 0 });
  });
  afterAll(async () => {
    await sim.close();
    await limited.close();
  });

  it("answers a schema-valid completion, the same one SimulatedLlm gives", async () => {
    const messages = [{ role: "user" as const, content: "Ask something about the picture." }];
    const completion = await client.chat.completions.create({
      model: "gpt-4o",
      messages,
      response_format: responseFormat,
      seed: 7,
      max_completion_tokens: 1000,
    });
    const content = completion.choices[0]?.message.content ?? "";
    expect(Answer.safeParse(JSON.parse(content)).success).toBe(true);
    expect(completion.choices[0]?.finish_reason).toBe("stop");
    const direct = await new SimulatedLlm().complete({
      model: "gpt-4o",
      messages,
      schemaName: "answer",
      schema,
      temperature: 1,
      maxTokens: 1000,
      seed: 7,
    });
    expect(content).toBe(direct.content);
    expect(completion.usage?.prompt_tokens).toBe(direct.usage.promptTokens);
    expect(completion.usage?.completion_tokens).toBe(direct.usage.completionTokens);
  });

  it("bills a low-detail gpt-4o-mini image as 2833 tokens and caches a shared long prefix", async () => {
    const ask = (question: string, detail: "low" | "high") =>
      client.chat.completions.create({
        model: "gpt-4o-mini",
        messages: [
          { role: "system", content: LONG_SYSTEM },
          {
            role: "user",
            content: [
              { type: "image_url", image_url: { url: jpeg, detail } },
              { type: "text", text: question },
            ],
          },
        ],
        response_format: responseFormat,
      });
    const withImage = await ask("What is red?", "low");
    const again = await ask("What is round?", "low");
    const high = await ask("What is red?", "high");
    const textOnly = await client.chat.completions.create({
      model: "gpt-4o-mini",
      messages: [
        { role: "system", content: LONG_SYSTEM },
        { role: "user", content: [{ type: "text", text: "What is red?" }] },
      ],
      response_format: responseFormat,
    });
    expect((withImage.usage?.prompt_tokens ?? 0) - (textOnly.usage?.prompt_tokens ?? 0)).toBe(2833);
    const imageShare = (high.usage?.prompt_tokens ?? 0) - (withImage.usage?.prompt_tokens ?? 0);
    expect(imageShare).toBe(5667 * 4); // 1024x768: 2833 + 4 tiles vs 2833 alone
    expect(withImage.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    const cached = again.usage?.prompt_tokens_details?.cached_tokens ?? 0;
    expect(cached).toBeGreaterThanOrEqual(3000);
    expect(cached % 128).toBe(0);
    const log = sim.stats().log.slice(-4, -1);
    expect(log.map((e) => [e.hasImage, e.imageDetail, e.schemaName, e.status])).toEqual([
      [true, "low", "answer", 200],
      [true, "low", "answer", 200],
      [true, "high", "answer", 200],
    ]);
    expect(sim.lastRequests().length).toBeGreaterThanOrEqual(3);
  });

  it("answers 429 with retry-after once the rpm limit is used up", async () => {
    const limitedClient = new OpenAI({ baseURL: limited.url, apiKey: "any", maxRetries: 0 });
    const create = () =>
      limitedClient.chat.completions.create({
        model: "gpt-4o-mini",
        messages: [{ role: "user", content: "hi" }],
      });
    const { response } = await create().withResponse();
    expect(response.headers.get("x-ratelimit-limit-requests")).toBe("2");
    expect(response.headers.get("x-ratelimit-remaining-requests")).toBe("1");
    await create();
    const error = await create().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(OpenAI.RateLimitError);
    if (!(error instanceof OpenAI.APIError)) throw new Error("expected an APIError");
    expect(error.status).toBe(429);
    const retryAfter = Number(error.headers?.get("retry-after"));
    expect(retryAfter).toBeGreaterThan(20);
    expect(retryAfter).toBeLessThanOrEqual(30);
    expect(Number(error.headers?.get("retry-after-ms"))).toBeCloseTo(retryAfter * 1000, -1);
    expect(error.headers?.get("x-ratelimit-remaining-requests")).toBe("0");
    expect(limited.stats()).toMatchObject({ requests: 3, succeeded: 2, rateLimited: 1 });
  });

  it("charges its token limit the prompt plus max_tokens, or with tokenCharge usage the tokens used", async () => {
    // Small, so the bucket refills slowly (0.1 token a millisecond) and the margin below stays far under the
    // 4,000 tokens that tell the two charges apart; at 1,000,000 a minute, 50 tokens came back in 3 ms, and a
    // loaded machine took longer than that between the charge and the headers.
    const limit = 6_000;
    const remainingAfterOne = async (tokenCharge: "max_tokens" | "usage") => {
      const server = await startSimulator({ tokensPerMinute: limit, tokenCharge });
      const started = performance.now();
      try {
        const { data, response } = await new OpenAI({
          baseURL: server.url,
          apiKey: "any",
          maxRetries: 0,
        }).chat.completions
          .create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }], max_tokens: 4000 })
          .withResponse();
        return {
          remaining: Number(response.headers.get("x-ratelimit-remaining-tokens")),
          used: (data.usage?.prompt_tokens ?? 0) + (data.usage?.completion_tokens ?? 0),
          prompt: data.usage?.prompt_tokens ?? 0,
          // What the bucket can have refilled while the request was out, at most.
          refill: Math.ceil(((performance.now() - started) * limit) / 60_000) + 1,
        };
      } finally {
        await server.close();
      }
    };
    const reserved = await remainingAfterOne("max_tokens");
    const used = await remainingAfterOne("usage");
    // Some refill may come back between the charge and the headers.
    expect(reserved.remaining).toBeGreaterThanOrEqual(limit - reserved.prompt - 4000);
    expect(reserved.remaining).toBeLessThanOrEqual(limit - reserved.prompt - 4000 + reserved.refill);
    expect(used.remaining).toBeGreaterThanOrEqual(limit - used.used);
    expect(used.remaining).toBeLessThanOrEqual(Math.min(limit, limit - used.used + used.refill));
    expect(reserved.refill).toBeLessThan(1000);
    expect(used.used).toBeLessThan(reserved.prompt + 4000);
  });

  it("rejects a wrong key with 401 and a bad body with 400", async () => {
    const wrong = new OpenAI({ baseURL: sim.url, apiKey: "wrong", maxRetries: 0 });
    await expect(wrong.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toContain("gpt-4o-mini");
    const response = await fetch(`${sim.url}/chat/completions`, {
      method: "POST",
      headers: { authorization: "Bearer test", "content-type": "application/json" },
      body: JSON.stringify({ model: "gpt-4o-mini" }),
    });
    expect(response.status).toBe(400);
    const body = z
      .object({ error: z.object({ message: z.string(), type: z.string(), param: z.string().nullable() }) })
      .parse(await response.json());
    expect(body.error).toMatchObject({ type: "invalid_request_error", param: "messages" });
  });
});
