//! Proof that an IC principal authorised a session key (issue 10).
//!
//! An open may carry an [`IdentityProof`]: an IC-standard delegation chain (the same data an
//! ingress envelope carries in `sender_pubkey` + `sender_delegation`, in the candid layout of
//! ic-transport-types' `SignedDelegation`) that **ends at the open's session key**. The client's
//! IC identity (an ic-agent / @icp-sdk/core `Identity`, possibly itself a delegated identity
//! whose chain starts at an Internet Identity canister signature) signs one more delegation
//! `{pubkey: DER(Ed25519 session key), expiration, targets: [canister]}` with the IC's own
//! delegation domain separator (`"\x1Aic-request-auth-delegation"` ++ the
//! representation-independent hash of the delegation map), exactly as the IC's own agents do
//! for ingress.
//!
//! [`verify_proof`] checks, in this order and before any signature is verified (so that the
//! work a hostile gateway or caller can cause is bounded by constants): byte sizes, chain
//! length, target counts, key encodings (Ed25519, ECDSA P-256, ECDSA secp256k1, canister
//! signature), no key repeated, every delegation unexpired at `now`, no `queries`-only
//! permission, `canister` in every delegation's targets where a delegation restricts them,
//! and that the last delegation's key is `DER(session key)`. Then it verifies the signatures
//! from the sender's key down. The principal is the sender key's self-authenticating
//! principal (`sha224(DER) ++ 0x02`), as the IC derives it for ingress.
//!
//! Ed25519 verification is pluggable ([`verify_proof_with`]): the canister uses its cheaper
//! curve25519-dalek verifier, everything else the reference one in [`crate::signing`].
//!
//! The types are always compiled (the gateway and clients relay/produce them); the
//! verification of ECDSA keys needs the `identity` feature (p256/k256, no_std, no getrandom:
//! builds for wasm32).

use candid::{CandidType, Principal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain separator of delegations (the IC's): `"\x1Aic-request-auth-delegation"`.
pub const DELEGATION_DOMAIN: &[u8] = b"\x1Aic-request-auth-delegation";

/// Longest delegation chain accepted in a proof (the last delegation is the one to the session
/// key). The IC accepts up to 20 for ingress; real chains are 1 (a key signs the session
/// delegation) to 3 (Internet Identity -> the dapp's session key -> the ws session key). The
/// bound caps the signatures one open makes the canister verify.
pub const MAX_DELEGATIONS: usize = 4;
/// Most targets in one delegation (the IC's limit for ingress).
pub const MAX_TARGETS_PER_DELEGATION: usize = 1_000;
/// Most targets in the whole chain (bounds hashing and look-ups).
pub const MAX_TARGETS_TOTAL: usize = 1_000;
/// Largest DER public key (a canister-signature key is `10 + 1 + 29 + seed` bytes; Internet
/// Identity's seeds are 32 bytes).
pub const MAX_PUBLIC_KEY_BYTES: usize = 256;
/// Largest signature (a canister signature is a CBOR certificate with a possible subnet
/// delegation plus a hash tree; Internet Identity's are 1-4 KiB).
pub const MAX_SIGNATURE_BYTES: usize = 16 * 1024;
/// Largest proof, counted as the sum of its keys', signatures' and targets' bytes.
pub const MAX_PROOF_BYTES: usize = 32 * 1024;

/// Per-delegation permission (ic-transport-types' `DelegationPermissions`, a newer optional
/// field of the IC's delegation). A `queries` delegation cannot authorise a session.
#[derive(CandidType, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelegationPermissions {
    /// Only queries and `read_state`.
    #[serde(rename = "queries")]
    Queries,
    /// Every kind of request.
    #[serde(rename = "all")]
    All,
}

/// An IC delegation (same fields and candid layout as ic-transport-types' `Delegation`).
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Delegation {
    /// The delegated-to key (DER).
    #[serde(with = "serde_bytes")]
    pub pubkey: Vec<u8>,
    /// Nanoseconds since the epoch after which the delegation is no longer valid.
    pub expiration: u64,
    /// If present, the delegation only applies to these canisters.
    #[serde(default)]
    pub targets: Option<Vec<Principal>>,
    /// If present, the kinds of request it permits (`queries` is refused here).
    #[serde(default)]
    pub permissions: Option<DelegationPermissions>,
}

/// A delegation and the signature of the previous key of the chain over
/// `DELEGATION_DOMAIN ++ hash(delegation)` (ic-transport-types' `SignedDelegation`).
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SignedDelegation {
    /// The delegation.
    pub delegation: Delegation,
    /// The signature (its form depends on the signing key's kind).
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Proof that the principal of `sender_pubkey` authorised the open's session key: the chain
/// `sender_pubkey -> delegations[0].pubkey -> ... -> DER(session key)`.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IdentityProof {
    /// The principal's public key (DER), as in an ingress envelope's `sender_pubkey`.
    #[serde(with = "serde_bytes")]
    pub sender_pubkey: Vec<u8>,
    /// The chain, the last delegation being to the session key.
    pub delegations: Vec<SignedDelegation>,
}

/// Kinds of public key the IC accepts for ingress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, CandidType, Serialize, Deserialize)]
pub enum KeyKind {
    /// Ed25519 (RFC 8410).
    Ed25519,
    /// ECDSA on P-256 with SHA-256.
    EcdsaP256,
    /// ECDSA on secp256k1 with SHA-256.
    EcdsaSecp256k1,
    /// IC canister signature (OID 1.3.6.1.4.1.56387.1.2): the key names a canister and a seed.
    CanisterSignature,
}

/// Why a proof was refused. Every variant is decided before anything changes.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum IdentityError {
    /// The canister's policy requires an identity and the open carries none.
    Required,
    /// The canister's policy (its callback) refused this principal.
    Refused(String),
    /// Keys, signatures and targets add up to more than the limit.
    TooLarge {
        /// Counted bytes.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// No delegation (the chain must end at the session key), or more than the limit.
    ChainLength {
        /// Delegations in the proof.
        len: u64,
        /// The most accepted.
        limit: u64,
    },
    /// More targets than the limits.
    TooManyTargets,
    /// A key is not a DER key of a supported kind (`index` 0 is the sender key, `i + 1` the
    /// key of delegation `i`).
    MalformedKey {
        /// Which key.
        index: u32,
    },
    /// A canister-signature key, and the canister cannot verify canister signatures (its
    /// configured IC root key, `WsConfig::ic_root_key`, is not a BLS key).
    CanisterSignatureUnsupported,
    /// A key appears twice in the chain.
    Cycle,
    /// Delegation `index` expired before now.
    Expired {
        /// Which delegation.
        index: u32,
        /// Its expiration (ns).
        expiration: u64,
    },
    /// Delegation `index` restricts targets and this canister is not one of them.
    TargetNotAllowed {
        /// Which delegation.
        index: u32,
    },
    /// Delegation `index` only permits queries.
    QueriesOnly {
        /// Which delegation.
        index: u32,
    },
    /// The last delegation is not to this open's session key.
    WrongSessionKey,
    /// The signature on delegation `index` does not verify under the previous key.
    InvalidSignature {
        /// Which delegation.
        index: u32,
    },
    /// A resume's proof names another principal than the session's (a resume never changes
    /// the bound principal; an anonymous session stays anonymous).
    PrincipalMismatch,
}

impl core::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IdentityError::Required => f.write_str("an identity is required"),
            IdentityError::Refused(r) => write!(f, "identity refused: {r}"),
            IdentityError::TooLarge { size, limit } => {
                write!(f, "identity proof too large: {size} bytes, limit {limit}")
            }
            IdentityError::ChainLength { len, limit } => {
                write!(f, "delegation chain of {len}: 1 to {limit} expected")
            }
            IdentityError::TooManyTargets => f.write_str("too many delegation targets"),
            IdentityError::MalformedKey { index } => {
                write!(f, "key {index} of the chain is malformed or unsupported")
            }
            IdentityError::CanisterSignatureUnsupported => {
                f.write_str("this canister cannot verify canister signatures (its IC root key is not a BLS key)")
            }
            IdentityError::Cycle => f.write_str("a key appears twice in the delegation chain"),
            IdentityError::Expired { index, expiration } => {
                write!(f, "delegation {index} expired at {expiration}")
            }
            IdentityError::TargetNotAllowed { index } => {
                write!(f, "delegation {index} does not target this canister")
            }
            IdentityError::QueriesOnly { index } => {
                write!(f, "delegation {index} only permits queries")
            }
            IdentityError::WrongSessionKey => {
                f.write_str("the delegation chain does not end at the session key")
            }
            IdentityError::InvalidSignature { index } => {
                write!(f, "the signature on delegation {index} does not verify")
            }
            IdentityError::PrincipalMismatch => {
                f.write_str("a resume cannot change the session's principal")
            }
        }
    }
}

