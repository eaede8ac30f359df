import { z } from "zod";

/** The `counts` of a shard report (functions/evolution/report.ts), as tests read them back from disk or S3. */
export const ReportCounts = z.object({
  lines: z.number(),
  evolved: z.number(),
  passedThrough: z.number(),
  failed: z.number(),
  rejected: z.number(),
  addsUp: z.boolean(),
});
export type ReportCounts = z.infer<typeof ReportCounts>;
