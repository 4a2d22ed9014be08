// The browser end-to-end test: the chat page in Chromium, through the REAL gateway
// (ic-ws-gateway), the embedded replica (ic-ws-replica) and the chat canister wasm; bob's page
// goes through a tampering proxy. Saves artifacts/chat.png (and chat-alice.png).
import { test, after } from "node:test";
import { ensureChromium } from "../lib/chromium.mjs";
import { buildPage } from "../lib/page-build.mjs";
import { stopAll } from "../lib/proc.mjs";

const chromium = ensureChromium();
const dist = chromium.skip ? undefined : buildPage();
const { serveStatic } = await import("../lib/static.mjs");
const { startStack } = await import("../lib/stack.mjs");
const { runChatScenario } = await import("../lib/scenario.mjs");
after(stopAll);

test("browser (real replica + gateway + chat canister): two pages chat, tampering is detected and never displayed, a page opened later shows the room's history", { skip: chromium.skip, timeout: 1_800_000 }, async () => {
  const stack = await startStack();
  const web = await serveStatic(dist);
  try {
    await runChatScenario({ chromiumPath: chromium.path, staticUrl: web.url, stack, screenshotName: "chat.png", history: true, log: (m) => console.log(`# ${m}`) });
  } finally {
    await stack.stop();
  }
});
