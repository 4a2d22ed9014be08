// The browser end-to-end test: the chat page in Chromium, through the REAL gateway
// (ic-ws-gateway), the embedded replica (ic-ws-replica) and the chat canister wasm; bob's page
// goes through a tampering proxy. Saves artifacts/chat.png.
import { test, after } from "node:test";
import { ensureChromium } from "../lib/chromium.mjs";
import { buildPage } from "../lib/page-build.mjs";
import { serveStatic } from "../lib/static.mjs";
import { startStack } from "../lib/stack.mjs";
import { runChatScenario } from "../lib/scenario.mjs";
import { stopAll } from "../lib/proc.mjs";

const chromium = ensureChromium();
after(stopAll);

test("browser (real replica + gateway + chat canister): two pages chat, tampering is detected and never displayed", { skip: chromium.skip, timeout: 1_800_000 }, async () => {
  const stack = await startStack();
  const dist = buildPage();
  const web = await serveStatic(dist);
  try {
    await runChatScenario({ chromiumPath: chromium.path, staticUrl: web.url, stack, screenshotName: "chat.png", log: (m) => console.log(`# ${m}`) });
  } finally {
    await stack.stop();
  }
});
