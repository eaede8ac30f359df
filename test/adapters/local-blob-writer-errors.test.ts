import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";

const base = mkdtempSync(path.join(os.tmpdir(), "mmevol-writer-errors-"));
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe("FsBlobStore.writer when its directory cannot be made", () => {
  it("closes an empty object with the directory's error, as a non-empty one and put do", async () => {
    const root = path.join(base, "root");
    const store = new FsBlobStore(root);
    // A file where the key's directory would be: mkdir fails (EEXIST), so no temp file is ever opened.
    await store.put("errors", "a file\n");
    const put = await store.put("errors/r1/s1.jsonl", "").catch((error: unknown) => error);
    expect(String(put)).toMatch(/EEXIST|ENOTDIR/);

    const full = store.writer("errors/r1/full.jsonl");
    await full.write("x\n");
    const fullError = await full.close().catch((error: unknown) => error);
    expect(String(fullError)).toContain("mkdir");

    // An errors file is empty for most shards: its close must say why too, not name a temp file never made.
    const empty = store.writer("errors/r1/empty.jsonl");
    const emptyError = await empty.close().catch((error: unknown) => error);
    expect(String(emptyError)).toContain("mkdir");
    expect(String(emptyError)).not.toContain(".mmevol-tmp-");
    expect(readdirSync(root)).toEqual(["errors"]);
  });
});
