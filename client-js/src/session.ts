/**
 * The client session as an I/O-free state machine: the mirror of the Rust
 * `ic_ws_protocol::client::ClientSession` (ic-ws-protocol/src/client.rs), tested against the
 * same vectors (`ic-ws-protocol/test-vectors/client-vectors.json`).
 *
 * It decides everything a client decides: the signed open or resume (timestamps strictly
 * increasing per key), the uncertified open result, `Messages` frames held until it arrives
 * (at most 64), checks 1-6 of every delivery ({@link DeliveryVerifier} and the certified
 * `Opened` binding), acknowledgements and keep-alives, the bounded resend queue, and the
 * outcome rules of protocol version 2 (docs/protocol.md, "Outcomes"):
 *
 * - a certified `MessageRejected` is a fact (and confirms own messages up to its seq);
 * - a certified `OpenRejected` (seq 0, own key, this open's timestamp) is a terminal refusal;
 * - a certified `Closed` (also after a resume's `Err(Closed)`) ends the session;
 * - everything uncertified (`MessageError`, an `OpenResult` error, an `OpenRejected` claim
 *   without its certified message within the open timeout) is an `Unverified` event and only
 *   means "this connection failed: retry, next gateway": nothing is dropped or skipped;
 * - a resume refused as gone by every gateway is given up only when the client's own clock
 *   proves the session expired (`expiryProvenAt`).
 *
 * The machine does no I/O and reads no clock or RNG: the caller passes `now` (ns) with every
 * input and a key-seed source, and carries out the returned actions in order.
 */
import type { Principal } from "@icp-sdk/core/principal";
import type { Prover } from "./identity.js";
import { IdentityUnusable } from "./identity.js";
import { boundedText, bytesEqual, MAX_PEER_TEXT_BYTES } from "./bytes.js";
import { SessionKey } from "./signing.js";
import type { StoredSession } from "./storage.js";
import { PROTOCOL_VERSION } from "./types.js";
import type { ClientFrame, ClientMessage, CloseReason, GatewayFrame, IdentityProof, MessageKind, OpenOk, OutboundMessage, WsError } from "./types.js";
import { DeliveryVerifier, VerifyError } from "./verify.js";
import type { VerifiedMessage } from "./verify.js";

/** `Messages` frames held while the open result is outstanding. */
export const MAX_EARLY_FRAMES = 64;
/** The canister's default clock-skew window for opens (5 minutes). */
export const DEFAULT_CLOCK_SKEW_NS = 5n * 60n * 1_000_000_000n;

export interface SessionConfig {
  canisterId: Principal;
  rootKeyDer: Uint8Array;
  maxCertificateAgeNs: bigint;
  openArgs: Uint8Array;
  openTimeoutNs: bigint;
  keepAliveIntervalNs: bigint;
  ackThreshold: bigint;
  resendBuffer: number;
  clockSkewNs: bigint;
  /** Consecutive "gone" refusals of resumes before the client waits for the expiry proof (at least the number of gateways). */
  resumeRefusalsBeforeWait: number;
  onSessionLost: "NewSession" | "Stop";
  /**
   * Issue 10: sessions prove this principal (a delegation to each new session key); every
   * certified `Opened` must bind it. None: anonymous sessions, and `Opened` must bind none.
   */
  prover?: Prover;
}

/** An uncertified outcome claimed by the gateway: only ever means "retry elsewhere". */
export type Claim = { OpenError: WsError } | { MessageError: { seq: bigint; error: WsError } };

export type SessionEvent =
  | { Opened: { clientId: bigint; resumed: boolean; nextInboundSeq: bigint; resent: number } }
  | { Message: { seq: bigint; timestampNs: bigint; topic?: string; payload: Uint8Array; certificateTimeNs: bigint } }
  /** Certified: own message `seq` was consumed and refused by the handler. */
  | { MessageRejected: { seq: bigint; error: WsError } }
  /** Certified: this client's open was refused. Terminal. */
  | { OpenRejected: { clientId: bigint; error: WsError } }
  /** Uncertified gateway claim. */
  | { Unverified: Claim }
  | { SessionLost: { clientId: bigint; droppedOutgoing: bigint } }
  /** Certified: the session ended. */
  | { Closed: CloseReason };

