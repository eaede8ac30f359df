import { APIConnectionError, APIConnectionTimeoutError, APIError, OpenAI } from "openai";
import { afterAll, describe, expect, it } from "vitest";
import { z } from "zod";
import {
  dynamicKeysRoute,
  type FaultOptions,
  parseFaultMix,
  type RandomFaultKind,
} from "../../functions/adapters/simulated/faults.ts";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { judgeAnswerSchema, judgeSchema } from "../../functions/evolution/judge.ts";
import { EVOLVE_SCHEMA, EvolveAnswer } from "../../functions/evolution/prompts.ts";

const IDS = ["s1-r1-a", "s1-r1-b", "s1-r1-c"];

const sims: Simulator[] = [];
afterAll(async () => {
  await Promise.all(sims.map((sim) => sim.close()));
});

/** A simulator where every request gets exactly one kind of fault. */
async function only(kind: RandomFaultKind, extra: Partial<FaultOptions> = {}): Promise<Simulator> {
  const sim = await startSimulator({ faults: { rate: 1, mix: { [kind]: 1 }, seed: 1, ...extra } });
  sims.push(sim);
  return sim;
}

const client = (sim: Simulator, timeout = 5_000) =>
  new OpenAI({ apiKey: "sk-test-faults", baseURL: sim.url, maxRetries: 0, timeout });

let counter = 0;
/** A distinct request each call, so the per-digest retry discount never applies by accident. */
const body = (schema: "evolve" | "judge" = "evolve") => {
  counter += 1;
  return {
    model: "gpt-4o-mini",
    messages: [{ role: "user" as const, content: `request ${counter}` }],
    response_format: {
      type: "json_schema" as const,
      json_schema: {
        name: schema,
        strict: true,
        schema: schema === "judge" ? judgeSchema(IDS) : { ...EVOLVE_SCHEMA },
      },
    },
    max_tokens: 2048,
    seed: 3407,
  };
};

async function failure(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected the call to fail");
}

