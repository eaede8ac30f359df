import { describe, expect, it } from "vitest";
import { resolveImageKey } from "../../functions/evolution/image-path.ts";

function key(root: string, path: string): string {
  const result = resolveImageKey(root, path);
  if (!result.ok) throw new Error(`expected ok, got: ${result.error}`);
  return result.key;
}

function error(root: string, path: string): string {
  const result = resolveImageKey(root, path);
  if (result.ok) throw new Error(`expected an error, got key ${result.key}`);
  return result.error;
}

describe("resolveImageKey", () => {
  it("joins a nested relative path to the root with /", () => {
    expect(key("images", "coco/train2017/0001.jpg")).toBe("images/coco/train2017/0001.jpg");
    expect(key("seeds/run1/images/", "a.png")).toBe("seeds/run1/images/a.png");
    expect(key("", "coco/0001.jpg")).toBe("coco/0001.jpg");
  });

  it("normalises . and .. that stay inside the root, and repeated slashes", () => {
    expect(key("images", "./coco//a/../b.png")).toBe("images/coco/b.png");
    expect(key("./images/", "x/./y.png")).toBe("images/x/y.png");
  });

  it("treats backslashes as separators", () => {
    expect(key("images", "coco\\train\\a.jpg")).toBe("images/coco/train/a.jpg");
    expect(key("data\\imgs", "a.jpg")).toBe("data/imgs/a.jpg");
    expect(error("images", "..\\..\\etc\\passwd")).toMatch(/climbs out of the image root/);
  });

  it.each([["../secret.png"], ["a/../../secret.png"], ["coco/../../../etc/passwd"], [".."]])(
    "rejects %s, which escapes the root",
    (path) => {
      expect(error("images", path)).toBe(
        `image path ${JSON.stringify(path)} climbs out of the image root with ..`,
      );
    },
  );

  it("rejects a path that only names the root", () => {
    expect(error("images", ".")).toMatch(/names the image root itself/);
    expect(error("images", "a/..")).toMatch(/names the image root itself/);
  });

  it.each([
    ["http://example.com/a.png", "http:"],
    ["https://example.com/a.png", "https:"],
    ["HTTP://EXAMPLE.COM/a.png", "HTTP:"],
    ["http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http:"],
    ["file:///etc/passwd", "file:"],
    ["data:image/png;base64,iVBORw0KGgo=", "data:"],
    ["s3://other-bucket/a.png", "s3:"],
    ["C:\\Windows\\a.png", "C:"],
  ])("rejects the URL %s", (path, scheme) => {
    expect(error("images", path)).toBe(
      `image path ${JSON.stringify(path)} is a URL or drive path (${scheme}), not a path under the image root`,
    );
  });

  it("rejects network paths", () => {
    expect(error("images", "//169.254.169.254/latest")).toMatch(/is a network path/);
    expect(error("images", "\\\\server\\share\\a.png")).toMatch(/is a network path/);
  });

  it("rejects absolute paths under a relative root", () => {
    expect(error("images", "/etc/passwd")).toMatch(/is absolute; give it relative to the image root/);
    expect(error("", "/images/a.png")).toMatch(/is absolute/);
  });

  it("accepts absolute paths inside an absolute root and rejects the rest", () => {
    expect(key("/data/images", "/data/images/coco/a.jpg")).toBe("/data/images/coco/a.jpg");
    expect(key("/data/images", "coco/a.jpg")).toBe("/data/images/coco/a.jpg");
    expect(error("/data/images", "/data/images-other/a.jpg")).toMatch(/is outside the image root/);
    expect(error("/data/images", "/data/images")).toMatch(/is outside the image root/);
    expect(error("/data/images", "/data/images/../secret/a.jpg")).toMatch(/is outside the image root/);
    expect(error("/data/images", "/etc/passwd")).toMatch(/is outside the image root/);
    expect(error("/data/images", "/../../etc/passwd")).toMatch(/climbs above the file system root/);
  });

  it("rejects empty paths and NUL bytes", () => {
    expect(error("images", "")).toBe('image path "" is empty');
    expect(error("images", "   ")).toBe('image path "   " is empty');
    expect(error("images", "a.png\0.jpg")).toMatch(/contains a NUL byte/);
    expect(error("images\0", "a.png")).toMatch(/contains a NUL byte/);
  });

  it("rejects a root that climbs above its start", () => {
    expect(error("../images", "a.png")).toMatch(/the image root "..\/images" climbs above its start/);
  });

  it("keeps names that merely contain dots or colons after the first segment", () => {
    expect(key("images", "..hidden/a..b.png")).toBe("images/..hidden/a..b.png");
    expect(key("images", "coco/12:30.png")).toBe("images/coco/12:30.png");
  });
});
