import {
  ConditionalCheckFailedException,
  CreateTableCommand,
  DeleteTableCommand,
} from "@aws-sdk/client-dynamodb";
import { PutCommand } from "@aws-sdk/lib-dynamodb";
import { describe, expect, it } from "vitest";
import { documentClient, dynamoClient, ensureMoto, uniqueName } from "../helpers/moto.ts";

/**
 * The emulated stack keeps its state in moto's DynamoDB, and its claims and transitions are conditional
 * writes that must be atomic, as DynamoDB's are. moto checks a condition and writes in two unlocked steps;
 * scripts/moto-server.py takes DynamoDB requests in turn so that racing writes cannot both succeed.
 */
describe("moto's DynamoDB, as scripts/start-moto.sh runs it", () => {
  it("lets exactly one of two racing conditional writes to an item succeed", async () => {
    const { endpoint } = await ensureMoto();
    const raw = dynamoClient(endpoint);
    const doc = documentClient(raw);
    const table = uniqueName("race");
    await raw.send(
      new CreateTableCommand({
        TableName: table,
        BillingMode: "PAY_PER_REQUEST",
        AttributeDefinitions: [{ AttributeName: "pk", AttributeType: "S" }],
        KeySchema: [{ AttributeName: "pk", KeyType: "HASH" }],
      }),
    );
    try {
      const winners: number[] = [];
      // Unpatched, about 1 pair in 40 had two winners on this machine; 200 pairs make a miss unlikely.
      for (let key = 0; key < 200; key++) {
        const results = await Promise.allSettled(
          [0, 1, 2].map((owner) =>
            doc.send(
              new PutCommand({
                TableName: table,
                Item: { pk: `claim-${key}`, owner },
                ConditionExpression: "attribute_not_exists(pk)",
              }),
            ),
          ),
        );
        for (const result of results) {
          if (result.status === "rejected")
            expect(result.reason).toBeInstanceOf(ConditionalCheckFailedException);
        }
        winners.push(results.filter((r) => r.status === "fulfilled").length);
      }
      expect(winners.filter((n) => n !== 1)).toEqual([]);
    } finally {
      await raw.send(new DeleteTableCommand({ TableName: table }));
    }
  }, 60_000);
});
