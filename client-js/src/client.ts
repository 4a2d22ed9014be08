/**
 * `IcWsClient`: one ic-ws session with a canister through an (untrusted) gateway.
 *
 * It owns the connection life cycle (docs/protocol.md): open or resume with a signed request,
 * verify every delivered frame ({@link DeliveryVerifier}, then the certified `Opened` that
 * binds the client id to this client's key), sign and number outgoing messages, acknowledge
 * what it received (piggybacked, plus a `KeepAlive` every 30 s or after 64 unacknowledged
 * messages), and reconnect with exponential backoff, resuming from the last verified
 * sequence number and re-sending its own unconfirmed messages.
 *
 * Nothing a gateway sends is shown to the application unless it passed every check: a frame
 * that fails one is dropped whole, reported as an `error` event naming the check, and the
 * connection is closed and resumed.
 */
import { IDL } from "@icp-sdk/core/candid";
import { Principal } from "@icp-sdk/core/principal";
import { boundedText, bytesEqual, MAX_CLOSE_REASON_BYTES, MAX_PEER_TEXT_BYTES } from "./bytes.js";
import { SessionKey } from "./signing.js";
import { loadSession, MemoryStorage, saveSession } from "./storage.js";
import type { KeyValueStorage, StoredSession } from "./storage.js";
import {
  decodeGatewayFrame, describeWsError, encodeClientFrame, PROTOCOL_VERSION, wsErrorName,
} from "./types.js";
import type { ClientMessage, CloseReason, GatewayFrame, MessageKind, OpenOk, OutboundMessage, WsError } from "./types.js";
import { DeliveryVerifier, MAINNET_ROOT_KEY_DER, nowNs, VerifyError } from "./verify.js";
import type { VerifyCheck, VerifiedMessage } from "./verify.js";

/** Connection state, as a page would show it. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** Names of everything that can go wrong, for `error` events. */
export type ErrorKind =
  /** A delivery check failed (the gateway or the network tampered with a frame). */
  | VerifyCheck
  /** The gateway broke the protocol (bad frame, frame out of order, wrong version). */
  | "ProtocolViolation"
  /** The canister refused the open (see `wsError`). */
  | "OpenFailed"
  /** The session could not be resumed: a new one was started and messages may be missing. */
  | "ResumeUnavailable"
  /** The canister rejected one of this client's messages (see `wsError`). */
  | "MessageRejected"
  /** A certified app payload does not decode as the configured outbound type. */
  | "BadPayload"
  /** The WebSocket failed (network, gateway down). */
  | "Transport";

/** An `error` event. `check` is the failed check (or other error kind). */
export class IcWsError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** True when the failure proves that a gateway (or something between) tampered with data. */
    readonly tampering: boolean,
    readonly wsError?: WsError,
  ) {
    super(message);
    this.name = "IcWsError";
  }
  /** Alias of {@link kind}: the name of the failed check. */
  get check(): ErrorKind {
    return this.kind;
  }
}

/** Payload of `open` events: the canister certified the binding of `clientId` to our key. */
export interface OpenEvent {
  clientId: bigint;
  resumed: boolean;
}

/** Payload of `message` events: one verified application message. */
export interface MessageEvent<Out> {
  data: Out;
  seq: bigint;
  topic?: string;
  /** Canister time when the message was queued (certified). */
  timestampNs: bigint;
  /** `/time` of the IC certificate that certified it. */
  certificateTimeNs: bigint;
}

/** Payload of `close` events. */
export interface CloseEvent {
  /** WebSocket close code. */
  code: number;
  reason: string;
  /** The certified reason when the canister ended the session (then no reconnect follows). */
  sessionClosed?: CloseReason;
  /** Whether the client will reconnect by itself. */
  willReconnect: boolean;
}

/** Payload of `batch` events: one `Messages` frame passed every check. */
export interface BatchEvent {
  /** Messages in the frame. */
  messages: number;
  /** Time spent verifying it (all checks), in milliseconds. */
  verifyMs: number;
}

