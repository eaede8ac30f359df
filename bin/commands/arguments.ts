import { InvalidArgumentError } from "commander";

/** A commander argument parser for a whole number of at least 1. */
export const positiveInt = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError("expected a whole number of at least 1");
  return n;
};

/** `--concurrency`: "auto" or a whole number of at least 1. */
export const concurrencyArg = (value: string): number | "auto" => {
  if (value === "auto") return "auto";
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1)
    throw new InvalidArgumentError('expected "auto" or a whole number of at least 1');
  return n;
};
