import { describe, expect, it } from "vitest";
import { measureCost } from "../bench/cost.ts";
import { startForeignServer } from "../helpers/foreign-openai.ts";

/**
 * Another server keeps its prefix cache between the cost benchmark's layouts: run after the online layout, the
 * batch layout found the online prompts cached and met its target by that alone. Each layout must start cold,
 * as it does on the simulator (a fresh one per layout).
 */
describe("the cost benchmark's layouts against another server", () => {
  it("do not find each other's prompts in the server's prefix cache", { timeout: 180_000 }, async () => {
    const run = async (layouts: ("online" | "batch")[]) => {
      const server = await startForeignServer({ apiKey: "sk-cold-cache-bench" });
      try {
        return await measureCost({
          samples: 3,
          rounds: 1,
          layouts,
          batchPollMs: { min: 20, max: 200 },
          endpoint: { baseURL: server.url, apiKey: "sk-cold-cache-bench" },
          say: () => {},
        });
      } finally {
        await server.close();
      }
    };
    const alone = await run(["batch"]);
    const afterOnline = await run(["online", "batch"]);
    expect(alone.batch?.cachedTokens).toBeGreaterThan(0);
    // Equal but for the order the server ran the lines in.
    expect(afterOnline.batch?.cachedTokens ?? 0).toBeLessThanOrEqual((alone.batch?.cachedTokens ?? 0) * 1.05);
  });
});
