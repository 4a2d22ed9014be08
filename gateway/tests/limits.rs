//! The memory budget and the refusal budget, in process: the gateway on a real port-0 socket in
//! front of the in-memory canister (the relay flood against the real processes is in
//! `e2e/tests/gateway_flood.rs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ic_ws_gateway::memory::{Category, Shed};
use ic_ws_protocol::types::*;
use ic_ws_protocol::GatewayFrame;

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
