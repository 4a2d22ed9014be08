//! Protocol version 2 outcomes, attacked: a hostile gateway in front of an honest (fake)
//! canister forges `MessageError`, forges `OpenResult` errors, claims an `OpenRejected`
//! without the certified message, withholds outcomes and refuses resumes. The client must
//! treat each claim as unverified (never drop or double a message, never stop), fail over to
//! the honest gateway, and believe only certified outcomes.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use ic_ws_client::{Backoff, Claim, Client, ClientConfig, ClientError, Event};
use ic_ws_protocol::{CloseReason, WsError};
use support::FakeGateway;

const WAIT: Duration = Duration::from_secs(30);

fn config(urls: &[&FakeGateway]) -> ClientConfig {
    let first = urls[0];
    let mut c = ClientConfig::new(first.url.clone(), first.canister_id())
        .with_root_key(first.root_key_der());
    for gw in &urls[1..] {
        c = c.with_fallback_gateway(gw.url.clone());
    }
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        multiplier: 2.0,
        max_attempts: Some(50),
    };
    c.open_timeout = Duration::from_millis(500);
    c
}

async fn event(client: &mut Client) -> Event {
    tokio::time::timeout(WAIT, client.next_event())
        .await
        .expect("timed out waiting for an event")
        .expect("the client stopped")
}

/// Events until `pred` matches one (inclusive).
async fn until(client: &mut Client, mut pred: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let e = event(client).await;
        let stop = pred(&e);
        seen.push(e);
        if stop {
            return seen;
        }
    }
}

fn enc(s: &str) -> Vec<u8> {
    candid::encode_one(s).unwrap()
}

fn messages(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m.clone().decode::<String>().unwrap().value),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn forged_message_rejection_drops_nothing_and_doubles_nothing() {
    let liar = FakeGateway::start().await;
    let honest = FakeGateway::start_shared(&liar).await;
    let mut client = Client::connect(config(&[&liar, &honest])).await.unwrap();
    let id = client.client_id().unwrap();
    // The liar relays the message (the canister accepts and echoes it) and also claims the
    // application refused it.
    liar.knobs(|k| k.forge_message_error = Some(WsError::Rejected("insufficient funds".into())));
    assert_eq!(client.send(&"pay".to_string()).await.unwrap(), 0);
    // The resume re-delivers the echo (seq 1) before its own Opened (seq 2).
    let mut seen = until(&mut client, |e| matches!(e, Event::Opened { .. })).await;
    // The claim is shown as unverified, never as a rejection.
    assert!(
        seen.contains(&Event::Unverified(Claim::MessageError {
            seq: 0,
            error: WsError::Rejected("insufficient funds".into())
        })),
        "{seen:?}"
    );
    assert!(!seen
        .iter()
        .any(|e| matches!(e, Event::MessageRejected { .. })));
    // It reconnected (through the honest gateway) and resumed: the canister certified it has
    // message 0, so nothing is re-sent.
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::Opened {
                resumed: true,
                next_inbound_seq: 1,
                resent: 0,
                ..
            }
        )),
        "{seen:?}"
    );
    liar.knobs(|k| k.forge_message_error = None);
    client.send(&"more".to_string()).await.unwrap();
    seen.extend(
        until(
            &mut client,
            |e| matches!(e, Event::Message(m) if m.value == enc("more")),
        )
        .await,
    );
    assert_eq!(messages(&seen), ["pay", "more"], "each echo exactly once");
    liar.with(|c| assert_eq!(c.sessions[&id].app_payloads, vec![enc("pay"), enc("more")]));
    assert_eq!(client.client_id(), Some(id));
}

#[tokio::test]
async fn forged_open_rejection_on_first_connect_fails_over_to_the_next_gateway() {
    let liar = FakeGateway::start().await;
    let honest = FakeGateway::start_shared(&liar).await;
    liar.knobs(|k| k.forge_open_error = Some(WsError::Rejected("the name is taken".into())));
    let mut client = Client::connect(config(&[&liar, &honest])).await.unwrap();
    // Connected through the honest gateway; the session the liar's open created is an orphan
    // the canister expires.
    let id = client.client_id().unwrap();
    client.send(&"hi".to_string()).await.unwrap();
    let seen = until(&mut client, |e| matches!(e, Event::Message(_))).await;
    assert_eq!(messages(&seen), ["hi"]);
    liar.with(|c| {
        assert_eq!(c.open_attempts, 2);
        assert_eq!(c.sessions[&id].app_payloads, vec![enc("hi")]);
    });
}

