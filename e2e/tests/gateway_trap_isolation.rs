//! Trap isolation through the real gateway (a separate process) in front of the embedded
//! replica and the test app: 100 clients send 5 messages each, so that one `ws_message` batch
//! of 500 entries goes out; one message of one client makes the app trap (the IC rolls the
//! whole call back). The gateway isolates it by bisection: at most ceil(log2 500) = 9 more calls
//! (counted by its `ic_ws_gateway_isolation_calls_total`), then one call for the entries after
//! it. Every other client's messages are accepted exactly once and in order (checked by their
//! echoes and by the canister's inbound sequence numbers); the trapping client gets the
//! `MessageError` for that message and the close 4004, and none of its later messages is
//! accepted.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use candid::Principal;
use ic_ws_e2e::canister_harness::{ClientInfo, Inbound, Outbound, TEST_APP_PACKAGE};
use ic_ws_e2e::process::{GatewayOptions, GatewayProcess, TestNet};
use ic_ws_e2e::raw::{Incoming, RawClient};
use ic_ws_protocol::types::{OutboundBody, OutboundContent, WsError};
use ic_ws_protocol::{ClientFrame, ClientMessage, GatewayFrame};

const CLIENTS: usize = 100;
const PER_CLIENT: u64 = 5;
const TRAPPER: usize = 37;
const TRAP_SEQ: u64 = 3;
const WAIT: Duration = Duration::from_secs(180);

const MESSAGE_CALLS: &str = "ic_ws_gateway_update_calls_total{method=\"ws_message\"}";
const ISOLATION_CALLS: &str = "ic_ws_gateway_isolation_calls_total";
const TRAPPED: &str = "ic_ws_gateway_trapped_entries_total";
const NOT_PROCESSED: &str = "ic_ws_gateway_not_processed_total";

/// What one client saw after sending its messages.
#[derive(Debug, Default)]
struct Seen {
    echoes: Vec<String>,
    errors: Vec<(u64, WsError)>,
    close: Option<u16>,
}

fn echoes_in(messages: &[ic_ws_protocol::OutboundMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|m| {
            let content: OutboundContent = ic_ws_protocol::decode(&m.content).ok()?;
            match content.body {
                OutboundBody::App { payload, .. } => match candid::decode_one(&payload).ok()? {
                    Outbound::Echo(text) => Some(text),
                    _ => None,
                },
                _ => None,
            }
        })
        .collect()
}

