//! Bounded, UTF-8-safe text for everything a peer can influence: close reasons, error texts
//! in frames, error messages that quote peer bytes.
//!
//! Text from a client, a canister or the network is cut on character boundaries, never at a
//! raw byte offset (`String::truncate` and `&s[..n]` panic inside a multi-byte character).
//! Every function here is total: no input makes it panic, and each result is within its
//! byte bound (tested with arbitrary Unicode in `tests`).
#![deny(
    clippy::string_slice,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

/// Most bytes of a WebSocket close reason (RFC 6455: a control frame's payload is at most 125
/// bytes, two of them the code). Browsers throw on a longer reason.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

/// What [`bounded`] appends to text it cut.
pub const ELLIPSIS: char = '…';

/// The longest prefix of `s` that is at most `max_bytes` long and ends on a character
/// boundary.
pub fn truncate_utf8(s: &str, max_bytes: usize) -> &str {
    if s.len() <= max_bytes {
        return s;
    }
    // A char is at most 4 bytes: one of the 4 positions at or below `max_bytes` is a boundary
    // (0 always is).
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    s.get(..end).unwrap_or_default()
}

/// `s` cut to at most `max_bytes` bytes on a character boundary, with "…" appended when it
/// was cut and the ellipsis fits in the bound.
pub fn bounded(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let ellipsis = ELLIPSIS.len_utf8();
    match max_bytes.checked_sub(ellipsis) {
        Some(room) => {
            let mut out = String::with_capacity(max_bytes);
            out.push_str(truncate_utf8(s, room));
            out.push(ELLIPSIS);
            out
        }
        None => truncate_utf8(s, max_bytes).to_string(),
    }
}

/// `s` as a WebSocket close reason: at most [`MAX_CLOSE_REASON_BYTES`] bytes.
pub fn close_reason(s: &str) -> String {
    bounded(s, MAX_CLOSE_REASON_BYTES)
}

/// A short description of bytes that are quoted in an error message: their length and the
/// first `max_shown` of them in hex, e.g. `7 bytes: 4449444c0001…`.
pub fn describe_bytes(bytes: &[u8], max_shown: usize) -> String {
    use std::fmt::Write;
    let shown = bytes.get(..max_shown).unwrap_or(bytes);
    let mut out = format!("{} bytes: ", bytes.len());
    for b in shown {
        let _ = write!(out, "{b:02x}");
    }
    if shown.len() < bytes.len() {
        out.push(ELLIPSIS);
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::string_slice,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests compare against the naive definitions"
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cuts_on_char_boundaries() {
        let name = format!("a{}", "日本".repeat(15));
        let reason = format!("open failed: the name {name:?} is taken");
        // Byte 100 is inside a character: String::truncate(100) would panic here.
        assert!(!reason.is_char_boundary(100));
        assert_eq!(truncate_utf8(&reason, 100).len(), 99);
        let r = close_reason(&reason);
        assert!(r.len() <= MAX_CLOSE_REASON_BYTES && r.ends_with('…'), "{r}");
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "…");
        assert_eq!(bounded("abcd", 2), "ab");
        assert_eq!(bounded("日本", 2), "");
        assert_eq!(truncate_utf8("", 0), "");
        assert_eq!(describe_bytes(&[0xde, 0xad, 0xbe], 2), "3 bytes: dead…");
        assert_eq!(describe_bytes(&[1], 8), "1 bytes: 01");
    }

    proptest! {
        #[test]
        fn truncate_is_the_longest_boundary_prefix(s in any::<String>(), max in 0usize..64) {
            let t = truncate_utf8(&s, max);
            prop_assert!(t.len() <= max);
            prop_assert!(s.starts_with(t));
            // Longest: the next character would not fit.
            if t.len() < s.len() {
                let next = s[t.len()..].chars().next().map_or(0, char::len_utf8);
                prop_assert!(t.len() + next > max);
            }
        }

        #[test]
        fn bounded_text_fits_and_keeps_what_fits(s in any::<String>(), max in 0usize..200) {
            let b = bounded(&s, max);
            prop_assert!(b.len() <= max);
            if s.len() <= max {
                prop_assert_eq!(&b, &s);
            } else if max >= 3 {
                let kept = b.strip_suffix(ELLIPSIS);
                prop_assert!(kept.is_some(), "cut text ends with the ellipsis: {:?}", b);
                let kept = kept.unwrap_or_default();
                prop_assert_eq!(kept, truncate_utf8(&s, max - 3));
            } else {
                prop_assert!(s.starts_with(&b));
            }
        }

        #[test]
        fn close_reasons_fit_a_close_frame(s in "\\PC{0,200}") {
            let r = close_reason(&s);
            prop_assert!(r.len() <= MAX_CLOSE_REASON_BYTES);
            prop_assert!(s.starts_with(r.strip_suffix(ELLIPSIS).unwrap_or(&r)));
        }

        #[test]
        fn described_bytes_are_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..40) {
            let d = describe_bytes(&bytes, max);
            // Length prefix, two hex digits per shown byte, the ellipsis.
            prop_assert!(d.len() <= 30 + 2 * max);
            let prefix = format!("{} bytes: ", bytes.len());
            prop_assert!(d.starts_with(&prefix), "{}", d);
        }
    }
}
