//! Upgrades at the limits, in the embedded replica with the real test canister: what the
//! post-upgrade rebuild costs (benchmark, ignored by default), an upgrade at the scaled
//! maximums that fits the IC's install_code limit and after which clients resume and verify
//! what they receive, and a canister upgraded without the rebuild hook.
//!
//! Benchmark:
//!
//! ```text
//! cargo test --workspace --locked --test canister_upgrade -- --ignored --nocapture --test-threads 1
//! ```
//!
//! The bulk sessions come from the test canister's `app_test_fill` (the runtime's
//! `test-hooks` feature: sessions with made-up keys, no signature checks, each with its
//! certified `Opened` message and `messages` retained sends); their stored form and the
//! rebuild's work for them are those of real sessions.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_e2e::canister_harness::*;

/// Sends per fill call: keeps every call far below the 40e9 update limit.
const SENDS_PER_CALL: u64 = 40_000;

/// Fills `sessions` sessions on `gw`, each with `messages` retained messages of `bytes` bytes.
fn fill(c: &WsCanister, gw: Principal, sessions: u32, messages: u32, bytes: u32) {
    let per_call = (SENDS_PER_CALL / u64::from(messages + 1)).clamp(1, 10_000) as u32;
    let mut left = sessions;
    while left > 0 {
        let n = left.min(per_call);
        let _: u64 = c.update("app_test_fill", (gw, n, messages, bytes));
        left -= n;
    }
}

/// Instructions of an upgrade (pre_upgrade + post_upgrade: the install_code message).
fn upgrade_cost(c: &WsCanister) -> u64 {
    c.upgrade();
    c.last_instructions()
}