impl std::error::Error for IdentityError {}

/// What a verified proof establishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The self-authenticating principal of the sender key.
    pub principal: Principal,
    /// The earliest expiration in the chain: the session key speaks for the principal until
    /// then.
    pub expires_ns: u64,
    /// The sender key's kind.
    pub kind: KeyKind,
}

// ------------------------------------------------------------------ DER keys

const ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// `id-ecPublicKey` algorithm identifier (OID 1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp256k1 (1.3.132.0.10).
const OID_SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];
/// IC canister signature (1.3.6.1.4.1.56387.1.2).
const OID_CANISTER_SIG: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xb8, 0x43, 0x01, 0x02];

/// The DER (RFC 8410 SubjectPublicKeyInfo) form of an Ed25519 public key, as the IC and its
/// agents write it: 12 fixed bytes then the 32-byte key.
pub fn ed25519_der(raw: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(44);
    out.extend_from_slice(&ED25519_PREFIX);
    out.extend_from_slice(raw);
    out
}

/// A parsed public key (borrowing the DER bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKey<'a> {
    /// 32-byte Ed25519 key.
    Ed25519(&'a [u8; 32]),
    /// SEC1 point (compressed or uncompressed) on P-256.
    EcdsaP256(&'a [u8]),
    /// SEC1 point (compressed or uncompressed) on secp256k1.
    EcdsaSecp256k1(&'a [u8]),
    /// Canister signature key: the signing canister and the seed.
    CanisterSignature {
        /// The canister that signs (by certifying).
        canister_id: Principal,
        /// The seed (Internet Identity: a hash naming the user and the frontend).
        seed: &'a [u8],
    },
}

impl PublicKey<'_> {
    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        match self {
            PublicKey::Ed25519(_) => KeyKind::Ed25519,
            PublicKey::EcdsaP256(_) => KeyKind::EcdsaP256,
            PublicKey::EcdsaSecp256k1(_) => KeyKind::EcdsaSecp256k1,
            PublicKey::CanisterSignature { .. } => KeyKind::CanisterSignature,
        }
    }
}

/// A minimal DER reader: one TLV with a short (< 128) or one/two-byte long length.
fn der_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            if b < 0x80 {
                return None; // not minimal
            }
            (usize::from(b), rest)
        }
        0x82 => {
            let (bytes, rest) = rest.split_at_checked(2)?;
            let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
            if len < 0x100 {
                return None; // not minimal
            }
            (len, rest)
        }
        _ => return None,
    };
    rest.split_at_checked(len)
}

