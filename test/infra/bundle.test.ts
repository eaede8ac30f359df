import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { type Synthesized, synthesize } from "./synth.ts";

const FunctionCode = z.object({ Properties: z.object({ Code: z.object({ S3Key: z.string() }) }) });

// Real esbuild bundling and `npm ci` of sharp for linux-arm64 (no Docker): slower than the template tests.
describe("evolve bundle", () => {
  let synth: Synthesized | undefined;
  afterAll(() => synth?.dispose());

  it("holds the ESM bundle with its source map and sharp's linux-arm64 binary, not x64", () => {
    synth = synthesize({}, { bundle: true });
    const [, evolve] =
      Object.entries(synth.template.findResources("AWS::Lambda::Function")).find(([id]) =>
        id.startsWith("Evolve"),
      ) ?? [];
    const key = FunctionCode.parse(evolve).Properties.Code.S3Key;
    const assetDir = join(synth.outdir, `asset.${key.replace(/\.zip$/, "")}`);
    const files = readdirSync(assetDir);
    expect(files).toEqual(expect.arrayContaining(["index.mjs", "index.mjs.map", "node_modules"]));
    const img = readdirSync(join(assetDir, "node_modules", "@img"));
    expect(img).toContain("sharp-linux-arm64");
    expect(img.filter((name) => name.includes("x64"))).toEqual([]);
    expect(existsSync(join(assetDir, "node_modules", "sharp", "package.json"))).toBe(true);
  });
});
