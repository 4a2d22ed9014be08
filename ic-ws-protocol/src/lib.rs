//! The ic-ws wire protocol, shared by the canister runtime, the gateway and the Rust client.
//!
//! - [`types`]: candid types of the generated canister endpoints and of certified content;
//! - [`signing`]: the exact bytes a client's session key signs, and Ed25519 helpers;
//! - [`certification`]: where messages live in the certified tree;
//! - [`content`]: fast paths over certified content's candid (the canister's encoder of a
//!   direct `send`, the gateway's reads of the timestamp and of a session's end);
//! - [`frames`]: WebSocket frames between client and gateway;
//! - [`text`]: bounded, UTF-8-safe text (close reasons, error texts quoting peer input);
//! - `canister_sig` (feature `canister-sig`): canister signatures (Internet Identity's
//!   scheme): key parsing and verification, for canisters (wasm32) and native code;
//! - `verify` (feature `verify`): every check a client makes on what the gateway delivers;
//! - `client` (feature `client`): the client session as an I/O-free state machine (open and
//!   resume, held early frames, checks, ack and keep-alive policy, resend queue, and which
//!   outcomes are certified facts and which only mean "retry elsewhere").
//!
//! `docs/protocol.md` at the repository root is the normative description; this crate is its
//! executable form and produces the test vectors (`test-vectors/`) other clients are tested
//! against.
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]

#[cfg(feature = "canister-sig")]
pub mod canister_sig;
pub mod certification;
#[cfg(feature = "client")]
pub mod client;
pub mod content;
#[cfg(feature = "ed25519")]
pub mod ed25519;
pub mod frames;
pub mod identity;
pub mod signing;
#[cfg(feature = "test-utils")]
pub mod test_utils;
pub mod text;
pub mod types;
#[cfg(feature = "verify")]
pub mod verify;
#[cfg(feature = "verify")]
pub mod witness;

pub use certification::{content_hash, message_path};
pub use frames::{ClientFrame, GatewayFrame, PROTOCOL_VERSION};
pub use signing::{SessionKey, SignatureError};
pub use types::*;

/// Unsigned LEB128, the IC's encoding of natural numbers (in the state tree, in the
/// representation-independent hash of requests and delegations, in candid's lengths).
pub fn leb128(mut value: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Candid encoding of a single value (the form every blob in the protocol takes).
pub fn encode<T: candid::CandidType>(value: &T) -> Result<Vec<u8>, candid::Error> {
    candid::encode_one(value)
}

/// Candid encoder for values of one type that builds the type table once.
///
/// `candid::encode_one` rebuilds, sorts and serialises `T`'s whole type description for every
/// value; for the small values a gateway encodes per client per poll (a `Messages` frame),
/// that is most of the encoding cost. `TypedEncoder::encode` gives exactly the bytes of
/// [`encode`] (tested for every frame variant): the header (`DIDL`, the type table, the
/// argument type) is computed once, only the value part per call.
pub struct TypedEncoder<T> {
    header: Vec<u8>,
    _type: std::marker::PhantomData<fn(&T)>,
}

impl<T: candid::CandidType> TypedEncoder<T> {
    /// Computes `T`'s candid header.
    pub fn new() -> Result<Self, candid::Error> {
        // As `candid::IDLBuilder::new` does: a fresh type memo, so the table is the same as
        // the one `encode` writes.
        candid::types::internal::env_clear();
        let mut types = candid::ser::TypeSerialize::new();
        types.push_type(&T::ty())?;
        types.serialize()?;
        let mut header = b"DIDL".to_vec();
        header.extend_from_slice(types.get_result());
        Ok(Self {
            header,
            _type: std::marker::PhantomData,
        })
    }

    /// The part every encoding of a `T` starts with: `DIDL`, the type table, the argument
    /// type.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The candid encoding of `value` (byte-identical to [`encode`]).
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, candid::Error> {
        let mut values = candid::ser::ValueSerializer::new();
        value.idl_serialize(&mut values)?;
        let mut out = Vec::with_capacity(self.header.len() + values.get_result().len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(values.get_result());
        Ok(out)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_replies_of_canisters_without_the_hint_still_decode() {
        // The reply as canisters built before `next_poll_ms` encode it.
        #[derive(candid::CandidType)]
        struct OldPollReply {
            messages: Vec<OutboundMessage>,
            next_cursor: u64,
            more: bool,
            certificate: serde_bytes::ByteBuf,
            tree: serde_bytes::ByteBuf,
        }
        let old = OldPollReply {
            messages: vec![OutboundMessage {
                client_id: 1,
                seq: 0,
                content: vec![5],
            }],
            next_cursor: 9,
            more: true,
            certificate: serde_bytes::ByteBuf::from(vec![1]),
            tree: serde_bytes::ByteBuf::from(vec![2]),
        };
        let ok: Result<OldPollReply, WsError> = Ok(old);
        let bytes = candid::encode_one(&ok).unwrap();
        let decoded: types::PollResult = candid::decode_one(&bytes).unwrap();
        let reply = decoded.unwrap();
        assert_eq!(
            (reply.next_cursor, reply.more, reply.next_poll_ms),
            (9, true, None)
        );
        assert_eq!(reply.messages.len(), 1);
        // And a new reply decodes as the old type (older gateways ignore the field).
        let new = types::PollReply {
            next_poll_ms: Some(250),
            ..reply
        };
        let bytes = candid::encode_one(Ok::<_, WsError>(new)).unwrap();
        #[derive(candid::CandidType, candid::Deserialize)]
        struct OldDecoded {
            next_cursor: u64,
        }
        let old: Result<OldDecoded, WsError> = candid::decode_one(&bytes).unwrap();
        assert_eq!(old.unwrap().next_cursor, 9);
    }

    #[test]
    fn typed_encoder_gives_exactly_the_bytes_of_encode() {
        let frames = vec![
            GatewayFrame::Hello {
                gateway: candid::Principal::self_authenticating(b"gw"),
                protocol_version: PROTOCOL_VERSION,
            },
            GatewayFrame::OpenResult(Err(WsError::OutOfSequence {
                expected: 3,
                got: 9,
            })),
            GatewayFrame::Messages {
                messages: (0..3u64)
                    .map(|seq| OutboundMessage {
                        client_id: 7,
                        seq,
                        content: vec![seq as u8; 200 * seq as usize],
                    })
                    .collect(),
                certificate: vec![1; 1500],
                tree: vec![2; 300],
            },
            GatewayFrame::Messages {
                messages: vec![],
                certificate: vec![],
                tree: vec![],
            },
            GatewayFrame::MessageError {
                seq: u64::MAX,
                error: WsError::InvalidSignature,
            },
        ];
        let encoder = TypedEncoder::<GatewayFrame>::new().unwrap();
        for frame in &frames {
            let fast = encoder.encode(frame).unwrap();
            assert_eq!(fast, encode(frame).unwrap(), "{frame:?}");
            assert_eq!(decode::<GatewayFrame>(&fast).unwrap(), *frame);
        }
        let contents = [
            OutboundContent {
                timestamp_ns: 1,
                body: OutboundBody::App {
                    topic: Some("prices".into()),
                    payload: vec![9; 130],
                },
            },
            OutboundContent {
                timestamp_ns: u64::MAX,
                body: OutboundBody::Closed {
                    reason: CloseReason::AppClosed {
                        code: 4000,
                        reason: "bye".into(),
                    },
                },
            },
        ];
        let encoder = TypedEncoder::<OutboundContent>::new().unwrap();
        for content in &contents {
            assert_eq!(encoder.encode(content).unwrap(), encode(content).unwrap());
        }
    }
}
