import { Duration } from "aws-cdk-lib";
import { type Alarm, ComparisonOperator, TreatMissingData } from "aws-cdk-lib/aws-cloudwatch";
import { Queue, QueueEncryption } from "aws-cdk-lib/aws-sqs";
import { Construct } from "constructs";
import { MAX_ATTEMPTS } from "../functions/evolution/config.ts";

export interface StageQueueProps {
  /** Timeout of the function that consumes the queue; the visibility timeout is 6x this (AWS guidance). */
  readonly functionTimeout: Duration;
  /**
   * Deliveries before SQS moves a message to the dead-letter queue. It must exceed a run's `maxAttempts`
   * (default 5), so the handler gets to mark the sample FAILED with its reason before SQS gives up; the DLQ only
   * catches messages the handler cannot process at all.
   * @default 10
   */
  readonly maxReceiveCount?: number;
}

/** A stage's work queue with its dead-letter queue and an alarm on anything landing there. */
export class StageQueue extends Construct {
  readonly queue: Queue;
  readonly deadLetterQueue: Queue;
  readonly deadLetterAlarm: Alarm;

  constructor(scope: Construct, id: string, props: StageQueueProps) {
    super(scope, id);
    const maxReceiveCount = props.maxReceiveCount ?? MAX_ATTEMPTS + 1;
    if (!Number.isInteger(maxReceiveCount) || maxReceiveCount <= MAX_ATTEMPTS) {
      throw new RangeError(
        `maxReceiveCount must be an integer above a run's most maxAttempts (${MAX_ATTEMPTS}), got ${maxReceiveCount}`,
      );
    }
    this.deadLetterQueue = new Queue(this, "DeadLetter", {
      encryption: QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    this.queue = new Queue(this, "Queue", {
      encryption: QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      visibilityTimeout: Duration.seconds(props.functionTimeout.toSeconds() * 6),
      // Messages wait here while a stage is throttled to the model's rate limit; give them the DLQ's horizon.
      retentionPeriod: Duration.days(14),
      deadLetterQueue: { queue: this.deadLetterQueue, maxReceiveCount },
    });
    this.deadLetterAlarm = this.deadLetterQueue
      .metricApproximateNumberOfMessagesVisible({ period: Duration.minutes(5), statistic: "Maximum" })
      .createAlarm(this, "DeadLetterAlarm", {
        alarmDescription: `${id}: messages in the dead-letter queue`,
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: TreatMissingData.NOT_BREACHING,
      });
  }
}
