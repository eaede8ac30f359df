import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

/**
 * Imports a bundled function from its cdk.out asset, as Lambda does from `Handler` ("index.handler"), and
 * returns it as a plain async call.
 *
 * Off by default, for benchmarks: when EMU_INVOCATIONS_FILE is set, the import (`{ function, initMs }`) and
 * every invocation (`{ function, start, ms, records }`) are appended to that file as JSON lines, and the
 * process's AWS SDK clients tag their requests with the function's name (`app/<EMU_NAME>` in the user agent,
 * through AWS_SDK_UA_APP_ID), so a proxy in front of the emulator can tell the functions apart.
 */
export async function loadBundledHandler(
  asset: string,
  handlerSpec: string,
): Promise<(event: unknown, context: unknown) => Promise<unknown>> {
  const invocationsFile = process.env.EMU_INVOCATIONS_FILE;
  const name = process.env.EMU_NAME ?? "function";
  if (invocationsFile) process.env.AWS_SDK_UA_APP_ID ??= name;
  const loadStarted = performance.now();
  const [file = "index", exportName = "handler"] = handlerSpec.split(".");
  const loaded: unknown = await import(pathToFileURL(join(asset, `${file}.mjs`)).href);
  const exported: unknown =
    typeof loaded === "object" && loaded !== null ? Reflect.get(loaded, exportName) : undefined;
  if (typeof exported !== "function")
    throw new Error(`${asset}/${file}.mjs exports no function ${exportName}`);
  if (!invocationsFile) return async (event, context) => Reflect.apply(exported, undefined, [event, context]);
  const note = (fields: Record<string, unknown>) =>
    appendFileSync(invocationsFile, `${JSON.stringify({ function: name, ...fields })}\n`);
  note({ initMs: Math.ceil(performance.now() - loadStarted) });
  return async (event, context) => {
    const start = Date.now();
    const started = performance.now();
    try {
      return await Reflect.apply(exported, undefined, [event, context]);
    } finally {
      const records =
        typeof event === "object" && event !== null && "Records" in event && Array.isArray(event.Records)
          ? event.Records.length
          : 0;
      note({ start, ms: performance.now() - started, records });
    }
  };
}
