//! Native tests of the ticker: candid file in sync, subscriptions, ticks fanned out to
//! subscribers only, and the app's certified quotes composed with the ws runtime's data.
#![allow(clippy::unwrap_used)]

use super::*;
use ic_certification::{HashTree, LookupResult};
use ic_ws_canister::__private::{ws_message, ws_open, ws_poll};
use ic_ws_canister::{testing, MessageBatch, MessageResult, OpenBatch, PollRequest, WsError};
use ic_ws_protocol::{ClientMessage, MessageKind, OutboundBody, OutboundContent, SessionKey};

const DID_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ticker.did");

#[test]
fn candid_interface_matches_ticker_did() {
    let generated = __export_service();
    if std::env::var_os("UPDATE_DID").is_some() {
        std::fs::write(DID_PATH, &generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(DID_PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "examples/ticker/ticker.did is out of date with the canister's interface; regenerate \
         it with `UPDATE_DID=1 cargo test -p ic-ws-example-ticker candid_interface` and commit \
         it.\nGenerated interface:\n{generated}"
    );
}

#[test]
fn candid_interface_names_the_ticker_types() {
    let generated = __export_service();
    assert!(generated.contains("ws_app_types : () -> (opt TickerIn, opt TickerOut) query;"));
    assert!(
        !generated.contains("ws_open_args_type"),
        "no #[on_open] here"
    );
}

struct Client {
    id: ClientId,
    key: SessionKey,
    seq: u64,
}

fn handlers() -> &'static ic_ws_canister::__private::Handlers {
    &__ic_ws_on_message::App::HANDLERS
}

fn install() {
    setup(TickerInit::default()).unwrap();
}

fn connect(seed: u8) -> Client {
    let key = SessionKey::from_seed([seed; 32]);
    testing::set_caller(testing::gateway(1));
    let open = testing::open_request(&key, testing::gateway(1), None);
    let ok = ws_open(handlers(), OpenBatch { opens: vec![open] })
        .pop()
        .unwrap()
        .unwrap();
    Client {
        id: ok.client_id,
        key,
        seq: 0,
    }
}

fn send(client: &mut Client, message: TickerIn) -> MessageResult {
    let mut msg = ClientMessage {
        client_id: client.id,
        seq: client.seq,
        ack: 0,
        kind: MessageKind::App(candid::encode_one(message).unwrap()),
        signature: Vec::new(),
    };
    client.key.sign_message(&testing::canister_id(), &mut msg);
    client.seq += 1;
    testing::set_caller(testing::gateway(1));
    let batch = MessageBatch {
        messages: vec![msg],
    };
    ws_message(handlers(), batch).pop().unwrap()
}

fn subscribe(client: &mut Client, symbols: &[&str]) -> MessageResult {
    let symbols = symbols.iter().map(|s| s.to_string()).collect();
    send(client, TickerIn::Subscribe { symbols })
}

/// Every app message delivered to `client` so far.
fn inbox(client: &Client) -> Vec<TickerOut> {
    testing::set_caller(testing::gateway(1));
    let reply = ws_poll(PollRequest {
        cursor: 0,
        max_messages: None,
        max_bytes: None,
        max_clients: None,
    })
    .unwrap();
    reply
        .messages
        .iter()
        .filter(|m| m.client_id == client.id)
        .filter_map(|m| {
            let content: OutboundContent = candid::decode_one(&m.content).unwrap();
            match content.body {
                OutboundBody::App { payload, .. } => Some(candid::decode_one(&payload).unwrap()),
                _ => None,
            }
        })
        .collect()
}

fn prices_of(events: &[TickerOut]) -> Vec<(String, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            TickerOut::Price(q) => Some((q.symbol.clone(), q.tick)),
            _ => None,
        })
        .collect()
}

