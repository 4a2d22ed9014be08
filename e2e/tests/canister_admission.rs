//! Admission of whole calls in the real wasm (through the macros): oversized batches and
//! principals the gateway policy refuses are stopped by the generated
//! `canister_inspect_message` before they execute and by the endpoints if they execute anyway;
//! many principals at once (Sybil) share one canister-wide session cap.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{CloseBatch, MessageBatch, WsError};

fn closes(n: u64) -> Vec<u8> {
    candid::encode_one(CloseBatch {
        clients: (0..n).collect(),
    })
    .unwrap()
}

#[test]
fn oversized_batches_are_refused_before_and_at_execution() {
    let c = WsCanister::new();
    let gw = gateway(1);
    // The default cap is the gateway's default batch (500 entries).
    assert!(c.inspect("ws_close", &closes(500), gw).is_ok());
    assert!(c.try_update_raw("ws_close", &closes(500), gw).is_ok());
    // (As on the IC, a message that inspect_message does not accept is rejected with IC0406,
    // without the canister's reason.)
    let refused = c.inspect("ws_close", &closes(501), gw).unwrap_err();
    assert_eq!(refused.error_code.as_deref(), Some("IC0406"), "{refused:?}");
    // Executed anyway (an inter-canister call skips inspect_message): refused whole, cheaply.
    let trap = c.try_update_raw("ws_close", &closes(501), gw).unwrap_err();
    assert!(format!("{trap:?}").contains("501 entries"), "{trap:?}");
    // 15 000 junk messages in one call (the 3.8 s call): refused before verification.
    let junk = MessageBatch {
        messages: (0..15_000)
            .map(|i| ic_ws_protocol::types::ClientMessage {
                client_id: i,
                seq: 0,
                ack: 0,
                kind: ic_ws_protocol::types::MessageKind::KeepAlive,
                signature: vec![0; 64],
            })
            .collect(),
    };
    let junk = candid::encode_one(junk).unwrap();
    assert!(c.inspect("ws_message", &junk, gw).is_err());
    let inspected = c.last_instructions();
    assert!(c.try_update_raw("ws_message", &junk, gw).is_err());
    let executed = c.last_instructions();
    eprintln!(
        "refusing 15,000 entries ({} bytes): inspect_message {inspected} instructions, endpoint {executed}",
        junk.len()
    );
    // Verifying them would cost ~28 billion (1.87M each).
    assert!(inspected > 0 && inspected < 2_000_000_000, "{inspected}");
    assert!(executed < 2_000_000_000, "{executed}");
    // Junk arguments, anonymous callers and ws_poll as an update never pass inspection.
    assert!(c.inspect("ws_message", b"not candid", gw).is_err());
    assert!(c
        .inspect("ws_close", &closes(1), Principal::anonymous())
        .is_err());
    assert!(c.inspect("ws_poll", &[], gw).is_err());
    // The app's own methods are left to the app.
    assert!(c
        .inspect(
            "app_configure_big_queues",
            &candid::encode_args(()).unwrap(),
            gw
        )
        .is_ok());
    // A smaller configured cap applies to both.
    c.configure(WsConfig {
        max_entries_per_call: Some(10),
        ..WsConfig::default()
    });
    assert!(c.inspect("ws_close", &closes(11), gw).is_err());
    assert!(c.try_update_raw("ws_close", &closes(11), gw).is_err());
    assert!(c.try_update_raw("ws_close", &closes(10), gw).is_ok());
}

#[test]
fn a_gateway_allowlist_refuses_other_principals() {
    let c = WsCanister::new();
    let (allowed, other) = (gateway(1), gateway(2));
    let mut alice = TestClient::new(1);
    c.open(&mut alice, other);
    c.configure(WsConfig {
        gateways: Some(GatewayPolicy::Allowlist(vec![allowed])),
        ..WsConfig::default()
    });
    // Refused by inspection and by the endpoint, without touching any session.
    let before = c.client_info(alice.id).unwrap();
    assert!(c.inspect("ws_close", &closes(1), other).is_err());
    let trap = c
        .try_update_raw(
            "ws_close",
            &candid::encode_one(CloseBatch {
                clients: vec![alice.id],
            })
            .unwrap(),
            other,
        )
        .unwrap_err();
    assert!(
        format!("{trap:?}").contains("not an allowed gateway"),
        "{trap:?}"
    );
    assert_eq!(c.client_info(alice.id).unwrap(), before);
    // The allowed gateway works: alice resumes through it.
    assert!(c.inspect("ws_close", &closes(1), allowed).is_ok());
    c.advance(std::time::Duration::from_millis(1));
    let resume = alice.open_request(&c, allowed, "hello", true);
    assert!(c.ws_open(allowed, vec![resume])[0].is_ok());
}

/// Sybil: many self-made principals act as gateways. The canister-wide cap bounds what they
/// make the canister hold, with a typed error and no state change.
#[test]
fn sybil_gateways_share_the_canister_wide_session_cap() {
    let c = WsCanister::new();
    c.configure(WsConfig {
        max_sessions: Some(20),
        max_sessions_per_gateway: 5,
        ..WsConfig::default()
    });
    let mut opened = 0;
    for g in 0..10u8 {
        for k in 0..5u64 {
            let client = TestClient::new(1000 + u64::from(g) * 10 + k);
            let r = c.ws_open(
                gateway(g + 10),
                vec![client.open_request(&c, gateway(g + 10), "hello", false)],
            );
            match &r[0] {
                Ok(_) => opened += 1,
                Err(WsError::LimitReached(why)) => {
                    assert!(why.contains("in this canister"), "{why}")
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
    }
    assert_eq!(opened, 20);
}
