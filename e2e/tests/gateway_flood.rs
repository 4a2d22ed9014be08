//! A relay flood against the real gateway (issue 8, finding 3): attacker connections each open
//! a real session on the test app and send as many large junk messages as the gateway reads,
//! while an honest client does echo round trips through the same canister.
//!
//! What must hold, asserted structurally rather than with wall-clock margins:
//! - the honest client's messages are never queued behind the attackers' backlogs: each of its
//!   round trips spans at most a few `ws_message` batches (the gateway's own call counter),
//!   where a FIFO relay queue would put it behind every attacker entry (dozens of batches);
//! - the gateway's resident memory stays within its configured budget (above its own idle
//!   footprint measured before the attack);
//! - the attackers are closed: with validly signed non-candid payloads the canister answers
//!   `DecodeError`, which used to be harmless; the refusal budget throttles, then closes them
//!   with 1008. With forged signatures the first refusal closes them with 4004.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candid::Principal;
use ic_ws_e2e::canister_harness::{Inbound, TEST_APP_PACKAGE};
use ic_ws_e2e::chat::WAIT;
use ic_ws_e2e::process::{rss_bytes, GatewayOptions, GatewayProcess, TestNet};
use ic_ws_e2e::raw::{Flood, Incoming, RawClient};
use ic_ws_protocol::{ClientFrame, GatewayFrame};

const BUDGET: u64 = 64 * 1024 * 1024;
const ATTACKERS: usize = 40;
const MESSAGE_CALLS: &str = "ic_ws_gateway_update_calls_total{method=\"ws_message\"}";

/// Batches that may start while one honest round trip is under way: the one in flight when
/// its message arrives, its own, and up to two more while the poller fetches the reply.
const MAX_BATCHES_PER_ROUND_TRIP: f64 = 4.0;

fn open_arg(name: &str) -> Vec<u8> {
    candid::encode_one(name.to_string()).unwrap()
}

/// Messages received by the honest client (its `Opened` and its echoes).
async fn receive_one(client: &mut RawClient) -> usize {
    loop {
        match client.next().await {
            Incoming::Frame(GatewayFrame::Messages { messages, .. }) if !messages.is_empty() => {
                return messages.len();
            }
            Incoming::Frame(_) => {}
            other => panic!("honest client: {other:?}"),
        }
    }
}

/// One echo round trip; returns its duration and how many `ws_message` batches started
/// meanwhile.
async fn round_trip(gw: &GatewayProcess, client: &mut RawClient, i: usize) -> (Duration, f64) {
    let before = gw.metric(MESSAGE_CALLS).unwrap();
    let started = Instant::now();
    let payload = candid::encode_one(Inbound::Echo(format!("ping {i}"))).unwrap();
    let m = client.message(payload, false);
    client.send(&ClientFrame::Message(m)).await.unwrap();
    tokio::time::timeout(WAIT, receive_one(client))
        .await
        .expect("honest round trip never completed");
    let took = started.elapsed();
    (took, gw.metric(MESSAGE_CALLS).unwrap() - before)
}

struct Setup {
    _net: TestNet,
    gw: GatewayProcess,
    canister: Principal,
}

fn start(extra: &[(&str, &str)]) -> Setup {
    let net = TestNet::start().unwrap();
    let canister = net
        .install(TEST_APP_PACKAGE, &candid::encode_args(()).unwrap())
        .unwrap();
    let mut options =
        GatewayOptions::new(&net, &[canister]).arg("--memory-budget-bytes", &BUDGET.to_string());
    for (flag, value) in extra {
        options = options.arg(flag, value);
    }
    let gw = GatewayProcess::start(options).unwrap();
    Setup {
        _net: net,
        gw,
        canister,
    }
}

/// Runs the flood; returns the attackers' close codes.
async fn flood(setup: &Setup, kind: Flood, size: usize) -> Vec<Option<u16>> {
    let gw = &setup.gw;
    let mut honest = RawClient::connect(&gw.url(), setup.canister, None)
        .await
        .unwrap();
    assert!(honest.open(open_arg("honest")).await.unwrap().is_ok());
    receive_one(&mut honest).await; // Opened
    let mut baseline = Vec::new();
    for i in 0..5 {
        baseline.push(round_trip(gw, &mut honest, i).await.0);
    }
    let idle_rss = gw.rss_bytes().unwrap();

    // Peak RSS, sampled until the flood is over.
    let peak = Arc::new(AtomicU64::new(idle_rss));
    let sampler = {
        let peak = peak.clone();
        let pid = gw.pid().unwrap();
        tokio::spawn(async move {
            while let Some(rss) = rss_bytes(pid) {
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let closed = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for n in 0..ATTACKERS {
        let mut a = RawClient::connect(&gw.url(), setup.canister, None)
            .await
            .unwrap();
        assert!(a
            .open(open_arg(&format!("attacker {n}")))
            .await
            .unwrap()
            .is_ok());
        let closed = closed.clone();
        attackers.spawn(async move {
            let code = a.flood(kind, 256, size).await;
            closed.fetch_add(1, Ordering::SeqCst);
            code
        });
    }
    // Honest round trips for as long as the flood lasts (at least five).
    let mut during = Vec::new();
    let mut i = 5;
    while during.len() < 5 || closed.load(Ordering::SeqCst) < ATTACKERS {
        let (took, batches) = round_trip(gw, &mut honest, i).await;
        i += 1;
        during.push((took, batches));
        assert!(
            batches <= MAX_BATCHES_PER_ROUND_TRIP,
            "honest round trip {i} spanned {batches} ws_message batches \
             (queued behind the flood): {during:?}\n{}",
            gw.log_tail()
        );
        assert!(during.len() < 1000, "the flood never ended");
    }
    let mut codes = Vec::new();
    let deadline = Instant::now() + WAIT;
    while let Some(code) = tokio::time::timeout(deadline - Instant::now(), attackers.join_next())
        .await
        .expect("attackers were not closed")
    {
        codes.push(code.unwrap());
    }
    sampler.abort();
    // The honest session is unharmed.
    let (took, _) = round_trip(gw, &mut honest, i).await;
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "{kind:?}: honest baseline {baseline:?}; during the flood {:?}; after {took:?}; \
         gateway RSS idle {} MiB, peak {} MiB (budget {} MiB)",
        during,
        idle_rss >> 20,
        peak >> 20,
        BUDGET >> 20
    );
    assert!(
        peak <= idle_rss + BUDGET,
        "gateway RSS {peak} above its idle {idle_rss} + budget {BUDGET}"
    );
    let in_use = gw
        .metric("ic_ws_gateway_memory_bytes{buffer=\"relay\"}")
        .unwrap();
    assert!(in_use <= BUDGET as f64);
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_non_candid_flood_is_throttled_closed_and_does_not_delay_others() {
    let setup = start(&[("--refusal-budget", "32")]);
    let codes = flood(&setup, Flood::SignedJunk, 60 * 1024).await;
    assert_eq!(codes.len(), ATTACKERS);
    assert!(
        codes.iter().all(|c| *c == Some(1008)),
        "attackers closed with {codes:?}"
    );
    assert_eq!(
        setup.gw.metric("ic_ws_gateway_refusal_closes_total"),
        Some(ATTACKERS as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_junk_flood_closes_the_attackers_and_does_not_delay_others() {
    let setup = start(&[]);
    let codes = flood(&setup, Flood::ForgedJunk, 120 * 1024).await;
    assert_eq!(codes.len(), ATTACKERS);
    assert!(
        codes.iter().all(|c| *c == Some(4004)),
        "attackers closed with {codes:?}"
    );
}
