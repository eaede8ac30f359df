import { join } from "node:path";
import { pathToFileURL } from "node:url";

/**
 * Imports a bundled function from its cdk.out asset, as Lambda does from `Handler` ("index.handler"), and
 * returns it as a plain async call.
 */
export async function loadBundledHandler(
  asset: string,
  handlerSpec: string,
): Promise<(event: unknown, context: unknown) => Promise<unknown>> {
  const [file = "index", exportName = "handler"] = handlerSpec.split(".");
  const loaded: unknown = await import(pathToFileURL(join(asset, `${file}.mjs`)).href);
  const exported: unknown =
    typeof loaded === "object" && loaded !== null ? Reflect.get(loaded, exportName) : undefined;
  if (typeof exported !== "function")
    throw new Error(`${asset}/${file}.mjs exports no function ${exportName}`);
  return async (event, context) => Reflect.apply(exported, undefined, [event, context]);
}
