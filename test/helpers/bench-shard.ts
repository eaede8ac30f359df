import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
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
