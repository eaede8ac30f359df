/**
 * Builds the demo seed shard: small drawn scenes and LLaVA samples whose answers are true to the drawings.
 *
 *   node examples/make-demo.ts
 *
 * Writes examples/seeds/images/*, examples/seeds/demo.jsonl (LLaVA, JSON Lines),
 * examples/seeds/demo-mmevol.json (MMEvol's conversations_v0 form, one JSON array) and examples/run.json.
 * Image paths in the shards are relative to examples/seeds/, the image root of the demo.
 * Boxes are computed from the same coordinates the SVG is drawn with, so they match the pixels.
 */
import { mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import sharp from "sharp";

const here = dirname(fileURLToPath(import.meta.url));
const seedsDir = join(here, "seeds");
const imagesDir = join(seedsDir, "images");

/** A drawn object: its label and its pixel rectangle. */
interface Shape {
  label: string;
  x1: number;
  y1: number;
  x2: number;
  y2: number;
}

interface Scene {
  file: string;
  width: number;
  height: number;
  svg: string;
  shapes: Shape[];
}

const FONT = "DejaVu Sans, Arial, sans-serif";

function svg(width: number, height: number, body: string): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${body}</svg>`;
}

function kitchen(): Scene {
  const w = 640;
  const h = 480;
  const body = `
    <rect width="${w}" height="${h}" fill="#f3e6c8"/>
    <rect x="0" y="440" width="${w}" height="40" fill="#b9a27c"/>
    <rect x="60" y="300" width="520" height="30" fill="#8b5a2b"/>
    <rect x="80" y="330" width="24" height="110" fill="#6e4520"/>
    <rect x="536" y="330" width="24" height="110" fill="#6e4520"/>
    <ellipse cx="400" cy="294" rx="90" ry="15" fill="#1f4fd1"/>
    <ellipse cx="400" cy="291" rx="60" ry="8" fill="#5b82ea"/>
    <rect x="180" y="230" width="60" height="70" rx="6" fill="#d62828"/>
    <path d="M240 245 C 268 245, 268 285, 240 285" stroke="#d62828" stroke-width="9" fill="none"/>`;
  return {
    file: "kitchen.png",
    width: w,
    height: h,
    svg: svg(w, h, body),
    shapes: [
      { label: "red mug", x1: 180, y1: 230, x2: 264, y2: 300 },
      { label: "blue plate", x1: 310, y1: 279, x2: 490, y2: 309 },
      { label: "table", x1: 60, y1: 300, x2: 580, y2: 440 },
    ],
  };
}

function street(): Scene {
  const w = 640;
  const h = 480;
  const body = `
    <rect width="${w}" height="${h}" fill="#9fd3f5"/>
    <rect x="0" y="300" width="${w}" height="40" fill="#c9c9c9"/>
    <rect x="0" y="340" width="${w}" height="140" fill="#4a4a4a"/>
    <rect x="40" y="405" width="60" height="8" fill="#ffffff"/>
    <rect x="220" y="455" width="60" height="8" fill="#ffffff"/>
    <rect x="400" y="405" width="60" height="8" fill="#ffffff"/>
    <rect x="170" y="290" width="120" height="42" rx="10" fill="#1e8c3a"/>
    <rect x="185" y="298" width="40" height="26" fill="#cfe8ff"/>
    <rect x="235" y="298" width="40" height="26" fill="#cfe8ff"/>
    <rect x="120" y="330" width="220" height="60" rx="12" fill="#1e8c3a"/>
    <circle cx="170" cy="393" r="22" fill="#111111"/>
    <circle cx="290" cy="393" r="22" fill="#111111"/>
    <rect x="500" y="220" width="10" height="200" fill="#555555"/>
    <rect x="480" y="110" width="50" height="120" rx="8" fill="#222222"/>
    <circle cx="505" cy="137" r="14" fill="#ff2a2a"/>
    <circle cx="505" cy="170" r="14" fill="#5a4a10"/>
    <circle cx="505" cy="203" r="14" fill="#123d1c"/>`;
  return {
    file: "street.jpg",
    width: w,
    height: h,
    svg: svg(w, h, body),
    shapes: [
      { label: "green car", x1: 120, y1: 290, x2: 340, y2: 415 },
      { label: "traffic light", x1: 480, y1: 110, x2: 530, y2: 420 },
    ],
  };
}

function bookshelf(): Scene {
  const w = 640;
  const h = 480;
  const colours = ["#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#f39c12", "#16a085"];
  const shelves = [
    { y: 150, books: 5 },
    { y: 280, books: 3 },
    { y: 410, books: 4 },
  ];
  let books = "";
  let colour = 0;
  for (const shelf of shelves) {
    for (let i = 0; i < shelf.books; i++) {
      const x = 150 + i * 52;
      const height = 90 + ((i * 17) % 25);
      books += `<rect x="${x}" y="${shelf.y - height}" width="40" height="${height}" fill="${colours[colour++ % colours.length]}"/>`;
    }
  }
  const body = `
    <rect width="${w}" height="${h}" fill="#efe9df"/>
    <rect x="120" y="20" width="400" height="410" fill="#7a4b24"/>
    <rect x="135" y="30" width="370" height="390" fill="#d9c2a0"/>
    ${shelves.map((s) => `<rect x="135" y="${s.y}" width="370" height="12" fill="#7a4b24"/>`).join("")}
    ${books}`;
  return { file: "bookshelf.png", width: w, height: h, svg: svg(w, h, body), shapes: [] };
}

function chart(): Scene {
  const w = 640;
  const h = 480;
  const bars = [
    { month: "Jan", value: 30 },
    { month: "Feb", value: 55 },
    { month: "Mar", value: 40 },
    { month: "Apr", value: 70 },
  ];
  const baseY = 400;
  const scale = 4;
  const ticks = [0, 20, 40, 60, 80]
    .map(
      (t) =>
        `<line x1="100" y1="${baseY - t * scale}" x2="580" y2="${baseY - t * scale}" stroke="#dddddd"/>` +
        `<text x="90" y="${baseY - t * scale + 5}" font-family="${FONT}" font-size="14" text-anchor="end">${t}</text>`,
    )
    .join("");
  const rects = bars
    .map((b, i) => {
      const x = 140 + i * 110;
      const top = baseY - b.value * scale;
      return (
        `<rect x="${x}" y="${top}" width="70" height="${b.value * scale}" fill="#3b78c4"/>` +
        `<text x="${x + 35}" y="${top - 8}" font-family="${FONT}" font-size="14" text-anchor="middle">${b.value}</text>` +
        `<text x="${x + 35}" y="${baseY + 22}" font-family="${FONT}" font-size="16" text-anchor="middle">${b.month}</text>`
      );
    })
    .join("");
  const body = `
    <rect width="${w}" height="${h}" fill="#ffffff"/>
    <text x="340" y="40" font-family="${FONT}" font-size="24" font-weight="bold" text-anchor="middle">Monthly Sales</text>
    ${ticks}
    <line x1="100" y1="${baseY}" x2="580" y2="${baseY}" stroke="#000000" stroke-width="2"/>
    <line x1="100" y1="${baseY}" x2="100" y2="70" stroke="#000000" stroke-width="2"/>
    ${rects}
    <text x="30" y="240" font-family="${FONT}" font-size="16" text-anchor="middle" transform="rotate(-90 30 240)">Units sold</text>
    <text x="340" y="462" font-family="${FONT}" font-size="16" text-anchor="middle">Month</text>`;
  return {
    file: "chart.png",
    width: w,
    height: h,
    svg: svg(w, h, body),
    shapes: bars.map((b, i) => ({
      label: `${b.month} bar`,
      x1: 140 + i * 110,
      y1: baseY - b.value * scale,
      x2: 210 + i * 110,
      y2: baseY,
    })),
  };
}

function sign(): Scene {
  const w = 640;
  const h = 480;
  const body = `
    <rect width="${w}" height="${h}" fill="#bfe3f2"/>
    <rect x="0" y="400" width="${w}" height="80" fill="#7cb35a"/>
    <rect x="312" y="120" width="16" height="300" fill="#777777"/>
    <rect x="170" y="60" width="300" height="80" rx="8" fill="#0b6e3a" stroke="#ffffff" stroke-width="4"/>
    <text x="320" y="115" font-family="${FONT}" font-size="40" font-weight="bold" fill="#ffffff" text-anchor="middle">MAPLE AVE</text>
    <rect x="250" y="180" width="140" height="170" rx="6" fill="#ffffff" stroke="#000000" stroke-width="4"/>
    <text x="320" y="225" font-family="${FONT}" font-size="24" font-weight="bold" text-anchor="middle">SPEED</text>
    <text x="320" y="255" font-family="${FONT}" font-size="24" font-weight="bold" text-anchor="middle">LIMIT</text>
    <text x="320" y="325" font-family="${FONT}" font-size="60" font-weight="bold" text-anchor="middle">30</text>`;
  return {
    file: "sign.jpg",
    width: w,
    height: h,
    svg: svg(w, h, body),
    shapes: [
      { label: "street name sign", x1: 168, y1: 58, x2: 472, y2: 142 },
      { label: "speed limit sign", x1: 248, y1: 178, x2: 392, y2: 352 },
    ],
  };
}

function park(): Scene {
  const w = 1200;
  const h = 800;
  const body = `
    <rect width="${w}" height="${h}" fill="#8ec9f0"/>
    <rect x="0" y="520" width="${w}" height="280" fill="#5fae45"/>
    <circle cx="1050" cy="130" r="70" fill="#ffd21f"/>
    <rect x="230" y="380" width="60" height="240" fill="#7a4b24"/>
    <circle cx="260" cy="320" r="150" fill="#2e7d32"/>
    <rect x="640" y="560" width="300" height="20" fill="#8b5a2b"/>
    <rect x="640" y="510" width="300" height="16" fill="#8b5a2b"/>
    <rect x="640" y="536" width="300" height="16" fill="#8b5a2b"/>
    <rect x="660" y="580" width="16" height="60" fill="#4d4d4d"/>
    <rect x="904" y="580" width="16" height="60" fill="#4d4d4d"/>`;
  return {
    file: "park.jpg",
    width: w,
    height: h,
    svg: svg(w, h, body),
    shapes: [
      { label: "sun", x1: 980, y1: 60, x2: 1120, y2: 200 },
      { label: "tree", x1: 110, y1: 170, x2: 410, y2: 620 },
      { label: "bench", x1: 640, y1: 510, x2: 940, y2: 640 },
    ],
  };
}

function shapes(): Scene {
  const w = 640;
  const h = 480;
  const circles = [
    { cx: 110, cy: 130 },
    { cx: 320, cy: 110 },
    { cx: 530, cy: 150 },
  ];
  const squares = [
    { x: 150, y: 290 },
    { x: 400, y: 300 },
  ];
  const body = `
    <rect width="${w}" height="${h}" fill="#ffffff"/>
    ${circles.map((c) => `<circle cx="${c.cx}" cy="${c.cy}" r="50" fill="#e02424"/>`).join("")}
    ${squares.map((s) => `<rect x="${s.x}" y="${s.y}" width="100" height="100" fill="#1d4ed8"/>`).join("")}
    <polygon points="320,250 370,340 270,340" fill="#16a34a"/>`;
  return {
    file: "shapes.png",
    width: w,
    height: h,
    svg: svg(w, h, body),
    shapes: [
      ...circles.map((c) => ({
        label: "red circle",
        x1: c.cx - 50,
        y1: c.cy - 50,
        x2: c.cx + 50,
        y2: c.cy + 50,
      })),
      ...squares.map((s) => ({ label: "blue square", x1: s.x, y1: s.y, x2: s.x + 100, y2: s.y + 100 })),
      { label: "green triangle", x1: 270, y1: 250, x2: 370, y2: 340 },
    ],
  };
}

function clock(): Scene {
  const w = 640;
  const h = 480;
  const cx = 320;
  const cy = 240;
  const numbers = [
    { n: "12", x: cx, y: cy - 140 },
    { n: "3", x: cx + 150, y: cy + 10 },
    { n: "6", x: cx, y: cy + 165 },
    { n: "9", x: cx - 150, y: cy + 10 },
  ];
  const body = `
    <rect width="${w}" height="${h}" fill="#e8eef3"/>
    <circle cx="${cx}" cy="${cy}" r="190" fill="#ffffff" stroke="#222222" stroke-width="10"/>
    ${numbers.map((p) => `<text x="${p.x}" y="${p.y}" font-family="${FONT}" font-size="36" text-anchor="middle">${p.n}</text>`).join("")}
    <line x1="${cx}" y1="${cy}" x2="${cx}" y2="${cy - 150}" stroke="#222222" stroke-width="6" stroke-linecap="round"/>
    <line x1="${cx}" y1="${cy}" x2="${cx + 100}" y2="${cy}" stroke="#222222" stroke-width="12" stroke-linecap="round"/>
    <circle cx="${cx}" cy="${cy}" r="10" fill="#222222"/>`;
  return {
    file: "clock.png",
    width: w,
    height: h,
    svg: svg(w, h, body),
    shapes: [{ label: "wall clock", x1: cx - 195, y1: cy - 195, x2: cx + 195, y2: cy + 195 }],
  };
}

function det(scene: Scene): { label: string; bbox: [number, number, number, number] }[] {
  const r = (v: number) => Math.round(v * 1000) / 1000;
  return scene.shapes.map((s) => ({
    label: s.label,
    bbox: [r(s.x1 / scene.width), r(s.y1 / scene.height), r(s.x2 / scene.width), r(s.y2 / scene.height)],
  }));
}

const turns = (...values: string[]) =>
  values.map((value, i) => ({ from: i % 2 === 0 ? "human" : "gpt", value }));

async function render(scene: Scene): Promise<void> {
  const image = sharp(Buffer.from(scene.svg));
  const out = scene.file.endsWith(".jpg")
    ? image.jpeg({ quality: 72, mozjpeg: true })
    : image.png({ palette: true, compressionLevel: 9 });
  await out.toFile(join(imagesDir, scene.file));
}

async function main(): Promise<void> {
  await rm(imagesDir, { recursive: true, force: true });
  await mkdir(imagesDir, { recursive: true });
  const scenes = {
    kitchen: kitchen(),
    street: street(),
    bookshelf: bookshelf(),
    chart: chart(),
    sign: sign(),
    park: park(),
    shapes: shapes(),
    clock: clock(),
  };
  for (const scene of Object.values(scenes)) await render(scene);
  const img = (scene: Scene) => `images/${scene.file}`;

  const samples = [
    {
      id: "demo-kitchen",
      image: img(scenes.kitchen),
      conversations: turns("<image>\nWhat colour is the mug on the table?", "The mug is red."),
      caption:
        "A wooden kitchen table against a beige wall. On the left of the table stands a red mug with a handle on its right side; on the right lies a round blue plate.",
      det: det(scenes.kitchen),
    },
    {
      id: "demo-street",
      image: img(scenes.street),
      conversations: turns(
        "<image>\nWhat colour is the car?",
        "The car is green.",
        "How many wheels of the car can you see?",
        "Two wheels are visible.",
        "Which light of the traffic light is on?",
        "The red light at the top is on, so traffic has to stop.",
      ),
      det: det(scenes.street),
    },
    {
      id: "demo-bookshelf",
      image: img(scenes.bookshelf),
      conversations: turns(
        "<image>\nHow many books are on the top shelf?",
        "There are five books on the top shelf.",
      ),
      caption: [
        { from: "human", value: "<image>\nDescribe the image in detail." },
        {
          from: "gpt",
          value:
            "A brown wooden bookshelf with three shelves. The top shelf holds five books, the middle shelf three and the bottom shelf four, in red, blue, green, purple, orange and teal.",
        },
      ],
    },
    {
      id: "demo-chart",
      image: img(scenes.chart),
      conversations: turns(
        "Which month has the highest sales in this chart, and how many units were sold?\n<image>",
        "April has the highest sales, with 70 units sold.",
      ),
      det: det(scenes.chart),
    },
    {
      id: "demo-sign",
      image: img(scenes.sign),
      conversations: turns(
        "<image>\nWhat street name is written on the green sign?",
        "The green sign reads MAPLE AVE.",
      ),
      caption:
        "A green street name sign reading MAPLE AVE on a grey pole, above a white SPEED LIMIT 30 sign.",
      det: det(scenes.sign),
    },
    {
      id: "demo-park",
      image: img(scenes.park),
      conversations: turns(
        "<image>\nWhere is the sun in this picture?",
        "The sun is in the top right corner of the sky.",
      ),
      caption:
        "A sunny park: a yellow sun in the top right of a blue sky, a leafy green tree with a brown trunk on the left and an empty brown wooden bench on the grass to the right.",
      det: det(scenes.park),
    },
    {
      id: 7,
      image: img(scenes.shapes),
      conversations: turns(
        "<image>\nHow many circles are in the image, and what colour are they?",
        "There are three circles, all red.",
      ),
      det: det(scenes.shapes),
      source: "demo",
    },
    {
      id: "demo-clock",
      image: img(scenes.clock),
      conversations: [
        { from: "user", value: "<image>\nWhat time does the clock show?" },
        { from: "assistant", value: "The clock shows three o'clock (3:00)." },
      ],
    },
    {
      id: "demo-text-only",
      conversations: turns("What is the capital of France?", "The capital of France is Paris."),
    },
  ];

  const mmevol = [
    {
      id: "mmevol-kitchen",
      image: img(scenes.kitchen),
      caption: samples[0]?.caption,
      det: det(scenes.kitchen),
      conversations_v0: [
        {
          question: "Is the mug to the left or to the right of the plate?",
          answer:
            "First locate the red mug, then the blue plate; the mug's box ends before the plate's box starts, so the mug is to the left of the plate.",
          steps: [
            { manipulation: "Grounding(red mug)->bbox_1", description: "Locate the red mug." },
            { manipulation: "Grounding(blue plate)->bbox_2", description: "Locate the blue plate." },
            { manipulation: "None", description: "Compare the horizontal positions of bbox_1 and bbox_2." },
          ],
          objects: ["mug", "plate", "table"],
          skills: ["grounding", "relationship description"],
          format: "complex_reasoning",
          image_position: "single",
        },
      ],
    },
    {
      id: "mmevol-shapes",
      image: img(scenes.shapes),
      det: det(scenes.shapes),
      conversations_v0: [
        {
          question: "How many shapes are there in total?",
          answer:
            "There are three red circles, two blue squares and one green triangle, so 3 + 2 + 1 = 6 shapes.",
          steps: [
            { manipulation: "Grounding(circle)->bbox_1,bbox_2,bbox_3", description: "Find the circles." },
            { manipulation: "Grounding(square)->bbox_4,bbox_5", description: "Find the squares." },
            { manipulation: "Grounding(triangle)->bbox_6", description: "Find the triangle." },
            { manipulation: "Calculate(3+2+1)->6", description: "Add up the counts." },
          ],
          objects: ["circle", "square", "triangle"],
          skills: ["existence", "calculating"],
          format: "norm",
          imagePosition: "single",
        },
        {
          question: "What colour is the triangle?",
          answer: "The triangle is green.",
          objects: ["triangle"],
          skills: ["referencing"],
        },
      ],
    },
  ];

  await writeFile(join(seedsDir, "demo.jsonl"), `${samples.map((s) => JSON.stringify(s)).join("\n")}\n`);
  await writeFile(join(seedsDir, "demo-mmevol.json"), `${JSON.stringify(mmevol, null, 2)}\n`);
  const run = {
    rounds: 3,
    model: "gpt-4o-mini",
    weights: { perception: 0.5, reasoning: 0.25, interaction: 0.25 },
    seed: 3407,
  };
  await writeFile(join(here, "run.json"), `${JSON.stringify(run, null, 2)}\n`);

  let total = 0;
  for (const name of await readdir(imagesDir)) total += (await stat(join(imagesDir, name))).size;
  process.stdout.write(
    `wrote ${Object.keys(scenes).length} images (${Math.round(total / 1024)} KB), ${samples.length} LLaVA samples, ${mmevol.length} MMEvol samples\n`,
  );
}

await main();
