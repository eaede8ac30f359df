import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { ENV } from "../../functions/runtime/env.ts";
import { type Synthesized, synthesize } from "./synth.ts";

const GetAtt = z.object({ "Fn::GetAtt": z.tuple([z.string(), z.string()]) });
const Ref = z.object({ Ref: z.string() });
const LambdaFunction = z.object({
  Properties: z.object({
    Role: GetAtt,
    Environment: z.object({ Variables: z.record(z.string(), z.unknown()) }),
  }),
});
const Rule = z.object({
  Properties: z.object({
    ScheduleExpression: z.string(),
    State: z.string().optional(),
    Targets: z.array(z.object({ Arn: GetAtt })),
  }),
});
const Statement = z.object({
  Effect: z.string(),
  Action: z.union([z.string(), z.array(z.string())]),
  Resource: z.unknown(),
});
const Policy = z.object({
  Properties: z.object({
    PolicyDocument: z.object({ Statement: z.array(Statement) }),
    Roles: z.array(Ref),
  }),
});
const Permission = z.object({
  Properties: z.object({
    Action: z.string(),
    FunctionName: GetAtt,
    Principal: z.string(),
    SourceArn: GetAtt,
  }),
});

describe("the sweeper in the stack", () => {
  let synth: Synthesized;
  let sweeperId: string;
  let statements: z.infer<typeof Statement>[];

  beforeAll(() => {
    synth = synthesize();
    const functions = synth.template.findResources("AWS::Lambda::Function");
    const sweepers = Object.entries(functions).filter(([, fn]) => {
      const parsed = LambdaFunction.safeParse(fn);
      return parsed.success && ENV.sweepAfterMs in parsed.data.Properties.Environment.Variables;
    });
    expect(sweepers).toHaveLength(1);
    const [id, fn] = sweepers[0] ?? ["", {}];
    sweeperId = id;
    const roleId = LambdaFunction.parse(fn).Properties.Role["Fn::GetAtt"][0];
    statements = Object.values(synth.template.findResources("AWS::IAM::Policy"))
      .map((p) => Policy.parse(p).Properties)
      .filter((p) => p.Roles.some((r) => r.Ref === roleId))
      .flatMap((p) => p.PolicyDocument.Statement);
  });
  afterAll(() => synth?.dispose());

  const actions = () => statements.flatMap((s) => (Array.isArray(s.Action) ? s.Action : [s.Action]));
  const resourcesWith = (action: string) =>
    statements
      .filter((s) => (Array.isArray(s.Action) ? s.Action : [s.Action]).includes(action))
      .flatMap((s) => (Array.isArray(s.Resource) ? s.Resource : [s.Resource]));

  it("is the target of a rule that fires every 5 minutes, and EventBridge may invoke it", () => {
    const rules = Object.values(synth.template.findResources("AWS::Events::Rule")).map((r) => Rule.parse(r));
    const targeting = rules.filter((r) =>
      r.Properties.Targets.some((t) => t.Arn["Fn::GetAtt"][0] === sweeperId),
    );
    expect(targeting).toHaveLength(1);
    expect(targeting[0]?.Properties.ScheduleExpression).toBe("rate(5 minutes)");
    expect(targeting[0]?.Properties.State ?? "ENABLED").toBe("ENABLED");
    const permissions = Object.values(synth.template.findResources("AWS::Lambda::Permission"))
      .map((p) => Permission.safeParse(p))
      .filter((p) => p.success && p.data.Properties.FunctionName["Fn::GetAtt"][0] === sweeperId);
    expect(permissions.map((p) => p.data?.Properties.Principal)).toEqual(["events.amazonaws.com"]);
  });

  it("can send to every stage queue and read and write the table, and has each queue's URL", () => {
    const queues = Object.keys(synth.template.findResources("AWS::SQS::Queue"));
    const sendTargets = resourcesWith("sqs:SendMessage").map((r) => GetAtt.parse(r)["Fn::GetAtt"][0]);
    // The four work queues; dead-letter queues are not among them.
    expect(sendTargets).toHaveLength(4);
    for (const target of sendTargets) expect(queues).toContain(target);
    expect(sendTargets.some((t) => /DeadLetter/.test(t))).toBe(false);
    for (const action of ["dynamodb:Query", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]) {
      expect(actions()).toContain(action);
    }
    const fn = LambdaFunction.parse(synth.template.findResources("AWS::Lambda::Function")[sweeperId]);
    const variables = fn.Properties.Environment.Variables;
    for (const name of [
      ENV.table,
      ENV.ingestQueueUrl,
      ENV.evolveQueueUrl,
      ENV.judgeQueueUrl,
      ENV.finalizeQueueUrl,
    ]) {
      expect(variables[name]).toBeDefined();
    }
    expect(Number(variables[ENV.sweepAfterMs])).toBeGreaterThanOrEqual(30 * 60_000);
  });

  it("cannot read the OpenAI secret, the bucket or any queue", () => {
    expect(actions().filter((a) => a.startsWith("secretsmanager:"))).toEqual([]);
    expect(actions().filter((a) => a.startsWith("s3:"))).toEqual([]);
    expect(actions()).not.toContain("sqs:ReceiveMessage");
    expect(actions()).not.toContain("sqs:DeleteMessage");
    const fn = LambdaFunction.parse(synth.template.findResources("AWS::Lambda::Function")[sweeperId]);
    expect(fn.Properties.Environment.Variables[ENV.openaiSecret]).toBeUndefined();
    expect(fn.Properties.Environment.Variables[ENV.bucket]).toBeUndefined();
  });
});
