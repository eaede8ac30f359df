// One measurement of test/bench/ingest-rss.ts, in a process of its own so that its peak RSS is ingest's alone:
// the ingest stage of the local pipeline (SQLite state, directory blobs mounted as in `runLocal`) over the given
// shard, with a queue that counts the evolve messages and drops them. Prints one JSON line:
// { lines, evolveMessages, maxRssKiB, rssBeforeKiB, seconds, outcome }.
// Usage: node test/bench/ingest-rss-child.ts <shard.jsonl> <work dir>
import { basename, dirname, extname, join } from "node:path";
import { FsBlobStore } from "../../functions/adapters/local/fs-blob-store.ts";
import { MountedBlobStore } from "../../functions/adapters/local/mounted-blob-store.ts";
import { SqliteStateStore } from "../../functions/adapters/local/sqlite-state-store.ts";
import { ingestShard } from "../../functions/pipeline/ingest.ts";
import type { ImagePreparer } from "../../functions/ports/images.ts";
import type { Llm } from "../../functions/ports/llm.ts";
import type { Message, WorkQueue } from "../../functions/ports/messages.ts";
import { silentLogger, systemClock } from "../../functions/ports/runtime.ts";

const [shardPath, workDir] = process.argv.slice(2);
if (!shardPath || !workDir) {
  process.stderr.write("usage: ingest-rss-child.ts <shard.jsonl> <work dir>\n");
  process.exit(2);
}

const run = "rss";
const shard = basename(shardPath, extname(shardPath));
const key = `seeds/${run}/${shard}${extname(shardPath)}`;
// As runLocal mounts them: the shard where the user keeps it, everything else under the output directory.
const blobs = new MountedBlobStore(new FsBlobStore(join(workDir, "out")), [
  { prefix: key, store: new FsBlobStore(dirname(shardPath)), target: basename(shardPath) },
  { prefix: "images/", store: new FsBlobStore(dirname(shardPath)), target: "images/" },
]);
const state = new SqliteStateStore(join(workDir, "state.sqlite"));

/** The evolve queue of this measurement: counts what it is sent and keeps nothing. */
class CountingQueue implements WorkQueue {
  sent = 0;
  batches = 0;
  async send(messages: readonly Message[]): Promise<void> {
    this.sent += messages.length;
    if (messages.length > 0) this.batches += 1;
  }
}
const queue = new CountingQueue();
// Ingest neither calls the model nor reads images: these fail loudly if it ever starts to.
const llm: Llm = {
  complete: () => Promise.reject(new Error("ingest must not call the LLM")),
};
const images: ImagePreparer = {
  prepare: () => Promise.reject(new Error("ingest must not prepare images")),
};

const rssBeforeKiB = Math.round(process.memoryUsage().rss / 1024);
const started = performance.now();
try {
  const result = await ingestShard(
    { message: { kind: "ingest", run, shard, key }, attempt: 1 },
    {
      blobs,
      state,
      llm,
      images,
      clock: systemClock,
      logger: silentLogger,
      defaults: { imageRoot: "images" },
      queue,
    },
  );
  const seconds = (performance.now() - started) / 1000;
  const lines = Number(/^ingested:(\d+)$/.exec(result.outcome)?.[1] ?? Number.NaN);
  process.stdout.write(
    `${JSON.stringify({
      lines,
      evolveMessages: queue.sent,
      sends: queue.batches,
      maxRssKiB: process.resourceUsage().maxRSS,
      rssBeforeKiB,
      seconds: +seconds.toFixed(3),
      outcome: result.outcome,
    })}\n`,
  );
} finally {
  state.close();
}
