import { describe, expect, it } from "vitest";
import type { Message, WorkQueue } from "../../functions/ports/messages.ts";
import { GatheredSends } from "../../functions/runtime/gathered-sends.ts";

const judge = (sample: string): Message => ({ kind: "judge", run: "r", shard: "s", sample, round: 1 });

/** A WorkQueue that records each send and answers it when told to. */
class HeldQueue implements WorkQueue {
  readonly sends: Message[][] = [];
  readonly #answers: { resolve: () => void; reject: (error: unknown) => void }[] = [];
  send(messages: readonly Message[]): Promise<void> {
    this.sends.push([...messages]);
    return new Promise((resolve, reject) => this.#answers.push({ resolve, reject }));
  }
  answer(index: number, error?: Error): void {
    const answer = this.#answers[index];
    if (answer === undefined) throw new Error(`no send ${index}`);
    if (error === undefined) answer.resolve();
    else answer.reject(error);
  }
}

/** Whether `promise` has settled by the time the pending callbacks have run. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  await new Promise((resolve) => setImmediate(resolve));
  return done;
}

describe("GatheredSends", () => {
  it("sends the records' messages together once every record has sent or finished", async () => {
    const queue = new HeldQueue();
    const sends = new GatheredSends(queue, 3, 60_000);
    const a = sends.send([judge("a")]);
    const b = sends.send([judge("b")]);
    expect(queue.sends).toEqual([]);
    expect(await settled(a)).toBe(false);
    // The third record ends without a message: nobody is left to wait for.
    sends.finished();
    expect(queue.sends).toEqual([[judge("a"), judge("b")]]);
    // Each send resolves only once the messages are on their queues.
    expect(await settled(a)).toBe(false);
    queue.answer(0);
    await expect(a).resolves.toBeUndefined();
    await expect(b).resolves.toBeUndefined();
    sends.finished();
    sends.finished();
    expect(queue.sends).toHaveLength(1);
  });

  it("sends at once when ten messages wait, and resolves an empty send without waiting", async () => {
    const queue = new HeldQueue();
    const sends = new GatheredSends(queue, 20, 60_000);
    await expect(sends.send([])).resolves.toBeUndefined();
    const first = Array.from({ length: 9 }, (_, i) => sends.send([judge(`s${i}`)]));
    expect(queue.sends).toEqual([]);
    first.push(sends.send([judge("s9")]));
    expect(queue.sends).toHaveLength(1);
    expect(queue.sends[0]).toHaveLength(10);
    queue.answer(0);
    await Promise.all(first);
  });

  it("does not wait for a slow record longer than maxWaitMs", async () => {
    const queue = new HeldQueue();
    const sends = new GatheredSends(queue, 2, 30);
    const started = performance.now();
    const a = sends.send([judge("a")]);
    // The other record is still running (waiting on its model call, say).
    while (queue.sends.length === 0) await new Promise((resolve) => setTimeout(resolve, 5));
    expect(performance.now() - started).toBeGreaterThanOrEqual(25);
    queue.answer(0);
    await a;
    sends.finished();
    // The slow record's message goes on its own when it is the last one running.
    const b = sends.send([judge("b")]);
    expect(queue.sends).toEqual([[judge("a")], [judge("b")]]);
    queue.answer(1);
    await b;
  });

  it("fails every send of a batch SQS refused, so those records come back", async () => {
    const queue = new HeldQueue();
    const sends = new GatheredSends(queue, 2, 60_000);
    const a = sends.send([judge("a")]);
    const b = sends.send([judge("b"), judge("c")]);
    queue.answer(0, new Error("SQS refused"));
    await expect(a).rejects.toThrow("SQS refused");
    await expect(b).rejects.toThrow("SQS refused");
    // A record that sends again after its first send went waits for the other to finish or send.
    const again = sends.send([judge("a")]);
    expect(queue.sends).toHaveLength(1);
    sends.finished();
    expect(queue.sends).toEqual([[judge("a"), judge("b"), judge("c")], [judge("a")]]);
    queue.answer(1);
    await again;
  });
});