export type Next = "Reconnect" | "ReconnectNow" | { WaitUntil: bigint } | "Stop";

/** Why a connection ended. `kind` equals the Rust `Failure::kind()`. */
export class SessionFailure extends Error {
  constructor(readonly kind: string, message: string, readonly claim?: Claim) {
    super(message);
    this.name = "SessionFailure";
  }
}

export type Action =
  | { Write: ClientFrame }
  | { Emit: SessionEvent }
  | { Close: { error: SessionFailure; next: Next } };

/** Why `send` refused to sign. */
export class SendRefused extends Error {
  constructor(readonly reason: "NoSession" | "TooLarge" | "Stopped", message: string) {
    super(message);
    this.name = "SendRefused";
  }
}

interface PendingOpen {
  timestampNs: bigint;
  resume: boolean;
}

type Phase =
  | { kind: "Hello" }
  | { kind: "OpenResult"; pending: PendingOpen }
  | { kind: "Confirming"; pending: PendingOpen; claim?: WsError }
  | { kind: "Ready" };

interface Conn {
  phase: Phase;
  connectedAt: bigint;
  lastSent: bigint;
  early: { messages: OutboundMessage[]; certificate: Uint8Array; tree: Uint8Array }[];
}

export interface CertifiedLimits {
  maxInboundPayloadBytes: bigint;
  idleTimeoutNs: bigint;
}

/** The name of a protocol error (its variant). */
function errName(e: WsError): string {
  return Object.keys(e)[0] ?? "Unknown";
}

/** The error with its peer-supplied text bounded. */
export function boundedWsError(e: WsError): WsError {
  const b = (s: string) => (new TextEncoder().encode(s).length > MAX_PEER_TEXT_BYTES ? boundedText(s, MAX_PEER_TEXT_BYTES) : s);
  if ("Rejected" in e) return { Rejected: b(e.Rejected) };
  if ("DecodeError" in e) return { DecodeError: b(e.DecodeError) };
  if ("LimitReached" in e) return { LimitReached: b(e.LimitReached) };
  if ("InvalidArgument" in e) return { InvalidArgument: b(e.InvalidArgument) };
  if ("OpenRejected" in e) return { OpenRejected: { client_id: e.OpenRejected.client_id, reason: b(e.OpenRejected.reason) } };
  return e;
}

function claimsGone(e: WsError): boolean {
  return "UnknownClient" in e || "InvalidResume" in e || "ResumeUnavailable" in e || "Closed" in e;
}

function describeClaim(c: Claim): string {
  if ("OpenError" in c) return `open refused: ${errName(c.OpenError)}`;
  return `message ${c.MessageError.seq}: ${errName(c.MessageError.error)}`;
}

const binding = (name: string, message: string) => new SessionFailure(`Binding.${name}`, `open confirmation: ${message}`);

export class ClientSession {
  private readonly config: SessionConfig;
  private readonly keys: () => Uint8Array;
  private key: SessionKey;
  private verifier: DeliveryVerifier;
  private clientIdValue?: bigint;
  private confirmed = false;
  private nextExpectedValue = 0n;
  private lastAckSigned = 0n;
  private nextSeq = 0n;
  private confirmedInbound = 0n;
  private unconfirmedQueue: ClientMessage[] = [];
  private lastOpenTs = 0n;
  private lastMessageSignedAt = 0n;
  private limitsValue?: CertifiedLimits;
  private resumeRefusals = 0;
  private waitUntil?: bigint;
  private stopped = false;
  private conn?: Conn;
  /** The identity proof for the current key (made once per key, on its first open). */
  private proof?: IdentityProof;

