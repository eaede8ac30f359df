import { SecretsProvider } from "@aws-lambda-powertools/parameters/secrets";
import { CreateSecretCommand, PutSecretValueCommand } from "@aws-sdk/client-secrets-manager";
import { describe, expect, it } from "vitest";
import { readApiKey, SecretError } from "../../functions/adapters/aws/secret-api-key.ts";
import { ensureMoto, motoClientConfig, secretsClient, uniqueName } from "../helpers/moto.ts";

const { endpoint } = await ensureMoto();
const client = secretsClient(endpoint);
// A fresh provider per test: the cache lives in the provider.
const provider = () => new SecretsProvider({ clientConfig: motoClientConfig(endpoint) });

const createSecret = async (value: string): Promise<string> => {
  const name = uniqueName("openai");
  await client.send(new CreateSecretCommand({ Name: name, SecretString: value }));
  return name;
};

/** The error a read throws; fails the test when it does not throw. */
async function failure(promise: Promise<unknown>): Promise<SecretError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof SecretError) return error;
    throw error;
  }
  throw new Error("expected a SecretError");
}

describe("readApiKey", () => {
  it("reads a plain string secret, trimmed", async () => {
    const name = await createSecret("  sk-plain-123\n");
    expect(await readApiKey(name, { provider: provider() })).toBe("sk-plain-123");
  });

  it("reads the key from a JSON secret under apiKey or OPENAI_API_KEY", async () => {
    const a = await createSecret(JSON.stringify({ apiKey: "sk-json-a", other: 1 }));
    const b = await createSecret(JSON.stringify({ OPENAI_API_KEY: "sk-json-b" }));
    expect(await readApiKey(a, { provider: provider() })).toBe("sk-json-a");
    expect(await readApiKey(b, { provider: provider() })).toBe("sk-json-b");
  });

  it("caches the value for a while, so warm invocations skip Secrets Manager", async () => {
    const name = await createSecret("sk-first");
    const cached = provider();
    expect(await readApiKey(name, { provider: cached })).toBe("sk-first");
    await client.send(new PutSecretValueCommand({ SecretId: name, SecretString: "sk-rotated" }));
    expect(await readApiKey(name, { provider: cached })).toBe("sk-first");
    expect(await readApiKey(name, { provider: provider() })).toBe("sk-rotated");
  });

  it("fails permanently and clearly on a missing secret", async () => {
    const error = await failure(readApiKey("does-not-exist", { provider: provider() }));
    expect(error.message).toContain("does-not-exist does not exist");
    expect(error.retryable).toBe(false);
  });

  it("fails permanently on an unusable secret without ever quoting it", async () => {
    const cases = [
      "{not json sk-leak-1",
      JSON.stringify({ key: "sk-leak-2" }),
      JSON.stringify({ apiKey: "  " }),
    ];
    for (const value of cases) {
      const name = await createSecret(value);
      const error = await failure(readApiKey(name, { provider: provider() }));
      expect(error.retryable).toBe(false);
      expect(error.message).toContain(name);
      expect(error.message).not.toMatch(/sk-leak/);
      expect(String(error.cause ?? "")).not.toMatch(/sk-leak/);
    }
  });

  it("reads through Powertools' default provider when the environment points at the endpoint", async () => {
    const name = await createSecret("sk-default");
    const saved = { ...process.env };
    Object.assign(process.env, {
      AWS_ENDPOINT_URL: endpoint,
      AWS_REGION: "us-east-1",
      AWS_ACCESS_KEY_ID: "test",
      AWS_SECRET_ACCESS_KEY: "test",
    });
    try {
      expect(await readApiKey(name)).toBe("sk-default");
    } finally {
      process.env = saved;
    }
  });
});
