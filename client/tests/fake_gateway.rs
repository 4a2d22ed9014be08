//! The client against an in-process fake gateway + canister (tests/support): round trips,
//! every verification check attacked one by one, resume and re-send, keep-alives, close.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use ic_ws_client::{Backoff, BindingError, Client, ClientConfig, ClientError, Event, VerifyError};
use ic_ws_protocol::test_utils::TestRootKey;
use ic_ws_protocol::{CloseReason, OutboundBody, WsError};
use support::{now_ns, FakeGateway};

const WAIT: Duration = Duration::from_secs(30);

/// One attempt only: `connect` reports the first failure as `GaveUp { attempts: 0, .. }`.
fn no_retry(mut c: ClientConfig) -> ClientConfig {
    c.backoff.max_attempts = Some(0);
    c
}

fn gave_up(last: ClientError) -> ClientError {
    ClientError::GaveUp {
        attempts: 0,
        last: Box::new(last),
    }
}

fn config(gw: &FakeGateway) -> ClientConfig {
    let mut c =
        ClientConfig::new(gw.url.clone(), gw.canister_id()).with_root_key(gw.root_key_der());
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        max_attempts: Some(50),
    };
    c
}

/// The next event (failing the test after a generous timeout).
async fn event(client: &mut Client) -> Event {
    tokio::time::timeout(WAIT, client.next_event())
        .await
        .expect("timed out waiting for an event")
        .expect("the client stopped")
}

/// Skips events until `pred` matches one; returns it.
async fn until(client: &mut Client, mut pred: impl FnMut(&Event) -> bool) -> Event {
    loop {
        let e = event(client).await;
        if pred(&e) {
            return e;
        }
    }
}

async fn message(client: &mut Client) -> ic_ws_client::Message<String> {
    tokio::time::timeout(WAIT, client.recv::<String>())
        .await
        .expect("timed out waiting for a message")
        .unwrap()
}

/// Waits until `cond` holds on the fake canister.
async fn eventually(gw: &FakeGateway, mut cond: impl FnMut(&mut support::Canister) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gw.with(&mut cond) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn enc(s: &str) -> Vec<u8> {
    candid::encode_one(s).unwrap()
}

/// Connects, then makes the canister send two messages in one frame (seqs 1 and 2) with the
/// given tampering; returns the error the client reports.
async fn tampered_pair(
    tamper: impl FnOnce(&mut support::Frame, &support::Canister) + Send + 'static,
) -> (Client, FakeGateway, ClientError) {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&gw)).await.unwrap();
    let id = client.client_id().unwrap();
    gw.tamper_next(tamper);
    gw.with(|c| {
        c.push_app(id, enc("one"));
        c.push_app(id, enc("two"));
    });
    let e = until(&mut client, |e| matches!(e, Event::Disconnected { .. })).await;
    let Event::Disconnected { error, retry_in } = e else {
        unreachable!()
    };
    assert!(
        retry_in.is_some(),
        "the client reconnects after a failed check"
    );
    (client, gw, error)
}

/// After a detected attack the client resumes and receives the genuine messages, once each.
async fn recovers(client: &mut Client) {
    let one = message(client).await;
    let two = message(client).await;
    assert_eq!((one.seq, one.value.as_str()), (1, "one"));
    assert_eq!((two.seq, two.value.as_str()), (2, "two"));
}

#[tokio::test]
async fn round_trip_with_typed_messages() {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&gw)).await.unwrap();
    let id = client.client_id().unwrap();
    let seq = client.send(&"hello".to_string()).await.unwrap();
    assert_eq!(seq, 0);
    let echo = message(&mut client).await;
    assert_eq!(echo.value, "hello");
    assert_eq!(echo.seq, 1, "seq 0 is the Opened confirmation");
    assert_eq!(echo.topic, None);
    assert!(echo.timestamp_ns > 0);
    // The canister got it once, signed by the session key it bound at open.
    gw.with(|c| assert_eq!(c.sessions[&id].app_payloads, vec![enc("hello")]));

    gw.with(|c| {
        c.push(
            id,
            OutboundBody::App {
                topic: Some("prices".into()),
                payload: candid::encode_one(42u64).unwrap(),
            },
        )
    });
    let m = tokio::time::timeout(WAIT, client.recv::<u64>())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.value, m.topic.as_deref(), m.seq),
        (42, Some("prices"), 2)
    );
}

