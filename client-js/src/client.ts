/**
 * `IcWsClient`: one ic-ws session with a canister through (untrusted) gateways.
 *
 * The protocol decisions are the I/O-free state machine {@link ClientSession} (session.ts,
 * the mirror of the Rust `ic_ws_protocol::client::ClientSession`, tested against the same
 * vectors): open or resume, checks of every delivered frame, acknowledgements and
 * keep-alives, the resend queue, and which outcomes are facts. This file only does the I/O:
 * WebSockets, timers, storage, reconnects with backoff through the configured gateways, and
 * the application's events.
 *
 * Nothing a gateway sends is shown to the application unless it passed every check: a frame
 * that fails one is dropped whole, reported as an `error` event naming the check, and the
 * connection is closed and resumed. What a gateway merely claims (an open or message error)
 * is reported as `Unverified` (`certified: false`) and only makes the client retry elsewhere:
 * it never drops a message from the resend queue nor stops the client. Certified outcomes
 * (`MessageRejected`, `OpenRejected`, the session's `Closed`) are facts (`certified: true`).
 */
import type { SignIdentity } from "@icp-sdk/core/agent";
import { IDL } from "@icp-sdk/core/candid";
import { Principal } from "@icp-sdk/core/principal";
import { identityProver } from "./identity.js";
import type { Prover } from "./identity.js";
import { boundedText, fromHex, MAX_CLOSE_REASON_BYTES, MAX_PEER_TEXT_BYTES } from "./bytes.js";
import { ClientSession, DEFAULT_CLOCK_SKEW_NS, SendRefused, SessionFailure } from "./session.js";
import type { Action, Claim, Next, SessionEvent } from "./session.js";
import { loadSession, MemoryStorage, saveSession } from "./storage.js";
import type { KeyValueStorage } from "./storage.js";
import { decodeGatewayFrame, describeWsError, encodeClientFrame } from "./types.js";
import type { CloseReason, GatewayFrame, MessageKind, WsError } from "./types.js";
import { DEFAULT_MAX_CERTIFICATE_AGE_NS, MAINNET_ROOT_KEY_DER, isDerBlsKey, nowNs } from "./verify.js";
import type { VerifyCheck } from "./verify.js";

/** Connection state, as a page would show it. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** Names of everything that can go wrong, for `error` events. */
export type ErrorKind =
  /** A delivery check failed (the gateway or the network tampered with a frame). */
  | VerifyCheck
  /** The gateway broke the protocol (bad frame, frame out of order, wrong version). */
  | "ProtocolViolation"
  /** Uncertified: the gateway claims an open or message error (see `wsError`, `claim`). Only means "retry elsewhere"; nothing was dropped. */
  | "Unverified"
  /** Certified: the application refused this client's open (see `wsError`). The client stops. */
  | "OpenRejected"
  /** The session was given up (its expiry proven by the own clock after every gateway refused to resume it): a new one was started, own messages may be missing. */
  | "SessionLost"
  /** Certified: the canister consumed this client's message `seq` and its handler refused it (see `wsError`). */
  | "MessageRejected"
  /** A certified app payload does not decode as the configured outbound type. */
  | "BadPayload"
  /** Issue 10: the `identity` cannot authorise a session (its delegation expired, or it did not sign). The client stops. */
  | "Identity"
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
    /** True for certified outcomes (facts); false for what a gateway merely claims or for local failures. */
    readonly certified: boolean = false,
    /** The gateway's claim, for `Unverified` errors. */
    readonly claim?: Claim,
    /** For `MessageRejected`: the own message's sequence number. */
    readonly seq?: bigint,
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
  /** More gateways: after a failed connection (or an uncertified refusal) the client moves to the next one. */
  fallbackGatewayUrls?: string[];
  canisterId: Principal | string;
  /**
   * IC root key: DER bytes (133 bytes, as `agent.rootKey` / the replica's `/api/v2/status`
   * give it) or the same as a hex string. Default: the mainnet key. A local replica (dfx,
   * PocketIC, the embedded replica) has its own: pass it, or every certificate fails to verify.
   * A key that is not a DER BLS12-381 key is a configuration error thrown by the constructor.
   */
  rootKey?: Uint8Array | string;
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
  /** The canister's clock-skew window for opens (default 5 min): part of the own-clock proof that a session every gateway refuses to resume has expired. */
  clockSkewMs?: number;
  /** After the session was given up: open a new one (default) or stop. */
  onSessionLost?: "NewSession" | "Stop";
  /**
   * Issue 10: an IC identity whose principal the canister binds to each session (any
   * `@icp-sdk/core` `SignIdentity`: `Ed25519KeyIdentity`, `Secp256k1KeyIdentity`,
   * `ECDSAKeyIdentity`, or the `DelegationIdentity` Internet Identity's `AuthClient` returns).
   * Each new session key gets a delegation from it, restricted to this canister; the canister
   * verifies it at open and closes the session with `IdentityExpired` when the earliest
   * expiration of the chain passes (log in again and make a new client with the new identity:
   * a client keeps the identity it was given). Default: anonymous.
   */
  identity?: SignIdentity;
  /** Lifetime of the delegation to each session key (default 8 h; the identity's own chain may end earlier). */
  identityTtlMs?: number;
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

