import { describe, expect, it } from "vitest";

describe("the toolchain", () => {
  it("runs on Node 24, the Lambda runtime we target (through the node@24 dev dependency)", () => {
    expect(process.version).toMatch(/^v24\./);
  });
});
