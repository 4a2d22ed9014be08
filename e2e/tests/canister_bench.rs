//! Benchmark of the ic-ws runtime in the embedded replica (instructions = the replica's
//! wasm fuel for the whole call, as `Replica::last_instructions` reports it; stable memory
//! from `ic0.stable_size`). Ignored by default; run:
//!
//! ```text
//! cargo test --release -p ic-ws-e2e --test canister_bench -- --ignored --nocapture
//! ```
//!
//! Marginal figures (a call of N operations minus a call of 1, divided by N - 1) take the
//! fixed cost of a call (candid decoding, housekeeping, certified_data) out of per-operation
//! numbers; both are printed.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{MessageKind, MessageResult, PollRequest};

fn send_cost(c: &WsCanister, id: u64, size: u32, count: u32) -> u64 {
    let r: Result<u64, String> = c.update("app_send_bytes", (id, size, count));
    r.unwrap();
    c.last_instructions()
}

fn ack_all(c: &WsCanister, gw: Principal, cl: &mut TestClient) {
    cl.receive_all(c, &c.poll_all(gw)).unwrap();
    let m = cl.message(c, MessageKind::KeepAlive);
    assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_runtime() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    println!("| measure | instructions |");
    println!("|---|---|");

    for size in [100u32, 1024] {
        let one = send_cost(&c, alice.id, size, 1);
        let hundred = send_cost(&c, alice.id, size, 101);
        println!("| send {size} B: call with 1 send | {one} |");
        println!(
            "| send {size} B: marginal per send (101 vs 1 in a call) | {} |",
            (hundred - one) / 100
        );
        ack_all(&c, gw, &mut alice);
    }

    // Inbound: clients send Noop app messages (signature check + sequence + handler call).
    let mut clients: Vec<TestClient> = (10..60).map(TestClient::new).collect();
    let reqs = clients
        .iter()
        .map(|cl| cl.open_request(&c, gw, "", false))
        .collect();
    for (cl, r) in clients.iter_mut().zip(c.ws_open(gw, reqs)) {
        cl.id = r.unwrap().client_id;
    }
    println!(
        "| ws_open batch of 50 new sessions, per open | {} |",
        c.last_instructions() / 50
    );
    let m = clients[0].message(&c, app_payload(&Inbound::Noop));
    assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
    let batch1 = c.last_instructions();
    println!("| ws_message batch of 1 verified message | {batch1} |");
    let msgs = clients
        .iter_mut()
        .map(|cl| cl.message(&c, app_payload(&Inbound::Noop)))
        .collect();
    assert!(c
        .ws_message(gw, msgs)
        .iter()
        .all(|r| *r == MessageResult::Ok));
    let batch50 = c.last_instructions();
    println!("| ws_message batch of 50, per message | {} |", batch50 / 50);
    println!(
        "| ws_message batch of 50, marginal per message ((50 - 1) / 49) | {} |",
        (batch50 - batch1) / 49
    );

    // Poll of 50 messages from cursor 0 (as measured since be9197c): the log then starts
    // with the 50 new sessions' certified `Opened` messages, so this is mostly those.
    let r: Result<u64, String> = c.update("app_send_bytes", (alice.id, 100u32, 50u32));
    r.unwrap();
    let reply = c
        .ws_poll_with(
            gw,
            PollRequest {
                cursor: 0,
                max_messages: Some(50),
                max_bytes: None,
            },
        )
        .unwrap();
    assert_eq!(reply.messages.len(), 50);
    println!(
        "| ws_poll of 50 messages from cursor 0 (the 50 sessions' Opened messages) | {} |",
        c.last_instructions()
    );
    // Poll of 50 app messages of 100 B of one client (from the cursor after everything
    // older).
    let cursor = c.poll_all(gw).last().unwrap().next_cursor;
    let r: Result<u64, String> = c.update("app_send_bytes", (alice.id, 100u32, 50u32));
    r.unwrap();
    let reply = c
        .ws_poll_with(
            gw,
            PollRequest {
                cursor,
                max_messages: Some(50),
                max_bytes: None,
            },
        )
        .unwrap();
    assert_eq!(reply.messages.len(), 50);
    assert!(reply.messages.iter().all(|m| m.client_id == alice.id));
    println!(
        "| ws_poll of 50 app messages (100 B, one client) | {} |",
        c.last_instructions()
    );
    ack_all(&c, gw, &mut alice);
    // Poll of 50 app messages spread over 50 clients.
    let cursor = c.poll_all(gw).last().unwrap().next_cursor;
    for cl in &clients {
        let r: Result<u64, String> = c.update("app_send", (cl.id, "x".repeat(90)));
        r.unwrap();
    }
    let reply = c
        .ws_poll_with(
            gw,
            PollRequest {
                cursor,
                max_messages: Some(50),
                max_bytes: None,
            },
        )
        .unwrap();
    assert_eq!(reply.messages.len(), 50);
    println!(
        "| ws_poll of 50 app messages (~100 B, {} clients) | {} |",
        {
            let mut ids: Vec<u64> = reply.messages.iter().map(|m| m.client_id).collect();
            ids.sort();
            ids.dedup();
            ids.len()
        },
        c.last_instructions()
    );

    // Publish to 1 000 subscribers.
    let mut subs: Vec<TestClient> = (1000..2000).map(TestClient::new).collect();
    for chunk in subs.chunks_mut(250) {
        let reqs = chunk
            .iter()
            .map(|cl| cl.open_request(&c, gw, "", false))
            .collect();
        for (cl, r) in chunk.iter_mut().zip(c.ws_open(gw, reqs)) {
            cl.id = r.unwrap().client_id;
        }
        for cl in chunk.iter() {
            let r: Result<(), String> = c.update("app_subscribe", (cl.id, "t".to_string()));
            r.unwrap();
        }
    }
    let r: Result<(u64, u64, u64), String> = c.update("app_publish", ("t".to_string(), 100u32));
    assert_eq!(r, Ok((1000, 0, 0)));
    let publish = c.last_instructions();
    println!(
        "| publish 100 B to 1 000 subscribers | {publish} ({} per subscriber) |",
        publish / 1000
    );
}

