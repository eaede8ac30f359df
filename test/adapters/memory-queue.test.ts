import { describe, expect, it } from "vitest";
import { MemoryQueues } from "../../functions/adapters/local/memory-queue.ts";
import type { EvolveMessage, Message } from "../../functions/ports/messages.ts";

const fakeClock = () => {
  const clock = { t: 1_000, now: () => clock.t };
  return clock;
};

const evolve = (sample: string): EvolveMessage => ({
  kind: "evolve",
  run: "r",
  shard: "s",
  sample,
  round: 1,
});

describe("MemoryQueues", () => {
  it("routes messages to the queue of their kind, in order", async () => {
    const queues = new MemoryQueues({ clock: fakeClock() });
    const messages: Message[] = [
      evolve("a"),
      { kind: "ingest", run: "r", shard: "s", key: "seeds/r/s.jsonl" },
      evolve("b"),
      { kind: "finalize", run: "r", shard: "s" },
    ];
    await queues.send(messages);
    expect(queues.size("evolve")).toBe(2);
    expect(queues.size("ingest")).toBe(1);
    expect(queues.size("judge")).toBe(0);
    expect(queues.receive("evolve", 10).map((r) => r.message)).toEqual([evolve("a"), evolve("b")]);
    expect(queues.receive("finalize", 10)).toHaveLength(1);
    expect(queues.receive("judge", 10)).toEqual([]);
  });

  it("rejects a malformed message and queues a copy, not the sender's object", async () => {
    const queues = new MemoryQueues({ clock: fakeClock() });
    const message = { kind: "evolve" as const, run: "r", shard: "s", sample: "a", round: 1 };
    await queues.send([message]);
    message.sample = "changed";
    expect(queues.receive("evolve", 1)[0]?.message).toEqual(evolve("a"));
    await expect(queues.send([{ ...evolve("b"), round: 0 }])).rejects.toThrow();
  });

  it("hides received messages for the visibility timeout, then delivers them again", async () => {
    const clock = fakeClock();
    const queues = new MemoryQueues({ clock, visibilityTimeoutMs: 100 });
    await queues.send([evolve("a"), evolve("b"), evolve("c")]);
    const first = queues.receive("evolve", 2);
    expect(first.map((r) => [r.message.kind === "evolve" && r.message.sample, r.receiveCount])).toEqual([
      ["a", 1],
      ["b", 1],
    ]);
    expect(queues.inFlight("evolve")).toBe(2);
    expect(queues.size("evolve")).toBe(3);
    expect(queues.nextVisibleAt("evolve")).toBe(1_000);

    const second = queues.receive("evolve", 5);
    expect(second).toHaveLength(1);
    expect(queues.receive("evolve", 5)).toEqual([]);
    expect(queues.nextVisibleAt("evolve")).toBe(1_100);

    const a = first[0];
    if (a === undefined) throw new Error("no message");
    expect(queues.ack("evolve", a.id)).toBe(true);
    expect(queues.ack("evolve", a.id)).toBe(false);

    clock.t = 1_099;
    expect(queues.receive("evolve", 5)).toEqual([]);
    clock.t = 1_100;
    expect(queues.inFlight("evolve")).toBe(0);
    const again = queues.receive("evolve", 5);
    expect(again.map((r) => r.id)).toEqual([first[1]?.id, second[0]?.id]);
    expect(again.map((r) => r.receiveCount)).toEqual([2, 2]);
  });

  it("releases a message visible again after a delay", async () => {
    const clock = fakeClock();
    const queues = new MemoryQueues({ clock });
    await queues.send([evolve("a")]);
    const [received] = queues.receive("evolve", 1);
    if (received === undefined) throw new Error("no message");
    expect(queues.release("evolve", received.id, 500)).toBe(true);
    expect(queues.inFlight("evolve")).toBe(0);
    expect(queues.size("evolve")).toBe(1);
    expect(queues.nextVisibleAt("evolve")).toBe(1_500);
    clock.t = 1_499;
    expect(queues.receive("evolve", 1)).toEqual([]);
    clock.t = 1_500;
    expect(queues.nextVisibleAt("evolve")).toBe(1_500);
    const [back] = queues.receive("evolve", 1);
    expect(back?.id).toBe(received.id);
    expect(back?.receiveCount).toBe(2);
    // Released without delay: visible at once.
    expect(queues.release("evolve", received.id)).toBe(true);
    expect(queues.receive("evolve", 1)[0]?.receiveCount).toBe(3);
    expect(queues.release("evolve", "m999", 0)).toBe(false);
  });

  it("moves a message to the dead letters after maxReceiveCount deliveries, and redrives it", async () => {
    const clock = fakeClock();
    const queues = new MemoryQueues({ clock, maxReceiveCount: 3, visibilityTimeoutMs: 10 });
    await queues.send([evolve("poison"), evolve("ok")]);
    const counts: number[] = [];
    for (let i = 0; i < 3; i += 1) {
      for (const r of queues.receive("evolve", 10)) {
        if (r.message.kind === "evolve" && r.message.sample === "ok") queues.ack("evolve", r.id);
        else counts.push(r.receiveCount);
      }
      clock.t += 10;
    }
    expect(counts).toEqual([1, 2, 3]);
    expect(queues.receive("evolve", 10)).toEqual([]);
    expect(queues.size("evolve")).toBe(0);
    expect(queues.isIdle()).toBe(true);
    expect(queues.nextVisibleAt("evolve")).toBeNull();
    const dead = queues.deadLetters("evolve");
    expect(dead.map((d) => [d.message, d.receiveCount])).toEqual([[evolve("poison"), 3]]);
    expect(queues.deadLetters("judge")).toEqual([]);

    expect(queues.redriveDeadLetters("evolve")).toBe(1);
    expect(queues.deadLetters("evolve")).toEqual([]);
    const [redriven] = queues.receive("evolve", 1);
    expect(redriven?.message).toEqual(evolve("poison"));
    expect(redriven?.receiveCount).toBe(1);
    expect(redriven?.id).not.toBe(dead[0]?.id);
  });

  it("is idle only when every queue is empty", async () => {
    const queues = new MemoryQueues({ clock: fakeClock() });
    expect(queues.isIdle()).toBe(true);
    await queues.send([{ kind: "judge", run: "r", shard: "s", sample: "a", round: 2 }]);
    expect(queues.isIdle()).toBe(false);
    const [r] = queues.receive("judge", 1);
    // In flight still counts: the work is not done.
    expect(queues.isIdle()).toBe(false);
    if (r === undefined) throw new Error("no message");
    queues.ack("judge", r.id);
    expect(queues.isIdle()).toBe(true);
  });

  it("stays fast and correct with many messages in flight and acked", async () => {
    const clock = fakeClock();
    const queues = new MemoryQueues({ clock, visibilityTimeoutMs: 1_000 });
    const n = 50_000;
    await queues.send(Array.from({ length: n }, (_, i) => evolve(`s${i}`)));
    const started = performance.now();
    let handled = 0;
    for (;;) {
      const batch = queues.receive("evolve", 10);
      if (batch.length === 0) break;
      for (const [i, r] of batch.entries()) {
        // Every tenth one is released for a retry later; the rest are done.
        if (i === 0 && r.receiveCount === 1) queues.release("evolve", r.id, 5_000);
        else {
          queues.ack("evolve", r.id);
          handled += 1;
        }
      }
      expect(queues.inFlight("evolve")).toBe(0);
    }
    expect(handled).toBe(n - n / 10);
    expect(queues.size("evolve")).toBe(n / 10);
    expect(queues.nextVisibleAt("evolve")).toBe(6_000);
    clock.t = 6_000;
    let retried = 0;
    for (let batch = queues.receive("evolve", 100); batch.length > 0; batch = queues.receive("evolve", 100)) {
      for (const r of batch) {
        expect(r.receiveCount).toBe(2);
        queues.ack("evolve", r.id);
        retried += 1;
      }
    }
    expect(retried).toBe(n / 10);
    expect(queues.isIdle()).toBe(true);
    expect(performance.now() - started).toBeLessThan(3_000);
  });
});
