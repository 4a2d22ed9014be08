//! Every check a client makes on what an (untrusted) gateway delivers.
//!
//! Order of checks for one `Messages` frame (docs/protocol.md, "What a client checks"):
//! 1. the certificate's BLS signature against the IC root key (through a subnet delegation when
//!    present, whose canister ranges must contain the canister);
//! 2. the certificate's `/time` is not older than the allowed age;
//! 3. the hash tree's root hash equals `/canister/<id>/certified_data` in the certificate;
//! 4. each message is addressed to this client and carries the next expected sequence number;
//! 5. each message's content hash is the leaf at `/ws/<client_id>/<seq>` in the tree;
//! 6. the content decodes.
//!
//! Each failure is a distinct [`VerifyError`] variant, so a client can say exactly which check
//! failed.

use crate::certification::{content_hash, message_path};
use crate::types::{ClientId, OutboundContent, OutboundMessage};
use candid::Principal;
use ic_certification::{Certificate, HashTree, HashTreeNode, LookupResult};

/// Domain separator of signed state roots.
const STATE_ROOT_DOMAIN: &[u8] = b"\x0Dic-state-root";
/// DER prefix of a BLS12-381 G2 public key as the IC encodes it.
const BLS_DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05,
    0x03, 0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
    0x02, 0x01, 0x03, 0x61, 0x00,
];
const BLS_KEY_LEN: usize = 96;

/// The IC mainnet root key (DER), built in so that clients need no key fetch on mainnet.
pub const MAINNET_ROOT_KEY_DER: [u8; 133] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05,
    0x03, 0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
    0x02, 0x01, 0x03, 0x61, 0x00, 0x81, 0x4c, 0x0e, 0x6e, 0xc7, 0x1f, 0xab, 0x58, 0x3b, 0x08, 0xbd,
    0x81, 0x37, 0x3c, 0x25, 0x5c, 0x3c, 0x37, 0x1b, 0x2e, 0x84, 0x86, 0x3c, 0x98, 0xa4, 0xf1, 0xe0,
    0x8b, 0x74, 0x23, 0x5d, 0x14, 0xfb, 0x5d, 0x9c, 0x0c, 0xd5, 0x46, 0xd9, 0x68, 0x5f, 0x91, 0x3a,
    0x0c, 0x0b, 0x2c, 0xc5, 0x34, 0x15, 0x83, 0xbf, 0x4b, 0x43, 0x92, 0xe4, 0x67, 0xdb, 0x96, 0xd6,
    0x5b, 0x9b, 0xb4, 0xcb, 0x71, 0x71, 0x12, 0xf8, 0x47, 0x2e, 0x0d, 0x5a, 0x4d, 0x14, 0x50, 0x5f,
    0xfd, 0x74, 0x84, 0xb0, 0x12, 0x91, 0x09, 0x1c, 0x5f, 0x87, 0xb9, 0x88, 0x83, 0x46, 0x3f, 0x98,
    0x09, 0x1a, 0x0b, 0xaa, 0xae,
];

/// Default maximum age of a certificate (as the IC agents: 5 minutes).
pub const DEFAULT_MAX_CERTIFICATE_AGE_NS: u64 = 5 * 60 * 1_000_000_000;

