import { describe, expect, it } from "vitest";
import { redriveFailed } from "../../bin/commands/redrive.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import type { Message, WorkQueue } from "../../functions/ports/messages.ts";
import { seededSampleRecord, shardRecord } from "../helpers/state-store-contract.ts";

/** The evolve queue of a deployed stack, unreachable while `down`. */
class Queue implements WorkQueue {
  down = true;
  readonly sent: Message[] = [];
  async send(messages: readonly Message[]): Promise<void> {
    if (this.down) throw new Error("connect ECONNREFUSED sqs");
    this.sent.push(...messages);
  }
}

describe("mmevol redrive --failed on a deployed stack whose evolve queue cannot be reached", () => {
  it("says the samples were started again, and the same command again sends their messages", async () => {
    const state = new SqliteStateStore(":memory:");
    await state.createShard(shardRecord({ config: { rounds: 1 } }));
    await state.putSamples([seededSampleRecord("000000001", ["images/a.png"])]);
    await state.completeIngest("r1", "s1", 1);
    const sample = await state.getSample("r1", "s1", "000000001");
    if (sample === null) throw new Error("sample missing");
    await state.transition(sample, { status: "FAILED", error: "judge round 1: HTTP 400" });
    await state.markFinalized("r1", "s1", 0);

    const queue = new Queue();
    const failed = await redriveFailed(state, queue, undefined).catch((error: unknown) => error);
    expect(String(failed)).toMatch(
      /start again from their seed, but their evolve messages could not be sent/,
    );
    // The state was changed: the sample waits at its seed with no message on its way.
    expect((await state.getSample("r1", "s1", "000000001"))?.status).toBe("INGESTED");

    queue.down = false;
    const again = await redriveFailed(state, queue, undefined);
    expect(queue.sent).toEqual([{ kind: "evolve", run: "r1", shard: "s1", sample: "000000001", round: 1 }]);
    expect(again.lines.join("\n")).toContain("sent 1 evolve message(s) again");
    state.close();
  });
});
