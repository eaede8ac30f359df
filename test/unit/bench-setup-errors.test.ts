import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BARE_KEY, startBareServer } from "../helpers/bare-openai.ts";
import { runNode } from "../helpers/cli.ts";
import { type ForeignServer, startForeignServer } from "../helpers/foreign-openai.ts";

const KEY = "sk-bench-right-key-0123456789";
const WRONG = "sk-bench-WRONG-key-9876543210";

const stackTrace = /^\s+at .+\(?(file|node):/m;

describe("a benchmark that cannot start against another server says why in one line", () => {
  let foreign: ForeignServer;
  let headerless: Awaited<ReturnType<typeof startBareServer>>;
  beforeAll(async () => {
    foreign = await startForeignServer({ apiKey: KEY });
    // No x-ratelimit-* headers.
    headerless = await startBareServer();
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
      OPENAI_API_KEY: BARE_KEY,
    });
    expect(run.stderr).toMatch(
      /sent no x-ratelimit-limit-tokens header for gpt-4o-mini: give its limit with --tpm/,
    );
    expect(run.stderr).not.toMatch(stackTrace);
    expect(run.code).toBe(2);
  });
});
