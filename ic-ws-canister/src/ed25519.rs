//! Ed25519 verification of client signatures inside the canister: the protocol's
//! curve25519-dalek verifier ([`ic_ws_protocol::ed25519`]: ed25519-compact's exact semantics,
//! several times cheaper in wasm, batched where a call has several signatures; tested
//! differentially against ed25519-compact there).

use candid::Principal;
use ic_ws_protocol::ed25519::Entry;
use ic_ws_protocol::types::{ClientMessage, OpenRequest};
use ic_ws_protocol::SignatureError;

pub(crate) use ic_ws_protocol::ed25519::{batch_verified, verify as verify_signature};

/// [`ic_ws_protocol::signing::verify_open`] on this verifier.
pub(crate) fn verify_open(canister: &Principal, open: &OpenRequest) -> Result<(), SignatureError> {
    verify_signature(
        &open.client_key,
        &ic_ws_protocol::signing::open_signing_bytes(canister, open),
        &open.signature,
    )
}

/// [`ic_ws_protocol::signing::verify_message`] on this verifier.
pub(crate) fn verify_message(
    canister: &Principal,
    client_key: &[u8],
    msg: &ClientMessage,
) -> Result<(), SignatureError> {
    verify_signature(
        client_key,
        &ic_ws_protocol::signing::message_signing_bytes(canister, msg),
        &msg.signature,
    )
}

/// Owned `(key, message, signature)` triples, to borrow as a batch of [`Entry`].
#[derive(Default)]
pub(crate) struct OwnedBatch(pub(crate) Vec<ic_ws_protocol::identity::Ed25519Signature>);

impl OwnedBatch {
    /// Which entries are known valid after one batch equation (see
    /// [`ic_ws_protocol::ed25519::batch_verified`]).
    pub(crate) fn verified(&self) -> Vec<bool> {
        let entries: Vec<Entry<'_>> = self
            .0
            .iter()
            .map(|(k, m, s)| Entry {
                public_key: k,
                message: m,
                signature: s,
            })
            .collect();
        batch_verified(&entries)
    }
}
