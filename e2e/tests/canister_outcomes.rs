//! Certified outcomes (protocol version 2), on the real wasm in the embedded replica: a
//! refusal by the app's `on_open`, a refused accepted message and the resume of a closed
//! session reach the client as certified messages (checked as a client checks them: BLS
//! certificate, witness, sequence), at the right sequence number, naming the right key and
//! open timestamp; everything else stays as it was.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{MessageKind, MessageResult, OutboundBody};
use ic_ws_protocol::{CloseReason, WsError};
use std::time::Duration;

/// The client's certified messages through `gw` (verified like a client does).
fn certified(c: &WsCanister, client: &mut TestClient, gw: Principal) -> Vec<(u64, OutboundBody)> {
    let from = client.received.len();
    client.receive_all(c, &c.poll_all(gw)).unwrap();
    client.received[from..]
        .iter()
        .map(|m| (m.seq, m.content.body.clone()))
        .collect()
}

fn opens(c: &WsCanister) -> usize {
    let o: Vec<(u64, String)> = c.query("app_opens", (), Principal::anonymous());
    o.len()
}

#[test]
fn refused_open_is_certified_at_seq_0_of_a_closed_session() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    let alice_before = c.client_info(alice.id);
    let opens_before = opens(&c);

    let mut bob = TestClient::new(2);
    let req = bob.open_request(&c, gw, "reject", false);
    let r = c.ws_open(gw, vec![req.clone()]).remove(0);
    let Err(WsError::OpenRejected { client_id, reason }) = r else {
        panic!("expected OpenRejected, got {r:?}");
    };
    assert_eq!(reason, "rejected by the test app");
    bob.id = client_id;
    assert_eq!(
        certified(&c, &mut bob, gw),
        vec![(
            0,
            OutboundBody::OpenRejected {
                client_key: bob.key.public_key(),
                open_timestamp_ns: req.timestamp_ns,
                error: WsError::Rejected("rejected by the test app".into()),
            }
        )]
    );
    // The session is closed, attached to the gateway, holds just that message; on_open's
    // refusal ran no on_close and recorded no open; alice is untouched.
    let info = c.client_info(client_id).unwrap();
    assert!(!info.open && info.attached);
    assert_eq!((info.next_outbound_seq, info.queued_messages), (1, 1));
    assert!(c.closes().iter().all(|(id, _)| *id != client_id));
    assert_eq!(opens(&c), opens_before);
    assert_eq!(c.client_info(alice.id), alice_before);
    // It takes no message.
    let m = bob.message_at(&c, 0, MessageKind::KeepAlive);
    assert_eq!(
        c.ws_message(gw, vec![m]),
        vec![MessageResult::Err(WsError::Closed)]
    );

    // Open arguments that do not decode (a nat where the app takes a text): DecodeError,
    // certified the same way.
    let mut carol = TestClient::new(3);
    let mut req = carol.open_request(&c, gw, "x", false);
    req.args = candid::encode_one(7u64).unwrap();
    carol.key.sign_open(&c.canister, &mut req);
    let r = c.ws_open(gw, vec![req.clone()]).remove(0);
    let Err(WsError::OpenRejected { client_id, .. }) = r else {
        panic!("expected OpenRejected, got {r:?}");
    };
    carol.id = client_id;
    match &certified(&c, &mut carol, gw)[..] {
        [(
            0,
            OutboundBody::OpenRejected {
                client_key,
                open_timestamp_ns,
                error: WsError::DecodeError(text),
            },
        )] => {
            assert_eq!(client_key, &carol.key.public_key());
            assert_eq!(*open_timestamp_ns, req.timestamp_ns);
            assert!(text.contains("do not decode"), "{text}");
        }
        other => panic!("{other:?}"),
    }

    // Deleted `closed_retention` later, still without on_close.
    c.advance(Duration::from_secs(601));
    c.open(&mut TestClient::new(4), gw); // any update call does the housekeeping
    assert_eq!(c.client_info(bob.id), None);
    assert!(c.closes().iter().all(|(id, _)| *id != bob.id));
}

#[test]
fn refused_message_is_certified_at_its_inbound_seq() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    let m0 = alice.message(&c, app_payload(&Inbound::Fail));
    assert_eq!(
        c.ws_message(gw, vec![m0.clone()]),
        vec![MessageResult::Err(WsError::Rejected(
            "fail requested".into()
        ))]
    );
    let m1 = alice.message(&c, MessageKind::App(vec![0xde, 0xad]));
    let r = c.ws_message(gw, vec![m1]);
    assert!(
        matches!(r[..], [MessageResult::Err(WsError::DecodeError(_))]),
        "{r:?}"
    );
    let got = certified(&c, &mut alice, gw);
    assert!(matches!(got[0].1, OutboundBody::Opened { .. }));
    assert_eq!(
        got[1],
        (
            1,
            OutboundBody::MessageRejected {
                inbound_seq: 0,
                error: WsError::Rejected("fail requested".into())
            }
        )
    );
    assert!(matches!(
        got[2],
        (
            2,
            OutboundBody::MessageRejected {
                inbound_seq: 1,
                error: WsError::DecodeError(_)
            }
        )
    ));
    assert_eq!(got.len(), 3);
    // The duplicate of a refused message is a no-op: no second refusal.
    assert_eq!(c.ws_message(gw, vec![m0]), vec![MessageResult::Duplicate]);
    assert_eq!(c.client_info(alice.id).unwrap().next_outbound_seq, 3);
    // The session goes on.
    let m = alice.message(&c, app_payload(&Inbound::Echo("on".into())));
    assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
    assert_eq!(c.client_info(alice.id).unwrap().next_inbound_seq, 3);
}

#[test]
fn resume_of_a_closed_session_delivers_its_certified_close() {
    let c = WsCanister::new();
    let (gw1, gw2) = (gateway(1), gateway(2));
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw1);
    alice.receive_all(&c, &c.poll_all(gw1)).unwrap(); // Opened (seq 0)
    let m = alice.message(&c, app_payload(&Inbound::CloseMe));
    assert_eq!(c.ws_message(gw1, vec![m]), vec![MessageResult::Ok]);
    // Gateway 1 loses the client before delivering the Closed (seq 1).
    assert_eq!(c.ws_close(gw1, vec![alice.id]), vec![Ok(())]);
    c.advance(Duration::from_millis(5));
    // Another key: InvalidResume, nothing queued.
    let mut thief = TestClient::new(66);
    thief.id = alice.id;
    thief.next_outbound = 1;
    assert_eq!(
        c.ws_open(gw2, vec![thief.open_request(&c, gw2, "", true)])[0],
        Err(WsError::InvalidResume)
    );
    assert!(c.ws_poll(gw2, 0).messages.is_empty());
    // The owner: `Closed` (uncertified) and the certified `Closed` queued for gateway 2.
    let resume = alice.open_request(&c, gw2, "", true);
    assert_eq!(
        c.ws_open(gw2, vec![resume.clone()])[0],
        Err(WsError::Closed)
    );
    assert_eq!(
        certified(&c, &mut alice, gw2),
        vec![(
            1,
            OutboundBody::Closed {
                reason: CloseReason::AppClosed {
                    code: 4000,
                    reason: "asked to".into()
                }
            }
        )]
    );
    assert_eq!(
        c.closes().iter().filter(|(id, _)| *id == alice.id).count(),
        1
    );
    // The replay of that resume is stale.
    assert_eq!(c.ws_open(gw2, vec![resume])[0], Err(WsError::StaleOpen));
}
