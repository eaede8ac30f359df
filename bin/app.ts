import { App, Validations } from "aws-cdk-lib";
import { AwsSolutionsChecks } from "cdk-nag";
import { readStackContext, StackSettingsError } from "../lib/context.ts";
import { MmevolStack } from "../lib/mmevol-stack.ts";

const app = new App();
try {
  const { stackName, props } = readStackContext((key) => app.node.tryGetContext(key));
  new MmevolStack(app, stackName, {
    ...props,
    description: "mmevol: pay-per-use evolution of multimodal instruction datasets",
  });
  // cdk-nag 3 runs as a policy-validation plugin: an unacknowledged finding fails `cdk synth`.
  Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
} catch (error) {
  // A bad -c value is the user's to fix: say what is wrong without a stack trace.
  if (!(error instanceof StackSettingsError)) throw error;
  process.stderr.write(`mmevol: ${error.message}\n`);
  process.exit(1);
}
