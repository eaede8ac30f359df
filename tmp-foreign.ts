import { startForeignServer } from "./test/helpers/foreign-openai.ts";
const tpm = Number(process.argv[2] ?? 400000);
const server = await startForeignServer({ apiKey: "sk-rehearsal-0123456789abcdef", tokensPerMinute: tpm, latencyMs: [1000, 3000], batch: { pollsPerStage: 2 } });
console.log(server.url);
process.on("SIGTERM", async () => { console.log(JSON.stringify({ chat: server.stats.chatRequests, answered: server.stats.chatAnswered, c429: server.stats.chat429, cached: server.stats.cachedTokens, prompt: server.stats.promptTokens, batches: server.stats.batchesCreated })); await server.close(); process.exit(0); });
