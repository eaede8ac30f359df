import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { App } from "aws-cdk-lib";
import { Template } from "aws-cdk-lib/assertions";
import { z } from "zod";
import { MmevolStack, type MmevolStackProps } from "../../lib/mmevol-stack.ts";

const CdkJson = z.object({ app: z.string(), context: z.record(z.string(), z.unknown()) });

/** cdk.json as the CLI reads it; the feature flags change the template, so tests synthesize with them too. */
export function readCdkJson(): z.infer<typeof CdkJson> {
  return CdkJson.parse(JSON.parse(readFileSync(new URL("../../cdk.json", import.meta.url), "utf8")));
}

export interface Synthesized {
  readonly app: App;
  readonly stack: MmevolStack;
  readonly template: Template;
  readonly outdir: string;
  /** Removes the cloud assembly directory. */
  readonly dispose: () => void;
}

/** Synthesizes the stack into a fresh temp dir; without `bundle`, esbuild and npm ci are skipped. */
export function synthesize(props: MmevolStackProps = {}, options: { bundle?: boolean } = {}): Synthesized {
  const outdir = mkdtempSync(join(tmpdir(), "mmevol-infra-"));
  const context: Record<string, unknown> = { ...readCdkJson().context };
  if (!options.bundle) context["aws:cdk:bundling-stacks"] = [];
  try {
    const app = new App({ outdir, context });
    const stack = new MmevolStack(app, "Mmevol", props);
    const template = Template.fromStack(stack);
    return { app, stack, template, outdir, dispose: () => rmSync(outdir, { recursive: true, force: true }) };
  } catch (error) {
    rmSync(outdir, { recursive: true, force: true });
    throw error;
  }
}