/// Parses a DER SubjectPublicKeyInfo of a kind the IC accepts for ingress. Strict: the whole
/// input is the key, no trailing bytes, minimal lengths.
pub fn parse_der_public_key(der: &[u8]) -> Option<PublicKey<'_>> {
    if der.len() > MAX_PUBLIC_KEY_BYTES {
        return None;
    }
    if der.len() == 44 && der.starts_with(&ED25519_PREFIX) {
        let raw: &[u8; 32] = der.get(12..)?.try_into().ok()?;
        return Some(PublicKey::Ed25519(raw));
    }
    let (spki, trailing) = der_tlv(der, 0x30)?;
    if !trailing.is_empty() {
        return None;
    }
    let (alg, rest) = der_tlv(spki, 0x30)?;
    let (bits, rest) = der_tlv(rest, 0x03)?;
    if !rest.is_empty() {
        return None;
    }
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    let (oid, alg_rest) = der_tlv(alg, 0x06)?;
    if oid == OID_EC_PUBLIC_KEY {
        let (curve, rest) = der_tlv(alg_rest, 0x06)?;
        if !rest.is_empty() || !sec1_point_shape(key) {
            return None;
        }
        return match curve {
            c if c == OID_P256 => Some(PublicKey::EcdsaP256(key)),
            c if c == OID_SECP256K1 => Some(PublicKey::EcdsaSecp256k1(key)),
            _ => None,
        };
    }
    if oid == OID_CANISTER_SIG && alg_rest.is_empty() {
        // BIT STRING content: u8 length of the canister id, the id, the seed.
        let (&id_len, rest) = key.split_first()?;
        let (id, seed) = rest.split_at_checked(usize::from(id_len))?;
        if id.len() > 29 {
            return None;
        }
        return Some(PublicKey::CanisterSignature {
            canister_id: Principal::try_from_slice(id).ok()?,
            seed,
        });
    }
    // Ed25519 in a non-canonical DER form, WebAuthn (COSE) keys and anything else.
    None
}

/// A SEC1 point's shape: `04 x y` (65 bytes) or `02|03 x` (33 bytes).
fn sec1_point_shape(p: &[u8]) -> bool {
    matches!(
        (p.len(), p.first()),
        (65, Some(0x04)) | (33, Some(0x02 | 0x03))
    )
}

/// The self-authenticating principal of a DER public key (`sha224(der) ++ 0x02`).
pub fn principal_of(der: &[u8]) -> Principal {
    Principal::self_authenticating(der)
}

// ------------------------------------------------------------------ hashing

/// The IC's representation-independent hash of a delegation map (what its signature covers,
/// after [`DELEGATION_DOMAIN`]).
pub fn delegation_hash(d: &Delegation) -> [u8; 32] {
    let mut pairs: Vec<[u8; 64]> = Vec::with_capacity(4);
    let mut pair = |key: &str, value_hash: [u8; 32]| {
        let mut p = [0u8; 64];
        p[..32].copy_from_slice(&Sha256::digest(key.as_bytes()));
        p[32..].copy_from_slice(&value_hash);
        pairs.push(p);
    };
    pair("pubkey", Sha256::digest(&d.pubkey).into());
    pair(
        "expiration",
        Sha256::digest(crate::leb128(d.expiration)).into(),
    );
    if let Some(targets) = &d.targets {
        let mut h = Sha256::new();
        for t in targets {
            h.update(Sha256::digest(t.as_slice()));
        }
        pair("targets", h.finalize().into());
    }
    if let Some(p) = d.permissions {
        let text = match p {
            DelegationPermissions::Queries => "queries",
            DelegationPermissions::All => "all",
        };
        pair("permissions", Sha256::digest(text.as_bytes()).into());
    }
    pairs.sort_unstable();
    let mut h = Sha256::new();
    for p in &pairs {
        h.update(p);
    }
    h.finalize().into()
}

/// The bytes a delegation's signature covers: `DELEGATION_DOMAIN ++ delegation_hash(d)`.
pub fn delegation_signable(d: &Delegation) -> Vec<u8> {
    let mut out = Vec::with_capacity(DELEGATION_DOMAIN.len() + 32);
    out.extend_from_slice(DELEGATION_DOMAIN);
    out.extend_from_slice(&delegation_hash(d));
    out
}

/// SHA-256 of the proof's canonical encoding, which the open's signing bytes include so that
/// a gateway can neither strip nor swap a proof without breaking the session key's signature:
/// `sha256(bytes sender_pubkey, u32 n, n x (bytes hash(delegation_i), bytes signature_i))`
/// with `bytes` = u32 big-endian length + raw bytes.
pub fn proof_digest(proof: &IdentityProof) -> [u8; 32] {
    let mut h = Sha256::new();
    let put = |h: &mut Sha256, b: &[u8]| {
        h.update((b.len() as u32).to_be_bytes());
        h.update(b);
    };
    put(&mut h, &proof.sender_pubkey);
    h.update((proof.delegations.len() as u32).to_be_bytes());
    for d in &proof.delegations {
        put(&mut h, &delegation_hash(&d.delegation));
        put(&mut h, &d.signature);
    }
    h.finalize().into()
}