interface Events<Out> {
  open: OpenEvent;
  batch: BatchEvent;
  message: MessageEvent<Out>;
  close: CloseEvent;
  error: IcWsError;
  state: ConnectionState;
}

/** Minimal WebSocket interface shared by browsers' WebSocket and the `ws` package. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Reconnection policy. */
export interface ReconnectOptions {
  /** First delay (default 500 ms); doubles on every failed attempt. */
  initialDelayMs?: number;
  /** Upper bound of the delay (default 30 s). */
  maxDelayMs?: number;
  /** Give up after this many attempts in a row (default: never). */
  maxAttempts?: number;
}

export interface IcWsClientOptions<In, Out> {
  /** `ws://` or `wss://` address of a gateway. */
  gatewayUrl: string;
  canisterId: Principal | string;
  /** IC root key (DER, 133 bytes). Default: the mainnet key. A local replica has its own. */
  rootKey?: Uint8Array;
  /** Candid type of what the client sends (the canister's `on_message` argument). */
  inboundType?: IDL.Type;
  /** Candid type of what the canister sends. Without it, `data` is the raw candid bytes. */
  outboundType?: IDL.Type;
  /** Candid bytes given to the canister's `on_open` (default: empty). */
  openArgs?: Uint8Array;
  /** Where the session is kept for resuming (default: `sessionStorage` in browsers, memory in Node). `null` disables persistence. */
  storage?: KeyValueStorage | null;
  /** Storage key (default `ic-ws:<canisterId>`). */
  storageKey?: string;
  /** Maximum certificate age (default 5 min). */
  maxCertificateAgeMs?: number;
  /** Send a signed KeepAlive when nothing was sent for this long (default 30 s). */
  keepAliveIntervalMs?: number;
  /** Send an acknowledgement at once when this many messages are unacknowledged (default 64). */
  ackThreshold?: number;
  /** `false` disables reconnection; otherwise the backoff policy. */
  reconnect?: boolean | ReconnectOptions;
  /** Largest inbound app payload accepted by `send` (default 64 KiB, the canister's default). */
  maxPayloadBytes?: number;
  /** Time allowed from connecting until the certified `Opened` arrives (default 30 s); then the client reconnects. */
  openTimeoutMs?: number;
  /** Cap on signed messages kept until the canister confirms them (default 1024). */
  maxUnconfirmed?: number;
  /** WebSocket implementation (default: the global one, else the `ws` package in Node). */
  WebSocket?: WebSocketConstructor;
  /** Clock in ns since the epoch (tests). */
  now?: () => bigint;
}

type Listener<T> = (value: T) => void;

/** Close code the client uses when a delivered frame fails a check. */
export const CLOSE_VERIFICATION_FAILED = 4100;
/** Close code the client uses when the gateway breaks the protocol. */
export const CLOSE_PROTOCOL_VIOLATION = 4101;

const WS_OPEN = 1;

function defaultStorage(): KeyValueStorage {
  const s = (globalThis as { sessionStorage?: KeyValueStorage }).sessionStorage;
  return s ?? new MemoryStorage();
}

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const g = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (g) return g;
  // Node 20 has no global WebSocket (without a flag): use the `ws` package. The specifier is
  // a variable so that browser bundlers do not try to bundle it.
  const name = "ws";
  const mod = (await import(/* @vite-ignore */ name)) as { WebSocket: WebSocketConstructor };
  return mod.WebSocket;
}

function toBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (Array.isArray(data) && data.every((d) => d instanceof Uint8Array)) {
    // `ws` may deliver fragmented messages as a list of buffers.
    const len = data.reduce((n: number, d: Uint8Array) => n + d.length, 0);
    const out = new Uint8Array(len);
    let off = 0;
    for (const d of data as Uint8Array[]) {
      out.set(d, off);
      off += d.length;
    }
    return out;
  }
  return undefined;
}