#[tokio::test]
async fn certified_messages_ahead_of_the_open_result_are_held() {
    let gw = FakeGateway::start().await;
    gw.with(|c| c.messages_before_open_result = true);
    let mut client = Client::connect(config(&gw)).await.unwrap();
    client.send(&"after".to_string()).await.unwrap();
    assert_eq!(message(&mut client).await.value, "after");
}

#[tokio::test]
async fn payload_of_another_type_is_a_decode_error() {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&gw)).await.unwrap();
    client.send(&"text".to_string()).await.unwrap();
    let err = tokio::time::timeout(WAIT, client.recv::<u64>())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ClientError::Decode { seq: 1, .. }), "{err:?}");
}

#[tokio::test]
async fn altered_payload_is_not_certified() {
    let (mut client, _gw, error) = tampered_pair(|f, _| {
        let last = f.messages[1].content.len() - 1;
        f.messages[1].content[last] ^= 1;
    })
    .await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::NotCertified { seq: 2 })
    );
    recovers(&mut client).await;
}

#[tokio::test]
async fn certificate_from_another_key_fails_bls() {
    let (mut client, _gw, error) = tampered_pair(|f, c| {
        let forged = TestRootKey::from_seed(9);
        let tree: ic_certification::HashTree = serde_cbor::from_slice(&f.tree).unwrap();
        f.certificate = forged.certificate(&c.id, &tree.digest(), now_ns());
    })
    .await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::BadCertificateSignature)
    );
    recovers(&mut client).await;
}

#[tokio::test]
async fn altered_certificate_bytes_are_rejected() {
    let (mut client, _gw, error) = tampered_pair(|f, _| {
        // The BLS signature is the last 48 bytes of the CBOR certificate's signature field.
        let n = f.certificate.len();
        f.certificate[n - 5] ^= 0x40;
    })
    .await;
    assert!(
        matches!(
            error,
            ClientError::Verify(
                VerifyError::BadCertificateSignature | VerifyError::MalformedCertificate(_)
            )
        ),
        "{error:?}"
    );
    recovers(&mut client).await;
}

#[tokio::test]
async fn stale_certificate_is_rejected() {
    let (mut client, _gw, error) = tampered_pair(|f, c| {
        let old = now_ns() - 10 * 60 * 1_000_000_000;
        let tree: ic_certification::HashTree = serde_cbor::from_slice(&f.tree).unwrap();
        f.certificate = c.root.certificate(&c.id, &tree.digest(), old);
    })
    .await;
    assert!(
        matches!(error, ClientError::Verify(VerifyError::StaleCertificate { age_s, max_s: 300 }) if age_s >= 599),
        "{error:?}"
    );
    recovers(&mut client).await;
}

#[tokio::test]
async fn tree_not_matching_certified_data_is_rejected() {
    let (mut client, _gw, error) = tampered_pair(|f, c| {
        // A genuine certificate over a different state (e.g. before these messages existed).
        f.certificate = c.root.certificate(&c.id, &[0u8; 32], now_ns());
    })
    .await;
    assert_eq!(error, ClientError::Verify(VerifyError::TreeRootMismatch));
    recovers(&mut client).await;
}

#[tokio::test]
async fn reordered_messages_are_out_of_sequence() {
    let (mut client, _gw, error) = tampered_pair(|f, _| f.messages.swap(0, 1)).await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::OutOfSequence {
            expected: 1,
            got: 2
        })
    );
    recovers(&mut client).await;
}

