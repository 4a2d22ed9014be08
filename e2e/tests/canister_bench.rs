//! Benchmark of the ic-ws runtime in the embedded replica (instructions = the canister's own
//! instructions for the whole call, as `Replica::last_instructions` reports it; stable memory
//! from `ic0.stable_size`). Instruction counts and stable-memory growth are deterministic (they
//! do not depend on the machine or its load), so the figures BENCHMARKS.md reports as met are
//! also budgets: `runtime_figures_stay_within_their_budgets` and
//! `stable_memory_per_queued_message_stays_within_its_budget` run in every `cargo test` and
//! fail when a figure regresses past its target. The other benchmarks are ignored by default;
//! print everything with:
//!
//! ```text
//! cargo test --workspace --locked --test canister_bench -- --include-ignored --nocapture --test-threads 1
//! ```
//!
//! Marginal figures (a call of N operations minus a call of 1, divided by N - 1) take the
//! fixed cost of a call (candid decoding, housekeeping, certified_data) out of per-operation
//! numbers; both are printed.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{MessageBatch, MessageKind, MessageResult, PollRequest};

fn send_cost(c: &WsCanister, id: u64, size: u32, count: u32) -> u64 {
    let r: Result<u64, String> = c.update("app_send_bytes", (id, size, count));
    r.unwrap();
    c.last_instructions()
}

/// One `ws_message` call carrying a message of `kind` from each of `clients`, all accepted;
/// returns the call's instructions.
fn all_accepted(
    c: &WsCanister,
    gw: Principal,
    clients: &mut [TestClient],
    kind: MessageKind,
) -> u64 {
    let msgs = clients
        .iter_mut()
        .map(|cl| cl.message(c, kind.clone()))
        .collect();
    assert!(c
        .ws_message(gw, msgs)
        .iter()
        .all(|r| *r == MessageResult::Ok));
    c.last_instructions()
}

fn ack_all(c: &WsCanister, gw: Principal, cl: &mut TestClient) {
    cl.receive_all(c, &c.poll_all(gw)).unwrap();
    let m = cl.message(c, MessageKind::KeepAlive);
    assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
}

/// Budgets: the targets of the issues for the figures marked met, and for the figures only
/// reported (polls, publish) the measured value plus about 15 % (a regression budget).
///
/// Issue 10 (identity) put `IdentityError` into `WsError`, hence into the type table that
/// every certified content carries (`OutboundBody::OpenRejected` / `MessageRejected` hold a
/// `WsError`): the content of a 100 B send grew by that table, and hashing and re-encoding it
/// costs ~13k more per send and ~2.5k more per polled message.
///
/// Issue 13 made the replica charge what the IC charges (`ic_ws_replica::engine::costs`: the
/// IC's operator weights, system-call overheads, 50 instructions per byte of a reply): a send
/// is 165,329 (was 152,417 with one instruction per operator), so its budget is 170k, over
/// issue 2's 150k target (BENCHMARKS.md says so); a poll of 50 messages is now dominated by its
/// reply (~33 KB x 50 = 1.65M), so the poll budgets are the new measurements plus ~15 %; the
/// verified message (916,263) stays within issue 13's 1M.
const SEND_100B_MARGINAL: u64 = 170_000;
const VERIFIED_MESSAGE_IN_BATCH_OF_50: u64 = 1_000_000;
const POLL_50_ONE_CLIENT: u64 = 3_200_000;
const POLL_50_FIFTY_CLIENTS: u64 = 3_650_000;
const PUBLISH_PER_SUBSCRIBER: u64 = 130_000;
const STABLE_OVERHEAD_PER_QUEUED_MESSAGE: u64 = 100;

