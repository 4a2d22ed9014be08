/**
 * The exact bytes a client's Ed25519 session key signs (docs/protocol.md, "Open: signed bytes"
 * and "Client messages: signed bytes"), and the session key itself.
 *
 * The layout is hand-specified, not candid, so that the Rust and JS clients sign identical
 * bytes; the test vectors produced by `ic-ws-protocol` pin it down.
 */
import { ed25519 } from "@noble/curves/ed25519.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { Principal } from "@icp-sdk/core/principal";
import { concat, fromHex, lengthPrefixed, toHex, u16be, u64be, utf8 } from "./bytes.js";
import type { ClientMessage, Delegation, IdentityProof, MessageKind, OpenRequest } from "./types.js";

/** Domain separator of open requests: `"\x0Aic-ws-open"`. */
export const OPEN_DOMAIN = concat([new Uint8Array([10]), utf8("ic-ws-open")]);
/** Domain separator of client messages: `"\x0Dic-ws-message"`. */
export const MESSAGE_DOMAIN = concat([new Uint8Array([13]), utf8("ic-ws-message")]);

function principalField(p: Principal): Uint8Array {
  const raw = p.toUint8Array();
  // A principal is at most 29 bytes: its length always fits in one byte.
  return concat([new Uint8Array([raw.length]), raw]);
}

/** The bytes an open request signs. */
export function openSigningBytes(canisterId: Principal, open: Omit<OpenRequest, "signature">): Uint8Array {
  const resume = open.resume.length === 0
    ? new Uint8Array([0])
    : concat([new Uint8Array([1]), u64be(open.resume[0].client_id), u64be(open.resume[0].next_outbound_seq)]);
  return concat([
    OPEN_DOMAIN,
    principalField(canisterId),
    principalField(open.gateway),
    open.client_key,
    u64be(open.timestamp_ns),
    resume,
    lengthPrefixed(open.args),
    // Issue 10: only when the open carries an identity proof.
    ...(open.identity && open.identity.length === 1 ? [new Uint8Array([1]), proofDigest(open.identity[0])] : []),
  ]);
}

function leb128(n: bigint): Uint8Array {
  const out: number[] = [];
  do {
    let byte = Number(n & 0x7fn);
    n >>= 7n;
    if (n !== 0n) byte |= 0x80;
    out.push(byte);
  } while (n !== 0n);
  return new Uint8Array(out);
}

/** The IC's representation-independent hash of a delegation (what its signature covers). */
export function delegationHash(d: Delegation): Uint8Array {
  const pairs: Uint8Array[] = [];
  const pair = (key: string, value: Uint8Array) => pairs.push(concat([sha256(utf8(key)), value]));
  pair("pubkey", sha256(d.pubkey));
  pair("expiration", sha256(leb128(d.expiration)));
  if (d.targets.length === 1) pair("targets", sha256(concat(d.targets[0].map((t) => sha256(t.toUint8Array())))));
  if (d.permissions.length === 1) pair("permissions", sha256(utf8("queries" in d.permissions[0] ? "queries" : "all")));
  pairs.sort((a, b) => {
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
    return 0;
  });
  return sha256(concat(pairs));
}

/** `sha256(bytes sender_pubkey, u32 n, n x (bytes hash(delegation_i), bytes signature_i))`. */
export function proofDigest(p: IdentityProof): Uint8Array {
  const n = new Uint8Array(4);
  new DataView(n.buffer).setUint32(0, p.delegations.length);
  return sha256(concat([
    lengthPrefixed(p.sender_pubkey),
    n,
    ...p.delegations.flatMap((d) => [lengthPrefixed(delegationHash(d.delegation)), lengthPrefixed(d.signature)]),
  ]));
}

function kindBytes(kind: MessageKind): Uint8Array {
  if ("App" in kind) return concat([new Uint8Array([0]), lengthPrefixed(kind.App)]);
  if ("KeepAlive" in kind) return new Uint8Array([1]);
  return concat([new Uint8Array([2]), u16be(kind.Close.code), lengthPrefixed(utf8(kind.Close.reason))]);
}

/** The bytes a client message signs. */
export function messageSigningBytes(canisterId: Principal, msg: Omit<ClientMessage, "signature">): Uint8Array {
  return concat([
    MESSAGE_DOMAIN,
    principalField(canisterId),
    u64be(msg.client_id),
    u64be(msg.seq),
    u64be(msg.ack),
    kindBytes(msg.kind),
  ]);
}

/**
 * An Ed25519 session key. Made fresh for every new session (never an identity the user
 * holds elsewhere) and kept for as long as the session can be resumed.
 */
export class SessionKey {
  readonly publicKey: Uint8Array;
  private readonly seed: Uint8Array;

  private constructor(seed: Uint8Array) {
    if (seed.length !== 32) throw new Error("an Ed25519 seed is 32 bytes");
    this.seed = Uint8Array.from(seed);
    this.publicKey = ed25519.getPublicKey(this.seed);
  }

  /** A new key from the platform's CSPRNG (`crypto.getRandomValues`). */
  static generate(): SessionKey {
    const seed = new Uint8Array(32);
    globalThis.crypto.getRandomValues(seed);
    return new SessionKey(seed);
  }

  /** The key with this 32-byte seed (tests, or a key restored from storage). */
  static fromSeed(seed: Uint8Array): SessionKey {
    return new SessionKey(seed);
  }

  /** Restores a key saved with {@link SessionKey.toJSON}. */
  static fromHex(seedHex: string): SessionKey {
    return new SessionKey(fromHex(seedHex));
  }

  /** The seed as hex, for session storage (this is the secret: store it where the page's session lives, nowhere else). */
  toJSON(): string {
    return toHex(this.seed);
  }

  /** Deterministic Ed25519 signature of `message`. */
  sign(message: Uint8Array): Uint8Array {
    return ed25519.sign(message, this.seed);
  }

  /** Signs an open request for `canisterId`. */
  signOpen(canisterId: Principal, open: Omit<OpenRequest, "signature">): OpenRequest {
    return { ...open, signature: this.sign(openSigningBytes(canisterId, open)) };
  }

  /** Signs a client message for `canisterId`. */
  signMessage(canisterId: Principal, msg: Omit<ClientMessage, "signature">): ClientMessage {
    return { ...msg, signature: this.sign(messageSigningBytes(canisterId, msg)) };
  }
}

/** Verifies an Ed25519 signature (used by tests and by tools that check what a client signed). */
export function verifySignature(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    return ed25519.verify(signature, message, publicKey);
  } catch {
    return false;
  }
}
