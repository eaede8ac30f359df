import { EvolveMessage } from "../ports/messages.ts";
import { makeSqsHandler } from "../runtime/lambda.ts";

export const handler = makeSqsHandler("evolve", (record) => [EvolveMessage.parse(JSON.parse(record.body))]);