/// Which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The certificate bytes are not a CBOR certificate.
    #[error("certificate: malformed CBOR: {0}")]
    MalformedCertificate(String),
    /// The root key is not a 133-byte DER BLS key.
    #[error("root key is not a DER BLS12-381 key")]
    MalformedRootKey,
    /// The BLS signature over the state root does not verify.
    #[error("certificate: BLS signature does not verify against the root key")]
    BadCertificateSignature,
    /// The delegation is malformed, nested, or does not cover the canister.
    #[error("certificate: delegation invalid: {0}")]
    BadDelegation(String),
    /// No (or a malformed) `/time` in the certificate.
    #[error("certificate: missing or malformed /time")]
    MissingTime,
    /// The certificate is older than allowed.
    #[error("certificate: too old ({age_s} s, max {max_s} s)")]
    StaleCertificate {
        /// Its age in seconds.
        age_s: u64,
        /// The allowed age in seconds.
        max_s: u64,
    },
    /// The certificate holds no certified_data for the canister.
    #[error("certificate: no certified_data for canister {0}")]
    MissingCertifiedData(Principal),
    /// The hash tree bytes are not a CBOR hash tree.
    #[error("tree: malformed CBOR: {0}")]
    MalformedTree(String),
    /// The tree's root hash is not the certified data.
    #[error("tree: root hash does not match the certified data")]
    TreeRootMismatch,
    /// A message addressed to another client.
    #[error("message {seq}: addressed to client {got}, not {expected}")]
    WrongClient {
        /// Our client id.
        expected: ClientId,
        /// The id in the message.
        got: ClientId,
        /// Its sequence number.
        seq: u64,
    },
    /// A message out of sequence (dropped, reordered, duplicated or replayed).
    #[error("message out of sequence: expected {expected}, got {got}")]
    OutOfSequence {
        /// The next sequence number we expect.
        expected: u64,
        /// The one delivered.
        got: u64,
    },
    /// The message's content hash is not certified at its path.
    #[error("message {seq}: content not certified at /ws/<client>/<seq>")]
    NotCertified {
        /// Its sequence number.
        seq: u64,
    },
    /// The content is certified but does not decode.
    #[error("message {seq}: content does not decode: {error}")]
    BadContent {
        /// Its sequence number.
        seq: u64,
        /// The candid error.
        error: String,
    },
    /// An empty `Messages` frame (never sent by a correct gateway).
    #[error("empty message batch")]
    Empty,
}

/// Extracts the 96-byte BLS key from the IC's DER encoding.
pub fn bls_key_from_der(der: &[u8]) -> Result<&[u8], VerifyError> {
    if der.len() != BLS_DER_PREFIX.len() + BLS_KEY_LEN
        || der[..BLS_DER_PREFIX.len()] != BLS_DER_PREFIX
    {
        return Err(VerifyError::MalformedRootKey);
    }
    Ok(&der[BLS_DER_PREFIX.len()..])
}

fn lookup<'t>(tree: &'t HashTree, path: &[&[u8]]) -> Option<&'t [u8]> {
    match tree.lookup_path(path.iter()) {
        LookupResult::Found(v) => Some(v),
        _ => None,
    }
}

fn decode_leb128(mut bytes: &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    let mut shift = 0u32;
    loop {
        let (&b, rest) = bytes.split_first()?;
        bytes = rest;
        if shift >= 64 {
            return None;
        }
        value |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return bytes.is_empty().then_some(value);
        }
        shift += 7;
    }
}

fn check_bls(cert: &Certificate, key: &[u8]) -> Result<(), VerifyError> {
    let mut msg = Vec::with_capacity(STATE_ROOT_DOMAIN.len() + 32);
    msg.extend_from_slice(STATE_ROOT_DOMAIN);
    msg.extend_from_slice(&cert.tree.digest());
    ic_verify_bls_signature::verify_bls_signature(&cert.signature, &msg, key)
        .map_err(|()| VerifyError::BadCertificateSignature)
}

fn within_ranges(canister: &Principal, ranges: &[(Principal, Principal)]) -> bool {
    ranges.iter().any(|(lo, hi)| {
        lo.as_slice() <= canister.as_slice() && canister.as_slice() <= hi.as_slice()
    })
}

