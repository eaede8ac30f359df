import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { processAlive } from "../../functions/runtime/run-lock.ts";
import { repoRoot } from "./files.ts";

function sourceDigest(): string {
  const hash = createHash("sha256");
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else hash.update(path).update(readFileSync(path));
    }
  };
  for (const dir of ["functions", "lib"]) walk(join(repoRoot, dir));
  for (const file of ["bin/app.ts", "cdk.json", "package-lock.json"])
    hash.update(readFileSync(join(repoRoot, file)));
  return hash.digest("hex").slice(0, 16);
}

/** The lock's builder has exited. A lock without a pid yet is being taken right now: not gone. */
function lockOwnerGone(lock: string): boolean {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(join(lock, "pid"), "utf8"), 10);
  } catch {
    return false;
  }
  return Number.isInteger(pid) && pid > 0 && !processAlive(pid);
}

/**
 * Synthesizes the stack with bundled assets once per source version, shared by every end-to-end test file
 * (they run in parallel: the first to take the lock builds, the others wait). The assembly sits inside the
 * repository so the bundles resolve the external @aws-sdk/* from its node_modules.
 */
export async function synthOnce(): Promise<string> {
  const cache = join(repoRoot, ".cdk-e2e-cache");
  mkdirSync(cache, { recursive: true });
  const target = join(cache, sourceDigest());
  const lock = `${target}.lock`;
  for (;;) {
    if (existsSync(join(target, "manifest.json"))) return target;
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, "pid"), String(process.pid));
      break;
    } catch {
      // A lock left by a test process that was killed (Ctrl-C) would make every later run wait forever.
      if (lockOwnerGone(lock)) rmSync(lock, { recursive: true, force: true });
      else await new Promise((r) => setTimeout(r, 500));
    }
  }
  try {
    if (existsSync(join(target, "manifest.json"))) return target;
    const building = `${target}.building`;
    rmSync(building, { recursive: true, force: true });
    const code = await new Promise<number | null>((resolve) =>
      spawn("npx", ["cdk", "synth", "-q", "--no-notices", "-o", building], {
        cwd: repoRoot,
        stdio: ["ignore", "ignore", "inherit"],
        env: { ...process.env, CDK_DISABLE_CLI_TELEMETRY: "true" },
      }).on("exit", resolve),
    );
    if (code !== 0) throw new Error(`cdk synth exited with ${code}`);
    renameSync(building, target);
    // Assemblies of older sources are dead weight (tens of MB each): keep only this one.
    for (const name of readdirSync(cache)) {
      const path = join(cache, name);
      if (path !== target && !name.endsWith(".lock") && !name.endsWith(".building")) {
        rmSync(path, { recursive: true, force: true });
      }
    }
    return target;
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}
