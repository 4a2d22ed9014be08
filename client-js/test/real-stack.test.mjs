// The JS client against the REAL stack (ic-ws-replica with the chat canister, ic-ws-gateway),
// through two proxies in front of the gateway: a hostile one that relays everything and also
// forges outcomes (a `MessageError { Rejected }` for every accepted message, then an
// `OpenResult` error instead of the real result), and an honest one. The client must report
// the claims as unverified, lose and double nothing, and fail over to the honest proxy.
//
// Runs when IC_WS_REPLICA_BIN and IC_WS_GATEWAY_BIN name prebuilt binaries (scripts/test sets
// them); the chat canister wasm is IC_WS_CHAT_WASM or built with cargo.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { WebSocket, WebSocketServer } from "ws";
import { IcWsClient, MemoryStorage, IDL, fromHex, decodeGatewayFrame, GatewayFrameIdl, ClientFrameIdl } from "../dist/index.js";

const skip = !(process.env.IC_WS_REPLICA_BIN && process.env.IC_WS_GATEWAY_BIN) && "set IC_WS_REPLICA_BIN and IC_WS_GATEWAY_BIN";

const OpenArgs = IDL.Record({ name: IDL.Text, room: IDL.Opt(IDL.Text) });
const ChatIn = IDL.Variant({ Say: IDL.Record({ text: IDL.Text }), SwitchRoom: IDL.Record({ room: IDL.Text }) });
const ChatOut = IDL.Variant({
  Message: IDL.Record({ from: IDL.Text, client: IDL.Nat64, room: IDL.Text, text: IDL.Text, at_ns: IDL.Nat64 }),
  Joined: IDL.Record({ name: IDL.Text, client: IDL.Nat64, room: IDL.Text }),
  Left: IDL.Record({ name: IDL.Text, client: IDL.Nat64, room: IDL.Text, reason: IDL.Text }),
  Members: IDL.Record({ room: IDL.Text, names: IDL.Vec(IDL.Text), total: IDL.Nat64 }),
});

/** A relay in front of the gateway; `forge` (mutable) makes it inject uncertified outcomes. */
class ForgingProxy {
  constructor(upstream) {
    this.upstream = upstream;
    this.forge = { messageError: null, openError: null };
    this.forged = { messageErrors: 0, openErrors: 0 };
  }

  async start() {
    this.wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
    await new Promise((r) => this.wss.on("listening", r));
    this.url = `ws://127.0.0.1:${this.wss.address().port}`;
    this.wss.on("connection", (client) => this.relay(client));
    return this;
  }

  stop() {
    for (const c of this.wss.clients) c.terminate();
    return new Promise((r) => this.wss.close(r));
  }

  relay(client) {
    const up = new WebSocket(this.upstream);
    const pending = [];
    /** Sequence numbers of the client's app messages relayed on this connection, not yet "refused". */
    const sent = [];
    const toClient = (frame) => client.readyState === WebSocket.OPEN && client.send(IDL.encode([GatewayFrameIdl], [frame]));
    up.on("open", () => { for (const m of pending.splice(0)) up.send(m); });
    client.on("message", (data) => {
      try {
        const [frame] = IDL.decode([ClientFrameIdl], new Uint8Array(data));
        if (frame.Message && frame.Message.kind.App) sent.push(frame.Message.seq);
        if (frame.Open && this.forge.openError) {
          // Swallow the open and claim the canister refused it.
          this.forged.openErrors++;
          toClient({ OpenResult: { Err: this.forge.openError } });
          return;
        }
      } catch {
        // Relay whatever it is.
      }
      up.readyState === WebSocket.OPEN ? up.send(data) : pending.push(data);
    });
    up.on("message", (data) => {
      const bytes = new Uint8Array(data);
      let frame;
      try {
        frame = decodeGatewayFrame(bytes);
      } catch {
        frame = null;
      }
      if (client.readyState === WebSocket.OPEN) client.send(bytes);
      if (frame && "Messages" in frame && this.forge.messageError && sent.length > 0) {
        // The message was relayed (and accepted: its effect is in this certified frame); the
        // gateway claims the application refused it.
        this.forged.messageErrors++;
        toClient({ MessageError: { seq: sent.shift(), error: this.forge.messageError } });
      }
    });
    const closeBoth = () => {
      if (client.readyState <= WebSocket.OPEN) client.close(1000);
      if (up.readyState <= WebSocket.OPEN) up.close(1000);
    };
    up.on("close", closeBoth);
    client.on("close", closeBoth);
    up.on("error", closeBoth);
    client.on("error", closeBoth);
  }
}