async fn run_client(mut client: RawClient, messages: Vec<ClientMessage>, trapper: bool) -> Seen {
    for m in messages {
        client.send(&ClientFrame::Message(m)).await.unwrap();
    }
    let mut seen = Seen::default();
    loop {
        if !trapper && seen.echoes.len() as u64 >= PER_CLIENT {
            return seen;
        }
        match client.next().await {
            Incoming::Frame(GatewayFrame::Messages { messages, .. }) => {
                seen.echoes.extend(echoes_in(&messages));
            }
            Incoming::Frame(GatewayFrame::MessageError { seq, error }) => {
                seen.errors.push((seq, error));
            }
            Incoming::Frame(_) | Incoming::Garbage(_) => {}
            Incoming::Close(code, _) => {
                seen.close = Some(code);
                return seen;
            }
            Incoming::Ended => return seen,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_entry_in_a_batch_of_500_is_isolated_and_everyone_else_is_served_once_in_order()
{
    let net = TestNet::start().unwrap();
    let canister = net
        .install(TEST_APP_PACKAGE, &candid::encode_args(()).unwrap())
        .unwrap();
    // A long batch interval: the 500 messages sent right after the opens' batch all wait for
    // the next batch, which is then full (500 entries, the default maximum).
    let gw = GatewayProcess::start(
        GatewayOptions::new(&net, &[canister])
            .arg("--batch-interval-ms", "4000")
            .arg("--idle-timeout-ms", "1800000"),
    )
    .unwrap();

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(RawClient::connect(&gw.url(), canister, None).await.unwrap());
    }
    let opens = futures_util::future::join_all(clients.iter_mut().enumerate().map(|(i, c)| {
        let arg = candid::encode_one(format!("client {i}")).unwrap();
        async move { c.open(arg).await }
    }))
    .await;
    for r in opens {
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    }
    // Signed up front, so that sending them takes no time.
    let mut work = Vec::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let messages: Vec<ClientMessage> = (0..PER_CLIENT)
            .map(|k| {
                let inbound = if i == TRAPPER && k == TRAP_SEQ {
                    Inbound::Trap
                } else {
                    Inbound::Echo(format!("{i}-{k}"))
                };
                client.message(candid::encode_one(inbound).unwrap(), false)
            })
            .collect();
        let id = client.client_id.unwrap();
        work.push((i, id, client, messages));
    }
    let calls_before = gw.metric(MESSAGE_CALLS).unwrap();
    let isolation_before = gw.metric(ISOLATION_CALLS).unwrap();
    let trapped_before = gw.metric(TRAPPED).unwrap();

    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for (i, id, client, messages) in work {
        ids.push(id);
        tasks.push(tokio::spawn(run_client(client, messages, i == TRAPPER)));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(
            tokio::time::timeout(WAIT, t)
                .await
                .expect("a client never got its answers")
                .unwrap(),
        );
    }

    for (i, s) in seen.iter().enumerate() {
        if i == TRAPPER {
            let trapped_error = s.errors.iter().find(|(seq, _)| *seq == TRAP_SEQ);
            assert!(
                matches!(trapped_error, Some((_, WsError::Rejected(why))) if why.contains("trapped")),
                "{s:?}"
            );
            assert_eq!(s.close, Some(4004), "{s:?}");
            let expected: Vec<String> = (0..TRAP_SEQ).map(|k| format!("{i}-{k}")).collect();
            assert!(expected.starts_with(&s.echoes), "{s:?}");
        } else {
            let expected: Vec<String> = (0..PER_CLIENT).map(|k| format!("{i}-{k}")).collect();
            assert_eq!(s.echoes, expected, "client {i}: once each, in order");
            assert!(s.errors.is_empty(), "client {i}: {s:?}");
            assert_eq!(s.close, None);
        }
    }
    // The canister accepted exactly that.
    for (i, id) in ids.iter().enumerate() {
        let arg = candid::encode_one(*id).unwrap();
        let reply = net
            .replica
            .query(canister, "app_client_info", &arg, Principal::anonymous())
            .unwrap();
        let info: Option<ClientInfo> = candid::decode_one(&reply).unwrap();
        let expected = if i == TRAPPER { TRAP_SEQ } else { PER_CLIENT };
        assert_eq!(info.unwrap().next_inbound_seq, expected, "client {i}");
    }

    let calls = gw.metric(MESSAGE_CALLS).unwrap() - calls_before;
    let isolation = gw.metric(ISOLATION_CALLS).unwrap() - isolation_before;
    let trapped = gw.metric(TRAPPED).unwrap() - trapped_before;
    let not_processed = gw.metric(NOT_PROCESSED).unwrap();
    let big_batches = gw
        .metric("ic_ws_gateway_batch_size_bucket{le=\"500\"}")
        .unwrap()
        - gw.metric("ic_ws_gateway_batch_size_bucket{le=\"200\"}")
            .unwrap();
    eprintln!(
        "trap isolation through the gateway: {calls} ws_message calls in all, {isolation} of them \
         to isolate (after the trapping call), {trapped} trapping entry, {not_processed} not \
         processed, {big_batches} calls of 201-500 entries"
    );
    assert_eq!(trapped, 1.0);
    assert!(isolation <= 9.0, "{isolation} isolation calls");
    // The trapping call, the isolation, the entries after the trapping one: at most 11 (one
    // batch of 500); one more if the 500 messages were cut into two batches.
    assert!(calls <= 12.0, "{calls} ws_message calls");
    drop(gw);
}
