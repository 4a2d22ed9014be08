//! ic-ws runtime in the embedded replica: open, message batches, send, poll and the client's
//! verification of what it receives (certificate against the replica's root key, witness
//! pruned as a gateway prunes it, sequence, content).
#![allow(clippy::unwrap_used)]

use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{MessageKind, MessageResult, OutboundBody};
use ic_ws_protocol::WsError;

#[test]
fn open_message_send_poll_verify() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    let mut bob = TestClient::new(2);
    c.open(&mut alice, gw);
    c.open(&mut bob, gw);
    assert_ne!(alice.id, bob.id);

    // One batch, two clients, in order, each with its own result.
    let batch = vec![
        alice.message(&c, app_payload(&Inbound::Echo("a0".into()))),
        bob.message(&c, app_payload(&Inbound::Echo("b0".into()))),
        alice.message(&c, app_payload(&Inbound::Fail)),
        alice.message(&c, MessageKind::KeepAlive),
        bob.message(&c, MessageKind::App(b"not candid".to_vec())),
    ];
    let results = c.ws_message(gw, batch);
    assert_eq!(results[0], MessageResult::Ok);
    assert_eq!(results[1], MessageResult::Ok);
    assert!(
        matches!(&results[2], MessageResult::Err(WsError::Rejected(r)) if r.contains("fail requested")),
        "{results:?}"
    );
    assert_eq!(results[3], MessageResult::Ok);
    assert!(
        matches!(results[4], MessageResult::Err(WsError::DecodeError(_))),
        "{results:?}"
    );

    // The app sends from its own update method too (after alice's certified refusal, seq 2).
    let seq: Result<u64, String> = c.update("app_send", (alice.id, "from the app".to_string()));
    assert_eq!(seq, Ok(3));

    // The gateway polls; each client verifies its own part.
    let replies = c.poll_all(gw);
    assert_eq!(alice.receive_all(&c, &replies).unwrap(), 4);
    assert_eq!(bob.receive_all(&c, &replies).unwrap(), 3);
    match &alice.received[0].content.body {
        OutboundBody::Opened {
            client_key,
            resumed,
            ..
        } => {
            assert_eq!(client_key, &alice.key.public_key());
            assert!(!resumed);
        }
        other => panic!("first message must be Opened: {other:?}"),
    }
    assert_eq!(
        outbound(&alice.received[1]),
        Some(Outbound::Echo("a0".into()))
    );
    // Refusals of accepted messages are certified (protocol version 2).
    assert!(matches!(
        &alice.received[2].content.body,
        OutboundBody::MessageRejected { inbound_seq: 1, error: WsError::Rejected(r) } if r.contains("fail requested")
    ));
    assert_eq!(
        outbound(&alice.received[3]),
        Some(Outbound::Text("from the app".into()))
    );
    assert_eq!(
        outbound(&bob.received[1]),
        Some(Outbound::Echo("b0".into()))
    );
    assert!(matches!(
        &bob.received[2].content.body,
        OutboundBody::MessageRejected {
            inbound_seq: 1,
            error: WsError::DecodeError(_)
        }
    ));

    // Acknowledging releases: after alice's ack, only what she has not acked is retained.
    let ack = alice.message(&c, MessageKind::KeepAlive);
    assert_eq!(c.ws_message(gw, vec![ack]), vec![MessageResult::Ok]);
    let info = c.client_info(alice.id).unwrap();
    assert_eq!(
        (
            info.first_retained_seq,
            info.queued_messages,
            info.next_inbound_seq
        ),
        (4, 0, 4)
    );
    let replies = c.poll_all(gw);
    assert!(replies
        .iter()
        .all(|r| r.messages.iter().all(|m| m.client_id != alice.id)));

    // The app saw one on_open per session, with the open's args.
    let opens: Vec<(u64, String)> = c.query("app_opens", (), gw);
    assert_eq!(
        opens,
        vec![(alice.id, "hello".into()), (bob.id, "hello".into())]
    );
}

#[test]
fn a_gateway_cannot_forge_alter_or_misdeliver() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut alice = TestClient::new(1);
    let mut bob = TestClient::new(2);
    c.open(&mut alice, gw);
    c.open(&mut bob, gw);
    let _: Result<u64, String> = c.update("app_send", (alice.id, "secret".to_string()));
    let reply = c.ws_poll(gw, 0);

    // Altered content.
    let mut altered = reply.clone();
    for m in altered
        .messages
        .iter_mut()
        .filter(|m| m.client_id == alice.id)
    {
        if m.seq == 1 {
            let last = m.content.len() - 1;
            m.content[last] ^= 1;
        }
    }
    let mut a2 = TestClient {
        id: alice.id,
        ..TestClient::new(1)
    };
    assert!(matches!(
        a2.receive(&c, &altered),
        Err(ic_ws_protocol::verify::VerifyError::NotCertified { seq: 1 })
    ));
    // Alice's message handed to bob (renumbered into his stream).
    let mut stolen = reply.clone();
    for m in stolen.messages.iter_mut() {
        if m.client_id == alice.id {
            m.client_id = bob.id;
        }
    }
    stolen.messages.retain(|m| m.client_id == bob.id);
    stolen.messages.sort_by_key(|m| m.seq);
    stolen.messages.dedup_by_key(|m| m.seq);
    let mut b2 = TestClient {
        id: bob.id,
        ..TestClient::new(2)
    };
    // Either the witness lacks the path or the hash differs: never accepted.
    let n_bob_own = reply
        .messages
        .iter()
        .filter(|m| m.client_id == bob.id)
        .count();
    match b2.receive(&c, &stolen) {
        Err(_) => {}
        Ok(n) => assert_eq!(n, n_bob_own, "only bob's own certified messages may verify"),
    }
    // Dropping seq 0 (reordering / gap).
    let mut gap = reply.clone();
    gap.messages
        .retain(|m| !(m.client_id == alice.id && m.seq == 0));
    let mut a3 = TestClient {
        id: alice.id,
        ..TestClient::new(1)
    };
    assert!(matches!(
        a3.receive(&c, &gap),
        Err(ic_ws_protocol::verify::VerifyError::OutOfSequence {
            expected: 0,
            got: 1
        })
    ));
    // The untampered reply verifies.
    assert_eq!(alice.receive(&c, &reply).unwrap(), 2);
    assert_eq!(bob.receive(&c, &reply).unwrap(), 1);
}
