import { CreateBucketCommand, ListMultipartUploadsCommand, S3Client } from "@aws-sdk/client-s3";
import { describe, expect, it } from "vitest";
import { S3BlobStore } from "../../functions/adapters/aws/s3-blob-store.ts";
import { ensureMoto, motoClientConfig, uniqueName } from "../helpers/moto.ts";

const { endpoint } = await ensureMoto();

/** A client whose UploadPart of part `failPart` fails at once, as a throttled or broken connection would. */
function failingClient(failPart: number) {
  const client = new S3Client({ ...motoClientConfig(endpoint), forcePathStyle: true });
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const input = args.input as { PartNumber?: number };
      if (context.commandName === "UploadPartCommand" && input.PartNumber === failPart)
        throw Object.assign(new Error("injected: part upload failed"), { name: "InternalError" });
      return next(args);
    },
    { step: "initialize", name: "failPart" },
  );
  return client;
}

describe("S3BlobStore.writer when the upload fails mid-way", () => {
  it("rejects a write or the close with the upload's own error, without hanging, and leaves no parts", async () => {
    const client = failingClient(2);
    const bucket = uniqueName("wfail");
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
    const store = new S3BlobStore({ client, bucket });
    await store.put("w/out.jsonl", "old\n");
    const writer = store.writer("w/out.jsonl");
    const line = `${"x".repeat(1023)}\n`;
    let failure: unknown = null;
    try {
      for (let i = 0; i < 20 * 1024; i++) await writer.write(line);
      await writer.close();
    } catch (error) {
      failure = error;
      await writer.abort();
    }
    expect(String(failure)).toContain("injected: part upload failed");
    expect(new TextDecoder().decode(await store.get("w/out.jsonl"))).toBe("old\n");
    const uploads = await client.send(new ListMultipartUploadsCommand({ Bucket: bucket }));
    expect(uploads.Uploads ?? []).toEqual([]);
  }, 60_000);
});
