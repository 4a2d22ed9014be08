//! Sybil callers against the real wasm in the embedded replica: many self-made principals
//! acting as gateways hit the canister-wide caps (sessions, retained bytes, subscriptions,
//! gateway records) with typed errors and the state unchanged; gateway records without
//! sessions expire; an app callback decides who may act as a gateway; and the expiry of many
//! sessions (each `on_close` publishing a notice) runs from the housekeeping timer within
//! its instruction budget, not inside honest calls.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{MessageResult, OpenRequest};
use ic_ws_protocol::WsError;
use std::time::Duration;

/// A self-made principal (`n` up to 65 535), distinct from the harness's `gateway(n)`.
fn sybil(n: u16) -> Principal {
    let [a, b] = n.to_be_bytes();
    Principal::from_slice(&[0x53, a, b, 0x01])
}

/// Opens one session per client through `gw` in one call; returns the results.
fn open_all(
    c: &WsCanister,
    gw: Principal,
    clients: &mut [TestClient],
) -> Vec<Result<u64, WsError>> {
    let reqs: Vec<OpenRequest> = clients
        .iter()
        .map(|cl| cl.open_request(c, gw, "hello", false))
        .collect();
    let results = c.ws_open(gw, reqs);
    clients
        .iter_mut()
        .zip(results)
        .map(|(cl, r)| {
            r.map(|ok| {
                cl.id = ok.client_id;
                ok.client_id
            })
        })
        .collect()
}

fn limit_reached(r: &Result<u64, WsError>, what: &str) -> bool {
    matches!(r, Err(WsError::LimitReached(m)) if m.contains(what))
}

#[test]
fn sybil_sessions_and_gateway_records_hit_the_canister_wide_caps() {
    let c = WsCanister::new();
    c.configure(WsConfig {
        max_sessions: Some(30),
        max_gateways: Some(8),
        ..WsConfig::default()
    });
    // Eight principals with four sessions each: the per-gateway cap (50 000) is far away,
    // the canister-wide session cap (30) is not.
    let mut seed = 0;
    let mut results = Vec::new();
    for p in 0..8 {
        let mut clients: Vec<TestClient> = (0..4)
            .map(|_| {
                seed += 1;
                TestClient::new(seed)
            })
            .collect();
        results.extend(open_all(&c, sybil(p), &mut clients));
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 30, "{results:?}");
    assert!(results
        .iter()
        .filter(|r| r.is_err())
        .all(|r| limit_reached(r, "sessions in this canister")));
    let before = c.usage();
    assert_eq!(before.sessions, 30);
    assert_eq!(before.gateways, 8);

    // A ninth principal, with room for sessions again: refused for the gateway-record cap
    // (checked before anything is created).
    c.configure(WsConfig {
        max_sessions: Some(100),
        max_gateways: Some(8),
        ..WsConfig::default()
    });
    let mut newcomer = vec![TestClient::new(1000)];
    let r = open_all(&c, sybil(8), &mut newcomer);
    assert!(limit_reached(&r[0], "gateways in this canister"), "{r:?}");
    let after = c.usage();
    assert_eq!(
        after.gateways, 8,
        "a refused open created no gateway record"
    );
    assert_eq!(after.sessions, before.sessions, "nor a session");
    // An existing gateway record still opens.
    let r = open_all(&c, sybil(0), &mut [TestClient::new(1001)]);
    assert!(r[0].is_ok(), "{r:?}");
    // Closed sessions count until they are deleted after their retention.
    c.configure(WsConfig {
        max_sessions: Some(31),
        max_gateways: Some(8),
        ..WsConfig::default()
    });
    let victims: Vec<u64> = results
        .iter()
        .filter_map(|r| r.clone().ok())
        .take(5)
        .collect();
    for id in &victims {
        let _: bool = c.update("app_close", (*id, 4000u16, "make room".to_string()));
    }
    let r = open_all(&c, sybil(1), &mut [TestClient::new(1002)]);
    assert!(limit_reached(&r[0], "sessions in this canister"), "{r:?}");
    c.advance(Duration::from_secs(601));
    let r = open_all(&c, sybil(1), &mut [TestClient::new(1003)]);
    assert!(r[0].is_ok(), "{r:?}");
}

