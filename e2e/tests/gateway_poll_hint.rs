//! A canister's poll hint through the real gateway: the gateway's own schedule is made slow
//! (one poll a minute), a client asks the test app to announce messages in `H` ms
//! (`ic_ws_canister::expect_messages_at`, carried as `next_poll_ms` in the poll reply that
//! delivers the answer), the test then puts a message in the canister directly (an update the
//! gateway does not relay, so nothing wakes it), and the message arrives through the very
//! next poll, no sooner than `H` after the request and long before the gateway's own next
//! poll. The timing bounds come from the test's own timeline (the request's send time, the
//! hint, the one-minute interval), not from a margin on the wall clock of a loaded machine.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use candid::Principal;
use ic_ws_e2e::canister_harness::{Inbound, Outbound, TEST_APP_PACKAGE};
use ic_ws_e2e::process::{GatewayOptions, GatewayProcess, TestNet};
use ic_ws_e2e::raw::{Incoming, RawClient};
use ic_ws_protocol::types::{OutboundBody, OutboundContent};
use ic_ws_protocol::{ClientFrame, GatewayFrame};

const POLLS: &str = "ic_ws_gateway_polls_total";
/// The gateway's own interval, active and idle alike.
const REGULAR_MS: u64 = 60_000;

/// Reads frames until an app message satisfying `want` arrives; returns it.
async fn until(client: &mut RawClient, want: impl Fn(&Outbound) -> bool) -> Outbound {
    loop {
        match client.next().await {
            Incoming::Frame(GatewayFrame::Messages { messages, .. }) => {
                for m in messages {
                    let content: OutboundContent = ic_ws_protocol::decode(&m.content).unwrap();
                    if let OutboundBody::App { payload, .. } = content.body {
                        let out: Outbound = candid::decode_one(&payload).unwrap();
                        if want(&out) {
                            return out;
                        }
                    }
                }
            }
            Incoming::Frame(_) | Incoming::Garbage(_) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_polls_at_the_time_the_canister_hints() {
    let net = TestNet::start().unwrap();
    let canister = net
        .install(TEST_APP_PACKAGE, &candid::encode_args(()).unwrap())
        .unwrap();
    let regular = REGULAR_MS.to_string();
    let gw = GatewayProcess::start(
        GatewayOptions::new(&net, &[canister])
            .arg("--poll-active-interval-ms", &regular)
            .arg("--poll-max-interval-ms", &regular)
            .arg("--poll-min-interval-ms", "20")
            .arg("--poll-jitter-pct", "0")
            .arg("--batch-interval-ms", "10")
            .arg("--idle-timeout-ms", "600000")
            .arg("--log", "info,ic_ws_gateway::poller=debug"),
    )
    .unwrap();
    let mut client = RawClient::connect(&gw.url(), canister, None).await.unwrap();
    let opened = client
        .open(candid::encode_one("hinted".to_string()).unwrap())
        .await
        .unwrap();
    assert!(opened.is_ok(), "{opened:?}");
    let id = client.client_id.unwrap();

    // The direct update can land after the hinted poll if this machine stalls for longer than
    // the hint; that attempt proves nothing, and a longer hint is tried.
    for hint_ms in [2_000u64, 5_000, 12_000] {
        let asked = Instant::now();
        let m = client.message(
            candid::encode_one(Inbound::ExpectIn(hint_ms)).unwrap(),
            false,
        );
        client.send(&ClientFrame::Message(m)).await.unwrap();
        // Delivered by the poll the relayed update woke; its reply carries the hint.
        until(&mut client, |o| *o == Outbound::Echo("expect".into())).await;
        // The relayed update also schedules a follow-up poll 20 ms after it completed, which
        // may come after the reply that delivered the echo: let it pass first (if a poll still
        // comes between this and the direct send, the attempt is retried below).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let polls_after_hint = gw.metric(POLLS).unwrap();
        let text = format!("after a {hint_ms} ms hint");
        let arg = candid::encode_args((id, text.clone())).unwrap();
        net.replica
            .update(canister, "app_send", &arg, Principal::anonymous())
            .unwrap();
        if gw.metric(POLLS).unwrap() != polls_after_hint {
            eprintln!("a poll came before the direct send ({hint_ms} ms hint): longer hint");
            continue;
        }
        let arrived = tokio::time::timeout(
            Duration::from_millis(REGULAR_MS / 2),
            until(&mut client, |o| *o == Outbound::Text(text.clone())),
        )
        .await;
        let took = asked.elapsed();
        assert!(
            arrived.is_ok(),
            "no delivery within {} ms of a {hint_ms} ms hint: the hint was not used",
            REGULAR_MS / 2
        );
        // It came with a poll after the hinted reply (more may follow before this reads the
        // metric: the delivery is traffic, and traffic brings the active interval)...
        assert!(gw.metric(POLLS).unwrap() > polls_after_hint);
        // ...which was not early: the hint counts from the request's execution, after `asked`
        // (a few ms of slack for the replica's clock granularity and the ms rounding).
        assert!(
            took + Duration::from_millis(10) >= Duration::from_millis(hint_ms),
            "delivered {took:?} after asking for a {hint_ms} ms hint"
        );
        eprintln!(
            "measured: hint {hint_ms} ms, request -> delivery {took:?} (gateway's own interval {REGULAR_MS} ms)"
        );
        return;
    }
    panic!("every attempt was overtaken: the direct send always came after the hinted poll");
}
