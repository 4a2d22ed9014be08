//! Gateway + Rust clients end to end: the embedded replica with the chat example built to
//! wasm, the gateway as a real process, clients verifying every certified message.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use ic_ws_e2e::chat::{config, join, numbered, read_until, say, Observed, CHAT};
use ic_ws_e2e::process::{GatewayOptions, GatewayProcess, TestNet};

fn no_args() -> Vec<u8> {
    candid::encode_args(()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_through_a_real_gateway() {
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();

    let started = Instant::now();
    let mut alice = join(config(&gw.url(), canister, &net.root_key_der, "alice"))
        .await
        .unwrap();
    let connected = started.elapsed();
    let sent = Instant::now();
    say(&alice, "hello, world").await.unwrap();
    let mut seen = Observed::default();
    read_until(&mut alice, &mut seen, |s| !s.said.is_empty())
        .await
        .unwrap();
    eprintln!(
        "measured: connect+open {connected:?}, say -> verified echo {:?}",
        sent.elapsed()
    );
    assert_eq!(
        seen.said,
        vec![("alice".to_string(), "hello, world".to_string())]
    );
    assert!(seen.disconnects().is_empty(), "{seen:?}");
    assert!(alice.client_id().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_clients_messages_arrive_in_order() {
    messages_arrive_in_order(None).await;
}

/// The same with one client per poll page (`--poll-page-clients 1`, and no growth of the cap
/// under the backlog): the canister's wasm cuts every page before a second client, and nothing
/// is lost, duplicated or reordered across the many small pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_order_in_pages_of_one_client() {
    let (_net, gw) = messages_arrive_in_order(Some("1")).await;
    let pages = gw.metric("ic_ws_gateway_page_clients_count").unwrap();
    let single = gw
        .metric("ic_ws_gateway_page_clients_bucket{le=\"1\"}")
        .unwrap();
    // 3 clients x 3 x 40 broadcasts, in pages of one client each.
    assert!(pages >= 9.0, "{pages} pages");
    assert_eq!(single, pages, "every page carried one client");
    assert_eq!(gw.metric("ic_ws_gateway_page_cap_grown_total"), Some(0.0));
}

/// Three clients each say N messages at once; every client sees everyone's, in order, once.
/// Returns the replica and the gateway, still running (for the gateway's metrics).
async fn messages_arrive_in_order(page_clients: Option<&str>) -> (TestNet, GatewayProcess) {
    const N: usize = 40;
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let mut options = GatewayOptions::new(&net, &[canister]);
    if let Some(n) = page_clients {
        options = options
            .arg("--poll-page-clients", n)
            .arg("--poll-page-clients-max", n);
    }
    let gw = GatewayProcess::start(options).unwrap();
    let names = ["ann", "ben", "cat"];
    let mut clients = Vec::new();
    for name in names {
        clients.push(
            join(config(&gw.url(), canister, &net.root_key_der, name))
                .await
                .unwrap(),
        );
    }
    // Everybody sends N messages back to back, without waiting for anything.
    for (client, name) in clients.iter().zip(names) {
        for text in numbered(&format!("{name}-"), N) {
            say(client, &text).await.unwrap();
        }
    }
    for (client, name) in clients.iter_mut().zip(names) {
        let mut seen = Observed::default();
        read_until(client, &mut seen, |s| s.said.len() >= N * names.len())
            .await
            .unwrap();
        for sender in names {
            assert_eq!(
                seen.texts_from(sender),
                numbered(&format!("{sender}-"), N),
                "{name} sees {sender}'s messages in order, each once"
            );
        }
        assert!(seen.disconnects().is_empty(), "{name}: {seen:?}");
    }
    (net, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_many_clients() {
    const CLIENTS: usize = 30;
    const ROUNDS: usize = 5;
    let net = TestNet::start().unwrap();
    let canister = net.install(CHAT, &no_args()).unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let c = join(config(
            &gw.url(),
            canister,
            &net.root_key_der,
            &format!("u{i}"),
        ))
        .await
        .unwrap();
        clients.push(c);
    }
    let started = Instant::now();
    for text in numbered("broadcast-", ROUNDS) {
        say(&clients[0], &text).await.unwrap();
    }
    let mut handles = Vec::new();
    for mut c in clients {
        handles.push(tokio::spawn(async move {
            let mut seen = Observed::default();
            read_until(&mut c, &mut seen, |s| s.texts_from("u0").len() >= ROUNDS).await?;
            Ok::<_, String>(seen.texts_from("u0"))
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap(), numbered("broadcast-", ROUNDS));
    }
    eprintln!(
        "measured: {ROUNDS} messages fanned out to {CLIENTS} clients ({} verified deliveries) in {:?}",
        ROUNDS * CLIENTS,
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_canisters_on_one_gateway() {
    let net = TestNet::start().unwrap();
    let room_a = net.install(CHAT, &no_args()).unwrap();
    let room_b = net.install(CHAT, &no_args()).unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[room_a, room_b])).unwrap();
    let mut a = join(config(&gw.url(), room_a, &net.root_key_der, "in-a"))
        .await
        .unwrap();
    let mut b = join(config(&gw.url(), room_b, &net.root_key_der, "in-b"))
        .await
        .unwrap();
    say(&a, "only for room a").await.unwrap();
    say(&b, "only for room b").await.unwrap();
    say(&a, "a again").await.unwrap();
    let (mut seen_a, mut seen_b) = (Observed::default(), Observed::default());
    read_until(&mut a, &mut seen_a, |s| s.said.len() >= 2)
        .await
        .unwrap();
    read_until(&mut b, &mut seen_b, |s| !s.said.is_empty())
        .await
        .unwrap();
    // A marker through room b after everything else: b has seen all it will ever see.
    say(&b, "end").await.unwrap();
    read_until(&mut b, &mut seen_b, |s| {
        s.texts_from("in-b").contains(&"end".to_string())
    })
    .await
    .unwrap();
    assert_eq!(seen_a.texts_from("in-a"), ["only for room a", "a again"]);
    assert!(seen_a.texts_from("in-b").is_empty(), "{seen_a:?}");
    assert_eq!(seen_b.texts_from("in-b"), ["only for room b", "end"]);
    assert!(seen_b.texts_from("in-a").is_empty(), "{seen_b:?}");
    assert!(seen_a.disconnects().is_empty() && seen_b.disconnects().is_empty());
}
