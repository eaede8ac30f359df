import { describe, expect, it } from "vitest";
import { budgetDelaySeconds, perKey, retryDelaySeconds } from "../../functions/runtime/lambda.ts";

describe("budgetDelaySeconds: how long a message with no rate budget stays away", () => {
  it("doubles with every look that found no budget, jittered between half and all of it, up to 30 s", () => {
    const most = () => 0.999_999;
    const least = () => 0;
    expect([0, 1, 2, 3, 4, 5, 6, 10].map((waits) => budgetDelaySeconds(waits, 100, most))).toEqual([
      1, 2, 4, 8, 16, 30, 30, 30,
    ]);
    expect([0, 1, 2, 3, 4, 5].map((waits) => budgetDelaySeconds(waits, 100, least))).toEqual([
      1, 1, 2, 4, 8, 15,
    ]);
  });

  it("never comes back before the budget's own wait, and never later than 30 s", () => {
    expect(budgetDelaySeconds(0, 12_300, () => 0)).toBe(13);
    expect(budgetDelaySeconds(0, 600_000, () => 0)).toBe(30);
    expect(budgetDelaySeconds(0, null, () => 0)).toBe(1);
  });
});

describe("retryDelaySeconds: how long a message that failed with a retryable error stays away", () => {
  it("outlasts a provider's outage of minutes over the default 5 attempts, up to SQS's 900 s", () => {
    expect([1, 2, 3, 4].map((attempt) => retryDelaySeconds(attempt, null))).toEqual([30, 60, 120, 240]);
    expect(retryDelaySeconds(10, null)).toBe(900);
  });

  it("takes the provider's retry-after when it gave one", () => {
    expect(retryDelaySeconds(3, 1_500)).toBe(2);
    expect(retryDelaySeconds(1, 0)).toBe(1);
    expect(retryDelaySeconds(1, 3_600_000)).toBe(900);
  });
});

describe("perKey: the OpenAI clients of a warm Lambda container", () => {
  it("are built once per key, and anew once the secret holds another (a rotated key reaches warm containers)", async () => {
    let key = "sk-old";
    const built: string[] = [];
    const client = perKey(
      async () => ({ apiKey: key }),
      (endpoint) => {
        built.push(endpoint.apiKey);
        return { key: endpoint.apiKey };
      },
    );
    expect(await client()).toEqual({ key: "sk-old" });
    expect(await client()).toBe(await client());
    key = "sk-new";
    expect(await client()).toEqual({ key: "sk-new" });
    expect(built).toEqual(["sk-old", "sk-new"]);
  });
});
