// A fake IC + gateway in one Node process, for testing the client without the real
// replica: a test BLS root key signs real IC certificates (same format and checks as the IC),
// a tiny in-memory "canister" follows docs/protocol.md (sessions, signed-message checks,
// sequence numbers, acks, resume, close), and a WebSocket server speaks the gateway frames.
// A `tamper` hook lets tests alter frames on the way to the client, as a hostile gateway would.
import { WebSocketServer } from "ws";
import { bls12_381 } from "@noble/curves/bls12-381.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { Cbor, reconstruct } from "@icp-sdk/core/agent";
import { IDL } from "@icp-sdk/core/candid";
import { Principal } from "@icp-sdk/core/principal";
import {
  GatewayFrameIdl, ClientFrameIdl, OutboundContentIdl, openSigningBytes, messageSigningBytes,
  verifySignature, u64be, utf8, concat, fromHex, bytesEqual,
} from "../dist/index.js";

const DER_PREFIX = fromHex("308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c05030201036100");
const bls = bls12_381.shortSignatures;

export const leaf = (v) => [3, v];
export const labeled = (l, t) => [2, typeof l === "string" ? utf8(l) : l, t];
export const fork = (a, b) => [1, a, b];
export const empty = () => [0];

/** Sorted labeled subtrees joined by forks (labels must be sorted for lookups). */
export function labels(entries) {
  const sorted = [...entries].sort((a, b) => Buffer.compare(Buffer.from(a[0]), Buffer.from(b[0])));
  const nodes = sorted.map(([l, t]) => labeled(l, t));
  if (nodes.length === 0) return empty();
  return nodes.reduceRight((acc, n) => (acc === null ? n : fork(n, acc)), null);
}

function leb128(n) {
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) b |= 0x80;
    out.push(b);
  } while (v !== 0n);
  return new Uint8Array(out);
}

export class TestRootKey {
  constructor(seedByte = 0x2a) {
    this.sk = new Uint8Array(32).fill(seedByte);
    this.der = concat([DER_PREFIX, bls.getPublicKey(this.sk).toBytes()]);
  }

  static async signTree(tree, sk) {
    const root = await reconstruct(tree);
    const msg = concat([new Uint8Array([13]), utf8("ic-state-root"), root]);
    return bls.sign(bls.hash(msg), sk).toBytes();
  }

  /**
   * A CBOR certificate of `certifiedData` for `canisterId` at `timeNs`, signed by the root
   * key, or (with `delegation`) by a subnet key that the root key delegated to, mainnet-style.
   * `delegation`: { subnetSeed, ranges: [[lo, hi] principals], timeNs }.
   */
  async certificate(canisterId, certifiedData, timeNs, delegation) {
    const tree = fork(
      labeled("canister", labeled(canisterId.toUint8Array(), labeled("certified_data", leaf(certifiedData)))),
      labeled("time", leaf(leb128(timeNs))),
    );
    if (!delegation) {
      return new Uint8Array(Cbor.encode({ tree, signature: await TestRootKey.signTree(tree, this.sk) }));
    }
    const subnetSk = new Uint8Array(32).fill(delegation.subnetSeed ?? 0x51);
    const subnetDer = concat([DER_PREFIX, bls.getPublicKey(subnetSk).toBytes()]);
    const subnetId = Principal.selfAuthenticating(subnetDer).toUint8Array();
    const ranges = new Uint8Array(Cbor.encode(delegation.ranges.map(([lo, hi]) => [lo.toUint8Array(), hi.toUint8Array()])));
    const dtree = fork(
      labeled("subnet", labeled(subnetId, fork(labeled("canister_ranges", leaf(ranges)), labeled("public_key", leaf(subnetDer))))),
      // A subnet's delegation is reused for a long time (fixed `timeNs` when given).
      labeled("time", leaf(leb128(delegation.timeNs ?? timeNs))),
    );
    const dcert = new Uint8Array(Cbor.encode({ tree: dtree, signature: await TestRootKey.signTree(dtree, this.sk) }));
    return new Uint8Array(Cbor.encode({
      tree,
      signature: await TestRootKey.signTree(tree, subnetSk),
      delegation: { subnet_id: subnetId, certificate: dcert },
    }));
  }
}

function content(timestampNs, body) {
  return IDL.encode([OutboundContentIdl], [{ timestamp_ns: timestampNs, body }]);
}

/**
 * The fake. `onApp(session, payload)` is the app's on_message: by default it echoes text
 * payloads back as "echo: <text>".
 */
