/**
 * Every check a client makes on a `Messages` frame from its (untrusted) gateway, in the order
 * of docs/protocol.md "What a client checks" and ic-ws-protocol `verify.rs`:
 *
 * 1. the certificate's BLS signature against the IC root key (through a subnet delegation,
 *    whose canister ranges must contain the canister, when present);
 * 2. the certificate's `/time` is at most `maxCertificateAgeNs` old;
 * 3. the delivered tree's root hash equals `/canister/<id>/certified_data`;
 * 4. every message is addressed to this client and carries the next expected sequence number;
 * 5. `sha256(content)` is the leaf at `/ws/<client_id>/<seq>`;
 * 6. the content decodes as `OutboundContent`.
 *
 * BLS and delegation checks are `@icp-sdk/core/agent`'s `Certificate`; the age check is done
 * here with an injectable clock (so the Rust test vectors, made at a fixed time, run as they
 * are) and after the signature check, in the Rust order. Each failure is a {@link VerifyError}
 * whose `check` is the name of the Rust `VerifyError` variant.
 */
import { Certificate, Cbor, lookup_path, lookupResultToBuffer, reconstruct, AgentError, blsVerify } from "@icp-sdk/core/agent";
import type { HashTree } from "@icp-sdk/core/agent";
import { Principal } from "@icp-sdk/core/principal";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesEqual, fromHex, toHex, u64be, utf8 } from "./bytes.js";
import { decodeOutboundContent } from "./types.js";
import type { OutboundContent, OutboundMessage } from "./types.js";

/** Names of the checks, identical to the Rust `VerifyError` variants (plus the client's own). */
export type VerifyCheck =
  | "MalformedCertificate"
  | "MalformedRootKey"
  | "BadCertificateSignature"
  | "BadDelegation"
  | "MissingTime"
  | "StaleCertificate"
  | "MissingCertifiedData"
  | "MalformedTree"
  | "TreeRootMismatch"
  | "WrongClient"
  | "OutOfSequence"
  | "NotCertified"
  | "BadContent"
  | "Empty"
  /** Client-side: a certified `Opened` that does not confirm this client's own open. */
  | "OpenedMismatch";

/** A failed check. Nothing of the frame it came from may be used. */
export class VerifyError extends Error {
  constructor(readonly check: VerifyCheck, message: string) {
    super(message);
    this.name = "VerifyError";
  }
}

/** Default maximum certificate age: 5 minutes (as the IC agents). */
export const DEFAULT_MAX_CERTIFICATE_AGE_NS = 5n * 60n * 1_000_000_000n;

/** The IC mainnet root key (DER), so that mainnet clients need no key fetch. */
export const MAINNET_ROOT_KEY_DER = fromHex(
  "308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c05030201036100814c0e6ec71fab583b08bd81373c255c3c371b2e84863c98a4f1e08b74235d14fb5d9c0cd546d9685f913a0c0b2cc5341583bf4b4392e467db96d65b9bb4cb717112f8472e0d5a4d14505ffd7484b01291091c5f87b98883463f98091a0baaae",
);
const BLS_DER_PREFIX = fromHex("308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c05030201036100");

/** Whether `key` is a DER-encoded BLS12-381 public key (the form of the IC root key). */
export function isDerBlsKey(key: Uint8Array): boolean {
  return key.length === BLS_DER_PREFIX.length + 96 && bytesEqual(key.subarray(0, BLS_DER_PREFIX.length), BLS_DER_PREFIX);
}

/** A certificate whose signature verified: the canister's certified data and the time. */
export interface VerifiedCertificate {
  certifiedData: Uint8Array;
  timeNs: bigint;
}

/** A message that passed every check. */
export interface VerifiedMessage {
  seq: bigint;
  content: OutboundContent;
  /** `/time` of the certificate that certified it. */
  certificateTimeNs: bigint;
}

/** The current time in nanoseconds since the epoch (wall clock). */
export function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

