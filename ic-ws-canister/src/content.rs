//! Fast candid encoding of the certified content of a direct `send`.
//!
//! `send` encodes `OutboundContent { timestamp_ns, body: App { topic: None, payload } }` once
//! to hash it, and every `ws_poll` encodes it again from the stored payload. A general candid
//! encode builds the type table each time; for this one shape the bytes are always the same
//! type table and framing around the timestamp and the payload. The template is made once per
//! canister instance by encoding a marked value with candid itself and locating the markers,
//! so the bytes are by construction candid's own (checked against candid in the tests); if
//! the markers cannot be located unambiguously, candid is used for every message.

use ic_ws_protocol::types::OutboundBody;
use std::cell::OnceCell;

const TS_MARKER: u64 = 0x8a17_c3e5_92b4_0d6f;
const PAYLOAD_MARKER: &[u8; 16] = b"\xa5ic-ws-template\x5a";

struct Template {
    /// Candid of the marked value.
    bytes: Vec<u8>,
    /// Offset of the timestamp (8 bytes, little-endian).
    ts_at: usize,
    /// Offset of the payload's length byte (LEB128 of 16 = one byte), payload follows.
    len_at: usize,
}

thread_local! {
    static TEMPLATE: OnceCell<Option<Template>> = const { OnceCell::new() };
}

fn candid_content(timestamp_ns: u64, payload: &[u8]) -> Vec<u8> {
    crate::runtime::encode_content(
        timestamp_ns,
        OutboundBody::App {
            topic: None,
            payload: payload.to_vec(),
        },
    )
}

fn find_unique(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut hits = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle);
    let first = hits.next()?.0;
    hits.next().is_none().then_some(first)
}

fn make_template() -> Option<Template> {
    let bytes = candid_content(TS_MARKER, PAYLOAD_MARKER);
    let ts_at = find_unique(&bytes, &TS_MARKER.to_le_bytes())?;
    let pay_at = find_unique(&bytes, PAYLOAD_MARKER)?;
    let len_at = pay_at.checked_sub(1)?;
    let disjoint = ts_at + 8 <= len_at || ts_at >= pay_at + PAYLOAD_MARKER.len();
    (bytes[len_at] == PAYLOAD_MARKER.len() as u8 && disjoint).then_some(Template {
        bytes,
        ts_at,
        len_at,
    })
}

/// candid of `OutboundContent { timestamp_ns, body: App { topic: None, payload } }`.
pub(crate) fn app_content(timestamp_ns: u64, payload: &[u8]) -> Vec<u8> {
    TEMPLATE.with(|t| match t.get_or_init(make_template) {
        None => candid_content(timestamp_ns, payload),
        Some(t) => {
            let tail = &t.bytes[t.len_at + 1 + PAYLOAD_MARKER.len()..];
            let mut out = Vec::with_capacity(t.len_at + 10 + payload.len() + tail.len());
            out.extend_from_slice(&t.bytes[..t.len_at]);
            let mut n = payload.len() as u64;
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
            out.extend_from_slice(payload);
            out.extend_from_slice(tail);
            // The timestamp's offset moves with the payload if it comes after it.
            let ts_at = if t.ts_at < t.len_at {
                t.ts_at
            } else {
                t.ts_at + out.len() - t.bytes.len()
            };
            if let Some(dst) = out.get_mut(ts_at..ts_at + 8) {
                dst.copy_from_slice(&timestamp_ns.to_le_bytes());
            }
            out
        }
    })
}

/// Decodes what [`app_content`] made (tests).
#[cfg(test)]
fn decode(bytes: &[u8]) -> ic_ws_protocol::types::OutboundContent {
    ic_ws_protocol::decode(bytes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_found() {
        assert!(make_template().is_some());
    }

    #[test]
    fn same_bytes_as_candid() {
        for len in [0usize, 1, 15, 16, 17, 127, 128, 129, 16_383, 16_384, 70_000] {
            for ts in [0u64, 1, TS_MARKER, u64::MAX, 1_700_000_000_123_456_789] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
                let fast = app_content(ts, &payload);
                assert_eq!(fast, candid_content(ts, &payload), "len {len} ts {ts}");
                let back = decode(&fast);
                assert_eq!(back.timestamp_ns, ts);
                assert_eq!(
                    back.body,
                    OutboundBody::App {
                        topic: None,
                        payload
                    }
                );
            }
        }
        // A payload containing the markers themselves changes nothing.
        let mut tricky = PAYLOAD_MARKER.to_vec();
        tricky.extend_from_slice(&TS_MARKER.to_le_bytes());
        assert_eq!(app_content(5, &tricky), candid_content(5, &tricky));
    }
}
