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
    let rows: [(u32, u32, u32); 5] = [
        (10_000, 0, 0),
        (1_000, 100, 100),
        (100, 1_000, 100),
        (100, 1_000, 1_024),
        (20, 1_000, 16_384),
    ];
    let mut figures = Vec::new();
    for (sessions, messages, bytes) in rows {
        let total = measure(sessions, messages, bytes);
        let retained = u64::from(sessions) * u64::from(messages + 1);
        println!(
            "| {sessions} sessions x {messages} messages x {bytes} B ({retained} retained, {} MiB payload) | {total} | {} per retained message |",
            u64::from(sessions) * u64::from(messages) * u64::from(bytes) >> 20,
            (total - empty) / retained
        );
        figures.push((sessions, messages, bytes, total - empty));
    }
}
