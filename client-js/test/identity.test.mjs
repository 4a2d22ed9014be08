// Issue 10 with the REAL stack (ic-ws-replica with the chat canister and the test identity
// provider, ic-ws-gateway): sessions opened with the real @icp-sdk/core identities of every
// kind the IC accepts (Ed25519, secp256k1, P-256, a delegation chain, and a canister-signature
// delegation from the test identity provider, the way Internet Identity logs a user in). The
// client checks the certified `Opened` binds the identity's principal; the chat's certified
// member list shows it; a direct message to the principal arrives. Attacks: a gateway that
// strips the proof or swaps in another client's, and an expired login.
//
// Runs when IC_WS_REPLICA_BIN and IC_WS_GATEWAY_BIN name prebuilt binaries (scripts/test sets
// them); the canisters are IC_WS_CHAT_WASM / IC_WS_TEST_IDP_WASM or built with cargo.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { WebSocket, WebSocketServer } from "ws";
import { DelegationChain, DelegationIdentity, ECDSAKeyIdentity, Ed25519KeyIdentity } from "@icp-sdk/core/identity";
import { Secp256k1KeyIdentity } from "@icp-sdk/core/identity/secp256k1";
import { IcWsClient, IDL, Principal, ClientFrameIdl } from "../dist/index.js";
import { chatParticipants, loginWithTestIdp } from "./lib/test-idp.mjs";

const skip = !(process.env.IC_WS_REPLICA_BIN && process.env.IC_WS_GATEWAY_BIN) && "set IC_WS_REPLICA_BIN and IC_WS_GATEWAY_BIN";

let stopAll = async () => {};
after(() => stopAll());

/** A two-link chain made locally: a root key delegates to a middle key (as a wallet would). */
async function localChain({ expiredMs } = {}) {
  const root = Ed25519KeyIdentity.generate();
  const middle = Ed25519KeyIdentity.generate();
  const until = new Date(Date.now() + (expiredMs !== undefined ? -expiredMs : 3600_000));
  const chain = await DelegationChain.create(root, middle.getPublicKey(), until);
  return DelegationIdentity.fromDelegation(middle, chain);
}

