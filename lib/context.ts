import { z } from "zod";
import { DirectionWeights } from "../functions/evolution/config.ts";
import { MmevolError } from "../functions/ports/errors.ts";
import type { MmevolStackProps } from "./mmevol-stack.ts";

/** `-c key=value` arrives as a string; cdk.json context may hold real JSON values. Accept both. */
const fromJsonText = <T extends z.ZodType>(schema: T) =>
  z.preprocess((value) => {
    if (typeof value !== "string") return value;
    try {
      const parsed: unknown = JSON.parse(value);
      return parsed;
    } catch {
      return value;
    }
  }, schema);

const positiveInteger = z.coerce.number().int().positive();

/** The stack settings a user may pass as CDK context (`-c model=gpt-4o-mini -c tokensPerMinute=2000000`). */
export const StackContext = z.strictObject({
  stackName: z
    .string()
    .regex(/^[A-Za-z][A-Za-z0-9-]*$/, "letters, digits and '-'")
    .default("Mmevol"),
  model: z.string().min(1).optional(),
  baseUrl: z.url().optional(),
  rounds: z.coerce.number().int().min(1).max(10).optional(),
  weights: fromJsonText(DirectionWeights).optional(),
  seed: z.coerce.number().int().optional(),
  mode: z.enum(["online", "batch"]).optional(),
  tokensPerMinute: positiveInteger.optional(),
  requestsPerMinute: positiveInteger.optional(),
  evolveBatchSize: z.coerce.number().int().min(1).max(10).optional(),
  judgeBatchSize: z.coerce.number().int().min(1).max(10).optional(),
});
export type StackContext = z.infer<typeof StackContext>;

export const CONTEXT_KEYS = Object.keys(StackContext.shape);

/** A stack setting (CDK context value or prop) that cannot work; fails the synth, so it is never retryable. */
export class StackSettingsError extends MmevolError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { retryable: false, ...options });
  }
}

/** Names every problem of a failed parse in one line, as `-c key: message` for the CLI or `key: message`. */
export function describeIssues(error: z.ZodError, prefix = ""): string {
  return error.issues.map((i) => `${prefix}${i.path.join(".") || "(value)"}: ${i.message}`).join("; ");
}

/**
 * Reads the stack settings through `tryGetContext`, validates them, and names every bad value in one message.
 * Only known keys are read, so CDK's own feature-flag context never reaches the schema.
 */
export function readStackContext(tryGetContext: (key: string) => unknown): {
  stackName: string;
  props: MmevolStackProps;
} {
  const raw: Record<string, unknown> = {};
  for (const key of CONTEXT_KEYS) {
    const value = tryGetContext(key);
    if (value !== undefined) raw[key] = value;
  }
  const result = StackContext.safeParse(raw);
  if (!result.success) {
    throw new StackSettingsError(`invalid stack context: ${describeIssues(result.error, "-c ")}`, {
      cause: result.error,
    });
  }
  const { stackName, model, baseUrl, rounds, weights, seed, mode, ...rest } = result.data;
  const { tokensPerMinute, requestsPerMinute, evolveBatchSize, judgeBatchSize } = rest;
  // exactOptionalPropertyTypes: absent settings must be left out, not set to undefined.
  const props: MmevolStackProps = {
    ...(model === undefined ? {} : { model }),
    ...(baseUrl === undefined ? {} : { baseUrl }),
    ...(rounds === undefined ? {} : { rounds }),
    ...(weights === undefined ? {} : { weights }),
    ...(seed === undefined ? {} : { seed }),
    ...(mode === undefined ? {} : { mode }),
    ...(tokensPerMinute === undefined ? {} : { tokensPerMinute }),
    ...(requestsPerMinute === undefined ? {} : { requestsPerMinute }),
    ...(evolveBatchSize === undefined ? {} : { evolveBatchSize }),
    ...(judgeBatchSize === undefined ? {} : { judgeBatchSize }),
  };
  return { stackName, props };
}
