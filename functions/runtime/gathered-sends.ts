import type { Message, WorkQueue } from "../ports/messages.ts";

interface Waiting {
  readonly messages: readonly Message[];
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

/** SQS takes up to 10 messages per SendMessageBatch: a full batch goes at once. */
const FULL_BATCH = 10;

/**
 * The next-stage messages of one invocation's records, sent together: SQS bills a SendMessageBatch of ten
 * messages like a single one, and the records of a batch, run in parallel, used to send one each. A record's
 * send waits until every record still running has sent or finished (or ten messages wait, or `maxWaitMs`
 * passed since the first one did), then all go in one WorkQueue.send. The invocation lasts as long as its
 * slowest record anyway, so the wait costs no Lambda time. Each send still resolves only once its messages are
 * on their queues, and fails when they could not be sent: that record fails and comes back, and its stage,
 * finding the sample already moved on, sends the message again.
 */
export class GatheredSends implements WorkQueue {
  readonly #inner: WorkQueue;
  readonly #maxWaitMs: number;
  /** Records neither finished nor waiting on a send. */
  #running: number;
  #waiting: Waiting[] = [];
  #timer: ReturnType<typeof setTimeout> | null = null;

  constructor(inner: WorkQueue, records: number, maxWaitMs: number) {
    this.#inner = inner;
    this.#running = records;
    this.#maxWaitMs = maxWaitMs;
  }

  send(messages: readonly Message[]): Promise<void> {
    if (messages.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.#waiting.push({ messages, resolve, reject });
      this.#running -= 1;
      this.#timer ??= setTimeout(() => this.#flush(), this.#maxWaitMs);
      this.#flushIfDue();
    });
  }

  /** A record is done, whatever its outcome: it will send nothing more. */
  finished(): void {
    this.#running -= 1;
    this.#flushIfDue();
  }

  #flushIfDue(): void {
    const queued = this.#waiting.reduce((sum, w) => sum + w.messages.length, 0);
    if (this.#running <= 0 || queued >= FULL_BATCH) this.#flush();
  }

  #flush(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    const batch = this.#waiting;
    this.#waiting = [];
    if (batch.length === 0) return;
    // The records whose sends go now run again (a record with several messages may send once more).
    this.#running += batch.length;
    this.#inner.send(batch.flatMap((w) => w.messages)).then(
      () => {
        for (const w of batch) w.resolve();
      },
      (error: unknown) => {
        for (const w of batch) w.reject(error);
      },
    );
  }
}
