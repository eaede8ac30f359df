import { Tiktoken } from "js-tiktoken/lite";
import o200kBase from "js-tiktoken/ranks/o200k_base";
import type { ContentPart } from "../../ports/llm.ts";

/** Like the port's ChatMessage, but any role: the simulator also receives assistant turns. */
export interface SimMessage {
  readonly role: string;
  readonly content: string | readonly ContentPart[];
}

export interface ImageSize {
  readonly width: number;
  readonly height: number;
}

let encoder: Tiktoken | null = null;

/** Building the o200k encoder parses a 2 MB rank table, so do it once and only when needed. */
function getEncoder(): Tiktoken {
  encoder ??= new Tiktoken(o200kBase);
  return encoder;
}

/** Tokens of text; special-token strings count as plain text, as they do in a user prompt. */
export function encodeText(text: string): number[] {
  return getEncoder().encode(text, [], []);
}

export function countTextTokens(text: string): number {
  return text.length === 0 ? 0 : encodeText(text).length;
}

export function decodeTokens(tokens: number[]): string {
  return getEncoder().decode(tokens);
}

/**
 * Models billed by 32-px patches (at most 1,536 an image) times a multiplier, whatever the detail, as
 * OpenAI's vision guide gives them; longest name first, as "gpt-4.1-mini" must not be taken for "gpt-4.1".
 */
const PATCH_MULTIPLIERS: readonly (readonly [string, number])[] = [
  ["gpt-4.1-mini", 1.62],
  ["gpt-4.1-nano", 2.46],
  ["gpt-5-mini", 1.62],
  ["gpt-5-nano", 2.46],
  ["o4-mini", 1.72],
];
const PATCH = 32;
const MAX_PATCHES = 1536;

/** 32-px patches covering the image, scaled down first (keeping its aspect) when more than 1,536 would. */
function patchesOf(width: number, height: number): number {
  const cover = (w: number, h: number) => Math.ceil(w / PATCH) * Math.ceil(h / PATCH);
  if (cover(width, height) <= MAX_PATCHES) return cover(width, height);
  let scale = Math.sqrt((PATCH * PATCH * MAX_PATCHES) / (width * height));
  // Then down to whole patches along the tighter side.
  scale *= Math.min(
    Math.floor((width * scale) / PATCH) / ((width * scale) / PATCH),
    Math.floor((height * scale) / PATCH) / ((height * scale) / PATCH),
  );
  return Math.min(MAX_PATCHES, cover(width * scale, height * scale));
}

/**
 * The provider's image rule: for most models a base cost plus a cost per 512-px tile of the rescaled image;
 * for the patch-billed ones (PATCH_MULTIPLIERS) the image's 32-px patches times the model's multiplier.
 */
export function imageTokens(
  model: string,
  detail: "low" | "high" | "auto",
  width: number,
  height: number,
): number {
  const patched = PATCH_MULTIPLIERS.find(([name]) => model.startsWith(name));
  if (patched !== undefined) return Math.ceil(patchesOf(width, height) * patched[1]);
  const [base, tile] = model.startsWith("gpt-4o-mini") ? [2833, 5667] : [85, 170];
  if (detail === "low") return base;
  let w = width;
  let h = height;
  const fit = Math.min(1, 2048 / Math.max(w, h));
  w *= fit;
  h *= fit;
  const shortest = Math.min(1, 768 / Math.min(w, h));
  w *= shortest;
  h *= shortest;
  return base + Math.ceil(w / 512) * Math.ceil(h / 512) * tile;
}

/** What a high-detail image is billed as when its size cannot be read (e.g. a remote URL). */
const UNKNOWN_SIZE: ImageSize = { width: 1024, height: 1024 };

/** Width and height from a base64 JPEG or PNG data URL, read from the header bytes; null if unreadable. */
export function dataUrlImageSize(url: string): ImageSize | null {
  const match = /^data:[^;,]*;base64,/.exec(url);
  if (match === null) return null;
  const bytes = Buffer.from(url.slice(match[0].length), "base64");
  if (
    bytes.length >= 24 &&
    bytes.readUInt32BE(0) === 0x89504e47 &&
    bytes.toString("ascii", 12, 16) === "IHDR"
  ) {
    return { width: bytes.readUInt32BE(16), height: bytes.readUInt32BE(20) };
  }
  if (bytes.length < 4 || bytes[0] !== 0xff || bytes[1] !== 0xd8) return null;
  // Walk the JPEG segments to the first start-of-frame marker, which holds the dimensions.
  let at = 2;
  while (at + 9 < bytes.length) {
    if (bytes[at] !== 0xff) return null;
    const marker = bytes[at + 1] ?? 0;
    if (marker === 0xff) {
      at += 1;
      continue;
    }
    const isSof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isSof) return { width: bytes.readUInt16BE(at + 7), height: bytes.readUInt16BE(at + 5) };
    at += 2 + bytes.readUInt16BE(at + 2);
  }
  return null;
}

export function imagePartTokens(
  model: string,
  part: Extract<ContentPart, { type: "image_url" }>,
  imageSizes?: ReadonlyMap<string, ImageSize>,
): number {
  if (part.detail === "low") return imageTokens(model, "low", 0, 0);
  const size = imageSizes?.get(part.imageUrl) ?? dataUrlImageSize(part.imageUrl) ?? UNKNOWN_SIZE;
  return imageTokens(model, part.detail, size.width, size.height);
}

/**
 * Prompt tokens roughly as OpenAI bills a chat request: 3 per message, plus the role and content,
 * plus 3 to prime the answer. `imageSizes` (by image URL) saves decoding the data URL headers.
 */
export function countRequestTokens(
  model: string,
  messages: readonly SimMessage[],
  imageSizes?: ReadonlyMap<string, ImageSize>,
): number {
  let total = 3;
  for (const message of messages) {
    total += 3 + countTextTokens(message.role);
    if (typeof message.content === "string") {
      total += countTextTokens(message.content);
      continue;
    }
    for (const part of message.content) {
      total += part.type === "text" ? countTextTokens(part.text) : imagePartTokens(model, part, imageSizes);
    }
  }
  return total;
}

/** The response_format schema is billed as prompt text too. */
export function countSchemaTokens(schema: unknown): number {
  return schema === null || schema === undefined ? 0 : countTextTokens(JSON.stringify(schema));
}

/** A structured request's prompt tokens as the provider counts them: its messages and its schema. */
export function countPromptTokens(request: {
  readonly model: string;
  readonly messages: readonly SimMessage[];
  readonly schema: unknown;
}): number {
  return countRequestTokens(request.model, request.messages) + countSchemaTokens(request.schema);
}
