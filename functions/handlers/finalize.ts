import { FinalizeMessage } from "../ports/messages.ts";
import { makeSqsHandler } from "../runtime/lambda.ts";

export const handler = makeSqsHandler("finalize", (record) => [
  FinalizeMessage.parse(JSON.parse(record.body)),
]);