/// A one-link proof made by an Ed25519 identity key held as a [`crate::SessionKey`] (tests,
/// load generators; real clients sign with their IC agent's identity): `identity` delegates
/// to `session_key` until `expiration`, for `targets`.
pub fn ed25519_proof(
    identity: &crate::SessionKey,
    session_key: &[u8; 32],
    expiration: u64,
    targets: Option<Vec<Principal>>,
) -> IdentityProof {
    let mut raw = [0u8; 32];
    let pk = identity.public_key();
    if let Some(src) = pk.get(..32) {
        raw.copy_from_slice(src);
    }
    let delegation = Delegation {
        pubkey: ed25519_der(session_key),
        expiration,
        targets,
        permissions: None,
    };
    let signature = identity.sign(&delegation_signable(&delegation));
    IdentityProof {
        sender_pubkey: ed25519_der(&raw),
        delegations: vec![SignedDelegation {
            delegation,
            signature,
        }],
    }
}

// ------------------------------------------------------------------ verification

/// What a proof is checked against.
#[derive(Clone, Copy, Debug)]
pub struct VerifyContext<'a> {
    /// The canister the session is opened with (must be in every restricting delegation's
    /// targets).
    pub canister: Principal,
    /// The open's 32-byte Ed25519 session key (the chain must end at it).
    pub session_key: &'a [u8; 32],
    /// The canister's time (ns): every delegation must expire at or after it.
    pub now_ns: u64,
    /// The IC root key (raw 96-byte BLS key) canister signatures are checked under.
    pub ic_root_key: &'a [u8],
}

/// An Ed25519 verifier: `(key, message, signature) -> valid`.
pub type Ed25519Verify<'f> = &'f dyn Fn(&[u8; 32], &[u8], &[u8]) -> bool;

/// Verifies `proof` with the reference Ed25519 verifier ([`crate::signing::verify_signature`]).
#[cfg(feature = "identity")]
pub fn verify_proof(
    proof: &IdentityProof,
    ctx: &VerifyContext<'_>,
) -> Result<VerifiedIdentity, IdentityError> {
    verify_proof_with(proof, ctx, &|k, m, s| {
        crate::signing::verify_signature(k, m, s).is_ok()
    })
}

/// The checks that need no signature verification, in the order documented in the module
/// docs: bounded work whatever the input. Returns the parsed sender key kind and the earliest
/// expiration.
pub fn precheck(
    proof: &IdentityProof,
    ctx: &VerifyContext<'_>,
) -> Result<(KeyKind, u64), IdentityError> {
    let n = proof.delegations.len();
    if n == 0 || n > MAX_DELEGATIONS {
        return Err(IdentityError::ChainLength {
            len: n as u64,
            limit: MAX_DELEGATIONS as u64,
        });
    }
    // Sizes (n is small, so these sums cannot overflow usize).
    let mut size = proof.sender_pubkey.len();
    let mut targets_total = 0usize;
    for d in &proof.delegations {
        size = size
            .saturating_add(d.delegation.pubkey.len())
            .saturating_add(d.signature.len());
        if let Some(t) = &d.delegation.targets {
            if t.len() > MAX_TARGETS_PER_DELEGATION {
                return Err(IdentityError::TooManyTargets);
            }
            targets_total = targets_total.saturating_add(t.len());
            size = size.saturating_add(t.iter().map(|p| p.as_slice().len()).sum::<usize>());
        }
        if d.signature.len() > MAX_SIGNATURE_BYTES {
            return Err(IdentityError::TooLarge {
                size: d.signature.len() as u64,
                limit: MAX_SIGNATURE_BYTES as u64,
            });
        }
    }
    if targets_total > MAX_TARGETS_TOTAL {
        return Err(IdentityError::TooManyTargets);
    }
    if size > MAX_PROOF_BYTES {
        return Err(IdentityError::TooLarge {
            size: size as u64,
            limit: MAX_PROOF_BYTES as u64,
        });
    }
    // Keys: all parse, none repeats.
    let sender = parse_der_public_key(&proof.sender_pubkey)
        .ok_or(IdentityError::MalformedKey { index: 0 })?;
    for (i, d) in proof.delegations.iter().enumerate() {
        parse_der_public_key(&d.delegation.pubkey).ok_or(IdentityError::MalformedKey {
            index: (i as u32).saturating_add(1),
        })?;
    }
    for (i, d) in proof.delegations.iter().enumerate() {
        if d.delegation.pubkey == proof.sender_pubkey
            || proof
                .delegations
                .get(..i)
                .unwrap_or_default()
                .iter()
                .any(|e| e.delegation.pubkey == d.delegation.pubkey)
        {
            return Err(IdentityError::Cycle);
        }
    }
    // Expiry, permissions, targets.
    let mut expires = u64::MAX;
    for (i, d) in proof.delegations.iter().enumerate() {
        let index = i as u32;
        let del = &d.delegation;
        if del.expiration < ctx.now_ns {
            return Err(IdentityError::Expired {
                index,
                expiration: del.expiration,
            });
        }
        expires = expires.min(del.expiration);
        if del.permissions == Some(DelegationPermissions::Queries) {
            return Err(IdentityError::QueriesOnly { index });
        }
        if let Some(t) = &del.targets {
            if !t.contains(&ctx.canister) {
                return Err(IdentityError::TargetNotAllowed { index });
            }
        }
    }
    // The chain ends at this open's session key.
    let last = proof
        .delegations
        .last()
        .map(|d| d.delegation.pubkey.as_slice());
    if last != Some(ed25519_der(ctx.session_key).as_slice()) {
        return Err(IdentityError::WrongSessionKey);
    }
    Ok((sender.kind(), expires))
}

