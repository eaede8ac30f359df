import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const FIXTURES = join(REPO, "test/fixtures/lint/functions/evolution");
const BIOME = join(REPO, "node_modules/@biomejs/biome/bin/biome");

const Report = z.object({
  summary: z.object({ errors: z.number() }),
  diagnostics: z.array(
    z.object({
      category: z.string().optional(),
      message: z.string(),
      location: z.object({ path: z.string().nullish() }).optional(),
    }),
  ),
});
type Report = z.infer<typeof Report>;

let dir = "";
let report: Report;

/** Copies the repo's Biome config and the probes into a scratch project, so nothing is ever written to functions/. */
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mmevol-purity-lint-"));
  const config: unknown = JSON.parse(readFileSync(join(REPO, "biome.json"), "utf8"));
  const { $schema: _schema, ...rest } = z.record(z.string(), z.unknown()).parse(config);
  writeFileSync(join(dir, "biome.json"), JSON.stringify(rest));
  for (const folder of ["evolution", "pipeline", "handlers", "adapters"]) {
    mkdirSync(join(dir, "functions", folder), { recursive: true });
    for (const file of ["bad.ts", "more-bad.ts", "good.ts"]) {
      cpSync(join(FIXTURES, file), join(dir, "functions", folder, file));
    }
  }
  const run = spawnSync(
    process.execPath,
    [BIOME, "lint", `--config-path=${dir}`, "--reporter=json", "--max-diagnostics=none", "functions"],
    { cwd: dir, encoding: "utf8", timeout: 30_000 },
  );
  const line = run.stdout.split("\n").find((l) => l.startsWith("{"));
  if (line === undefined) throw new Error(`biome printed no JSON report:\n${run.stdout}\n${run.stderr}`);
  report = Report.parse(JSON.parse(line));
});

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const restricted = (path: string): string[] =>
  report.diagnostics
    .filter((d) => d.category === "lint/style/noRestrictedImports" && d.location?.path === path)
    .map((d) => d.message);

describe("purity lint (biome noRestrictedImports)", () => {
  for (const folder of ["evolution", "pipeline"]) {
    it(`refuses node:fs, openai and @aws-sdk/* in functions/${folder}`, () => {
      const messages = restricted(`functions/${folder}/bad.ts`);
      expect(messages).toHaveLength(3);
      expect(messages).toContain("no file I/O here: use the BlobStore port");
      expect(messages).toContain("evolution/ and pipeline/ are pure: use the Llm port");
      expect(messages).toContain("evolution/ and pipeline/ are pure: no AWS SDK");
    });

    it(`refuses node:fs/promises, node:sqlite and sharp in functions/${folder}`, () => {
      const messages = restricted(`functions/${folder}/more-bad.ts`);
      expect(messages).toHaveLength(3);
      expect(messages).toContain("no SDK or fs subpaths here");
      expect(messages).toContain("state lives behind the StateStore port");
      expect(messages).toContain("image work belongs to an adapter");
    });

    it(`lets pure imports through in functions/${folder}`, () => {
      expect(restricted(`functions/${folder}/good.ts`)).toEqual([]);
    });
  }

  for (const folder of ["handlers", "adapters"]) {
    it(`does not restrict functions/${folder}`, () => {
      expect(restricted(`functions/${folder}/bad.ts`)).toEqual([]);
      expect(restricted(`functions/${folder}/more-bad.ts`)).toEqual([]);
    });
  }

  it("reports nothing but the restricted imports", () => {
    expect(report.summary.errors).toBe(12);
    expect(report.diagnostics.every((d) => d.category === "lint/style/noRestrictedImports")).toBe(true);
  });
});