  /** A machine with no session (a key from `keys`), or the stored one (resumed on connect). */
  constructor(config: SessionConfig, keys: () => Uint8Array, stored?: StoredSession) {
    this.config = config;
    this.keys = keys;
    // A session stored by a client with another identity (or anonymous vs not) is not this
    // client's to resume: its Opened binds another principal.
    if (stored && stored.principal === config.prover?.principal.toText()) {
      this.key = SessionKey.fromHex(stored.keySeed);
      this.clientIdValue = stored.clientId;
      this.confirmed = stored.clientId !== undefined;
      this.nextExpectedValue = stored.nextOutboundSeq;
      this.lastAckSigned = stored.nextOutboundSeq;
      this.nextSeq = stored.nextInboundSeq;
      this.unconfirmedQueue = [...stored.outbox];
      this.confirmedInbound = stored.confirmedInboundSeq ?? stored.outbox[0]?.seq ?? stored.nextInboundSeq;
      this.lastOpenTs = stored.lastOpenTimestampNs;
      this.lastMessageSignedAt = stored.lastMessageSignedAtNs ?? 0n;
      if (stored.maxInboundPayloadBytes !== undefined && stored.idleTimeoutNs !== undefined) {
        this.limitsValue = { maxInboundPayloadBytes: stored.maxInboundPayloadBytes, idleTimeoutNs: stored.idleTimeoutNs };
      }
    } else {
      this.key = SessionKey.fromSeed(keys());
    }
    this.verifier = this.makeVerifier(this.clientIdValue ?? 0n);
  }

  private makeVerifier(clientId: bigint): DeliveryVerifier {
    return new DeliveryVerifier({
      rootKeyDer: this.config.rootKeyDer,
      canisterId: this.config.canisterId,
      clientId,
      maxCertificateAgeNs: this.config.maxCertificateAgeNs,
    });
  }

  /** What to persist to resume after a reload. */
  snapshot(): StoredSession {
    return {
      keySeed: this.key.toJSON(),
      lastOpenTimestampNs: this.lastOpenTs,
      clientId: this.clientId,
      nextOutboundSeq: this.nextExpectedValue,
      nextInboundSeq: this.nextSeq,
      outbox: [...this.unconfirmedQueue],
      confirmedInboundSeq: this.confirmedInbound,
      lastMessageSignedAtNs: this.lastMessageSignedAt,
      maxInboundPayloadBytes: this.limitsValue?.maxInboundPayloadBytes,
      idleTimeoutNs: this.limitsValue?.idleTimeoutNs,
      principal: this.config.prover?.principal.toText(),
    };
  }

  /** The certified client id (undefined before the first `Opened` and while replacing a lost session). */
  get clientId(): bigint | undefined {
    return this.confirmed ? this.clientIdValue : undefined;
  }
  get publicKey(): Uint8Array {
    return this.key.publicKey;
  }
  get nextExpected(): bigint {
    return this.nextExpectedValue;
  }
  get isReady(): boolean {
    return this.conn?.phase.kind === "Ready";
  }
  get isStopped(): boolean {
    return this.stopped;
  }
  get limits(): CertifiedLimits | undefined {
    return this.limitsValue;
  }
  get unconfirmed(): number {
    return this.unconfirmedQueue.length;
  }

  /** When the own clock proves the session expired (see docs/protocol.md). */
  expiryProvenAt(): bigint | undefined {
    if (!this.limitsValue) return undefined;
    const idle = this.limitsValue.idleTimeoutNs;
    const unaccepted = this.nextSeq > this.confirmedInbound ? this.nextSeq - this.confirmedInbound : 0n;
    const last = this.lastOpenTs > this.lastMessageSignedAt ? this.lastOpenTs : this.lastMessageSignedAt;
    return last + this.config.clockSkewNs + idle * (unaccepted + 1n);
  }