/// The key that signed `cert`: the root key, or the subnet key of a valid delegation whose
/// ranges include `canister_id`.
fn signing_key(
    cert: &Certificate,
    root_key_der: &[u8],
    canister_id: &Principal,
) -> Result<Vec<u8>, VerifyError> {
    let Some(delegation) = &cert.delegation else {
        return Ok(bls_key_from_der(root_key_der)?.to_vec());
    };
    let bad = |s: &str| VerifyError::BadDelegation(s.to_string());
    let dcert: Certificate = serde_cbor::from_slice(&delegation.certificate)
        .map_err(|e| VerifyError::BadDelegation(format!("malformed: {e}")))?;
    if dcert.delegation.is_some() {
        return Err(bad("nested delegation"));
    }
    check_bls(&dcert, bls_key_from_der(root_key_der)?)?;
    let subnet = delegation.subnet_id.as_slice();
    // Sharded ranges (/canister_ranges/<subnet>/<shard>) were introduced later; both forms are
    // accepted, the classic one first.
    let ranges: Vec<(Principal, Principal)> =
        if let Some(raw) = lookup(&dcert.tree, &[b"subnet", subnet, b"canister_ranges"]) {
            serde_cbor::from_slice(raw).map_err(|_| bad("malformed canister_ranges"))?
        } else {
            let mut all = Vec::new();
            if let ic_certification::SubtreeLookupResult::Found(shards) = dcert
                .tree
                .lookup_subtree([b"canister_ranges".as_slice(), subnet])
            {
                for path in shards.list_paths() {
                    let Some(label) = path.last() else { continue };
                    if let Some(raw) = lookup(&shards, &[label.as_bytes()]) {
                        let mut part: Vec<(Principal, Principal)> =
                            serde_cbor::from_slice(raw).map_err(|_| bad("malformed shard"))?;
                        all.append(&mut part);
                    }
                }
            }
            all
        };
    if !within_ranges(canister_id, &ranges) {
        return Err(bad("canister not in the delegated subnet's ranges"));
    }
    let der = lookup(&dcert.tree, &[b"subnet", subnet, b"public_key"])
        .ok_or_else(|| bad("no subnet public key"))?;
    Ok(bls_key_from_der(der)?.to_vec())
}

/// A verified certificate: the canister's certified data and the certificate time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    /// `/canister/<id>/certified_data`.
    pub certified_data: Vec<u8>,
    /// `/time` in nanoseconds.
    pub time_ns: u64,
}

