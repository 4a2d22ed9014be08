//! Candid on the gateway's hot path: one `Messages` frame per client per poll page, and a
//! look at the last message of each to see whether it closes the session.
//!
//! candid's generic `encode_one` / `decode_one` build, sort and compare the whole type
//! description of the value on every call, which (measured with `perf` on
//! `loadgen/bench.sh gateway`) was most of the gateway's CPU per frame. Both are done once here:
//! frames are encoded with a [`TypedEncoder`] (byte-identical to `encode_one`), and
//! [`terminal`] / [`timestamp_ns`] (from `ic_ws_protocol::content`) read the body's variant
//! index and the timestamp straight from content whose candid header is the one ic-ws
//! canisters write, falling back to a full decode for any other header.

use ic_ws_protocol::{GatewayFrame, TypedEncoder};
use std::sync::OnceLock;

/// The candid encoding of a frame for a client.
pub fn encode_frame(frame: &GatewayFrame) -> Result<Vec<u8>, candid::Error> {
    static ENCODER: OnceLock<Option<TypedEncoder<GatewayFrame>>> = OnceLock::new();
    match ENCODER.get_or_init(|| TypedEncoder::new().ok()) {
        Some(encoder) => encoder.encode(frame),
        None => ic_ws_protocol::encode(frame),
    }
}

/// The fast reads of certified content live with the protocol (`ic_ws_protocol::content`),
/// shared with the canister's encoder and tested against candid there.
pub use ic_ws_protocol::content::{terminal, timestamp_ns, Terminal};

/// Whether `content` (a candid [`OutboundContent`](ic_ws_protocol::types::OutboundContent))
/// is a `Closed` message.
pub fn is_closed(content: &[u8]) -> bool {
    terminal(content) == Some(Terminal::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_ws_protocol::types::OutboundMessage;

    #[test]
    fn frames_are_encoded_as_candid_encodes_them() {
        let frame = GatewayFrame::Messages {
            messages: vec![OutboundMessage {
                client_id: 3,
                seq: 4,
                content: vec![5; 64],
            }],
            certificate: vec![6; 100],
            tree: vec![7; 50],
        };
        assert_eq!(
            encode_frame(&frame).unwrap(),
            ic_ws_protocol::encode(&frame).unwrap()
        );
    }
}
