import { availableParallelism } from "node:os";
import { defineConfig } from "vitest/config";
import { SummaryReporter } from "./test/helpers/summary-reporter.ts";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // At least two files at a time: most of the long ones (the emulated stack, the foreign server) wait on
    // subprocesses and timers, not on this CPU. Vitest's default, one less than the cores, ran them one by
    // one on the 2-core CI machine: 866 s of tests, against 538-579 s with two.
    maxWorkers: Math.max(2, availableParallelism() - 1),
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["default", new SummaryReporter()],
  },
});