#[tokio::test]
async fn open_rejected_claim_without_the_certified_message_is_retried() {
    let liar = FakeGateway::start().await;
    let honest = FakeGateway::start_shared(&liar).await;
    liar.knobs(|k| {
        k.forge_open_error = Some(WsError::OpenRejected {
            client_id: 999,
            reason: "banned".into(),
        })
    });
    let started = Instant::now();
    let client = Client::connect(config(&[&liar, &honest])).await.unwrap();
    // The client waited for the certified refusal (open timeout), then went elsewhere.
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert!(client.client_id().is_some());
    assert!(client.reconnects() >= 1);
}

#[tokio::test]
async fn certified_open_rejection_is_terminal_and_reported_as_fact() {
    let gw = FakeGateway::start().await;
    gw.with(|c| c.reject_open = Some("the name is taken".into()));
    let err = Client::connect(config(&[&gw])).await.unwrap_err();
    let ClientError::OpenRejected { client_id, error } = err else {
        panic!("{err:?}")
    };
    assert_eq!(error, WsError::Rejected("the name is taken".into()));
    assert!(gw.with(|c| c.sessions[&client_id].closed));
    assert_eq!(
        gw.with(|c| c.open_attempts),
        1,
        "no retry after a certified refusal"
    );
}

#[tokio::test]
async fn withheld_outcome_times_out_and_fails_over() {
    let quiet = FakeGateway::start().await;
    let honest = FakeGateway::start_shared(&quiet).await;
    quiet.knobs(|k| k.withhold = true);
    let started = Instant::now();
    let mut client = Client::connect(config(&[&quiet, &honest])).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(450));
    let id = client.client_id().unwrap();
    // Later the honest gateway drops the connection; the next in the list (the quiet one)
    // withholds the resume's outcome: the client times out there too, comes back to the
    // honest one and resumes the same session.
    client.send(&"one".to_string()).await.unwrap();
    let seen = until(&mut client, |e| matches!(e, Event::Message(_))).await;
    assert_eq!(messages(&seen), ["one"]);
    honest.kick_all();
    let seen = until(&mut client, |e| matches!(e, Event::Opened { .. })).await;
    assert!(
        seen.iter().any(|e| matches!(
            e,
            Event::Disconnected {
                error: ClientError::Timeout(_),
                ..
            }
        )),
        "{seen:?}"
    );
    assert!(matches!(
        seen.last(),
        Some(Event::Opened { resumed: true, client_id, .. }) if *client_id == id
    ));
}

#[tokio::test]
async fn one_gateway_refusing_resumes_changes_nothing() {
    let liar = FakeGateway::start().await;
    let honest = FakeGateway::start_shared(&liar).await;
    let mut client = Client::connect(config(&[&liar, &honest])).await.unwrap();
    let id = client.client_id().unwrap();
    liar.knobs(|k| k.forge_open_error = Some(WsError::UnknownClient(id)));
    // Drop the connection: the client resumes through the honest gateway next; whenever it
    // comes back to the liar, it is refused and moves on again. Never a new session.
    for _ in 0..3 {
        liar.kick_all();
        honest.kick_all();
        let seen = until(&mut client, |e| matches!(e, Event::Opened { .. })).await;
        assert!(
            matches!(seen.last(), Some(Event::Opened { resumed: true, client_id, .. }) if *client_id == id),
            "{seen:?}"
        );
        assert!(!seen.iter().any(|e| matches!(e, Event::SessionLost { .. })));
    }
    client.send(&"still mine".to_string()).await.unwrap();
    let seen = until(&mut client, |e| matches!(e, Event::Message(_))).await;
    assert_eq!(messages(&seen), ["still mine"]);
}

