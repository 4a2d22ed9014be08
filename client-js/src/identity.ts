/**
 * Issue 10: sessions that prove an IC principal (docs/protocol.md, "Identity").
 *
 * The app hands the client any `@icp-sdk/core` `SignIdentity`: an `Ed25519KeyIdentity`, a
 * `Secp256k1KeyIdentity`, an `ECDSAKeyIdentity` (P-256), or a `DelegationIdentity` (what
 * Internet Identity's `AuthClient` returns, a chain that starts at the user's canister-signature
 * key). For every new session key the identity signs the IC delegation
 * `{pubkey: DER(session key), expiration, targets: [canister]}` exactly as the IC's agents
 * sign any delegation (`DelegationChain.create`), appended to its own chain. The canister
 * verifies the chain at open and binds the principal of its first key to the session.
 */
import type { DerEncodedPublicKey, PublicKey, SignIdentity } from "@icp-sdk/core/agent";
import { DelegationChain } from "@icp-sdk/core/identity";
import { Principal } from "@icp-sdk/core/principal";
import { concat } from "./bytes.js";
import type { IdentityProof, SignedDelegation } from "./types.js";

/** DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410). */
const ED25519_DER_PREFIX = new Uint8Array([0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);

/** Makes the proof for a session key; `principal` is what the canister must bind. */
export interface Prover {
  readonly principal: Principal;
  prove(sessionPublicKey: Uint8Array, nowNs: bigint): Promise<IdentityProof>;
}

/** The identity cannot authorise a session (expired delegation, anonymous identity, a signer that refused). */
export class IdentityUnusable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "IdentityUnusable";
  }
}

/** DER of an Ed25519 public key, as the proof's last link names the session key. */
export function ed25519Der(publicKey: Uint8Array): Uint8Array {
  return concat([ED25519_DER_PREFIX, publicKey]);
}

/** Structural view of a `DelegationIdentity` (no `instanceof`: the app may bundle another copy of the package). */
interface HasDelegation {
  getDelegation(): DelegationChain;
}
const hasDelegation = (i: unknown): i is HasDelegation =>
  typeof (i as Partial<HasDelegation>).getDelegation === "function";

/**
 * The prover for `identity`: each session key gets a delegation valid for `ttlMs` (the
 * identity's own chain may end earlier: the canister takes the earliest expiration and closes
 * the session with `IdentityExpired` then).
 */
export function identityProver(identity: SignIdentity, canisterId: Principal, ttlMs: number): Prover {
  const previous = hasDelegation(identity) ? identity.getDelegation() : undefined;
  const senderPubkey = new Uint8Array(previous ? previous.publicKey : identity.getPublicKey().toDer());
  const principal = Principal.selfAuthenticating(senderPubkey);
  if (principal.isAnonymous()) throw new IdentityUnusable("the anonymous identity cannot prove a principal: leave `identity` unset");
  return {
    principal,
    async prove(sessionPublicKey: Uint8Array, nowNs: bigint): Promise<IdentityProof> {
      // Checked here with the client's own clock: the canister's refusal of an expired chain is
      // an uncertified claim the client could only retry, forever.
      for (const d of previous?.delegations ?? []) {
        if (d.delegation.expiration <= nowNs) {
          throw new IdentityUnusable(`the identity's delegation expired at ${new Date(Number(d.delegation.expiration / 1_000_000n)).toISOString()}: log in again`);
        }
      }
      const der = ed25519Der(sessionPublicKey) as DerEncodedPublicKey;
      const to: PublicKey = { toDer: () => der };
      const expiration = new Date(Number(nowNs / 1_000_000n) + Math.max(1, Math.round(ttlMs)));
      let chain: DelegationChain;
      try {
        chain = await DelegationChain.create(identity, to, expiration, {
          previous,
          targets: [canisterId],
        });
      } catch (e) {
        throw new IdentityUnusable(`the identity did not sign the session's delegation: ${String(e)}`);
      }
      return {
        sender_pubkey: new Uint8Array(chain.publicKey),
        delegations: chain.delegations.map((d): SignedDelegation => ({
          delegation: {
            pubkey: new Uint8Array(d.delegation.pubkey),
            expiration: d.delegation.expiration,
            targets: d.delegation.targets ? [d.delegation.targets.map((t) => Principal.fromUint8Array(t.toUint8Array()))] : [],
            permissions: d.delegation.permissions === undefined ? [] : [d.delegation.permissions === "queries" ? { queries: null } : { all: null }],
          },
          signature: new Uint8Array(d.signature),
        })),
      };
    },
  };
}
