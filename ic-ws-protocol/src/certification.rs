//! Where outbound messages live in the canister's certified hash tree.
//!
//! The canister's `certified_data` is the root hash of a tree in which every queued outbound
//! message has a leaf at `/ws/<client_id: u64 BE>/<seq: u64 BE>` whose value is
//! `sha256(content)`. The path names the recipient and the sequence number, so a certified
//! message can neither be delivered to another client nor replayed under another number.
//! The application may certify its own data beside it under `/app` (see ic-ws-canister).

use crate::types::ClientId;
use sha2::{Digest, Sha256};

/// Top-level label of the ic-ws subtree.
pub const WS_LABEL: &[u8] = b"ws";
/// Top-level label reserved for the application's own certified data.
pub const APP_LABEL: &[u8] = b"app";

/// The labels of a message's leaf: `["ws", client_id BE, seq BE]`.
pub fn message_path(client_id: ClientId, seq: u64) -> [Vec<u8>; 3] {
    [
        WS_LABEL.to_vec(),
        client_id.to_be_bytes().to_vec(),
        seq.to_be_bytes().to_vec(),
    ]
}

/// The leaf value certified for a message: SHA-256 of its candid-encoded content.
pub fn content_hash(content: &[u8]) -> [u8; 32] {
    Sha256::digest(content).into()
}
