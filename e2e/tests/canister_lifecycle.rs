//! Sessions over time in the embedded replica: an upgrade in the middle of a 1 000-message
//! stream, resume through a second gateway, idle expiry, closes reported exactly once.
#![allow(clippy::unwrap_used)]

use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{MessageKind, MessageResult, OutboundBody};
use ic_ws_protocol::{CloseReason, WsError};
use std::time::Duration;

/// Polls as a gateway does (from its cursor) and lets the client verify everything.
fn drain(
    c: &WsCanister,
    gw: candid::Principal,
    cursor: &mut u64,
    client: &mut TestClient,
) -> usize {
    let mut n = 0;
    loop {
        let r = c.ws_poll(gw, *cursor);
        *cursor = r.next_cursor;
        n += client.receive(c, &r).unwrap();
        if !r.more {
            return n;
        }
    }
}

#[test]
fn upgrade_mid_stream_loses_nothing() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    let mut cursor = 0;
    let mut sent = 0u64;
    // 1 000 app messages in batches of 100, the client polling and acknowledging every
    // other batch; an upgrade after 600 (the last 100 not yet polled).
    for round in 0..10 {
        let last: Result<u64, String> = c.update("app_send_bytes", (alice.id, 64u32, 100u32));
        sent += 100;
        assert_eq!(last, Ok(sent));
        if round % 2 == 0 {
            drain(&c, gw, &mut cursor, &mut alice);
            let ack = alice.message(&c, MessageKind::KeepAlive);
            assert_eq!(c.ws_message(gw, vec![ack]), vec![MessageResult::Ok]);
        }
        if round == 5 {
            c.upgrade();
            // The tree was rebuilt in post_upgrade (its shape, hence its root hash, may
            // differ from before: a red-black tree's shape depends on its history) and
            // certified again: the messages not yet polled verify right away, before any
            // update call.
            let n = drain(&c, gw, &mut cursor, &mut alice);
            assert_eq!(n, 100);
            // Inbound messages go on with the next sequence number.
            let m = alice.message(&c, app_payload(&Inbound::Noop));
            assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
        }
    }
    drain(&c, gw, &mut cursor, &mut alice);
    // Opened + 1 000 app messages, each verified, in order, none lost or duplicated.
    assert_eq!(alice.received.len(), 1001);
    for (i, m) in alice.received.iter().enumerate() {
        assert_eq!(m.seq, i as u64);
    }
    assert!(alice.received[1..]
        .iter()
        .all(|m| matches!(outbound(m), Some(Outbound::Bytes(b)) if b.len() == 64)));
    let info = c.client_info(alice.id).unwrap();
    assert_eq!(info.next_inbound_seq, alice.next_inbound);
    assert!(info.open && info.attached);
    // A gateway that restarts (cursor 0) gets every still-retained message again.
    let again = c.poll_all(gw);
    let retained: usize = again.iter().map(|r| r.messages.len()).sum();
    assert_eq!(retained as u64, info.queued_messages);
}

#[test]
fn resume_through_a_second_gateway() {
    let c = WsCanister::new();
    let (gw1, gw2) = (gateway(1), gateway(2));
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw1);
    let _: Result<u64, String> = c.update("app_send_bytes", (alice.id, 10u32, 5u32));
    // Alice receives the first 3 (Opened + 2) through gateway 1, then loses it.
    let r = c.ws_poll(gw1, 0);
    let mut first3 = r.clone();
    first3.messages.truncate(3);
    assert_eq!(alice.receive(&c, &first3).unwrap(), 3);
    assert_eq!(c.ws_close(gw1, vec![alice.id]), vec![Ok(())]);
    assert!(c.ws_poll(gw1, 0).messages.is_empty());
    assert!(c.client_info(alice.id).unwrap().open);
    // Messages sent while detached are retained.
    let _: Result<u64, String> = c.update("app_send", (alice.id, "while away".to_string()));

    c.advance(Duration::from_secs(1));
    let req = alice.open_request(&c, gw2, "", true);
    let ok = c.ws_open(gw2, vec![req]).remove(0).unwrap();
    assert_eq!(ok.client_id, alice.id);
    assert_eq!(ok.opened_seq, 7);
    // Through gateway 2: 3..=5, "while away" (6), then the resumed Opened (7).
    let replies = c.poll_all(gw2);
    assert_eq!(alice.receive_all(&c, &replies).unwrap(), 5);
    assert_eq!(
        outbound(&alice.received[6]),
        Some(Outbound::Text("while away".into()))
    );
    assert!(matches!(
        alice.received[7].content.body,
        OutboundBody::Opened { resumed: true, .. }
    ));
    // on_open ran once for the session.
    let opens: Vec<(u64, String)> = c.query("app_opens", (), gw1);
    assert_eq!(opens.len(), 1);
    // Gateway 1 can no longer act for alice; gateway 2 can.
    let m = alice.message(&c, app_payload(&Inbound::Echo("hi".into())));
    assert_eq!(
        c.ws_message(gw1, vec![m.clone()]),
        vec![MessageResult::Err(WsError::WrongGateway)]
    );
    assert_eq!(c.ws_message(gw2, vec![m]), vec![MessageResult::Ok]);
    // Resuming from before the oldest retained message is refused plainly (alice acked 8).
    let ack = alice.message(&c, MessageKind::KeepAlive);
    assert_eq!(c.ws_message(gw2, vec![ack]), vec![MessageResult::Ok]);
    c.advance(Duration::from_secs(1));
    let mut stale = TestClient {
        id: alice.id,
        key: alice.key.clone(),
        next_outbound: 2,
        ..TestClient::new(0)
    };
    stale.next_inbound = 0;
    let r = c
        .ws_open(gw1, vec![stale.open_request(&c, gw1, "", true)])
        .remove(0);
    assert_eq!(r, Err(WsError::ResumeUnavailable { first_available: 8 }));
}