#[tokio::test]
async fn dropped_message_is_a_gap() {
    let (mut client, _gw, error) = tampered_pair(|f, _| {
        f.messages.remove(0);
    })
    .await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::OutOfSequence {
            expected: 1,
            got: 2
        })
    );
    recovers(&mut client).await;
}

#[tokio::test]
async fn duplicated_message_is_out_of_sequence() {
    let (mut client, _gw, error) = tampered_pair(|f, _| {
        let dup = f.messages[0].clone();
        f.messages.insert(1, dup);
    })
    .await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::OutOfSequence {
            expected: 2,
            got: 1
        })
    );
    recovers(&mut client).await;
}

#[tokio::test]
async fn replayed_old_message_is_out_of_sequence() {
    // Seq 0 (the Opened) was already delivered; the gateway replays it, genuinely certified.
    let (mut client, _gw, error) = tampered_pair(|f, c| {
        let id = f.messages[0].client_id;
        *f = c.frame_for(id, &[0, 1, 2], now_ns());
    })
    .await;
    assert_eq!(
        error,
        ClientError::Verify(VerifyError::OutOfSequence {
            expected: 1,
            got: 0
        })
    );
    recovers(&mut client).await;
}

#[tokio::test]
async fn another_clients_message_is_rejected() {
    let gw = FakeGateway::start().await;
    let mut alice = Client::connect(config(&gw)).await.unwrap();
    let mut bob = Client::connect(config(&gw)).await.unwrap();
    let (a, b) = (alice.client_id().unwrap(), bob.client_id().unwrap());
    // Bob's genuinely certified message 1, delivered to Alice.
    gw.with(|c| c.push_app(b, enc("for bob")));
    assert_eq!(message(&mut bob).await.value, "for bob");
    gw.tamper_next(move |f, c| *f = c.frame_for(b, &[1], now_ns()));
    gw.with(|c| c.push_app(a, enc("for alice")));
    let e = until(&mut alice, |e| matches!(e, Event::Disconnected { .. })).await;
    assert_eq!(
        e,
        Event::Disconnected {
            error: ClientError::Verify(VerifyError::WrongClient {
                expected: a,
                got: b,
                seq: 1
            }),
            retry_in: match &e {
                Event::Disconnected { retry_in, .. } => *retry_in,
                _ => None,
            },
        }
    );
    let m = message(&mut alice).await;
    assert_eq!((m.seq, m.value.as_str()), (1, "for alice"));
    drop(bob);
}

#[tokio::test]
async fn opened_binding_another_key_fails_the_open() {
    let gw = FakeGateway::start().await;
    gw.with(|c| c.lie_opened_key = true);
    let err = Client::connect(no_retry(config(&gw))).await.unwrap_err();
    assert_eq!(
        err,
        gave_up(ClientError::Binding(BindingError::WrongKey { seq: 0 }))
    );
}

#[tokio::test]
async fn session_must_start_with_opened() {
    let gw = FakeGateway::start().await;
    // Replace the Opened at seq 0 by a certified app message at seq 0 of the same client.
    gw.tamper_next(|f, c| {
        let id = f.messages[0].client_id;
        let mut outbox = c.outbox.clone();
        let content = ic_ws_protocol::OutboundContent {
            timestamp_ns: now_ns(),
            body: OutboundBody::App {
                topic: None,
                payload: enc("not an Opened"),
            },
        };
        let m = outbox.push(id, 0, &content);
        let tree = outbox.tree();
        f.messages = vec![m];
        f.certificate = c.root.certificate(&c.id, &tree.digest(), now_ns());
        f.tree = ic_ws_protocol::test_utils::cbor_self_describing(&tree);
    });
    let err = Client::connect(no_retry(config(&gw))).await.unwrap_err();
    assert_eq!(
        err,
        gave_up(ClientError::Binding(BindingError::NotOpenedFirst {
            seq: 0
        }))
    );
}