/// Checks 1-2 and extracts the certified data (first half of check 3).
pub fn verify_certificate(
    certificate: &[u8],
    root_key_der: &[u8],
    canister_id: &Principal,
    now_ns: u64,
    max_age_ns: u64,
) -> Result<VerifiedCertificate, VerifyError> {
    let cert: Certificate = serde_cbor::from_slice(certificate)
        .map_err(|e| VerifyError::MalformedCertificate(e.to_string()))?;
    let key = signing_key(&cert, root_key_der, canister_id)?;
    check_bls(&cert, &key)?;
    let time_ns = lookup(&cert.tree, &[b"time"])
        .and_then(decode_leb128)
        .ok_or(VerifyError::MissingTime)?;
    let age = now_ns.saturating_sub(time_ns);
    if age > max_age_ns {
        return Err(VerifyError::StaleCertificate {
            age_s: age / 1_000_000_000,
            max_s: max_age_ns / 1_000_000_000,
        });
    }
    let certified_data = lookup(
        &cert.tree,
        &[b"canister", canister_id.as_slice(), b"certified_data"],
    )
    .ok_or(VerifyError::MissingCertifiedData(*canister_id))?
    .to_vec();
    Ok(VerifiedCertificate {
        certified_data,
        time_ns,
    })
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMessage {
    /// Its sequence number.
    pub seq: u64,
    /// Its decoded content.
    pub content: OutboundContent,
}

/// What a client knows when it checks a delivery.
#[derive(Debug, Clone)]
pub struct DeliveryVerifier {
    /// The IC root key (DER).
    pub root_key_der: Vec<u8>,
    /// The canister the client talks to.
    pub canister_id: Principal,
    /// The client's id.
    pub client_id: ClientId,
    /// Maximum certificate age.
    pub max_certificate_age_ns: u64,
}

impl DeliveryVerifier {
    /// Checks one `Messages` frame (checks 1-6) given the next sequence number the client
    /// expects; returns the messages in order. On error nothing of the frame may be used.
    pub fn verify(
        &self,
        messages: &[OutboundMessage],
        certificate: &[u8],
        tree: &[u8],
        next_seq: u64,
        now_ns: u64,
    ) -> Result<Vec<VerifiedMessage>, VerifyError> {
        if messages.is_empty() {
            return Err(VerifyError::Empty);
        }
        let cert = verify_certificate(
            certificate,
            &self.root_key_der,
            &self.canister_id,
            now_ns,
            self.max_certificate_age_ns,
        )?;
        self.verify_with_certificate(&cert, messages, tree, next_seq)
    }

    /// Checks 3-6 of one `Messages` frame whose certificate passed [`verify_certificate`]
    /// (checks 1-2) with this verifier's root key, canister and age. [`Self::verify`] is
    /// exactly `verify_certificate` followed by this; a caller that already checked the
    /// same certificate bytes (the fuzz target, which caches the BLS check) can reuse it.
    pub fn verify_with_certificate(
        &self,
        cert: &VerifiedCertificate,
        messages: &[OutboundMessage],
        tree: &[u8],
        next_seq: u64,
    ) -> Result<Vec<VerifiedMessage>, VerifyError> {
        if messages.is_empty() {
            return Err(VerifyError::Empty);
        }
        let tree: HashTree =
            serde_cbor::from_slice(tree).map_err(|e| VerifyError::MalformedTree(e.to_string()))?;
        if tree.digest().as_slice() != cert.certified_data.as_slice() {
            return Err(VerifyError::TreeRootMismatch);
        }
        let mut out = Vec::with_capacity(messages.len());
        for (expected, m) in (next_seq..).zip(messages) {
            if m.client_id != self.client_id {
                return Err(VerifyError::WrongClient {
                    expected: self.client_id,
                    got: m.client_id,
                    seq: m.seq,
                });
            }
            if m.seq != expected {
                return Err(VerifyError::OutOfSequence {
                    expected,
                    got: m.seq,
                });
            }
            let path = message_path(m.client_id, m.seq);
            match tree.lookup_path(path.iter()) {
                LookupResult::Found(leaf) if leaf == content_hash(&m.content).as_slice() => {}
                _ => return Err(VerifyError::NotCertified { seq: m.seq }),
            }
            let content: OutboundContent =
                crate::decode(&m.content).map_err(|e| VerifyError::BadContent {
                    seq: m.seq,
                    error: e.to_string(),
                })?;
            out.push(VerifiedMessage {
                seq: m.seq,
                content,
            });
        }
        Ok(out)
    }
}

/// Prunes a hash tree to the paths of one client's messages: every other subtree (other
/// clients', the app's) is replaced by its hash, so the root hash is unchanged and the witness
/// reveals nothing about other clients. Used by gateways.
pub fn prune_tree_for_client(tree: &HashTree, client_id: ClientId, seqs: &[u64]) -> HashTree {
    let paths: Vec<[Vec<u8>; 3]> = seqs.iter().map(|&s| message_path(client_id, s)).collect();
    let refs: Vec<&[Vec<u8>]> = paths.iter().map(|p| p.as_slice()).collect();
    prune(tree.as_ref(), &refs)
}

/// Keeps the nodes on `paths` (label sequences, all of the same depth so far), replacing
/// everything else by a pruned hash.
fn prune(node: &HashTreeNode, paths: &[&[Vec<u8>]]) -> HashTree {
    match node {
        HashTreeNode::Empty() => ic_certification::empty(),
        HashTreeNode::Pruned(h) => ic_certification::pruned(*h),
        HashTreeNode::Leaf(v) => {
            if paths.iter().any(|p| p.is_empty()) {
                ic_certification::leaf(v.clone())
            } else {
                ic_certification::pruned(node.digest())
            }
        }
        HashTreeNode::Fork(lr) => {
            let (left, right) = (prune(&lr.0, paths), prune(&lr.1, paths));
            // A fork with nothing kept on either side is one pruned hash, so a client's
            // witness stays logarithmic in the number of other clients, not linear.
            let kept = |t: &HashTree| !matches!(t.as_ref(), HashTreeNode::Pruned(_));
            if kept(&left) || kept(&right) {
                ic_certification::fork(left, right)
            } else {
                ic_certification::pruned(node.digest())
            }
        }
        HashTreeNode::Labeled(label, sub) => {
            let below: Vec<&[Vec<u8>]> = paths
                .iter()
                .filter_map(|p| match p.split_first() {
                    Some((first, rest)) if first.as_slice() == label.as_bytes() => Some(rest),
                    _ => None,
                })
                .collect();
            if below.is_empty() {
                ic_certification::pruned(node.digest())
            } else {
                ic_certification::labeled(label.as_bytes().to_vec(), prune(sub, &below))
            }
        }
    }
}
