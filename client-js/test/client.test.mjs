// IcWsClient against the fake IC + gateway (test/fake-gateway.mjs): the whole protocol flow
// over a real WebSocket, and attacks by a hostile gateway.
import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { IDL } from "@icp-sdk/core/candid";
import { IDL as _ } from "@icp-sdk/core/candid";
import { IcWsClient, MemoryStorage, OutboundContentIdl } from "../dist/index.js";
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

function makeClient(opts = {}) {
  const c = new IcWsClient({
    gatewayUrl: gw.url,
    canisterId: gw.canisterId,
    rootKey: gw.root.der,
    inboundType: IDL.Text,
    outboundType: IDL.Text,
    storage: new MemoryStorage(),
    reconnect: { initialDelayMs: 20, maxDelayMs: 100 },
    ...opts,
  });
  const log = { messages: [], errors: [], opens: [], closes: [], states: [] };
  c.on("message", (m) => log.messages.push(m));
  c.on("error", (e) => log.errors.push(e));
  c.on("open", (o) => log.opens.push(o));
  c.on("close", (e) => log.closes.push(e));
  c.on("state", (s) => log.states.push(s));
  log.batches = [];
  c.on("batch", (b) => log.batches.push(b));
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

test("client: opens, sends a signed message and receives the verified reply", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  assert.equal(c.state, "open");
  assert.equal(log.opens[0].resumed, false);
  assert.equal(c.clientId, log.opens[0].clientId);
  c.send("hi");
  await until(() => log.messages.length === 1, "echo");
  assert.equal(log.messages[0].data, "echo: hi");
  assert.equal(log.messages[0].seq, 1n);
  assert.ok(log.messages[0].certificateTimeNs > 0n);
  assert.equal(gw.received.length, 1);
  assert.equal(gw.received[0].seq, 0n);
  assert.deepEqual(log.errors, []);
  assert.ok(log.batches.length >= 2 && log.batches.every((b) => b.messages >= 1 && b.verifyMs > 0), "batch events report verification");
});

test("client: messages sent before the session is open are queued, signed in order", async () => {
  const { c, log } = makeClient();
  c.send("a");
  c.send("b");
  c.connect();
  c.send("c");
  await until(() => log.messages.length === 3, "3 echoes");
  assert.deepEqual(log.messages.map((m) => m.data), ["echo: a", "echo: b", "echo: c"]);
  assert.deepEqual(gw.received.map((m) => m.seq), [0n, 1n, 2n]);
});

test("client: a forged payload is detected, never delivered, and the session resumes with the real one", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  let tampered = 0;
  gw.tamper = (frame) => {
    const m = frame.Messages.messages.find((x) => x.seq === 1n);
    if (!m || tampered > 0) return frame;
    tampered++;
    const forged = IDL.encode([OutboundContentIdl], [{ timestamp_ns: 1n, body: { App: { topic: [], payload: IDL.encode([IDL.Text], ["FORGED"]) } } }]);
    return { Messages: { ...frame.Messages, messages: frame.Messages.messages.map((x) => (x === m ? { ...x, content: forged } : x)) } };
  };
  c.send("real");
  await until(() => log.messages.length === 1, "the real echo after resume");
  assert.equal(log.errors[0].check, "NotCertified");
  assert.equal(log.errors[0].tampering, true);
  assert.equal(log.messages[0].data, "echo: real");
  assert.ok(!log.messages.some((m) => m.data === "FORGED"));
  assert.equal(log.opens.length, 2, "reconnected");
  assert.equal(log.opens[1].resumed, true);
  assert.equal(gw.opens[1].resume[0].next_outbound_seq, 1n, "resumed from the last verified message");
});

test("client: a frame with a forged certificate signature is rejected as BadCertificateSignature", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  gw.tamper = (frame) => {
    const cert = Uint8Array.from(frame.Messages.certificate);
    cert[cert.length - 5] ^= 1; // inside the BLS signature (last field)
    gw.tamper = null;
    return { Messages: { ...frame.Messages, certificate: cert } };
  };
  c.send("x");
  await until(() => log.messages.length === 1, "echo after resume");
  assert.equal(log.errors[0].check, "BadCertificateSignature");
  assert.equal(log.messages[0].data, "echo: x");
});

