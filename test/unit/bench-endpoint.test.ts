import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type Simulator, startSimulator } from "../../functions/adapters/simulated/server.ts";
import { benchSamples, benchTokenLimit, foreignEndpoint, serverName } from "../helpers/endpoint.ts";

describe("the benchmarks' --base-url", () => {
  it("means the simulator when absent, and takes the key from OPENAI_API_KEY", () => {
    expect(foreignEndpoint(undefined)).toBeNull();
    expect(serverName(null)).toBe("the simulator");
    vi.stubEnv("OPENAI_API_KEY", "sk-from-env");
    try {
      const endpoint = foreignEndpoint("https://llm.example:8443/openai/v1/");
      expect(endpoint).toEqual({ baseURL: "https://llm.example:8443/openai/v1", apiKey: "sk-from-env" });
      expect(serverName(endpoint)).toBe("llm.example:8443");
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it("refuses what is not an http(s) URL, naming it", () => {
    expect(() => foreignEndpoint("localhost:8000")).toThrow(/http\(s\) URL.*localhost:8000/);
    expect(() => foreignEndpoint("not a url")).toThrow(/--base-url must be an http\(s\) URL/);
  });
});

describe("the limit a rate benchmark measures against", () => {
  let limited: Simulator;
  let unlimited: Simulator;
  beforeAll(async () => {
    limited = await startSimulator({ tokensPerMinute: 345_000 });
    unlimited = await startSimulator({});
  });
  afterAll(async () => {
    await limited.close();
    await unlimited.close();
  });

  it("is the one given, else the simulator's default without asking a server", async () => {
    expect(await benchTokenLimit("90000", null, "gpt-4o-mini", 700_000)).toBe(90_000);
    expect(await benchTokenLimit(undefined, null, "gpt-4o-mini", 700_000)).toBe(700_000);
    await expect(benchTokenLimit("lots", null, "gpt-4o-mini", 1)).rejects.toThrow(/--tpm must be a positive/);
  });

  it("is read from a server's x-ratelimit-limit-tokens header when not given", async () => {
    const endpoint = { baseURL: limited.url, apiKey: "sk-test" };
    expect(await benchTokenLimit(undefined, endpoint, "gpt-4o-mini", 700_000)).toBe(345_000);
    // A limit given wins over the header.
    expect(await benchTokenLimit("1000", endpoint, "gpt-4o-mini", 700_000)).toBe(1_000);
  });

  it("must be given for a server that reports none", async () => {
    const endpoint = { baseURL: unlimited.url, apiKey: "sk-test" };
    await expect(benchTokenLimit(undefined, endpoint, "gpt-4o-mini", 700_000)).rejects.toThrow(
      /sent no x-ratelimit-limit-tokens header for gpt-4o-mini: give its limit with --tpm/,
    );
  });
});

describe("the samples a rate benchmark runs", () => {
  const defaults = { samples: 60, tpm: 200_000 };
  it("are the default at the default limit, and grow or shrink with the limit", () => {
    expect(benchSamples(undefined, 200_000, defaults)).toBe(60);
    // Under it, about 4 minutes of work too (5,500 tokens a sample), up to the default's samples and at least 20.
    expect(benchSamples(undefined, 100_000, defaults)).toBe(60);
    expect(benchSamples(undefined, 50_000, defaults)).toBe(37);
    expect(benchSamples(undefined, 20_000, defaults)).toBe(20);
    expect(benchSamples(undefined, 30_000, { samples: 200, tpm: 700_000 })).toBe(22);
    expect(benchSamples(undefined, 400_000, { samples: 200, tpm: 700_000 })).toBe(200);
    expect(benchSamples(undefined, 200_000, { samples: 200, tpm: 700_000 })).toBe(146);
    // About 4 minutes of work at the limit, at 5,500 tokens a sample.
    expect(benchSamples(undefined, 400_000, defaults)).toBe(291);
    expect(benchSamples(undefined, 2_000_000, defaults)).toBe(1_455);
    expect(benchSamples(undefined, 700_000, { samples: 200, tpm: 700_000 })).toBe(200);
  });

  it("against another server, are about 4 minutes of work at its limit, whatever the default", () => {
    expect(benchSamples(undefined, 200_000, defaults, true)).toBe(146);
    expect(benchSamples(undefined, 700_000, { samples: 320, tpm: 700_000 }, true)).toBe(510);
    expect(benchSamples(undefined, 10_000, defaults, true)).toBe(20);
    expect(benchSamples("7", 200_000, defaults, true)).toBe(7);
  });

  it("are what --samples says, which must be a positive integer", () => {
    expect(benchSamples("7", 2_000_000, defaults)).toBe(7);
    expect(() => benchSamples("0", 200_000, defaults)).toThrow(/--samples must be a positive integer, got 0/);
    expect(() => benchSamples("many", 200_000, defaults)).toThrow(/got many/);
  });
});
