//! Protocol version 2 outcomes through the gateway, in process (real port-0 socket, the
//! in-memory canister behaving like a version-2 runtime): certified refusals of opens and
//! resumes are delivered before the connection closes, refused messages get no uncertified
//! `MessageError`, and `NotProcessed` entries are sent again until they are handled.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ic_ws_gateway::fake::FakeCanister;
use ic_ws_protocol::types::*;
use ic_ws_protocol::GatewayFrame;
use std::time::Duration;

#[tokio::test]
async fn a_refused_open_gets_its_certified_refusal_then_4003() {
    let (gw, fake) = start(&[]).await;
    let mut c = Client::connect(gw.local_addr()).await;
    send_frame(&mut c.ws, &open_request(b"reject", None)).await;
    let GatewayFrame::OpenResult(Err(WsError::OpenRejected { client_id, reason })) =
        next_frame(&mut c.ws).await
    else {
        panic!("expected OpenRejected");
    };
    assert_eq!(reason, "not welcome");
    c.client_id = client_id;
    let m = c.messages(1).await.remove(0);
    assert_eq!((m.client_id, m.seq), (client_id, 0));
    assert_eq!(
        body(&m),
        OutboundBody::OpenRejected {
            client_key: vec![7; 32],
            open_timestamp_ns: 1,
            error: WsError::Rejected("not welcome".into()),
        }
    );
    let (code, why) = closed(&mut c.ws).await;
    assert_eq!(code, 4003, "{why}");
    // Nothing to detach: the canister ended the session.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(fake.state().closed_by_gateway.is_empty());
    assert_eq!(gw.metrics().sessions.get(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_refused_open_whose_certified_refusal_never_comes_closes_4003_in_time() {
    let mut fake = FakeCanister::new();
    // The first poll reads the log only after the test has withheld the refusal.
    fake.query_delay = Duration::from_millis(1500);
    let gw = start_with(fake.clone(), &["--open-outcome-timeout-ms", "300"]).await;
    let mut c = Client::connect(gw.local_addr()).await;
    send_frame(&mut c.ws, &open_request(b"reject", None)).await;
    assert!(matches!(
        next_frame(&mut c.ws).await,
        GatewayFrame::OpenResult(Err(WsError::OpenRejected { .. }))
    ));
    fake.state()
        .log
        .retain(|m| !matches!(body(m), OutboundBody::OpenRejected { .. }));
    let started = tokio::time::Instant::now();
    let (code, why) = closed(&mut c.ws).await;
    assert_eq!(code, 4003);
    assert!(why.contains("did not arrive in time"), "{why}");
    assert!(started.elapsed() < Duration::from_millis(1400));
    // Detached from the refused session (`ws_close`), like any connection that goes away.
    eventually("ws_close of the refused session", || {
        !fake.state().closed_by_gateway.is_empty()
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn the_resume_of_a_closed_session_delivers_its_certified_close() {
    let (gw, fake) = start(&[]).await;
    let addr = gw.local_addr();
    let c = Client::open(addr).await; // Opened = seq 0 received
    let id = c.client_id;
    drop(c);
    eventually("ws_close relayed", || {
        fake.state().closed_by_gateway.contains(&id)
    })
    .await;
    // Closed in the canister while the client was away (seq 1).
    fake.close(id);
    let mut c = Client::connect(addr).await;
    send_frame(
        &mut c.ws,
        &open_request(
            b"",
            Some(ResumeFrom {
                client_id: id,
                next_outbound_seq: 1,
            }),
        ),
    )
    .await;
    assert_eq!(
        next_frame(&mut c.ws).await,
        GatewayFrame::OpenResult(Err(WsError::Closed))
    );
    c.client_id = id;
    c.next_out = 1;
    let m = c.messages(1).await.remove(0);
    assert!(matches!(
        body(&m),
        OutboundBody::Closed {
            reason: CloseReason::AppClosed { .. }
        }
    ));
    assert_eq!(closed(&mut c.ws).await.0, 4000);
    gw.shutdown().await;
}

#[tokio::test]
async fn not_processed_entries_are_sent_again_in_order() {
    let (gw, fake) = start(&[]).await;
    let addr = gw.local_addr();
    let mut a = Client::open(addr).await;
    let mut b = Client::open(addr).await;
    // From now on the canister handles one entry per call.
    fake.state().entries_per_call = Some(1);
    for i in 0..5 {
        a.send(format!("echo:a{i}").as_bytes()).await;
        b.send(format!("echo:b{i}").as_bytes()).await;
    }
    let want = |p: &str| (0..5).map(|i| format!("echo:{p}{i}")).collect::<Vec<_>>();
    let got_a: Vec<String> = a
        .payloads(5)
        .await
        .into_iter()
        .map(|p| format!("echo:{}", String::from_utf8(p).unwrap()))
        .collect();
    let got_b: Vec<String> = b
        .payloads(5)
        .await
        .into_iter()
        .map(|p| format!("echo:{}", String::from_utf8(p).unwrap()))
        .collect();
    assert_eq!(got_a, want("a"));
    assert_eq!(got_b, want("b"));
    // Each accepted once, in each client's order.
    let received = fake.state().received.clone();
    for (client, prefix) in [(a.client_id, "a"), (b.client_id, "b")] {
        let mine: Vec<String> = received
            .iter()
            .filter(|r| r.0 == client && r.2.starts_with(b"echo:"))
            .map(|r| String::from_utf8(r.2.clone()).unwrap())
            .collect();
        assert_eq!(mine, want(prefix));
    }
    // Opens too.
    let c = Client::open(addr).await;
    let d = Client::open(addr).await;
    assert_ne!(c.client_id, d.client_id);
    assert!(gw.metrics().not_processed.get() > 0);
    gw.shutdown().await;
}
