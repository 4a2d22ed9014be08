// Runs the Rust state-machine vectors (ic-ws-protocol/test-vectors/client-vectors.json,
// generated from ic_ws_protocol::client::ClientSession) against the JS `ClientSession`:
// every input at its time, and exactly the outputs the Rust machine produced (frames written
// byte for byte, events, closes with the failure kind and what comes next). Covers the
// normal paths and every outcome attack (forged MessageError / OpenResult errors, OpenRejected
// claims without the certified message, withheld outcomes, resume refusals until the own-clock
// expiry proof).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { IDL } from "@icp-sdk/core/candid";
import { ClientSession, SessionFailure, SendRefused, decodeGatewayFrame, encodeClientFrame, ClientFrameIdl, fromHex, toHex, Principal, PROTOCOL_VERSION } from "../dist/index.js";

const path = fileURLToPath(new URL("../../ic-ws-protocol/test-vectors/client-vectors.json", import.meta.url));
const V = JSON.parse(readFileSync(path, "utf8"));

/** bigint -> decimal string, bytes -> hex, recursively (the vectors' JSON form). */
function plain(v) {
  if (typeof v === "bigint") return v.toString();
  if (v instanceof Uint8Array) return toHex(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

function eventJson(e) {
  if ("Opened" in e) {
    const o = e.Opened;
    return { Opened: { client_id: o.clientId.toString(), resumed: o.resumed, next_inbound_seq: o.nextInboundSeq.toString(), resent: o.resent } };
  }
  if ("Message" in e) {
    const m = e.Message;
    return { Message: { seq: m.seq.toString(), timestamp_ns: m.timestampNs.toString(), topic: m.topic ?? null, payload: toHex(m.payload) } };
  }
  if ("MessageRejected" in e) return { MessageRejected: { seq: e.MessageRejected.seq.toString(), error: plain(e.MessageRejected.error) } };
  if ("OpenRejected" in e) return { OpenRejected: { client_id: e.OpenRejected.clientId.toString(), error: plain(e.OpenRejected.error) } };
  if ("Unverified" in e) {
    const c = e.Unverified;
    if ("OpenError" in c) return { Unverified: { OpenError: plain(c.OpenError) } };
    return { Unverified: { MessageError: { seq: c.MessageError.seq.toString(), error: plain(c.MessageError.error) } } };
  }
  if ("SessionLost" in e) return { SessionLost: { client_id: e.SessionLost.clientId.toString(), dropped_outgoing: e.SessionLost.droppedOutgoing.toString() } };
  if ("Closed" in e) return { Closed: plain(e.Closed) };
  throw new Error(`unknown event ${JSON.stringify(plain(e))}`);
}

function actionJson(a) {
  if ("Write" in a) return { Write: toHex(encodeClientFrame(a.Write)) };
  if ("Emit" in a) return { Emit: eventJson(a.Emit) };
  const next = a.Close.next;
  return { Close: { error: a.Close.error.kind, next: typeof next === "string" ? next : { WaitUntil: next.WaitUntil.toString() } } };
}

function kindFromJson(k) {
  if (k === "KeepAlive") return { KeepAlive: null };
  if (k.App !== undefined) return { App: fromHex(k.App) };
  return { Close: { code: k.Close.code, reason: k.Close.reason } };
}

function machine(c) {
  let n = 0;
  const keys = () => {
    n += 1;
    return new Uint8Array(32).fill(n);
  };
  return new ClientSession({
    canisterId: Principal.fromText(c.canister_id),
    rootKeyDer: fromHex(c.root_key),
    maxCertificateAgeNs: BigInt(c.max_certificate_age_ns),
    openArgs: fromHex(c.open_args),
    openTimeoutNs: BigInt(c.open_timeout_ns),
    keepAliveIntervalNs: BigInt(c.keepalive_interval_ns),
    ackThreshold: BigInt(c.ack_threshold),
    resendBuffer: c.resend_buffer,
    clockSkewNs: BigInt(c.clock_skew_ns),
    resumeRefusalsBeforeWait: c.resume_refusals_before_wait,
    onSessionLost: c.on_session_lost,
  }, keys);
}

test("client vectors: same protocol version", () => {
  assert.equal(V.protocol_version, PROTOCOL_VERSION);
  assert.ok(V.vectors.length >= 20);
});

for (const v of V.vectors) {
  test(`client vectors: ${v.name}`, async () => {
    const m = machine(v.config);
    for (const [i, step] of v.steps.entries()) {
      const now = BigInt(step.now_ns);
      const input = step.input;
      let actions;
      let sendResult;
      if (input === "Connected") actions = m.connected(now);
      else if (input === "Tick") actions = m.tick(now);
      else if (input.Frame !== undefined) actions = await m.frame(decodeGatewayFrame(fromHex(input.Frame)), now);
      else if (input.ConnectionLost !== undefined) actions = m.connectionLost(new SessionFailure("Transport", input.ConnectionLost), now);
      else if (input.Send !== undefined) {
        try {
          const r = m.send(kindFromJson(input.Send), now);
          actions = r.actions;
          sendResult = { Ok: r.seq.toString() };
        } catch (e) {
          if (!(e instanceof SendRefused)) throw e;
          actions = [];
          sendResult = { Err: e.reason };
        }
      } else throw new Error(`unknown input ${JSON.stringify(input)}`);
      const where = `${v.name}, step ${i} (${typeof input === "string" ? input : Object.keys(input)[0]})`;
      // Candid encoders may order type tables differently: a written frame is compared by
      // value (the Rust bytes decoded and re-encoded here), signature included.
      const expect = step.expect.map((a) => (a.Write !== undefined ? { Write: toHex(IDL.encode([ClientFrameIdl], IDL.decode([ClientFrameIdl], fromHex(a.Write)))) } : a));
      assert.deepEqual(actions.map(actionJson), expect, where);
      if (step.expect_send !== undefined) assert.deepEqual(sendResult, step.expect_send, where);
    }
  });
}
