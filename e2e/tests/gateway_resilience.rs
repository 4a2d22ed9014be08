//! Gateway failures and hostile peers, end to end: the gateway SIGKILLed and restarted
//! mid-stream, the canister upgraded mid-stream, a client moving to another gateway, a
//! stalled client, malformed frames. In every case no verified message is lost or duplicated.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candid::Principal;
use ic_ws_client::{Client, Event};
use ic_ws_e2e::chat::{
    config, join, numbered, open_args, read_until, say, ChatIn, Observed, CHAT, WAIT,
};
use ic_ws_e2e::process::{GatewayOptions, GatewayProcess, TestNet};
use ic_ws_e2e::raw::{Incoming, RawClient};
use ic_ws_protocol::{ClientFrame, GatewayFrame, WsError};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn no_args() -> Vec<u8> {
    candid::encode_args(()).unwrap()
}

/// Each client says `<name>-0 .. <name>-{n-1}` with a short pause; `sent` counts all sends.
fn talk(
    client: &Client,
    name: &str,
    n: usize,
    sent: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let sender = client.sender();
    let name = name.to_string();
    tokio::spawn(async move {
        for text in numbered(&format!("{name}-"), n) {
            sender.send(&ChatIn::Say { text }).await.unwrap();
            sent.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

/// Reads until every name's n messages arrived; returns what the client observed.
fn listen(
    mut client: Client,
    names: Vec<String>,
    n: usize,
) -> tokio::task::JoinHandle<(Client, Observed)> {
    tokio::spawn(async move {
        let mut seen = Observed::default();
        let r = read_until(&mut client, &mut seen, |o| {
            names.iter().all(|x| o.texts_from(x).len() >= n)
        })
        .await;
        if let Err(e) = r {
            panic!("{e}");
        }
        (client, seen)
    })
}

async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Three clients talk while `disrupt` happens once a third of the messages are sent; then
/// every client must have every message exactly once, in per-sender order, in the same
/// sessions.
async fn survive(
    net: &TestNet,
    canister: Principal,
    urls: &[String],
    disrupt: impl FnOnce(),
) -> Vec<Observed> {
    const N: usize = 30;
    let names: Vec<String> = ["ann", "ben", "cat"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let mut talkers = Vec::new();
    let mut listeners = Vec::new();
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for name in &names {
        let mut cfg = config(&urls[0], canister, &net.root_key_der, name);
        for u in &urls[1..] {
            cfg = cfg.with_fallback_gateway(u.clone());
        }
        clients.push(join(cfg).await.unwrap());
    }
    // Everybody is in the room before anybody talks (the chat sends to present members).
    for (c, name) in clients.into_iter().zip(&names) {
        ids.push(c.client_id());
        talkers.push(talk(&c, name, N, sent.clone()));
        listeners.push(listen(c, names.clone(), N));
    }
    let total = N * names.len();
    wait_for(|| sent.load(Ordering::SeqCst) >= total / 3).await;
    tokio::task::block_in_place(disrupt);
    for t in talkers {
        t.await.unwrap();
    }
    let mut all = Vec::new();
    for (l, id) in listeners.into_iter().zip(ids) {
        let (client, seen) = l.await.unwrap();
        for name in &names {
            assert_eq!(
                seen.texts_from(name),
                numbered(&format!("{name}-"), N),
                "{seen:?}"
            );
        }
        assert_eq!(client.client_id(), id, "same session after the disruption");
        all.push(seen);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_and_restarted_loses_nothing() {
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let mut gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let urls = vec![gw.url()];
    let gw_ref = &mut gw;
    let seen = survive(&net, canister, &urls, || {
        gw_ref.kill();
        gw_ref.restart().unwrap();
    })
    .await;
    for s in &seen {
        assert!(
            !s.disconnects().is_empty(),
            "every client saw the gateway die: {s:?}"
        );
        assert!(s
            .events
            .iter()
            .any(|e| matches!(e, Event::Opened { resumed: true, .. })));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canister_upgraded_mid_stream_loses_nothing() {
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let urls = vec![gw.url()];
    let seen = survive(&net, canister, &urls, || {
        net.upgrade(canister, CHAT, &no_args()).unwrap()
    })
    .await;
    assert_eq!(seen.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_moves_to_another_gateway_and_resumes() {
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let mut first = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let second = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    assert_ne!(first.principal, second.principal);
    // The clients start on the first gateway and fall back to the second.
    let urls = vec![first.url(), second.url()];
    let first_ref = &mut first;
    let seen = survive(&net, canister, &urls, || first_ref.kill()).await;
    for s in &seen {
        assert!(
            s.events
                .iter()
                .any(|e| matches!(e, Event::Opened { resumed: true, .. })),
            "resumed through the second gateway: {s:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_does_not_delay_the_others() {
    const N: usize = 600;
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let options = GatewayOptions::new(&net, &[canister])
        .arg("--send-buffer-frames", "8")
        .arg("--send-buffer-bytes", "65536")
        .arg("--write-timeout-ms", "3000");
    let gw = GatewayProcess::start(options).unwrap();
    // A member that opens and then never reads, with a small socket receive buffer.
    let mut stalled = RawClient::connect(&gw.url(), canister, Some(4096))
        .await
        .unwrap();
    assert!(stalled.open(open_args("stalled")).await.unwrap().is_ok());

    let mut alice = join(config(&gw.url(), canister, &net.root_key_der, "alice"))
        .await
        .unwrap();
    let bob = join(config(&gw.url(), canister, &net.root_key_der, "bob"))
        .await
        .unwrap();
    // The chat takes at most 1000 characters per message: ~600 KB in all.
    let filler = "x".repeat(990);
    let started = Instant::now();
    for i in 0..N {
        say(&bob, &format!("{i}:{filler}")).await.unwrap();
    }
    let mut seen = Observed::default();
    read_until(&mut alice, &mut seen, |o| o.texts_from("bob").len() >= N)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let got: Vec<String> = seen
        .texts_from("bob")
        .iter()
        .map(|t| t.split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(got, numbered("", N));
    assert!(seen.disconnects().is_empty(), "{seen:?}");
    eprintln!(
        "measured: {N} x 1 KB broadcasts verified by alice in {elapsed:?} next to a stalled member"
    );
    // The stalled member is still connected and has read nothing since its open: the
    // broadcasts above were delivered to alice while its frames piled up. (At this volume
    // the kernel's socket buffers absorb its share, so the gateway's 4001 cut-off is not
    // reached here; gateway/tests cover the overflow itself.)
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_sender() {
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let mut alice = join(config(&gw.url(), canister, &net.root_key_der, "alice"))
        .await
        .unwrap();
    let mut seen = Observed::default();
    say(&alice, "before").await.unwrap();
    read_until(&mut alice, &mut seen, |o| !o.said.is_empty())
        .await
        .unwrap();

    // Not candid.
    let mut garbage = RawClient::connect(&gw.url(), canister, None).await.unwrap();
    garbage
        .send_raw(WsMessage::Binary(vec![0xde, 0xad, 0xbe, 0xef].into()))
        .await
        .unwrap();
    assert_eq!(garbage.close_code().await, Some(1008));
    // A text frame.
    let mut text = RawClient::connect(&gw.url(), canister, None).await.unwrap();
    text.send_raw(WsMessage::Text("hello".into()))
        .await
        .unwrap();
    assert_eq!(text.close_code().await, Some(1008));
    // Bigger than the gateway's frame limit (128 KiB by default).
    let mut big = RawClient::connect(&gw.url(), canister, None).await.unwrap();
    let _ = big
        .send_raw(WsMessage::Binary(vec![0u8; 256 * 1024].into()))
        .await;
    assert_eq!(big.close_code().await, Some(1009));
    // A forged signature after a genuine open: the canister refuses it, for this sender only.
    let mut forger = RawClient::connect(&gw.url(), canister, None).await.unwrap();
    assert!(forger.open(open_args("mallory")).await.unwrap().is_ok());
    let payload = candid::encode_one(ChatIn::Say {
        text: "forged".into(),
    })
    .unwrap();
    let forged = forger.message(payload, true);
    forger.send(&ClientFrame::Message(forged)).await.unwrap();
    let error = loop {
        match tokio::time::timeout(WAIT, forger.next()).await.unwrap() {
            Incoming::Frame(GatewayFrame::MessageError { seq, error }) => break (seq, error),
            Incoming::Frame(_) => {}
            other => panic!("expected MessageError, got {other:?}"),
        }
    };
    assert_eq!(error, (0, WsError::InvalidSignature));

    // Alice never noticed.
    say(&alice, "after").await.unwrap();
    read_until(&mut alice, &mut seen, |o| o.texts_from("alice").len() >= 2)
        .await
        .unwrap();
    assert_eq!(seen.texts_from("alice"), ["before", "after"]);
    assert!(!seen.texts_from("mallory").contains(&"forged".to_string()));
    assert!(seen.disconnects().is_empty(), "{seen:?}");
}
