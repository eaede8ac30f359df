/**
 * The single DynamoDB table's key design, shared by the stack (which creates the table) and the adapter.
 *
 * | item            | pk                    | sk             | gsi1pk  | gsi1sk        |
 * | shard           | SHARD#<run>#<shard>   | META           | SHARDS  | <run>#<shard> |
 * | sample          | SHARD#<run>#<shard>   | SAMPLE#<key>   |         |               |
 * | stored answer   | ANSWER#<hash>         | ANSWER         |         |               |
 * | rate governor   | RATE#<model>          | RATE           |         |               |
 * Stored answers expire through TTL (`expiresAt`, epoch seconds): they only need to outlive a run.
 * A rate governor item (one per model, shared by every Lambda) expires a day after its last admission, so
 * a limit or rate cut learned from the provider is forgotten once the model goes idle.
 */
export const TABLE_SCHEMA = {
  partitionKey: "pk",
  sortKey: "sk",
  gsi1: { indexName: "gsi1", partitionKey: "gsi1pk", sortKey: "gsi1sk" },
  ttlAttribute: "expiresAt",
} as const;

/** Key of the shared rate governor item of one model (see DynamoRateGovernor). */
export const RATE_GOVERNOR_KEY = { partitionKeyPrefix: "RATE#", sortKey: "RATE" } as const;
