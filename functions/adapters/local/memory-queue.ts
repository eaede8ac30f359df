import { Message, type Stage, type WorkQueue } from "../../ports/messages.ts";
import { type Clock, systemClock } from "../../ports/runtime.ts";

/** A delivered message. `id` is what `ack` and `release` take. */
export interface Received {
  readonly id: string;
  readonly message: Message;
  /** How many times this message has been delivered, this delivery included. */
  readonly receiveCount: number;
}

export interface MemoryQueueOptions {
  /** How long a received message stays hidden before it is delivered again. Default 300 000 ms. */
  readonly visibilityTimeoutMs?: number;
  /** A message is delivered at most this many times; the next receive moves it to the dead letters. Default 5. */
  readonly maxReceiveCount?: number;
  readonly clock?: Clock;
}

const STAGES: readonly Stage[] = ["ingest", "evolve", "judge", "finalize"];

type State = "visible" | "inFlight" | "delayed";

interface Entry {
  readonly id: string;
  readonly message: Message;
  receiveCount: number;
  state: State;
  visibleAt: number;
  /** Changes on every reschedule, so stale references in `ready`/`hidden` are recognised and skipped. */
  token: number;
}

interface Ref {
  readonly id: string;
  readonly token: number;
  readonly visibleAt: number;
  /** Tie-breaker that keeps equal times in scheduling order. */
  readonly seq: number;
}

/**
 * One stage's queue. Visible messages wait in a FIFO; hidden ones (in flight or delayed) in a min-heap by
 * the time they reappear. Removal is lazy (a token check), so every operation stays O(log n) at 200k messages.
 */
class StageQueue {
  readonly entries = new Map<string, Entry>();
  readonly dead: Received[] = [];
  private readonly ready: Ref[] = [];
  private readyHead = 0;
  private readonly hidden: Ref[] = [];
  private readonly counts: Record<State, number> = { visible: 0, inFlight: 0, delayed: 0 };
  private seq = 0;

  add(entry: Entry): void {
    this.entries.set(entry.id, entry);
    this.counts[entry.state] += 1;
    this.schedule(entry);
  }

  /** Moves every hidden message whose time has come to the visible FIFO. */
  promote(now: number): void {
    for (let top = this.peekHidden(); top !== undefined && top.visibleAt <= now; top = this.peekHidden()) {
      this.popHidden();
      const entry = this.entries.get(top.id);
      if (entry === undefined) continue;
      this.setState(entry, "visible");
      this.ready.push(this.ref(entry));
    }
  }

  /** The next live visible entry, removed from the FIFO (its state is the caller's to change). */
  takeVisible(): Entry | undefined {
    while (this.readyHead < this.ready.length) {
      const ref = this.ready[this.readyHead];
      this.readyHead += 1;
      this.compactReady();
      if (ref === undefined) continue;
      const entry = this.live(ref);
      if (entry !== undefined) return entry;
    }
    return undefined;
  }

  delete(entry: Entry): void {
    this.entries.delete(entry.id);
    this.counts[entry.state] -= 1;
    entry.token += 1;
  }

  /** Puts the entry in `state`, visible at `visibleAt`, dropping any older place it had. */
  reschedule(entry: Entry, state: State, visibleAt: number): void {
    this.setState(entry, state);
    entry.visibleAt = visibleAt;
    entry.token += 1;
    this.schedule(entry);
  }

  count(state: State): number {
    return this.counts[state];
  }

  /** Earliest time a hidden message becomes visible, skipping stale references. */
  nextHiddenAt(): number | null {
    return this.peekHidden()?.visibleAt ?? null;
  }

  private schedule(entry: Entry): void {
    const ref = this.ref(entry);
    if (entry.state === "visible") this.ready.push(ref);
    else this.pushHidden(ref);
  }

  private setState(entry: Entry, state: State): void {
    this.counts[entry.state] -= 1;
    this.counts[state] += 1;
    entry.state = state;
  }

  private ref(entry: Entry): Ref {
    this.seq += 1;
    return { id: entry.id, token: entry.token, visibleAt: entry.visibleAt, seq: this.seq };
  }

  private live(ref: Ref): Entry | undefined {
    const entry = this.entries.get(ref.id);
    return entry !== undefined && entry.token === ref.token ? entry : undefined;
  }

  private compactReady(): void {
    if (this.readyHead > 1024 && this.readyHead * 2 > this.ready.length) {
      this.ready.splice(0, this.readyHead);
      this.readyHead = 0;
    }
  }

  private peekHidden(): Ref | undefined {
    for (let top = this.hidden[0]; top !== undefined; top = this.hidden[0]) {
      if (this.live(top) !== undefined) return top;
      this.popHidden();
    }
    return undefined;
  }

  private pushHidden(ref: Ref): void {
    const heap = this.hidden;
    heap.push(ref);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap, i, parent)) break;
      swap(heap, i, parent);
      i = parent;
    }
  }

  private popHidden(): void {
    const heap = this.hidden;
    const last = heap.pop();
    if (last === undefined || heap.length === 0) return;
    heap[0] = last;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      const right = left + 1;
      let smallest = i;
      if (left < heap.length && before(heap, left, smallest)) smallest = left;
      if (right < heap.length && before(heap, right, smallest)) smallest = right;
      if (smallest === i) return;
      swap(heap, i, smallest);
      i = smallest;
    }
  }
}

