// The chat page in Chromium against client-js's fake IC + gateway (test root key, real BLS
// certificates): checks the page itself without the Rust stack. The real-stack test is
// chat-real-stack.test.mjs.
import { test, after } from "node:test";
import { ensureChromium } from "../lib/chromium.mjs";
import { buildPage } from "../lib/page-build.mjs";
import { stopAll } from "../lib/proc.mjs";

const chromium = ensureChromium();
// Build the client and the page first: the helpers below import the built client.
const dist = chromium.skip ? undefined : buildPage();
const { serveStatic } = await import("../lib/static.mjs");
const { startFakeChat } = await import("../lib/fake-stack.mjs");
const { runChatScenario } = await import("../lib/scenario.mjs");
after(stopAll);

test("browser (fake gateway): two pages chat, tampering is detected and never displayed", { skip: chromium.skip, timeout: 180_000 }, async () => {
  const web = await serveStatic(dist);
  const stack = await startFakeChat();
  try {
    await runChatScenario({ chromiumPath: chromium.path, staticUrl: web.url, stack, screenshotName: "chat-fake.png", log: (m) => console.log(`# ${m}`) });
  } finally {
    await stack.stop();
  }
});
