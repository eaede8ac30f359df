import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runNode } from "../helpers/cli.ts";
import { type ForeignServer, startForeignServer } from "../helpers/foreign-openai.ts";

const KEY = "sk-bench-right-key-0123456789";
const WRONG = "sk-bench-WRONG-key-9876543210";

/** Answers every chat completion, with no x-ratelimit-* header. */
async function startHeaderlessServer(): Promise<{ url: string; close: () => Promise<void> }> {
  const server: Server = createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          id: "chatcmpl-1",
          object: "chat.completion",
          created: 1,
          model: "gpt-4o-mini",
          choices: [
            { index: 0, message: { role: "assistant", content: '{"answer":"ok"}' }, finish_reason: "stop" },
          ],
          usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 },
        }),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

const stackTrace = /^\s+at .+\(?(file|node):/m;

describe("a benchmark that cannot start against another server says why in one line", () => {
  let foreign: ForeignServer;
  let headerless: Awaited<ReturnType<typeof startHeaderlessServer>>;
  beforeAll(async () => {
    foreign = await startForeignServer({ apiKey: KEY });
    headerless = await startHeaderlessServer();
  });
  afterAll(async () => {
    await foreign.close();
    await headerless.close();
  });

  for (const [script, args] of [
    ["test/bench/rate-limit.ts", ["--samples", "20"]],
    ["test/bench/rate-emulated.ts", ["--samples", "20"]],
    ["test/bench/cost.ts", ["--samples", "2"]],
    ["test/bench/aws-cost.ts", ["--samples", "2"]],
  ] as const) {
    it(`${script}: a refused key exits 3 with the server's reason, no stack trace and no key`, async () => {
      const run = await runNode([script, ...args, "--base-url", foreign.url], { OPENAI_API_KEY: WRONG });
      expect(run.stderr).toMatch(
        /\[bench:[a-z-]+\] a small request to 127\.0\.0\.1:\d+ \(gpt-4o-mini\) failed: 401/,
      );
      expect(run.stderr).not.toMatch(stackTrace);
      expect(run.stdout + run.stderr).not.toContain(WRONG);
      expect(run.code).toBe(3);
    });
  }

  it("a server that sends no limit header, and no --tpm given: exit 2, asking for --tpm", async () => {
    const run = await runNode(["test/bench/rate-limit.ts", "--base-url", headerless.url], {
      OPENAI_API_KEY: KEY,
    });
    expect(run.stderr).toMatch(
      /sent no x-ratelimit-limit-tokens header for gpt-4o-mini: give its limit with --tpm/,
    );
    expect(run.stderr).not.toMatch(stackTrace);
    expect(run.code).toBe(2);
  });
});
