//! Peer data never takes the gateway down, and a failing worker is supervised, end to end
//! against the real gateway process:
//! - a chat name of multi-byte characters whose rejection reason is cut (issue 8, finding 1);
//! - a relay, a poller, a session, the accept loop and the admin server made to panic (test hooks, `gateway/src/testhook.rs`):
//!   the worker is restarted, `/healthz` reports the degraded window, a metric counts it, the
//!   clients resume with nothing lost and nobody else is affected;
//! - a hostile gateway sending a huge undecodable frame and huge error texts: the Rust
//!   client's error stays small (finding 5).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candid::Principal;
use futures_util::{SinkExt, StreamExt};
use ic_ws_client::{Client, ClientConfig, ClientError, Event};
use ic_ws_e2e::chat::{
    config, join, numbered, open_args, read_until, say, ChatIn, Observed, CHAT, WAIT,
};
use ic_ws_e2e::process::{temp_dir, GatewayOptions, GatewayProcess, TestNet};
use ic_ws_e2e::raw::{Incoming, RawClient};
use ic_ws_protocol::text::MAX_CLOSE_REASON_BYTES;
use ic_ws_protocol::types::{OutboundBody, OutboundContent};
use ic_ws_protocol::{GatewayFrame, WsError, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn no_args() -> Vec<u8> {
    candid::encode_args(()).unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not reached in time: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn restarts(gw: &GatewayProcess, worker: &str) -> f64 {
    gw.metric(&format!(
        "ic_ws_gateway_worker_restarts_total{{worker=\"{worker}\"}}"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multibyte_rejection_reason_does_not_take_the_gateway_down() {
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let mut gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    // 31 characters, 91 bytes: the close reason quoting it crosses byte 100 inside a
    // character, where `String::truncate(100)` panicked and killed the canister's relay.
    let name = format!("a{}", "日本".repeat(15));
    let mut first = join(config(&gw.url(), canister, &net.root_key_der, &name))
        .await
        .unwrap();

    let mut second = RawClient::connect(&gw.url(), canister, None).await.unwrap();
    let result = second.open(open_args(&name)).await.unwrap();
    // Protocol version 2: the refusal is certified (`OpenRejected` at seq 0 of the refused
    // session), delivered before the 4003 close.
    match &result {
        Err(WsError::OpenRejected { reason, .. }) => assert!(reason.contains("taken"), "{reason}"),
        other => panic!("expected the name to be refused, got {other:?}"),
    }
    let mut certified = false;
    let (code, reason) = loop {
        match tokio::time::timeout(WAIT, second.next()).await.unwrap() {
            Incoming::Close(code, reason) => break (code, reason),
            Incoming::Frame(GatewayFrame::Messages { messages, .. }) => {
                for m in messages {
                    let content: OutboundContent = ic_ws_protocol::decode(&m.content).unwrap();
                    match content.body {
                        OutboundBody::OpenRejected {
                            error: WsError::Rejected(why),
                            ..
                        } => {
                            assert_eq!(m.seq, 0);
                            assert!(why.contains("taken"), "{why}");
                            certified = true;
                        }
                        other => panic!("unexpected certified message {other:?}"),
                    }
                }
            }
            Incoming::Frame(_) => {}
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert!(certified, "the certified refusal came before the close");
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.len() <= MAX_CLOSE_REASON_BYTES, "{reason}");

    // The gateway and the canister's relay are fine: an honest member joins and talks.
    assert!(gw.is_running());
    let mut carol = join(config(&gw.url(), canister, &net.root_key_der, "carol"))
        .await
        .unwrap();
    say(&carol, "hello from carol").await.unwrap();
    let mut seen_first = Observed::default();
    read_until(&mut first, &mut seen_first, |o| {
        o.texts_from("carol") == ["hello from carol"]
    })
    .await
    .unwrap();
    say(&first, "hello from the first").await.unwrap();
    let mut seen_carol = Observed::default();
    read_until(&mut carol, &mut seen_carol, |o| {
        o.texts_from(&name) == ["hello from the first"]
    })
    .await
    .unwrap();
    // Nothing panicked (no restart masked a panic).
    assert_eq!(restarts(&gw, "relay"), 0.0);
    assert_eq!(gw.metric("ic_ws_gateway_session_panics_total"), Some(0.0));
    assert_eq!(gw.healthz().unwrap().0, 200);
}

/// A gateway with test hooks in a fresh directory.
fn hooked_gateway(net: &TestNet, canister: Principal) -> (GatewayProcess, PathBuf) {
    let hooks = temp_dir("hooks").unwrap();
    let options =
        GatewayOptions::new(net, &[canister]).arg("--test-hook-dir", hooks.to_str().unwrap());
    (GatewayProcess::start(options).unwrap(), hooks)
}

fn touch(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"").unwrap();
}

/// Three members talk; once a third of the messages are sent, `hook` makes a worker of the
/// canister panic while restarts are held. `/healthz` must report the worker down (503 naming
/// it) until the hold is released, then 200; the restart is counted; every member gets every
/// message exactly once, in order, in the same session (each was closed and resumed).
async fn worker_panic_is_survived(hook: &str, worker: &str) {
    const N: usize = 30;
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let (gw, hooks) = hooked_gateway(&net, canister);
    assert_eq!(gw.healthz().unwrap().0, 200);
    let names: Vec<String> = ["ann", "ben", "cat"].map(String::from).to_vec();
    let mut clients = Vec::new();
    for name in &names {
        clients.push(
            join(config(&gw.url(), canister, &net.root_key_der, name))
                .await
                .unwrap(),
        );
    }
    let sent = Arc::new(AtomicUsize::new(0));
    let mut talkers = Vec::new();
    let mut listeners = Vec::new();
    for (mut client, name) in clients.into_iter().zip(&names) {
        let id = client.client_id();
        let sender = client.sender();
        let (prefix, sent) = (format!("{name}-"), sent.clone());
        talkers.push(tokio::spawn(async move {
            for text in numbered(&prefix, N) {
                sender.send(&ChatIn::Say { text }).await.unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }));
        let names = names.clone();
        listeners.push(tokio::spawn(async move {
            let mut seen = Observed::default();
            // Every member is closed for the restart and resumes: read until its resume is
            // confirmed too (the certified `Opened` may come after the re-delivered messages).
            let r = read_until(&mut client, &mut seen, |o| {
                names.iter().all(|x| o.texts_from(x).len() >= N)
                    && o.events
                        .iter()
                        .any(|e| matches!(e, Event::Opened { resumed: true, .. }))
            })
            .await;
            if let Err(e) = r {
                panic!("{e}");
            }
            (client, id, seen)
        }));
    }
    let total = N * names.len();
    wait_for("a third sent", || sent.load(Ordering::SeqCst) >= total / 3).await;
    touch(&hooks, "hold-restarts");
    touch(&hooks, hook);
    let down = format!("{worker} {canister} down");
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = gw.healthz().unwrap();
            if status == 503 {
                assert!(body.contains(&down), "{body}");
                break;
            }
            assert_eq!(status, 200, "{body}");
            assert!(Instant::now() < deadline, "healthz never reported {down}");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    assert_eq!(gw.metric("ic_ws_gateway_workers_down"), Some(1.0));
    assert_eq!(restarts(&gw, worker), 0.0, "held: not restarted yet");
    std::fs::remove_file(hooks.join("hold-restarts")).unwrap();
    wait_for("healthz 200 again", || gw.healthz().unwrap().0 == 200).await;
    assert_eq!(restarts(&gw, worker), 1.0);
    assert_eq!(gw.metric("ic_ws_gateway_workers_down"), Some(0.0));

    for t in talkers {
        t.await.unwrap();
    }
    for l in listeners {
        let (client, id, seen) = l.await.unwrap();
        for name in &names {
            assert_eq!(
                seen.texts_from(name),
                numbered(&format!("{name}-"), N),
                "every message exactly once, in order: {seen:?}"
            );
        }
        assert_eq!(client.client_id(), id, "same session after the restart");
        let closed_for_restart = seen
            .disconnects()
            .iter()
            .any(|e| matches!(e, ClientError::GatewayClosed { code: 1012, .. }));
        assert!(closed_for_restart, "told to reconnect and resume: {seen:?}");
        assert!(
            seen.events
                .iter()
                .any(|e| matches!(e, Event::Opened { resumed: true, .. })),
            "resumed: {seen:?}"
        );
    }
    assert_eq!(gw.metric("ic_ws_gateway_session_panics_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_relay_is_restarted_and_its_clients_lose_nothing() {
    worker_panic_is_survived("panic-relay", "relay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_poller_is_restarted_and_its_clients_lose_nothing() {
    worker_panic_is_survived("panic-poller", "poller").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_affects_only_its_own_client() {
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let (gw, hooks) = hooked_gateway(&net, canister);
    let mut ann = join(config(&gw.url(), canister, &net.root_key_der, "ann"))
        .await
        .unwrap();
    let mut ben = join(config(&gw.url(), canister, &net.root_key_der, "ben"))
        .await
        .unwrap();
    let ann_id = ann.client_id();
    // Ann's next frame makes her session task panic.
    touch(&hooks, &format!("panic-session-{}", ann_id.unwrap()));
    say(&ann, "ann-0").await.unwrap();
    say(&ben, "ben-0").await.unwrap();
    say(&ann, "ann-1").await.unwrap();
    say(&ben, "ben-1").await.unwrap();
    let everything = |o: &Observed| {
        o.texts_from("ann") == ["ann-0", "ann-1"] && o.texts_from("ben") == ["ben-0", "ben-1"]
    };
    let mut seen_ann = Observed::default();
    read_until(&mut ann, &mut seen_ann, everything)
        .await
        .unwrap();
    let mut seen_ben = Observed::default();
    read_until(&mut ben, &mut seen_ben, everything)
        .await
        .unwrap();
    assert!(
        !seen_ann.disconnects().is_empty(),
        "ann's connection dropped: {seen_ann:?}"
    );
    assert_eq!(ann.client_id(), ann_id, "ann resumed her session");
    assert!(
        seen_ben.disconnects().is_empty(),
        "ben was not affected: {seen_ben:?}"
    );
    assert!(!hooks
        .join(format!("panic-session-{}", ann_id.unwrap()))
        .exists());
    assert_eq!(gw.metric("ic_ws_gateway_session_panics_total"), Some(1.0));
    assert_eq!(restarts(&gw, "relay"), 0.0);
    assert_eq!(gw.healthz().unwrap().0, 200);
}

/// The accept loop and the admin server are supervised like the canister workers: made to
/// panic (test hooks `panic-accept`, `panic-admin`), each is restarted on the same socket and
/// counted; while the accept loop is down `/healthz` names it; an attached client keeps
/// talking throughout and a new client can join afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_loop_and_the_admin_server_are_restarted() {
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let (gw, hooks) = hooked_gateway(&net, canister);
    let mut ann = join(config(&gw.url(), canister, &net.root_key_der, "ann"))
        .await
        .unwrap();

    touch(&hooks, "hold-restarts");
    touch(&hooks, "panic-accept");
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = gw.healthz().unwrap();
            if status == 503 {
                assert!(body.contains("accept down"), "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "healthz never reported the accept loop down"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    assert_eq!(restarts(&gw, "accept"), 0.0, "held: not restarted yet");
    // An attached client does not depend on the accept loop.
    say(&ann, "while accept is down").await.unwrap();
    let mut seen_ann = Observed::default();
    read_until(&mut ann, &mut seen_ann, |o| {
        o.texts_from("ann") == ["while accept is down"]
    })
    .await
    .unwrap();
    std::fs::remove_file(hooks.join("hold-restarts")).unwrap();
    wait_for("healthz 200 again", || gw.healthz().unwrap().0 == 200).await;
    assert_eq!(restarts(&gw, "accept"), 1.0);

    // The restarted accept loop serves the same port.
    let mut ben = join(config(&gw.url(), canister, &net.root_key_der, "ben"))
        .await
        .unwrap();
    say(&ben, "ben after the restart").await.unwrap();
    read_until(&mut ann, &mut seen_ann, |o| {
        o.texts_from("ben") == ["ben after the restart"]
    })
    .await
    .unwrap();

    // The admin server: while it is down nothing answers, so wait for the count itself.
    touch(&hooks, "panic-admin");
    let admin_restarted =
        || gw.metric("ic_ws_gateway_worker_restarts_total{worker=\"admin\"}") == Some(1.0);
    tokio::task::block_in_place(|| {
        let deadline = Instant::now() + WAIT;
        while !admin_restarted() {
            assert!(
                Instant::now() < deadline,
                "the admin server was not restarted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(!hooks.join("panic-admin").exists(), "the hook fired");
    assert_eq!(gw.healthz().unwrap().0, 200);
    assert_eq!(restarts(&gw, "accept"), 1.0);
    say(&ben, "ben after the admin restart").await.unwrap();
    read_until(&mut ann, &mut seen_ann, |o| {
        o.texts_from("ben") == ["ben after the restart", "ben after the admin restart"]
    })
    .await
    .unwrap();
    assert!(
        seen_ann.disconnects().is_empty(),
        "ann was never disconnected: {seen_ann:?}"
    );
    let mut seen_ben = Observed::default();
    read_until(&mut ben, &mut seen_ben, |o| o.texts_from("ben").len() == 2)
        .await
        .unwrap();
    assert_eq!(gw.metric("ic_ws_gateway_session_panics_total"), Some(0.0));
}

/// A hostile "gateway" on a local port: sends `Hello`, then, after the client's open, `frame`.
async fn hostile_gateway(frame: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = ic_ws_protocol::encode(&GatewayFrame::Hello {
            gateway: Principal::anonymous(),
            protocol_version: PROTOCOL_VERSION,
        })
        .unwrap();
        ws.send(WsMessage::Binary(hello.into())).await.unwrap();
        let _open = ws.next().await;
        let _ = ws.send(WsMessage::Binary(frame.into())).await;
        // Keep the socket until the client hangs up.
        while let Some(Ok(_)) = ws.next().await {}
    });
    format!("ws://{addr}")
}

async fn connect_error(url: String) -> ClientError {
    let mut config = ClientConfig::new(url, Principal::from_slice(&[1; 10]));
    config.backoff.max_attempts = Some(0);
    match tokio::time::timeout(WAIT, Client::connect(config)).await {
        // One attempt (`max_attempts = 0`): the client reports the attempt's error as the
        // last one before giving up (every failure short of a certified refusal is retried).
        Ok(Err(ClientError::GaveUp { last, .. })) => *last,
        Ok(Err(e)) => e,
        Ok(Ok(_)) => panic!("connected to a hostile gateway"),
        Err(_) => panic!("no error in time"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_keeps_its_error_text_small_for_a_huge_bad_frame() {
    // 15 MiB that start like candid but are not a frame.
    let mut junk = b"DIDL\x00\x01\x71".to_vec();
    junk.extend(std::iter::repeat_n(0xab_u8, 15 * 1024 * 1024));
    let error = connect_error(hostile_gateway(junk.clone()).await).await;
    let text = error.to_string();
    assert!(matches!(error, ClientError::Protocol(_)), "{text}");
    assert!(text.len() < 1024, "{} bytes of error text", text.len());
    assert!(
        text.contains(&format!("{} bytes: 4449444c000171abab", junk.len())),
        "{text}"
    );

    // An open refusal whose relayed (uncertified) reason is 1 MB of multi-byte text.
    let refusal = GatewayFrame::OpenResult(Err(WsError::Rejected("日本".repeat(200_000))));
    let error =
        connect_error(hostile_gateway(ic_ws_protocol::encode(&refusal).unwrap()).await).await;
    let text = error.to_string();
    assert!(
        matches!(&error, ClientError::OpenRefused(WsError::Rejected(r)) if r.ends_with('…')),
        "{}",
        ic_ws_protocol::text::truncate_utf8(&text, 200)
    );
    assert!(text.len() < 1024, "{} bytes of error text", text.len());
}