  /** The earliest time at which `tick` has something to do. */
  nextDeadline(): bigint | undefined {
    const c = this.conn;
    if (!c) return undefined;
    return c.phase.kind === "Ready" ? c.lastSent + this.config.keepAliveIntervalNs : c.connectedAt + this.config.openTimeoutNs;
  }

  /** A new connection is established; the gateway's Hello comes next. */
  connected(now: bigint): Action[] {
    const out: Action[] = [];
    if (this.stopped) {
      out.push({ Close: { error: new SessionFailure("Protocol", "the client stopped"), next: "Stop" } });
      return out;
    }
    if (this.waitUntil !== undefined) {
      const until = this.waitUntil;
      const proof = this.expiryProvenAt() ?? until;
      const proven = proof > until ? proof : until;
      if (now >= proven) {
        const clientId = this.clientIdValue ?? 0n;
        const dropped = this.loseSession();
        out.push({ Emit: { SessionLost: { clientId, droppedOutgoing: dropped } } });
        if (this.config.onSessionLost === "Stop") {
          this.stopped = true;
          out.push({ Close: { error: new SessionFailure("SessionExpired", `session ${clientId} expired (proven by the client's own clock)`), next: "Stop" } });
          return out;
        }
      }
    }
    this.conn = { phase: { kind: "Hello" }, connectedAt: now, lastSent: now, early: [] };
    return out;
  }

  /** The transport ended: what next. */
  connectionLost(error: SessionFailure, now: bigint): Action[] {
    return [this.fail(error, false, now)];
  }

  /** Signs an own message; written at once when ready. Throws {@link SendRefused}. */
  send(kind: MessageKind, now: bigint): { seq: bigint; actions: Action[] } {
    if (this.stopped) throw new SendRefused("Stopped", "the client stopped");
    if (!this.confirmed || this.waitUntil !== undefined) throw new SendRefused("NoSession", "no session yet: a session is being opened");
    if ("App" in kind && this.limitsValue) {
      const size = BigInt(kind.App.length);
      if (size > this.limitsValue.maxInboundPayloadBytes) {
        throw new SendRefused("TooLarge", `payload of ${size} bytes exceeds the canister's limit of ${this.limitsValue.maxInboundPayloadBytes}`);
      }
    }
    const msg = this.sign(kind, now);
    if (!msg) throw new SendRefused("NoSession", "no session yet");
    const actions: Action[] = [];
    if (this.isReady) this.write({ Message: msg }, now, actions);
    return { seq: msg.seq, actions };
  }

  /** Time passed: open timeout, keep-alive. */
  tick(now: bigint): Action[] {
    const out: Action[] = [];
    const deadline = this.nextDeadline();
    if (deadline === undefined || now < deadline) return out;
    if (this.isReady) {
      const m = this.sign({ KeepAlive: null }, now);
      if (m) this.write({ Message: m }, now, out);
      return out;
    }
    const p = this.conn!.phase;
    let step = "the certified Opened";
    if (p.kind === "Hello") step = "the gateway's Hello";
    else if (p.kind === "OpenResult") step = "the open result";
    else if (p.kind === "Confirming" && p.claim && "OpenRejected" in p.claim) step = "the certified OpenRejected";
    else if (p.kind === "Confirming" && p.claim && "Closed" in p.claim) step = "the certified Closed";
    out.push(this.fail(new SessionFailure("Timeout", `timed out waiting for ${step}`), false, now));
    return out;
  }

