//! Canister signatures: the IC's signature scheme whose "private key" is a canister's certified
//! data (IC interface spec, "Canister signatures"). Internet Identity signs its users'
//! delegations with it, so verifying an Internet Identity principal means verifying one.
//!
//! A canister-signature **public key** is DER
//! `SEQUENCE { SEQUENCE { OID 1.3.6.1.4.1.56387.1.2 }, BIT STRING raw }` with
//! `raw = len(canister_id) (1 byte) ++ canister_id ++ seed`: the signing canister and a seed the
//! canister chose (Internet Identity: one per anchor and front end). Its principal is the usual
//! self-authenticating principal of the DER bytes.
//!
//! A **signature** over `message` is self-describing CBOR `{certificate: blob, tree: HashTree}`,
//! valid when (checked in this order, cheap checks first, the BLS pairing last):
//! 1. `tree` contains the path `sig/<sha256(seed)>/<sha256(message)>` with the empty leaf;
//! 2. `certificate` reveals `canister/<canister_id>/certified_data` and it equals `tree`'s root
//!    hash;
//! 3. `certificate` carries a valid BLS signature under the IC root key, or under the key of a
//!    subnet whose delegation (itself signed by the root key, not nested) lists the signing
//!    canister in its canister ranges.
//!
//! The certificate's time is not checked: as on the IC, a canister signature does not expire
//! by itself (a delegation it signs carries its own expiration, which the caller checks).
//!
//! Everything here is bounded before work is done: the key and signature sizes are capped
//! ([`MAX_PUBLIC_KEY_BYTES`], [`MAX_SIGNATURE_BYTES`]), CBOR nesting is capped by the decoder
//! (serde_cbor's 128 levels; a hash tree deeper than that is a decode error, not a stack
//! overflow), and at most two BLS verifications run per call (the delegation's and the
//! certificate's). The cost inside a canister is measured in BENCHMARKS.md.
//!
//! The module compiles for `wasm32-unknown-unknown` without `getrandom` (feature
//! `canister-sig`: `ic-certification`, `ic-verify-bls-signature` without randomness,
//! `serde_cbor`).

use candid::Principal;
use ic_certification::{Certificate, HashTree, LookupResult, SubtreeLookupResult};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `SEQUENCE { OID 1.3.6.1.4.1.56387.1.2 }`: the algorithm identifier of canister signatures.
pub const ALGORITHM_ID_DER: [u8; 14] = [
    0x30, 0x0c, 0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xb8, 0x43, 0x01, 0x02,
];
/// Largest DER public key accepted (Internet Identity's are 62 bytes: a 10-byte canister id and
/// a 32-byte seed).
pub const MAX_PUBLIC_KEY_BYTES: usize = 512;
/// Largest seed accepted.
pub const MAX_SEED_BYTES: usize = 256;
/// Largest signature (CBOR `{certificate, tree}`) accepted. A mainnet Internet Identity
/// signature (certificate with subnet delegation, witness of a signature map) is about 2 KiB.
pub const MAX_SIGNATURE_BYTES: usize = 16 * 1024;
/// Domain separator of IC state-root signatures.
const STATE_ROOT_DOMAIN: &[u8] = b"\x0Dic-state-root";
/// Domain separator of delegation signatures (the prefix of what a delegation's signer signs).
pub const DELEGATION_DOMAIN: &[u8] = b"\x1Aic-request-auth-delegation";
/// DER prefix of a BLS12-381 G2 public key as the IC encodes it.
const BLS_DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05,
    0x03, 0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
    0x02, 0x01, 0x03, 0x61, 0x00,
];
const BLS_KEY_BYTES: usize = 96;
/// Longest principal.
const MAX_PRINCIPAL_BYTES: usize = 29;