#[tokio::test]
async fn uncertified_open_refusal_is_retried_until_the_policy_gives_up() {
    let gw = FakeGateway::start().await;
    gw.with(|c| c.refuse_open = Some(WsError::Rejected("no guests".into())));
    let mut cfg = config(&gw);
    cfg.backoff.max_attempts = Some(3);
    let err = Client::connect(cfg).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::GaveUp {
            attempts: 3,
            last: Box::new(ClientError::OpenRefused(WsError::Rejected(
                "no guests".into()
            )))
        }
    );
    assert!(!err.is_terminal() || matches!(err, ClientError::GaveUp { .. }));
    gw.with(|c| assert_eq!(c.open_attempts, 4, "the first open and three retries"));
}

#[tokio::test]
async fn other_protocol_version_is_refused() {
    let gw = FakeGateway::start().await;
    gw.with(|c| c.protocol_version = 1);
    let err = Client::connect(no_retry(config(&gw))).await.unwrap_err();
    assert_eq!(
        err,
        gave_up(ClientError::UnsupportedVersion {
            got: 1,
            supported: 2
        })
    );
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let gw = FakeGateway::start().await;
    let mut c = config(&gw);
    c.root_key_der = vec![1, 2, 3];
    assert!(matches!(
        Client::connect(c).await,
        Err(ClientError::Config(_))
    ));
    let mut c = config(&gw);
    c.gateway_urls = vec!["http://example.org".into()];
    assert!(matches!(
        Client::connect(c).await,
        Err(ClientError::Config(_))
    ));
}

#[tokio::test]
async fn resume_resends_unaccepted_messages_once() {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&gw)).await.unwrap();
    let id = client.client_id().unwrap();
    client.send(&"a".to_string()).await.unwrap();
    assert_eq!(message(&mut client).await.value, "a");
    // The relay loses b and c.
    gw.with(|c| c.accept_inbound = false);
    client.send(&"b".to_string()).await.unwrap();
    client.send(&"c".to_string()).await.unwrap();
    // The canister sends while the client is away.
    gw.with(|c| c.accept_inbound = true);
    gw.kick_all();
    gw.with(|c| c.push_app(id, enc("while away")));
    // "while away" may still reach the old connection; either way it arrives exactly once.
    let (mut got, mut opened) = (Vec::new(), None);
    while got.len() < 3 || opened.is_none() {
        match event(&mut client).await {
            e @ Event::Opened { .. } => opened = Some(e),
            Event::Message(m) => got.push(m.decode::<String>().unwrap().value),
            _ => {}
        }
    }
    assert_eq!(
        opened,
        Some(Event::Opened {
            client_id: id,
            resumed: true,
            next_inbound_seq: 1,
            resent: 2
        })
    );
    assert_eq!(got, ["while away", "b", "c"]);
    gw.with(|c| {
        assert_eq!(
            c.sessions[&id].app_payloads,
            vec![enc("a"), enc("b"), enc("c")]
        )
    });
    assert_eq!(client.client_id(), Some(id));
    assert!(client.reconnects() >= 1);
}

#[tokio::test]
async fn confirmation_of_an_open_lost_in_transit_is_skipped_on_the_next_resume() {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&gw)).await.unwrap();
    let id = client.client_id().unwrap();
    // The next resume is accepted by the canister (Opened queued at seq 1), but the
    // connection dies before anything reaches the client; the resume after that gets the
    // re-queued seq 1 (for the lost open) and then its own Opened at seq 2.
    gw.with(|c| c.drop_after_open = 1);
    gw.kick_all();
    let e = until(&mut client, |e| matches!(e, Event::Opened { .. })).await;
    assert_eq!(
        e,
        Event::Opened {
            client_id: id,
            resumed: true,
            next_inbound_seq: 0,
            resent: 0
        }
    );
    gw.with(|c| assert_eq!(c.sessions[&id].opens, 3));
    client.send(&"still here".to_string()).await.unwrap();
    let m = message(&mut client).await;
    assert_eq!((m.seq, m.value.as_str()), (3, "still here"));
}

