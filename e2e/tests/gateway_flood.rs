//! A relay flood against the real gateway (issue 8, finding 3): attacker connections each open
//! a real session on the test app and send as many large junk messages as the gateway reads,
//! while an honest client does echo round trips through the same canister.
//!
//! What must hold, asserted structurally rather than with wall-clock margins:
//! - the honest client's messages are never queued behind the attackers' backlogs: the relay
//!   sends each of them in the first batch it cuts after the message arrived (the gateway's
//!   `ic_ws_gateway_relay_wait_batches` histogram: every entry sent with the priority of a
//!   client with nothing queued waited 0 batches), where a FIFO relay queue puts it behind
//!   every attacker entry (dozens of batches; tried: the honest session then starved until
//!   the canister expired it). Every honest round trip completes; the `ws_message` batches
//!   each one spanned and its duration are printed, not asserted: they also include the
//!   poll, and the test process itself (embedded replica, 40 attackers signing 60-120 KB
//!   messages in a debug build, the honest client) shares two cores, so while the attackers
//!   start up a round trip can span many batches even though the gateway sent the honest
//!   message in the first batch it cut;
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

const WAITS_COUNT: &str = "ic_ws_gateway_relay_wait_batches_count";
const WAITS_NONE: &str = "ic_ws_gateway_relay_wait_batches_bucket{le=\"0\"}";

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
        // A generous idle timeout: on a loaded machine the setup alone can take minutes, and
        // idle clients are not what this test is about.
        GatewayOptions::new(&net, &[canister])
            .arg("--memory-budget-bytes", &BUDGET.to_string())
            .arg("--idle-timeout-ms", "1800000");
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
    let waits_before = gw.metric(WAITS_COUNT).unwrap();

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
        // Concurrently: their opens share `ws_open` batches, as a real burst would.
        let (url, canister) = (gw.url(), setup.canister);
        let closed = closed.clone();
        attackers.spawn(async move {
            let mut a = RawClient::connect(&url, canister, None).await.unwrap();
            assert!(a
                .open(open_arg(&format!("attacker {n}")))
                .await
                .unwrap()
                .is_ok());
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
    // Every honest message went out in the first batch cut after it arrived.
    let (waits, not_delayed) = (
        gw.metric(WAITS_COUNT).unwrap(),
        gw.metric(WAITS_NONE).unwrap(),
    );
    assert!(
        waits - waits_before > during.len() as f64,
        "every honest message is counted ({waits_before} -> {waits})"
    );
    assert_eq!(
        not_delayed, waits,
        "a message of a client with nothing queued waited behind the flood"
    );
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "{kind:?}: honest baseline {baseline:?}; during the flood (round trip, ws_message \
         batches meanwhile) {:?}; after {took:?}; gateway RSS idle {} MiB, peak {} MiB \
         (budget {} MiB); ws_poll p99 <= {:?} s",
        during,
        idle_rss >> 20,
        peak >> 20,
        BUDGET >> 20,
        poll_p99(gw)
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

/// Upper bound of the 99th percentile of `ws_poll` latency (from the histogram buckets).
fn poll_p99(gw: &GatewayProcess) -> Option<f64> {
    let name = "ic_ws_gateway_poll_latency_seconds";
    let count = gw.metric(&format!("{name}_count"))?;
    [0.001, 0.01, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
        .into_iter()
        .find(|le| {
            gw.metric(&format!("{name}_bucket{{le=\"{le}\"}}"))
                .is_some_and(|n| n >= 0.99 * count)
        })
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
