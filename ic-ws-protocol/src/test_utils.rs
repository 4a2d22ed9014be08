//! A stand-in for the IC's certification, for unit tests of clients and gateways that run
//! without a replica: a BLS root key that signs certificates for a canister's certified data,
//! and a builder for the canister's `/ws` hash tree. (End-to-end tests use the embedded
//! replica's real certification instead.)

use crate::certification::{content_hash, WS_LABEL};
use crate::types::{ClientId, OutboundContent, OutboundMessage};
use candid::Principal;
use ic_certification::{Certificate, HashTree};
use serde::Serialize;
use std::collections::BTreeMap;

const DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05,
    0x03, 0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
    0x02, 0x01, 0x03, 0x61, 0x00,
];

/// A BLS12-381 root key that signs certificates like the IC does.
pub struct TestRootKey(ic_verify_bls_signature::PrivateKey);

impl TestRootKey {
    /// A deterministic key from a seed byte (valid for every seed below 0x70).
    pub fn from_seed(seed: u8) -> Self {
        let mut bytes = [seed; 32];
        bytes[0] = 0; // keep the scalar below the group order
        bytes[31] = seed.max(1);
        match ic_verify_bls_signature::PrivateKey::deserialize(&bytes) {
            Ok(k) => Self(k),
            Err(_) => unreachable!("a scalar with a zero top byte is always valid"),
        }
    }

    /// The DER-encoded public key (133 bytes), as `/api/v2/status` serves it.
    pub fn public_key_der(&self) -> Vec<u8> {
        let mut der = DER_PREFIX.to_vec();
        der.extend_from_slice(&self.0.public_key().serialize());
        der
    }

    /// A CBOR data certificate: `/time` and `/canister/<id>/certified_data`, signed.
    pub fn certificate(
        &self,
        canister_id: &Principal,
        certified_data: &[u8],
        time_ns: u64,
    ) -> Vec<u8> {
        let tree = ic_certification::fork(
            ic_certification::labeled(
                b"canister".to_vec(),
                ic_certification::labeled(
                    canister_id.as_slice().to_vec(),
                    ic_certification::labeled(
                        b"certified_data".to_vec(),
                        ic_certification::leaf(certified_data.to_vec()),
                    ),
                ),
            ),
            ic_certification::labeled(
                b"time".to_vec(),
                ic_certification::leaf(crate::leb128(time_ns)),
            ),
        );
        let mut msg = b"\x0Dic-state-root".to_vec();
        msg.extend_from_slice(&tree.digest());
        let signature = self.0.sign(&msg).serialize().to_vec();
        let cert = Certificate {
            tree,
            signature,
            delegation: None,
        };
        cbor_self_describing(&cert)
    }
}

/// CBOR with the self-describe tag, as the IC encodes certificates and trees.
pub fn cbor_self_describing<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_cbor::Serializer::new(&mut out);
    ser.self_describe().ok();
    value.serialize(&mut ser).ok();
    out
}

/// Builds a balanced fork tree over labeled subtrees, labels in ascending order (the IC's
/// lookup relies on the order).
pub fn labeled_forest(mut entries: Vec<(Vec<u8>, HashTree)>) -> HashTree {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    fn build(entries: &mut Vec<(Vec<u8>, HashTree)>, lo: usize, hi: usize) -> HashTree {
        match hi - lo {
            0 => ic_certification::empty(),
            1 => {
                let (label, sub) =
                    std::mem::replace(&mut entries[lo], (Vec::new(), ic_certification::empty()));
                ic_certification::labeled(label, sub)
            }
            n => {
                let mid = lo + n / 2;
                let left = build(entries, lo, mid);
                let right = build(entries, mid, hi);
                ic_certification::fork(left, right)
            }
        }
    }
    let n = entries.len();
    build(&mut entries, 0, n)
}

/// The canister side of certification for tests: messages per client and the `/ws` tree.
#[derive(Default, Clone)]
pub struct TestOutbox {
    messages: BTreeMap<(ClientId, u64), Vec<u8>>,
}

impl TestOutbox {
    /// Queues `content` for `client_id` at `seq` and returns the wire message.
    pub fn push(
        &mut self,
        client_id: ClientId,
        seq: u64,
        content: &OutboundContent,
    ) -> OutboundMessage {
        let bytes = crate::encode(content).unwrap_or_default();
        self.messages.insert((client_id, seq), bytes.clone());
        OutboundMessage {
            client_id,
            seq,
            content: bytes,
        }
    }

    /// The full hash tree `labeled("ws", clients -> seqs -> sha256(content))`.
    pub fn tree(&self) -> HashTree {
        let mut per_client: BTreeMap<ClientId, Vec<(Vec<u8>, HashTree)>> = BTreeMap::new();
        for ((client, seq), content) in &self.messages {
            per_client.entry(*client).or_default().push((
                seq.to_be_bytes().to_vec(),
                ic_certification::leaf(content_hash(content).to_vec()),
            ));
        }
        let clients = per_client
            .into_iter()
            .map(|(c, seqs)| (c.to_be_bytes().to_vec(), labeled_forest(seqs)))
            .collect();
        ic_certification::labeled(WS_LABEL.to_vec(), labeled_forest(clients))
    }
}
