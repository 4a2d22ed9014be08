//! Every rejection the runtime makes, attacked through the real endpoints in the embedded
//! replica, must leave the canister unchanged: same client info, same poll output on both
//! gateways, same certified data. And the session goes on afterwards.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{ClientMessage, MessageResult, OutboundMessage};
use ic_ws_protocol::{SessionKey, WsError};

type Snapshot = (
    Option<ClientInfo>,
    Vec<OutboundMessage>,
    Vec<OutboundMessage>,
    Vec<u8>,
    u64,
);

fn snapshot(c: &WsCanister, id: u64) -> Snapshot {
    let opens: Vec<(u64, String)> = c.query("app_opens", (), Principal::anonymous());
    (
        c.client_info(id),
        c.ws_poll(gateway(1), 0).messages,
        c.ws_poll(gateway(2), 0).messages,
        c.certified_data(),
        opens.len() as u64,
    )
}

#[test]
fn rejected_messages_change_nothing() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    let first = alice.message(&c, app_payload(&Inbound::Echo("first".into())));
    assert_eq!(
        c.ws_message(gw, vec![first.clone()]),
        vec![MessageResult::Ok]
    );
    let before = snapshot(&c, alice.id);
    let echo = |t: &str| app_payload(&Inbound::Echo(t.into()));

    let mut attacks: Vec<(&str, ClientMessage, Principal, WsError)> = Vec::new();
    // Bad signature: content altered after signing.
    let mut m = alice.message_at(&c, 1, echo("real"));
    m.kind = echo("forged");
    attacks.push(("altered", m, gw, WsError::InvalidSignature));
    // Signed for another canister (same bytes otherwise).
    let mut m = ClientMessage {
        client_id: alice.id,
        seq: 1,
        ack: 0,
        kind: echo("x"),
        signature: vec![],
    };
    alice
        .key
        .sign_message(&Principal::from_slice(&[0xAB; 10]), &mut m);
    attacks.push(("wrong canister", m, gw, WsError::InvalidSignature));
    // Signed by another key.
    let mut m = ClientMessage {
        client_id: alice.id,
        seq: 1,
        ack: 0,
        kind: echo("x"),
        signature: vec![],
    };
    SessionKey::from_seed([0x99; 32]).sign_message(&c.canister, &mut m);
    attacks.push(("other key", m, gw, WsError::InvalidSignature));
    // Relayed through another gateway.
    attacks.push((
        "wrong gateway",
        alice.message_at(&c, 1, echo("x")),
        gateway(2),
        WsError::WrongGateway,
    ));
    // Anonymous caller.
    attacks.push((
        "anonymous",
        alice.message_at(&c, 1, echo("x")),
        Principal::anonymous(),
        WsError::WrongGateway,
    ));
    // Out of sequence.
    attacks.push((
        "out of sequence",
        alice.message_at(&c, 7, echo("x")),
        gw,
        WsError::OutOfSequence {
            expected: 1,
            got: 7,
        },
    ));
    // Unknown client.
    let mut m = alice.message_at(&c, 1, echo("x"));
    m.client_id = 4242;
    attacks.push(("unknown client", m, gw, WsError::UnknownClient(4242)));
    // Oversized payload (over the 64 KiB default).
    let big = "z".repeat(65 * 1024);
    attacks.push((
        "oversized",
        alice.message_at(&c, 1, echo(&big)),
        gw,
        WsError::TooLarge {
            size: 0,
            limit: 64 * 1024,
        },
    ));
    // Malformed signature.
    let mut m = alice.message_at(&c, 1, echo("x"));
    m.signature = vec![1, 2, 3];
    attacks.push(("malformed signature", m, gw, WsError::MalformedKey));

    for (name, m, caller, expected) in attacks {
        let r = c.ws_message(caller, vec![m]);
        match (&r[0], &expected) {
            (
                MessageResult::Err(WsError::TooLarge { limit, .. }),
                WsError::TooLarge { limit: l, .. },
            ) => {
                assert_eq!(limit, l, "{name}")
            }
            (got, _) => assert_eq!(got, &MessageResult::Err(expected.clone()), "{name}"),
        }
        assert_eq!(
            snapshot(&c, alice.id),
            before,
            "{name} changed the canister's state"
        );
    }
    // A replayed accepted message: Duplicate, nothing changes (and no second echo).
    assert_eq!(
        c.ws_message(gw, vec![first]),
        vec![MessageResult::Duplicate]
    );
    assert_eq!(
        snapshot(&c, alice.id),
        before,
        "duplicate changed the state"
    );

    // The session goes on.
    let m = alice.message(&c, echo("second"));
    assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
    assert_eq!(c.client_info(alice.id).unwrap().next_inbound_seq, 2);
}

