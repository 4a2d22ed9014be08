//! A client's checks of a `Messages` frame (`ic_ws_protocol::verify`): certificate (CBOR,
//! delegation, BLS signature, time, certified data), hash tree (CBOR, root hash, lookups) and
//! contents (sequence, recipient, candid).
//!
//! BLS verification costs about a millisecond, far more than everything else, so the target
//! calls `verify_certificate` (checks 1-2) through a cache keyed by the certificate bytes and
//! then `DeliveryVerifier::verify_with_certificate` (checks 3-6), which is what
//! `DeliveryVerifier::verify` does without the cache. Most inputs use one of two fixed
//! certificates whose check is cached after its first run, so mutations land on the tree and
//! contents; a third mode takes the certificate bytes from the input (each new certificate
//! that parses costs one BLS check).
//!
//! Input (see [`crate::input::Reader`]): a flags byte (bits 0-1: certificate mode, bits 2-3:
//! tree mode), the next expected sequence number (1 byte), the certificate (2-byte length,
//! certificate mode 2 only), the tree (2-byte length, tree mode 0 only), then messages: client
//! (1 byte; 0 is the verifier's client 42), sequence number (1 byte), content (2-byte length).
//!
//! Certificate modes: 0 the test vectors' certificate (real BLS, the vectors' root key); 1 a
//! certificate trusted to certify the tree's root hash (exercises checks 3-6 on any tree);
//! 2 certificate bytes from the input; 3 trusted, certifying a fixed other hash.
//! Tree modes: 0 tree bytes from the input; 1 the honest tree of the frame's messages; 2 that
//! tree pruned for client 42 as a gateway does; 3 the honest tree with one leaf replaced.
//!
//! Invariants: no panic; pruning keeps the root hash; an accepted frame is exactly what the
//! tree certifies (recipient, contiguous sequence numbers, content hashes, decoded contents);
//! an honest frame under a trusted certificate is accepted.

use crate::input::{Reader, Writer};
use candid::Principal;
use ic_certification::{HashTree, LookupResult};
use ic_ws_protocol::test_utils::{cbor_self_describing, labeled_forest};
use ic_ws_protocol::types::{OutboundContent, OutboundMessage};
use ic_ws_protocol::verify::{
    prune_tree_for_client, verify_certificate, DeliveryVerifier, VerifiedCertificate, VerifyError,
};
use ic_ws_protocol::{content_hash, message_path};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

const CLIENT: u64 = 42;
const MAX_MESSAGES: usize = 64;

/// The fixed context: the test vectors' root key, canister, time and valid certificate.
struct Context {
    verifier: DeliveryVerifier,
    now_ns: u64,
    certificate: Vec<u8>,
}

fn context() -> &'static Context {
    static CONTEXT: OnceLock<Context> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let v = crate::vectors();
        let valid = &v["delivery"]["cases"][0];
        let number = |x: &serde_json::Value| x.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        Context {
            verifier: DeliveryVerifier {
                root_key_der: crate::vector_bytes(&valid["root_key"]),
                canister_id: Principal::from_text(v["canister_id"].as_str().unwrap_or_default())
                    .unwrap_or(Principal::anonymous()),
                client_id: CLIENT,
                max_certificate_age_ns: number(&v["delivery"]["max_certificate_age_ns"]),
            },
            now_ns: number(&valid["now_ns"]),
            certificate: crate::vector_bytes(&valid["certificate"]),
        }
    })
}

/// `verify_certificate` with the context's key, canister and time, cached by certificate.
fn checked_certificate(certificate: &[u8]) -> Result<VerifiedCertificate, VerifyError> {
    type Cache = HashMap<Vec<u8>, Result<VerifiedCertificate, VerifyError>>;
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = cache.get(certificate) {
        return r.clone();
    }
    let c = context();
    let r = verify_certificate(
        certificate,
        &c.verifier.root_key_der,
        &c.verifier.canister_id,
        c.now_ns,
        c.verifier.max_certificate_age_ns,
    );
    if cache.len() >= 4096 {
        cache.clear();
    }
    cache.insert(certificate.to_vec(), r.clone());
    r
}