#[test]
fn idle_sessions_expire_once_with_a_certified_reason() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    let mut bob = TestClient::new(2);
    c.open(&mut alice, gw);
    c.open(&mut bob, gw);
    c.advance(Duration::from_secs(100));
    let m = bob.message(&c, MessageKind::KeepAlive);
    assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
    c.advance(Duration::from_secs(30));
    // Alice has been silent for 130 s (> 120 s): the next update call expires her.
    let m = bob.message(&c, MessageKind::KeepAlive);
    assert_eq!(c.ws_message(gw, vec![m]), vec![MessageResult::Ok]);
    assert_eq!(c.closes(), vec![(alice.id, "Expired".to_string())]);
    let info = c.client_info(alice.id).unwrap();
    assert!(!info.open);
    // Alice's last certified message says why.
    alice.receive_all(&c, &c.poll_all(gw)).unwrap();
    assert_eq!(
        alice.received.last().unwrap().content.body,
        OutboundBody::Closed {
            reason: CloseReason::Expired
        }
    );
    // Her messages are refused now; sends too.
    let m = alice.message(&c, MessageKind::KeepAlive);
    assert_eq!(
        c.ws_message(gw, vec![m]),
        vec![MessageResult::Err(WsError::Closed)]
    );
    let r: Result<u64, String> = c.update("app_send", (alice.id, "late".to_string()));
    assert!(r.is_err());
    // After the retention period it is deleted; on_close was reported exactly once.
    c.advance(Duration::from_secs(700));
    let () = c.update("app_housekeeping", ());
    assert_eq!(c.client_info(alice.id), None);
    let closes = c.closes();
    assert!(
        closes.iter().all(|(_, r)| !r.contains("AGAIN")),
        "{closes:?}"
    );
    assert_eq!(closes.iter().filter(|(id, _)| *id == alice.id).count(), 1);
}

#[test]
fn client_and_app_closes_are_reported_once() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    let mut bob = TestClient::new(2);
    let mut carol = TestClient::new(3);
    c.open(&mut alice, gw);
    c.open(&mut bob, gw);
    c.open(&mut carol, gw);
    let batch = vec![
        alice.message(
            &c,
            MessageKind::Close {
                code: 1000,
                reason: "bye".into(),
            },
        ),
        bob.message(&c, app_payload(&Inbound::CloseMe)),
    ];
    assert_eq!(
        c.ws_message(gw, batch),
        vec![MessageResult::Ok, MessageResult::Ok]
    );
    let closed: bool = c.update("app_close", (carol.id, 4001u16, "kicked".to_string()));
    assert!(closed);
    let again: bool = c.update("app_close", (carol.id, 4001u16, "kicked".to_string()));
    assert!(!again);
    let mut closes = c.closes();
    closes.sort();
    assert_eq!(
        closes,
        vec![
            (
                alice.id,
                "ClientClosed { code: 1000, reason: \"bye\" }".to_string()
            ),
            (
                bob.id,
                "AppClosed { code: 4000, reason: \"asked to\" }".to_string()
            ),
            (
                carol.id,
                "AppClosed { code: 4001, reason: \"kicked\" }".to_string()
            ),
        ]
    );
    let replies = c.poll_all(gw);
    for client in [&mut alice, &mut bob, &mut carol] {
        client.receive_all(&c, &replies).unwrap();
        assert!(matches!(
            client.received.last().unwrap().content.body,
            OutboundBody::Closed { .. }
        ));
    }
}
