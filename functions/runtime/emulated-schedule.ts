// One scheduled Lambda function of the synthesized stack (an EventBridge rule's target), run in this process:
// the emulator has no EventBridge, so the bundled handler is invoked with a scheduled event every
// EMU_EVERY_SECONDS instead of the rule's rate. One invocation at a time, like a rate rule with a short
// function.
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { loadBundledHandler } from "./emulated-handler.ts";

const Settings = z.object({
  EMU_NAME: z.string(),
  EMU_ASSET: z.string(),
  EMU_HANDLER: z.string().regex(/^[\w-]+\.[\w$]+$/),
  EMU_EVERY_SECONDS: z.coerce.number().positive(),
  EMU_TIMEOUT_SECONDS: z.coerce.number().int().min(1),
  AWS_REGION: z.string().default("us-east-1"),
});
const settings = Settings.parse(process.env);
const handler = await loadBundledHandler(settings.EMU_ASSET, settings.EMU_HANDLER);

let stopping = false;
const stop = () => {
  stopping = true;
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
const say = (line: string) => process.stdout.write(`[${settings.EMU_NAME}] ${line}\n`);

say(`invoking every ${settings.EMU_EVERY_SECONDS} s (EventBridge schedule, emulated)`);
while (!stopping) {
  await sleep(settings.EMU_EVERY_SECONDS * 1000);
  if (stopping) break;
  const started = Date.now();
  const event = {
    version: "0",
    id: crypto.randomUUID(),
    "detail-type": "Scheduled Event",
    source: "aws.events",
    account: "123456789012",
    time: new Date().toISOString(),
    region: settings.AWS_REGION,
    resources: [],
    detail: {},
  };
  const context = {
    functionName: settings.EMU_NAME,
    awsRequestId: crypto.randomUUID(),
    getRemainingTimeInMillis: () => Math.max(0, started + settings.EMU_TIMEOUT_SECONDS * 1000 - Date.now()),
  };
  try {
    const result = await handler(event, context);
    say(`invocation done (${Date.now() - started} ms): ${JSON.stringify(result ?? null)}`);
  } catch (error) {
    say(`invocation failed: ${error instanceof Error ? error.message : String(error)}`);
  }
}