#[test]
fn runtime_figures_stay_within_their_budgets() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    println!("| measure | instructions |");
    println!("|---|---|");

    let mut send_marginal = Vec::new();
    for size in [100u32, 1024] {
        let one = send_cost(&c, alice.id, size, 1);
        let hundred = send_cost(&c, alice.id, size, 101);
        println!("| send {size} B: call with 1 send | {one} |");
        println!(
            "| send {size} B: marginal per send (101 vs 1 in a call) | {} |",
            (hundred - one) / 100
        );
        send_marginal.push((hundred - one) / 100);
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
    // Argument bytes (the IC charges 2,000 cycles per ingress byte): a batch of one, and what
    // each further message adds (the candid type table is shared).
    let arg = |n: usize| {
        let messages = vec![m.clone(); n];
        candid::encode_one(MessageBatch { messages }).unwrap().len()
    };
    println!(
        "| ws_message argument: 1 message / each further message (bytes) | {} / {} |",
        arg(1),
        arg(2) - arg(1)
    );
    assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
    let batch1 = c.last_instructions();
    println!("| ws_message batch of 1 verified message | {batch1} |");
    let batch50 = all_accepted(&c, gw, &mut clients, app_payload(&Inbound::Noop));
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
                max_clients: None,
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
                max_clients: None,
            },
        )
        .unwrap();
    assert_eq!(reply.messages.len(), 50);
    assert!(reply.messages.iter().all(|m| m.client_id == alice.id));
    let poll_one_client = c.last_instructions();
    println!("| ws_poll of 50 app messages (100 B, one client) | {poll_one_client} |");
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
                max_clients: None,
            },
        )
        .unwrap();
    assert_eq!(reply.messages.len(), 50);
    let poll_many_clients = c.last_instructions();
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

    // Inbound again with 1,051 sessions open (issue 13 asks for <= 1M at batch 50 whatever
    // the sessions: per message the stable activity index cost 47k with 50 open and 134k
    // with 500 until it moved to the heap).
    let crowd = all_accepted(&c, gw, &mut subs[..50], app_payload(&Inbound::Noop));
    println!(
        "| ws_message batch of 50, per message, 1,051 sessions open | {} |",
        crowd / 50
    );

    let budgets = [
        (
            "marginal send of 100 B",
            send_marginal[0],
            SEND_100B_MARGINAL,
        ),
        (
            "verified message in a ws_message batch of 50",
            batch50 / 50,
            VERIFIED_MESSAGE_IN_BATCH_OF_50,
        ),
        (
            "verified message in a ws_message batch of 50, 1,051 sessions open",
            crowd / 50,
            VERIFIED_MESSAGE_IN_BATCH_OF_50,
        ),
        (
            "ws_poll of 50, one client",
            poll_one_client,
            POLL_50_ONE_CLIENT,
        ),
        (
            "ws_poll of 50, fifty clients",
            poll_many_clients,
            POLL_50_FIFTY_CLIENTS,
        ),
        (
            "publish, per subscriber",
            publish / 1000,
            PUBLISH_PER_SUBSCRIBER,
        ),
    ];
    let over: Vec<String> = budgets
        .iter()
        .filter(|(_, figure, budget)| figure > budget)
        .map(|(what, figure, budget)| format!("{what}: {figure} instructions > budget {budget}"))
        .collect();
    assert!(over.is_empty(), "over budget: {over:#?}");
}

/// Stable-memory bytes per queued message, on a fresh canister (the default 8 MiB buckets of
/// the memory manager make growth visible only over many messages: 100 000 are queued).
#[test]
fn stable_memory_per_queued_message_stays_within_its_budget() {
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
        let overhead = per_msg.saturating_sub(stored_payload);
        println!(
            "| {payload} B payload ({stored_payload} B as candid), {n} messages queued | +{} B stable memory | {per_msg} B per message | overhead {overhead} B per message |",
            after - before,
        );
        assert!(
            overhead <= STABLE_OVERHEAD_PER_QUEUED_MESSAGE,
            "{payload} B payloads: {overhead} B of stable memory per queued message beyond the payload > budget {STABLE_OVERHEAD_PER_QUEUED_MESSAGE}"
        );
    }
}