/// The `/ws` tree certifying `messages` (the last content wins for a repeated path).
fn honest_tree(messages: &[OutboundMessage]) -> HashTree {
    let mut clients: BTreeMap<u64, BTreeMap<u64, [u8; 32]>> = BTreeMap::new();
    for m in messages {
        clients
            .entry(m.client_id)
            .or_default()
            .insert(m.seq, content_hash(&m.content));
    }
    let clients = clients
        .into_iter()
        .map(|(client, seqs)| {
            let leaves = seqs
                .into_iter()
                .map(|(seq, hash)| {
                    (
                        seq.to_be_bytes().to_vec(),
                        ic_certification::leaf(hash.to_vec()),
                    )
                })
                .collect();
            (client.to_be_bytes().to_vec(), labeled_forest(leaves))
        })
        .collect();
    ic_certification::labeled(b"ws".to_vec(), labeled_forest(clients))
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let c = context();
    let mut r = Reader::new(data);
    let flags = r.u8();
    let next_seq = u64::from(r.u8());
    let raw_certificate = if flags & 3 == 2 { r.bytes16() } else { &[] };
    let raw_tree = if (flags >> 2) & 3 == 0 {
        r.bytes16()
    } else {
        &[]
    };
    let mut messages = Vec::new();
    while !r.is_empty() && messages.len() < MAX_MESSAGES {
        let client = match r.u8() {
            0 => CLIENT,
            other => u64::from(other),
        };
        let seq = u64::from(r.u8());
        messages.push(OutboundMessage {
            client_id: client,
            seq,
            content: r.bytes16().to_vec(),
        });
    }
    let tree_bytes = match (flags >> 2) & 3 {
        0 => raw_tree.to_vec(),
        1 => cbor_self_describing(&honest_tree(&messages)),
        2 => {
            let full = honest_tree(&messages);
            let seqs: Vec<u64> = messages
                .iter()
                .filter(|m| m.client_id == CLIENT)
                .map(|m| m.seq)
                .collect();
            let pruned = prune_tree_for_client(&full, CLIENT, &seqs);
            assert_eq!(pruned.digest(), full.digest(), "pruning changed the root");
            cbor_self_describing(&pruned)
        }
        _ => {
            let mut tampered = messages.clone();
            if let Some(m) = tampered.get_mut(usize::from(flags >> 4) % messages.len().max(1)) {
                m.content.push(flags);
            }
            cbor_self_describing(&honest_tree(&tampered))
        }
    };
    let tree: Option<HashTree> = serde_cbor::from_slice(&tree_bytes).ok();
    let trusted = |certified_data: Vec<u8>| VerifiedCertificate {
        certified_data,
        time_ns: c.now_ns,
    };
    let certificate = match flags & 3 {
        0 => checked_certificate(&c.certificate),
        1 => Ok(trusted(
            tree.as_ref().map_or(vec![0; 32], |t| t.digest().to_vec()),
        )),
        2 => checked_certificate(raw_certificate),
        _ => Ok(trusted(vec![7; 32])),
    };
    let result = certificate.and_then(|cert| {
        c.verifier
            .verify_with_certificate(&cert, &messages, &tree_bytes, next_seq)
    });
    match result {
        Ok(verified) => {
            let tree = tree.expect("an accepted frame has a tree that parses");
            assert_eq!(verified.len(), messages.len());
            for ((m, v), expected_seq) in messages.iter().zip(&verified).zip(next_seq..) {
                assert_eq!(m.client_id, CLIENT, "accepted another client's message");
                assert_eq!(m.seq, expected_seq, "accepted a message out of sequence");
                assert_eq!(v.seq, m.seq);
                let path = message_path(m.client_id, m.seq);
                assert!(
                    matches!(tree.lookup_path(path.iter()), LookupResult::Found(leaf) if leaf == content_hash(&m.content)),
                    "accepted an uncertified message"
                );
                let content: OutboundContent =
                    ic_ws_protocol::decode(&m.content).expect("accepted content decodes");
                assert_eq!(v.content, content);
            }
        }
        Err(e) => {
            // An honest frame under a trusted certificate must pass.
            let honest = flags & 3 == 1
                && matches!((flags >> 2) & 3, 1 | 2)
                && !messages.is_empty()
                && messages
                    .iter()
                    .zip(next_seq..)
                    .all(|(m, s)| m.client_id == CLIENT && m.seq == s)
                && messages
                    .iter()
                    .all(|m| ic_ws_protocol::decode::<OutboundContent>(&m.content).is_ok());
            assert!(!honest, "an honest frame was refused: {e}");
        }
    }
}

/// The messages of one delivery case of the vectors.
pub fn vector_messages(case: &serde_json::Value) -> Vec<OutboundMessage> {
    let number = |x: &serde_json::Value| x.as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    case["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| OutboundMessage {
            client_id: number(&m["client_id"]),
            seq: number(&m["seq"]),
            content: crate::vector_bytes(&m["content"]),
        })
        .collect()
}

/// An input in this target's format.
pub fn input(
    flags: u8,
    next_seq: u8,
    certificate: &[u8],
    tree: &[u8],
    messages: &[OutboundMessage],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(flags).u8(next_seq);
    if flags & 3 == 2 {
        w.bytes16(certificate);
    }
    if (flags >> 2) & 3 == 0 {
        w.bytes16(tree);
    }
    for m in messages {
        let client = if m.client_id == CLIENT {
            0
        } else {
            m.client_id.min(255) as u8
        };
        w.u8(client).u8(m.seq.min(255) as u8).bytes16(&m.content);
    }
    w.0
}

/// Every delivery case of the vectors, plus the valid one in every mode.
pub fn seeds() -> Vec<Vec<u8>> {
    let v = crate::vectors();
    let cases: Vec<serde_json::Value> = v["delivery"]["cases"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut seeds = Vec::new();
    for case in &cases {
        let messages = vector_messages(case);
        let certificate = crate::vector_bytes(&case["certificate"]);
        let tree = crate::vector_bytes(&case["tree"]);
        seeds.push(input(0, 0, &certificate, &tree, &messages));
        seeds.push(input(2, 0, &certificate, &tree, &messages));
    }
    if let Some(valid) = cases.first() {
        let messages = vector_messages(valid);
        for flags in [1 | 1 << 2, 1 | 2 << 2, 1 | 3 << 2, 3 | 1 << 2, 2 << 2] {
            seeds.push(input(flags, 0, &[], &[], &messages));
        }
    }
    seeds
}