export class FakeGateway {
  constructor({ canisterId = Principal.fromText("bkyz2-fmaaa-aaaaa-qaaaq-cai"), now = () => BigInt(Date.now()) * 1_000_000n } = {}) {
    this.canisterId = canisterId;
    this.gateway = Principal.selfAuthenticating(new Uint8Array(44).fill(3));
    this.root = new TestRootKey();
    this.now = now;
    this.sessions = new Map();
    this.nextClientId = 1n;
    this.opens = [];
    this.received = [];
    this.tamper = null;
    this.misbind = undefined;
    this.sockets = new Set();
    /** Certified in Opened (protocol v2). */
    this.maxInboundPayloadBytes = 64n * 1024n;
    this.idleTimeoutNs = 120_000_000_000n;
    /** on_open refuses new sessions with this reason (certified OpenRejected, v2). */
    this.rejectOpen = null;
    /** What the main listener's gateway does wrong (see `listen`). */
    this.knobs = {};
    this.servers = [];
    /** Called after a new session's Opened is queued: the app's on_open. */
    this.onOpened = (_session, _args) => {};
    /** Called when a session ends by a client Close: the app's on_close. */
    this.onClosed = (_session) => {};
    this.onApp = (s, payload) => {
      const [text] = IDL.decode([IDL.Text], payload);
      this.push(s, { App: { topic: [], payload: IDL.encode([IDL.Text], [`echo: ${text}`]) } });
    };
  }

  async start() {
    this.url = await this.listen(this.knobs);
    return this;
  }

  /**
   * Another gateway in front of the same canister, on its own port. `knobs` (mutable) make it
   * hostile: `forgeOpenError` (replace every open's result by this error; the canister's real
   * outcome happens anyway), `forgeMessageError` (after relaying an accepted app message, also
   * claim this error for it), `withhold` (send nothing after Hello).
   */
  async listen(knobs = {}) {
    const wss = new WebSocketServer({ port: 0 });
    await new Promise((r) => wss.on("listening", r));
    wss.on("connection", (ws) => this.onConnection(ws, knobs));
    this.servers.push(wss);
    return `ws://127.0.0.1:${wss.address().port}`;
  }

  async stop() {
    for (const ws of this.sockets) ws.terminate();
    await Promise.all(this.servers.map((wss) => new Promise((r) => wss.close(r))));
  }

  /** Drops every connection (as a crashing gateway would); sessions survive. */
  dropAll() {
    for (const ws of this.sockets) ws.terminate();
  }

  send(ws, frame) {
    ws.send(IDL.encode([GatewayFrameIdl], [frame]));
  }

  push(s, body) {
    const seq = s.nextOutSeq++;
    s.retained.push({ client_id: s.id, seq, content: content(this.now(), body) });
    this.deliver(s);
  }

  onConnection(ws, knobs = {}) {
    this.sockets.add(ws);
    const conn = { ws, session: null, knobs };
    ws.on("close", () => {
      this.sockets.delete(ws);
      if (conn.session && conn.session.ws === ws) conn.session.ws = null;
    });
    ws.on("message", (data) => {
      if (!knobs.withhold) this.onFrame(conn, new Uint8Array(data));
    });
    this.send(ws, { Hello: { gateway: this.gateway, protocol_version: 2 } });
  }

  onFrame(conn, bytes) {
    const [frame] = IDL.decode([ClientFrameIdl], bytes);
    if (frame.Open) return this.onOpen(conn, frame.Open.request);
    const m = frame.Message;
    const s = this.sessions.get(m.client_id);
    const err = (error) => this.send(conn.ws, { MessageError: { seq: m.seq, error } });
    if (!s || s.closed) return err({ UnknownClient: m.client_id });
    if (!verifySignature(s.key, messageSigningBytes(this.canisterId, m), m.signature)) return err({ InvalidSignature: null });
    if (m.seq < s.nextInSeq) return; // duplicate: no-op
    if (m.seq > s.nextInSeq) return err({ OutOfSequence: { expected: s.nextInSeq, got: m.seq } });
    s.nextInSeq += 1n;
    s.retained = s.retained.filter((r) => r.seq >= m.ack);
    this.received.push(m);
    if (m.kind.App) {
      this.onApp(s, m.kind.App);
      if (conn.knobs.forgeMessageError) err(conn.knobs.forgeMessageError);
    }
    else if (m.kind.Close) {
      s.closed = true;
      this.push(s, { Closed: { reason: { ClientClosed: m.kind.Close } } });
      this.onClosed(s);
    }
  }