async function until(pred, what, ms = 60_000, dump = () => "") {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; ${dump()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A client of the chat; records its verified chat messages and errors. */
function chatClient(stack, chat, name, extra = {}) {
  const client = new IcWsClient({
    gatewayUrl: stack.gatewayUrl,
    canisterId: stack.canisterId,
    rootKey: stack.rootKeyHex,
    inboundType: chat.ChatIn,
    outboundType: chat.ChatOut,
    openArgs: new Uint8Array(IDL.encode([chat.OpenArgs], [{ name, room: [] }])),
    storage: null,
    reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
    ...extra,
  });
  const got = [];
  const errors = [];
  client.on("message", (m) => got.push(m.data));
  client.on("error", (e) => errors.push(e));
  let opened = false;
  client.on("open", () => { opened = true; });
  client.connect();
  return { client, got, errors, opened: () => opened, name };
}

/** The principal the chat's certified member list gives `name` (undefined: not listed; null: anonymous). */
function listedPrincipal(messages, name) {
  for (const m of [...messages].reverse()) {
    if ("Joined" in m && m.Joined.name === name) return m.Joined.principal[0]?.toText() ?? null;
    if ("Members" in m) {
      const i = m.Members.names.indexOf(name);
      if (i >= 0) return m.Members.principals[i][0]?.toText() ?? null;
    }
  }
  return undefined;
}

/** A relay in front of the gateway that rewrites the proof of every `Open` with `rewrite`. */
class ProofTamperingProxy {
  constructor(upstream, rewrite) {
    this.upstream = upstream;
    this.rewrite = rewrite;
    this.tampered = 0;
  }

  async start() {
    this.wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
    await new Promise((r) => this.wss.on("listening", r));
    this.url = `ws://127.0.0.1:${this.wss.address().port}`;
    this.wss.on("connection", (client) => {
      const up = new WebSocket(this.upstream);
      const pending = [];
      client.on("message", (data) => {
        let out = data;
        try {
          const [frame] = IDL.decode([ClientFrameIdl], new Uint8Array(data));
          if (frame.Open) {
            const identity = this.rewrite(frame.Open.request.identity);
            if (identity) {
              frame.Open.request.identity = identity;
              out = new Uint8Array(IDL.encode([ClientFrameIdl], [frame]));
              this.tampered++;
            }
          }
        } catch {
          // Relay whatever it is.
        }
        up.readyState === WebSocket.OPEN ? up.send(out) : pending.push(out);
      });
      up.on("open", () => { for (const m of pending.splice(0)) up.send(m); });
      up.on("message", (data) => client.readyState === WebSocket.OPEN && client.send(data));
      const closeBoth = () => {
        if (client.readyState <= WebSocket.OPEN) client.close(1000);
        if (up.readyState <= WebSocket.OPEN) up.close(1000);
      };
      for (const s of [up, client]) { s.on("close", closeBoth); s.on("error", closeBoth); }
    });
    return this;
  }

  stop() {
    for (const c of this.wss.clients) c.terminate();
    return new Promise((r) => this.wss.close(r));
  }
}

test("identities: every kind opens with its principal bound; direct messages; stripped, swapped and expired proofs", { skip, timeout: 900_000 }, async () => {
  const { startStack, buildStack } = await import("../../e2e-browser/lib/stack.mjs");
  ({ stopAll } = await import("../../e2e-browser/lib/proc.mjs"));
  const chat = await import("../../e2e-browser/lib/chat-idl.mjs");
  const stack = await startStack(buildStack({ idp: true }));
  const chatId = Principal.fromText(stack.canisterId);

  const identities = {
    ed25519: Ed25519KeyIdentity.generate(),
    secp256k1: Secp256k1KeyIdentity.generate(),
    p256: await ECDSAKeyIdentity.generate(),
    chain: await localChain(),
    "test-idp": (await loginWithTestIdp(stack.replicaUrl, stack.idpCanisterId, [chatId])).identity,
  };
  const clients = [];
  for (const [kind, identity] of Object.entries(identities)) {
    const c = chatClient(stack, chat, `id-${kind}`, { identity });
    clients.push(c);
    assert.equal(c.client.principal.toText(), identity.getPrincipal().toText(), kind);
  }
  const anonymous = chatClient(stack, chat, "anon");
  clients.push(anonymous);
  for (const c of clients) {
    await until(() => c.opened(), `${c.name} opened`, 120_000, () => c.errors.map((e) => `${e.kind}: ${e.message}`).join("; "));
  }
  // The certified member list (or join notice) each client got shows the principal the
  // canister verified; the anonymous participant is listed without one.
  const last = clients[clients.length - 1];
  await until(() => listedPrincipal(last.got, "anon") !== undefined, "anon listed");
  for (const [kind, identity] of Object.entries(identities)) {
    const c = clients.find((x) => x.name === `id-${kind}`);
    await until(() => listedPrincipal(c.got, c.name) !== undefined, `${kind} listed`);
    assert.equal(listedPrincipal(c.got, c.name), identity.getPrincipal().toText(), `${kind}: the chat binds the identity's principal`);
    assert.deepEqual(c.errors.map((e) => e.kind), [], `${kind}: no errors`);
  }
  assert.equal(listedPrincipal(last.got, "anon"), null, "anonymous participants have no principal");
  // The canister's own record (its `participants` query) agrees.
  const listed = new Map((await chatParticipants(stack.replicaUrl, stack.canisterId)).map((p) => [p.name, p.principal]));
  for (const [kind, identity] of Object.entries(identities)) assert.equal(listed.get(`id-${kind}`), identity.getPrincipal().toText(), kind);
  assert.equal(listed.get("anon"), null);
  assert.equal(anonymous.client.principal, undefined);

  // A direct message from the anonymous participant reaches the canister-signature user.
  const target = identities["test-idp"].getPrincipal();
  anonymous.client.send({ Direct: { to: target, text: "hello, II user" } });
  const iiUser = clients.find((x) => x.name === "id-test-idp");
  await until(() => iiUser.got.some((m) => "Direct" in m && m.Direct.text === "hello, II user"), "the direct message");
  const direct = iiUser.got.find((m) => "Direct" in m).Direct;
  assert.equal(direct.to.toText(), target.toText());
  assert.deepEqual(direct.from_principal, []);

  // A gateway that strips the proof (to open the session anonymously) or swaps in another
  // client's proof (to bind another principal): the open's signature covers the proof, so the
  // canister refuses it; the client moves on to the honest gateway, bound to its own principal.
  let seen;
  const stripper = await new ProofTamperingProxy(stack.gatewayUrl, (identity) => (identity.length ? [] : undefined)).start();
  const swapper = await new ProofTamperingProxy(stack.gatewayUrl, (identity) => {
    if (identity.length === 0) return undefined;
    const other = seen;
    seen = identity;
    return other ? other : undefined;
  }).start();
  // The swapper needs a proof of someone else first.
  const donor = chatClient(stack, chat, "donor", { gatewayUrl: swapper.url, identity: Ed25519KeyIdentity.generate() });
  await until(() => seen !== undefined, "the swapper saw a proof");
  for (const [label, proxy] of [["stripped", stripper], ["swapped", swapper]]) {
    const identity = Ed25519KeyIdentity.generate();
    const c = chatClient(stack, chat, `victim-${label}`, { gatewayUrl: proxy.url, fallbackGatewayUrls: [stack.gatewayUrl], identity });
    await until(() => c.opened(), `${label}: opened through the honest gateway`, 120_000, () => c.errors.map((e) => `${e.kind}: ${e.message}`).join("; "));
    assert.ok(proxy.tampered >= 1, `${label}: the proxy tampered with an open`);
    assert.ok(c.errors.some((e) => e.kind === "Unverified"), `${label}: the refusal arrived as an uncertified claim`);
    await until(() => listedPrincipal(c.got, c.name) !== undefined, `${label} listed`);
    assert.equal(listedPrincipal(c.got, c.name), identity.getPrincipal().toText(), `${label}: bound to its own principal`);
    c.client.disconnect();
  }
  donor.client.disconnect();
  await stripper.stop();
  await swapper.stop();

  // An expired login: the client refuses to use it (its own clock) and stops, without a
  // session; the canister would refuse it too (Rust e2e: canister_identity).
  const expired = chatClient(stack, chat, "expired", { identity: await localChain({ expiredMs: 60_000 }) });
  await until(() => expired.errors.some((e) => e.kind === "Identity"), "the Identity error");
  await until(() => expired.client.state === "closed", "the client stopped");
  assert.equal(expired.opened(), false);
  assert.match(expired.errors.find((e) => e.kind === "Identity").message, /expired/);

  for (const c of clients) c.client.disconnect();
  await stack.stop();
});