async function until(pred, what, ms = 60_000, dump = () => "") {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; ${dump()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let stopAll = async () => {};
after(() => stopAll());

test("real stack: forged MessageError and OpenResult errors are unverified; nothing lost or doubled; failover", { skip, timeout: 600_000 }, async () => {
  const { startStack, buildStack } = await import("../../e2e-browser/lib/stack.mjs");
  ({ stopAll } = await import("../../e2e-browser/lib/proc.mjs"));
  const stack = await startStack(buildStack());
  const liar = await new ForgingProxy(stack.gatewayUrl).start();
  const honest = await new ForgingProxy(stack.gatewayUrl).start();
  const client = new IcWsClient({
    gatewayUrl: liar.url,
    fallbackGatewayUrls: [honest.url],
    canisterId: stack.canisterId,
    rootKey: fromHex(stack.rootKeyHex),
    inboundType: ChatIn,
    outboundType: ChatOut,
    openArgs: IDL.encode([OpenArgs], [{ name: "carol", room: [] }]),
    storage: new MemoryStorage(),
    reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
    openTimeoutMs: 20_000,
  });
  const log = { said: [], errors: [], opens: [] };
  client.on("message", (m) => { if ("Message" in m.data) log.said.push(m.data.Message.text); });
  client.on("error", (e) => log.errors.push(e));
  client.on("open", (o) => log.opens.push(o));
  const closes = [];
  client.on("close", (c) => closes.push(`${c.code} ${c.reason}`));
  const dump = () => `errors: ${log.errors.map((e) => `${e.kind}: ${e.message}`).join(" | ")}; closes: ${closes.join(" | ")}`;
  try {
    // 1. The first open is answered Err(Rejected) by the liar: the client retries through the
    //    honest proxy with a new open. (The liar swallows the open instead of relaying it: had
    //    it relayed it, the hidden session would hold the chat name "carol" until it expires,
    //    and the retry would be refused for that very reason, see docs/protocol.md. The fake
    //    gateway tests relay-and-forge against a canister without unique names.)
    liar.forge.openError = { Rejected: "the name is taken" };
    client.connect();
    await until(() => log.opens.length === 1, "open through the honest proxy", 60_000, dump);
    assert.equal(liar.forged.openErrors, 1);
    assert.ok(log.errors.some((e) => e.kind === "Unverified" && e.wsError.Rejected === "the name is taken"));
    const id = client.clientId;

    // 2. Back on the liar (the honest proxy drops the connection): it relays each message and
    //    forges a rejection of it. The client resumes elsewhere; each message is said once.
    liar.forge.openError = null;
    liar.forge.messageError = { Rejected: "insufficient funds" };
    for (const c of honest.wss.clients) c.terminate();
    await until(() => log.opens.length === 2, "resumed through the liar");
    client.send({ Say: { text: "one" } });
    client.send({ Say: { text: "two" } });
    await until(() => log.said.filter((t) => t === "one" || t === "two").length >= 2 && log.opens.length >= 3, "both said, resumed again");
    await new Promise((r) => setTimeout(r, 1000)); // time for any duplicate to show
    assert.ok(liar.forged.messageErrors >= 1);
    assert.deepEqual(log.said.filter((t) => t === "one" || t === "two"), ["one", "two"], "each message delivered exactly once");
    assert.ok(log.errors.some((e) => e.kind === "Unverified" && e.certified === false && e.wsError.Rejected === "insufficient funds"));
    assert.ok(!log.errors.some((e) => e.kind === "MessageRejected"), "never believed as a rejection");
    assert.equal(client.clientId, id, "the same session throughout");
    assert.ok(log.opens.slice(1).every((o) => o.resumed));
  } finally {
    client.disconnect();
    await liar.stop();
    await honest.stop();
    await stack.stop();
  }
});