describe("simulator faults seen by the openai client", () => {
  it("rate_limit: 429 with retry-after 0.1..2 s and x-ratelimit headers", async () => {
    const sim = await only("rate_limit");
    const error = await failure(client(sim).chat.completions.create(body()));
    expect(error).toBeInstanceOf(APIError);
    if (!(error instanceof APIError)) return;
    expect(error.status).toBe(429);
    const seconds = Number(error.headers?.get("retry-after"));
    expect(seconds).toBeGreaterThanOrEqual(0.1);
    expect(seconds).toBeLessThanOrEqual(2);
    expect(error.headers?.get("x-ratelimit-remaining-requests")).toBe("0");
    expect(error.headers?.get("x-ratelimit-reset-requests")).toMatch(/\d+(ms|s)$/);
    expect(sim.stats().faults.rate_limit).toBe(1);
    expect(sim.stats().log[0]).toMatchObject({ status: 429, fault: "rate_limit" });
  });

  it("server_error and unavailable: 500 and 503", async () => {
    for (const [kind, status] of [
      ["server_error", 500],
      ["unavailable", 503],
    ] as const) {
      const sim = await only(kind);
      const error = await failure(client(sim).chat.completions.create(body()));
      expect(error).toBeInstanceOf(APIError);
      expect(error instanceof APIError ? error.status : null).toBe(status);
      expect(sim.stats().faults[kind]).toBe(1);
    }
  });

  it("slow: answers only after slowMs, so a shorter client timeout fires", async () => {
    const sim = await only("slow", { slowMs: 2_000 });
    const started = performance.now();
    const error = await failure(client(sim, 300).chat.completions.create(body()));
    expect(error).toBeInstanceOf(APIConnectionTimeoutError);
    expect(performance.now() - started).toBeLessThan(1_500);
  });

  it("reset: the connection drops without an answer", async () => {
    const sim = await only("reset");
    const error = await failure(client(sim).chat.completions.create(body()));
    expect(error).toBeInstanceOf(APIConnectionError);
    expect(error).not.toBeInstanceOf(APIConnectionTimeoutError);
    expect(sim.stats().log[0]).toMatchObject({ status: 0, fault: "reset" });
  });

  it("malformed_json: 200 whose content does not parse", async () => {
    const sim = await only("malformed_json");
    for (let i = 0; i < 4; i++) {
      const completion = await client(sim).chat.completions.create(body());
      const content = completion.choices[0]?.message.content ?? "";
      expect(content.length).toBeGreaterThan(10);
      expect(() => JSON.parse(content)).toThrow();
    }
    expect(sim.stats().succeeded).toBe(4);
  });

  it("refusal: message.refusal set, content null", async () => {
    const sim = await only("refusal");
    const completion = await client(sim).chat.completions.create(body());
    const choice = completion.choices[0];
    expect(choice?.message.content).toBeNull();
    expect(choice?.message.refusal).toMatch(/can't help/);
    expect(choice?.finish_reason).toBe("stop");
  });

  it("length: finish_reason length and truncated JSON", async () => {
    const sim = await only("length");
    const completion = await client(sim).chat.completions.create(body());
    const choice = completion.choices[0];
    expect(choice?.finish_reason).toBe("length");
    const content = choice?.message.content ?? "";
    expect(content.startsWith("{")).toBe(true);
    expect(() => JSON.parse(content)).toThrow();
    expect(completion.usage?.completion_tokens).toBeGreaterThan(0);
  });

  it("schema_violation: JSON that parses but breaks the schema", async () => {
    const sim = await only("schema_violation");
    for (let i = 0; i < 8; i++) {
      const completion = await client(sim).chat.completions.create(body());
      const value: unknown = JSON.parse(completion.choices[0]?.message.content ?? "");
      expect(EvolveAnswer.safeParse(value).success).toBe(false);
    }
  });

  it("judge_omits_verdict: one required verdict missing; other requests break their schema instead", async () => {
    expect(dynamicKeysRoute(judgeSchema(IDS))).toEqual(["verdicts"]);
    expect(dynamicKeysRoute(EVOLVE_SCHEMA)).toBeNull();
    const sim = await only("judge_omits_verdict");
    const completion = await client(sim).chat.completions.create(body("judge"));
    const value = z
      .object({ verdicts: z.record(z.string(), z.unknown()) })
      .parse(JSON.parse(completion.choices[0]?.message.content ?? ""));
    expect(Object.keys(value.verdicts)).toHaveLength(IDS.length - 1);
    const checked = judgeAnswerSchema(IDS).safeParse(value);
    expect(checked.success ? "" : checked.error.message).toMatch(/no verdict for/);

    const other = await client(sim).chat.completions.create(body("evolve"));
    expect(EvolveAnswer.safeParse(JSON.parse(other.choices[0]?.message.content ?? "")).success).toBe(false);
    expect(sim.stats().faults).toMatchObject({ judge_omits_verdict: 1, schema_violation: 1 });
  });
});

describe("fault choice", () => {
  /** The fault column of the log after the same request sequence. */
  async function faultsOf(seed: number): Promise<(string | null)[]> {
    const sim = await startSimulator({
      faults: { rate: 0.5, seed, mix: { server_error: 1, unavailable: 1 } },
    });
    sims.push(sim);
    const openai = client(sim);
    for (let i = 0; i < 40; i++) {
      await openai.chat.completions
        .create({ ...body(), messages: [{ role: "user", content: `same ${i % 20}` }] })
        .catch(() => null);
    }
    return sim.stats().log.map((entry) => entry.fault);
  }

  it("is the same for the same seed, differs for another, and retries of a request fault less", async () => {
    const a = await faultsOf(7);
    const b = await faultsOf(7);
    const c = await faultsOf(8);
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    const firstTries = a.slice(0, 20).filter((f) => f !== null).length;
    const secondTries = a.slice(20).filter((f) => f !== null).length;
    expect(firstTries).toBeGreaterThan(4);
    expect(secondTries).toBeLessThan(firstTries);
  });

  it("a persistent fault repeats on every try of its request", async () => {
    const sim = await only("server_error", { persistentShare: 1 });
    const openai = client(sim);
    const request = body();
    for (let i = 0; i < 5; i++) {
      const error = await failure(openai.chat.completions.create(request));
      expect(error instanceof APIError ? error.status : null).toBe(500);
    }
    expect(sim.stats().faults.server_error).toBe(5);
  });

  it("a 429 storm rate-limits every request inside its window, none outside", async () => {
    const sim = await startSimulator({ faults: { rate: 0, storms: { everyMs: 600, durationMs: 300 } } });
    sims.push(sim);
    const openai = client(sim);
    const inside = await failure(openai.chat.completions.create(body()));
    expect(inside instanceof APIError ? inside.status : null).toBe(429);
    expect(
      inside instanceof APIError ? Number(inside.headers?.get("retry-after-ms")) : 0,
    ).toBeLessThanOrEqual(300);
    await new Promise((resolve) => setTimeout(resolve, 400));
    const after = await openai.chat.completions.create(body());
    expect(after.choices[0]?.finish_reason).toBe("stop");
    expect(sim.stats().faults.storm).toBe(1);
  });

  it("parses a fault mix and refuses unknown kinds", () => {
    expect(parseFaultMix("rate_limit=2, reset=1,slow")).toEqual({ rate_limit: 2, reset: 1, slow: 1 });
    expect(() => parseFaultMix("meteor=1")).toThrow(/unknown fault kind/);
    expect(() => parseFaultMix("reset=-1")).toThrow(/bad weight/);
  });
});