#[test]
fn subscribers_get_a_snapshot_then_every_tick_of_their_symbols_only() {
    install();
    let mut alice = connect(1);
    let mut bob = connect(2);
    assert_eq!(subscribe(&mut alice, &["ICP"]), MessageResult::Ok);
    assert_eq!(subscribe(&mut bob, &["BTC", "ETH"]), MessageResult::Ok);
    tick_once();
    tick_once();
    let alice_inbox = inbox(&alice);
    assert_eq!(
        alice_inbox.first(),
        Some(&TickerOut::Subscribed {
            symbols: vec!["ICP".into()]
        })
    );
    assert_eq!(
        prices_of(&alice_inbox),
        vec![("ICP".into(), 0), ("ICP".into(), 1), ("ICP".into(), 2)]
    );
    let bob_prices = prices_of(&inbox(&bob));
    assert_eq!(bob_prices.len(), 6, "{bob_prices:?}");
    assert!(bob_prices.iter().all(|(s, _)| s == "BTC" || s == "ETH"));
}

#[test]
fn unsubscribing_stops_the_quotes() {
    install();
    let mut alice = connect(1);
    subscribe(&mut alice, &["ICP"]);
    tick_once();
    let unsubscribe = TickerIn::Unsubscribe {
        symbols: vec!["ICP".into()],
    };
    assert_eq!(send(&mut alice, unsubscribe), MessageResult::Ok);
    tick_once();
    let events = inbox(&alice);
    assert_eq!(
        events.last(),
        Some(&TickerOut::Unsubscribed {
            symbols: vec!["ICP".into()]
        })
    );
    assert_eq!(
        prices_of(&events),
        vec![("ICP".into(), 0), ("ICP".into(), 1)]
    );
}

#[test]
fn unknown_symbols_change_nothing() {
    install();
    let mut alice = connect(1);
    match subscribe(&mut alice, &["ICP", "NOPE"]) {
        MessageResult::Err(WsError::Rejected(reason)) => assert!(reason.contains("NOPE")),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(symbols().iter().all(|s| s.subscribers == 0));
    assert!(inbox(&alice).is_empty());
}

#[test]
fn symbols_query_counts_subscribers() {
    install();
    let mut alice = connect(1);
    let mut bob = connect(2);
    subscribe(&mut alice, &["ICP"]);
    subscribe(&mut bob, &["ICP", "ETH"]);
    let counts: Vec<(String, u64)> = symbols()
        .into_iter()
        .map(|s| (s.quote.symbol, s.subscribers))
        .collect();
    assert_eq!(
        counts,
        vec![("BTC".into(), 0), ("ETH".into(), 1), ("ICP".into(), 2)]
    );
}

#[test]
fn certified_quotes_verify_against_the_certified_data() {
    install();
    let mut alice = connect(1);
    subscribe(&mut alice, &["ICP"]);
    tick_once();
    let reply = certified_quotes();
    let tree: HashTree = serde_cbor::from_slice(&reply.tree).unwrap();
    // The tree's root is what the canister put in certified_data (a client checks this
    // against the certificate), and it carries the ws messages' subtree too.
    assert_eq!(Some(tree.digest()), testing::certified_data());
    for quote in &reply.quotes {
        match tree.lookup_path([b"app".as_slice(), quote.symbol.as_bytes()]) {
            LookupResult::Found(bytes) => {
                let certified: Quote = candid::decode_one(bytes).unwrap();
                assert_eq!(&certified, quote);
                assert_eq!(certified.tick, 1);
            }
            _ => panic!("{} is not certified", quote.symbol),
        }
    }
}

#[test]
fn prices_move_deterministically_within_bounds() {
    let mut price = 10.0;
    for tick in 1..=1000 {
        let next = next_price(price, tick, "ICP");
        assert_eq!(next, next_price(price, tick, "ICP"), "deterministic");
        assert!(next > 0.0);
        assert!(
            (next - price).abs() <= price * MAX_MOVE + 0.01,
            "{price} -> {next}"
        );
        price = next;
    }
    assert_ne!(next_price(10.0, 1, "ICP"), next_price(10.0, 1, "BTC"));
}

#[test]
fn bad_install_arguments_are_refused() {
    let bad = |symbol: &str, price: f64| TickerInit {
        symbols: Some(vec![SymbolInit {
            symbol: symbol.into(),
            price,
        }]),
        interval_ms: None,
    };
    assert!(setup(bad("icp", 1.0)).is_err());
    assert!(setup(bad("ICP", 0.0)).is_err());
    assert!(setup(bad("ICP", f64::NAN)).is_err());
    assert!(setup(TickerInit {
        symbols: Some(Vec::new()),
        interval_ms: None
    })
    .is_err());
    assert!(quotes().is_empty(), "nothing installed");
}
