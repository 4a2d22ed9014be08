//! An adversarial gateway: the tampering proxy (`ic_ws_e2e::tamper`) sits between the real
//! gateway process and a Rust client. For every attack the client must detect it, name the
//! exact check that failed, drop the connection, resume, and end up with the genuine stream:
//! every message once, in order.
//!
//! Traffic: `bob` (connected directly to the gateway) says `tick0`, `tick1`, ... every 50 ms;
//! `alice` (through the proxy) receives them as certified broadcasts.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use candid::Principal;
use ic_ws_client::{Client, ClientError, VerifyError};
use ic_ws_e2e::chat::{config, join, numbered, read_until, say, Observed, TestClock, CHAT};
use ic_ws_e2e::process::{GatewayOptions, GatewayProcess, TestNet};
use ic_ws_e2e::tamper::{Attack, Fired, TamperProxy};

struct Setup {
    net: TestNet,
    canister: Principal,
    /// Kept alive for the test's duration.
    _gw: GatewayProcess,
    proxy: TamperProxy,
    clock: TestClock,
    alice: Client,
    bob: Option<Client>,
}

async fn setup() -> Setup {
    let net = TestNet::start().unwrap();
    let canister = net
        .install(CHAT, &candid::encode_args(()).unwrap())
        .unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let proxy = TamperProxy::start(&gw.url()).await.unwrap();
    let clock = TestClock::default();
    let mut cfg = config(proxy.url(), canister, &net.root_key_der, "alice");
    cfg.clock = clock.clock_fn();
    // Time for the stale-certificate test to put the clock back before alice reconnects.
    cfg.backoff.initial = Duration::from_secs(1);
    let alice = join(cfg).await.unwrap();
    let bob = join(config(&gw.url(), canister, &net.root_key_der, "bob"))
        .await
        .unwrap();
    Setup {
        net,
        canister,
        _gw: gw,
        proxy,
        clock,
        alice,
        bob: Some(bob),
    }
}

/// Bob says tick0, tick1, ... until stopped; returns how many he said.
fn ticker(bob: Client) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(Client, usize)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                say(&bob, &format!("tick{n}")).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (bob, n)
        })
    };
    (stop, handle)
}