function decodeLeb128(bytes: Uint8Array): bigint | undefined {
  let value = 0n;
  let shift = 0n;
  for (let i = 0; i < bytes.length; i++) {
    if (shift >= 64n) return undefined;
    value |= BigInt(bytes[i]! & 0x7f) << shift;
    if ((bytes[i]! & 0x80) === 0) return i === bytes.length - 1 ? value : undefined;
    shift += 7n;
  }
  return undefined;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message.split("\n")[0]! : String(e);
}

/** Classifies an error of `Certificate.create` into the check that failed. */
function classifyCertificateError(e: unknown): VerifyError {
  if (e instanceof AgentError) {
    const code = e.code as { name?: string; reason?: string };
    switch (code.name) {
      case "CertificateVerificationErrorCode":
        if (code.reason?.includes("time")) return new VerifyError("MissingTime", "certificate: missing or malformed /time");
        return new VerifyError("BadCertificateSignature", "certificate: BLS signature does not verify against the root key");
      case "CertificateHasTooManyDelegationsErrorCode":
        return new VerifyError("BadDelegation", "certificate: delegation invalid: nested delegation");
      case "CertificateNotAuthorizedErrorCode":
        return new VerifyError("BadDelegation", "certificate: delegation invalid: canister not in the delegated subnet's ranges");
      default:
        return new VerifyError("BadDelegation", `certificate: delegation invalid: ${errorText(e)}`);
    }
  }
  return new VerifyError("MalformedCertificate", `certificate: malformed CBOR: ${errorText(e)}`);
}

/**
 * BLS signatures that verified, remembered by (key, signature, message). A subnet delegation
 * (mainnet) is the same for every certificate of a subnet for a long time: remembering it
 * saves one of the two BLS checks per frame. Only successes are kept; verification is
 * deterministic, so a hit is exactly as good as checking again.
 */
const verifiedBls = new Map<string, true>();
const VERIFIED_BLS_CAPACITY = 32;

async function memoBlsVerify(pk: Uint8Array, sig: Uint8Array, msg: Uint8Array): Promise<boolean> {
  const key = `${toHex(pk)}:${toHex(sig)}:${toHex(msg)}`;
  if (verifiedBls.has(key)) return true;
  const ok = await blsVerify(pk, sig, msg);
  if (ok) {
    if (verifiedBls.size >= VERIFIED_BLS_CAPACITY) verifiedBls.delete(verifiedBls.keys().next().value as string);
    verifiedBls.set(key, true);
  }
  return ok;
}

/** Checks 1-2 and reads the certified data (first half of check 3). */
export async function verifyCertificate(
  certificate: Uint8Array,
  rootKeyDer: Uint8Array,
  canisterId: Principal,
  now: bigint,
  maxAgeNs: bigint,
): Promise<VerifiedCertificate> {
  if (!isDerBlsKey(rootKeyDer)) {
    throw new VerifyError("MalformedRootKey", "root key is not a DER BLS12-381 key");
  }
  let cert: Certificate;
  try {
    cert = await Certificate.create({
      certificate,
      rootKey: rootKeyDer,
      principal: { canisterId },
      blsVerify: memoBlsVerify,
      // The age is checked below with the caller's clock, after the signature (Rust order).
      disableTimeVerification: true,
    });
  } catch (e) {
    throw classifyCertificateError(e);
  }
  const rawTime = lookupResultToBuffer(cert.lookup_path(["time"]));
  const timeNs = rawTime && decodeLeb128(rawTime);
  if (timeNs === undefined) throw new VerifyError("MissingTime", "certificate: missing or malformed /time");
  const age = now > timeNs ? now - timeNs : 0n;
  if (age > maxAgeNs) {
    throw new VerifyError("StaleCertificate", `certificate: too old (${age / 1_000_000_000n} s, max ${maxAgeNs / 1_000_000_000n} s)`);
  }
  const certifiedData = lookupResultToBuffer(cert.lookup_path(["canister", canisterId.toUint8Array(), "certified_data"]));
  if (!certifiedData) {
    throw new VerifyError("MissingCertifiedData", `certificate: no certified_data for canister ${canisterId.toText()}`);
  }
  return { certifiedData, timeNs };
}