  /** A frame from the gateway (verification is asynchronous). */
  async frame(frame: GatewayFrame, now: bigint): Promise<Action[]> {
    const out: Action[] = [];
    const conn = this.conn;
    if (!conn) return out;
    const phase = conn.phase;
    if ("Hello" in frame && phase.kind === "Hello") {
      if (frame.Hello.protocol_version !== PROTOCOL_VERSION) {
        out.push(this.fail(new SessionFailure("UnsupportedVersion", `gateway speaks protocol version ${frame.Hello.protocol_version}, this client ${PROTOCOL_VERSION}`), false, now));
        return out;
      }
      let open: ClientFrame;
      try {
        open = await this.openFrame(frame.Hello.gateway, now);
      } catch (e) {
        if (!(e instanceof IdentityUnusable)) throw e;
        // Retrying cannot help: the app must give the client a usable identity.
        this.stopped = true;
        out.push(this.fail(new SessionFailure("Identity", e.message), false, now));
        return out;
      }
      if (this.conn !== conn) return out; // the connection ended while the identity signed
      this.write(open, now, out);
      return out;
    }
    if ("OpenResult" in frame && phase.kind === "OpenResult") {
      await this.onOpenResult(frame.OpenResult, phase.pending, now, out);
      return out;
    }
    if ("Messages" in frame && phase.kind === "OpenResult") {
      if (conn.early.length >= MAX_EARLY_FRAMES) {
        out.push(this.fail(new SessionFailure("Protocol", "too many frames before the open result"), false, now));
        return out;
      }
      conn.early.push(frame.Messages);
      return out;
    }
    if ("Messages" in frame && (phase.kind === "Confirming" || phase.kind === "Ready")) {
      await this.onMessages(frame.Messages.messages, frame.Messages.certificate, frame.Messages.tree, now, out);
      return out;
    }
    if ("MessageError" in frame && (phase.kind === "Confirming" || phase.kind === "Ready")) {
      const claim: Claim = { MessageError: { seq: frame.MessageError.seq, error: boundedWsError(frame.MessageError.error) } };
      out.push({ Emit: { Unverified: claim } });
      out.push(this.fail(new SessionFailure(`Claim.MessageError.${errName(claim.MessageError.error)}`, `unverified gateway claim: ${describeClaim(claim)}`, claim), false, now));
      return out;
    }
    const name = Object.keys(frame)[0] ?? "unknown";
    out.push(this.fail(new SessionFailure("Protocol", `unexpected frame ${name}`), false, now));
    return out;
  }

  private async openFrame(gateway: Principal, now: bigint): Promise<ClientFrame> {
    const prover = this.config.prover;
    const fresh = !(this.confirmed && this.clientIdValue !== undefined);
    // A resume carries no proof: the canister keeps the bound principal.
    if (prover && fresh && !this.proof) this.proof = await prover.prove(this.key.publicKey, now);
    const ts = now > this.lastOpenTs ? now : this.lastOpenTs + 1n;
    this.lastOpenTs = ts;
    const resume = this.confirmed && this.clientIdValue !== undefined ? { client_id: this.clientIdValue, next_outbound_seq: this.nextExpectedValue } : undefined;
    const request = this.key.signOpen(this.config.canisterId, {
      client_key: this.key.publicKey,
      gateway,
      timestamp_ns: ts,
      resume: resume ? [resume] : [],
      args: resume ? new Uint8Array() : this.config.openArgs,
      identity: !resume && this.proof ? [this.proof] : [],
    });
    if (this.conn) this.conn.phase = { kind: "OpenResult", pending: { timestampNs: ts, resume: resume !== undefined } };
    return { Open: { canister_id: this.config.canisterId, request } };
  }