#[test]
fn rejected_opens_change_nothing() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    let accepted_open = alice.open_request(&c, gw, "hello", false);
    let before = snapshot(&c, alice.id);
    c.advance(std::time::Duration::from_millis(1));

    let mut attacks: Vec<(&str, ic_ws_protocol::types::OpenRequest, Principal, WsError)> =
        Vec::new();
    // Replayed open: the same signed request again (timestamp not newer).
    attacks.push((
        "replayed open",
        accepted_open.clone(),
        gw,
        WsError::StaleOpen,
    ));
    // Bad signature.
    let mut o = alice.open_request(&c, gw, "hello", false);
    o.args = candid::encode_one("changed".to_string()).unwrap();
    attacks.push(("altered open", o, gw, WsError::InvalidSignature));
    // Signed for another canister.
    let mut o = alice.open_request(&c, gw, "hello", false);
    alice
        .key
        .sign_open(&Principal::from_slice(&[0xAB; 10]), &mut o);
    attacks.push(("wrong canister", o, gw, WsError::InvalidSignature));
    // Relayed by a gateway other than the one the client named.
    attacks.push((
        "gateway mismatch",
        alice.open_request(&c, gw, "hello", false),
        gateway(2),
        WsError::GatewayMismatch,
    ));
    // Anonymous gateway.
    let o = alice.open_request(&c, Principal::anonymous(), "hello", false);
    attacks.push((
        "anonymous",
        o,
        Principal::anonymous(),
        WsError::AnonymousGateway,
    ));
    // Hijack: resume alice's session with another key.
    let mut thief = TestClient::new(66);
    thief.id = alice.id;
    attacks.push((
        "hijack resume",
        thief.open_request(&c, gw, "hello", true),
        gw,
        WsError::InvalidResume,
    ));
    // Resume beyond what was sent.
    let mut ahead = TestClient::new(1);
    ahead.id = alice.id;
    ahead.next_outbound = 99;
    attacks.push((
        "resume ahead",
        ahead.open_request(&c, gw, "hello", true),
        gw,
        WsError::InvalidResume,
    ));
    // Clock skew (10 minutes in the future).
    let mut o = alice.open_request(&c, gw, "hello", false);
    o.timestamp_ns += 600_000_000_000;
    alice.key.sign_open(&c.canister, &mut o);
    attacks.push(("future timestamp", o, gw, WsError::StaleOpen));
    // (A refusal by the app's on_open is certified and keeps a closed session: see
    // `canister_outcomes.rs`.)

    for (name, o, caller, expected) in attacks {
        let r = c.ws_open(caller, vec![o]);
        assert_eq!(r[0], Err(expected), "{name}");
        assert_eq!(
            snapshot(&c, alice.id),
            before,
            "{name} changed the canister's state"
        );
    }
}

/// A gateway that kept the signed bytes of a refused open replays them later: the real wasm
/// answers `StaleOpen` (it used to forget the refused open and run `on_open` again, which
/// gave the session to the gateway once the app's reason for refusing was gone).
#[test]
fn refused_opens_cannot_be_replayed() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut bob = TestClient::new(2);
    let refused = bob.open_request(&c, gw, "reject", false);
    let Err(WsError::OpenRejected { client_id, reason }) =
        c.ws_open(gw, vec![refused.clone()]).remove(0)
    else {
        panic!("on_open's refusal is OpenRejected");
    };
    assert_eq!(reason, "rejected by the test app");
    c.advance(std::time::Duration::from_secs(1));
    // The replay: stale (refused before any state changes, `on_open` does not run).
    let before = snapshot(&c, client_id);
    assert_eq!(c.ws_open(gw, vec![refused])[0], Err(WsError::StaleOpen));
    assert_eq!(snapshot(&c, client_id), before);
    // A refused resume (unknown session) is consumed the same way.
    let mut ghost = TestClient::new(3);
    ghost.id = 4242;
    let resume = ghost.open_request(&c, gw, "hello", true);
    assert_eq!(
        c.ws_open(gw, vec![resume.clone()])[0],
        Err(WsError::UnknownClient(4242))
    );
    assert_eq!(c.ws_open(gw, vec![resume])[0], Err(WsError::StaleOpen));
    // The client's own next open, newer, is accepted.
    c.advance(std::time::Duration::from_millis(1));
    c.open(&mut bob, gw);
    assert!(c.client_info(bob.id).is_some());
}
