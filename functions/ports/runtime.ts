export interface Clock {
  now(): number;
}

export type LogFields = Readonly<Record<string, unknown>>;

/** Structured logging; never pass secrets or whole prompts. */
export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

export const systemClock: Clock = { now: () => Date.now() };

export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
};