const before = (heap: Ref[], a: number, b: number): boolean => {
  const x = heap[a];
  const y = heap[b];
  if (x === undefined || y === undefined) return false;
  return x.visibleAt < y.visibleAt || (x.visibleAt === y.visibleAt && x.seq < y.seq);
};

const swap = (heap: Ref[], a: number, b: number): void => {
  const x = heap[a];
  const y = heap[b];
  if (x === undefined || y === undefined) return;
  heap[a] = y;
  heap[b] = x;
};

/**
 * In-process stand-in for the SQS queues of the local runner: one queue per stage, at-least-once delivery,
 * a visibility timeout, delayed release for backoff, and a dead-letter list per stage. Nothing is deduplicated.
 */
export class MemoryQueues implements WorkQueue {
  private readonly visibilityTimeoutMs: number;
  private readonly maxReceiveCount: number;
  private readonly clock: Clock;
  private readonly queues: Readonly<Record<Stage, StageQueue>> = {
    ingest: new StageQueue(),
    evolve: new StageQueue(),
    judge: new StageQueue(),
    finalize: new StageQueue(),
  };
  private nextId = 0;

  constructor(options: MemoryQueueOptions = {}) {
    this.visibilityTimeoutMs = options.visibilityTimeoutMs ?? 300_000;
    this.maxReceiveCount = options.maxReceiveCount ?? 5;
    this.clock = options.clock ?? systemClock;
  }

  async send(messages: readonly Message[]): Promise<void> {
    // Parsing copies each message, so a sender mutating its object later cannot change what is queued.
    const parsed = messages.map((message) => Message.parse(message));
    const now = this.clock.now();
    for (const message of parsed) this.enqueue(message, now);
  }

  /** Up to `max` visible messages of the stage, each hidden for the visibility timeout. */
  receive(kind: Stage, max: number): Received[] {
    const queue = this.queue(kind);
    const now = this.clock.now();
    queue.promote(now);
    const out: Received[] = [];
    while (out.length < max) {
      const entry = queue.takeVisible();
      if (entry === undefined) break;
      if (entry.receiveCount >= this.maxReceiveCount) {
        queue.delete(entry);
        queue.dead.push({ id: entry.id, message: entry.message, receiveCount: entry.receiveCount });
        continue;
      }
      entry.receiveCount += 1;
      queue.reschedule(entry, "inFlight", now + this.visibilityTimeoutMs);
      out.push({ id: entry.id, message: entry.message, receiveCount: entry.receiveCount });
    }
    return out;
  }

  /** Deletes a message (done with it). False when it is already gone. */
  ack(kind: Stage, id: string): boolean {
    const queue = this.queue(kind);
    const entry = queue.entries.get(id);
    if (entry === undefined) return false;
    queue.delete(entry);
    return true;
  }

  /** Gives a message back, visible again after `delayMs` (a retry with backoff). False when it is already gone. */
  release(kind: Stage, id: string, delayMs = 0): boolean {
    const queue = this.queue(kind);
    const entry = queue.entries.get(id);
    if (entry === undefined) return false;
    const now = this.clock.now();
    if (delayMs > 0) queue.reschedule(entry, "delayed", now + delayMs);
    else queue.reschedule(entry, "visible", now);
    return true;
  }

  /** Messages that were delivered `maxReceiveCount` times without an ack, oldest first. */
  deadLetters(kind: Stage): readonly Received[] {
    return [...this.queue(kind).dead];
  }

  /** Sends the dead letters of a stage back to its queue as new messages; returns how many. */
  redriveDeadLetters(kind: Stage): number {
    const queue = this.queue(kind);
    const dead = queue.dead.splice(0);
    const now = this.clock.now();
    for (const { message } of dead) this.enqueue(message, now);
    return dead.length;
  }

  /** Messages of the stage not yet acked: visible, in flight or delayed (dead letters excluded). */
  size(kind: Stage): number {
    return this.queue(kind).entries.size;
  }

  /** Messages received and neither acked, released nor timed out. */
  inFlight(kind: Stage): number {
    const queue = this.queue(kind);
    queue.promote(this.clock.now());
    return queue.count("inFlight");
  }

  /** True when no stage holds a message (dead letters aside). */
  isIdle(): boolean {
    return STAGES.every((stage) => this.size(stage) === 0);
  }

  /**
   * When the stage next has a message to deliver: now if one is visible already, else the earliest time a
   * hidden or delayed one reappears, or null when the stage is empty. Lets the runner sleep exactly that long.
   */
  nextVisibleAt(kind: Stage): number | null {
    const queue = this.queue(kind);
    const now = this.clock.now();
    queue.promote(now);
    if (queue.count("visible") > 0) return now;
    return queue.nextHiddenAt();
  }

  private enqueue(message: Message, now: number): void {
    this.nextId += 1;
    this.queue(message.kind).add({
      id: `m${this.nextId}`,
      message,
      receiveCount: 0,
      state: "visible",
      visibleAt: now,
      token: 0,
    });
  }

  private queue(kind: Stage): StageQueue {
    return this.queues[kind];
  }
}
