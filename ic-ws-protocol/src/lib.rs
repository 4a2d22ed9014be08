//! The ic-ws wire protocol, shared by the canister runtime, the gateway and the Rust client.
//!
//! - [`types`]: candid types of the generated canister endpoints and of certified content;
//! - [`signing`]: the exact bytes a client's session key signs, and Ed25519 helpers;
//! - [`certification`]: where messages live in the certified tree;
//! - [`frames`]: WebSocket frames between client and gateway;
//! - `verify` (feature `verify`): every check a client makes on what the gateway delivers.
//!
//! `docs/protocol.md` at the repository root is the normative description; this crate is its
//! executable form and produces the test vectors (`test-vectors/`) other clients are tested
//! against.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]

pub mod certification;
pub mod frames;
pub mod signing;
#[cfg(feature = "test-utils")]
pub mod test_utils;
pub mod types;
#[cfg(feature = "verify")]
pub mod verify;

pub use certification::{content_hash, message_path};
pub use frames::{ClientFrame, GatewayFrame, PROTOCOL_VERSION};
pub use signing::{SessionKey, SignatureError};
pub use types::*;

/// Candid encoding of a single value (the form every blob in the protocol takes).
pub fn encode<T: candid::CandidType>(value: &T) -> Result<Vec<u8>, candid::Error> {
    candid::encode_one(value)
}

/// Candid decoding of a single value received from a peer.
///
/// Decoding work is bounded (candid's decoding and skipping quotas) so that a small hostile
/// blob cannot make the decoder allocate or loop without limit.
pub fn decode<T: candid::CandidType + for<'de> serde::Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, candid::Error> {
    let mut config = candid::de::DecoderConfig::new();
    config
        .set_decoding_quota(DECODING_QUOTA)
        .set_skipping_quota(SKIPPING_QUOTA);
    candid::utils::decode_one_with_config(bytes, &config)
}

/// Candid decoding quota for peer input (candid's cost units; ~ bytes of decoded values).
pub const DECODING_QUOTA: usize = 32 * 1024 * 1024;
/// Candid skipping quota for peer input (bounds work spent on unknown fields).
pub const SKIPPING_QUOTA: usize = 100_000;