/// The Sybil scenario of issue 9: 10 000 junk sessions from 100 principals left to expire
/// (each `on_close` publishing a notice to a room of 10 listeners, as the chat's `Left`),
/// and the cost of an honest open before, while they are due, and while the housekeeping
/// timer expires them. `SYBIL_JUNK` (default 10 000) and `SYBIL_PRINCIPALS` (100) change the
/// scale.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn bench_sybil_expiry() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let junk = env("SYBIL_JUNK", 10_000);
    let principals = env("SYBIL_PRINCIPALS", 100).max(1);
    let c = WsCanister::new();
    c.configure(WsConfig::default());
    let honest_gw = gateway(1);
    let mut listeners: Vec<TestClient> = (0..10).map(|i| TestClient::new(1_000_000 + i)).collect();
    for cl in listeners.iter_mut() {
        c.open(cl, honest_gw);
        let m = cl.message(&c, app_payload(&Inbound::Subscribe("room".into())));
        assert_eq!(c.ws_message(honest_gw, vec![m]), vec![MessageResult::Ok]);
    }
    let () = c.update("app_set_close_notice", (Some("room".to_string()),));
    let mut seed = 2_000_000u64;
    let mut honest_open = || {
        seed += 1;
        let mut cl = TestClient::new(seed);
        let t = std::time::Instant::now();
        c.open(&mut cl, honest_gw);
        (c.last_instructions(), t.elapsed())
    };
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let baseline = median((0..5).map(|_| honest_open().0).collect());

    // The junk: `junk` sessions from `principals` principals, opened in calls of at most 100.
    let per = junk / principals;
    let mut k = 0u64;
    let t = std::time::Instant::now();
    for p in 0..principals {
        let gw = Principal::from_slice(&[0x53, (p >> 8) as u8, p as u8, 0x02]);
        for chunk in 0..per.div_ceil(100) {
            let n = (per - chunk * 100).min(100);
            let reqs = (0..n)
                .map(|_| {
                    k += 1;
                    TestClient::new(k).open_request(&c, gw, "junk", false)
                })
                .collect();
            assert!(c.ws_open(gw, reqs).iter().all(Result::is_ok));
        }
    }
    let opened = per * principals;
    println!("opened {opened} junk sessions in {:.1?}", t.elapsed());
    let with_junk = median((0..5).map(|_| honest_open().0).collect());

    // Idle timeout passes without a round: every junk session is due.
    c.replica.advance_time(std::time::Duration::from_secs(121));
    let due = median((0..5).map(|_| honest_open().0).collect());
    // What an honest call used to pay on top (expiry of 100 sessions with their on_close
    // inside the endpoint): one housekeeping pass of `max_housekeeping_per_call` = 100.
    let () = c.update("app_housekeeping", ());
    let old_pass = c.last_instructions();

    // The timer expires them; an honest open after every round.
    let mut rounds = 0u64;
    let mut during = Vec::new();
    let mut during_wall = Vec::new();
    let t = std::time::Instant::now();
    loop {
        let fired = c
            .replica
            .global_timer(c.canister)
            .is_some_and(|at| at <= c.now());
        if !fired {
            break;
        }
        c.replica.tick();
        rounds += 1;
        let (i, w) = honest_open();
        during.push(i);
        during_wall.push(w);
    }
    let expiry_wall = t.elapsed();
    let closes = c.closes().len();
    let worst = during.iter().copied().max().unwrap_or(0);
    during_wall.sort_unstable();
    println!("| measure | instructions |");
    println!("|---|---|");
    println!("| honest open, no junk (median of 5) | {baseline} |");
    println!("| honest open, {opened} live junk sessions from {principals} principals (median of 5) | {with_junk} |");
    println!("| honest open, all of them due for expiry (median of 5) | {due} |");
    println!(
        "| honest open while the timer expires them (median / worst of {}) | {} / {worst} ({:.2}x / {:.2}x the no-junk baseline) |",
        during.len(),
        median(during.clone()),
        median(during.clone()) as f64 / baseline as f64,
        worst as f64 / baseline as f64
    );
    println!(
        "| before: one housekeeping pass inside a call (100 expiries, each on_close publishing to 10) | {old_pass} |"
    );
    println!(
        "| timer rounds to expire {closes} sessions (budget 1 billion per run) | {rounds} rounds, {expiry_wall:.1?} wall |"
    );
    println!(
        "| honest open wall time during expiry (median / worst, debug host build) | {:.1?} / {:.1?} |",
        during_wall.get(during_wall.len() / 2).copied().unwrap_or_default(),
        during_wall.last().copied().unwrap_or_default()
    );
    assert!(
        closes as u64 >= opened,
        "{closes} closes for {opened} junk sessions"
    );
    assert!(
        worst < baseline * 2,
        "an honest open cost {worst} while junk expired, vs {baseline}"
    );
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