test("client: a root key given as hex works; a malformed one is a configuration error at construction", async () => {
  const hex = Buffer.from(gw.root.der).toString("hex");
  const { c, log } = makeClient({ rootKey: hex });
  c.connect();
  await until(() => log.opens.length === 1, "open with a hex root key");
  assert.equal(log.errors.length, 0);
  const bad = (rootKey) => () => new IcWsClient({ gatewayUrl: gw.url, canisterId: gw.canisterId, rootKey });
  assert.throws(bad("zz" + hex), /rootKey: not hex/);
  assert.throws(bad(hex.slice(0, 100)), /not a DER BLS12-381 public key \(50 bytes/);
  assert.throws(bad(gw.root.der.slice(37)), /raw 96-byte key: pass the DER form/);
  assert.throws(bad(42), /expected a Uint8Array or a hex string/);
});

test("client: without a root key against a local gateway, a failed signature says how to configure it", async () => {
  const { c, log } = makeClient({ rootKey: undefined });
  c.connect();
  await until(() => log.errors.length >= 1, "an error");
  const e = log.errors[0];
  assert.equal(e.check, "BadCertificateSignature");
  assert.match(e.message, /mainnet root key \(no rootKey option\) with a gateway on this machine/);
  assert.equal(log.opens.length, 0);
});

test("client: a replayed (duplicated) message is rejected as OutOfSequence", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  c.send("one");
  await until(() => log.messages.length === 1, "echo one");
  let last;
  gw.tamper = (frame) => {
    if (!last) {
      last = frame;
      return frame;
    }
    gw.tamper = null;
    // Replay the earlier, validly certified frame instead of the new one.
    return last;
  };
  c.send("two");
  c.send("three");
  await until(() => log.errors.length >= 1, "error");
  assert.equal(log.errors[0].check, "OutOfSequence");
  await until(() => log.messages.length === 3, "all echoes after resume");
  assert.deepEqual(log.messages.map((m) => m.data), ["echo: one", "echo: two", "echo: three"]);
});

test("client: a stale certificate is rejected as StaleCertificate", async () => {
  const { c, log } = makeClient({ maxCertificateAgeMs: 60_000, reconnect: false });
  gw.now = () => BigInt(Date.now() - 120_000) * 1_000_000n;
  c.connect();
  await until(() => log.errors.length === 1, "error");
  assert.equal(log.errors[0].check, "StaleCertificate");
  assert.equal(log.opens.length, 0);
  await until(() => c.state === "closed", "closed");
});

test("client: a gateway that binds the client to another session is caught (OpenedMismatch)", async () => {
  const victim = makeClient();
  victim.c.connect();
  await until(() => victim.log.opens.length === 1, "victim open");
  gw.misbind = victim.c.clientId;
  const { c, log } = makeClient({ reconnect: false });
  c.connect();
  await until(() => log.errors.length === 1, "error");
  assert.equal(log.errors[0].check, "OpenedMismatch");
  assert.deepEqual(log.messages, [], "nothing of the other session is shown");
  assert.equal(log.opens.length, 0);
});

test("client: reconnects after the gateway drops it and loses nothing (resume + re-send)", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  c.send("before");
  await until(() => log.messages.length === 1, "first echo");
  gw.dropAll();
  await until(() => c.state !== "open", "noticed the drop");
  c.send("while away");
  await until(() => log.messages.length === 2, "second echo after resume");
  assert.deepEqual(log.messages.map((m) => m.data), ["echo: before", "echo: while away"]);
  assert.deepEqual(gw.received.map((m) => m.seq), [0n, 1n], "each message accepted once");
  assert.ok(log.opens.length >= 2 && log.opens.at(-1).resumed);
  assert.ok(log.closes.some((e) => e.willReconnect));
});