/// A fresh canister with `sessions` x `messages` x `bytes`; returns the upgrade's instructions.
fn measure(sessions: u32, messages: u32, bytes: u32) -> u64 {
    let c = WsCanister::new();
    c.configure(WsConfig {
        max_queued_messages: 1024,
        ..WsConfig::default()
    });
    fill(&c, gateway(1), sessions, messages, bytes);
    upgrade_cost(&c)
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_upgrade_rebuild() {
    let empty = measure(0, 0, 0);
    println!("| upgrade of an empty canister | {empty} |");
    // (sessions, app messages per session, payload bytes); each session also retains its
    // `Opened` message. Sizes stay within the 4 MiB per-session default.
    let rows: [(u32, u32, u32); 5] = [
        (10_000, 0, 0),
        (1_000, 100, 100),
        (100, 1_000, 100),
        (100, 1_000, 1_024),
        (20, 200, 16_384),
    ];
    for (sessions, messages, bytes) in rows {
        let total = measure(sessions, messages, bytes);
        let retained = u64::from(sessions) * u64::from(messages + 1);
        println!(
            "| {sessions} sessions x {messages} messages x {bytes} B ({retained} retained, {} MiB payload) | {total} | {} per retained message |",
            (u64::from(sessions) * u64::from(messages) * u64::from(bytes)) >> 20,
            (total - empty) / retained
        );
    }
}

/// The worst case the default configuration allows (200,000 sessions, 1,000,000 retained
/// messages canister-wide), and 10x a typical load (typical: 5,000 sessions with 10 unacked
/// 1 KiB messages each).
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_upgrade_at_the_default_maximums() {
    // 10x typical: 50,000 sessions x (Opened + 10 x 1 KiB) = 550,000 retained, 488 MiB.
    let typical10 = measure(50_000, 10, 1_024);
    println!(
        "| 10x typical: 50,000 sessions x 10 messages x 1 KiB (550,000 retained) | {typical10} |"
    );
    // Default maximums: 200,000 sessions with their Opened messages, then 4 messages of 100 B
    // each (1,000,000 retained), then one more send that the cap refuses.
    let c = WsCanister::new();
    fill(&c, gateway(1), 200_000, 4, 100);
    let worst: u64 = c.query("app_worst_case_rebuild", (), Principal::anonymous());
    let total = upgrade_cost(&c);
    println!(
        "| default maximums: 200,000 sessions, 1,000,000 retained messages | {total} | formula bound {worst} |"
    );
    assert!(
        total <= worst,
        "the formula is an upper bound: {total} > {worst}"
    );
}

/// The configuration the scaled tests use: the default limits divided by 100.
fn scaled() -> WsConfig {
    WsConfig {
        max_sessions: Some(2_000),
        max_retained_messages: Some(10_000),
        ..WsConfig::default()
    }
}

/// Polls everything `gw` has for `client` and verifies it as the client does.
fn drain(c: &WsCanister, gw: Principal, client: &mut TestClient) -> usize {
    client.receive_all(c, &c.poll_all(gw)).unwrap()
}

#[test]
fn upgrade_at_the_scaled_maximums_fits_and_clients_resume() {
    let c = WsCanister::new();
    // Limits the rebuild could not afford are refused with the reason.
    let r: Result<(), String> = c.update(
        "app_configure",
        (WsConfig {
            max_retained_messages: Some(1_000_000_000),
            ..WsConfig::default()
        },),
    );
    assert!(
        r.as_ref()
            .is_err_and(|e| e.contains("post-upgrade rebuild could cost")),
        "{r:?}"
    );
    c.configure(scaled());
    let (gw1, gw2, bulk) = (gateway(1), gateway(2), gateway(9));
    let mut alice = TestClient::new(1);
    let mut bob = TestClient::new(2);
    c.open(&mut alice, gw1);
    c.open(&mut bob, gw1);
    let last: Result<u64, String> = c.update("app_send_bytes", (alice.id, 100u32, 40u32));
    assert_eq!(last, Ok(40));
    let last: Result<u64, String> = c.update("app_send_bytes", (bob.id, 1_000u32, 40u32));
    assert_eq!(last, Ok(40));
    // Alice reads 30 of hers before the upgrade; her gateway then goes away.
    let first = c.ws_poll(gw1, 0);
    let mut part = first.clone();
    part.messages
        .retain(|m| m.client_id == alice.id && m.seq < 30);
    assert_eq!(alice.receive(&c, &part).unwrap(), 30);
    // The rest of the sessions, up to the session cap, and messages up to the canister cap.
    fill(&c, bulk, 1_998, 4, 200);
    let info = c.client_info(bob.id).unwrap();
    assert_eq!(info.queued_messages, 41);
    // At the caps: sends and opens are refused with typed errors, nothing changes.
    let r: Result<u64, String> = c.update("app_send", (bob.id, "over".to_string()));
    assert!(
        r.as_ref()
            .is_err_and(|e| e.contains("retained messages in this canister")),
        "{r:?}"
    );
    let carol = TestClient::new(3);
    let req = carol.open_request(&c, gw1, "hello", false);
    let r = c.ws_open(gw1, vec![req]).remove(0);
    assert!(
        matches!(r, Err(ic_ws_protocol::WsError::LimitReached(_))),
        "{r:?}"
    );
    assert_eq!(c.client_info(bob.id).unwrap(), info);

    let worst: u64 = c.query("app_worst_case_rebuild", (), Principal::anonymous());
    c.upgrade();
    let used = c.last_instructions();
    println!("upgrade at the scaled maximums: {used} instructions (formula bound {worst})");
    assert!(
        used <= worst,
        "the formula bounds the rebuild: {used} > {worst}"
    );
    assert!(
        used < 300_000_000_000 / 5,
        "under 20 % of the upgrade limit"
    );

    // Bob's gateway restarted with the upgrade: from cursor 0 it gets all 41, verified.
    assert_eq!(drain(&c, gw1, &mut bob), 41);
    // Alice resumes through another gateway from what she has (30; the resume releases them,
    // which makes room for its Opened under the full canister's cap): 30..=40 and her resumed
    // Opened, all verified against the certified data kept across the upgrade.
    c.advance(std::time::Duration::from_secs(1));
    let req = alice.open_request(&c, gw2, "", true);
    let ok = c.ws_open(gw2, vec![req]).remove(0).unwrap();
    assert_eq!(ok.client_id, alice.id);
    assert_eq!(drain(&c, gw2, &mut alice), 12);
    assert_eq!(alice.received.len(), 42);
    for (i, m) in alice.received.iter().enumerate() {
        assert_eq!(m.seq, i as u64);
    }
    // Acknowledging frees room under the canister cap: sends work again.
    let ack = alice.message(&c, ic_ws_protocol::types::MessageKind::KeepAlive);
    assert_eq!(
        c.ws_message(gw2, vec![ack]),
        vec![ic_ws_protocol::types::MessageResult::Ok]
    );
    let r: Result<u64, String> = c.update("app_send", (alice.id, "room again".to_string()));
    assert_eq!(r, Ok(42));
    drain(&c, gw2, &mut alice);
    assert_eq!(
        outbound(alice.received.last().unwrap()),
        Some(Outbound::Text("room again".into()))
    );
}

#[test]
fn an_upgrade_without_the_rebuild_fails_loudly_then_recovers_in_an_update_call() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    let _: Result<u64, String> = c.update("app_send_bytes", (alice.id, 64u32, 5u32));
    let certified = c.certified_data();
    // The test app's post_upgrade skips ic_ws_canister::post_upgrade() when asked to (as an
    // app with `post_upgrade = false` that forgot it).
    c.upgrade_with_arg(&candid::encode_one(Some(true)).unwrap())
        .unwrap();
    let r = c.ws_poll_with(
        gw,
        ic_ws_protocol::types::PollRequest {
            cursor: 0,
            max_messages: None,
            max_bytes: None,
            max_clients: None,
        },
    );
    match r {
        Err(ic_ws_protocol::WsError::InvalidArgument(m)) => {
            assert!(m.contains("upgraded without rebuilding"), "{m}")
        }
        other => panic!("a poll must not be served: {other:?}"),
    }
    // The first update call rebuilds: polls then serve the same, certified messages.
    let m = alice.message(&c, ic_ws_protocol::types::MessageKind::KeepAlive);
    assert_eq!(
        c.ws_message(gw, vec![m]),
        vec![ic_ws_protocol::types::MessageResult::Ok]
    );
    assert_eq!(c.certified_data(), certified);
    assert_eq!(drain(&c, gw, &mut alice), 6);
}
