import { z } from "zod";
import { runNode } from "./cli.ts";

/** KiB as MiB, to a tenth. */
export const mib = (kib: number): number => +(kib / 1024).toFixed(1);

/** What a measured child process prints as its last line, besides its own fields. */
export const PeakMeasure = z.object({ maxRssKiB: z.number(), rssBeforeKiB: z.number(), seconds: z.number() });
export type PeakMeasure = z.infer<typeof PeakMeasure>;

/** Runs `node <args>` and reads its last stdout line with `schema`; an error with its stderr when it failed. */
export async function measureChild<T>(args: readonly string[], schema: z.ZodType<T>): Promise<T> {
  const { code, stdout, stderr } = await runNode(args);
  if (code !== 0) throw new Error(`measured child exited with ${code}: ${stderr.trim()}`);
  const last = stdout.trim().split("\n").at(-1) ?? "";
  try {
    return schema.parse(JSON.parse(last));
  } catch (error) {
    throw new Error(`unreadable child output ${JSON.stringify(last)}: ${String(error)}`);
  }
}

/** A small and a large measurement side by side: the peaks, their ratio (large/small), times and baseline. */
export function peakPair(small: PeakMeasure, large: PeakMeasure) {
  return {
    smallPeakMiB: mib(small.maxRssKiB),
    largePeakMiB: mib(large.maxRssKiB),
    ratio: +(large.maxRssKiB / small.maxRssKiB).toFixed(3),
    smallSeconds: small.seconds,
    largeSeconds: large.seconds,
    /** RSS of a child right before the measured stage started, for scale. */
    baselineMiB: mib(Math.max(small.rssBeforeKiB, large.rssBeforeKiB)),
  };
}
