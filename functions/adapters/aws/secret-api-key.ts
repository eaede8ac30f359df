import { getSecret, type SecretsProvider } from "@aws-lambda-powertools/parameters/secrets";
import { z } from "zod";
import { MmevolError } from "../../ports/errors.ts";

/** The API key could not be read. Messages name the secret, never its value. */
export class SecretError extends MmevolError {}

/** Seconds a fetched secret is reused: warm invocations skip Secrets Manager, a rotation shows within minutes. */
const MAX_AGE_SECONDS = 300;

const KeyObject = z.object({
  apiKey: z.string().optional(),
  OPENAI_API_KEY: z.string().optional(),
});

export interface ReadApiKeyOptions {
  /** A provider with its own client (tests, emulators); by default Powertools' shared one, cached across invocations. */
  readonly provider?: SecretsProvider;
}

/**
 * Reads the OpenAI API key from Secrets Manager: a plain string secret, or JSON `{"apiKey": ...}` /
 * `{"OPENAI_API_KEY": ...}`. A missing or empty secret is a permanent error.
 */
export async function readApiKey(secretId: string, options: ReadApiKeyOptions = {}): Promise<string> {
  let value: unknown;
  try {
    value =
      options.provider === undefined
        ? await getSecret(secretId, { maxAge: MAX_AGE_SECONDS })
        : await options.provider.get(secretId, { maxAge: MAX_AGE_SECONDS });
  } catch (error) {
    // The SDK error (the cause) names the secret and the failure, never the value.
    const missing = errorNames(error).some((name) => name === "ResourceNotFoundException");
    throw new SecretError(
      missing
        ? `secret ${secretId} does not exist`
        : `could not read secret ${secretId}: ${errorMessage(error)}`,
      { retryable: !missing && !errorNames(error).includes("AccessDeniedException"), cause: error },
    );
  }
  const text = value instanceof Uint8Array ? new TextDecoder().decode(value) : value;
  if (typeof text !== "string" || text.trim() === "") {
    throw new SecretError(`secret ${secretId} is empty`, { retryable: false });
  }
  const key = text.trim().startsWith("{") ? keyFromJson(secretId, text) : text.trim();
  if (key === "") throw new SecretError(`secret ${secretId} holds an empty API key`, { retryable: false });
  return key;
}

function keyFromJson(secretId: string, text: string): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    // No cause: JSON.parse quotes the text it failed on, which is the secret.
    throw new SecretError(`secret ${secretId} looks like JSON but does not parse`, { retryable: false });
  }
  const result = KeyObject.safeParse(parsed);
  const key = result.success ? (result.data.apiKey ?? result.data.OPENAI_API_KEY) : undefined;
  if (key === undefined) {
    throw new SecretError(`secret ${secretId} has no string "apiKey" or "OPENAI_API_KEY" field`, {
      retryable: false,
    });
  }
  return key.trim();
}

/** Names of the error and its causes, to see through Powertools' GetParameterError to the SDK's. */
function errorNames(error: unknown): string[] {
  const names: string[] = [];
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current instanceof Error; depth += 1) {
    names.push(current.name);
    current = current.cause;
  }
  return names;
}

const errorMessage = (error: unknown): string => (error instanceof Error ? error.message : String(error));
