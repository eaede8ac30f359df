/**
 * The single DynamoDB table's key design, shared by the stack (which creates the table) and the adapter.
 *
 * | item            | pk                    | sk             | gsi1pk  | gsi1sk        |
 * | shard           | SHARD#<run>#<shard>   | META           | SHARDS  | <run>#<shard> |
 * | sample          | SHARD#<run>#<shard>   | SAMPLE#<key>   |         |               |
 * | stored answer   | ANSWER#<hash>         | ANSWER         |         |               |
 * Stored answers expire through TTL (`expiresAt`, epoch seconds): they only need to outlive a run.
 */
export const TABLE_SCHEMA = {
  partitionKey: "pk",
  sortKey: "sk",
  gsi1: { indexName: "gsi1", partitionKey: "gsi1pk", sortKey: "gsi1sk" },
  ttlAttribute: "expiresAt",
} as const;
