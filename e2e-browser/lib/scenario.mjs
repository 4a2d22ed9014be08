// The browser scenario shared by the fake-stack and the real-stack tests: two Chromium pages
// chat through a gateway (bob's through the tampering proxy); then the proxy forges a chat
// message and bob's page must show the tampering banner, never the forged text, and get the
// real message once the proxy stops forging (resume).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launch } from "./chromium.mjs";
import { ROOT } from "./page-build.mjs";
import { TamperProxy, FORGED_PREFIX } from "./tamper-proxy.mjs";
import { ChatOut } from "./chat-idl.mjs";

export const ARTIFACTS = join(ROOT, "artifacts");

function pageUrl(base, { gatewayUrl, canisterId, rootKeyHex }, name, signIn = false) {
  const q = new URLSearchParams({ gateway: gatewayUrl, canister: canisterId, name });
  if (signIn) q.set("signin", "1");
  if (rootKeyHex) q.set("rootKey", rootKeyHex);
  return `${base}?${q}`;
}

async function chatTexts(page) {
  return page.locator("#messages li.chat .text").allTextContents();
}

export async function runChatScenario({ chromiumPath, staticUrl, stack, screenshotName, history = false, log = () => {} }) {
  const proxy = await new TamperProxy(stack.gatewayUrl, ChatOut).start();
  const browser = await launch(chromiumPath);
  const consoleLines = [];
  try {
    const alice = await browser.context.newPage();
    const bob = await browser.context.newPage();
    for (const [who, p] of [["alice", alice], ["bob", bob]]) {
      p.on("console", (m) => consoleLines.push(`[${who}] ${m.type()}: ${m.text()}`));
      p.on("pageerror", (e) => consoleLines.push(`[${who}] pageerror: ${e.message}`));
    }
    await alice.goto(pageUrl(staticUrl, stack, "alice"));
    await bob.goto(pageUrl(staticUrl, { ...stack, gatewayUrl: proxy.url }, "bob"));
    await alice.waitForSelector("#state[data-state=open]", { timeout: 60_000 });
    await bob.waitForSelector("#state[data-state=open]", { timeout: 60_000 });
    log("both pages connected");

    // Both see each other in the member list.
    await alice.locator("#members li", { hasText: "bob" }).waitFor({ timeout: 30_000 });
    await bob.locator("#members li", { hasText: "alice" }).waitFor({ timeout: 30_000 });

    // alice -> bob, bob -> alice, each shown with the verified mark.
    await alice.fill("#text", "hello bob");
    await alice.click("#send");
    const onBob = bob.locator("#messages li.chat", { hasText: "hello bob" });
    await onBob.waitFor({ timeout: 30_000 });
    assert.match(await onBob.locator(".verified").textContent(), /✓/);
    assert.match(await onBob.locator(".from").textContent(), /alice/);
    await bob.fill("#text", "hi alice");
    await bob.click("#send");
    await alice.locator("#messages li.chat", { hasText: "hi alice" }).waitFor({ timeout: 30_000 });
    log("messages delivered and verified both ways");

    // The tampering layer rewrites the next chat message on its way to bob.
    proxy.forge = true;
    await alice.fill("#text", "the real secret");
    await alice.click("#send");
    await bob.waitForSelector("#banner.show", { timeout: 30_000 });
    const banner = await bob.locator("#banner").textContent();
    assert.match(banner, /Tampering detected \(NotCertified\)/);
    assert.ok(proxy.forged >= 1, "the proxy forged at least one message");
    // Give the page time to (wrongly) render anything; then check nothing forged is shown.
    await bob.waitForTimeout(1000);
    const during = await chatTexts(bob);
    assert.ok(!during.some((t) => t.includes(FORGED_PREFIX)), `forged text displayed: ${during}`);
    assert.ok(!during.includes("the real secret"), "nothing of the tampered frame is shown");
    log(`tampering detected (${proxy.forged} forged), nothing forged displayed`);

    // Proxy honest again: bob reconnects, resumes and gets the real message exactly once.
    proxy.forge = false;
    await bob.locator("#messages li.chat", { hasText: "the real secret" }).waitFor({ timeout: 60_000 });
    await bob.waitForSelector("#state[data-state=open]", { timeout: 30_000 });
    const after = await chatTexts(bob);
    assert.equal(after.filter((t) => t === "the real secret").length, 1, `delivered once: ${after}`);
    assert.ok(!after.some((t) => t.includes(FORGED_PREFIX)));
    assert.deepEqual(after, ["hello bob", "hi alice", "the real secret"]);
    log("resumed after tampering: real message delivered once");

    // alice leaves: the canister's on_close announces it; her page offers the name form again.
    await alice.click("#leave");
    await bob.locator("#messages li.event", { hasText: "alice left (left)" }).waitFor({ timeout: 30_000 });
    await bob.waitForFunction(() => ![...document.querySelectorAll("#members li .name")].some((n) => n.textContent === "alice"), null, { timeout: 10_000 });
    await alice.waitForSelector("#join:not(.hidden)", { timeout: 10_000 });
    log("alice left: announced to bob, member list updated");

    if (history) {
      // bob reloads: the page resumes its stored session (a resume re-delivers only what was
      // not acknowledged) and asks for the room's recent messages: they are shown again,
      // verified, each once.
      await bob.reload();
      await bob.waitForSelector("#state[data-state=open]", { timeout: 60_000 });
      await bob.locator("#messages li.chat", { hasText: "the real secret" }).waitFor({ timeout: 30_000 });
      await bob.waitForTimeout(500);
      assert.deepEqual(await chatTexts(bob), ["hello bob", "hi alice", "the real secret"]);
      assert.match(await bob.locator("#whoami").textContent(), /resumed/);
      log("bob reloaded: session resumed, the room's history shown again, once");

      // A page opened now (a new tab, or a reload after leaving) starts a new session: the chat
      // canister sends the room's last messages on entering, so the page is not empty, and
      // each is verified like any message.
      const carol = await browser.context.newPage();
      carol.on("console", (m) => consoleLines.push(`[carol] ${m.type()}: ${m.text()}`));
      await carol.goto(pageUrl(staticUrl, stack, "carol", true));
      await carol.waitForSelector("#state[data-state=open]", { timeout: 60_000 });
      await carol.locator("#messages li.chat", { hasText: "the real secret" }).waitFor({ timeout: 30_000 });
      assert.deepEqual(await chatTexts(carol), ["hello bob", "hi alice", "the real secret"]);
      const marks = await carol.locator("#messages li.chat .verified").allTextContents();
      assert.ok(marks.length === 3 && marks.every((m) => /✓/.test(m)), `verified marks: ${marks}`);
      log("a page opened later shows the room's history, verified");

      // carol signed in (issue 10): bob's member list shows the principal the canister
      // verified (anonymous bob shows none); bob clicks it and sends a direct message, which
      // reaches carol's session of that principal.
      const carolPrincipal = await carol.evaluate(() => globalThis.chatClient.principal.toText());
      const badge = bob.locator("#members li", { hasText: "carol" }).locator(".who.signed");
      await badge.waitFor({ timeout: 30_000 });
      assert.match(await badge.getAttribute("title"), new RegExp(carolPrincipal));
      assert.equal(await carol.locator("#members li", { hasText: "bob" }).locator(".who").textContent(), "anonymous");
      await badge.click();
      await bob.fill("#text", "just for carol");
      await bob.click("#send");
      const direct = carol.locator("#messages li.direct", { hasText: "just for carol" });
      await direct.waitFor({ timeout: 30_000 });
      assert.match(await direct.locator(".from").textContent(), /bob → you/);
      assert.match(await direct.locator(".verified").textContent(), /✓/);
      log(`signed-in carol (${carolPrincipal}) shown to bob; bob's direct message reached her`);
    }

    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = join(ARTIFACTS, screenshotName);
    await bob.screenshot({ path: shot });
    await alice.screenshot({ path: shot.replace(/\.png$/, "-alice.png") });
    log(`screenshot: ${shot}`);
    return { shot };
  } catch (e) {
    mkdirSync(ARTIFACTS, { recursive: true });
    for (const [i, p] of browser.context.pages().entries()) {
      await p.screenshot({ path: join(ARTIFACTS, `failure-${screenshotName.replace(/\.png$/, "")}-${i}.png`) }).catch(() => {});
    }
    console.error(consoleLines.slice(-40).join("\n"));
    throw e;
  } finally {
    await browser.close();
    await proxy.stop();
  }
}
