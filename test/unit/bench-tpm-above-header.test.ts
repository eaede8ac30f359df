import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { benchTokenLimit } from "../helpers/endpoint.ts";
import { type ForeignServer, startForeignServer } from "../helpers/foreign-openai.ts";

describe("--tpm against a server whose x-ratelimit-limit-tokens says otherwise", () => {
  let foreign: ForeignServer;
  beforeAll(async () => {
    foreign = await startForeignServer({ apiKey: "sk-tpm-bench-key", tokensPerMinute: 400_000 });
  });
  afterAll(async () => {
    await foreign.close();
  });
  const endpoint = () => ({ baseURL: foreign.url, apiKey: "sk-tpm-bench-key" });

  it("a --tpm above the server's limit is not what the run can use: the server's is measured, and said", async () => {
    const said: string[] = [];
    expect(await benchTokenLimit("600000", endpoint(), "gpt-4o-mini", 700_000, (l) => said.push(l))).toBe(
      400_000,
    );
    expect(said.join("\n")).toMatch(/reports a limit of 400000 tokens\/min .* below --tpm 600000/);
  });

  it("a --tpm below it stays (the governor is told it), and the difference is said", async () => {
    const said: string[] = [];
    expect(await benchTokenLimit("200000", endpoint(), "gpt-4o-mini", 700_000, (l) => said.push(l))).toBe(
      200_000,
    );
    expect(said.join("\n")).toMatch(/above --tpm 200000/);
  });
});
