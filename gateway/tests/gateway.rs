//! Integration tests: the gateway on real port-0 sockets in front of the in-memory canister.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use ic_ws_gateway::fake::FakeCanister;
use ic_ws_gateway::CallError;
use ic_ws_protocol::types::*;
use ic_ws_protocol::{ClientFrame, GatewayFrame};
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn hello_open_round_trip_with_pruned_witnesses() {
    let (gw, fake) = start(&[]).await;
    let mut a = Client::open(gw.local_addr()).await;
    let mut b = Client::open(gw.local_addr()).await;
    assert_ne!(a.client_id, b.client_id);
    a.send(b"echo:hello a").await;
    b.send(b"echo:hello b").await;
    assert_eq!(a.payloads(1).await, vec![b"hello a".to_vec()]);
    assert_eq!(b.payloads(1).await, vec![b"hello b".to_vec()]);
    // Canister-initiated messages go only to their recipient.
    for i in 0..5u8 {
        fake.send(a.client_id, &[i]);
    }
    fake.send(b.client_id, b"for b");
    assert_eq!(
        a.payloads(5).await,
        (0..5u8).map(|i| vec![i]).collect::<Vec<_>>()
    );
    assert_eq!(b.payloads(1).await, vec![b"for b".to_vec()]);
    let received: Vec<_> = fake
        .state()
        .received
        .iter()
        .map(|(c, _, p)| (*c, p.clone()))
        .collect();
    assert!(received.contains(&(a.client_id, b"echo:hello a".to_vec())));
    assert_eq!(gw.metrics().messages_in.get(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn each_clients_order_is_kept_and_messages_are_batched() {
    let (gw, fake) = start(&["--batch-max-messages", "50", "--batch-interval-ms", "20"]).await;
    let addr = gw.local_addr();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = Client::open(addr).await;
            for i in 0..30u32 {
                c.send(&i.to_be_bytes()).await;
            }
            (c.client_id, c)
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    eventually("all 600 messages accepted", || {
        fake.state().received.len() == 600
    })
    .await;
    let mut per_client: HashMap<u64, Vec<u32>> = HashMap::new();
    for (c, _, p) in &fake.state().received {
        per_client
            .entry(*c)
            .or_default()
            .push(u32::from_be_bytes(p.as_slice().try_into().unwrap()));
    }
    for (c, got) in per_client {
        assert_eq!(got, (0..30).collect::<Vec<_>>(), "client {c} order");
    }
    let calls = fake.calls("ws_message");
    assert!(calls.iter().all(|n| *n <= 50), "batch bound: {calls:?}");
    assert!(
        calls.len() <= 60,
        "600 messages should need far fewer calls, made {}",
        calls.len()
    );
    assert_eq!(calls.iter().sum::<usize>(), 600, "no entry sent twice");
    gw.shutdown().await;
}

#[tokio::test]
async fn batches_are_bounded_in_bytes() {
    let (gw, fake) = start(&["--batch-max-bytes", "4096", "--batch-interval-ms", "50"]).await;
    let mut c = Client::open(gw.local_addr()).await;
    for _ in 0..12 {
        c.send(&[1u8; 1000]).await;
    }
    eventually("all accepted", || fake.state().received.len() == 12).await;
    let calls = fake.calls("ws_message");
    // Each entry counts its frame (> 1000 bytes) plus overhead: at most 3 fit in 4096.
    assert!(calls.iter().all(|n| *n <= 3), "{calls:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn transient_failures_are_retried_and_never_duplicate() {
    let (gw, fake) = start(&["--retry-backoff-ms", "5"]).await;
    let mut c = Client::open(gw.local_addr()).await;
    {
        let mut s = fake.state();
        s.fail_next
            .push_back(CallError::Transient("connection reset".into()));
        s.fail_next.push_back(CallError::Transient("503".into()));
        s.lose_replies = 1;
    }
    for i in 0..10u8 {
        c.send(&[i]).await;
    }
    eventually("all accepted", || fake.state().received.len() == 10).await;
    assert!(fake.calls("ws_message").len() >= 4, "retries happened");
    // The client was not disturbed: it still talks.
    c.send(b"echo:still here").await;
    assert_eq!(c.payloads(1).await, vec![b"still here".to_vec()]);
    // After the shutdown the relay has flushed everything: no late duplicate can follow.
    gw.shutdown().await;
    let got: Vec<Vec<u8>> = fake
        .state()
        .received
        .iter()
        .map(|(_, _, p)| p.clone())
        .collect();
    let mut want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
    want.push(b"echo:still here".to_vec());
    assert_eq!(got, want, "each message exactly once, in order");
}

#[tokio::test]
async fn a_trapping_message_is_isolated_to_its_sender() {
    let (gw, fake) = start(&["--batch-interval-ms", "300"]).await;
    let addr = gw.local_addr();
    let mut a = Client::open(addr).await;
    let mut b = Client::open(addr).await;
    let mut c = Client::open(addr).await;
    // Let one batch go so the next three land together.
    a.send(b"warm-up").await;
    eventually("warm-up accepted", || fake.state().received.len() == 1).await;
    a.send(b"echo:a").await;
    let trap_seq = b.send(b"trap").await;
    c.send(b"echo:c").await;
    assert_eq!(a.payloads(1).await, vec![b"a".to_vec()]);
    assert_eq!(c.payloads(1).await, vec![b"c".to_vec()]);
    match next_frame(&mut b.ws).await {
        GatewayFrame::MessageError {
            seq,
            error: WsError::Rejected(why),
        } => {
            assert_eq!(seq, trap_seq);
            assert!(why.contains("trapped"), "{why}");
        }
        other => panic!("expected MessageError, got {other:?}"),
    }
    assert_eq!(closed(&mut b.ws).await.0, 4004);
    let calls = fake.calls("ws_message");
    assert!(
        calls.contains(&3),
        "the batch of three was tried first: {calls:?}"
    );
    // Bisection: [a] succeeds, so [b, c] is the trapping half: [b] traps (isolated); c goes
    // again with the next batch.
    assert_eq!(calls[calls.len() - 3..], [1, 1, 1], "{calls:?}");
    assert_eq!(gw.metrics().isolation_calls.get(), 2);
    assert_eq!(gw.metrics().trapped_entries.get(), 1);
    // The others carry on.
    a.send(b"echo:a again").await;
    assert_eq!(a.payloads(1).await, vec![b"a again".to_vec()]);
    gw.shutdown().await;
}

#[tokio::test]
async fn per_entry_errors_reach_only_their_client() {
    let (gw, _fake) = start(&[]).await;
    let addr = gw.local_addr();
    let mut a = Client::open(addr).await;
    let mut b = Client::open(addr).await;
    let mut c = Client::open(addr).await;
    // Rejected by the app: the certified refusal is delivered (no `MessageError`: protocol
    // version 2), the session continues.
    let seq = a.send(b"reject").await;
    match body(&a.messages(1).await.remove(0)) {
        OutboundBody::MessageRejected {
            inbound_seq,
            error: WsError::Rejected(_),
        } => assert_eq!(inbound_seq, seq),
        other => panic!("expected MessageRejected, got {other:?}"),
    }
    a.send(b"echo:next").await;
    assert_eq!(a.payloads(1).await, vec![b"next".to_vec()]);
    // Out of sequence: reported, then closed with 4004.
    b.send_seq(5, b"skipped ahead").await;
    match next_frame(&mut b.ws).await {
        GatewayFrame::MessageError {
            seq: 5,
            error:
                WsError::OutOfSequence {
                    expected: 0,
                    got: 5,
                },
        } => {}
        other => panic!("expected OutOfSequence, got {other:?}"),
    }
    assert_eq!(closed(&mut b.ws).await.0, 4004);
    c.send(b"echo:c").await;
    assert_eq!(c.payloads(1).await, vec![b"c".to_vec()]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stalled_client_is_closed_and_does_not_delay_others() {
    let (gw, fake) = start(&[
        "--send-buffer-frames",
        "16",
        "--send-buffer-bytes",
        "4194304",
        "--write-timeout-ms",
        "60000",
        "--poll-max-messages",
        "20",
    ])
    .await;
    let addr = gw.local_addr();
    let mut fast = Client::open(addr).await;
    let mut stalled = Client::open(addr).await; // never reads from here on
    let payload = vec![9u8; 16 * 1024];
    let total = 3000;
    let sender = {
        let fake = fake.clone();
        let (f, s) = (fast.client_id, stalled.client_id);
        tokio::spawn(async move {
            for i in 0..total {
                fake.send(f, &payload);
                fake.send(s, &payload);
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    // If the stalled client held anything up, the fast one would stop receiving (and
    // `messages` would time out waiting for a frame).
    let got = fast.messages(total).await;
    assert_eq!(got.len(), total);
    sender.await.unwrap();
    eventually("stalled client overflowed", || {
        gw.metrics().buffer_overflows.get() >= 1
    })
    .await;
    // When it finally reads, it finds the end of its connection (4001 if the close frame fit).
    let (code, _) = closed(&mut stalled.ws).await;
    assert!(code == 4001 || code == 1006, "code {code}");
    gw.shutdown().await;
}

#[tokio::test]
async fn malformed_frames_close_only_their_sender() {
    let (gw, _fake) = start(&["--max-message-size", "2048", "--max-frame-size", "2048"]).await;
    let addr = gw.local_addr();
    let mut good = Client::open(addr).await;

    let mut garbage = connect_from(addr, None).await;
    hello(&mut garbage).await;
    garbage
        .send(Message::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()))
        .await
        .unwrap();
    assert_eq!(closed(&mut garbage).await.0, 1008);

    let mut text = connect_from(addr, None).await;
    hello(&mut text).await;
    text.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(closed(&mut text).await.0, 1008);

    let mut early = connect_from(addr, None).await;
    hello(&mut early).await;
    let m = ClientMessage {
        client_id: 0,
        seq: 0,
        ack: 0,
        kind: MessageKind::KeepAlive,
        signature: vec![0; 64],
    };
    send_frame(&mut early, &ClientFrame::Message(m)).await;
    assert_eq!(closed(&mut early).await.0, 1008);

    let mut big = connect_from(addr, None).await;
    hello(&mut big).await;
    let _ = big.send(Message::Binary(vec![0u8; 4096].into())).await;
    assert_eq!(closed(&mut big).await.0, 1009);

    let mut twice = Client::open(addr).await;
    send_frame(&mut twice.ws, &open_request(b"", None)).await;
    assert_eq!(closed(&mut twice.ws).await.0, 1008);

    let mut spoof = Client::open(addr).await;
    spoof.client_id = good.client_id; // messages for someone else
    spoof.send(b"not mine").await;
    assert_eq!(closed(&mut spoof.ws).await.0, 1008);

    good.send(b"echo:unaffected").await;
    assert_eq!(good.payloads(1).await, vec![b"unaffected".to_vec()]);
    assert!(
        gw.metrics()
            .errors(ic_ws_gateway::metrics::ErrorKind::MalformedFrame)
            >= 4
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn pings_are_answered_but_do_not_keep_an_idle_session_open() {
    let (gw, _fake) = start(&["--idle-timeout-ms", "400"]).await;
    let mut c = Client::open(gw.local_addr()).await;
    c.ws.send(Message::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    match next_message(&mut c.ws).await {
        Message::Pong(p) => assert_eq!(p.as_ref(), b"p"),
        other => panic!("expected Pong, got {other:?}"),
    }
    // A ping every 100 ms (within the ping burst) is not activity: the idle timeout closes it.
    let mut pings = 0;
    let code = loop {
        if c.ws
            .send(Message::Ping(b"p".to_vec().into()))
            .await
            .is_err()
        {
            break closed(&mut c.ws).await.0;
        }
        pings += 1;
        assert!(pings < 15, "still open after {pings} pings");
        match tokio::time::timeout(Duration::from_millis(100), c.ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Pong(_)))) => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(Some(Ok(Message::Close(Some(f))))) => break u16::from(f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, 4002);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_ping_flood_is_closed_with_1008() {
    let (gw, _fake) = start(&["--ping-rate", "1", "--ping-burst", "5"]).await;
    let mut flooder = connect_from(gw.local_addr(), None).await;
    hello(&mut flooder).await;
    for _ in 0..20 {
        if flooder
            .send(Message::Ping(vec![1u8; 125].into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let code = loop {
        match next_message(&mut flooder).await {
            Message::Pong(_) => pongs += 1,
            Message::Close(Some(f)) => break u16::from(f.code),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (code, pongs),
        (1008, 5),
        "the burst is answered, then the flood closed"
    );
    assert_eq!(
        gw.metrics()
            .errors(ic_ws_gateway::metrics::ErrorKind::PingFlood),
        1
    );
    // Others are not affected.
    let mut honest = Client::open(gw.local_addr()).await;
    honest.send(b"echo:still fine").await;
    assert_eq!(honest.payloads(1).await, vec![b"still fine".to_vec()]);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_per_ip_cap_refuses_with_4006_and_spares_other_addresses() {
    let (gw, _fake) = start(&["--max-connections-per-ip", "2"]).await;
    let addr = gw.local_addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut ws = connect_from(addr, Some("127.0.0.1")).await;
        hello(&mut ws).await;
        held.push(ws);
    }
    let mut refused = connect_from(addr, Some("127.0.0.1")).await;
    assert_eq!(closed(&mut refused).await.0, 4006);
    let mut other = connect_from(addr, Some("127.0.0.2")).await;
    hello(&mut other).await;
    assert_eq!(gw.metrics().rejected_source_limit.get(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn per_ip_connection_rate_is_limited() {
    let (gw, _fake) = start(&["--ip-connect-rate", "0.5", "--ip-connect-burst", "3"]).await;
    let addr = gw.local_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut ws = connect_from(addr, Some("127.0.0.1")).await;
        hello(&mut ws).await;
        held.push(ws);
    }
    let mut refused = connect_from(addr, Some("127.0.0.1")).await;
    assert_eq!(closed(&mut refused).await.0, 4006);
    // Another source address has its own budget.
    let mut other = connect_from(addr, Some("127.0.0.2")).await;
    hello(&mut other).await;
    assert_eq!(gw.metrics().rejected_rate_limited.get(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn max_connections_is_enforced() {
    let (gw, _fake) = start(&["--max-connections", "2"]).await;
    let addr = gw.local_addr();
    let mut a = connect_from(addr, None).await;
    hello(&mut a).await;
    let mut b = connect_from(addr, None).await;
    hello(&mut b).await;
    let mut c = connect_from(addr, None).await;
    assert_eq!(closed(&mut c).await.0, 4006);
    a.close(None).await.unwrap();
    eventually("slot freed", || gw.metrics().connections.get() < 2).await;
    let mut d = connect_from(addr, None).await;
    hello(&mut d).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_disconnect_is_relayed_as_ws_close() {
    let (gw, fake) = start(&[]).await;
    let c = Client::open(gw.local_addr()).await;
    let id = c.client_id;
    drop(c);
    eventually("ws_close relayed", || {
        fake.state().closed_by_gateway.contains(&id)
    })
    .await;
    eventually("session detached", || gw.metrics().sessions.get() == 0).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_session_closed_by_the_canister_is_delivered_then_closed_4000() {
    let (gw, fake) = start(&[]).await;
    let mut c = Client::open(gw.local_addr()).await;
    fake.send(c.client_id, b"last words");
    fake.close(c.client_id);
    let got = c.messages(2).await;
    assert!(matches!(
        body(&got[1]),
        OutboundBody::Closed {
            reason: CloseReason::AppClosed { .. }
        }
    ));
    assert_eq!(closed(&mut c.ws).await.0, 4000);
    // After the shutdown the relay has flushed every close it had queued.
    gw.shutdown().await;
    assert!(
        fake.state().closed_by_gateway.is_empty(),
        "no ws_close for a session the canister ended"
    );
}

#[tokio::test]
async fn opens_refused_by_policy_or_app_close_4003() {
    let (gw, _fake) = start(&[]).await;
    let addr = gw.local_addr();
    let mut other = Client::connect(addr).await;
    let ClientFrame::Open { request, .. } = open_request(b"", None) else {
        unreachable!()
    };
    send_frame(
        &mut other.ws,
        &ClientFrame::Open {
            canister_id: candid::Principal::management_canister(),
            request,
        },
    )
    .await;
    assert!(matches!(
        next_frame(&mut other.ws).await,
        GatewayFrame::OpenResult(Err(WsError::InvalidArgument(_)))
    ));
    assert_eq!(closed(&mut other.ws).await.0, 4003);

    // Refused by the app (protocol version 2): the certified `OpenRejected` of the refused
    // session is delivered, then 4003.
    let mut rejected = Client::connect(addr).await;
    send_frame(&mut rejected.ws, &open_request(b"reject", None)).await;
    let GatewayFrame::OpenResult(Err(WsError::OpenRejected { client_id, .. })) =
        next_frame(&mut rejected.ws).await
    else {
        panic!("expected OpenRejected");
    };
    rejected.client_id = client_id;
    let m = rejected.messages(1).await.remove(0);
    assert_eq!(m.seq, 0);
    assert!(matches!(body(&m), OutboundBody::OpenRejected { .. }));
    assert_eq!(closed(&mut rejected.ws).await.0, 4003);

    let mut wrong_gateway = Client::connect(addr).await;
    send_frame(
        &mut wrong_gateway.ws,
        &open_request_through(candid::Principal::anonymous(), b"", None),
    )
    .await;
    assert!(matches!(
        next_frame(&mut wrong_gateway.ws).await,
        GatewayFrame::OpenResult(Err(WsError::GatewayMismatch))
    ));
    assert_eq!(closed(&mut wrong_gateway.ws).await.0, 4003);
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1012_and_flushes_pending_batches() {
    let (gw, fake) = start(&["--batch-interval-ms", "2000"]).await;
    let mut c = Client::open(gw.local_addr()).await;
    c.send(b"first").await;
    eventually("first relayed", || fake.state().received.len() == 1).await;
    // These wait for the next batch (2 s away) when shutdown begins.
    c.send(b"second").await;
    c.send(b"third").await;
    eventually("read by the gateway", || {
        gw.metrics().messages_in.get() == 3
    })
    .await;
    let id = c.client_id;
    let shutdown = tokio::spawn(gw.shutdown());
    let (code, reason) = closed(&mut c.ws).await;
    assert_eq!(code, 1012, "{reason}");
    shutdown.await.unwrap();
    let got: Vec<Vec<u8>> = fake
        .state()
        .received
        .iter()
        .map(|(_, _, p)| p.clone())
        .collect();
    assert_eq!(
        got,
        vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
    );
    assert!(
        fake.state().closed_by_gateway.contains(&id),
        "ws_close flushed too"
    );
}

#[tokio::test]
async fn a_restarted_gateway_resumes_clients_without_loss_or_duplicates() {
    let fake = ic_ws_gateway::fake::FakeCanister::new();
    let gw = start_with(fake.clone(), &[]).await;
    let mut c = Client::open(gw.local_addr()).await;
    for i in 0..3u8 {
        fake.send(c.client_id, &[i]);
    }
    assert_eq!(c.payloads(3).await.len(), 3);
    gw.shutdown().await;
    assert_eq!(closed(&mut c.ws).await.0, 1012);
    // Sent while no gateway runs.
    fake.send(c.client_id, b"while down 1");
    fake.send(c.client_id, b"while down 2");
    // A new gateway process: fresh cursor 0, so it re-reads the whole log.
    let gw = start_with(fake.clone(), &[]).await;
    let mut ws = connect_from(gw.local_addr(), None).await;
    hello(&mut ws).await;
    let resume_at = c.next_out;
    send_frame(
        &mut ws,
        &open_request(
            b"",
            Some(ResumeFrom {
                client_id: c.client_id,
                next_outbound_seq: resume_at,
            }),
        ),
    )
    .await;
    let mut resumed = Client {
        ws,
        client_id: c.client_id,
        seq: 0,
        next_out: resume_at,
    };
    match next_frame(&mut resumed.ws).await {
        GatewayFrame::OpenResult(Ok(ok)) => assert_eq!(ok.client_id, c.client_id),
        other => panic!("{other:?}"),
    }
    // Exactly the missed messages, then the resume confirmation; `messages` checks sequence.
    let got = resumed.messages(3).await;
    assert_eq!(
        body(&got[0]),
        OutboundBody::App {
            topic: None,
            payload: b"while down 1".to_vec()
        }
    );
    assert_eq!(
        body(&got[1]),
        OutboundBody::App {
            topic: None,
            payload: b"while down 2".to_vec()
        }
    );
    assert!(matches!(
        body(&got[2]),
        OutboundBody::Opened { resumed: true, .. }
    ));
    fake.send(c.client_id, b"after");
    assert_eq!(resumed.payloads(1).await, vec![b"after".to_vec()]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_resume_on_a_new_connection_takes_the_session_over() {
    let (gw, fake) = start(&[]).await;
    let addr = gw.local_addr();
    let mut old = Client::open(addr).await;
    let mut ws = connect_from(addr, None).await;
    hello(&mut ws).await;
    send_frame(
        &mut ws,
        &open_request(
            b"",
            Some(ResumeFrom {
                client_id: old.client_id,
                next_outbound_seq: old.next_out,
            }),
        ),
    )
    .await;
    let mut new = Client {
        ws,
        client_id: old.client_id,
        seq: 0,
        next_out: old.next_out,
    };
    assert!(matches!(
        next_frame(&mut new.ws).await,
        GatewayFrame::OpenResult(Ok(_))
    ));
    assert!(matches!(
        body(&new.messages(1).await[0]),
        OutboundBody::Opened { resumed: true, .. }
    ));
    assert_eq!(closed(&mut old.ws).await.0, 1000);
    fake.send(new.client_id, b"to the new connection");
    assert_eq!(
        new.payloads(1).await,
        vec![b"to the new connection".to_vec()]
    );
    // The new connection goes away: its ws_close is relayed after anything the old one
    // queued (one relay, in order), so exactly one close means the old one queued none.
    let id = new.client_id;
    drop(new);
    eventually("the new connection's ws_close", || {
        fake.state().closed_by_gateway.contains(&id)
    })
    .await;
    assert_eq!(
        fake.state().closed_by_gateway,
        vec![id],
        "the old connection must not detach the session"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_and_health_are_served_on_the_admin_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = ic_ws_gateway::fake::FakeCanister::new();
    let config = ic_ws_gateway::Config::from_args([
        "gw",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--canister",
        CANISTER,
    ])
    .unwrap();
    let gw = ic_ws_gateway::Gateway::start(config, fake, gateway_principal())
        .await
        .unwrap();
    let mut c = Client::open(gw.local_addr()).await;
    c.send(b"echo:x").await;
    c.payloads(1).await;
    let admin = gw.admin_addr().unwrap();
    let get_with = |path: &'static str, accept: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let get = |path: &'static str| get_with(path, "*/*");
    // What Prometheus sends by default: OpenMetrics first.
    let om = get_with(
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    )
    .await;
    assert!(
        om.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{om}"
    );
    assert!(
        om.contains("# TYPE ic_ws_gateway_messages_in counter\n"),
        "{om}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    let health = get("/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = get("/metrics").await;
    for needle in [
        "ic_ws_gateway_connections 1",
        "ic_ws_gateway_messages_in_total 1",
        "ic_ws_gateway_update_calls_total{method=\"ws_message\"} 1",
        "ic_ws_gateway_poll_latency_seconds_count",
        "ic_ws_gateway_batch_size_bucket",
        "ic_ws_gateway_buffer_overflows_total 0",
        "ic_ws_gateway_errors_total{kind=\"malformed_frame\"} 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
    // The session's `Opened` and the echo reply both came in poll pages, each timed.
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("missing {name}:\n{metrics}"))
    };
    assert!(
        value("ic_ws_gateway_page_messages_sum ") >= 2.0,
        "{metrics}"
    );
    let pages = value("ic_ws_gateway_page_messages_count ");
    assert!(pages >= 1.0);
    assert_eq!(
        value("ic_ws_gateway_page_distribution_seconds_count "),
        pages
    );
    let path = std::env::temp_dir().join(format!("gw-ready-{}.json", std::process::id()));
    ic_ws_gateway::write_ready_file(&path, &gw).unwrap();
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(ready["listen"], gw.local_addr().to_string());
    assert_eq!(ready["principal"], gateway_principal().to_text());
    let _ = std::fs::remove_file(&path);
    gw.shutdown().await;
}

/// Entries the canister does not process (its instruction budget ran out) go again, first, in
/// the next batch: every message is accepted exactly once and in each client's order, and no
/// client hears of it.
#[tokio::test]
async fn not_processed_entries_go_again_in_order_and_no_client_hears_of_it() {
    let (gw, fake) = start(&["--batch-interval-ms", "300"]).await;
    let addr = gw.local_addr();
    let mut a = Client::open(addr).await;
    let mut b = Client::open(addr).await;
    a.send(b"warm-up").await;
    eventually("warm-up accepted", || fake.state().received.len() == 1).await;
    fake.state().entries_per_call = Some(3);
    for i in 0..5u8 {
        a.send(&[b'a', i]).await;
        b.send(&[b'b', i]).await;
    }
    a.send(b"echo:a done").await;
    b.send(b"echo:b done").await;
    assert_eq!(a.payloads(1).await, vec![b"a done".to_vec()]);
    assert_eq!(b.payloads(1).await, vec![b"b done".to_vec()]);
    let received = fake.state().received.clone();
    for (client, tag) in [(a.client_id, b'a'), (b.client_id, b'b')] {
        let mine: Vec<(u64, Vec<u8>)> = received
            .iter()
            .filter(|(c, _, _)| *c == client)
            .map(|(_, seq, p)| (*seq, p.clone()))
            .collect();
        let mut expected: Vec<Vec<u8>> = (0..5u8).map(|i| vec![tag, i]).collect();
        expected.push(format!("echo:{} done", tag as char).into_bytes());
        if tag == b'a' {
            expected.insert(0, b"warm-up".to_vec());
        }
        let seqs: Vec<u64> = mine.iter().map(|(s, _)| *s).collect();
        let payloads: Vec<Vec<u8>> = mine.into_iter().map(|(_, p)| p).collect();
        assert_eq!(
            seqs,
            (0..expected.len() as u64).collect::<Vec<_>>(),
            "client {client}: each message once"
        );
        assert_eq!(payloads, expected, "client {client}: in order");
    }
    let calls = fake.calls("ws_message");
    assert!(calls.len() >= 4, "{calls:?}");
    // 9 + 6 + 3 when the 12 entries go in one batch (calls [.., 12, 9, 6, 3]); at least the
    // last batch of more than 3 has some, however the entries were cut into batches.
    assert!(gw.metrics().not_processed.get() >= 3, "{calls:?}");
    assert!(calls.iter().any(|n| *n > 3), "{calls:?}");
    // No MessageError reached either client: the next frames are their own echoes.
    a.send(b"echo:still fine").await;
    assert_eq!(a.payloads(1).await, vec![b"still fine".to_vec()]);
    gw.shutdown().await;
}

/// A trapping open among others: isolated by bisection, only its connection fails (4003).
#[tokio::test]
async fn a_trapping_open_is_isolated_to_its_connection() {
    let (gw, fake) = start(&["--batch-interval-ms", "300"]).await;
    let addr = gw.local_addr();
    let mut warm = Client::open(addr).await;
    warm.send(b"warm-up").await;
    eventually("warm-up accepted", || fake.state().received.len() == 1).await;
    let mut conns = Vec::new();
    for args in [&b"a"[..], b"b", b"trap", b"d", b"e"] {
        let mut c = Client::connect(addr).await;
        send_frame(&mut c.ws, &open_request(args, None)).await;
        conns.push(c);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        if i == 2 {
            match next_frame(&mut c.ws).await {
                GatewayFrame::OpenResult(Err(WsError::Rejected(why))) => {
                    assert!(why.contains("trapped"), "{why}")
                }
                other => panic!("expected the trapped open's error, got {other:?}"),
            }
            assert_eq!(closed(&mut c.ws).await.0, 4003);
        } else {
            c.expect_open_ok(None).await;
        }
    }
    assert_eq!(gw.metrics().trapped_entries.get(), 1);
    let opens = fake.calls("ws_open");
    assert!(
        opens.contains(&5),
        "the five went in one call first: {opens:?}"
    );
    assert!(gw.metrics().isolation_calls.get() <= 3, "ceil(log2 5)");
    gw.shutdown().await;
}

/// A client whose frames the gateway has not read yet when it closes the connection still
/// gets the close frame and its code: the gateway waits for the closing handshake (reading and
/// dropping what arrives) before it closes TCP, instead of making the kernel reset the
/// connection over the unread bytes (the reset used to overtake the close frame).
#[tokio::test]
async fn a_busy_client_closed_by_the_gateway_is_not_reset_before_it_reads_the_close() {
    let (gw, _fake) = start(&[]).await;
    for _ in 0..5 {
        let mut ws = connect_from(gw.local_addr(), None).await;
        hello(&mut ws).await;
        // A text frame (refused: 1008) followed by data the gateway never gets to read
        // before it closes: written in one go, without reading (1 MiB: more than it reads ahead).
        ws.feed(Message::Text("not binary".into())).await.unwrap();
        for _ in 0..256 {
            // The gateway may already have closed: later writes can fail.
            if ws
                .feed(Message::Binary(vec![0u8; 4096].into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = ws.flush().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The client has not read the close frame yet and writes on, as a busy client does:
        // the gateway is still reading (its closing handshake), so the writes do not fail
        // with a reset (which made clients report "connection reset" instead of the code).
        for _ in 0..16 {
            let sent = ws.send(Message::Binary(vec![1u8; 4096].into())).await;
            assert!(sent.is_ok(), "write after the gateway's close: {sent:?}");
        }
        let (code, reason) = closed(&mut ws).await;
        assert_eq!(code, 1008, "{reason}");
    }
}

/// Pages are capped by clients (`max_clients`); a backlog of full pages that outlasts the
/// active interval (a far canister: 20 ms per poll here) doubles the cap per reply up to its
/// maximum, and nothing is lost or reordered across the small pages.
#[tokio::test]
async fn a_lasting_backlog_grows_the_page_cap_to_its_maximum() {
    let mut fake = FakeCanister::new();
    fake.query_delay = Duration::from_millis(20);
    let gw = start_with(
        fake.clone(),
        &[
            "--poll-page-clients",
            "1",
            "--poll-page-clients-max",
            "8",
            "--poll-active-interval-ms",
            "30",
        ],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(Client::open(gw.local_addr()).await);
    }
    // 10 messages to each of 12 clients, interleaved: 120 one-client pages at the base cap.
    for i in 0..10u8 {
        for c in &clients {
            fake.send(c.client_id, &[i]);
        }
    }
    for c in &mut clients {
        assert_eq!(
            c.payloads(10).await,
            (0..10u8).map(|i| vec![i]).collect::<Vec<_>>()
        );
    }
    let pages = fake.state().page_clients.clone();
    assert!(pages.iter().all(|&n| n <= 8), "{pages:?}");
    assert!(pages.contains(&8), "the cap reached its maximum: {pages:?}");
    assert!(gw.metrics().page_cap_grown.get() >= 3);
    gw.shutdown().await;
}
