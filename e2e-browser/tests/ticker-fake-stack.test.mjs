// The ticker page in Chromium against client-js's fake IC + gateway: it subscribes, shows
// each verified quote with its check mark, and updates as quotes arrive.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { ensureChromium, launch } from "../lib/chromium.mjs";
import { buildTickerPage } from "../lib/page-build.mjs";
import { stopAll } from "../lib/proc.mjs";

const chromium = ensureChromium();
const dist = chromium.skip ? undefined : buildTickerPage();
const { serveStatic } = await import("../lib/static.mjs");
const { IDL } = await import("../../client-js/dist/index.js");
const { FakeGateway } = await import("../../client-js/test/fake-gateway.mjs");
after(stopAll);

const Quote = IDL.Record({ at_ns: IDL.Nat64, tick: IDL.Nat64, price: IDL.Float64, symbol: IDL.Text });
const TickerIn = IDL.Variant({ Subscribe: IDL.Record({ symbols: IDL.Vec(IDL.Text) }), Unsubscribe: IDL.Record({ symbols: IDL.Vec(IDL.Text) }) });
const TickerOut = IDL.Variant({ Unsubscribed: IDL.Record({ symbols: IDL.Vec(IDL.Text) }), Price: Quote, Subscribed: IDL.Record({ symbols: IDL.Vec(IDL.Text) }) });

test("browser (fake gateway): the ticker page shows verified, updating quotes", { skip: chromium.skip, timeout: 120_000 }, async () => {
  const web = await serveStatic(dist);
  const gw = await new FakeGateway().start();
  const subs = new Map();
  const send = (s, out) => gw.push(s, { App: { topic: out.Price ? [`price/${out.Price.symbol}`] : [], payload: IDL.encode([TickerOut], [out]) } });
  gw.onApp = (s, payload) => {
    const [m] = IDL.decode([TickerIn], payload);
    subs.set(s.id, m.Subscribe.symbols);
    send(s, { Subscribed: { symbols: m.Subscribe.symbols } });
  };
  let tick = 0n;
  const timer = setInterval(() => {
    tick++;
    for (const [id, symbols] of subs) {
      const s = gw.sessions.get(id);
      for (const [i, symbol] of symbols.entries()) send(s, { Price: { at_ns: gw.now(), tick, price: 100 * (i + 1) + Number(tick), symbol } });
    }
  }, 200);
  const browser = await launch(chromium.path);
  try {
    const page = await browser.context.newPage();
    const q = new URLSearchParams({ gateway: gw.url, canister: gw.canisterId.toText(), rootKey: Buffer.from(gw.root.der).toString("hex"), symbols: "ICP,BTC" });
    await page.goto(`${web.url}?${q}`);
    await page.waitForSelector("#state[data-state=open]", { timeout: 30_000 });
    await page.locator("#quotes tr", { hasText: "BTC" }).waitFor({ timeout: 30_000 });
    const first = Number(await page.locator("#quotes tr:has-text('ICP') td.tick").textContent());
    await page.waitForFunction((t) => Number(document.querySelector("#quotes tr td.tick")?.textContent) > t + 2, first, { timeout: 30_000 });
    assert.match(await page.locator("#quotes tr:has-text('ICP') td.verified").textContent(), /✓/);
    assert.equal(await page.locator("#quotes tr").count(), 2);
  } finally {
    clearInterval(timer);
    await browser.close();
    await gw.stop();
  }
});