/** One WebSocket; a new one for every connection. */
interface Connection {
  ws: WebSocketLike;
  url: string;
}

function freshSeed(): Uint8Array {
  const seed = new Uint8Array(32);
  globalThis.crypto.getRandomValues(seed);
  return seed;
}

/**
 * The `rootKey` option as DER bytes: the mainnet key by default; hex is accepted; anything
 * that is not a DER BLS12-381 key is a configuration error (not, later, "tampering").
 */
function rootKeyOption(key: Uint8Array | string | undefined): Uint8Array {
  if (key === undefined) return MAINNET_ROOT_KEY_DER;
  let der: Uint8Array;
  if (typeof key === "string") {
    try {
      der = fromHex(key.trim().replace(/^0x/i, ""));
    } catch {
      throw new TypeError(`rootKey: not hex and not bytes (${JSON.stringify(key.slice(0, 16))}...); pass the DER root key (133 bytes) as a Uint8Array or a hex string`);
    }
  } else if (key instanceof Uint8Array) {
    der = key;
  } else {
    throw new TypeError(`rootKey: expected a Uint8Array or a hex string, got ${typeof key}`);
  }
  if (!isDerBlsKey(der)) {
    const hint = der.length === 96 ? " (this looks like the raw 96-byte key: pass the DER form, 133 bytes starting 308182...)" : "";
    throw new TypeError(`rootKey: not a DER BLS12-381 public key (${der.length} bytes; expected 133 bytes starting 308182...)${hint}`);
  }
  return der;
}

/** Whether `gatewayUrl` points at this machine (where a local replica, with its own root key, is likely). */
function isLocalUrl(url: string): boolean {
  try {
    const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
    return host === "localhost" || host.endsWith(".localhost") || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
  } catch {
    return false;
  }
}

