// Protocol version 2 outcomes, attacked: a hostile gateway (a second listener of the fake,
// in front of the same honest fake canister) forges MessageError, forges OpenResult errors,
// claims OpenRejected without the certified message and withholds outcomes. The client must
// report each claim as unverified, never drop or double a message, keep going through the
// honest gateway, and believe only certified outcomes.
import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { IDL } from "@icp-sdk/core/candid";
import { IcWsClient, MemoryStorage } from "../dist/index.js";
import { FakeGateway } from "./fake-gateway.mjs";

let gw;
let clients = [];

beforeEach(async () => {
  gw = await new FakeGateway().start();
});
afterEach(async () => {
  for (const c of clients) c.disconnect();
  clients = [];
  await gw.stop();
});

/** A client whose first gateway is `first` (a hostile listener), then the honest one. */
function makeClient(first, opts = {}) {
  const c = new IcWsClient({
    gatewayUrl: first,
    fallbackGatewayUrls: [gw.url],
    canisterId: gw.canisterId,
    rootKey: gw.root.der,
    inboundType: IDL.Text,
    outboundType: IDL.Text,
    storage: new MemoryStorage(),
    reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
    openTimeoutMs: 400,
    ...opts,
  });
  const log = { messages: [], errors: [], opens: [], closes: [] };
  c.on("message", (m) => log.messages.push(m));
  c.on("error", (e) => log.errors.push(e));
  c.on("open", (o) => log.opens.push(o));
  c.on("close", (e) => log.closes.push(e));
  clients.push(c);
  return { c, log };
}

async function until(pred, what, ms = 5000) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test("outcomes: a forged MessageError is unverified; the message is neither dropped nor doubled", async () => {
  const knobs = {};
  const liar = await gw.listen(knobs);
  const { c, log } = makeClient(liar);
  c.connect();
  await until(() => log.opens.length === 1, "open through the (so far honest) first gateway");
  knobs.forgeMessageError = { Rejected: "insufficient funds" };
  c.send("pay");
  await until(() => log.opens.length === 2, "resumed elsewhere");
  await until(() => log.messages.length === 1, "the echo");
  const claim = log.errors.find((e) => e.kind === "Unverified");
  assert.ok(claim, "reported as unverified");
  assert.equal(claim.certified, false);
  assert.deepEqual(claim.wsError, { Rejected: "insufficient funds" });
  assert.ok(!log.errors.some((e) => e.kind === "MessageRejected"), "never reported as a rejection");
  assert.equal(log.opens[1].resumed, true);
  c.send("more");
  await until(() => log.messages.length === 2, "second echo");
  assert.deepEqual(log.messages.map((m) => m.data), ["echo: pay", "echo: more"]);
  assert.deepEqual(gw.received.map((m) => m.seq), [0n, 1n], "each accepted once");
});

test("outcomes: a forged open refusal on the first connect fails over to the next gateway", async () => {
  const liar = await gw.listen({ forgeOpenError: { Rejected: "the name is taken" } });
  const { c, log } = makeClient(liar);
  c.send("queued before the session");
  c.connect();
  await until(() => log.opens.length === 1, "open through the honest gateway");
  assert.equal(log.errors[0].kind, "Unverified");
  assert.ok(log.closes[0].willReconnect);
  await until(() => log.messages.length === 1, "echo");
  assert.equal(log.messages[0].data, "echo: queued before the session");
  assert.equal(c.state, "open");
});

test("outcomes: an OpenRejected claim without the certified message is retried after the open timeout", async () => {
  const liar = await gw.listen({ forgeOpenError: { OpenRejected: { client_id: 999n, reason: "banned" } } });
  const { c, log } = makeClient(liar);
  const started = Date.now();
  c.connect();
  await until(() => log.opens.length === 1, "open through the honest gateway");
  assert.ok(Date.now() - started >= 350, "waited for the certified refusal first");
  assert.ok(log.errors.some((e) => e.kind === "Unverified"));
  assert.ok(!log.errors.some((e) => e.kind === "OpenRejected"));
});

test("outcomes: a certified OpenRejected is a fact and stops the client", async () => {
  gw.rejectOpen = "the name is taken";
  const { c, log } = makeClient(gw.url);
  c.connect();
  await until(() => c.state === "closed", "closed");
  const e = log.errors.find((x) => x.kind === "OpenRejected");
  assert.ok(e, JSON.stringify(log.errors.map((x) => x.kind)));
  assert.equal(e.certified, true);
  assert.deepEqual(e.wsError, { Rejected: "the name is taken" });
  assert.equal(log.closes.at(-1).willReconnect, false);
  assert.equal(gw.opens.length, 1, "no retry");
});

test("outcomes: withheld outcomes time out and the client fails over", async () => {
  const quiet = await gw.listen({ withhold: true });
  const { c, log } = makeClient(quiet);
  c.connect();
  await until(() => log.opens.length === 1, "open through the honest gateway");
  assert.ok(log.errors.some((e) => e.kind === "Transport" && /no certified confirmation/.test(e.message)));
});

test("outcomes: a certified MessageRejected is a fact and the message leaves the resend queue", async () => {
  const { c, log } = makeClient(gw.url);
  gw.onApp = (s) => gw.push(s, { MessageRejected: { inbound_seq: s.nextInSeq - 1n, error: { Rejected: "no" } } });
  c.connect();
  c.send("bad");
  await until(() => log.errors.some((e) => e.kind === "MessageRejected"), "rejection");
  const e = log.errors.find((x) => x.kind === "MessageRejected");
  assert.equal(e.certified, true);
  assert.equal(e.seq, 0n);
  gw.dropAll();
  await until(() => log.opens.length === 2, "resumed");
  assert.equal(gw.received.length, 1, "not re-sent");
});

test("outcomes: a payload over the certified limit is refused before signing", async () => {
  gw.maxInboundPayloadBytes = 100n;
  const { c, log } = makeClient(gw.url);
  c.connect();
  await until(() => log.opens.length === 1, "open");
  assert.throws(() => c.send("x".repeat(200)), /exceeds/);
  c.send("ok");
  await until(() => log.messages.length === 1, "echo");
  assert.equal(gw.received[0].seq, 0n, "nothing was signed for the refused payload");
});
