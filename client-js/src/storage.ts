/**
 * Where a client keeps its session between connections (and, in browsers, across reloads of
 * the page): the session key's seed, the client id, how far it has received and the signed
 * messages the canister has not confirmed yet. `sessionStorage` fits browsers (one session per
 * tab, gone when the tab closes); Node defaults to memory.
 */
import { ClientMessageIdl } from "./types.js";
import type { ClientMessage } from "./types.js";
import { IDL } from "@icp-sdk/core/candid";
import { fromHex, toHex } from "./bytes.js";

/** The subset of the Web Storage API the client uses (`sessionStorage` satisfies it). */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** In-memory storage (Node, tests, or when persistence is not wanted). */
export class MemoryStorage implements KeyValueStorage {
  private readonly map = new Map<string, string>();
  getItem(key: string): string | null {
    return this.map.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.map.set(key, value);
  }
  removeItem(key: string): void {
    this.map.delete(key);
  }
}

/** What a client persists about its session. */
export interface StoredSession {
  /** Hex seed of the Ed25519 session key. */
  keySeed: string;
  /** Timestamp of the last open signed with this key (opens must have increasing timestamps). */
  lastOpenTimestampNs: bigint;
  /** Set once the canister has certified the binding (the `Opened` message). */
  clientId?: bigint;
  /** First outbound sequence number not yet received and verified. */
  nextOutboundSeq: bigint;
  /** Next inbound sequence number the client will sign. */
  nextInboundSeq: bigint;
  /** Signed messages not yet confirmed by a certified `Opened`. */
  outbox: ClientMessage[];
  /** Own messages below this are certified accepted (protocol v2). */
  confirmedInboundSeq?: bigint;
  /** When the last own message was signed (own clock; part of the expiry proof). */
  lastMessageSignedAtNs?: bigint;
  /** Limits certified in the last `Opened` (protocol v2). */
  maxInboundPayloadBytes?: bigint;
  idleTimeoutNs?: bigint;
  /** Issue 10: the principal the session proves (text; none: anonymous). A client with another identity does not resume it. */
  principal?: string;
}

interface Json {
  keySeed: string;
  lastOpenTimestampNs: string;
  clientId?: string;
  nextOutboundSeq: string;
  nextInboundSeq: string;
  outbox: string[];
  confirmedInboundSeq?: string;
  lastMessageSignedAtNs?: string;
  maxInboundPayloadBytes?: string;
  idleTimeoutNs?: string;
  principal?: string;
}

const big = (v: bigint | undefined) => (v === undefined ? undefined : v.toString());
const unbig = (v: string | undefined) => (v === undefined ? undefined : BigInt(v));

export function saveSession(storage: KeyValueStorage, key: string, s: StoredSession): void {
  const json: Json = {
    keySeed: s.keySeed,
    lastOpenTimestampNs: s.lastOpenTimestampNs.toString(),
    clientId: s.clientId?.toString(),
    nextOutboundSeq: s.nextOutboundSeq.toString(),
    nextInboundSeq: s.nextInboundSeq.toString(),
    outbox: s.outbox.map((m) => toHex(IDL.encode([ClientMessageIdl], [m]))),
    confirmedInboundSeq: big(s.confirmedInboundSeq),
    lastMessageSignedAtNs: big(s.lastMessageSignedAtNs),
    maxInboundPayloadBytes: big(s.maxInboundPayloadBytes),
    idleTimeoutNs: big(s.idleTimeoutNs),
    principal: s.principal,
  };
  try {
    storage.setItem(key, JSON.stringify(json));
  } catch {
    // A full or disabled storage only costs the ability to resume after a reload.
  }
}

/** Loads a stored session; anything unreadable counts as no session. */
export function loadSession(storage: KeyValueStorage, key: string): StoredSession | undefined {
  try {
    const raw = storage.getItem(key);
    if (!raw) return undefined;
    const j = JSON.parse(raw) as Json;
    return {
      keySeed: j.keySeed,
      lastOpenTimestampNs: BigInt(j.lastOpenTimestampNs),
      clientId: j.clientId === undefined ? undefined : BigInt(j.clientId),
      nextOutboundSeq: BigInt(j.nextOutboundSeq),
      nextInboundSeq: BigInt(j.nextInboundSeq),
      outbox: j.outbox.map((h) => IDL.decode([ClientMessageIdl], fromHex(h))[0] as unknown as ClientMessage),
      confirmedInboundSeq: unbig(j.confirmedInboundSeq),
      lastMessageSignedAtNs: unbig(j.lastMessageSignedAtNs),
      maxInboundPayloadBytes: unbig(j.maxInboundPayloadBytes),
      idleTimeoutNs: unbig(j.idleTimeoutNs),
      principal: typeof j.principal === "string" ? j.principal : undefined,
    };
  } catch {
    return undefined;
  }
}