/** The JS API's error kind for a failure the state machine reports with a connection's end. */
function errorFor(f: SessionFailure, openTimeoutMs: number, defaultRootKeyOnLocal = false): IcWsError | undefined {
  const k = f.kind;
  if (k === "Verify.BadCertificateSignature" && defaultRootKeyOnLocal) {
    return new IcWsError(
      "BadCertificateSignature",
      `${f.message}. The client uses the mainnet root key (no rootKey option) with a gateway on this machine: a local replica (dfx, PocketIC, the embedded replica) signs with its own key; pass it as rootKey (agent.rootKey after fetchRootKey(), or /api/v2/status). Otherwise this is tampering.`,
      true,
    );
  }
  if (k.startsWith("Verify.")) return new IcWsError(k.slice(7) as VerifyCheck, f.message, true);
  if (k.startsWith("Binding.")) return new IcWsError("OpenedMismatch", `${f.message} (${k.slice(8)})`, true);
  if (k === "Protocol" || k === "UnsupportedVersion") return new IcWsError("ProtocolViolation", f.message, false);
  if (k === "Identity") return new IcWsError("Identity", f.message, false);
  if (k === "Timeout") return new IcWsError("Transport", `no certified confirmation of the open within ${openTimeoutMs} ms (${f.message})`, false);
  // Claims were reported as `Unverified` when they arrived, a lost session as `SessionLost`,
  // certified ends by their events; transport failures by the `close` event.
  return undefined;
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
  private readonly storage: KeyValueStorage;
  private readonly storageKey: string;
  private readonly now: () => bigint;
  private readonly urls: string[];
  private readonly listeners: { [K in keyof Events<Out>]: Set<Listener<Events<Out>[K]>> } = {
    open: new Set(), batch: new Set(), message: new Set(), close: new Set(), error: new Set(), state: new Set(),
  };

  private machine: ClientSession;
  private conn?: Connection;
  private urlIndex = 0;
  private _state: ConnectionState = "idle";
  /** App payloads waiting for a session to be signed for (before the first `Opened`, or while a lost session is replaced). */
  private queued: MessageKind[] = [];
  private tickTimer?: ReturnType<typeof setTimeout>;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private closeTimer?: ReturnType<typeof setTimeout>;
  private attempts = 0;
  private stopped = false;
  private closing = false;
  /** The session ended (closed by the client or the canister, or a certified refusal); `connect()` starts a new one. */
  private ended = false;
  /** Inputs are handed to the machine one after the other (verification is asynchronous). */
  private chain: Promise<void> = Promise.resolve();
  private readonly rootKeyDer: Uint8Array;
  private readonly prover?: Prover;

  constructor(options: IcWsClientOptions<In, Out>) {
    this.rootKeyDer = rootKeyOption(options.rootKey);
    this.opts = options;
    this.canisterId = typeof options.canisterId === "string" ? Principal.fromText(options.canisterId) : options.canisterId;
    this.storage = options.storage === null ? new MemoryStorage() : options.storage ?? defaultStorage();
    this.storageKey = options.storageKey ?? `ic-ws:${this.canisterId.toText()}`;
    this.now = options.now ?? nowNs;
    this.urls = [options.gatewayUrl, ...(options.fallbackGatewayUrls ?? [])];
    this.prover = options.identity ? identityProver(options.identity, this.canisterId, options.identityTtlMs ?? 8 * 3600_000) : undefined;
    this.machine = this.newMachine(true);
  }

  private newMachine(restore: boolean): ClientSession {
    const o = this.opts;
    const ms = (v: number) => BigInt(Math.round(v)) * 1_000_000n;
    const stored = restore ? loadSession(this.storage, this.storageKey) : undefined;
    return new ClientSession({
      canisterId: this.canisterId,
      rootKeyDer: this.rootKeyDer,
      maxCertificateAgeNs: o.maxCertificateAgeMs !== undefined ? ms(o.maxCertificateAgeMs) : DEFAULT_MAX_CERTIFICATE_AGE_NS,
      openArgs: o.openArgs ?? new Uint8Array(),
      openTimeoutNs: ms(o.openTimeoutMs ?? 30_000),
      keepAliveIntervalNs: ms(o.keepAliveIntervalMs ?? 30_000),
      // The machine acknowledges when more than `ackThreshold` are unacknowledged.
      ackThreshold: BigInt(Math.max(0, (o.ackThreshold ?? 64) - 1)),
      resendBuffer: o.maxUnconfirmed ?? 1024,
      clockSkewNs: o.clockSkewMs !== undefined ? ms(o.clockSkewMs) : DEFAULT_CLOCK_SKEW_NS,
      resumeRefusalsBeforeWait: Math.max(2, this.urls.length),
      onSessionLost: o.onSessionLost ?? "NewSession",
      prover: this.prover,
    }, freshSeed, stored);
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
    return this.machine.clientId;
  }

  /** Issue 10: the principal this client's sessions prove (undefined: anonymous). */
  get principal(): Principal | undefined {
    return this.prover?.principal;
  }

  /** The session key's public half. */
  get publicKey(): Uint8Array {
    return this.machine.publicKey;
  }

  private setState(s: ConnectionState): void {
    if (s === this._state) return;
    this._state = s;
    this.emit("state", s);
  }

  /** Connects (or resumes the stored session). */
  connect(): void {
    if (this.closing && this.conn) return; // a close is in progress
    if (this.ended) {
      this.machine = this.newMachine(false);
      this.ended = false;
    }
    this.stopped = false;
    this.closing = false;
    if (this.conn || this.reconnectTimer !== undefined) return;
    void this.openSocket();
  }

  private async openSocket(): Promise<void> {
    this.setState(this.attempts === 0 ? "connecting" : "reconnecting");
    const url = this.urls[this.urlIndex % this.urls.length]!;
    let ws: WebSocketLike;
    try {
      const Ctor = this.opts.WebSocket ?? (await defaultWebSocket());
      ws = new Ctor(url);
    } catch (e) {
      this.emit("error", new IcWsError("Transport", `cannot connect to ${url}: ${String(e)}`, false));
      this.enqueue(() => this.apply(this.machine.connectionLost(new SessionFailure("Transport", String(e)), this.now()), undefined));
      return;
    }
    if (this.stopped) {
      ws.close(1000);
      return;
    }
    ws.binaryType = "arraybuffer";
    const conn: Connection = { ws, url };
    this.conn = conn;
    ws.onopen = () => {
      this.enqueue(() => (this.conn === conn ? this.apply(this.machine.connected(this.now()), conn) : undefined));
    };
    ws.onmessage = (ev) => {
      const bytes = toBytes(ev.data);
      this.enqueue(() => this.onFrame(conn, bytes));
    };
    ws.onerror = () => {
      // The close event follows.
    };
    ws.onclose = (ev) => {
      this.enqueue(() => {
        if (this.conn !== conn) return;
        const failure = new SessionFailure("GatewayClosed", `gateway closed the connection (code ${ev.code}: ${boundedText(ev.reason, MAX_PEER_TEXT_BYTES)})`);
        this.apply(this.machine.connectionLost(failure, this.now()), conn, ev.code, ev.reason);
      });
    };
  }

  private enqueue(step: () => void | Promise<void>): void {
    this.chain = this.chain.then(step).catch((e) => {
      console.error("ic-ws: internal error", e);
    });
  }

  private async onFrame(conn: Connection, bytes: Uint8Array | undefined): Promise<void> {
    if (this.conn !== conn) return;
    let frame: GatewayFrame;
    try {
      if (!bytes) throw new Error("gateway sent a text frame");
      frame = decodeGatewayFrame(bytes);
    } catch (e) {
      const text = bytes ? `gateway frame of ${bytes.length} bytes does not decode: ${boundedText(String(e), MAX_PEER_TEXT_BYTES)}` : "gateway sent a text frame";
      this.apply(this.machine.connectionLost(new SessionFailure("Protocol", text), this.now()), conn);
      return;
    }
    const started = performance.now();
    const actions = await this.machine.frame(frame, this.now());
    if ("Messages" in frame && actions.some((a) => "Emit" in a && ("Message" in a.Emit || "Opened" in a.Emit))) {
      this.emit("batch", { messages: frame.Messages.messages.length, verifyMs: performance.now() - started });
    }
    this.apply(actions, conn);
  }

  /** Carries out the machine's actions on `conn`. */
  private apply(actions: Action[], conn: Connection | undefined, code?: number, reason?: string): void {
    for (const a of actions) {
      if ("Write" in a) {
        if (conn && conn.ws.readyState === WS_OPEN) {
          try {
            conn.ws.send(encodeClientFrame(a.Write));
          } catch (e) {
            this.emit("error", new IcWsError("Transport", `send failed: ${String(e)}`, false));
          }
        }
      } else if ("Emit" in a) {
        this.onEvent(a.Emit);
      } else {
        this.onConnectionEnd(conn, a.Close.error, a.Close.next, code, reason);
      }
    }
    this.persist();
    this.scheduleTick();
  }

  private onEvent(e: SessionEvent): void {
    if ("Opened" in e) {
      this.attempts = 0;
      this.setState("open");
      this.emit("open", { clientId: e.Opened.clientId, resumed: e.Opened.resumed });
      const queued = this.queued;
      this.queued = [];
      for (const k of queued) this.signAndSend(k);
    } else if ("Message" in e) {
      const m = e.Message;
      let data: Out;
      if (this.opts.outboundType) {
        try {
          data = IDL.decode([this.opts.outboundType], m.payload)[0] as Out;
        } catch (err) {
          this.emit("error", new IcWsError("BadPayload", `message ${m.seq}: certified payload does not decode as the outbound type: ${String(err)}`, false, undefined, true));
          return;
        }
      } else {
        data = m.payload as unknown as Out;
      }
      this.emit("message", { data, seq: m.seq, topic: m.topic, timestampNs: m.timestampNs, certificateTimeNs: m.certificateTimeNs });
    } else if ("MessageRejected" in e) {
      const r = e.MessageRejected;
      this.emit("error", new IcWsError("MessageRejected", `message ${r.seq} rejected by the canister (certified): ${describeWsError(r.error)}`, false, r.error, true, undefined, r.seq));
    } else if ("OpenRejected" in e) {
      this.emit("error", new IcWsError("OpenRejected", `the canister refused the open (certified): ${describeWsError(e.OpenRejected.error)}`, false, e.OpenRejected.error, true));
    } else if ("Unverified" in e) {
      const c = e.Unverified;
      const error = "OpenError" in c ? c.OpenError : c.MessageError.error;
      const what = "OpenError" in c ? "the open was refused" : `message ${c.MessageError.seq} was refused`;
      this.emit("error", new IcWsError("Unverified", `the gateway claims (unverified) ${what}: ${describeWsError(error)}; retrying elsewhere`, false, error, false, c));
    } else if ("SessionLost" in e) {
      this.emit("error", new IcWsError("SessionLost", `session ${e.SessionLost.clientId} expired (proven by this client's clock): starting a new one; ${e.SessionLost.droppedOutgoing} own messages not delivered`, false));
    } else if ("Closed" in e) {
      this.onSessionClosed(e.Closed);
    }
  }

  private onConnectionEnd(conn: Connection | undefined, error: SessionFailure, next: Next, code?: number, reason?: string): void {
    const defaultRootKeyOnLocal = this.opts.rootKey === undefined && conn !== undefined && isLocalUrl(conn.url);
    const err = errorFor(error, this.opts.openTimeoutMs ?? 30_000, defaultRootKeyOnLocal);
    if (err) this.emit("error", err);
    if (conn && this.conn === conn) {
      this.conn = undefined;
      conn.ws.onmessage = null;
      conn.ws.onclose = null;
      conn.ws.onopen = null;
      const closeCode = error.kind.startsWith("Verify.") || error.kind.startsWith("Binding.") ? CLOSE_VERIFICATION_FAILED : error.kind === "Protocol" ? CLOSE_PROTOCOL_VIOLATION : 1000;
      try {
        conn.ws.close(closeCode, boundedText(error.kind, MAX_CLOSE_REASON_BYTES));
      } catch {
        // Already closed.
      }
    }
    if (error.kind === "SessionClosed") return; // reported by the `Closed` event
    if (next === "Stop") {
      this.stopped = true;
      this.ended = true;
      this.queued = [];
      this.storage.removeItem(this.storageKey);
      this.emit("close", { code: code ?? 1000, reason: reason ?? error.message, willReconnect: false });
      this.setState("closed");
      return;
    }
    const limit = typeof this.opts.reconnect === "object" ? this.opts.reconnect.maxAttempts : undefined;
    const willReconnect = !this.stopped && this.opts.reconnect !== false && (limit === undefined || this.attempts < limit);
    this.emit("close", { code: code ?? 1000, reason: reason ?? error.message, willReconnect });
    if (!willReconnect) {
      this.setState("closed");
      return;
    }
    let delay: number;
    if (next === "ReconnectNow") {
      delay = 0;
    } else if (typeof next === "object") {
      const left = next.WaitUntil - this.now();
      delay = left > 0n ? Number(left / 1_000_000n) + 1 : 0;
      this.urlIndex += 1;
    } else {
      const r = typeof this.opts.reconnect === "object" ? this.opts.reconnect : {};
      const base = r.initialDelayMs ?? 500;
      const max = r.maxDelayMs ?? 30_000;
      const d = Math.min(max, base * 2 ** Math.min(this.attempts, 20));
      // Jitter spreads the reconnects of many clients after a gateway restart.
      delay = d / 2 + Math.random() * (d / 2);
      this.attempts += 1;
      this.urlIndex += 1;
    }
    this.setState("reconnecting");
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (!this.stopped && !this.conn) void this.openSocket();
    }, delay);
  }

  private scheduleTick(): void {
    if (this.tickTimer !== undefined) clearTimeout(this.tickTimer);
    this.tickTimer = undefined;
    const deadline = this.machine.nextDeadline();
    const conn = this.conn;
    if (deadline === undefined || !conn) return;
    const left = deadline - this.now();
    const ms = left > 0n ? Number(left / 1_000_000n) + 1 : 0;
    this.tickTimer = setTimeout(() => {
      this.tickTimer = undefined;
      this.enqueue(() => {
        if (this.conn === conn) this.apply(this.machine.tick(this.now()), conn);
      });
    }, ms);
  }

  private onSessionClosed(reason: CloseReason): void {
    this.stopped = true;
    this.ended = true;
    this.queued = [];
    if (this.closeTimer !== undefined) clearTimeout(this.closeTimer);
    this.storage.removeItem(this.storageKey);
    this.setState("closed");
    const [name, value] = Object.entries(reason)[0] ?? ["", null];
    const text = value && typeof value === "object" ? `${name}: ${(value as { reason: string }).reason}` : name;
    this.emit("close", { code: 4000, reason: text, sessionClosed: reason, willReconnect: false });
  }

  /** Signs and sends an application message (queued while there is no session yet). */
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
    this.signAndSend({ App: payload });
  }

  private signAndSend(kind: MessageKind): void {
    try {
      const { actions } = this.machine.send(kind, this.now());
      this.apply(actions, this.conn);
    } catch (e) {
      if (!(e instanceof SendRefused)) throw e;
      if (e.reason === "TooLarge") throw new RangeError(`send: ${e.message}`);
      if (e.reason === "Stopped") throw new Error("send: the session is closed");
      // No session yet: signed after the next certified Opened.
      this.queued.push(kind);
      const cap = this.opts.maxUnconfirmed ?? 1024;
      if (this.queued.length > cap) throw new RangeError(`send: more than ${cap} messages waiting for a session`);
    }
  }

  private persist(): void {
    // A session being closed is not resumed later (not even after a page reload).
    if (this.closing || this.ended) return;
    saveSession(this.storage, this.storageKey, this.machine.snapshot());
  }

  /**
   * Ends the session: sends a signed Close so the canister runs `on_close` now, then closes
   * the WebSocket (when the certified `Closed` arrives, or after `timeoutMs`).
   */
  close(code = 1000, reason = "client closed", timeoutMs = 3000): void {
    if (this.closing || this._state === "closed") return;
    this.stopped = true;
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    const conn = this.conn;
    if (!conn || !this.machine.isReady) {
      this.closing = true;
      this.storage.removeItem(this.storageKey);
      this.disconnect();
      return;
    }
    try {
      const { actions } = this.machine.send({ Close: { code, reason } }, this.now());
      this.apply(actions, conn);
    } catch {
      // No session to close.
    }
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
    this.reconnectTimer = undefined;
    if (this.closeTimer !== undefined) clearTimeout(this.closeTimer);
    if (this.tickTimer !== undefined) clearTimeout(this.tickTimer);
    this.tickTimer = undefined;
    const conn = this.conn;
    if (conn) {
      this.conn = undefined;
      conn.ws.onmessage = null;
      conn.ws.onclose = null;
      conn.ws.onopen = null;
      try {
        conn.ws.close(1000, "client disconnected");
      } catch {
        // Already closed.
      }
      this.machine.connectionLost(new SessionFailure("Transport", "client disconnected"), this.now());
      this.persist();
      this.emit("close", { code: 1000, reason: "client disconnected", willReconnect: false });
    }
    this.setState("closed");
  }
}