/// Stable-memory bytes per queued message, on a fresh canister (the default 8 MiB buckets of
/// the memory manager make growth visible only over many messages: 100 000 are queued).
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_memory_per_queued_message() {
    for payload in [100u32, 1024] {
        let c = WsCanister::new();
        let gw = gateway(1);
        let r: Result<(), String> = c.update("app_configure_big_queues", ());
        r.unwrap();
        let mut clients: Vec<TestClient> = (0..10).map(TestClient::new).collect();
        for cl in clients.iter_mut() {
            c.open(cl, gw);
        }
        let before: u64 = c.query("app_stable_bytes", (), Principal::anonymous());
        let per_client = 10_000u32;
        for cl in &clients {
            for _ in 0..(per_client / 1000) {
                let r: Result<u64, String> = c.update("app_send_bytes", (cl.id, payload, 1000u32));
                r.unwrap();
            }
        }
        let after: u64 = c.query("app_stable_bytes", (), Principal::anonymous());
        let n = u64::from(per_client) * clients.len() as u64;
        // The app payload as the runtime stores it: candid of Outbound::Bytes(payload).
        let stored_payload = candid::encode_one(Outbound::Bytes(serde_bytes::ByteBuf::from(
            vec![7u8; payload as usize],
        )))
        .unwrap()
        .len() as u64;
        let per_msg = (after - before) / n;
        println!(
            "| {payload} B payload ({stored_payload} B as candid), {n} messages queued | +{} B stable memory | {per_msg} B per message | overhead {} B per message |",
            after - before,
            per_msg.saturating_sub(stored_payload)
        );
    }
}

/// Protocol version 2: what certifying a refusal costs. A refused message (`Inbound::Fail`:
/// signature, sequence, handler, then the certified `MessageRejected` queued) against the same
/// message accepted with nothing queued (`Inbound::Noop`: what a refusal cost before version 2,
/// when nothing was queued for it); a refused open (session kept closed with `OpenRejected`)
/// against an accepted one (session with `Opened`). Marginal figures of a batch of 50 vs 1.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_certified_outcomes() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut clients: Vec<TestClient> = (100..150).map(TestClient::new).collect();
    let reqs = clients
        .iter()
        .map(|cl| cl.open_request(&c, gw, "", false))
        .collect();
    for (cl, r) in clients.iter_mut().zip(c.ws_open(gw, reqs)) {
        cl.id = r.unwrap().client_id;
    }
    println!("| measure | instructions |");
    println!("|---|---|");
    let mut per_message = |what: &str, inbound: Inbound, ok: bool| -> u64 {
        let m = clients[0].message(&c, app_payload(&inbound));
        let r = c.ws_message(gw, vec![m]);
        assert_eq!(r[0] == MessageResult::Ok, ok, "{r:?}");
        let one = c.last_instructions();
        let msgs = clients
            .iter_mut()
            .map(|cl| cl.message(&c, app_payload(&inbound)))
            .collect();
        let r = c.ws_message(gw, msgs);
        assert!(r.iter().all(|r| (*r == MessageResult::Ok) == ok));
        let fifty = c.last_instructions();
        let marginal = (fifty - one) / 49;
        println!("| ws_message, {what}: marginal per message ((50 - 1) / 49) | {marginal} |");
        marginal
    };
    let accepted = per_message("accepted, nothing queued (`Noop`)", Inbound::Noop, true);
    let refused = per_message(
        "refused by the handler, certified `MessageRejected` queued (`Fail`)",
        Inbound::Fail,
        false,
    );
    println!(
        "| certified `MessageRejected`: cost per refused message (difference) | {} |",
        refused.saturating_sub(accepted)
    );

    let per_open = |what: &str, args: &str, seed: u64| -> u64 {
        let one = TestClient::new(seed);
        let r = c.ws_open(gw, vec![one.open_request(&c, gw, args, false)]);
        assert_eq!(r[0].is_ok(), args != "reject", "{r:?}");
        let first = c.last_instructions();
        let reqs = (1..=50)
            .map(|i| TestClient::new(seed + i).open_request(&c, gw, args, false))
            .collect();
        let r = c.ws_open(gw, reqs);
        assert!(r.iter().all(|r| r.is_ok() == (args != "reject")));
        let fifty = c.last_instructions();
        let marginal = (fifty - first) / 49;
        println!("| ws_open, {what}: marginal per open ((50 - 1) / 49) | {marginal} |");
        marginal
    };
    let opened = per_open("accepted (session + `Opened`)", "hello", 1000);
    let rejected = per_open(
        "refused by `on_open` (closed session + certified `OpenRejected`)",
        "reject",
        2000,
    );
    println!(
        "| certified `OpenRejected` vs an accepted open (difference) | {} |",
        rejected as i64 - opened as i64
    );
}