test("client: an unconfirmed message is re-sent on resume", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  // The gateway swallows the next client message and then goes away.
  const orig = gw.onFrame.bind(gw);
  gw.onFrame = (conn, bytes) => {
    gw.onFrame = orig;
    gw.dropAll();
  };
  c.send("lost in transit");
  await until(() => log.messages.length === 1, "echo after resume");
  assert.equal(log.messages[0].data, "echo: lost in transit");
  assert.equal(gw.received.length, 1);
});

test("client: a session every gateway refuses to resume is given up only after the own-clock expiry proof", async () => {
  gw.idleTimeoutNs = 200_000_000n; // certified in Opened
  const { c, log } = makeClient({ clockSkewMs: 100 });
  c.connect();
  await until(() => log.opens.length === 1, "open");
  const first = c.clientId;
  gw.sessions.clear();
  const dropped = Date.now();
  gw.dropAll();
  await until(() => log.opens.length === 2, "new session");
  assert.ok(log.errors.filter((e) => e.kind === "Unverified").length >= 2, "the refusals are unverified claims");
  assert.ok(log.errors.some((e) => e.kind === "SessionLost"));
  assert.ok(Date.now() - dropped >= 300, "not before last signed + skew + idle");
  assert.notEqual(c.clientId, first);
  assert.equal(log.opens[1].resumed, false);
});

test("client: sends signed KeepAlives with acks when idle", async () => {
  const { c, log } = makeClient({ keepAliveIntervalMs: 150 });
  c.connect();
  await until(() => log.opens.length === 1, "open");
  await until(() => gw.received.filter((m) => m.kind.KeepAlive === null).length >= 2, "2 keep-alives", 3000);
  const ka = gw.received.find((m) => m.kind.KeepAlive === null);
  assert.equal(ka.ack, 1n, "acknowledges the Opened message");
});

test("client: acknowledges early when many messages are unacknowledged", async () => {
  const { c, log } = makeClient({ ackThreshold: 4 });
  c.connect();
  await until(() => log.opens.length === 1, "open");
  const s = gw.sessions.get(c.clientId);
  for (let i = 0; i < 6; i++) gw.push(s, { App: { topic: [], payload: IDL.encode([IDL.Text], [`n${i}`]) } });
  await until(() => log.messages.length === 6, "6 messages");
  await until(() => gw.received.some((m) => m.kind.KeepAlive === null && m.ack === 4n), "early ack");
  assert.ok(s.retained.every((m) => m.seq >= 4n), "acknowledged messages are released");
});

test("client: close() sends a signed Close and reports the certified reason", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  c.close(1000, "bye");
  await until(() => c.state === "closed", "closed");
  const closed = log.closes.at(-1);
  assert.deepEqual(closed.sessionClosed, { ClientClosed: { code: 1000, reason: "bye" } });
  assert.equal(closed.willReconnect, false);
  assert.throws(() => c.send("late"), /closed/);
});

test("client: the session persists in storage and resumes from a new client object (page reload)", async () => {
  const storage = new MemoryStorage();
  const a = makeClient({ storage });
  a.c.connect();
  await until(() => a.log.opens.length === 1, "open");
  a.c.send("one");
  await until(() => a.log.messages.length === 1, "echo");
  const id = a.c.clientId;
  a.c.disconnect();
  const b = makeClient({ storage });
  b.c.connect();
  await until(() => b.log.opens.length === 1, "resumed open");
  assert.equal(b.log.opens[0].resumed, true);
  assert.equal(b.c.clientId, id);
  b.c.send("two");
  await until(() => b.log.messages.length === 1, "echo two");
  assert.equal(b.log.messages[0].data, "echo: two");
  assert.deepEqual(gw.received.map((m) => m.seq), [0n, 1n]);
});

test("client: send() refuses oversized payloads", () => {
  const { c } = makeClient();
  assert.throws(() => c.send("x".repeat(70_000)), /exceeds/);
});

test("client: certificates signed through a subnet delegation (as on mainnet) verify", async () => {
  gw.delegation = { ranges: [[gw.canisterId, gw.canisterId]] };
  const { c, log } = makeClient();
  c.connect();
  c.send("via subnet");
  await until(() => log.messages.length === 1, "echo");
  assert.equal(log.messages[0].data, "echo: via subnet");
  assert.deepEqual(log.errors, []);
});

