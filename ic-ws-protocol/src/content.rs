//! Fast paths over the candid bytes of [`OutboundContent`], for the hot paths of the canister
//! (encoding every direct `send`) and the gateway (reading the timestamp and whether a message
//! ends its session, for every message it polls).
//!
//! A general candid encode or decode builds and compares the whole type table on every call.
//! Content written by an ic-ws canister always has the same type table and framing around
//! the timestamp, the body's variant index and (for a direct `send`) the payload. Each layout
//! here is found once per process by encoding marked values with candid itself and locating
//! the markers, so the bytes are by construction candid's own (the tests compare against
//! candid); if a layout cannot be located unambiguously the functions use candid for every
//! call, and content with any other (equivalent) header is decoded by candid.

use crate::types::{CloseReason, OutboundBody, OutboundContent, WsError};
use crate::TypedEncoder;
use std::sync::OnceLock;

const TS_MARKER: u64 = 0x8a17_c3e5_92b4_0d6f;
const PAYLOAD_MARKER: &[u8; 16] = b"\xa5ic-ws-template\x5a";

fn candid_app(timestamp_ns: u64, payload: &[u8]) -> Vec<u8> {
    // Encoding a well-formed value of our own cannot fail; an empty content would simply not
    // verify at the client rather than trap the canister.
    crate::encode(&OutboundContent {
        timestamp_ns,
        body: OutboundBody::App {
            topic: None,
            payload: payload.to_vec(),
        },
    })
    .unwrap_or_default()
}

fn find_unique(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut hits = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle);
    let first = hits.next()?.0;
    hits.next().is_none().then_some(first)
}

/// The bytes of a direct `send`'s content around its timestamp and payload.
struct AppTemplate {
    /// Candid of the marked value.
    bytes: Vec<u8>,
    /// Offset of the timestamp (8 bytes, little-endian).
    ts_at: usize,
    /// Offset of the payload's length byte (LEB128 of 16 = one byte); the payload follows.
    len_at: usize,
}

impl AppTemplate {
    fn new() -> Option<Self> {
        let bytes = candid_app(TS_MARKER, PAYLOAD_MARKER);
        let ts_at = find_unique(&bytes, &TS_MARKER.to_le_bytes())?;
        let pay_at = find_unique(&bytes, PAYLOAD_MARKER)?;
        let len_at = pay_at.checked_sub(1)?;
        let ts_end = ts_at.checked_add(8)?;
        let pay_end = pay_at.checked_add(PAYLOAD_MARKER.len())?;
        let disjoint = ts_end <= len_at || ts_at >= pay_end;
        let len_ok = bytes.get(len_at) == Some(&(PAYLOAD_MARKER.len() as u8));
        (len_ok && disjoint).then_some(Self {
            bytes,
            ts_at,
            len_at,
        })
    }

    fn encode(&self, timestamp_ns: u64, payload: &[u8]) -> Option<Vec<u8>> {
        let head = self.bytes.get(..self.len_at)?;
        let tail = self
            .bytes
            .get(self.len_at.checked_add(1 + PAYLOAD_MARKER.len())?..)?;
        let mut out = Vec::with_capacity(head.len() + 10 + payload.len() + tail.len());
        out.extend_from_slice(head);
        out.extend_from_slice(&crate::leb128(payload.len() as u64));
        out.extend_from_slice(payload);
        out.extend_from_slice(tail);
        // The timestamp's offset moves with the payload if it comes after it.
        let ts_at = if self.ts_at < self.len_at {
            self.ts_at
        } else {
            self.ts_at
                .checked_add(out.len())?
                .checked_sub(self.bytes.len())?
        };
        out.get_mut(ts_at..ts_at.checked_add(8)?)?
            .copy_from_slice(&timestamp_ns.to_le_bytes());
        Some(out)
    }
}

/// candid of `OutboundContent { timestamp_ns, body: App { topic: None, payload } }` (a direct
/// `send`), without building candid's type table.
pub fn app_content(timestamp_ns: u64, payload: &[u8]) -> Vec<u8> {
    static TEMPLATE: OnceLock<Option<AppTemplate>> = OnceLock::new();
    TEMPLATE
        .get_or_init(AppTemplate::new)
        .as_ref()
        .and_then(|t| t.encode(timestamp_ns, payload))
        .unwrap_or_else(|| candid_app(timestamp_ns, payload))
}

/// Where the fixed-size fields are in content with the standard header.
struct Layout {
    header: Vec<u8>,
    /// Offset of the timestamp (8 bytes, little-endian).
    ts_at: usize,
    /// Offset of the body's variant index byte, and its values for the terminal bodies.
    variant_at: usize,
    closed: u8,
    open_rejected: u8,
}

impl Layout {
    /// Found by encoding contents that differ in one field each: the timestamp first (two
    /// values that differ in every byte), then the body's variant (`App` vs `Closed` vs
    /// `OpenRejected` with the same timestamp: they first differ at the variant index). Only
    /// used when the timestamp comes before the body, at a fixed offset.
    fn new() -> Option<Self> {
        let encoder = TypedEncoder::<OutboundContent>::new().ok()?;
        let sample =
            |timestamp_ns, body| encoder.encode(&OutboundContent { timestamp_ns, body }).ok();
        let app = || OutboundBody::App {
            topic: None,
            payload: vec![],
        };
        let (zero, ones) = (sample(0, app())?, sample(u64::MAX, app())?);
        let closed = sample(
            0,
            OutboundBody::Closed {
                reason: CloseReason::Expired,
            },
        )?;
        let open_rejected = sample(
            0,
            OutboundBody::OpenRejected {
                client_key: vec![],
                open_timestamp_ns: 0,
                error: WsError::Closed,
            },
        )?;
        let header = encoder.header().to_vec();
        let ts_at = zero.iter().zip(&ones).position(|(a, b)| a != b)?;
        let ts_end = ts_at.checked_add(8)?;
        let variant_at = zero.iter().zip(&closed).position(|(a, c)| a != c)?;
        let fixed = ts_at >= header.len()
            && ones.get(ts_at..ts_end)? == [0xff; 8]
            && zero.len() == ones.len()
            && variant_at >= ts_end;
        fixed.then_some(Self {
            ts_at,
            variant_at,
            closed: *closed.get(variant_at)?,
            open_rejected: *open_rejected.get(variant_at)?,
            header,
        })
    }

