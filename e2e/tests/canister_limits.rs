//! Limits in the embedded replica: queue limits with both overflow policies, poll replies
//! capped in count and bytes (always under the 3 MiB query reply limit), and topic fan-out
//! to 1 000 subscribers with one stored payload.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_e2e::canister_harness::*;
use ic_ws_protocol::types::{MessageKind, MessageResult, OutboundBody, PollRequest};
use ic_ws_protocol::CloseReason;

#[test]
fn queue_limit_closes_or_rejects() {
    let c = WsCanister::new();
    let gw = gateway(1);
    c.configure(WsConfig {
        max_queued_messages: 10,
        ..WsConfig::default()
    });
    let mut alice = TestClient::new(1);
    c.open(&mut alice, gw);
    // Opened + 9 fit; the 10th app message overflows: policy Close.
    let r: Result<u64, String> = c.update("app_send_bytes", (alice.id, 10u32, 9u32));
    assert_eq!(r, Ok(9));
    let r: Result<u64, String> = c.update("app_send_bytes", (alice.id, 10u32, 1u32));
    assert!(r.unwrap_err().contains("overflowed"));
    assert_eq!(c.closes(), vec![(alice.id, "QueueOverflow".to_string())]);
    alice.receive_all(&c, &c.poll_all(gw)).unwrap();
    assert_eq!(alice.received.len(), 11);
    assert_eq!(
        alice.received.last().unwrap().content.body,
        OutboundBody::Closed {
            reason: CloseReason::QueueOverflow
        }
    );

    // Policy Reject: the send fails, nothing is queued, the session stays open; an ack
    // makes room again.
    c.configure(WsConfig {
        max_queued_messages: 10,
        overflow_policy: OverflowPolicy::Reject,
        ..WsConfig::default()
    });
    let mut bob = TestClient::new(2);
    c.open(&mut bob, gw);
    let r: Result<u64, String> = c.update("app_send_bytes", (bob.id, 10u32, 9u32));
    assert_eq!(r, Ok(9));
    let before = c.client_info(bob.id);
    let r: Result<u64, String> = c.update("app_send_bytes", (bob.id, 10u32, 1u32));
    assert!(r.unwrap_err().contains("full"));
    assert_eq!(c.client_info(bob.id), before);
    bob.receive_all(&c, &c.poll_all(gw)).unwrap();
    let ack = bob.message(&c, MessageKind::KeepAlive);
    assert_eq!(c.ws_message(gw, vec![ack]), vec![MessageResult::Ok]);
    let r: Result<u64, String> = c.update("app_send_bytes", (bob.id, 10u32, 1u32));
    assert_eq!(r, Ok(10));
    // Byte limit too.
    c.configure(WsConfig {
        max_queued_bytes: 1000,
        overflow_policy: OverflowPolicy::Reject,
        ..WsConfig::default()
    });
    let r: Result<u64, String> = c.update("app_send_bytes", (bob.id, 2000u32, 1u32));
    assert!(r.unwrap_err().contains("full"));
}

#[test]
fn poll_replies_are_capped_in_count_and_bytes() {
    let c = WsCanister::new();
    let gw = gateway(1);
    // 8 clients x 4 messages of 240 KiB = 7.5 MiB pending, plus 600 small messages.
    let mut clients: Vec<TestClient> = (0..8).map(TestClient::new).collect();
    for cl in clients.iter_mut() {
        c.open(cl, gw);
        let r: Result<u64, String> = c.update("app_send_bytes", (cl.id, 240u32 * 1024, 4u32));
        assert_eq!(r, Ok(4));
    }
    let mut small = TestClient::new(100);
    c.open(&mut small, gw);
    let r: Result<u64, String> = c.update("app_send_bytes", (small.id, 8u32, 600u32));
    assert_eq!(r, Ok(600));

    let mut cursor = 0;
    let mut polls = 0;
    loop {
        let reply = c.ws_poll(gw, cursor);
        let encoded = candid::encode_one(Ok::<_, ic_ws_protocol::WsError>(reply.clone())).unwrap();
        assert!(
            encoded.len() < 3 * 1024 * 1024,
            "reply of {} bytes",
            encoded.len()
        );
        assert!(reply.messages.len() <= 500);
        for cl in clients.iter_mut().chain(std::iter::once(&mut small)) {
            cl.receive(&c, &reply).unwrap();
        }
        cursor = reply.next_cursor;
        polls += 1;
        if !reply.more {
            break;
        }
    }
    assert!(polls >= 6, "7.5 MiB must take several polls, took {polls}");
    for cl in &clients {
        assert_eq!(cl.received.len(), 5);
    }
    assert_eq!(small.received.len(), 601);
    // The gateway's own caps are honoured.
    let r = c
        .ws_poll_with(
            gw,
            PollRequest {
                cursor: 0,
                max_messages: Some(3),
                max_bytes: None,
                max_clients: None,
            },
        )
        .unwrap();
    assert_eq!(r.messages.len(), 3);
    assert!(r.more);
    // A poll as an update call (no data certificate) is refused, not answered uncertified.
    let r: Result<ic_ws_protocol::types::PollResult, CallError> =
        c.try_update("ws_poll", (PollRequest::default(),), gw);
    match r {
        Ok(Err(_)) | Err(_) => {}
        Ok(Ok(reply)) => panic!(
            "uncertified poll answered: {} messages",
            reply.messages.len()
        ),
    }
}

#[test]
fn topic_fan_out_to_1000_subscribers() {
    let c = WsCanister::new();
    let gw = gateway(1);
    let mut clients: Vec<TestClient> = (0..1000).map(TestClient::new).collect();
    // Open all 1 000 in batches of 250 (one update call each, as a gateway batches).
    for chunk in clients.chunks_mut(250) {
        let reqs = chunk
            .iter()
            .map(|cl| cl.open_request(&c, gw, "", false))
            .collect();
        let results = c.ws_open(gw, reqs);
        for (cl, r) in chunk.iter_mut().zip(results) {
            cl.id = r.unwrap().client_id;
        }
    }
    // Each subscribes with a signed message, batched.
    for chunk in clients.chunks_mut(250) {
        let msgs = chunk
            .iter_mut()
            .map(|cl| cl.message(&c, app_payload(&Inbound::Subscribe("prices".into()))))
            .collect();
        assert!(c
            .ws_message(gw, msgs)
            .iter()
            .all(|r| *r == MessageResult::Ok));
    }
    let stable_before: u64 = c.query("app_stable_bytes", (), Principal::anonymous());
    let r: Result<(u64, u64, u64), String> =
        c.update("app_publish", ("prices".to_string(), 1000u32));
    assert_eq!(r, Ok((1000, 0, 0)));
    let publish_instructions = c.last_instructions();
    let stable_after: u64 = c.query("app_stable_bytes", (), Principal::anonymous());
    println!(
        "publish of 1 KB to 1000 subscribers: {publish_instructions} instructions, stable memory +{} bytes",
        stable_after - stable_before
    );
    // Every subscriber verifies it as seq 1 of its own stream, topic "prices".
    let replies = c.poll_all(gw);
    receive_all_clients(&mut clients, &c, &replies).unwrap();
    for cl in clients.iter() {
        assert_eq!(cl.received.len(), 2);
        match &cl.received[1].content.body {
            OutboundBody::App { topic, .. } => {
                assert_eq!(topic.as_deref(), Some("prices"));
                assert!(
                    matches!(outbound(&cl.received[1]), Some(Outbound::Bytes(b)) if b.len() == 1000)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