  private async onOpenResult(result: { Ok: OpenOk } | { Err: WsError }, pending: PendingOpen, now: bigint, out: Action[]): Promise<void> {
    let claim: WsError | undefined;
    if ("Ok" in result) {
      const ok = result.Ok;
      if (pending.resume && this.clientIdValue !== ok.client_id) {
        out.push(this.fail(new SessionFailure("Protocol", `resume of client ${this.clientIdValue ?? 0n} answered with client ${ok.client_id}`), false, now));
        return;
      }
      if (!pending.resume) this.clientIdValue = ok.client_id;
    } else {
      const error = boundedWsError(result.Err);
      out.push({ Emit: { Unverified: { OpenError: error } } });
      if ("OpenRejected" in error && !pending.resume) {
        this.clientIdValue = error.OpenRejected.client_id;
      } else if ("Closed" in error && pending.resume) {
        // The certified Closed is re-delivered: wait for it.
      } else {
        const gone = pending.resume && claimsGone(error);
        const c: Claim = { OpenError: error };
        out.push(this.fail(new SessionFailure(`Claim.OpenError.${errName(error)}`, `unverified gateway claim: ${describeClaim(c)}`, c), gone, now));
        return;
      }
      claim = error;
    }
    if (!pending.resume) {
      this.nextExpectedValue = 0n;
      this.lastAckSigned = 0n;
    }
    this.verifier = this.makeVerifier(this.clientIdValue ?? 0n);
    const conn = this.conn;
    if (!conn) return;
    conn.phase = { kind: "Confirming", pending, claim };
    const early = conn.early.splice(0);
    for (const f of early) {
      if (this.conn !== conn) return;
      await this.onMessages(f.messages, f.certificate, f.tree, now, out);
    }
  }

  private async onMessages(messages: OutboundMessage[], certificate: Uint8Array, tree: Uint8Array, now: bigint, out: Action[]): Promise<void> {
    const conn = this.conn;
    try {
      await this.interpret(messages, certificate, tree, now, out);
    } catch (e) {
      if (this.conn !== conn) return;
      if (e instanceof SessionFailure) out.push(this.fail(e, false, now));
      else if (e instanceof VerifyError) out.push(this.fail(new SessionFailure(`Verify.${e.check}`, `verification failed: ${e.message}`), false, now));
      else throw e;
    }
  }