/// Verifies `proof` for `ctx` (see the module docs for the checks), with `ed25519` verifying
/// Ed25519 signatures; canister signatures (Internet Identity) under `ctx.ic_root_key`
/// ([`crate::canister_sig`]).
#[cfg(feature = "identity")]
pub fn verify_proof_with(
    proof: &IdentityProof,
    ctx: &VerifyContext<'_>,
    ed25519: Ed25519Verify<'_>,
) -> Result<VerifiedIdentity, IdentityError> {
    let (kind, expires_ns) = precheck(proof, ctx)?;
    let mut signer: &[u8] = &proof.sender_pubkey;
    for (i, d) in proof.delegations.iter().enumerate() {
        let index = i as u32;
        let message = delegation_signable(&d.delegation);
        verify_signature_der(signer, &message, &d.signature, ctx, ed25519)
            .map_err(|e| e.unwrap_or(IdentityError::InvalidSignature { index }))?;
        signer = &d.delegation.pubkey;
    }
    Ok(VerifiedIdentity {
        principal: principal_of(&proof.sender_pubkey),
        expires_ns,
        kind,
    })
}

/// One Ed25519 signature of a chain: `(signer key, signed bytes, signature)`.
pub type Ed25519Signature = ([u8; 32], Vec<u8>, Vec<u8>);

/// The Ed25519 signatures of `proof`'s chain, as `(signer key, signed bytes, signature)` in
/// chain order, or `None` if [`precheck`] refuses the proof. For a verifier that checks them
/// in one batch (together with the open's own signature) before [`verify_proof_with`], whose
/// `ed25519` callback then only has to recognise them: the verdicts, their order and the
/// errors stay [`verify_proof_with`]'s.
pub fn ed25519_signatures(
    proof: &IdentityProof,
    ctx: &VerifyContext<'_>,
) -> Option<Vec<Ed25519Signature>> {
    precheck(proof, ctx).ok()?;
    let mut out = Vec::new();
    let mut signer: &[u8] = &proof.sender_pubkey;
    for d in &proof.delegations {
        if let Some(PublicKey::Ed25519(k)) = parse_der_public_key(signer) {
            out.push((*k, delegation_signable(&d.delegation), d.signature.clone()));
        }
        signer = &d.delegation.pubkey;
    }
    Some(out)
}