/// Inbound verification by batch size (BENCHMARKS.md, "Inbound verification"): a `ws_message`
/// call of `n` verified `Noop` messages, each from its own session (the gateway's usual case:
/// many clients), per message; then the same with 5 messages per session (100 sessions x 5
/// for 500), and with one badly signed entry (the batch fails and its entries are verified
/// one by one).
#[test]
#[ignore]
fn bench_inbound_batches() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut clients = Vec::new();
    for chunk in 0..5u64 {
        let mut cls: Vec<TestClient> = (0..100)
            .map(|i| TestClient::new(10_000 + chunk * 100 + i))
            .collect();
        let reqs = cls
            .iter()
            .map(|cl| cl.open_request(&c, gw, "", false))
            .collect();
        for (cl, r) in cls.iter_mut().zip(c.ws_open(gw, reqs)) {
            cl.id = r.unwrap().client_id;
        }
        clients.extend(cls);
    }
    // Warm the decoded-key cache as a running canister has it (each session sent before).
    all_accepted(&c, gw, &mut clients, MessageKind::KeepAlive);
    println!("| messages in the call | sessions | instructions | per message |");
    println!("|---|---|---|---|");
    for n in [1usize, 2, 3, 10, 50, 100, 500] {
        let used = all_accepted(&c, gw, &mut clients[..n], app_payload(&Inbound::Noop));
        println!("| {n} | {n} | {used} | {} |", used / n as u64);
    }
    for (n, per) in [(50usize, 5usize), (500, 5)] {
        let mut msgs = Vec::new();
        for cl in clients[..n / per].iter_mut() {
            for _ in 0..per {
                msgs.push(cl.message(&c, app_payload(&Inbound::Noop)));
            }
        }
        assert!(c
            .ws_message(gw, msgs)
            .iter()
            .all(|r| *r == MessageResult::Ok));
        let used = c.last_instructions();
        println!("| {n} | {} | {used} | {} |", n / per, used / n as u64);
    }
    for n in [50usize, 500] {
        let mut msgs: Vec<_> = clients[..n]
            .iter_mut()
            .map(|cl| cl.message(&c, app_payload(&Inbound::Noop)))
            .collect();
        msgs[n / 2].signature[40] ^= 1;
        let r = c.ws_message(gw, msgs);
        assert_eq!(r.iter().filter(|r| **r == MessageResult::Ok).count(), n - 1);
        let used = c.last_instructions();
        println!(
            "| {n}, one badly signed | {n} | {used} | {} |",
            used / n as u64
        );
        // The bad entry's client sends it again, signed (its sequence number is still free).
        let cl = &mut clients[n / 2];
        cl.next_inbound -= 1;
        let m = cl.message(&c, app_payload(&Inbound::Noop));
        assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
    }
}