test("client: a delegation whose ranges do not contain the canister is rejected (BadDelegation)", async () => {
  const other = (await import("../dist/index.js")).Principal.fromText("aaaaa-aa");
  gw.delegation = { ranges: [[other, other]] };
  const { c, log } = makeClient({ reconnect: false });
  c.connect();
  await until(() => log.errors.length === 1, "error");
  assert.equal(log.errors[0].check, "BadDelegation");
  assert.equal(log.errors[0].tampering, true);
  assert.equal(log.opens.length, 0);
});

test("client: a gateway that never confirms the open is left after openTimeoutMs", async () => {
  const original = gw.onOpen.bind(gw);
  let swallowed = 0;
  gw.onOpen = (conn, req) => {
    if (swallowed++ === 0) return; // the first open goes nowhere
    original(conn, req);
  };
  const { c, log } = makeClient({ openTimeoutMs: 300 });
  c.connect();
  await until(() => log.opens.length === 1, "open on the second attempt");
  assert.equal(log.errors[0].kind, "Transport");
  assert.match(log.errors[0].message, /no certified confirmation/);
  assert.equal(gw.opens.length, 1, "the swallowed open never reached the canister");
});

test("client: a closed session is not kept for resuming", async () => {
  const storage = new MemoryStorage();
  const { c, log } = makeClient({ storage, storageKey: "k" });
  c.connect();
  await until(() => log.opens.length === 1, "open");
  assert.ok(storage.getItem("k"), "session stored while open");
  c.close();
  assert.equal(storage.getItem("k"), null, "forgotten at once");
  await until(() => c.state === "closed", "closed");
  assert.equal(storage.getItem("k"), null);
});

test("client: certified messages relayed before the open's reply are checked once it arrives", async () => {
  // The gateway sends OpenResult late (after the first Messages frame).
  const send = gw.send.bind(gw);
  let held = null;
  gw.send = (ws, frame) => {
    if (frame.OpenResult && !held) {
      held = () => send(ws, frame);
      return;
    }
    send(ws, frame);
    if (frame.Messages && held) {
      const h = held;
      held = () => {};
      setTimeout(h, 50);
    }
  };
  const { c, log } = makeClient();
  c.connect();
  c.send("early");
  await until(() => log.messages.length === 1, "echo");
  assert.equal(log.messages[0].data, "echo: early");
  assert.deepEqual(log.errors, []);
});

test("client: after disconnect() the session stays resumable and sends are queued for the next connect()", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  c.disconnect();
  await until(() => c.state === "closed", "closed");
  c.send("later");
  assert.equal(gw.received.length, 0);
  c.connect();
  await until(() => log.messages.length === 1, "echo after reconnect");
  assert.equal(log.messages[0].data, "echo: later");
  assert.equal(log.opens[1].resumed, true);
});

test("client: an earlier resume's Opened, re-delivered on the next resume, is accepted (not an error)", async () => {
  const { c, log } = makeClient();
  c.connect();
  await until(() => log.opens.length === 1, "open");
  // The next resume's Opened never reaches the client: the connection dies first.
  let dropped = false;
  gw.tamper = (frame) => {
    if (!dropped && frame.Messages.messages.length > 0) {
      dropped = true;
      gw.dropAll();
    }
    return frame;
  };
  gw.dropAll();
  await until(() => dropped, "the first resume's Opened was lost");
  gw.tamper = null;
  // The client resumes again: it receives the lost Opened (older open) and then its own.
  await until(() => log.opens.length === 2, "resumed");
  c.send("after two resumes");
  await until(() => log.messages.length === 1, "echo");
  assert.equal(log.messages[0].data, "echo: after two resumes");
  assert.deepEqual(log.errors.map((e) => e.kind), [], "no check failed");
  const s = gw.sessions.get(c.clientId);
  assert.ok(gw.opens.length >= 3, "opened, resumed (lost), resumed");
  assert.ok(s.nextOutSeq >= 4n, "the lost Opened was re-delivered before the new one");
});
