//! Candid on the gateway's hot path: one `Messages` frame per client per poll page, and a
//! look at the last message of each to see whether it closes the session.
//!
//! candid's generic `encode_one` / `decode_one` build, sort and compare the whole type
//! description of the value on every call, which (measured with `perf` on
//! `loadgen/bench.sh gateway`) was most of the gateway's CPU per frame. Both are done once here:
//! frames are encoded with a [`TypedEncoder`] (byte-identical to `encode_one`), and
//! [`is_closed`] reads the body's variant index straight from content whose candid header is
//! the one ic-ws canisters write, falling back to a full decode for any other header.

use ic_ws_protocol::types::{CloseReason, OutboundBody, OutboundContent, WsError};
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

/// Where, in content with the standard header, the body's variant index is, and its value
/// for `Closed`.
struct ClosedProbe {
    header: Vec<u8>,
    /// Offset of the variant index byte from the start of the content.
    at: usize,
    closed: u8,
    open_rejected: u8,
}

impl ClosedProbe {
    /// Found by encoding an `App` and a `Closed` content with the same timestamp: they share
    /// the header and the fixed-size timestamp, and first differ at the variant index.
    fn new() -> Option<Self> {
        let encoder = TypedEncoder::<OutboundContent>::new().ok()?;
        let sample = |body| {
            encoder
                .encode(&OutboundContent {
                    timestamp_ns: 0,
                    body,
                })
                .ok()
        };
        let app = sample(OutboundBody::App {
            topic: None,
            payload: vec![],
        })?;
        let closed = sample(OutboundBody::Closed {
            reason: CloseReason::Expired,
        })?;
        let open_rejected = sample(OutboundBody::OpenRejected {
            client_key: vec![],
            open_timestamp_ns: 0,
            error: WsError::Closed,
        })?;
        let at = app.iter().zip(&closed).position(|(a, c)| a != c)?;
        let header = encoder.header().to_vec();
        (at >= header.len()).then_some(Self {
            header,
            at,
            closed: *closed.get(at)?,
            open_rejected: *open_rejected.get(at)?,
        })
    }
}

/// A certified message after which nothing follows in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// `Closed`: the session ended.
    Closed,
    /// `OpenRejected` (protocol version 2): the application refused the session's open.
    OpenRejected,
}

/// Whether `content` (a candid [`OutboundContent`]) ends its session, and how.
pub fn terminal(content: &[u8]) -> Option<Terminal> {
    static PROBE: OnceLock<Option<ClosedProbe>> = OnceLock::new();
    if let Some(p) = PROBE.get_or_init(ClosedProbe::new) {
        if content.starts_with(&p.header) {
            let b = content.get(p.at);
            return if b == Some(&p.closed) {
                Some(Terminal::Closed)
            } else if b == Some(&p.open_rejected) {
                Some(Terminal::OpenRejected)
            } else {
                None
            };
        }
    }
    match ic_ws_protocol::decode::<OutboundContent>(content).map(|c| c.body) {
        Ok(OutboundBody::Closed { .. }) => Some(Terminal::Closed),
        Ok(OutboundBody::OpenRejected { .. }) => Some(Terminal::OpenRejected),
        _ => None,
    }
}

/// Where, in content with the standard header, the timestamp is (8 bytes, little endian).
struct TimestampProbe {
    header: Vec<u8>,
    at: usize,
}

impl TimestampProbe {
    /// Found by encoding one content with two timestamps that differ in every byte: the
    /// encodings first differ where the timestamp starts. Only used if the timestamp comes
    /// before the body (fixed offset), as candid's field order puts it.
    fn new() -> Option<Self> {
        let encoder = TypedEncoder::<OutboundContent>::new().ok()?;
        let sample = |timestamp_ns| {
            encoder
                .encode(&OutboundContent {
                    timestamp_ns,
                    body: OutboundBody::App {
                        topic: None,
                        payload: vec![],
                    },
                })
                .ok()
        };
        let (zero, ones) = (sample(0)?, sample(u64::MAX)?);
        let at = zero.iter().zip(&ones).position(|(a, b)| a != b)?;
        let header = encoder.header().to_vec();
        let fixed = at >= header.len()
            && ones.get(at..at.checked_add(8)?)? == [0xff; 8]
            && zero.len() == ones.len();
        fixed.then_some(Self { header, at })
    }
}

