import { JudgeMessage } from "../ports/messages.ts";
import { makeSqsHandler } from "../runtime/lambda.ts";

export const handler = makeSqsHandler("judge", (record) => [JudgeMessage.parse(JSON.parse(record.body))]);
