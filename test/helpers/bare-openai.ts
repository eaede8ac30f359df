import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

/** The key the bare server takes. */
export const BARE_KEY = "sk-bare-secret-key";

/**
 * A compatible server as some are: no rate-limit headers, no prompt_tokens_details, no Batch API, and (with
 * `refuse`) every chat completion with an image a 400. A 401 echoes the Authorization header, as a careless proxy might.
 */
export async function startBareServer(): Promise<{
  url: string;
  refuse: { on: boolean };
  close: () => Promise<void>;
}> {
  const refuse = { on: false };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString();
      const json = (status: number, body: unknown) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(body));
      };
      if (req.headers.authorization !== `Bearer ${BARE_KEY}`)
        return json(401, { error: { message: `bad key: ${req.headers.authorization}` } });
      if (req.method === "POST" && req.url === "/v1/chat/completions") {
        if (refuse.on && body.includes("image_url"))
          return json(400, {
            error: { message: "this server takes no images", type: "invalid_request_error" },
          });
        return json(200, {
          id: "chatcmpl-1",
          object: "chat.completion",
          created: 1,
          model: "gpt-4o-mini",
          choices: [
            { index: 0, message: { role: "assistant", content: '{"answer":"ok"}' }, finish_reason: "stop" },
          ],
          usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 },
        });
      }
      json(404, { detail: "Not Found" });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`,
    refuse,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
