import { type Command, InvalidArgumentError, Option } from "commander";
import { MmevolError } from "../../functions/ports/errors.ts";
import type { Stage } from "../../functions/ports/messages.ts";
import { deployedRedrive, deployedRedriveFailed, localRedrive, localRedriveFailed } from "./redrive.ts";
import { deployedStatus, localStatus } from "./status.ts";

const minutes = (value: string): number => {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError("expected a number of minutes (>= 0)");
  return n;
};
const count = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError("expected a whole number (>= 0)");
  return n;
};

interface Target {
  out?: string;
  outputs?: string;
  stack?: string;
  endpoint?: string;
}

/** Exactly one of --out (a local run) and --outputs (a deployed or emulated stack). */
function target(flags: Target): { local: string } | { outputs: string } {
  if (flags.out !== undefined && flags.outputs !== undefined)
    throw new InvalidArgumentError("give --out or --outputs, not both");
  if (flags.out !== undefined) return { local: flags.out };
  if (flags.outputs !== undefined) return { outputs: flags.outputs };
  if (flags.stack !== undefined) {
    throw new InvalidArgumentError(
      "--stack needs --outputs: @aws-sdk/client-cloudformation is not installed, so the stack's outputs are read " +
        "from `cdk deploy --outputs-file outputs.json` (or the emulator's cdk.out/emulated-outputs.json)",
    );
  }
  throw new InvalidArgumentError(
    "give --out DIR (a local run) or --outputs FILE (a deployed or emulated stack)",
  );
}

async function report(work: () => Promise<{ lines: string[] }>): Promise<void> {
  try {
    const { lines } = await work();
    process.stdout.write(`${lines.join("\n")}\n`);
  } catch (error) {
    if (error instanceof MmevolError || error instanceof InvalidArgumentError) {
      process.stderr.write(`mmevol: ${error.message}\n`);
      process.exit(2);
    }
    // Network and AWS errors (an endpoint that does not answer, missing credentials): one clear line.
    const code =
      typeof error === "object" && error !== null && "code" in error ? ` (${String(error.code)})` : "";
    process.stderr.write(`mmevol: ${error instanceof Error ? error.message : String(error)}${code}\n`);
    process.exit(1);
  }
}

const TARGET_HELP = `
Targets:
  --out DIR         a local run: DIR/.mmevol/state.sqlite and DIR/.mmevol/dead-letters.jsonl
  --outputs FILE    a deployed stack: the file \`cdk deploy --outputs-file FILE\` writes, or the emulator's
                    <cdk.out>/emulated-outputs.json (it names the emulator's endpoint); --stack picks one
                    stack from a file that holds several. AWS credentials and region come from the environment.`;

