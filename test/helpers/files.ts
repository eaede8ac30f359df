import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = fileURLToPath(new URL("../..", import.meta.url));
export const demoShard = join(repoRoot, "examples/seeds/demo.jsonl");

/** A fresh temp directory, removed by the returned cleanup. */
export function tempDir(prefix = "mmevol-test-"): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

export function readJsonl(path: string): Record<string, unknown>[] {
  const text = readFileSync(path, "utf8");
  return text
    .split("\n")
    .filter((line) => line.trim().length > 0)
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

export function readJson(path: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
}

export const countLines = (path: string): number =>
  readFileSync(path, "utf8")
    .split("\n")
    .filter((line) => line.trim().length > 0).length;
