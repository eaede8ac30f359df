/**
 * Turns an image path from a shard into a blob key under the run's image root.
 *
 * Shards come from users, so a path must never reach outside the root: no URLs (which would make
 * us fetch from anywhere, the cloud metadata address included), no `..` that climbs above the root,
 * no absolute paths elsewhere. Pure string logic: no file system is touched.
 */

export type ImageKeyResult = { ok: true; key: string } | { ok: false; error: string };

/** `scheme:` at the start, as in http:, file:, data:, s3: (and Windows drive letters, also refused). */
const SCHEME = /^[a-z][a-z0-9+.-]*:/i;

/** Resolves `path` (relative to `imageRoot`, or absolute under an absolute root) to a `/`-separated key. */
export function resolveImageKey(imageRoot: string, path: string): ImageKeyResult {
  if (path.includes("\0") || imageRoot.includes("\0")) return fail(path, "contains a NUL byte");
  if (path.trim().length === 0) return fail(path, "is empty");
  const slashed = path.replaceAll("\\", "/");
  const scheme = SCHEME.exec(slashed);
  if (scheme !== null)
    return fail(path, `is a URL or drive path (${scheme[0]}), not a path under the image root`);
  if (slashed.startsWith("//")) return fail(path, "is a network path, not a path under the image root");

  const rootSlashed = imageRoot.replaceAll("\\", "/");
  const rootIsAbsolute = rootSlashed.startsWith("/");
  const root = normaliseSegments(rootSlashed);
  if (root === null)
    return fail(path, `cannot be resolved: the image root "${imageRoot}" climbs above its start`);

  if (slashed.startsWith("/")) {
    if (!rootIsAbsolute) return fail(path, "is absolute; give it relative to the image root");
    const segments = normaliseSegments(slashed);
    if (segments === null) return fail(path, "climbs above the file system root");
    const inside = segments.length > root.length && root.every((segment, i) => segments[i] === segment);
    if (!inside) return fail(path, `is outside the image root "${imageRoot}"`);
    return { ok: true, key: `/${segments.join("/")}` };
  }

  const segments = normaliseSegments(slashed);
  if (segments === null) return fail(path, "climbs out of the image root with ..");
  if (segments.length === 0) return fail(path, "names the image root itself, not a file");
  const prefix = rootIsAbsolute ? "/" : "";
  return { ok: true, key: prefix + [...root, ...segments].join("/") };
}

/** Drops empty and `.` segments and applies `..`; null when `..` climbs above the start. */
function normaliseSegments(path: string): string[] | null {
  const out: string[] = [];
  for (const segment of path.split("/")) {
    if (segment === "" || segment === ".") continue;
    if (segment === "..") {
      if (out.pop() === undefined) return null;
      continue;
    }
    out.push(segment);
  }
  return out;
}

function fail(path: string, reason: string): ImageKeyResult {
  return { ok: false, error: `image path ${JSON.stringify(path)} ${reason}` };
}