/** `mmevol status` and `mmevol redrive`. */
export function registerStatusCommands(program: Command): void {
  program
    .command("status")
    .description("progress, stuck samples and dead letters of a local run or a deployed stack")
    .option("-o, --out <dir>", "output directory of a local run")
    .option("--outputs <file>", "stack outputs file (cdk deploy --outputs-file, or emulated-outputs.json)")
    .option("--stack <name>", "the stack in the outputs file")
    .option(
      "--endpoint <url>",
      "AWS endpoint (default: the outputs file's EmulatorEndpoint, else $AWS_ENDPOINT_URL)",
    )
    .option("--run <name>", "only this run")
    .option("--stuck-after <minutes>", "a sample not updated for this long counts as stuck", minutes, 30)
    .option("--peek <n>", "dead messages to show per dead-letter queue (deployed stack)", count, 3)
    .addHelpText(
      "after",
      `${TARGET_HELP}
Peeking at a dead-letter queue receives its messages with visibility 0: they stay in place, but their
receive counts go up. Use --peek 0 to only count them.`,
    )
    .action((flags: Target & { run?: string; stuckAfter: number; peek: number }) =>
      report(async () => {
        const where = target(flags);
        const common = {
          stuckAfterMs: flags.stuckAfter * 60_000,
          ...(flags.run === undefined ? {} : { run: flags.run }),
        };
        if ("local" in where) return localStatus({ out: where.local, ...common });
        return deployedStatus({
          outputs: where.outputs,
          peek: flags.peek,
          ...common,
          ...(flags.stack === undefined ? {} : { stack: flags.stack }),
          ...(flags.endpoint === undefined ? {} : { endpoint: flags.endpoint }),
        });
      }),
    );

  program
    .command("redrive")
    .description("send dead-lettered work back to be retried (a local run or a deployed stack)")
    .option("-o, --out <dir>", "output directory of a local run")
    .option("--outputs <file>", "stack outputs file (cdk deploy --outputs-file, or emulated-outputs.json)")
    .option("--stack <name>", "the stack in the outputs file")
    .option(
      "--endpoint <url>",
      "AWS endpoint (default: the outputs file's EmulatorEndpoint, else $AWS_ENDPOINT_URL)",
    )
    .addOption(
      new Option("--queue <stage>", "which dead-letter queue (deployed stack)")
        .choices(["ingest", "evolve", "judge", "finalize", "all"])
        .default("all"),
    )
    .option("--max <n>", "move at most this many messages per queue", count)
    .option(
      "--failed",
      "instead of dead letters: start the FAILED samples again from their seed (once the cause is fixed), and those passed through for an unusable image",
    )
    .option("--run <name>", "with --failed: only this run's samples")
    .addHelpText(
      "after",
      `${TARGET_HELP}
Deployed stack: moves each dead-letter queue's messages back to its stage's queue (receive, send, delete in
batches), where they start over with a fresh receive count; prints how many moved.
Local run: a local run keeps no queue once it exits; its queue is the state, and every \`mmevol run\` starts by
re-queuing all unfinished work from it. So redrive checks the last run's dead letters against the state, sets
the list aside (.mmevol/dead-letters.<time>.redriven.jsonl) and tells you to run the same \`mmevol run\` again,
which retries them with fresh delivery counts. Fix the cause first (see \`mmevol status --out DIR\`).

With --failed: every FAILED sample (of --run, or of every run), and every one passed through because its
image could not be used (put the image in place first), starts again from its seed, its shard opens
again, and the answers it already got are read back, not paid again; when the last of them finishes, the
shard's evolved data, lineage and report are written again with them. A deployed stack gets their evolve
messages at once; a local run evolves them at the next \`mmevol run\` on the same output (as
\`mmevol run --retry-failed\` does). Dead letters are left as they are.`,
    )
    .action(
      (
        flags: Target & { queue: Stage | "all"; max?: number; failed?: boolean; run?: string },
        command: Command,
      ) =>
        report(async () => {
          const where = target(flags);
          // --queue and --max pick what moves out of a deployed stack's dead-letter queues.
          if (flags.max !== undefined || command.getOptionValueSource("queue") === "cli") {
            if (flags.failed)
              throw new InvalidArgumentError(
                "--queue and --max move dead letters; --failed moves none: give one or the other",
              );
            if ("local" in where)
              throw new InvalidArgumentError(
                "--queue and --max are for a deployed stack's dead-letter queues; a local run's dead letters all go back at its next run",
              );
          }
          const aws = {
            ...(flags.stack === undefined ? {} : { stack: flags.stack }),
            ...(flags.endpoint === undefined ? {} : { endpoint: flags.endpoint }),
          };
          if (flags.failed) {
            const run = flags.run === undefined ? {} : { run: flags.run };
            if ("local" in where) return localRedriveFailed({ out: where.local, ...run });
            return deployedRedriveFailed({ outputs: where.outputs, ...run, ...aws });
          }
          if (flags.run !== undefined) throw new InvalidArgumentError("--run goes with --failed");
          if ("local" in where) return localRedrive({ out: where.local });
          return deployedRedrive({
            outputs: where.outputs,
            queue: flags.queue,
            ...(flags.max === undefined ? {} : { max: flags.max }),
            ...aws,
          });
        }),
    );
}