  onOpen(conn, req) {
    this.opens.push(req);
    const forged = conn.knobs.forgeOpenError;
    const reply = (r) => this.send(conn.ws, { OpenResult: forged ? { Err: forged } : r });
    const attach = (s) => {
      // A forging gateway delivers nothing of the session it lied about.
      if (!forged) s.ws = conn.ws;
    };
    if (!verifySignature(req.client_key, openSigningBytes(this.canisterId, req), req.signature)) return reply({ Err: { InvalidSignature: null } });
    if (this.misbind !== undefined && req.resume.length === 0) {
      // Hostile gateway: claims the client got another session's id and relays its stream.
      const victim = this.sessions.get(this.misbind);
      victim.ws = conn.ws;
      victim.sentUpTo = 0n;
      reply({ Ok: { client_id: victim.id, next_inbound_seq: victim.nextInSeq, opened_seq: 0n } });
      this.deliver(victim);
      return;
    }
    let s;
    if (req.resume.length === 0 && this.rejectOpen !== null) {
      // Protocol v2: the refusal is certified as seq 0 of a closed session.
      s = { id: this.nextClientId++, key: req.client_key, nextInSeq: 0n, nextOutSeq: 0n, retained: [], closed: true, lastTs: req.timestamp_ns };
      this.sessions.set(s.id, s);
      attach(s);
      s.sentUpTo = 0n;
      reply({ Err: { OpenRejected: { client_id: s.id, reason: this.rejectOpen } } });
      this.push(s, { OpenRejected: { client_key: req.client_key, open_timestamp_ns: req.timestamp_ns, error: { Rejected: this.rejectOpen } } });
      return;
    }
    if (req.resume.length === 0) {
      s = { id: this.nextClientId++, key: req.client_key, nextInSeq: 0n, nextOutSeq: 0n, retained: [], closed: false, lastTs: req.timestamp_ns };
      this.sessions.set(s.id, s);
    } else {
      const r = req.resume[0];
      s = this.sessions.get(r.client_id);
      if (!s || s.closed || !bytesEqual(s.key, req.client_key)) return reply({ Err: { InvalidResume: null } });
      if (req.timestamp_ns <= s.lastTs) return reply({ Err: { StaleOpen: null } });
      const first = s.retained.length ? s.retained[0].seq : s.nextOutSeq;
      if (r.next_outbound_seq < first) return reply({ Err: { ResumeUnavailable: { first_available: first } } });
      s.lastTs = req.timestamp_ns;
      s.retained = s.retained.filter((m) => m.seq >= r.next_outbound_seq);
    }
    if (!forged) s.ws = conn.ws;
    else if (s.ws === conn.ws) s.ws = null;
    s.sentUpTo = s.retained.length ? s.retained[0].seq : s.nextOutSeq;
    conn.session = s;
    reply({ Ok: { client_id: s.id, next_inbound_seq: s.nextInSeq, opened_seq: s.nextOutSeq } });
    this.push(s, {
      Opened: {
        client_key: req.client_key, open_timestamp_ns: req.timestamp_ns, next_inbound_seq: s.nextInSeq, resumed: req.resume.length > 0,
        max_inbound_payload_bytes: this.maxInboundPayloadBytes, idle_timeout_ns: this.idleTimeoutNs, principal: [],
      },
    });
    if (req.resume.length === 0) this.onOpened(s, req.args);
  }

  /** Sends the session's undelivered messages, certified, with a tree of this client's paths. */
  deliver(s) {
    const ws = s.ws;
    if (!ws) return;
    const batch = s.retained.filter((m) => m.seq >= s.sentUpTo);
    if (batch.length === 0) return;
    s.sentUpTo = batch[batch.length - 1].seq + 1n;
    // Certify every retained message (as the canister does); the tree is this client's only.
    const tree = labeled("ws", labels([[u64be(s.id), labels(s.retained.map((m) => [u64be(m.seq), leaf(sha256(m.content))]))]]));
    // Frames of one session go out in order although certifying is asynchronous.
    s.sending = (s.sending ?? Promise.resolve()).then(async () => {
      const root = await reconstruct(tree);
      const certificate = await this.root.certificate(this.canisterId, root, this.now(), this.delegation);
      let frame = { Messages: { messages: batch, certificate, tree: new Uint8Array(Cbor.encode(tree)) } };
      if (this.tamper) frame = this.tamper(frame, s) ?? frame;
      if (ws.readyState === 1) this.send(ws, frame);
    });
  }
}
export { sha256, Cbor, reconstruct };