/** What a client knows when it checks a delivery. */
export interface DeliveryVerifierOptions {
  rootKeyDer: Uint8Array;
  canisterId: Principal;
  clientId: bigint;
  maxCertificateAgeNs?: bigint;
}

/**
 * Checks `Messages` frames for one client. Remembers the last certificate that verified so a
 * certificate delivered again (the gateway reuses one poll's certificate for several frames)
 * costs no second BLS check; its age is still checked every time.
 */
export class DeliveryVerifier {
  readonly rootKeyDer: Uint8Array;
  readonly canisterId: Principal;
  clientId: bigint;
  readonly maxCertificateAgeNs: bigint;
  private lastCertificate?: { bytes: Uint8Array; verified: VerifiedCertificate };

  constructor(opts: DeliveryVerifierOptions) {
    this.rootKeyDer = opts.rootKeyDer;
    this.canisterId = opts.canisterId;
    this.clientId = opts.clientId;
    this.maxCertificateAgeNs = opts.maxCertificateAgeNs ?? DEFAULT_MAX_CERTIFICATE_AGE_NS;
  }

  private async certificate(bytes: Uint8Array, now: bigint): Promise<VerifiedCertificate> {
    const last = this.lastCertificate;
    if (last && bytesEqual(last.bytes, bytes)) {
      const age = now > last.verified.timeNs ? now - last.verified.timeNs : 0n;
      if (age > this.maxCertificateAgeNs) {
        throw new VerifyError("StaleCertificate", `certificate: too old (${age / 1_000_000_000n} s, max ${this.maxCertificateAgeNs / 1_000_000_000n} s)`);
      }
      return last.verified;
    }
    const verified = await verifyCertificate(bytes, this.rootKeyDer, this.canisterId, now, this.maxCertificateAgeNs);
    this.lastCertificate = { bytes: Uint8Array.from(bytes), verified };
    return verified;
  }

  /**
   * Checks one frame (checks 1-6) given the next sequence number the client expects; returns
   * the messages in order. Throws a {@link VerifyError} naming the first failed check.
   */
  async verify(
    messages: OutboundMessage[],
    certificate: Uint8Array,
    tree: Uint8Array,
    nextSeq: bigint,
    now: bigint = nowNs(),
  ): Promise<VerifiedMessage[]> {
    if (messages.length === 0) throw new VerifyError("Empty", "empty message batch");
    const cert = await this.certificate(certificate, now);
    let hashTree: HashTree;
    let root: Uint8Array;
    try {
      hashTree = Cbor.decode<HashTree>(tree);
      root = await reconstruct(hashTree);
    } catch (e) {
      throw new VerifyError("MalformedTree", `tree: malformed CBOR: ${errorText(e)}`);
    }
    if (!bytesEqual(root, cert.certifiedData)) {
      throw new VerifyError("TreeRootMismatch", "tree: root hash does not match the certified data");
    }
    let expected = nextSeq;
    const out: VerifiedMessage[] = [];
    const wsLabel = utf8("ws");
    for (const m of messages) {
      if (m.client_id !== this.clientId) {
        throw new VerifyError("WrongClient", `message ${m.seq}: addressed to client ${m.client_id}, not ${this.clientId}`);
      }
      if (m.seq !== expected) {
        throw new VerifyError("OutOfSequence", `message out of sequence: expected ${expected}, got ${m.seq}`);
      }
      let leaf: Uint8Array | undefined;
      try {
        leaf = lookupResultToBuffer(lookup_path([wsLabel, u64be(m.client_id), u64be(m.seq)], hashTree));
      } catch {
        leaf = undefined;
      }
      if (!leaf || !bytesEqual(leaf, sha256(m.content))) {
        throw new VerifyError("NotCertified", `message ${m.seq}: content not certified at /ws/<client>/<seq>`);
      }
      let content: OutboundContent;
      try {
        content = decodeOutboundContent(m.content);
      } catch (e) {
        throw new VerifyError("BadContent", `message ${m.seq}: content does not decode: ${errorText(e)}`);
      }
      out.push({ seq: m.seq, content, certificateTimeNs: cert.timeNs });
      expected += 1n;
    }
    return out;
  }
}
