import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OpenAiLlm } from "../../functions/adapters/openai/openai-llm.ts";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { measureCost } from "../bench/cost.ts";
import { BARE_KEY, startBareServer } from "../helpers/bare-openai.ts";
import {
  awaitFullBudget,
  budgetShortfall,
  probeBatchApi,
  probeServer,
  tinyRequest,
} from "../helpers/endpoint.ts";

describe("how much of a minute a server's token budget lacks", () => {
  // A fresh budget, as the probe left it: its own 100 tokens spent.
  const fresh = { limitTokens: 10_000, remainingTokens: 9_900, ownTokens: 100 };
  it("is the tokens' shortfall, the probe's own charge not counted", () => {
    expect(budgetShortfall(fresh)).toBe(0);
    expect(budgetShortfall({ ...fresh, remainingTokens: 2_400 })).toBe(0.75);
    // At a small limit the probe's charge is a large share: a fresh budget is still full.
    expect(budgetShortfall({ limitTokens: 3_000, remainingTokens: 2_897, ownTokens: 103 })).toBe(0);
    expect(budgetShortfall({ ...fresh, remainingTokens: -500 })).toBe(0.99);
  });
  it("takes the limit given when the server sends remaining tokens and no limit", () => {
    expect(budgetShortfall({ ...fresh, limitTokens: null, remainingTokens: 4_900 })).toBeNull();
    expect(budgetShortfall({ ...fresh, limitTokens: null, remainingTokens: 4_900 }, 10_000)).toBe(0.5);
    // A limit header wins over the one given.
    expect(budgetShortfall({ ...fresh, remainingTokens: 4_900 }, 20_000)).toBe(0.5);
  });
  it("is unknown when the token headers do not say, whatever the request headers do", () => {
    expect(budgetShortfall({ limitTokens: null, remainingTokens: null, ownTokens: 100 })).toBeNull();
    expect(budgetShortfall({ ...fresh, remainingTokens: null })).toBeNull();
  });
});

describe("a rate benchmark's start against another server", () => {
  let limited: Simulator;
  let bare: Awaited<ReturnType<typeof startBareServer>>;
  beforeAll(async () => {
    limited = await startSimulator({ tokensPerMinute: 50_000 });
    bare = await startBareServer();
  });
  afterAll(async () => {
    await limited.close();
    await bare.close();
  });

  it("starts at once when the server's budget is full, at a small limit too", async () => {
    const waits: number[] = [];
    const fresh = await startSimulator({ tokensPerMinute: 3_000 });
    try {
      const probe = await awaitFullBudget({ baseURL: fresh.url, apiKey: "sk-test" }, "gpt-4o-mini", {
        say: () => {},
        wait: async (ms) => waits.push(ms),
      });
      expect(waits).toEqual([]);
      expect(probe.limitTokens).toBe(3_000);
    } finally {
      await fresh.close();
    }
  });

  it("waits for a budget a run before it spent to refill, for the time the refill takes", async () => {
    const endpoint = { baseURL: limited.url, apiKey: "sk-test" };
    // A call charged its prompt and 25,000 max_tokens spends half of a 50,000 tokens-per-minute budget.
    await new OpenAiLlm(endpoint).complete({ ...tinyRequest("gpt-4o-mini", "Spend"), maxTokens: 25_000 });
    const waits: number[] = [];
    const said: string[] = [];
    await awaitFullBudget(endpoint, "gpt-4o-mini", {
      say: (line) => said.push(line),
      wait: async (ms) => waits.push(ms),
    });
    // Half a minute, and the simulator's clock did not move: probed again, up to 5 times, then it starts anyway.
    expect(waits).toHaveLength(4);
    expect(waits[0]).toBeGreaterThan(30_000);
    expect(waits[0]).toBeLessThan(32_500);
    expect(said[0]).toMatch(
      /token budget for gpt-4o-mini is 5\d% short of full \(\d+ of 50000 left\): waiting 3\d s for it to refill/,
    );
    expect(said.at(-1)).toMatch(/still 5\d% short after 5 probes: starting anyway/);
  });

  it("waits a whole minute on a server that reports no remaining budget", async () => {
    const waits: number[] = [];
    const said: string[] = [];
    const probe = await awaitFullBudget({ baseURL: bare.url, apiKey: BARE_KEY }, "gpt-4o-mini", {
      say: (line) => said.push(line),
      wait: async (ms) => waits.push(ms),
    });
    expect(waits).toEqual([60_000]);
    expect(said.join("\n")).toMatch(/does not report its remaining token budget .*waiting 60 s/);
    expect(probe.reportsCachedTokens).toBe(false);
  });
});

describe("probing a server", () => {
  let sim: Simulator;
  let bare: Awaited<ReturnType<typeof startBareServer>>;
  beforeAll(async () => {
    sim = await startSimulator({});
    bare = await startBareServer();
  });
  afterAll(async () => {
    await sim.close();
    await bare.close();
  });

  it("tells whether its usage reports cached tokens", async () => {
    expect(
      (await probeServer({ baseURL: sim.url, apiKey: "sk-test" }, "gpt-4o-mini")).reportsCachedTokens,
    ).toBe(true);
    expect(
      (await probeServer({ baseURL: bare.url, apiKey: BARE_KEY }, "gpt-4o-mini")).reportsCachedTokens,
    ).toBe(false);
  });

  it("names the server and the reason when it fails, without the key", async () => {
    const failure = probeServer({ baseURL: bare.url, apiKey: "sk-wrong-but-secret-key" }, "gpt-4o-mini");
    await expect(failure).rejects.toThrow(/a small request to 127\.0\.0\.1:\d+ \(gpt-4o-mini\) failed: 401/);
    await expect(failure).rejects.not.toThrow(/sk-wrong-but-secret-key/);
  });

  it("finds the Batch API, or says the server has none", async () => {
    await expect(probeBatchApi({ baseURL: sim.url, apiKey: "sk-test" })).resolves.toBeUndefined();
    await expect(probeBatchApi({ baseURL: bare.url, apiKey: BARE_KEY })).rejects.toThrow(
      /127\.0\.0\.1:\d+ has no Batch API \(GET \/batches answered 404\)/,
    );
  });
});

describe("the cost benchmark against a server that cannot do the work", () => {
  let bare: Awaited<ReturnType<typeof startBareServer>>;
  beforeAll(async () => {
    bare = await startBareServer();
  });
  afterAll(async () => {
    await bare.close();
  });

  it("leaves out the batch layout at once, and names why every sample of the others failed", async () => {
    bare.refuse.on = true;
    const said: string[] = [];
    const figures = await measureCost({
      samples: 2,
      rounds: 1,
      endpoint: { baseURL: bare.url, apiKey: BARE_KEY },
      say: (line) => said.push(line),
    });
    expect(figures.failed.batch).toMatch(/has no Batch API/);
    expect(figures.failed.reference).toMatch(
      /reference layout: all 2 samples failed.*the first: .*takes no images/,
    );
    expect(figures.failed.online).toMatch(/online layout: all 2 samples failed/);
    expect([figures.reference, figures.online, figures.batch]).toEqual([null, null, null]);
    expect([figures.onlineRatio, figures.batchRatio]).toEqual([null, null]);
    expect(figures.serverReportsCachedTokens).toBe(false);
    expect(said.join("\n")).toMatch(/no usage\.prompt_tokens_details\.cached_tokens/);
  }, 60_000);
});
