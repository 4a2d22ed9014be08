// The chat page in Chromium against client-js's fake IC + gateway (test root key, real BLS
// certificates): checks the page itself without the Rust stack. The real-stack test is
// chat-real-stack.test.mjs.
import { test, after } from "node:test";
import { ensureChromium } from "../lib/chromium.mjs";
import { buildPage } from "../lib/page-build.mjs";
import { serveStatic } from "../lib/static.mjs";
import { startFakeChat } from "../lib/fake-stack.mjs";
import { runChatScenario } from "../lib/scenario.mjs";
import { stopAll } from "../lib/proc.mjs";

const chromium = ensureChromium();
after(stopAll);

test("browser (fake gateway): two pages chat, tampering is detected and never displayed", { skip: chromium.skip, timeout: 180_000 }, async () => {
  const dist = buildPage();
  const web = await serveStatic(dist);
  const stack = await startFakeChat();
  try {
    await runChatScenario({ chromiumPath: chromium.path, staticUrl: web.url, stack, screenshotName: "chat-fake.png", log: (m) => console.log(`# ${m}`) });
  } finally {
    await stack.stop();
  }
});
