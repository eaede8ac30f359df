import { Validations } from "aws-cdk-lib";
import { PolicyStatement } from "aws-cdk-lib/aws-iam";
import { AwsSolutionsChecks } from "cdk-nag";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { type Synthesized, synthesize } from "./synth.ts";

const Acknowledged = z.record(z.string(), z.string());

/** Every acknowledgement in the construct tree: rule id (as stored) -> reasons. */
function acknowledgementsOf(synth: Synthesized): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const construct of synth.stack.node.findAll()) {
    for (const entry of construct.node.metadata) {
      if (entry.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY) continue;
      for (const [id, reason] of Object.entries(Acknowledged.parse(entry.data))) {
        found.set(id, [...(found.get(id) ?? []), reason]);
      }
    }
  }
  return found;
}

describe("cdk-nag AwsSolutions", () => {
  let synth: Synthesized;
  beforeAll(() => {
    synth = synthesize();
  });
  afterAll(() => synth.dispose());

  it("has no unacknowledged findings", () => {
    const { violations } = new AwsSolutionsChecks(synth.app).validateScope(synth.stack);
    expect(
      violations.map((v) => `${v.ruleName} @ ${v.violatingResources.map((r) => r.constructPath)}`),
    ).toEqual([]);
  });

  it("acknowledges only these findings, each with a real reason", () => {
    const acks = acknowledgementsOf(synth);
    const bucket = [...acks.keys()].find((id) => id.includes("IAM5"))?.match(/<(\w+)\.Arn>/)?.[1];
    expect(bucket).toMatch(/^Data/);
    const iam5 = (prefix: string) => `Annotation::AwsSolutions-IAM5[Resource::<${bucket}.Arn>/${prefix}*]`;
    expect([...acks.keys()].sort()).toEqual(
      [
        "Annotation::AwsSolutions-SMG4",
        "Annotation::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
        iam5(""),
        iam5("seeds/"),
        iam5("work/"),
        iam5("evolved/"),
        iam5("reports/"),
        iam5("errors/"),
      ].sort(),
    );
    for (const [id, reasons] of acks) {
      for (const reason of reasons) expect(reason.length, id).toBeGreaterThan(30);
      if (id.includes("IAM5"))
        for (const reason of reasons) expect(reason).toContain("prefix-scoped object access");
    }
  });

  it("still catches a wildcard the acknowledgements do not name", () => {
    const other = synthesize();
    try {
      other.stack.functions.judge.addToRolePolicy(
        new PolicyStatement({ actions: ["s3:GetObject"], resources: ["arn:aws:s3:::elsewhere/*"] }),
      );
      other.stack.functions.evolve.addToRolePolicy(
        new PolicyStatement({ actions: ["s3:ListAllMyBuckets"], resources: ["*"] }),
      );
      const rules = new AwsSolutionsChecks(other.app)
        .validateScope(other.stack)
        .violations.map((v) => v.ruleName);
      expect(rules.sort()).toEqual(
        ["AwsSolutions-IAM5[Resource::arn:aws:s3:::elsewhere/*]", "AwsSolutions-IAM5[Resource::*]"].sort(),
      );
    } finally {
      other.dispose();
    }
  });
});