    fn get() -> Option<&'static Layout> {
        static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();
        LAYOUT.get_or_init(Layout::new).as_ref()
    }
}

/// The canister time at which `content` (a candid [`OutboundContent`]) was queued: read from
/// its fixed place when the content has the standard header, else by a full decode; `None` if
/// it does not decode.
pub fn timestamp_ns(content: &[u8]) -> Option<u64> {
    if let Some(l) = Layout::get() {
        if content.starts_with(&l.header) {
            let bytes = content.get(l.ts_at..l.ts_at.checked_add(8)?)?;
            return Some(u64::from_le_bytes(bytes.try_into().ok()?));
        }
    }
    crate::decode::<OutboundContent>(content)
        .ok()
        .map(|c| c.timestamp_ns)
}

/// A certified message after which nothing follows in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// `Closed`: the session ended.
    Closed,
    /// `OpenRejected` (protocol version 2): the application refused the session's open.
    OpenRejected,
}

/// Whether `content` (a candid [`OutboundContent`]) ends its session, and how: the body's
/// variant index read from its fixed place when the content has the standard header, else a
/// full decode (content that does not decode ends nothing).
pub fn terminal(content: &[u8]) -> Option<Terminal> {
    if let Some(l) = Layout::get() {
        if content.starts_with(&l.header) {
            let b = content.get(l.variant_at);
            return if b == Some(&l.closed) {
                Some(Terminal::Closed)
            } else if b == Some(&l.open_rejected) {
                Some(Terminal::OpenRejected)
            } else {
                None
            };
        }
    }
    match crate::decode::<OutboundContent>(content).map(|c| c.body) {
        Ok(OutboundBody::Closed { .. }) => Some(Terminal::Closed),
        Ok(OutboundBody::OpenRejected { .. }) => Some(Terminal::OpenRejected),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
                    error: WsError::Rejected("no".into()),
                },
            });
        }
        all
    }

    #[test]
    fn the_layouts_are_found() {
        assert!(AppTemplate::new().is_some());
        let l = Layout::new().unwrap();
        assert!(l.ts_at >= l.header.len() && l.variant_at >= l.ts_at + 8);
    }

    #[test]
    fn reads_agree_with_a_full_decode() {
        for content in contents() {
            let bytes = crate::encode(&content).unwrap();
            assert_eq!(
                timestamp_ns(&bytes),
                Some(content.timestamp_ns),
                "{content:?}"
            );
            let expected = match content.body {
                OutboundBody::Closed { .. } => Some(Terminal::Closed),
                OutboundBody::OpenRejected { .. } => Some(Terminal::OpenRejected),
                _ => None,
            };
            assert_eq!(terminal(&bytes), expected, "{content:?}");
        }
        // Not content at all, or content with another (equivalent) header: the full decode
        // decides, and garbage is not a close and has no timestamp.
        for garbage in [&b""[..], b"DIDL\x00\x01\x71\x03abc", b"DIDL"] {
            assert_eq!(terminal(garbage), None);
            assert_eq!(timestamp_ns(garbage), None);
        }
    }

    #[test]
    fn app_content_is_candids_own_bytes() {
        for len in [0usize, 1, 15, 16, 17, 127, 128, 129, 16_383, 16_384, 70_000] {
            for ts in [0u64, 1, TS_MARKER, u64::MAX, 1_700_000_000_123_456_789] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let fast = app_content(ts, &payload);
                assert_eq!(fast, candid_app(ts, &payload), "len {len} ts {ts}");
                assert_eq!(timestamp_ns(&fast), Some(ts));
                assert_eq!(terminal(&fast), None);
            }
        }
        // A payload containing the markers themselves changes nothing.
        let mut tricky = PAYLOAD_MARKER.to_vec();
        tricky.extend_from_slice(&TS_MARKER.to_le_bytes());
        assert_eq!(app_content(5, &tricky), candid_app(5, &tricky));
    }

    proptest! {
        /// Any bytes, including truncations of real content: no panic, and whatever the fast
        /// paths say about content that decodes is what the full decode says.
        #[test]
        fn any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<usize>()) {
            let real = crate::encode(&contents()[cut % 30]).unwrap();
            for input in [&bytes[..], &real[..cut % (real.len() + 1)]] {
                let ts = timestamp_ns(input);
                let end = terminal(input);
                if let Ok(c) = crate::decode::<OutboundContent>(input) {
                    prop_assert_eq!(ts, Some(c.timestamp_ns));
                    let expected = match c.body {
                        OutboundBody::Closed { .. } => Some(Terminal::Closed),
                        OutboundBody::OpenRejected { .. } => Some(Terminal::OpenRejected),
                        _ => None,
                    };
                    prop_assert_eq!(end, expected);
                }
            }
        }
    }
}