/** Per-connection state; a new one for every WebSocket. */
interface Connection {
  ws: WebSocketLike;
  phase: "hello" | "opening" | "streaming";
  /** Timestamp of this connection's signed open. */
  openTimestampNs: bigint;
  resuming: boolean;
  /** Set once the certified `Opened` of this open was verified. */
  confirmed: boolean;
  verifier?: DeliveryVerifier;
  openTimer?: ReturnType<typeof setTimeout>;
  /** `Messages` frames that arrived before the `OpenResult` (checked once it arrives). */
  early: { messages: OutboundMessage[]; certificate: Uint8Array; tree: Uint8Array }[];
}

/**
 * A verified ic-ws session. `In` is what the client sends, `Out` what the canister sends.
 *
 * ```ts
 * const client = new IcWsClient({ gatewayUrl, canisterId, rootKey, inboundType, outboundType });
 * client.on("message", (m) => console.log("verified", m.data));
 * client.connect();
 * client.send({ text: "hi" });
 * ```
 */
export class IcWsClient<In = Uint8Array, Out = Uint8Array> {
  readonly canisterId: Principal;
  private readonly opts: IcWsClientOptions<In, Out>;
  private readonly rootKey: Uint8Array;
  private readonly storage: KeyValueStorage;
  private readonly storageKey: string;
  private readonly now: () => bigint;
  private readonly listeners: { [K in keyof Events<Out>]: Set<Listener<Events<Out>[K]>> } = {
    open: new Set(), batch: new Set(), message: new Set(), close: new Set(), error: new Set(), state: new Set(),
  };

  private session: StoredSession;
  private key: SessionKey;
  private conn?: Connection;
  private _state: ConnectionState = "idle";
  /** Payloads waiting for an open session to be signed and sent. */
  private queued: MessageKind[] = [];
  private lastAckSent = 0n;
  private lastSendAt = 0;
  private keepAliveTimer?: ReturnType<typeof setInterval>;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private closeTimer?: ReturnType<typeof setTimeout>;
  private attempts = 0;
  private stopped = false;
  private closing = false;
  /** The session ended (closed by the client or the canister); `connect()` starts a new one. */
  private ended = false;
  /** Frames are verified one after the other (verification is asynchronous). */
  private chain: Promise<void> = Promise.resolve();

  constructor(options: IcWsClientOptions<In, Out>) {
    this.opts = options;
    this.canisterId = typeof options.canisterId === "string" ? Principal.fromText(options.canisterId) : options.canisterId;
    this.rootKey = options.rootKey ?? MAINNET_ROOT_KEY_DER;
    this.storage = options.storage === null ? new MemoryStorage() : options.storage ?? defaultStorage();
    this.storageKey = options.storageKey ?? `ic-ws:${this.canisterId.toText()}`;
    this.now = options.now ?? nowNs;
    const stored = loadSession(this.storage, this.storageKey);
    if (stored) {
      this.session = stored;
      this.key = SessionKey.fromHex(stored.keySeed);
    } else {
      this.key = SessionKey.generate();
      this.session = this.freshSession(this.key);
    }
  }