/// Runs `attack` against alice while bob ticks; returns what fired, the error alice reported
/// first, and checks that alice ends up with every tick exactly once, in order.
async fn attack(attack: Attack) -> (Fired, ClientError, Setup) {
    let mut s = setup().await;
    let alice_id = s.alice.client_id().unwrap();
    let (stop, ticks) = ticker(s.bob.take().unwrap());
    let mut seen = Observed::default();
    // Some genuine traffic first (ReplayOld and DeliverOther need earlier frames).
    read_until(&mut s.alice, &mut seen, |o| o.texts_from("bob").len() >= 3)
        .await
        .unwrap();
    s.proxy.arm(alice_id, attack);
    read_until(&mut s.alice, &mut seen, |o| !o.disconnects().is_empty())
        .await
        .unwrap();
    let error = seen.disconnects()[0].clone();
    // Recovery: alice resumes through the proxy (the attack fired once) and catches up.
    stop.store(true, Ordering::SeqCst);
    let (bob, n) = ticks.await.unwrap();
    read_until(&mut s.alice, &mut seen, |o| o.texts_from("bob").len() >= n)
        .await
        .unwrap();
    assert_eq!(
        seen.texts_from("bob"),
        numbered("tick", n),
        "every tick once, in order"
    );
    assert_eq!(
        seen.disconnects().len(),
        1,
        "one attack, one detection: {:?}",
        seen.events
    );
    assert_eq!(
        s.alice.client_id(),
        Some(alice_id),
        "the session was resumed, not replaced"
    );
    s.bob = Some(bob);
    let fired = s.proxy.fired();
    assert_eq!(fired.len(), 1, "{fired:?}");
    (fired[0].clone(), error, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_payload_is_detected() {
    let (f, error, _s) = attack(Attack::AlterPayload).await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::NotCertified {
            seq: f.frame_last_seq
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_certificate_is_detected() {
    let (_f, error, _s) = attack(Attack::AlterCertificate).await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::BadCertificateSignature)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_frames_are_detected() {
    let (f, error, _s) = attack(Attack::Reorder).await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::OutOfSequence {
            expected: f.frame_first_seq,
            got: f.frame_last_seq + 1
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_frame_is_detected() {
    let (f, error, _s) = attack(Attack::Drop).await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::OutOfSequence {
            expected: f.frame_first_seq,
            got: f.frame_last_seq + 1
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_frame_is_detected() {
    let (f, error, _s) = attack(Attack::Duplicate).await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::OutOfSequence {
            expected: f.frame_last_seq + 1,
            got: f.frame_first_seq
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_old_frame_is_detected() {
    let (f, error, _s) = attack(Attack::ReplayOld).await;
    assert_eq!(
        f.other_seq,
        Some(0),
        "the replayed frame starts with the session's Opened"
    );
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::OutOfSequence {
            expected: f.frame_last_seq + 1,
            got: 0
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_frame_is_detected() {
    // Carol also goes through the proxy, so it has her frames to misdeliver.
    let mut s = setup().await;
    let alice_id = s.alice.client_id().unwrap();
    let mut carol = join(config(
        s.proxy.url(),
        s.canister,
        &s.net.root_key_der,
        "carol",
    ))
    .await
    .unwrap();
    let carol_id = carol.client_id().unwrap();
    let bob = s.bob.take().unwrap();
    say(&bob, "hi both").await.unwrap();
    let (mut seen_a, mut seen_c) = (Observed::default(), Observed::default());
    read_until(&mut carol, &mut seen_c, |o| !o.texts_from("bob").is_empty())
        .await
        .unwrap();
    read_until(&mut s.alice, &mut seen_a, |o| {
        !o.texts_from("bob").is_empty()
    })
    .await
    .unwrap();
    s.proxy.arm(alice_id, Attack::DeliverOther);
    say(&bob, "second").await.unwrap();
    read_until(&mut s.alice, &mut seen_a, |o| !o.disconnects().is_empty())
        .await
        .unwrap();
    let f = s.proxy.fired()[0].clone();
    assert_eq!(f.other_client, Some(carol_id));
    assert_eq!(
        seen_a.disconnects()[0],
        ClientError::Verify(VerifyError::WrongClient {
            expected: alice_id,
            got: carol_id,
            seq: f.other_seq.unwrap()
        })
    );
    read_until(&mut s.alice, &mut seen_a, |o| {
        o.texts_from("bob").len() >= 2
    })
    .await
    .unwrap();
    assert_eq!(seen_a.texts_from("bob"), ["hi both", "second"]);
    // Carol was not affected.
    read_until(&mut carol, &mut seen_c, |o| o.texts_from("bob").len() >= 2)
        .await
        .unwrap();
    assert!(seen_c.disconnects().is_empty(), "{seen_c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_certificate_is_detected() {
    let mut s = setup().await;
    let alice_id = s.alice.client_id().unwrap();
    let bob = s.bob.take().unwrap();
    say(&bob, "before").await.unwrap();
    let mut seen = Observed::default();
    read_until(&mut s.alice, &mut seen, |o| !o.texts_from("bob").is_empty())
        .await
        .unwrap();
    // Ten minutes later (alice's clock), the gateway replays an old, genuine frame.
    s.clock.set_ahead(Duration::from_secs(600));
    assert_eq!(s.proxy.replay_first_frame(alice_id), Some(0));
    read_until(&mut s.alice, &mut seen, |o| !o.disconnects().is_empty())
        .await
        .unwrap();
    s.clock.set_ahead(Duration::ZERO);
    match &seen.disconnects()[0] {
        ClientError::Verify(VerifyError::StaleCertificate { age_s, max_s }) => {
            assert!(*age_s >= 600, "age {age_s}");
            assert_eq!(*max_s, 300);
        }
        other => panic!("expected StaleCertificate, got {other:?}"),
    }
    say(&bob, "after").await.unwrap();
    read_until(&mut s.alice, &mut seen, |o| o.texts_from("bob").len() >= 2)
        .await
        .unwrap();
    assert_eq!(seen.texts_from("bob"), ["before", "after"]);
}
