import { InvalidArgumentError } from "commander";

/** A commander argument parser for a whole number of at least 1. */
export const positiveInt = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a whole number of at least 1");
  return n;
};

/** The most calls a numeric `--concurrency` may keep in flight: each is a worker polling the queues. */
export const MAX_CONCURRENCY = 1000;

/** `--concurrency`: "auto" or a whole number from 1 to MAX_CONCURRENCY. */
export const concurrencyArg = (value: string): number | "auto" => {
  if (value === "auto") return "auto";
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_CONCURRENCY)
    throw new InvalidArgumentError(`expected "auto" or a whole number from 1 to ${MAX_CONCURRENCY}`);
  return n;
};

/** The longest timer Node keeps (2^31 - 1 ms): a longer one fires at once, and every call would time out. */
const MAX_TIMEOUT_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

/** `--timeout`: seconds, a whole number from 1 to MAX_TIMEOUT_SECONDS (about 24 days). */
export const timeoutSeconds = (value: string): number => {
  const n = positiveInt(value);
  if (n > MAX_TIMEOUT_SECONDS)
    throw new InvalidArgumentError(`expected at most ${MAX_TIMEOUT_SECONDS} seconds`);
  return n;
};