  private freshSession(key: SessionKey): StoredSession {
    return { keySeed: key.toJSON(), lastOpenTimestampNs: 0n, nextOutboundSeq: 0n, nextInboundSeq: 0n, outbox: [] };
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof Events<Out>>(event: K, listener: Listener<Events<Out>[K]>): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  private emit<K extends keyof Events<Out>>(event: K, value: Events<Out>[K]): void {
    for (const l of [...this.listeners[event]]) {
      try {
        l(value);
      } catch (e) {
        // A failing listener must not break verification or the connection.
        console.error(`ic-ws: ${String(event)} listener threw`, e);
      }
    }
  }

  /** The current connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** The session's client id, once certified. */
  get clientId(): bigint | undefined {
    return this.session.clientId;
  }

  /** The session key's public half. */
  get publicKey(): Uint8Array {
    return this.key.publicKey;
  }

  private setState(s: ConnectionState): void {
    if (s === this._state) return;
    this._state = s;
    this.emit("state", s);
  }

  /** Connects (or resumes the stored session). */
  connect(): void {
    if (this.closing && this.conn) return; // a close is in progress
    this.stopped = false;
    this.closing = false;
    this.ended = false;
    if (this.conn) return;
    void this.openSocket();
  }

  private async openSocket(): Promise<void> {
    this.setState(this.attempts === 0 ? "connecting" : "reconnecting");
    let Ctor: WebSocketConstructor;
    let ws: WebSocketLike;
    try {
      Ctor = this.opts.WebSocket ?? (await defaultWebSocket());
      ws = new Ctor(this.opts.gatewayUrl);
    } catch (e) {
      this.emit("error", new IcWsError("Transport", `cannot connect to ${this.opts.gatewayUrl}: ${String(e)}`, false));
      this.scheduleReconnect();
      return;
    }
    if (this.stopped) {
      ws.close(1000);
      return;
    }
    ws.binaryType = "arraybuffer";
    const conn: Connection = { ws, phase: "hello", openTimestampNs: 0n, resuming: false, confirmed: false, early: [] };
    this.conn = conn;
    const openTimeout = this.opts.openTimeoutMs ?? 30_000;
    conn.openTimer = setTimeout(() => {
      if (this.conn === conn && !conn.confirmed) {
        this.fail(conn, new IcWsError("Transport", `no certified confirmation of the open within ${openTimeout} ms`, false), 1000);
      }
    }, openTimeout);
    ws.onmessage = (ev) => {
      const bytes = toBytes(ev.data);
      this.chain = this.chain.then(() => this.onFrame(conn, bytes)).catch((e) => {
        this.fail(conn, new IcWsError("ProtocolViolation", `internal error handling a frame: ${String(e)}`, false), CLOSE_PROTOCOL_VIOLATION);
      });
    };
    ws.onerror = () => {
      // The close event follows and carries the decision to reconnect.
    };
    ws.onclose = (ev) => {
      this.chain = this.chain.then(() => this.onSocketClosed(conn, ev.code, ev.reason));
    };
  }

  private async onFrame(conn: Connection, bytes: Uint8Array | undefined): Promise<void> {
    if (this.conn !== conn) return;
    if (!bytes) {
      this.fail(conn, new IcWsError("ProtocolViolation", "gateway sent a text frame", false), CLOSE_PROTOCOL_VIOLATION);
      return;
    }
    let frame: GatewayFrame;
    try {
      frame = decodeGatewayFrame(bytes);
    } catch (e) {
      this.fail(conn, new IcWsError("ProtocolViolation", `gateway frame of ${bytes.length} bytes does not decode: ${boundedText(String(e), MAX_PEER_TEXT_BYTES)}`, false), CLOSE_PROTOCOL_VIOLATION);
      return;
    }
    if ("Hello" in frame) return this.onHello(conn, frame.Hello.gateway, frame.Hello.protocol_version);
    if ("OpenResult" in frame) {
      this.onOpenResult(conn, frame.OpenResult);
      // A gateway may relay the first certified messages before the open's reply.
      for (const f of conn.early.splice(0)) {
        if (this.conn !== conn || conn.phase !== "streaming") return;
        await this.onMessages(conn, f.messages, f.certificate, f.tree);
      }
      return;
    }
    if ("Messages" in frame) return this.onMessages(conn, frame.Messages.messages, frame.Messages.certificate, frame.Messages.tree);
    if ("MessageError" in frame) return this.onMessageError(frame.MessageError.seq, frame.MessageError.error);
  }

  private onHello(conn: Connection, gateway: Principal, version: number): void {
    if (conn.phase !== "hello") {
      this.fail(conn, new IcWsError("ProtocolViolation", "unexpected Hello", false), CLOSE_PROTOCOL_VIOLATION);
      return;
    }
    if (version !== PROTOCOL_VERSION) {
      this.fail(conn, new IcWsError("ProtocolViolation", `gateway speaks protocol ${version}, client ${PROTOCOL_VERSION}`, false), CLOSE_PROTOCOL_VIOLATION);
      return;
    }
    const s = this.session;
    // Opens must carry increasing timestamps (the canister rejects a replayed open).
    const now = this.now();
    const ts = now > s.lastOpenTimestampNs ? now : s.lastOpenTimestampNs + 1n;
    s.lastOpenTimestampNs = ts;
    conn.openTimestampNs = ts;
    conn.resuming = s.clientId !== undefined;
    const request = this.key.signOpen(this.canisterId, {
      client_key: this.key.publicKey,
      gateway,
      timestamp_ns: ts,
      resume: s.clientId !== undefined ? [{ client_id: s.clientId, next_outbound_seq: s.nextOutboundSeq }] : [],
      args: this.opts.openArgs ?? new Uint8Array(),
    });
    this.persist();
    conn.phase = "opening";
    this.sendFrame(conn, encodeClientFrame({ Open: { canister_id: this.canisterId, request } }));
  }

  private onOpenResult(conn: Connection, result: { Ok: OpenOk } | { Err: WsError }): void {
    if (conn.phase !== "opening") {
      this.fail(conn, new IcWsError("ProtocolViolation", "unexpected OpenResult", false), CLOSE_PROTOCOL_VIOLATION);
      return;
    }
    if ("Err" in result) {
      const err = result.Err;
      const name = wsErrorName(err);
      if (conn.resuming && (name === "ResumeUnavailable" || name === "InvalidResume" || name === "UnknownClient" || name === "Closed")) {
        // The old session is gone: start a new one (with a new key) at the next attempt.
        this.emit("error", new IcWsError("ResumeUnavailable", `cannot resume the session (${describeWsError(err)}): starting a new one; messages may be missing`, false, err));
        this.resetSession();
        this.closeSocket(conn, 1000, "resume unavailable");
        return;
      }
      const fatal = name === "Rejected";
      this.emit("error", new IcWsError("OpenFailed", `the canister refused the open: ${describeWsError(err)}`, false, err));
      if (fatal) this.stopped = true;
      this.closeSocket(conn, 1000, "open failed");
      return;
    }
    const ok = result.Ok;
    const s = this.session;
    if (conn.resuming && ok.client_id !== s.clientId) {
      this.fail(conn, new IcWsError("ProtocolViolation", `gateway answered a resume of client ${s.clientId} with client ${ok.client_id}`, true), CLOSE_PROTOCOL_VIOLATION);
      return;
    }
    // For a new session the id is only a claim of the gateway until the certified `Opened`
    // at sequence 0 names our key; nothing is delivered before that.
    conn.verifier = new DeliveryVerifier({
      rootKeyDer: this.rootKey,
      canisterId: this.canisterId,
      clientId: ok.client_id,
      maxCertificateAgeNs: this.opts.maxCertificateAgeMs !== undefined ? BigInt(this.opts.maxCertificateAgeMs) * 1_000_000n : undefined,
    });
    if (!conn.resuming) {
      s.nextOutboundSeq = 0n;
    }
    conn.phase = "streaming";
  }

  private async onMessages(conn: Connection, messages: OutboundMessage[], certificate: Uint8Array, tree: Uint8Array): Promise<void> {
    if (conn.phase === "opening" && conn.early.length < 16) {
      conn.early.push({ messages, certificate, tree });
      return;
    }
    if (conn.phase !== "streaming" || !conn.verifier) {
      this.fail(conn, new IcWsError("ProtocolViolation", "Messages before the open completed", false), CLOSE_PROTOCOL_VIOLATION);
      return;
    }
    let verified: VerifiedMessage[];
    const started = performance.now();
    try {
      verified = await conn.verifier.verify(messages, certificate, tree, this.session.nextOutboundSeq, this.now());
    } catch (e) {
      if (e instanceof VerifyError) {
        this.fail(conn, new IcWsError(e.check, e.message, true), CLOSE_VERIFICATION_FAILED);
      } else {
        this.fail(conn, new IcWsError("ProtocolViolation", String(e), false), CLOSE_PROTOCOL_VIOLATION);
      }
      return;
    }
    if (this.conn !== conn) return;
    this.emit("batch", { messages: verified.length, verifyMs: performance.now() - started });
    // Check the whole frame's Opened messages before delivering anything from it.
    let confirmed = conn.confirmed;
    for (const m of verified) {
      const body = m.content.body;
      if (!confirmed && !conn.resuming && !("Opened" in body)) {
        this.fail(conn, new IcWsError("OpenedMismatch", `message ${m.seq}: a new session must start with a certified Opened`, true), CLOSE_VERIFICATION_FAILED);
        return;
      }
      if ("Opened" in body) {
        const o = body.Opened;
        const mine = bytesEqual(o.client_key, this.key.publicKey);
        const ours = o.open_timestamp_ns === conn.openTimestampNs;
        // An earlier Opened of this session may be re-delivered on resume (older timestamp).
        if (!mine || o.open_timestamp_ns > conn.openTimestampNs || (ours && o.resumed !== conn.resuming) || (!conn.resuming && !ours)) {
          this.fail(conn, new IcWsError("OpenedMismatch", `message ${m.seq}: certified Opened does not confirm this client's open`, true), CLOSE_VERIFICATION_FAILED);
          return;
        }
        if (ours) confirmed = true;
      }
    }
    for (const m of verified) {
      this.session.nextOutboundSeq = m.seq + 1n;
      const body = m.content.body;
      if ("Opened" in body) {
        if (body.Opened.open_timestamp_ns === conn.openTimestampNs) {
          this.onConfirmed(conn, body.Opened.next_inbound_seq, body.Opened.resumed);
          if (this.conn !== conn) return;
        }
      } else if ("App" in body) {
        this.deliver(m, body.App.topic, body.App.payload);
      } else if ("Closed" in body) {
        this.persist();
        this.onSessionClosed(conn, body.Closed.reason);
        return;
      }
    }
    this.persist();
    if (this.session.nextOutboundSeq - this.lastAckSent >= BigInt(this.opts.ackThreshold ?? 64) && conn.confirmed) {
      this.sendSigned({ KeepAlive: null });
    }
  }

  private deliver(m: VerifiedMessage, topic: [] | [string], payload: Uint8Array): void {
    let data: Out;
    if (this.opts.outboundType) {
      try {
        data = IDL.decode([this.opts.outboundType], payload)[0] as Out;
      } catch (e) {
        this.emit("error", new IcWsError("BadPayload", `message ${m.seq}: certified payload does not decode as the outbound type: ${String(e)}`, false));
        return;
      }
    } else {
      data = payload as unknown as Out;
    }
    this.emit("message", {
      data,
      seq: m.seq,
      topic: topic[0],
      timestampNs: m.content.timestamp_ns,
      certificateTimeNs: m.certificateTimeNs,
    });
  }

  /** The canister certified our open: the session is live. */
  private onConfirmed(conn: Connection, nextInboundSeq: bigint, resumed: boolean): void {
    conn.confirmed = true;
    clearTimeout(conn.openTimer);
    const s = this.session;
    s.clientId = conn.verifier!.clientId;
    // Messages below next_inbound_seq were accepted; the rest are re-sent as signed.
    s.outbox = s.outbox.filter((m) => m.seq >= nextInboundSeq);
    if (s.outbox.length > 0 && s.outbox[0]!.seq !== nextInboundSeq) {
      // Some unconfirmed messages were dropped (cap or rejection): the canister would refuse
      // everything after the gap, so the session cannot go on.
      this.emit("error", new IcWsError("ResumeUnavailable", `cannot re-send message ${nextInboundSeq}: starting a new session`, false));
      this.resetSession();
      this.closeSocket(conn, 1000, "resume gap");
      return;
    }
    if (s.nextInboundSeq < nextInboundSeq) s.nextInboundSeq = nextInboundSeq;
    if (s.outbox.length === 0) s.nextInboundSeq = nextInboundSeq;
    this.attempts = 0;
    this.setState("open");
    this.emit("open", { clientId: s.clientId, resumed });
    for (const m of s.outbox) this.sendFrame(conn, encodeClientFrame({ Message: m }));
    const queued = this.queued;
    this.queued = [];
    for (const k of queued) this.sendSigned(k);
    this.persist();
    this.startKeepAlive();
  }

  private onSessionClosed(conn: Connection, reason: CloseReason): void {
    this.stopped = true;
    this.ended = true;
    this.queued = [];
    if (this.closeTimer !== undefined) clearTimeout(this.closeTimer);
    this.stopKeepAlive();
    this.storage.removeItem(this.storageKey);
    this.conn = undefined;
    clearTimeout(conn.openTimer);
    conn.ws.onclose = null;
    conn.ws.onmessage = null;
    try {
      conn.ws.close(1000, "session closed");
    } catch {
      // Already closing.
    }
    this.key = SessionKey.generate();
    this.session = this.freshSession(this.key);
    this.lastAckSent = 0n;
    this.setState("closed");
    const [name, value] = Object.entries(reason)[0] ?? ["", null];
    const text = value && typeof value === "object" ? `${name}: ${(value as { reason: string }).reason}` : name;
    this.emit("close", { code: 4000, reason: text, sessionClosed: reason, willReconnect: false });
  }

  private onMessageError(seq: bigint, error: WsError): void {
    const name = wsErrorName(error);
    // Rejected and DecodeError consume the sequence number; other errors leave a gap the
    // canister will never fill. Either way the message will not be re-sent.
    this.session.outbox = this.session.outbox.filter((m) => m.seq !== seq);
    this.persist();
    this.emit("error", new IcWsError("MessageRejected", `message ${seq} rejected by the canister: ${describeWsError(error)}`, name === "InvalidSignature", error));
  }

  /** Signs and sends an application message (queued while not connected). */
  send(data: In): void {
    let payload: Uint8Array;
    if (this.opts.inboundType) {
      payload = IDL.encode([this.opts.inboundType], [data]);
    } else if (data instanceof Uint8Array) {
      payload = data;
    } else {
      throw new TypeError("send: no inboundType configured, so data must be candid bytes (Uint8Array)");
    }
    const limit = this.opts.maxPayloadBytes ?? 64 * 1024;
    if (payload.length > limit) throw new RangeError(`send: payload of ${payload.length} bytes exceeds ${limit}`);
    if (this.ended || this.closing) throw new Error("send: the session is closed");
    if (this.conn?.confirmed) this.sendSigned({ App: payload });
    else this.queued.push({ App: payload });
  }

  private sendSigned(kind: MessageKind): void {
    const conn = this.conn;
    const s = this.session;
    if (!conn || !conn.confirmed || s.clientId === undefined) {
      this.queued.push(kind);
      return;
    }
    const msg: ClientMessage = this.key.signMessage(this.canisterId, {
      client_id: s.clientId,
      seq: s.nextInboundSeq,
      ack: s.nextOutboundSeq,
      kind,
    });
    s.nextInboundSeq += 1n;
    s.outbox.push(msg);
    const cap = this.opts.maxUnconfirmed ?? 1024;
    if (s.outbox.length > cap) s.outbox.splice(0, s.outbox.length - cap);
    this.persist();
    this.lastAckSent = msg.ack;
    this.sendFrame(conn, encodeClientFrame({ Message: msg }));
  }

  private sendFrame(conn: Connection, bytes: Uint8Array): void {
    if (conn.ws.readyState !== WS_OPEN) return;
    this.lastSendAt = Date.now();
    try {
      conn.ws.send(bytes);
    } catch (e) {
      this.emit("error", new IcWsError("Transport", `send failed: ${String(e)}`, false));
    }
  }

  private startKeepAlive(): void {
    this.stopKeepAlive();
    const interval = this.opts.keepAliveIntervalMs ?? 30_000;
    // Check often enough that a KeepAlive goes out at most `interval` after the last send.
    this.keepAliveTimer = setInterval(() => {
      if (this.conn?.confirmed && Date.now() - this.lastSendAt >= interval - 50) this.sendSigned({ KeepAlive: null });
    }, Math.max(50, Math.floor(interval / 3)));
  }

  private stopKeepAlive(): void {
    if (this.keepAliveTimer !== undefined) clearInterval(this.keepAliveTimer);
    this.keepAliveTimer = undefined;
  }

  /** Reports `error`, drops the connection and lets the reconnect logic resume. */
  private fail(conn: Connection, err: IcWsError, code: number): void {
    if (this.conn !== conn) return;
    this.emit("error", err);
    this.closeSocket(conn, code, err.kind);
  }

  private closeSocket(conn: Connection, code: number, reason: string): void {
    try {
      conn.ws.close(code, boundedText(reason, MAX_CLOSE_REASON_BYTES));
    } catch {
      // Already closed.
    }
    // Do not wait for the close handshake of a misbehaving gateway.
    void this.onSocketClosed(conn, code, reason);
  }

  private onSocketClosed(conn: Connection, code: number, reason: string): void {
    if (this.conn !== conn) return;
    this.conn = undefined;
    clearTimeout(conn.openTimer);
    conn.ws.onmessage = null;
    conn.ws.onclose = null;
    this.stopKeepAlive();
    this.persist();
    const reconnect = !this.stopped && this.opts.reconnect !== false;
    const limit = typeof this.opts.reconnect === "object" ? this.opts.reconnect.maxAttempts : undefined;
    const willReconnect = reconnect && (limit === undefined || this.attempts < limit);
    this.emit("close", { code, reason, willReconnect });
    if (willReconnect) this.scheduleReconnect();
    else this.setState("closed");
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.opts.reconnect === false) {
      this.setState("closed");
      return;
    }
    const r = typeof this.opts.reconnect === "object" ? this.opts.reconnect : {};
    const base = r.initialDelayMs ?? 500;
    const max = r.maxDelayMs ?? 30_000;
    const delay = Math.min(max, base * 2 ** Math.min(this.attempts, 20));
    // Jitter spreads the reconnects of many clients after a gateway restart.
    const jittered = delay / 2 + Math.random() * (delay / 2);
    this.attempts += 1;
    this.setState("reconnecting");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.stopped && !this.conn) void this.openSocket();
    }, jittered);
  }

  private resetSession(): void {
    this.key = SessionKey.generate();
    this.session = this.freshSession(this.key);
    this.lastAckSent = 0n;
    this.persist();
  }

  private persist(): void {
    // A session being closed is not resumed later (not even after a page reload).
    if (this.closing) return;
    saveSession(this.storage, this.storageKey, this.session);
  }

  /**
   * Ends the session: sends a signed Close so the canister runs `on_close` now, then closes
   * the WebSocket (when the certified `Closed` arrives, or after `timeoutMs`).
   */
  close(code = 1000, reason = "client closed", timeoutMs = 3000): void {
    if (this.closing || this._state === "closed") return;
    this.stopped = true;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    const conn = this.conn;
    if (!conn || !conn.confirmed) {
      this.closing = true;
      this.storage.removeItem(this.storageKey);
      this.disconnect();
      return;
    }
    this.sendSigned({ Close: { code, reason } });
    this.closing = true;
    this.storage.removeItem(this.storageKey);
    this.closeTimer = setTimeout(() => {
      if (this.conn === conn) this.disconnect();
    }, timeoutMs);
  }

  /**
   * Drops the connection without ending the session (it stays resumable, e.g. after a page
   * reload, until the canister expires it).
   */
  disconnect(): void {
    this.stopped = true;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    if (this.closeTimer !== undefined) clearTimeout(this.closeTimer);
    this.stopKeepAlive();
    const conn = this.conn;
    if (conn) this.closeSocket(conn, 1000, "client disconnected");
    else this.setState("closed");
  }
}
