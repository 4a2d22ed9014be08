//! The memory budget and the refusal budget, in process: the gateway on a real port-0 socket in
//! front of the in-memory canister (the relay flood against the real processes is in
//! `e2e/tests/gateway_flood.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ic_ws_gateway::memory::{Category, Shed};
use ic_ws_protocol::types::*;
use ic_ws_protocol::GatewayFrame;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

/// The TCP socket under a plain test connection.
fn tcp(ws: &mut Ws) -> &mut tokio::net::TcpStream {
    match ws.get_mut() {
        MaybeTlsStream::Plain(s) => s,
        _ => panic!("a plain connection"),
    }
}

/// Small per-client bounds so a small budget is valid (3/4 of it covers one client's bounds
/// and the orphans).
const SMALL: &[&str] = &[
    "--memory-budget-bytes",
    "100000",
    "--orphan-max-bytes",
    "1000",
    "--send-buffer-bytes",
    "10000",
    "--max-message-size",
    "10000",
    "--max-frame-size",
    "10000",
    "--max-inflight-bytes-per-client",
    "10000",
];

#[tokio::test]
async fn past_the_budget_new_work_is_shed_first_then_messages_4006() {
    let (gw, _fake) = start(SMALL).await;
    let addr = gw.local_addr();
    let ledger = gw.metrics().memory.clone();
    let mut honest = Client::open(addr).await;
    let mut early = Client::connect(addr).await;
    // Other peers hold 80% of the budget: past the 3/4 mark.
    let hog = ledger.charge(Category::Relay, 80_000);
    // A new connection is refused before its Hello.
    let mut ws = connect_from(addr, None).await;
    assert_eq!(closed(&mut ws).await.0, 4006);
    // A connection that exists but has not opened is refused its open.
    send_frame(&mut early.ws, &open_request(b"", None)).await;
    match next_frame(&mut early.ws).await {
        GatewayFrame::OpenResult(Err(WsError::LimitReached(_))) => {}
        other => panic!("expected an overloaded OpenResult, got {other:?}"),
    }
    assert_eq!(closed(&mut early.ws).await.0, 4006);
    // Existing sessions go on in the last quarter.
    honest.send(b"echo:still here").await;
    assert_eq!(honest.payloads(1).await, vec![b"still here".to_vec()]);
    // With the budget spent, a session's next message is shed: that session closes 4006.
    let rest = ledger.charge(Category::Relay, 100_000 - ledger.total());
    honest.send(b"echo:one too many").await;
    assert_eq!(closed(&mut honest.ws).await.0, 4006);
    assert_eq!(ledger.shed_count(Shed::Connection), 1);
    assert_eq!(ledger.shed_count(Shed::Open), 1);
    // (Its frame header is what no longer fits: the frame meter sheds it before tungstenite
    // reserves the frame.)
    assert_eq!(ledger.shed_count(Shed::Frame), 1);
    assert_eq!(ledger.shed_count(Shed::Message), 0);
    // Budget back: everything works again, and the ledger is back to what the hogs held.
    drop((hog, rest));
    let mut later = Client::open(addr).await;
    later.send(b"echo:back").await;
    assert_eq!(later.payloads(1).await, vec![b"back".to_vec()]);
    let text = gw.metrics().render();
    assert!(
        text.contains("ic_ws_gateway_shed_total{kind=\"connection\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ic_ws_gateway_memory_budget_bytes 100000"),
        "{text}"
    );
    gw.shutdown().await;
}

/// The certified refusal of `seq` (protocol version 2: no `MessageError` for it).
async fn expect_refusal(c: &mut Client, seq: u64) {
    let m = c.messages(1).await.remove(0);
    match body(&m) {
        OutboundBody::MessageRejected {
            inbound_seq,
            error: WsError::Rejected(_),
        } => assert_eq!(inbound_seq, seq),
        other => panic!("expected a certified refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_the_canister_keeps_refusing_is_closed_1008_others_are_not() {
    let (gw, _fake) = start(&["--refusal-budget", "4"]).await;
    let addr = gw.local_addr();
    let mut refused = Client::open(addr).await;
    let mut other = Client::open(addr).await;
    for _ in 0..4 {
        let seq = refused.send(b"reject").await;
        expect_refusal(&mut refused, seq).await;
    }
    // An accepted message pays one refusal back.
    refused.send(b"echo:fine").await;
    assert_eq!(refused.payloads(1).await, vec![b"fine".to_vec()]);
    let seq = refused.send(b"reject").await;
    expect_refusal(&mut refused, seq).await;
    let seq = other.send(b"reject").await;
    expect_refusal(&mut other, seq).await;
    // The fifth net refusal is one too many (its certified refusal may or may not get out
    // before the close: the canister queued it for the client's next connection anyway).
    refused.send(b"reject").await;
    assert_eq!(closed(&mut refused.ws).await.0, 1008);
    assert_eq!(gw.metrics().refusal_closes.get(), 1);
    other.send(b"echo:unaffected").await;
    assert_eq!(other.payloads(1).await, vec![b"unaffected".to_vec()]);
    gw.shutdown().await;
}

/// A masked client frame: FIN, `opcode`, `payload` (RFC 6455; mask 0 keeps the bytes as sent).
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// Half-sent frames hold memory (tungstenite reserves a frame's announced length on its
/// header): a message must be complete `--frame-timeout-ms` after its first byte. A client
/// that sends a header and stops is closed with 1008; a slow but steady one, each of whose
/// frames arrives in two halves, is not, however long it goes on.
#[tokio::test]
async fn a_message_not_complete_in_time_closes_its_connection_1008() {
    use tokio::io::AsyncWriteExt;
    let (gw, _fake) = start(&["--frame-timeout-ms", "300", "--ping-burst", "64"]).await;
    let addr = gw.local_addr();
    let mut steady = connect_from(addr, None).await;
    hello(&mut steady).await;
    let mut stalled = connect_from(addr, None).await;
    hello(&mut stalled).await;
    // A binary frame announcing 1,000 bytes, then 10 of them, then nothing.
    let mut half = vec![0x82, 0x80 | 126, 0x03, 0xe8, 0, 0, 0, 0];
    half.extend_from_slice(&[0u8; 10]);
    tcp(&mut stalled).write_all(&half).await.unwrap();
    // Meanwhile the steady client sends pings in two halves 100 ms apart, for 1.2 s: four
    // times the timeout in all, each ping well within it.
    let ping = masked_frame(0x9, b"steady");
    for _ in 0..12 {
        let (a, b) = ping.split_at(3);
        tcp(&mut steady).write_all(a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tcp(&mut steady).write_all(b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, reason) = closed(&mut stalled).await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("not complete"), "{reason}");
    let text = gw.metrics().render();
    assert!(
        text.contains("ic_ws_gateway_errors_total{kind=\"slow_frame\"} 1"),
        "{text}"
    );
    // The steady client is still served: its pongs came back.
    let mut pongs = 0;
    while pongs < 12 {
        match next_message(&mut steady).await {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"steady");
                pongs += 1;
            }
            other => panic!("expected pongs, got {other:?}"),
        }
    }
    gw.shutdown().await;
}
