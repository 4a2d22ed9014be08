//! The gateway's frame meter (`ic_ws_gateway::inbound::FrameMeter`): it follows the raw bytes a
//! client sends after its HTTP upgrade request and charges each frame header's announced
//! length to the memory ledger.
//!
//! Input: one flags byte (bits 0-1 pick the ledger's budget: unlimited, 1 MiB, 200,000 B,
//! 20,000 B; bits 2-7 the size of the reads the bytes arrive in, 1-63), then the bytes after the
//! request.
//!
//! Invariants: no panic; after every read the ledger holds exactly what the meter says it
//! charged, never more than the budget; a refused read ends the connection; dropping the meter
//! gives everything back; the first frame header is charged exactly the length tungstenite's
//! own header parser (`FrameHeader::parse`) reads from the same bytes.

use ic_ws_gateway::inbound::FrameMeter;
use ic_ws_gateway::memory::Ledger;
use std::io::Cursor;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n\r\n";
const MAX_FRAME: usize = 128 * 1024;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let budget = [usize::MAX, 1 << 20, 200_000, 20_000][usize::from(flags & 3)];
    let chunk = usize::from(flags >> 2).max(1);
    first_header_agrees_with_tungstenite(rest);
    let ledger = Arc::new(Ledger::new(budget));
    let mut meter = FrameMeter::new(ledger.clone(), MAX_FRAME);
    meter.observe(REQUEST).expect("a request charges nothing");
    assert_eq!(ledger.total(), 0);
    for piece in rest.chunks(chunk) {
        meter.release_ended();
        if meter.observe(piece).is_err() {
            break;
        }
        assert_eq!(ledger.total(), meter.charged(), "ledger and meter differ");
        assert!(ledger.total() <= budget, "charged past the budget");
    }
    drop(meter);
    assert_eq!(ledger.total(), 0, "a closed connection keeps a charge");
}

/// tungstenite reserves the length its parser reads; the meter must charge that length.
fn first_header_agrees_with_tungstenite(bytes: &[u8]) {
    let mut cursor = Cursor::new(bytes);
    let Ok(Some((_, len))) = FrameHeader::parse(&mut cursor) else {
        return;
    };
    if len > MAX_FRAME as u64 {
        return;
    }
    let header = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    let ledger = Arc::new(Ledger::new(usize::MAX));
    let mut meter = FrameMeter::new(ledger, MAX_FRAME);
    meter.observe(REQUEST).expect("a request charges nothing");
    meter
        .observe(bytes.get(..header).unwrap_or_default())
        .expect("an unlimited ledger takes any frame");
    assert_eq!(meter.charged() as u64, len, "the meter read another length");
}

/// Frame sequences: small and big frames, fragments, pings, each header length encoding.
pub fn seeds() -> Vec<Vec<u8>> {
    let frame = |b0: u8, len: usize| {
        let mut f = vec![b0];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[9, 8, 7, 6]);
        f.extend(std::iter::repeat_n(0x41, len.min(300)));
        f
    };
    let mut seeds = Vec::new();
    for flags in [0u8, 1 | (7 << 2), 2 | (63 << 2), 3 | (1 << 2)] {
        let mut s = vec![flags];
        s.extend(frame(0x82, 20));
        s.extend(frame(0x02, 300));
        s.extend(frame(0x89, 4));
        s.extend(frame(0x80, 1000));
        s.extend(frame(0x82, 100_000));
        seeds.push(s);
    }
    seeds
}
