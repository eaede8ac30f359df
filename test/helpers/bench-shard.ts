import { closeSync, copyFileSync, mkdirSync, openSync, readdirSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { repoRoot } from "./files.ts";

/**
 * A generated shard of `samples` LLaVA records for benchmarks, each with its own image (a renamed copy of a
 * demo image, as in a real shard where no two samples share one), written to `<dir>/<name>.jsonl`.
 */
export function writeBenchShard(
  dir: string,
  options: { samples: number; name: string; withBoxes?: boolean },
): string {
  const images = join(repoRoot, "examples/seeds/images");
  mkdirSync(join(dir, "images"), { recursive: true });
  const names = readdirSync(images);
  const lines: string[] = [];
  for (let i = 0; i < options.samples; i++) {
    const source = names[i % names.length] ?? "";
    const image = `s${i}-${source}`;
    copyFileSync(join(images, source), join(dir, "images", image));
    lines.push(
      JSON.stringify({
        id: `${options.name}-${i}`,
        image: `images/${image}`,
        conversations: [
          { from: "human", value: `<image>\nWhat is the main object in picture ${i}?` },
          { from: "gpt", value: `It is object number ${i}, in the middle of the picture.` },
        ],
        ...(options.withBoxes ? { det: [{ label: "object", bbox: [0.1, 0.2, 0.5, 0.6] }] } : {}),
      }),
    );
  }
  const shard = join(dir, `${options.name}.jsonl`);
  writeFileSync(shard, `${lines.join("\n")}\n`);
  return shard;
}

const WORDS = (
  "the a of in on with near behind left right small large red blue green white black wooden metal glass " +
  "person dog cat car table chair window door street building tree sky cloud road sign shelf book cup plate " +
  "standing sitting holding looking walking parked open closed bright dark several two three four many " +
  "background foreground corner center edge top bottom side surface light shadow color shape pattern texture"
).split(" ");

/** A small deterministic PRNG (mulberry32), so a shard of a given size is the same every time. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function sentence(random: () => number, words: number): string {
  const out: string[] = [];
  for (let i = 0; i < words; i++) out.push(WORDS[Math.floor(random() * WORDS.length)] ?? "the");
  const text = out.join(" ");
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}.`;
}

/**
 * One realistic LLaVA line of about `targetBytes` (default ~1 KB): a COCO-like id and image path, and a
 * conversation of 2 or 4 turns (one or two human/gpt pairs, the first question carrying `<image>`).
 */
export function llavaBenchLine(
  i: number,
  options: { readonly image: string; readonly targetBytes?: number; readonly seed?: number },
): string {
  const random = prng((options.seed ?? 7) * 1_000_003 + i);
  const target = options.targetBytes ?? 1024;
  const pairs = random() < 0.5 ? 1 : 2;
  const record = {
    id: String(100_000_000 + i).padStart(12, "0"),
    image: options.image,
    conversations: [] as { from: string; value: string }[],
  };
  for (let p = 0; p < pairs; p++) {
    const question = sentence(random, 6 + Math.floor(random() * 6)).replace(/\.$/, "?");
    record.conversations.push({ from: "human", value: p === 0 ? `<image>\n${question}` : question });
    record.conversations.push({ from: "gpt", value: "" });
  }
  // Fill the answers until the line reaches its size.
  let line = JSON.stringify(record);
  let turn = 0;
  while (line.length < target) {
    const answers = record.conversations.filter((c) => c.from === "gpt");
    const answer = answers[turn % answers.length];
    if (answer) answer.value = `${answer.value}${answer.value ? " " : ""}${sentence(random, 8)}`;
    turn += 1;
    line = JSON.stringify(record);
  }
  return line;
}

/**
 * A shard of `samples` realistic LLaVA lines (see `llavaBenchLine`), written as it is generated (a 200,000-line
 * shard never sits in memory). Images are paths only (`images/<n>.jpg` by default); nothing is copied, so pass
 * `image` to point the lines at files that exist when a stage reads them.
 */
export function writeLlavaBenchShard(
  dir: string,
  options: {
    readonly samples: number;
    readonly name: string;
    readonly targetBytes?: number;
    readonly image?: (i: number) => string;
  },
): { path: string; bytes: number } {
  const path = join(dir, `${options.name}.jsonl`);
  const fd = openSync(path, "w");
  let bytes = 0;
  try {
    let buffer: string[] = [];
    for (let i = 0; i < options.samples; i++) {
      const image = options.image?.(i) ?? `images/${String(i).padStart(12, "0")}.jpg`;
      const line = `${llavaBenchLine(i, { image, ...(options.targetBytes ? { targetBytes: options.targetBytes } : {}) })}\n`;
      buffer.push(line);
      bytes += Buffer.byteLength(line);
      if (buffer.length >= 1000) {
        writeSync(fd, buffer.join(""));
        buffer = [];
      }
    }
    if (buffer.length > 0) writeSync(fd, buffer.join(""));
  } finally {
    closeSync(fd);
  }
  return { path, bytes };
}