#[tokio::test]
async fn resume_refused_everywhere_is_given_up_only_when_the_own_clock_proves_expiry() {
    let a = FakeGateway::start().await;
    let b = FakeGateway::start_shared(&a).await;
    // Short certified idle timeout and skew window, so that the proof comes within the test.
    let idle = Duration::from_millis(400);
    a.with(|c| c.idle_timeout_ns = idle.as_nanos() as u64);
    let mut cfg = config(&[&a, &b]);
    cfg.clock_skew = Duration::from_millis(300);
    let mut client = Client::connect(cfg).await.unwrap();
    let old = client.client_id().unwrap();
    // Two messages the canister never confirms (the relay loses them): each one could still
    // be accepted later by a gateway that withholds it, so each adds one idle timeout.
    a.with(|c| c.accept_inbound = false);
    client.send(&"lost 1".to_string()).await.unwrap();
    client.send(&"lost 2".to_string()).await.unwrap();
    let last_signed = Instant::now();
    for gw in [&a, &b] {
        gw.knobs(|k| k.forge_open_error = Some(WsError::UnknownClient(old)));
    }
    a.kick_all();
    b.kick_all();
    let seen = until(&mut client, |e| matches!(e, Event::SessionLost { .. })).await;
    let lost_at = Instant::now();
    assert_eq!(
        seen.last(),
        Some(&Event::SessionLost {
            client_id: old,
            dropped_outgoing: 2
        })
    );
    let refusals = seen
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Unverified(Claim::OpenError(WsError::UnknownClient(_)))
            )
        })
        .count();
    assert!(refusals >= 2, "every gateway refused first: {seen:?}");
    // Not before: last open or message + skew + (1 + 2 unconfirmed) x idle.
    let proof = Duration::from_millis(300) + 3 * idle;
    assert!(
        lost_at.duration_since(last_signed) >= proof,
        "gave up after {:?}, the proof needs {proof:?}",
        lost_at.duration_since(last_signed)
    );
    for gw in [&a, &b] {
        gw.knobs(|k| k.forge_open_error = None);
    }
    a.with(|c| c.accept_inbound = true);
    let seen = until(&mut client, |e| matches!(e, Event::Opened { .. })).await;
    assert!(
        matches!(seen.last(), Some(Event::Opened { resumed: false, client_id, .. }) if *client_id != old),
        "{seen:?}"
    );
    client.send(&"fresh".to_string()).await.unwrap();
    let seen = until(&mut client, |e| matches!(e, Event::Message(_))).await;
    assert_eq!(messages(&seen), ["fresh"]);
}

#[tokio::test]
async fn resume_of_a_closed_session_ends_with_the_certified_close() {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&[&gw])).await.unwrap();
    gw.with(|c| c.close_on_next_resume = true);
    gw.kick_all();
    let seen = until(&mut client, |e| matches!(e, Event::Closed(_))).await;
    assert!(seen.contains(&Event::Unverified(Claim::OpenError(WsError::Closed))));
    assert_eq!(
        seen.last(),
        Some(&Event::Closed(CloseReason::AppClosed {
            code: 4000,
            reason: "closed while away".into()
        }))
    );
    assert_eq!(
        tokio::time::timeout(WAIT, client.next_event())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn certified_message_rejection_is_a_fact() {
    let gw = FakeGateway::start().await;
    let mut client = Client::connect(config(&[&gw])).await.unwrap();
    let id = client.client_id().unwrap();
    gw.with(|c| c.echo = false);
    client.send(&"bad".to_string()).await.unwrap();
    ic_ws_test_wait(&gw, id).await;
    gw.with(|c| {
        c.push(
            id,
            ic_ws_protocol::OutboundBody::MessageRejected {
                inbound_seq: 0,
                error: WsError::Rejected("no".into()),
            },
        )
    });
    let err = tokio::time::timeout(WAIT, client.recv::<String>())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::MessageRejected {
            seq: 0,
            error: WsError::Rejected("no".into())
        }
    );
    // Confirmed: a resume re-sends nothing.
    gw.kick_all();
    let seen = until(&mut client, |e| matches!(e, Event::Opened { .. })).await;
    assert!(
        matches!(seen.last(), Some(Event::Opened { resent: 0, .. })),
        "{seen:?}"
    );
}

async fn ic_ws_test_wait(gw: &FakeGateway, id: u64) {
    let deadline = Instant::now() + WAIT;
    while gw.with(|c| c.sessions[&id].next_inbound) < 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn oversized_payload_is_refused_before_signing() {
    let gw = FakeGateway::start().await;
    gw.with(|c| c.max_inbound_payload_bytes = 1000);
    let client = Client::connect(config(&[&gw])).await.unwrap();
    let err = client.send_raw(vec![0u8; 1001]).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::TooLarge {
            size: 1001,
            limit: 1000
        }
    );
    // Nothing was signed: the next message is seq 0.
    assert_eq!(client.send(&"small".to_string()).await.unwrap(), 0);
}