  /** Checks one frame (1-6) and applies it; on error nothing changes. */
  private async interpret(messages: OutboundMessage[], certificate: Uint8Array, tree: Uint8Array, now: bigint, out: Action[]): Promise<void> {
    const conn = this.conn;
    if (!conn || (conn.phase.kind !== "Confirming" && conn.phase.kind !== "Ready")) {
      throw new SessionFailure("Protocol", "Messages before the open result");
    }
    const verified: VerifiedMessage[] = await this.verifier.verify(messages, certificate, tree, this.nextExpectedValue, now);
    if (this.conn !== conn) return; // the connection ended meanwhile (timeout)
    let pending: PendingOpen | undefined = conn.phase.kind === "Confirming" ? conn.phase.pending : undefined;
    const clientId = this.clientIdValue ?? 0n;
    const ownKey = this.key.publicKey;
    const events: SessionEvent[] = [];
    let opened: { k: bigint; limits: CertifiedLimits } | undefined;
    let rejectedUpto: bigint | undefined;
    let end: SessionFailure | undefined;
    for (const m of verified) {
      if (end) throw new SessionFailure("Protocol", `message ${m.seq} after the session's end`);
      const newSession = pending !== undefined && !pending.resume;
      const body = m.content.body;
      if ("Opened" in body) {
        const o = body.Opened;
        const p = pending;
        if (!p) throw binding("UnexpectedOpened", `unexpected Opened (seq ${m.seq}): no open outstanding`);
        if (!bytesEqual(o.client_key, ownKey)) throw binding("WrongKey", `Opened (seq ${m.seq}) binds another key`);
        if (p.resume && o.open_timestamp_ns < p.timestampNs) continue; // an earlier open's confirmation
        if (o.open_timestamp_ns !== p.timestampNs) throw binding("WrongOpenTimestamp", `Opened (seq ${m.seq}) confirms the open at ${o.open_timestamp_ns} ns, not ours at ${p.timestampNs} ns`);
        if (o.resumed !== p.resume) throw binding("WrongResumeFlag", `Opened (seq ${m.seq}) has resumed = ${o.resumed}, expected ${p.resume}`);
        const bound = o.principal?.[0];
        const expected = this.config.prover?.principal;
        if ((bound === undefined) !== (expected === undefined) || (bound && expected && bound.toText() !== expected.toText())) {
          throw binding("WrongPrincipal", `Opened (seq ${m.seq}) binds principal ${bound?.toText() ?? "none (anonymous)"}, expected ${expected?.toText() ?? "none (anonymous)"}`);
        }
        pending = undefined;
        opened = { k: o.next_inbound_seq, limits: { maxInboundPayloadBytes: o.max_inbound_payload_bytes, idleTimeoutNs: o.idle_timeout_ns } };
        events.push({ Opened: { clientId, resumed: o.resumed, nextInboundSeq: o.next_inbound_seq, resent: 0 } });
      } else if ("OpenRejected" in body) {
        const r = body.OpenRejected;
        const p = pending;
        if (!p || p.resume || m.seq !== 0n) throw binding("UnexpectedOpenRejected", `unexpected OpenRejected (seq ${m.seq})`);
        if (!bytesEqual(r.client_key, ownKey)) throw binding("WrongKey", `OpenRejected (seq ${m.seq}) names another key`);
        if (r.open_timestamp_ns !== p.timestampNs) throw binding("WrongOpenTimestamp", `OpenRejected (seq ${m.seq}) answers the open at ${r.open_timestamp_ns} ns, not ours at ${p.timestampNs} ns`);
        events.push({ OpenRejected: { clientId, error: r.error } });
        end = new SessionFailure("OpenRejected", `open rejected (certified, session ${clientId}): ${errName(r.error)}`);
      } else if (newSession) {
        throw binding("NotOpenedFirst", `first message of the new session (seq ${m.seq}) is not Opened`);
      } else if ("App" in body) {
        events.push({ Message: { seq: m.seq, timestampNs: m.content.timestamp_ns, topic: body.App.topic[0], payload: body.App.payload, certificateTimeNs: m.certificateTimeNs } });
      } else if ("MessageRejected" in body) {
        const r = body.MessageRejected;
        if (r.inbound_seq >= this.nextSeq) throw binding("InboundBeyondSent", `certified next inbound seq ${r.inbound_seq + 1n}, but only ${this.nextSeq} messages were sent`);
        if (rejectedUpto === undefined || r.inbound_seq > rejectedUpto) rejectedUpto = r.inbound_seq;
        events.push({ MessageRejected: { seq: r.inbound_seq, error: r.error } });
      } else if ("Closed" in body) {
        events.push({ Closed: body.Closed.reason });
        end = new SessionFailure("SessionClosed", "session closed");
      }
    }
    let lost: SessionFailure | undefined;
    if (opened) {
      const k = opened.k;
      if (k > this.nextSeq) throw binding("InboundBeyondSent", `certified next inbound seq ${k}, but only ${this.nextSeq} messages were sent`);
      const kept = this.unconfirmedQueue.find((x) => x.seq >= k);
      const firstKept = kept ? kept.seq : this.nextSeq;
      if (firstKept > k) lost = new SessionFailure("OutboundLost", `own messages ${k}..${firstKept} were lost before the canister accepted them`);
    }
    // Commit.
    this.nextExpectedValue += BigInt(verified.length);
    if (rejectedUpto !== undefined) this.confirmUpto(rejectedUpto + 1n);
    let resend: ClientMessage[] = [];
    if (opened) {
      this.limitsValue = opened.limits;
      this.confirmed = true;
      this.confirmUpto(opened.k);
      this.resumeRefusals = 0;
      this.waitUntil = undefined;
      if (!lost) {
        resend = [...this.unconfirmedQueue];
        for (const e of events) if ("Opened" in e) e.Opened.resent = resend.length;
        conn.phase = { kind: "Ready" };
      }
    }
    for (const e of events) out.push({ Emit: e });
    if (lost) {
      this.giveUpLost(lost, out);
      return;
    }
    for (const m of resend) this.write({ Message: m }, now, out);
    if (end) {
      this.stopped = true;
      this.conn = undefined;
      out.push({ Close: { error: end, next: "Stop" } });
      return;
    }
    if (this.isReady && this.nextExpectedValue - this.lastAckSigned > this.config.ackThreshold) {
      const m = this.sign({ KeepAlive: null }, now);
      if (m) this.write({ Message: m }, now, out);
    }
  }