/// Verifies one signature under a DER key. `Err(None)`: the signature is invalid;
/// `Err(Some(e))`: the key cannot be used.
#[cfg(feature = "identity")]
fn verify_signature_der(
    der: &[u8],
    message: &[u8],
    signature: &[u8],
    ctx: &VerifyContext<'_>,
    ed25519: Ed25519Verify<'_>,
) -> Result<(), Option<IdentityError>> {
    let key = parse_der_public_key(der).ok_or(Some(IdentityError::MalformedKey { index: 0 }))?;
    let ok = match key {
        PublicKey::Ed25519(k) => ed25519(k, message, signature),
        PublicKey::EcdsaP256(point) => {
            use p256::ecdsa::signature::Verifier;
            match (
                p256::ecdsa::VerifyingKey::from_sec1_bytes(point),
                p256::ecdsa::Signature::from_slice(signature),
            ) {
                (Ok(k), Ok(s)) => k.verify(message, &s).is_ok(),
                _ => false,
            }
        }
        PublicKey::EcdsaSecp256k1(point) => {
            use k256::ecdsa::signature::Verifier;
            match (
                k256::ecdsa::VerifyingKey::from_sec1_bytes(point),
                k256::ecdsa::Signature::from_slice(signature),
            ) {
                (Ok(k), Ok(s)) => k.verify(message, &s).is_ok(),
                _ => false,
            }
        }
        PublicKey::CanisterSignature { .. } => {
            // Internet Identity's scheme: a certificate of the signing canister's certified
            // data under the IC root key, and a tree holding sig/<seed>/<message>.
            use crate::canister_sig::{verify, CanisterSigError};
            return match verify(ctx.ic_root_key, der, message, signature) {
                Ok(()) => Ok(()),
                // The canister's configured root key is unusable: it cannot verify any.
                Err(CanisterSigError::MalformedRootKey) => {
                    Err(Some(IdentityError::CanisterSignatureUnsupported))
                }
                Err(_) => Err(None),
            };
        }
    };
    if ok {
        Ok(())
    } else {
        Err(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SessionKey;
    use ic_agent::identity::{
        BasicIdentity, DelegatedIdentity, Identity, Prime256v1Identity, Secp256k1Identity,
    };
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000_000_000;
    const HOUR: u64 = 3_600_000_000_000;

    fn canister() -> Principal {
        Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1])
    }
    fn other_canister() -> Principal {
        Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 8, 1, 1])
    }

    fn ed(seed: u8) -> BasicIdentity {
        BasicIdentity::from_raw_key(&[seed; 32])
    }
    fn k1(seed: u8) -> Secp256k1Identity {
        Secp256k1Identity::from_private_key(k256::SecretKey::from_slice(&[seed; 32]).unwrap())
    }
    fn p256id(seed: u8) -> Prime256v1Identity {
        Prime256v1Identity::from_private_key(p256::SecretKey::from_slice(&[seed; 32]).unwrap())
    }

    fn to_ours(d: &ic_transport_types::SignedDelegation) -> SignedDelegation {
        SignedDelegation {
            delegation: Delegation {
                pubkey: d.delegation.pubkey.clone(),
                expiration: d.delegation.expiration,
                targets: d.delegation.targets.clone(),
                permissions: d.delegation.permissions.map(|p| match p {
                    ic_transport_types::DelegationPermissions::Queries => {
                        DelegationPermissions::Queries
                    }
                    ic_transport_types::DelegationPermissions::All => DelegationPermissions::All,
                }),
            },
            signature: d.signature.clone(),
        }
    }

    /// What a client does: its identity signs a delegation to the session key (as ic-agent
    /// signs any delegation), appended to the identity's own chain.
    fn proof_with(
        identity: &dyn Identity,
        session: &SessionKey,
        expiration: u64,
        targets: Option<Vec<Principal>>,
    ) -> IdentityProof {
        let key: [u8; 32] = session.public_key().try_into().unwrap();
        let delegation = ic_transport_types::Delegation {
            pubkey: ed25519_der(&key),
            expiration,
            targets,
            permissions: None,
        };
        let sig = identity.sign_delegation(&delegation).unwrap();
        let mut delegations: Vec<SignedDelegation> = sig
            .delegations
            .unwrap_or_default()
            .iter()
            .map(to_ours)
            .collect();
        delegations.push(to_ours(&ic_transport_types::SignedDelegation {
            delegation,
            signature: sig.signature.unwrap(),
        }));
        IdentityProof {
            sender_pubkey: sig.public_key.unwrap(),
            delegations,
        }
    }

    fn proof(identity: &dyn Identity, session: &SessionKey) -> IdentityProof {
        proof_with(identity, session, NOW + HOUR, Some(vec![canister()]))
    }

    fn key_of(session: &SessionKey) -> [u8; 32] {
        session.public_key().try_into().unwrap()
    }

    fn check(p: &IdentityProof, session: &SessionKey) -> Result<VerifiedIdentity, IdentityError> {
        let key = key_of(session);
        verify_proof(
            p,
            &VerifyContext {
                canister: canister(),
                session_key: &key,
                now_ns: NOW,
                ic_root_key: &[],
            },
        )
    }

    fn session(seed: u8) -> SessionKey {
        SessionKey::from_seed([seed; 32])
    }

    /// A delegated identity: `root` delegates to `inner` (as Internet Identity's delegation
    /// to a dapp's session key, with a plain key at the root).
    fn delegated(
        root: &dyn Identity,
        inner: Box<dyn Identity>,
        targets: Option<Vec<Principal>>,
    ) -> DelegatedIdentity {
        let delegation = ic_transport_types::Delegation {
            pubkey: inner.public_key().unwrap(),
            expiration: NOW + 2 * HOUR,
            targets,
            permissions: None,
        };
        let sig = root.sign_delegation(&delegation).unwrap();
        DelegatedIdentity::new_unchecked(
            root.public_key().unwrap(),
            inner,
            vec![ic_transport_types::SignedDelegation {
                delegation,
                signature: sig.signature.unwrap(),
            }],
        )
    }

    #[test]
    fn hash_matches_ic_transport_types() {
        for (targets, permissions) in [
            (None, None),
            (Some(vec![canister(), other_canister()]), None),
            (
                Some(vec![]),
                Some(ic_transport_types::DelegationPermissions::All),
            ),
            (
                None,
                Some(ic_transport_types::DelegationPermissions::Queries),
            ),
        ] {
            let theirs = ic_transport_types::Delegation {
                pubkey: vec![1, 2, 3],
                expiration: 1_234_567_890_123,
                targets,
                permissions,
            };
            let ours = to_ours(&ic_transport_types::SignedDelegation {
                delegation: theirs.clone(),
                signature: vec![],
            })
            .delegation;
            assert_eq!(delegation_signable(&ours), theirs.signable());
        }
    }

    #[test]
    fn candid_layout_is_ic_transport_types() {
        let s = session(1);
        let p = proof(&ed(1), &s);
        let theirs: Vec<ic_transport_types::SignedDelegation> =
            candid::decode_one(&candid::encode_one(&p.delegations).unwrap()).unwrap();
        assert_eq!(theirs[0].delegation.expiration, NOW + HOUR);
        let back: Vec<SignedDelegation> =
            crate::decode(&candid::encode_one(&theirs).unwrap()).unwrap();
        assert_eq!(back, p.delegations);
    }

    #[test]
    fn every_key_kind_verifies_and_gives_the_identitys_principal() {
        let s = session(9);
        let ids: Vec<(Box<dyn Identity>, KeyKind)> = vec![
            (Box::new(ed(1)), KeyKind::Ed25519),
            (Box::new(k1(2)), KeyKind::EcdsaSecp256k1),
            (Box::new(p256id(3)), KeyKind::EcdsaP256),
        ];
        for (id, kind) in ids {
            let v = check(&proof(id.as_ref(), &s), &s).unwrap();
            assert_eq!(v.principal, id.sender().unwrap());
            assert_eq!(v.kind, kind);
            assert_eq!(v.expires_ns, NOW + HOUR);
        }
    }

    #[test]
    fn delegated_identities_verify_with_the_roots_principal() {
        let s = session(9);
        // Every root kind, delegating to an Ed25519 "dapp session" key.
        let roots: Vec<Box<dyn Identity>> =
            vec![Box::new(ed(1)), Box::new(k1(2)), Box::new(p256id(3))];
        for root in roots {
            let d = delegated(root.as_ref(), Box::new(ed(50)), None);
            let p = proof(&d, &s);
            assert_eq!(p.delegations.len(), 2);
            let v = check(&p, &s).unwrap();
            assert_eq!(v.principal, root.sender().unwrap());
            assert_eq!(v.principal, d.sender().unwrap());
            // The earliest expiration of the chain.
            assert_eq!(v.expires_ns, NOW + HOUR);
        }
        // A chain of two (secp256k1 -> P-256 -> Ed25519 dapp key) with restricted targets,
        // as DelegatedIdentity holds a longer chain, then the session delegation: 3 links.
        let d1 = ic_transport_types::Delegation {
            pubkey: p256id(4).public_key().unwrap(),
            expiration: NOW + 2 * HOUR,
            targets: Some(vec![other_canister(), canister()]),
            permissions: None,
        };
        let s1 = k1(5).sign_delegation(&d1).unwrap().signature.unwrap();
        let d2 = ic_transport_types::Delegation {
            pubkey: ed(51).public_key().unwrap(),
            expiration: NOW + 3 * HOUR,
            targets: Some(vec![canister()]),
            permissions: Some(ic_transport_types::DelegationPermissions::All),
        };
        let s2 = p256id(4).sign_delegation(&d2).unwrap().signature.unwrap();
        let chain = DelegatedIdentity::new_unchecked(
            k1(5).public_key().unwrap(),
            Box::new(ed(51)),
            vec![
                ic_transport_types::SignedDelegation {
                    delegation: d1,
                    signature: s1,
                },
                ic_transport_types::SignedDelegation {
                    delegation: d2,
                    signature: s2,
                },
            ],
        );
        let p = proof(&chain, &s);
        assert_eq!(p.delegations.len(), 3);
        assert_eq!(check(&p, &s).unwrap().principal, k1(5).sender().unwrap());
    }

    #[test]
    fn attacks_are_refused_with_typed_errors() {
        let s = session(9);
        let other = session(10);
        let good = proof(&ed(1), &s);
        // A proof for another session key.
        assert_eq!(check(&good, &other), Err(IdentityError::WrongSessionKey));
        // Another canister (targets exclude it).
        let p = proof_with(&ed(1), &s, NOW + HOUR, Some(vec![other_canister()]));
        assert_eq!(
            check(&p, &s),
            Err(IdentityError::TargetNotAllowed { index: 0 })
        );
        // Empty targets allow nothing.
        let p = proof_with(&ed(1), &s, NOW + HOUR, Some(vec![]));
        assert_eq!(
            check(&p, &s),
            Err(IdentityError::TargetNotAllowed { index: 0 })
        );
        // A delegated identity restricted to another canister.
        let d = delegated(&ed(1), Box::new(ed(50)), Some(vec![other_canister()]));
        assert_eq!(
            check(&proof(&d, &s), &s),
            Err(IdentityError::TargetNotAllowed { index: 0 })
        );
        // Expired (one nanosecond before now).
        let p = proof_with(&ed(1), &s, NOW - 1, None);
        assert_eq!(
            check(&p, &s),
            Err(IdentityError::Expired {
                index: 0,
                expiration: NOW - 1
            })
        );
        // Tampered signature, each kind.
        let ids: Vec<Box<dyn Identity>> =
            vec![Box::new(ed(1)), Box::new(k1(2)), Box::new(p256id(3))];
        for id in ids {
            let mut p = proof(id.as_ref(), &s);
            p.delegations[0].signature[5] ^= 1;
            assert_eq!(
                check(&p, &s),
                Err(IdentityError::InvalidSignature { index: 0 })
            );
            // Tampered delegation content (longer expiry).
            let mut p = proof(id.as_ref(), &s);
            p.delegations[0].delegation.expiration += 1;
            assert_eq!(
                check(&p, &s),
                Err(IdentityError::InvalidSignature { index: 0 })
            );
            // Someone else's sender key with this chain: the principal cannot be swapped.
            let mut p = proof(id.as_ref(), &s);
            p.sender_pubkey = ed(77).public_key().unwrap();
            assert_eq!(
                check(&p, &s),
                Err(IdentityError::InvalidSignature { index: 0 })
            );
        }
        // Truncated chain: a delegated identity's proof without its first link.
        let d = delegated(&ed(1), Box::new(ed(50)), None);
        let mut p = proof(&d, &s);
        p.delegations.remove(0);
        assert_eq!(
            check(&p, &s),
            Err(IdentityError::InvalidSignature { index: 0 })
        );
        // ... and without the last (the chain then ends at the dapp key).
        let mut p = proof(&d, &s);
        p.delegations.pop();
        assert_eq!(check(&p, &s), Err(IdentityError::WrongSessionKey));
        // No delegation at all.
        let mut p = proof(&ed(1), &s);
        p.delegations.clear();
        assert!(matches!(
            check(&p, &s),
            Err(IdentityError::ChainLength { len: 0, .. })
        ));
        // Oversized chain.
        let mut p = proof(&d, &s);
        let first = p.delegations[0].clone();
        while p.delegations.len() <= MAX_DELEGATIONS {
            p.delegations.insert(0, first.clone());
        }
        assert!(matches!(
            check(&p, &s),
            Err(IdentityError::ChainLength { .. })
        ));
        // Oversized signature and too many targets: refused before any signature check.
        let mut p = proof(&ed(1), &s);
        p.delegations[0].signature = vec![0; MAX_SIGNATURE_BYTES + 1];
        assert!(matches!(check(&p, &s), Err(IdentityError::TooLarge { .. })));
        let mut p = proof(&ed(1), &s);
        p.delegations[0].delegation.targets =
            Some(vec![canister(); MAX_TARGETS_PER_DELEGATION + 1]);
        assert_eq!(check(&p, &s), Err(IdentityError::TooManyTargets));
        let mut p = proof(&d, &s);
        p.delegations[0].signature = vec![0; MAX_SIGNATURE_BYTES];
        p.delegations[1].signature = vec![0; MAX_SIGNATURE_BYTES];
        assert!(matches!(check(&p, &s), Err(IdentityError::TooLarge { .. })));
        // A cycle (the sender key again).
        let mut p = proof(&d, &s);
        p.delegations[0].delegation.pubkey = p.sender_pubkey.clone();
        assert_eq!(check(&p, &s), Err(IdentityError::Cycle));
        // Queries-only permission.
        let key = key_of(&s);
        let del = ic_transport_types::Delegation {
            pubkey: ed25519_der(&key),
            expiration: NOW + HOUR,
            targets: None,
            permissions: Some(ic_transport_types::DelegationPermissions::Queries),
        };
        let sig = ed(1).sign_delegation(&del).unwrap();
        let p = IdentityProof {
            sender_pubkey: sig.public_key.unwrap(),
            delegations: vec![to_ours(&ic_transport_types::SignedDelegation {
                delegation: del,
                signature: sig.signature.unwrap(),
            })],
        };
        assert_eq!(check(&p, &s), Err(IdentityError::QueriesOnly { index: 0 }));
        // Malformed and unsupported keys.
        let mut p = proof(&ed(1), &s);
        p.sender_pubkey.push(0);
        assert_eq!(check(&p, &s), Err(IdentityError::MalformedKey { index: 0 }));
        let mut p = proof(&ed(1), &s);
        p.sender_pubkey = b"not a key".to_vec();
        assert_eq!(check(&p, &s), Err(IdentityError::MalformedKey { index: 0 }));
    }

    #[test]
    fn canister_signature_keys_parse_and_an_unusable_root_key_is_reported() {
        // DER of a canister-signature key as Internet Identity builds it.
        let id = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]);
        let seed = [9u8; 32];
        let mut bits = vec![0u8, id.as_slice().len() as u8];
        bits.extend_from_slice(id.as_slice());
        bits.extend_from_slice(&seed);
        let mut alg = vec![0x06, OID_CANISTER_SIG.len() as u8];
        alg.extend_from_slice(OID_CANISTER_SIG);
        let mut body = vec![0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.push(0x03);
        body.push(bits.len() as u8);
        body.extend_from_slice(&bits);
        let mut der = vec![0x30, body.len() as u8];
        der.extend_from_slice(&body);
        assert_eq!(
            parse_der_public_key(&der),
            Some(PublicKey::CanisterSignature {
                canister_id: id,
                seed: &seed
            })
        );
        let s = session(9);
        let key = key_of(&s);
        let p = IdentityProof {
            sender_pubkey: der.clone(),
            delegations: vec![SignedDelegation {
                delegation: Delegation {
                    pubkey: ed25519_der(&key),
                    expiration: NOW + HOUR,
                    targets: None,
                    permissions: None,
                },
                signature: vec![0xd9, 0xd9, 0xf7],
            }],
        };
        assert_eq!(
            check(&p, &s),
            Err(IdentityError::CanisterSignatureUnsupported)
        );
        assert_eq!(principal_of(&der), Principal::self_authenticating(&der));
    }

    #[test]
    fn der_parser_agrees_with_the_identities_and_is_strict() {
        for id in [
            Box::new(ed(1)) as Box<dyn Identity>,
            Box::new(k1(2)),
            Box::new(p256id(3)),
        ] {
            let der = id.public_key().unwrap();
            assert!(parse_der_public_key(&der).is_some());
            for cut in 0..der.len() {
                assert_eq!(parse_der_public_key(&der[..cut]), None, "cut {cut}");
            }
            let mut longer = der.clone();
            longer.push(0);
            assert_eq!(parse_der_public_key(&longer), None);
        }
    }

    #[test]
    fn the_proof_digest_covers_every_field() {
        let s = session(9);
        let p = proof(&delegated(&ed(1), Box::new(ed(50)), None), &s);
        let d = proof_digest(&p);
        let mut q = p.clone();
        q.sender_pubkey[20] ^= 1;
        assert_ne!(proof_digest(&q), d);
        let mut q = p.clone();
        q.delegations[1].signature[0] ^= 1;
        assert_ne!(proof_digest(&q), d);
        let mut q = p.clone();
        q.delegations[0].delegation.targets = Some(vec![]);
        assert_ne!(proof_digest(&q), d);
        let mut q = p.clone();
        q.delegations.pop();
        assert_ne!(proof_digest(&q), d);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Arbitrary bytes through the candid decoder and the verifier: no panic, and nothing
        /// random verifies.
        #[test]
        fn arbitrary_bytes_never_panic_or_verify(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_der_public_key(&bytes);
            if let Ok(p) = crate::decode::<IdentityProof>(&bytes) {
                let s = session(9);
                prop_assert!(check(&p, &s).is_err());
            }
        }

        /// Random mutations of a valid proof's candid encoding: decode or not, never panic,
        /// and anything that still verifies names the same principal.
        #[test]
        fn mutated_proofs_never_panic(pos in 0usize..4096, byte in any::<u8>(), cut in 0usize..4096) {
            let s = session(9);
            let p = proof(&delegated(&k1(2), Box::new(ed(50)), None), &s);
            let mut bytes = candid::encode_one(&p).unwrap();
            let n = bytes.len();
            bytes[pos % n] = byte;
            bytes.truncate(n - cut % n.min(64));
            if let Ok(q) = crate::decode::<IdentityProof>(&bytes) {
                if let Ok(v) = check(&q, &s) {
                    prop_assert_eq!(v.principal, k1(2).sender().unwrap());
                }
            }
        }

        /// Arbitrary structured proofs (random keys and signatures of the right shapes).
        #[test]
        fn structured_garbage_is_refused(
            sender in proptest::collection::vec(any::<u8>(), 0..100),
            sigs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..6),
            exp in any::<u64>(),
        ) {
            let s = session(9);
            let key = key_of(&s);
            let p = IdentityProof {
                sender_pubkey: sender,
                delegations: sigs.into_iter().map(|signature| SignedDelegation {
                    delegation: Delegation { pubkey: ed25519_der(&key), expiration: exp, targets: None, permissions: None },
                    signature,
                }).collect(),
            };
            prop_assert!(check(&p, &s).is_err());
        }
    }
}
