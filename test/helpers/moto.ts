import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { DynamoDBClient } from "@aws-sdk/client-dynamodb";
import { S3Client } from "@aws-sdk/client-s3";
import { SecretsManagerClient } from "@aws-sdk/client-secrets-manager";
import { SQSClient } from "@aws-sdk/client-sqs";
import { DynamoDBDocumentClient } from "@aws-sdk/lib-dynamodb";
import { repoRoot } from "./files.ts";

/** Fake credentials: moto accepts any, and nothing here may ever reach real AWS. */
export const motoClientConfig = (endpoint: string) => ({
  endpoint,
  region: "us-east-1",
  credentials: { accessKeyId: "test", secretAccessKey: "test" },
});

const INSTALL_HINT = "sudo bash scripts/install-emulator.sh";

let started: Promise<{ endpoint: string }> | undefined;

/**
 * A running moto server: the one at AWS_ENDPOINT_URL when it answers (CI starts one), else one this process
 * starts with scripts/start-moto.sh on a free port and stops when it exits. Fails loudly when moto is not
 * installed: these tests are never skipped silently.
 */
export function ensureMoto(): Promise<{ endpoint: string }> {
  started ??= locate();
  return started;
}

async function locate(): Promise<{ endpoint: string }> {
  const configured = process.env.AWS_ENDPOINT_URL;
  if (configured !== undefined && configured !== "" && (await reachable(configured))) {
    return { endpoint: configured.replace(/\/$/, "") };
  }
  const port = await freePort();
  const pid = await startMoto(port);
  const endpoint = `http://127.0.0.1:${port}`;
  if (!(await reachable(endpoint))) {
    throw new Error(
      `moto (pid ${pid}) started on ${endpoint} but does not answer; see /tmp/moto-${port}.log`,
    );
  }
  return { endpoint };
}

/**
 * Runs start-moto.sh under a small bash guard that kills moto when this process's pipe closes, so the server
 * goes away even when the test worker is killed without running exit handlers.
 */
function startMoto(port: number): Promise<number> {
  const script = join(repoRoot, "scripts/start-moto.sh");
  const guard = `pid=$(bash "$1" "$2") || exit $?; echo "$pid"; read -r _ || true; kill "$pid" 2>/dev/null`;
  const child: ChildProcess = spawn("bash", ["-c", guard, "guard", script, String(port)], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => {
      const hint = code === 2 ? `moto is not installed: run \`${INSTALL_HINT}\`` : `exit code ${code}`;
      reject(new Error(`could not start moto (${hint})\n${stderr}`));
    });
    const poll = setInterval(() => {
      const pid = Number.parseInt(stdout.trim(), 10);
      if (!stdout.includes("\n") || !Number.isInteger(pid)) return;
      clearInterval(poll);
      process.once("exit", () => {
        try {
          process.kill(pid);
        } catch {
          // already gone
        }
      });
      // The guard must not keep the test process alive; its stdin pipe stays open until we exit.
      child.unref();
      for (const stream of [child.stdin, child.stdout, child.stderr]) {
        if (stream !== null && "unref" in stream && typeof stream.unref === "function") stream.unref();
      }
      resolve(pid);
    }, 20);
    child.once("exit", () => clearInterval(poll));
  });
}

async function reachable(endpoint: string): Promise<boolean> {
  try {
    const response = await fetch(`${endpoint.replace(/\/$/, "")}/moto-api/`, {
      signal: AbortSignal.timeout(2_000),
    });
    return response.ok;
  } catch {
    return false;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error("no free port"))));
    });
  });
}

/** Wipes every resource on the server: only for a moto this process owns, since test files share CI's. */
export async function resetMoto(endpoint: string): Promise<void> {
  const response = await fetch(`${endpoint}/moto-api/reset`, { method: "POST" });
  if (!response.ok) throw new Error(`moto reset failed: ${response.status}`);
}

/** A name no other test file (or run against the same server) uses. */
export const uniqueName = (prefix: string): string =>
  `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;

export const s3Client = (endpoint: string): S3Client =>
  new S3Client({ ...motoClientConfig(endpoint), forcePathStyle: true });
export const sqsClient = (endpoint: string): SQSClient => new SQSClient(motoClientConfig(endpoint));
export const dynamoClient = (endpoint: string): DynamoDBClient =>
  new DynamoDBClient(motoClientConfig(endpoint));
export const documentClient = (client: DynamoDBClient): DynamoDBDocumentClient =>
  DynamoDBDocumentClient.from(client, { marshallOptions: { removeUndefinedValues: true } });
export const secretsClient = (endpoint: string): SecretsManagerClient =>
  new SecretsManagerClient(motoClientConfig(endpoint));