#[test]
fn sybil_subscriptions_and_retained_bytes_hit_the_canister_wide_caps() {
    let c = WsCanister::new();
    c.configure(WsConfig {
        max_subscriptions: Some(5),
        max_retained_bytes: Some(20_000),
        ..WsConfig::default()
    });
    let mut clients: Vec<TestClient> = (1..=6).map(TestClient::new).collect();
    for (i, cl) in clients.iter_mut().enumerate() {
        c.open(cl, sybil(i as u16));
    }
    // Six sessions subscribe from six principals: the sixth is refused.
    let mut results = Vec::new();
    for (i, cl) in clients.iter_mut().enumerate() {
        let m = cl.message(&c, app_payload(&Inbound::Subscribe("room".into())));
        results.push(c.ws_message(sybil(i as u16), vec![m]).remove(0));
    }
    assert!(
        results[..5].iter().all(|r| *r == MessageResult::Ok),
        "{results:?}"
    );
    assert!(
        matches!(&results[5], MessageResult::Err(WsError::Rejected(m)) if m.contains("5 subscriptions in this canister")),
        "{results:?}"
    );
    assert_eq!(c.usage().subscriptions, 5);

    // Retained bytes: 2 x 8 000 bytes fit in 20 000; the third send is refused whole.
    let a = clients[0].id;
    let r: Result<u64, String> = c.update("app_send_bytes", (a, 8000u32, 2u32));
    assert!(r.is_ok(), "{r:?}");
    let before = (c.usage(), c.client_info(a));
    let r: Result<u64, String> = c.update("app_send_bytes", (a, 8000u32, 1u32));
    assert!(r.unwrap_err().contains("retained bytes in this canister"));
    assert_eq!((c.usage(), c.client_info(a)), before, "nothing was queued");
    // A publish needs room for one copy per subscriber (5 x 1 000 > 20 000 - 16 000 - ...).
    let r: Result<(u64, u64, u64), String> = c.update("app_publish", ("room".to_string(), 1000u32));
    assert!(r.unwrap_err().contains("retained bytes in this canister"));
    assert_eq!(c.usage(), before.0, "a refused publish queues nothing");
    // Acknowledging frees the bytes: the canister-wide count follows the sessions'.
    clients[0].receive_all(&c, &c.poll_all(sybil(0))).unwrap();
    let ack = clients[0].message(&c, ic_ws_protocol::types::MessageKind::KeepAlive);
    assert_eq!(c.ws_message(sybil(0), vec![ack]), vec![MessageResult::Ok]);
    assert!(c.usage().retained_bytes < 1000, "{:?}", c.usage());
    let r: Result<(u64, u64, u64), String> = c.update("app_publish", ("room".to_string(), 1000u32));
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn gateway_records_without_sessions_expire() {
    let c = WsCanister::new();
    c.configure(WsConfig {
        max_gateways: Some(2),
        gateway_retention_ns: Some(60_000_000_000),
        ..WsConfig::default()
    });
    let mut a = TestClient::new(1);
    let mut b = TestClient::new(2);
    c.open(&mut a, sybil(1));
    c.open(&mut b, sybil(2));
    assert_eq!(c.usage().gateways, 2);
    let r = open_all(&c, sybil(3), &mut [TestClient::new(3)]);
    assert!(limit_reached(&r[0], "gateways"), "{r:?}");
    // Both gateways drop their connections: their records have no session now.
    assert_eq!(c.ws_close(sybil(1), vec![a.id]), vec![Ok(())]);
    assert_eq!(c.ws_close(sybil(2), vec![b.id]), vec![Ok(())]);
    c.advance(Duration::from_secs(30));
    assert_eq!(c.usage().gateways, 2, "kept during the retention");
    c.advance(Duration::from_secs(31));
    assert_eq!(c.usage().gateways, 0, "deleted by the housekeeping timer");
    // The detached sessions are still there and resume through a new gateway.
    assert_eq!(c.usage().sessions, 2);
    let mut cl = TestClient::new(3);
    c.open(&mut cl, sybil(3));
    let req = a.open_request(&c, sybil(4), "", true);
    assert!(c.ws_open(sybil(4), vec![req])[0].is_ok());
    assert_eq!(c.usage().gateways, 2);
}

#[test]
fn gateway_policy_callback_decides_in_inspect_message_and_in_the_endpoints() {
    let c = WsCanister::new();
    c.configure(WsConfig {
        gateways: Some(GatewayPolicy::Callback),
        ..WsConfig::default()
    });
    let gw = sybil(7);
    let cl = TestClient::new(1);
    let req = cl.open_request(&c, gw, "hello", false);
    let arg = candid::encode_one(ic_ws_protocol::types::OpenBatch {
        opens: vec![req.clone()],
    })
    .unwrap();
    let e = c.inspect("ws_open", &arg, gw).unwrap_err();
    assert!(e.to_string().contains("rejected"), "{e}");
    // Direct (as from another canister, where inspect_message does not run): the endpoint
    // refuses the whole call.
    let e = c.try_update_raw("ws_open", &arg, gw).unwrap_err();
    assert!(e.to_string().contains("not an allowed gateway"), "{e}");
    assert_eq!(c.usage().sessions, 0);
    // The app registers the principal: now both accept it.
    let () = c.update("app_register_gateway", (gw,));
    c.inspect("ws_open", &arg, gw).unwrap();
    let r = c.ws_open(gw, vec![req]);
    assert!(r[0].is_ok(), "{r:?}");
    // Other principals stay refused.
    assert!(c.inspect("ws_open", &arg, sybil(8)).is_err());
}

/// Junk sessions from many principals, each `on_close` publishing a notice to a room
/// (like the chat's `Left`): their expiry runs from the timer in runs bounded by
/// `housekeeping_instructions`, and an honest open made while they are due costs what it
/// costs without them.
#[test]
fn expiry_of_many_sessions_is_bounded_per_run_and_not_charged_to_honest_calls() {
    let c = WsCanister::new();
    let budget = 200_000_000u64;
    c.configure(WsConfig {
        housekeeping_instructions: Some(budget),
        ..WsConfig::default()
    });
    // Ten honest listeners in the room: each junk close publishes to them.
    let mut listeners: Vec<TestClient> = (0..10).map(|i| TestClient::new(100_000 + i)).collect();
    for cl in listeners.iter_mut() {
        c.open(cl, gateway(1));
        let m = cl.message(&c, app_payload(&Inbound::Subscribe("room".into())));
        assert_eq!(c.ws_message(gateway(1), vec![m]), vec![MessageResult::Ok]);
    }
    let () = c.update("app_set_close_notice", (Some("room".to_string()),));
    let honest_open = |seed: u64| {
        let mut cl = TestClient::new(seed);
        c.open(&mut cl, gateway(1));
        c.last_instructions()
    };
    let baseline = honest_open(200_000);

    // 600 junk sessions from 20 principals.
    for p in 0..20u16 {
        let mut junk: Vec<TestClient> = (0..30)
            .map(|i| TestClient::new(u64::from(p) * 100 + i))
            .collect();
        assert!(open_all(&c, sybil(p), &mut junk).iter().all(Result::is_ok));
    }
    // Time passes without a round: all 600 (and the listeners) are due for expiry.
    c.replica.advance_time(Duration::from_secs(121));
    let honest = honest_open(200_001);
    assert!(c.closes().is_empty(), "the honest call expired nobody");
    assert!(
        honest < baseline * 3 / 2,
        "honest open: {honest} instructions vs {baseline} without due expiries"
    );
    // The timer expires them in several runs, each within the budget (plus one step).
    let rounds = c.run_timers();
    // 600 junk, 10 listeners and the baseline open (the last honest one is fresh).
    assert_eq!(c.closes().len(), 611);
    assert!(
        rounds >= 2,
        "one run of {rounds} did all: budget not applied"
    );
    println!("honest open {honest} vs baseline {baseline}; expiry of 611 in {rounds} timer rounds");
}

#[test]
fn canister_wide_accounting_survives_an_upgrade() {
    let c = WsCanister::new();
    let mut clients: Vec<TestClient> = (1..=3).map(TestClient::new).collect();
    for (i, cl) in clients.iter_mut().enumerate() {
        c.open(cl, sybil(i as u16));
        let m = cl.message(&c, app_payload(&Inbound::Subscribe("room".into())));
        assert_eq!(
            c.ws_message(sybil(i as u16), vec![m]),
            vec![MessageResult::Ok]
        );
    }
    let r: Result<u64, String> = c.update("app_send_bytes", (clients[0].id, 1000u32, 3u32));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(c.ws_close(sybil(2), vec![clients[2].id]), vec![Ok(())]);
    let before = c.usage();
    assert!(before.retained_bytes >= 3000, "{before:?}");
    c.upgrade();
    assert_eq!(c.usage(), before, "recomputed from stable memory");
    // An upgrade clears the canister's timers. This test app writes its own post_upgrade
    // (`post_upgrade = false`), so the housekeeping timer is armed again by the next ws update
    // call (the hook `#[on_message]` generates arms it during the upgrade).
    assert_eq!(
        c.ws_close(sybil(0), vec![]),
        Vec::<Result<(), WsError>>::new()
    );
    // The idle gateway record's retention starts over at the upgrade, then it expires.
    c.advance(Duration::from_secs(601));
    assert_eq!(c.usage().gateways, before.gateways - 1);
}