#[tokio::test]
async fn messages_sent_while_disconnected_are_delivered_after_resume() {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&gw)).await.unwrap();
    let id = client.client_id().unwrap();
    gw.kick_all();
    until(&mut client, |e| matches!(e, Event::Disconnected { .. })).await;
    for i in 0..5 {
        client.send(&format!("m{i}")).await.unwrap();
    }
    for i in 0..5 {
        assert_eq!(message(&mut client).await.value, format!("m{i}"));
    }
    gw.with(|c| assert_eq!(c.sessions[&id].app_payloads.len(), 5));
}

#[tokio::test]
async fn acks_many_messages_with_a_keepalive() {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&gw)).await.unwrap();
    let id = client.client_id().unwrap();
    gw.with(|c| {
        for i in 0..100 {
            c.push_app(id, enc(&format!("{i}")));
        }
    });
    for i in 0..100 {
        assert_eq!(message(&mut client).await.value, format!("{i}"));
    }
    // 101 messages received (Opened + 100): more than 64 unacknowledged -> a keep-alive acks.
    eventually(&gw, |c| c.sessions[&id].last_ack > 64).await;
    gw.with(|c| assert!(c.sessions[&id].keepalives >= 1));
}

#[tokio::test]
async fn idle_client_sends_keepalives() {
    let gw = FakeGateway::start().await;
    let mut cfg = config(&gw);
    cfg.keepalive_interval = Duration::from_millis(100);
    let client = Client::connect(cfg).await.unwrap();
    let id = client.client_id().unwrap();
    eventually(&gw, |c| c.sessions[&id].keepalives >= 3).await;
    // Each keep-alive acknowledges the Opened.
    gw.with(|c| assert_eq!(c.sessions[&id].last_ack, 1));
}

#[tokio::test]
async fn close_returns_the_certified_reason() {
    let gw = FakeGateway::start().await;
    let client = Client::connect(config(&gw)).await.unwrap();
    let reason = client.close(1000, "bye", WAIT).await.unwrap();
    assert_eq!(
        reason,
        CloseReason::ClientClosed {
            code: 1000,
            reason: "bye".into()
        }
    );
}

#[tokio::test]
async fn moves_to_the_fallback_gateway_and_resumes() {
    let a = FakeGateway::start().await;
    let b = FakeGateway::start_shared(&a).await;
    let mut client = Client::connect(config(&a).with_fallback_gateway(b.url.clone()))
        .await
        .unwrap();
    let id = client.client_id().unwrap();
    client.send(&"via a".to_string()).await.unwrap();
    assert_eq!(message(&mut client).await.value, "via a");
    a.shut_down();
    let e = until(&mut client, |e| matches!(e, Event::Opened { .. })).await;
    assert!(matches!(e, Event::Opened { resumed: true, client_id, .. } if client_id == id));
    client.send(&"via b".to_string()).await.unwrap();
    let m = message(&mut client).await;
    assert_eq!(
        (m.seq, m.value.as_str()),
        (3, "via b"),
        "seq 2 is the resume's Opened"
    );
}

#[tokio::test]
async fn stream_of_typed_messages() {
    use futures_util::StreamExt;
    let gw = FakeGateway::start().await;
    let client = Client::connect(config(&gw)).await.unwrap();
    let sender = client.sender();
    let mut stream = Box::pin(client.into_stream::<String>());
    for w in ["x", "y", "z"] {
        sender.send(&w.to_string()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            tokio::time::timeout(WAIT, stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
                .value,
        );
    }
    assert_eq!(got, ["x", "y", "z"]);
}
