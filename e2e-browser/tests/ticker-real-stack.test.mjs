// The ticker page in Chromium on the real stack: the ticker canister (timer ticks published to
// per-symbol topics) behind ic-ws-gateway; the page shows verified quotes that keep moving.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { ensureChromium, launch } from "../lib/chromium.mjs";
import { buildTickerPage } from "../lib/page-build.mjs";
import { stopAll } from "../lib/proc.mjs";

const chromium = ensureChromium();
const dist = chromium.skip ? undefined : buildTickerPage();
const { serveStatic } = await import("../lib/static.mjs");
const { buildStack, startStack } = await import("../lib/stack.mjs");
const { ARTIFACTS } = await import("../lib/scenario.mjs");
after(stopAll);

test("browser (real replica + gateway + ticker canister): live quotes, each verified", { skip: chromium.skip, timeout: 1_800_000 }, async () => {
  const stack = await startStack(buildStack({ ticker: true }));
  const web = await serveStatic(dist);
  const browser = await launch(chromium.path);
  try {
    const page = await browser.context.newPage();
    const q = new URLSearchParams({ gateway: stack.gatewayUrl, canister: stack.tickerCanisterId, rootKey: stack.rootKeyHex });
    await page.goto(`${web.url}?${q}`);
    await page.waitForSelector("#state[data-state=open]", { timeout: 60_000 });
    for (const symbol of ["ICP", "BTC", "ETH"]) await page.locator("#quotes tr", { hasText: symbol }).waitFor({ timeout: 30_000 });
    const tickOf = async () => Number(await page.locator("#quotes tr:has-text('ICP') td.tick").textContent());
    const first = await tickOf();
    // The canister ticks every second: the page must show later quotes, verified.
    await page.waitForFunction((t) => Number([...document.querySelectorAll("#quotes tr")].find((r) => r.textContent.includes("ICP"))?.querySelector("td.tick")?.textContent) >= t + 2, first, { timeout: 30_000 });
    assert.match(await page.locator("#quotes tr:has-text('BTC') td.verified").textContent(), /✓/);
    assert.equal(await page.locator("#banner.show").count(), 0, "no error shown");
    await page.screenshot({ path: join(ARTIFACTS, "ticker.png") });
  } finally {
    await browser.close();
    await stack.stop();
  }
});