  private confirmUpto(k: bigint): void {
    if (k > this.confirmedInbound) this.confirmedInbound = k;
    while (this.unconfirmedQueue.length > 0 && this.unconfirmedQueue[0]!.seq < k) this.unconfirmedQueue.shift();
  }

  private sign(kind: MessageKind, now: bigint): ClientMessage | undefined {
    if (!this.confirmed || this.clientIdValue === undefined) return undefined;
    const msg = this.key.signMessage(this.config.canisterId, { client_id: this.clientIdValue, seq: this.nextSeq, ack: this.nextExpectedValue, kind });
    this.nextSeq += 1n;
    this.lastAckSigned = this.nextExpectedValue;
    if (now > this.lastMessageSignedAt) this.lastMessageSignedAt = now;
    this.unconfirmedQueue.push(msg);
    if (this.unconfirmedQueue.length > this.config.resendBuffer) this.unconfirmedQueue.shift();
    return msg;
  }

  private write(frame: ClientFrame, now: bigint, out: Action[]): void {
    if (this.conn) this.conn.lastSent = now;
    out.push({ Write: frame });
  }

  private fail(error: SessionFailure, goneClaim: boolean, now: bigint): Action {
    const phase = this.conn?.phase;
    const pending = phase && (phase.kind === "OpenResult" || phase.kind === "Confirming") ? phase.pending : undefined;
    const resuming = pending?.resume === true;
    const closedClaim = phase?.kind === "Confirming" && phase.claim !== undefined && "Closed" in phase.claim;
    const newOpenUnconfirmed = pending !== undefined && !pending.resume;
    this.conn = undefined;
    if (newOpenUnconfirmed && !this.confirmed) this.clientIdValue = undefined;
    if (this.stopped) return { Close: { error, next: "Stop" } };
    if (resuming && (goneClaim || closedClaim)) this.resumeRefusals += 1;
    if (this.waitUntil !== undefined) return { Close: { error, next: { WaitUntil: this.waitUntil } } };
    if (this.confirmed && this.resumeRefusals >= Math.max(1, this.config.resumeRefusalsBeforeWait)) {
      const until = this.expiryProvenAt();
      if (until !== undefined) {
        this.waitUntil = until;
        return { Close: { error, next: now >= until ? "ReconnectNow" : { WaitUntil: until } } };
      }
    }
    return { Close: { error, next: "Reconnect" } };
  }

  private giveUpLost(error: SessionFailure, out: Action[]): void {
    const clientId = this.clientIdValue ?? 0n;
    const dropped = this.loseSession();
    this.conn = undefined;
    out.push({ Emit: { SessionLost: { clientId, droppedOutgoing: dropped } } });
    let next: Next = "ReconnectNow";
    if (this.config.onSessionLost === "Stop") {
      this.stopped = true;
      next = "Stop";
    }
    out.push({ Close: { error, next } });
  }

  private loseSession(): bigint {
    const dropped = this.nextSeq > this.confirmedInbound ? this.nextSeq - this.confirmedInbound : 0n;
    this.key = SessionKey.fromSeed(this.keys());
    this.proof = undefined;
    this.clientIdValue = undefined;
    this.confirmed = false;
    this.nextExpectedValue = 0n;
    this.lastAckSigned = 0n;
    this.nextSeq = 0n;
    this.confirmedInbound = 0n;
    this.unconfirmedQueue = [];
    this.lastOpenTs = 0n;
    this.lastMessageSignedAt = 0n;
    this.resumeRefusals = 0;
    this.waitUntil = undefined;
    return dropped;
  }
}