/// Why a canister signature (or its key) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanisterSigError {
    /// The root key is neither 96 raw bytes nor the IC's 133-byte DER encoding.
    #[error("root key is not a BLS12-381 key (96 raw bytes or 133 DER bytes)")]
    MalformedRootKey,
    /// An input is larger than this module accepts.
    #[error("{what} of {len} bytes is larger than the maximum of {max}")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The public key is not a canister-signature DER key.
    #[error("malformed canister-signature public key: {0}")]
    MalformedPublicKey(&'static str),
    /// The signature is not CBOR `{certificate, tree}`.
    #[error("malformed canister signature: {0}")]
    MalformedSignature(String),
    /// The certificate inside the signature is not a CBOR certificate.
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    /// The tree has no `sig/<sha256(seed)>/<sha256(message)>` (other seed, other message, or a
    /// path pruned away).
    #[error("the signature tree does not contain sig/<sha256(seed)>/<sha256(message)>")]
    NotSigned,
    /// The path is there but its value is not the empty leaf.
    #[error("the signature tree's sig/<seed>/<message> leaf is not empty")]
    NonEmptyLeaf,
    /// The certificate reveals no certified data for the signing canister.
    #[error("the certificate has no certified_data for canister {0}")]
    MissingCertifiedData(Principal),
    /// The signing canister's certified data is not the tree's root hash.
    #[error("the certified data of canister {0} is not the signature tree's root hash")]
    CertifiedDataMismatch(Principal),
    /// The certificate's subnet delegation is malformed or nested.
    #[error("certificate delegation invalid: {0}")]
    BadDelegation(&'static str),
    /// The delegated subnet's canister ranges do not contain the signing canister.
    #[error("canister {0} is not in the canister ranges of the certificate's subnet delegation")]
    CanisterNotInRanges(Principal),
    /// A BLS signature (the certificate's, or its delegation's) does not verify.
    #[error("BLS signature of the {0} does not verify")]
    BadBlsSignature(&'static str),
}

/// The DER public key of the canister signatures `canister_id` makes with `seed`.
pub fn public_key_der(canister_id: &Principal, seed: &[u8]) -> Vec<u8> {
    let id = canister_id.as_slice();
    // raw = len(id) ++ id ++ seed; BIT STRING content = 0 unused bits ++ raw.
    let raw_len = 1 + id.len() + seed.len();
    let mut bit_string = Vec::with_capacity(raw_len + 4);
    bit_string.push(0x03);
    push_der_len(&mut bit_string, raw_len + 1);
    bit_string.push(0);
    bit_string.push(id.len() as u8);
    bit_string.extend_from_slice(id);
    bit_string.extend_from_slice(seed);
    let mut der = Vec::with_capacity(ALGORITHM_ID_DER.len() + bit_string.len() + 4);
    der.push(0x30);
    push_der_len(&mut der, ALGORITHM_ID_DER.len() + bit_string.len());
    der.extend_from_slice(&ALGORITHM_ID_DER);
    der.extend_from_slice(&bit_string);
    der
}

fn push_der_len(out: &mut Vec<u8>, len: usize) {
    // Lengths here are below 64 KiB (bounded keys); DER's short or long form.
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
}

/// Reads a DER length (definite, minimal, at most two length bytes); returns it and the rest.
fn read_der_len(bytes: &[u8]) -> Result<(usize, &[u8]), CanisterSigError> {
    let bad = CanisterSigError::MalformedPublicKey("bad DER length");
    let (&first, rest) = bytes.split_first().ok_or(bad.clone())?;
    match first {
        0..=0x7f => Ok((usize::from(first), rest)),
        0x81 => {
            let (&len, rest) = rest.split_first().ok_or(bad.clone())?;
            if len < 0x80 {
                return Err(bad);
            }
            Ok((usize::from(len), rest))
        }
        0x82 => match rest {
            [hi, lo, rest @ ..] if *hi != 0 => {
                Ok(((usize::from(*hi) << 8) | usize::from(*lo), rest))
            }
            _ => Err(bad),
        },
        _ => Err(bad),
    }
}

/// Reads one DER element of `tag`; returns its content and what follows it.
fn read_der(bytes: &[u8], tag: u8) -> Result<(&[u8], &[u8]), CanisterSigError> {
    let (&t, rest) = bytes
        .split_first()
        .ok_or(CanisterSigError::MalformedPublicKey("truncated"))?;
    if t != tag {
        return Err(CanisterSigError::MalformedPublicKey("unexpected DER tag"));
    }
    let (len, rest) = read_der_len(rest)?;
    if rest.len() < len {
        return Err(CanisterSigError::MalformedPublicKey("truncated"));
    }
    Ok(rest.split_at(len))
}

/// The signing canister and the seed named by a canister-signature DER public key.
pub fn signing_canister(der_public_key: &[u8]) -> Result<(Principal, Vec<u8>), CanisterSigError> {
    let (canister, seed) = parse_public_key(der_public_key)?;
    Ok((canister, seed.to_vec()))
}

/// Whether `der_public_key` names the canister-signature algorithm (a cheap test to route a
/// key to [`verify`]; the key may still be malformed).
pub fn is_canister_sig_key(der_public_key: &[u8]) -> bool {
    read_der(der_public_key, 0x30).is_ok_and(|(content, _)| content.starts_with(&ALGORITHM_ID_DER))
}

fn parse_public_key(der: &[u8]) -> Result<(Principal, &[u8]), CanisterSigError> {
    if der.len() > MAX_PUBLIC_KEY_BYTES {
        return Err(CanisterSigError::TooLarge {
            what: "public key",
            len: der.len(),
            max: MAX_PUBLIC_KEY_BYTES,
        });
    }
    let (content, trailing) = read_der(der, 0x30)?;
    if !trailing.is_empty() {
        return Err(CanisterSigError::MalformedPublicKey(
            "bytes after the DER sequence",
        ));
    }
    let rest =
        content
            .strip_prefix(&ALGORITHM_ID_DER[..])
            .ok_or(CanisterSigError::MalformedPublicKey(
                "not the canister-signature algorithm (OID 1.3.6.1.4.1.56387.1.2)",
            ))?;
    let (bits, trailing) = read_der(rest, 0x03)?;
    if !trailing.is_empty() {
        return Err(CanisterSigError::MalformedPublicKey(
            "bytes after the BIT STRING",
        ));
    }
    let Some((&0, raw)) = bits.split_first() else {
        return Err(CanisterSigError::MalformedPublicKey(
            "BIT STRING with unused bits",
        ));
    };
    let (&id_len, raw) = raw
        .split_first()
        .ok_or(CanisterSigError::MalformedPublicKey("empty key"))?;
    let id_len = usize::from(id_len);
    if id_len > MAX_PRINCIPAL_BYTES || raw.len() < id_len {
        return Err(CanisterSigError::MalformedPublicKey(
            "canister id length out of range",
        ));
    }
    let (id, seed) = raw.split_at(id_len);
    if seed.len() > MAX_SEED_BYTES {
        return Err(CanisterSigError::TooLarge {
            what: "seed",
            len: seed.len(),
            max: MAX_SEED_BYTES,
        });
    }
    let canister = Principal::try_from_slice(id)
        .map_err(|_| CanisterSigError::MalformedPublicKey("invalid canister id"))?;
    Ok((canister, seed))
}

/// `sha256(bytes)`.
fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The message a delegation's signer signs: `\x1Aic-request-auth-delegation ++ h`, where `h` is
/// the representation-independent hash of `{pubkey, expiration, targets?}` (IC interface spec,
/// "Authentication").
pub fn delegation_signature_msg(
    pubkey: &[u8],
    expiration: u64,
    targets: Option<&[Principal]>,
) -> Vec<u8> {
    let mut fields: Vec<([u8; 32], [u8; 32])> = Vec::with_capacity(3);
    fields.push((sha256(b"pubkey"), sha256(pubkey)));
    fields.push((sha256(b"expiration"), sha256(&crate::leb128(expiration))));
    if let Some(targets) = targets {
        let mut hasher = Sha256::new();
        for target in targets {
            hasher.update(sha256(target.as_slice()));
        }
        fields.push((sha256(b"targets"), hasher.finalize().into()));
    }
    fields.sort();
    let mut hasher = Sha256::new();
    for (key, value) in &fields {
        hasher.update(key);
        hasher.update(value);
    }
    let mut msg = DELEGATION_DOMAIN.to_vec();
    msg.extend_from_slice(&hasher.finalize());
    msg
}

/// The 96-byte BLS key from raw or DER bytes.
fn raw_bls_key(key: &[u8]) -> Result<&[u8], CanisterSigError> {
    if key.len() == BLS_KEY_BYTES {
        return Ok(key);
    }
    key.strip_prefix(&BLS_DER_PREFIX[..])
        .filter(|raw| raw.len() == BLS_KEY_BYTES)
        .ok_or(CanisterSigError::MalformedRootKey)
}

#[derive(Deserialize)]
struct CanisterSig {
    #[serde(with = "serde_bytes")]
    certificate: Vec<u8>,
    tree: HashTree,
}

/// Verifies a canister signature over `message` (already domain-separated by the caller, e.g.
/// [`delegation_signature_msg`]) for `der_public_key`, against the IC root key
/// (`ic_root_public_key`: 96 raw bytes or the 133-byte DER form).
pub fn verify(
    ic_root_public_key: &[u8],
    der_public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CanisterSigError> {
    verify_with_cache(
        &mut DelegationCache::default(),
        ic_root_public_key,
        der_public_key,
        message,
        signature,
    )
}

/// How many verified subnet delegations a [`DelegationCache`] remembers.
pub const DELEGATION_CACHE_ENTRIES: usize = 8;

/// Subnet delegations whose BLS signature (by the root key) was verified already.
///
/// Every certificate of a mainnet application subnet (Internet Identity's included) carries the
/// same delegation from the root key for months, and its check is one of the two BLS pairings
/// of a canister signature (about half the cost: BENCHMARKS.md, "Canister signatures"). A
/// canister that keeps one cache across calls pays one pairing per Internet Identity user after
/// the first. An entry is `sha256(root key ++ delegation certificate bytes)` and is added only
/// after that exact certificate verified under that root key; everything else (the canister
/// ranges, the subnet key, the certificate's own signature) is checked on every call. At most
/// [`DELEGATION_CACHE_ENTRIES`] entries (oldest evicted): an attacker can only evict with other
/// genuine IC delegations, which costs the uncached price and nothing more.
#[derive(Debug, Clone, Default)]
pub struct DelegationCache {
    verified: std::collections::VecDeque<[u8; 32]>,
}

impl DelegationCache {
    fn key(root_key: &[u8], certificate: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(root_key);
        hasher.update(certificate);
        hasher.finalize().into()
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.verified.contains(key)
    }

    fn insert(&mut self, key: [u8; 32]) {
        if self.verified.contains(&key) {
            return;
        }
        if self.verified.len() >= DELEGATION_CACHE_ENTRIES {
            self.verified.pop_front();
        }
        self.verified.push_back(key);
    }

    /// How many delegations are remembered.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }
}

/// [`verify`], skipping the BLS check of a subnet delegation `cache` holds as verified (and
/// remembering one that verifies).
pub fn verify_with_cache(
    cache: &mut DelegationCache,
    ic_root_public_key: &[u8],
    der_public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CanisterSigError> {
    let root_key = raw_bls_key(ic_root_public_key)?;
    let (canister, seed) = parse_public_key(der_public_key)?;
    if signature.len() > MAX_SIGNATURE_BYTES {
        return Err(CanisterSigError::TooLarge {
            what: "signature",
            len: signature.len(),
            max: MAX_SIGNATURE_BYTES,
        });
    }
    let sig: CanisterSig = serde_cbor::from_slice(signature)
        .map_err(|e| CanisterSigError::MalformedSignature(e.to_string()))?;

    // 1. The canister committed to sig/<seed>/<message>.
    let seed_hash = sha256(seed);
    let message_hash = sha256(message);
    match sig
        .tree
        .lookup_path([&b"sig"[..], &seed_hash[..], &message_hash[..]])
    {
        LookupResult::Found([]) => {}
        LookupResult::Found(_) => return Err(CanisterSigError::NonEmptyLeaf),
        _ => return Err(CanisterSigError::NotSigned),
    }

    // 2. That commitment is the canister's certified data in the certificate.
    let cert: Certificate = serde_cbor::from_slice(&sig.certificate)
        .map_err(|e| CanisterSigError::MalformedCertificate(e.to_string()))?;
    match cert.tree.lookup_path([
        &b"canister"[..],
        canister.as_slice(),
        &b"certified_data"[..],
    ]) {
        LookupResult::Found(data) => {
            if data != sig.tree.digest().as_slice() {
                return Err(CanisterSigError::CertifiedDataMismatch(canister));
            }
        }
        _ => return Err(CanisterSigError::MissingCertifiedData(canister)),
    }

    // 3. The certificate is the IC's (directly, or through a subnet allowed to host `canister`).
    let subnet_key = delegated_key(&cert, root_key, &canister, cache)?;
    let key = subnet_key.as_deref().unwrap_or(root_key);
    check_bls(&cert, key, "certificate")
}

fn check_bls(cert: &Certificate, key: &[u8], what: &'static str) -> Result<(), CanisterSigError> {
    let mut msg = Vec::with_capacity(STATE_ROOT_DOMAIN.len() + 32);
    msg.extend_from_slice(STATE_ROOT_DOMAIN);
    msg.extend_from_slice(&cert.tree.digest());
    ic_verify_bls_signature::verify_bls_signature(&cert.signature, &msg, key)
        .map_err(|()| CanisterSigError::BadBlsSignature(what))
}

fn lookup<'t>(tree: &'t HashTree, path: &[&[u8]]) -> Option<&'t [u8]> {
    match tree.lookup_path(path.iter()) {
        LookupResult::Found(v) => Some(v),
        _ => None,
    }
}

/// The subnet key of `cert`'s delegation (`None` without one: the root key signs), after
/// checking the delegation certificate and that its canister ranges contain `canister`.
fn delegated_key(
    cert: &Certificate,
    root_key: &[u8],
    canister: &Principal,
    cache: &mut DelegationCache,
) -> Result<Option<Vec<u8>>, CanisterSigError> {
    let Some(delegation) = &cert.delegation else {
        return Ok(None);
    };
    let dcert: Certificate = serde_cbor::from_slice(&delegation.certificate)
        .map_err(|_| CanisterSigError::BadDelegation("malformed delegation certificate"))?;
    if dcert.delegation.is_some() {
        return Err(CanisterSigError::BadDelegation("nested delegation"));
    }
    let subnet = delegation.subnet_id.as_slice();
    // Cheap checks before the pairing: ranges and key present.
    let in_ranges = if let Some(raw) = lookup(&dcert.tree, &[b"subnet", subnet, b"canister_ranges"])
    {
        let ranges: Vec<(Principal, Principal)> = serde_cbor::from_slice(raw)
            .map_err(|_| CanisterSigError::BadDelegation("malformed canister_ranges"))?;
        within(canister, &ranges)
    } else {
        // The sharded form: /canister_ranges/<subnet>/<shard> (each a list of ranges).
        let mut found = false;
        if let SubtreeLookupResult::Found(shards) =
            dcert.tree.lookup_subtree([&b"canister_ranges"[..], subnet])
        {
            for path in shards.list_paths() {
                let [label] = path.as_slice() else { continue };
                if let Some(raw) = lookup(&shards, &[label.as_bytes()]) {
                    let ranges: Vec<(Principal, Principal)> = serde_cbor::from_slice(raw)
                        .map_err(|_| CanisterSigError::BadDelegation("malformed range shard"))?;
                    if within(canister, &ranges) {
                        found = true;
                        break;
                    }
                }
            }
        }
        found
    };
    if !in_ranges {
        return Err(CanisterSigError::CanisterNotInRanges(*canister));
    }
    let der = lookup(&dcert.tree, &[b"subnet", subnet, b"public_key"])
        .ok_or(CanisterSigError::BadDelegation("no subnet public key"))?;
    let subnet_key = raw_bls_key(der)
        .map_err(|_| CanisterSigError::BadDelegation("malformed subnet public key"))?
        .to_vec();
    let cache_key = DelegationCache::key(root_key, &delegation.certificate);
    if !cache.contains(&cache_key) {
        check_bls(&dcert, root_key, "delegation certificate")?;
        cache.insert(cache_key);
    }
    Ok(Some(subnet_key))
}

fn within(canister: &Principal, ranges: &[(Principal, Principal)]) -> bool {
    ranges.iter().any(|(lo, hi)| {
        lo.as_slice() <= canister.as_slice() && canister.as_slice() <= hi.as_slice()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::cbor_self_describing;
    use ic_certification::{fork, labeled, leaf, pruned};
    use proptest::prelude::*;
    use serde::Serialize;

    const BLS_PREFIX: [u8; 37] = BLS_DER_PREFIX;

    struct Bls(ic_verify_bls_signature::PrivateKey);

    impl Bls {
        fn new(seed: u8) -> Self {
            let mut bytes = [seed; 32];
            bytes[0] = 0;
            Bls(ic_verify_bls_signature::PrivateKey::deserialize(&bytes).unwrap())
        }
        fn raw(&self) -> Vec<u8> {
            self.0.public_key().serialize().to_vec()
        }
        fn der(&self) -> Vec<u8> {
            [&BLS_PREFIX[..], &self.raw()].concat()
        }
        fn sign(
            &self,
            tree: HashTree,
            delegation: Option<ic_certification::Delegation>,
        ) -> Vec<u8> {
            let mut msg = STATE_ROOT_DOMAIN.to_vec();
            msg.extend_from_slice(&tree.digest());
            let signature = self.0.sign(&msg).serialize().to_vec();
            cbor_self_describing(&Certificate {
                tree,
                signature,
                delegation,
            })
        }
    }

    #[derive(Serialize)]
    struct Sig<'a> {
        #[serde(with = "serde_bytes")]
        certificate: &'a [u8],
        tree: &'a HashTree,
    }

    fn encode_sig(certificate: &[u8], tree: &HashTree) -> Vec<u8> {
        cbor_self_describing(&Sig { certificate, tree })
    }

    fn canister() -> Principal {
        Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1])
    }

    /// A signature map holding (seed, message) pairs, as a signing canister keeps it.
    fn sig_tree(entries: &[(&[u8], &[u8])]) -> HashTree {
        type Entries = Vec<(Vec<u8>, HashTree)>;
        let mut seeds: Vec<(Vec<u8>, Entries)> = Vec::new();
        for (seed, msg) in entries {
            let s = sha256(seed).to_vec();
            let m = (sha256(msg).to_vec(), leaf(Vec::<u8>::new()));
            match seeds.iter_mut().find(|(k, _)| *k == s) {
                Some((_, msgs)) => msgs.push(m),
                None => seeds.push((s, vec![m])),
            }
        }
        let seeds = seeds
            .into_iter()
            .map(|(s, msgs)| (s, crate::test_utils::labeled_forest(msgs)))
            .collect();
        labeled(b"sig".to_vec(), crate::test_utils::labeled_forest(seeds))
    }

    fn cert_tree(canister: &Principal, certified_data: &[u8]) -> HashTree {
        fork(
            labeled(
                b"canister".to_vec(),
                labeled(
                    canister.as_slice().to_vec(),
                    labeled(b"certified_data".to_vec(), leaf(certified_data.to_vec())),
                ),
            ),
            labeled(b"time".to_vec(), leaf(vec![1])),
        )
    }

    struct Case {
        root: Bls,
        key: Vec<u8>,
        msg: Vec<u8>,
        tree: HashTree,
    }

    fn case() -> Case {
        let msg = delegation_signature_msg(b"session key", 42, None);
        let tree = sig_tree(&[(b"seed", &msg), (b"seed", b"other"), (b"other seed", b"x")]);
        Case {
            root: Bls::new(3),
            key: public_key_der(&canister(), b"seed"),
            msg,
            tree,
        }
    }

    impl Case {
        fn signature(&self) -> Vec<u8> {
            let cert = self
                .root
                .sign(cert_tree(&canister(), &self.tree.digest()), None);
            encode_sig(&cert, &self.tree)
        }
    }

    /// Issue 10 end to end in the protocol crate: an Internet-Identity-style chain (canister
    /// signature -> session key) proves the principal of the canister-signature key at open,
    /// under the configured root key only.
    #[cfg(feature = "identity")]
    #[test]
    fn a_canister_signature_delegation_proves_its_principal_at_open() {
        use crate::identity::{
            ed25519_der, verify_proof, Delegation, IdentityError, IdentityProof, SignedDelegation,
            VerifyContext,
        };
        let root = Bls::new(5);
        let session = crate::SessionKey::from_seed([4; 32]);
        let session_key: [u8; 32] = session.public_key().try_into().unwrap();
        let now = 1_800_000_000_000_000_000u64;
        let delegation = Delegation {
            pubkey: ed25519_der(&session_key),
            expiration: now + 3_600_000_000_000,
            targets: Some(vec![canister()]),
            permissions: None,
        };
        let user_key = public_key_der(&Principal::from_slice(&[9; 10]), b"anchor 10000");
        let msg = crate::identity::delegation_signable(&delegation);
        let tree = sig_tree(&[(b"anchor 10000", &msg)]);
        let cert = root.sign(
            cert_tree(&Principal::from_slice(&[9; 10]), &tree.digest()),
            None,
        );
        let proof = IdentityProof {
            sender_pubkey: user_key.clone(),
            delegations: vec![SignedDelegation {
                delegation,
                signature: encode_sig(&cert, &tree),
            }],
        };
        let ctx = |root_key: &'static [u8]| VerifyContext {
            canister: canister(),
            session_key: Box::leak(Box::new(session_key)),
            now_ns: now,
            ic_root_key: root_key,
        };
        let raw: &'static [u8] = Box::leak(root.raw().into_boxed_slice());
        let verified = verify_proof(&proof, &ctx(raw)).unwrap();
        assert_eq!(
            verified.principal,
            Principal::self_authenticating(&user_key)
        );
        // Another root key (another network, or a forged certificate): not this principal.
        let other: &'static [u8] = Box::leak(Bls::new(6).raw().into_boxed_slice());
        assert_eq!(
            verify_proof(&proof, &ctx(other)).map(|v| v.principal),
            Err(IdentityError::InvalidSignature { index: 0 })
        );
        // A canister whose configured root key is unusable says so.
        assert_eq!(
            verify_proof(&proof, &ctx(&[1, 2, 3])).map(|v| v.principal),
            Err(IdentityError::CanisterSignatureUnsupported)
        );
    }

    #[test]
    fn a_valid_signature_verifies_with_the_raw_or_der_root_key() {
        let c = case();
        let sig = c.signature();
        assert_eq!(verify(&c.root.raw(), &c.key, &c.msg, &sig), Ok(()));
        assert_eq!(verify(&c.root.der(), &c.key, &c.msg, &sig), Ok(()));
        // The same tree signs the other pair of the same seed too.
        assert_eq!(verify(&c.root.raw(), &c.key, b"other", &sig), Ok(()));
        assert_eq!(
            verify(&c.root.raw()[1..], &c.key, &c.msg, &sig),
            Err(CanisterSigError::MalformedRootKey)
        );
    }

    #[test]
    fn other_seed_other_message_or_other_canister_is_refused() {
        let c = case();
        let sig = c.signature();
        let root = c.root.raw();
        // The seed of another user of the same canister.
        let other_seed = public_key_der(&canister(), b"other seed 2");
        assert_eq!(
            verify(&root, &other_seed, &c.msg, &sig),
            Err(CanisterSigError::NotSigned)
        );
        // A pair that exists, but for another seed.
        assert_eq!(
            verify(
                &root,
                &public_key_der(&canister(), b"other seed"),
                &c.msg,
                &sig
            ),
            Err(CanisterSigError::NotSigned)
        );
        assert_eq!(
            verify(&root, &c.key, b"another message", &sig),
            Err(CanisterSigError::NotSigned)
        );
        let elsewhere = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 8, 1, 1]);
        assert_eq!(
            verify(&root, &public_key_der(&elsewhere, b"seed"), &c.msg, &sig),
            Err(CanisterSigError::MissingCertifiedData(elsewhere))
        );
    }

    #[test]
    fn a_tree_without_the_path_or_with_a_non_empty_leaf_is_refused() {
        let c = case();
        let root = c.root.raw();
        // The sig subtree pruned: same root hash, path unknown.
        let pruned_tree = labeled(
            b"sig".to_vec(),
            pruned(match &c.tree.lookup_subtree([b"sig"]) {
                SubtreeLookupResult::Found(t) => t.digest(),
                _ => unreachable!(),
            }),
        );
        assert_eq!(pruned_tree.digest(), c.tree.digest());
        let cert = c.root.sign(cert_tree(&canister(), &c.tree.digest()), None);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &encode_sig(&cert, &pruned_tree)),
            Err(CanisterSigError::NotSigned)
        );
        // A leaf with a value.
        let tree = labeled(
            b"sig".to_vec(),
            labeled(
                sha256(b"seed").to_vec(),
                labeled(sha256(&c.msg).to_vec(), leaf(vec![1])),
            ),
        );
        let cert = c.root.sign(cert_tree(&canister(), &tree.digest()), None);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &encode_sig(&cert, &tree)),
            Err(CanisterSigError::NonEmptyLeaf)
        );
        // The path one level short (a seed subtree, not a leaf).
        let short = public_key_der(&canister(), b"seed");
        let tree = labeled(
            b"sig".to_vec(),
            labeled(sha256(b"seed").to_vec(), leaf(vec![])),
        );
        let cert = c.root.sign(cert_tree(&canister(), &tree.digest()), None);
        assert_eq!(
            verify(&root, &short, &c.msg, &encode_sig(&cert, &tree)),
            Err(CanisterSigError::NotSigned)
        );
    }

    #[test]
    fn wrong_certified_data_or_a_bad_bls_signature_is_refused() {
        let c = case();
        let root = c.root.raw();
        let cert = c.root.sign(cert_tree(&canister(), &[0; 32]), None);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &encode_sig(&cert, &c.tree)),
            Err(CanisterSigError::CertifiedDataMismatch(canister()))
        );
        // Signed by a key that is not the root.
        let cert = Bls::new(4).sign(cert_tree(&canister(), &c.tree.digest()), None);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &encode_sig(&cert, &c.tree)),
            Err(CanisterSigError::BadBlsSignature("certificate"))
        );
        // A flipped bit in the BLS signature.
        let mut parsed: Certificate =
            serde_cbor::from_slice(&c.root.sign(cert_tree(&canister(), &c.tree.digest()), None))
                .unwrap();
        parsed.signature[10] ^= 1;
        let cert = cbor_self_describing(&parsed);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &encode_sig(&cert, &c.tree)),
            Err(CanisterSigError::BadBlsSignature("certificate"))
        );
    }

    fn subnet_id() -> Vec<u8> {
        vec![9; 29]
    }

    /// A certificate signed by `subnet` with a delegation from `root` listing `ranges`.
    fn delegated(
        c: &Case,
        subnet: &Bls,
        delegation_signer: &Bls,
        ranges_tree: HashTree,
        nested: bool,
    ) -> Vec<u8> {
        let sid = subnet_id();
        let dtree = fork(
            labeled(
                b"subnet".to_vec(),
                labeled(
                    sid.clone(),
                    fork(
                        ranges_tree,
                        labeled(b"public_key".to_vec(), leaf(subnet.der())),
                    ),
                ),
            ),
            labeled(b"time".to_vec(), leaf(vec![1])),
        );
        let inner = nested.then(|| ic_certification::Delegation {
            subnet_id: sid.clone(),
            certificate: vec![0xa0],
        });
        let dcert = delegation_signer.sign(dtree, inner);
        let cert = subnet.sign(
            cert_tree(&canister(), &c.tree.digest()),
            Some(ic_certification::Delegation {
                subnet_id: sid,
                certificate: dcert,
            }),
        );
        encode_sig(&cert, &c.tree)
    }

    fn ranges(lo: Principal, hi: Principal) -> HashTree {
        labeled(
            b"canister_ranges".to_vec(),
            leaf(serde_cbor::to_vec(&vec![(lo, hi)]).unwrap()),
        )
    }

    #[test]
    fn subnet_delegations_are_followed_and_their_ranges_enforced() {
        let c = case();
        let root = c.root.raw();
        let subnet = Bls::new(5);
        let lo = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        let hi = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 1, 1]);
        let sig = delegated(&c, &subnet, &c.root, ranges(lo, hi), false);
        assert_eq!(verify(&root, &c.key, &c.msg, &sig), Ok(()));

        // The subnet may not sign for a canister outside its ranges.
        let hi = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 6, 1, 1]);
        let sig = delegated(&c, &subnet, &c.root, ranges(lo, hi), false);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &sig),
            Err(CanisterSigError::CanisterNotInRanges(canister()))
        );
        // A delegation not signed by the root.
        let hi = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 1, 1]);
        let sig = delegated(&c, &subnet, &Bls::new(6), ranges(lo, hi), false);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &sig),
            Err(CanisterSigError::BadBlsSignature("delegation certificate"))
        );
        // Nested delegations are refused.
        let sig = delegated(&c, &subnet, &c.root, ranges(lo, hi), true);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &sig),
            Err(CanisterSigError::BadDelegation("nested delegation"))
        );
        // No ranges at all.
        let sig = delegated(
            &c,
            &subnet,
            &c.root,
            labeled(b"other".to_vec(), leaf(vec![])),
            false,
        );
        assert_eq!(
            verify(&root, &c.key, &c.msg, &sig),
            Err(CanisterSigError::CanisterNotInRanges(canister()))
        );
        // The certificate signed by the root instead of the delegated subnet key.
        let mut parsed: Certificate = serde_cbor::from_slice(&{
            let sig: CanisterSig =
                serde_cbor::from_slice(&delegated(&c, &subnet, &c.root, ranges(lo, hi), false))
                    .unwrap();
            sig.certificate
        })
        .unwrap();
        let mut msg = STATE_ROOT_DOMAIN.to_vec();
        msg.extend_from_slice(&parsed.tree.digest());
        parsed.signature = c.root.0.sign(&msg).serialize().to_vec();
        let sig = encode_sig(&cbor_self_describing(&parsed), &c.tree);
        assert_eq!(
            verify(&root, &c.key, &c.msg, &sig),
            Err(CanisterSigError::BadBlsSignature("certificate"))
        );
    }

    #[test]
    fn the_delegation_cache_skips_only_the_delegation_pairing() {
        let c = case();
        let root = c.root.raw();
        let subnet = Bls::new(5);
        let lo = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        let hi = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 1, 1]);
        let mut cache = DelegationCache::default();
        // A delegation not signed by the root is never remembered.
        let forged = delegated(&c, &subnet, &Bls::new(6), ranges(lo, hi), false);
        for _ in 0..2 {
            assert_eq!(
                verify_with_cache(&mut cache, &root, &c.key, &c.msg, &forged),
                Err(CanisterSigError::BadBlsSignature("delegation certificate"))
            );
        }
        assert!(cache.is_empty());
        let sig = delegated(&c, &subnet, &c.root, ranges(lo, hi), false);
        assert_eq!(
            verify_with_cache(&mut cache, &root, &c.key, &c.msg, &sig),
            Ok(())
        );
        assert_eq!(cache.len(), 1);
        assert_eq!(
            verify_with_cache(&mut cache, &root, &c.key, &c.msg, &sig),
            Ok(())
        );
        assert_eq!(cache.len(), 1);
        // With the delegation remembered, the certificate's own signature is still checked ...
        let mut parsed: Certificate = serde_cbor::from_slice(
            &serde_cbor::from_slice::<CanisterSig>(&sig)
                .unwrap()
                .certificate,
        )
        .unwrap();
        parsed.signature = Bls::new(7)
            .0
            .sign(&[STATE_ROOT_DOMAIN, &parsed.tree.digest()[..]].concat())
            .serialize()
            .to_vec();
        let resigned = encode_sig(&cbor_self_describing(&parsed), &c.tree);
        assert_eq!(
            verify_with_cache(&mut cache, &root, &c.key, &c.msg, &resigned),
            Err(CanisterSigError::BadBlsSignature("certificate"))
        );
        // ... and so are the ranges, for another canister under the same delegation.
        let outside = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 10, 1, 1]);
        let key = public_key_der(&outside, b"seed");
        let mut tree = cert_tree(&outside, &c.tree.digest());
        tree = fork(tree, ic_certification::empty());
        let mut msg = STATE_ROOT_DOMAIN.to_vec();
        msg.extend_from_slice(&tree.digest());
        let cert = cbor_self_describing(&Certificate {
            signature: subnet.0.sign(&msg).serialize().to_vec(),
            tree,
            delegation: parsed.delegation.clone(),
        });
        assert_eq!(
            verify_with_cache(&mut cache, &root, &key, &c.msg, &encode_sig(&cert, &c.tree)),
            Err(CanisterSigError::CanisterNotInRanges(outside))
        );
        // Another root key is another cache entry.
        assert!(verify_with_cache(&mut cache, &Bls::new(8).raw(), &c.key, &c.msg, &sig).is_err());
        // Bounded.
        for seed in 10..30u8 {
            cache.insert([seed; 32]);
        }
        assert_eq!(cache.len(), DELEGATION_CACHE_ENTRIES);
    }

    #[test]
    fn sharded_canister_ranges_are_understood() {
        let c = case();
        let root = c.root.raw();
        let subnet = Bls::new(5);
        let sid = subnet_id();
        let shard = |lo: u8, hi: u8| {
            serde_cbor::to_vec(&vec![(
                Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, lo, 1, 1]),
                Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, hi, 1, 1]),
            )])
            .unwrap()
        };
        for (ranges, ok) in [((0, 3, 5, 9), true), ((0, 3, 8, 9), false)] {
            let dtree = fork(
                labeled(
                    b"canister_ranges".to_vec(),
                    labeled(
                        sid.clone(),
                        fork(
                            labeled(vec![0], leaf(shard(ranges.0, ranges.1))),
                            labeled(vec![1], leaf(shard(ranges.2, ranges.3))),
                        ),
                    ),
                ),
                labeled(
                    b"subnet".to_vec(),
                    labeled(
                        sid.clone(),
                        labeled(b"public_key".to_vec(), leaf(subnet.der())),
                    ),
                ),
            );
            let dcert = c.root.sign(dtree, None);
            let cert = subnet.sign(
                cert_tree(&canister(), &c.tree.digest()),
                Some(ic_certification::Delegation {
                    subnet_id: sid.clone(),
                    certificate: dcert,
                }),
            );
            let result = verify(&root, &c.key, &c.msg, &encode_sig(&cert, &c.tree));
            if ok {
                assert_eq!(result, Ok(()));
            } else {
                assert_eq!(
                    result,
                    Err(CanisterSigError::CanisterNotInRanges(canister()))
                );
            }
        }
    }

    #[test]
    fn public_keys_round_trip_and_malformed_ones_are_refused() {
        for seed_len in [0usize, 1, 32, 100, 127, 128, 200, MAX_SEED_BYTES] {
            let seed = vec![7u8; seed_len];
            let der = public_key_der(&canister(), &seed);
            assert!(is_canister_sig_key(&der));
            assert_eq!(signing_canister(&der), Ok((canister(), seed)));
        }
        // Internet Identity's key shape: 62 bytes for a 10-byte id and a 32-byte seed.
        assert_eq!(public_key_der(&canister(), &[0; 32]).len(), 62);
        let der = public_key_der(&canister(), b"seed");
        let bad = |bytes: &[u8]| signing_canister(bytes).unwrap_err();
        assert!(matches!(
            bad(&der[..der.len() - 1]),
            CanisterSigError::MalformedPublicKey(_)
        ));
        assert!(matches!(
            bad(&[&der[..], &[0]].concat()),
            CanisterSigError::MalformedPublicKey(_)
        ));
        let mut other_oid = der.clone();
        other_oid[13] = 0x01; // .1.1: WebAuthn
        assert!(!is_canister_sig_key(&other_oid));
        assert!(matches!(
            bad(&other_oid),
            CanisterSigError::MalformedPublicKey(_)
        ));
        let mut long_id = der.clone();
        long_id[19] = 30;
        assert!(matches!(
            bad(&long_id),
            CanisterSigError::MalformedPublicKey(_)
        ));
        let mut too_long_id = der.clone();
        too_long_id[19] = 200;
        assert!(matches!(
            bad(&too_long_id),
            CanisterSigError::MalformedPublicKey(_)
        ));
        assert!(matches!(
            bad(&public_key_der(&canister(), &[1; MAX_SEED_BYTES + 1])),
            CanisterSigError::TooLarge { what: "seed", .. }
        ));
        assert!(matches!(
            bad(&vec![0x30; MAX_PUBLIC_KEY_BYTES + 1]),
            CanisterSigError::TooLarge {
                what: "public key",
                ..
            }
        ));
        // An Ed25519 key is not a canister-signature key.
        let ed = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        assert!(!is_canister_sig_key(&[&ed[..], &[1; 32]].concat()));
        assert!(!is_canister_sig_key(&[]));
    }

    #[test]
    fn hostile_signature_bytes_get_typed_errors() {
        let c = case();
        let root = c.root.raw();
        assert!(matches!(
            verify(&root, &c.key, &c.msg, &vec![0; MAX_SIGNATURE_BYTES + 1]),
            Err(CanisterSigError::TooLarge {
                what: "signature",
                ..
            })
        ));
        // 16 KiB of nested arrays (a hash tree far deeper than the decoder allows).
        let deep = vec![0x81; MAX_SIGNATURE_BYTES];
        assert!(matches!(
            verify(&root, &c.key, &c.msg, &deep),
            Err(CanisterSigError::MalformedSignature(_))
        ));
        // A map whose tree is a deep chain of forks.
        let mut tree = leaf(Vec::<u8>::new());
        for _ in 0..200 {
            tree = fork(tree, ic_certification::empty());
        }
        let mut bytes = Vec::new();
        {
            let mut ser = serde_cbor::Serializer::new(&mut bytes);
            // Serialising needs no depth limit; decoding enforces one.
            Sig {
                certificate: &[],
                tree: &tree,
            }
            .serialize(&mut ser)
            .unwrap();
        }
        assert!(matches!(
            verify(&root, &c.key, &c.msg, &bytes),
            Err(CanisterSigError::MalformedSignature(_))
        ));
        // A certificate that is garbage inside a well-formed signature.
        assert!(matches!(
            verify(&root, &c.key, &c.msg, &encode_sig(&[0xff; 100], &c.tree)),
            Err(CanisterSigError::MalformedCertificate(_))
        ));
        // A huge declared length.
        assert!(matches!(
            verify(
                &root,
                &c.key,
                &c.msg,
                &[0xbf, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
            ),
            Err(CanisterSigError::MalformedSignature(_))
        ));
        // A wide tree (thousands of nodes) within the byte bound decodes and is refused
        // (no path), and one beyond the bound is refused before decoding.
        for (n, fits) in [(300usize, true), (3000, false)] {
            let wide = crate::test_utils::labeled_forest(
                (0..n as u32)
                    .map(|i| (i.to_be_bytes().to_vec(), ic_certification::empty()))
                    .collect(),
            );
            let cert = c.root.sign(cert_tree(&canister(), &wide.digest()), None);
            let sig = encode_sig(&cert, &wide);
            assert_eq!(sig.len() <= MAX_SIGNATURE_BYTES, fits, "{}", sig.len());
            let result = verify(&root, &c.key, &c.msg, &sig);
            if fits {
                assert_eq!(result, Err(CanisterSigError::NotSigned));
            } else {
                assert!(matches!(result, Err(CanisterSigError::TooLarge { .. })));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_verify_nor_panic(
            sig in proptest::collection::vec(any::<u8>(), 0..2048),
            key in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let c = case();
            prop_assert!(verify(&c.root.raw(), &c.key, &c.msg, &sig).is_err());
            let _ = signing_canister(&key);
            prop_assert!(verify(&c.root.raw(), &key, &c.msg, &c.signature()).is_err()
                || signing_canister(&key) == Ok((canister(), b"seed".to_vec())));
        }

        #[test]
        fn a_mutated_valid_signature_never_verifies(index in 3usize..4096, bit in 0u8..8) {
            let c = case();
            let mut sig = c.signature();
            let index = index % sig.len();
            prop_assume!(index >= 3); // the self-describe tag's value is ignored by design
            let original: CanisterSig = serde_cbor::from_slice(&sig).unwrap();
            sig[index] ^= 1 << bit;
            if verify(&c.root.raw(), &c.key, &c.msg, &sig).is_ok() {
                // Only another encoding of the same content may verify (a label as CBOR text
                // instead of bytes, a different tag, in the
                // signature or in its certificate): never different content.
                let decoded: CanisterSig = serde_cbor::from_slice(&sig).unwrap();
                let cert = |bytes: &[u8]| serde_cbor::from_slice::<Certificate>(bytes).unwrap();
                prop_assert_eq!(cert(&decoded.certificate), cert(&original.certificate));
                prop_assert_eq!(decoded.tree, original.tree);
            }
        }
    }
}