/// The canister time at which `content` (a candid [`OutboundContent`]) was queued, read from
/// its fixed place when it has the standard header, else by a full decode; `None` if it does
/// not decode.
pub fn timestamp_ns(content: &[u8]) -> Option<u64> {
    static PROBE: OnceLock<Option<TimestampProbe>> = OnceLock::new();
    if let Some(p) = PROBE.get_or_init(TimestampProbe::new) {
        if content.starts_with(&p.header) {
            let bytes = content.get(p.at..p.at.checked_add(8)?)?;
            return Some(u64::from_le_bytes(bytes.try_into().ok()?));
        }
    }
    ic_ws_protocol::decode::<OutboundContent>(content)
        .ok()
        .map(|c| c.timestamp_ns)
}

/// Whether `content` (a candid [`OutboundContent`]) is a `Closed` message.
pub fn is_closed(content: &[u8]) -> bool {
    terminal(content) == Some(Terminal::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_ws_protocol::types::OutboundMessage;

    fn contents() -> Vec<OutboundContent> {
        let mut all = Vec::new();
        for timestamp_ns in [0, 1, 255, 1 << 40, u64::MAX] {
            all.push(OutboundContent {
                timestamp_ns,
                body: OutboundBody::App {
                    topic: Some("t".repeat(timestamp_ns as usize % 300)),
                    payload: vec![1; 200],
                },
            });
            all.push(OutboundContent {
                timestamp_ns,
                body: OutboundBody::App {
                    topic: None,
                    payload: vec![],
                },
            });
            for reason in [
                CloseReason::Expired,
                CloseReason::QueueOverflow,
                CloseReason::AppClosed {
                    code: 4000,
                    reason: "x".repeat(500),
                },
                CloseReason::ProtocolError("bad".into()),
            ] {
                all.push(OutboundContent {
                    timestamp_ns,
                    body: OutboundBody::Closed { reason },
                });
            }
            all.push(OutboundContent {
                timestamp_ns,
                body: OutboundBody::OpenRejected {
                    client_key: vec![7; 32],
                    open_timestamp_ns: timestamp_ns,
                    error: WsError::Rejected("é".repeat(300)),
                },
            });
            all.push(OutboundContent {
                timestamp_ns,
                body: OutboundBody::MessageRejected {
                    inbound_seq: timestamp_ns,
                    error: WsError::DecodeError("bad".into()),
                },
            });
        }
        all
    }

    #[test]
    fn is_closed_agrees_with_a_full_decode() {
        for content in contents() {
            let bytes = ic_ws_protocol::encode(&content).unwrap();
            let expected = matches!(content.body, OutboundBody::Closed { .. });
            assert_eq!(is_closed(&bytes), expected, "{content:?}");
            let expected = match content.body {
                OutboundBody::Closed { .. } => Some(Terminal::Closed),
                OutboundBody::OpenRejected { .. } => Some(Terminal::OpenRejected),
                _ => None,
            };
            assert_eq!(terminal(&bytes), expected, "{content:?}");
        }
        // Not content at all, or content with another (equivalent) header: the full decode
        // decides, and garbage is not a close.
        assert!(!is_closed(b""));
        assert!(!is_closed(b"DIDL\x00\x01\x71\x03abc"));
        let probe = ClosedProbe::new().unwrap();
        assert!(probe.at >= probe.header.len());
    }

    #[test]
    fn timestamps_are_read_as_a_full_decode_reads_them() {
        for content in contents() {
            let bytes = ic_ws_protocol::encode(&content).unwrap();
            assert_eq!(
                timestamp_ns(&bytes),
                Some(content.timestamp_ns),
                "{content:?}"
            );
        }
        assert!(TimestampProbe::new().is_some(), "the fast path is in use");
        assert_eq!(timestamp_ns(b""), None);
        assert_eq!(timestamp_ns(b"DIDL\x00\x01\x71\x03abc"), None);
        // Truncated content with the standard header: no timestamp, no panic.
        let bytes = ic_ws_protocol::encode(&contents()[0]).unwrap();
        for len in 0..bytes.len() {
            let _ = timestamp_ns(bytes.get(..len).unwrap());
        }
    }

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
