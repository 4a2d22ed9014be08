//! Native tests (`cargo test`): the candid file is in sync, and the counter behaves, driven
//! through the generated handlers and the runtime's fake IC environment (the same code
//! paths as in the canister, minus the system API).

use super::*;
use ic_ws_canister::__private::{ws_message, ws_open, ws_poll};
use ic_ws_canister::{testing, MessageBatch, MessageResult, OpenBatch, PollRequest, WsError};
use ic_ws_protocol::{ClientMessage, MessageKind, OutboundBody, OutboundContent, SessionKey};

const DID_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/counter.did");

/// `counter.did` is what the code exports; `UPDATE_DID=1 cargo test` rewrites it.
#[test]
fn candid_interface_matches_counter_did() {
    let generated = __export_service();
    if std::env::var_os("UPDATE_DID").is_some() {
        std::fs::write(DID_PATH, &generated).expect("write counter.did");
        return;
    }
    let on_disk = std::fs::read_to_string(DID_PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "counter.did is out of date with the canister's interface: regenerate it with \
         `UPDATE_DID=1 cargo test candid_interface` and commit it.\nGenerated:\n{generated}"
    );
    // The message types are named for client bindings (`ws_app_types`).
    assert!(generated.contains("ws_app_types : () -> (opt CounterIn, opt CounterOut) query;"));
}

struct Page {
    id: ClientId,
    key: SessionKey,
    seq: u64,
}

fn handlers() -> &'static ic_ws_canister::__private::Handlers {
    &__ic_ws_on_message::App::HANDLERS
}

fn connect(seed: u8) -> Page {
    let key = SessionKey::from_seed([seed; 32]);
    testing::set_caller(testing::gateway(1));
    let open = testing::open_request(&key, testing::gateway(1), None);
    let ok = ws_open(handlers(), OpenBatch { opens: vec![open] }).pop();
    let ok = ok.expect("one result").expect("open accepted");
    Page {
        id: ok.client_id,
        key,
        seq: 0,
    }
}

fn send(page: &mut Page, message: CounterIn) -> MessageResult {
    let payload = candid::encode_one(message).expect("encode");
    let mut msg = ClientMessage {
        client_id: page.id,
        seq: page.seq,
        ack: 0,
        kind: MessageKind::App(payload),
        signature: Vec::new(),
    };
    page.key.sign_message(&testing::canister_id(), &mut msg);
    page.seq += 1;
    testing::set_caller(testing::gateway(1));
    ws_message(
        handlers(),
        MessageBatch {
            messages: vec![msg],
        },
    )
    .pop()
    .expect("one result")
}

/// Every app message the gateway would deliver to `page` so far.
fn inbox(page: &Page) -> Vec<CounterOut> {
    testing::set_caller(testing::gateway(1));
    let request = PollRequest {
        cursor: 0,
        max_messages: None,
        max_bytes: None,
        max_clients: None,
    };
    let reply = ws_poll(request).expect("poll");
    let mut out = Vec::new();
    for m in reply.messages.iter().filter(|m| m.client_id == page.id) {
        let content: OutboundContent = candid::decode_one(&m.content).expect("content");
        if let OutboundBody::App { payload, .. } = content.body {
            out.push(candid::decode_one(&payload).expect("CounterOut"));
        }
    }
    out
}

#[test]
fn every_page_sees_every_change() {
    let mut ada = connect(1);
    assert_eq!(inbox(&ada), [CounterOut::Value { value: 0, by: None }]);
    let bob = connect(2);
    assert_eq!(send(&mut ada, CounterIn::Add(5)), MessageResult::Ok);
    let change = CounterOut::Value {
        value: 5,
        by: Some(ada.id),
    };
    assert_eq!(inbox(&ada).last(), Some(&change));
    assert_eq!(inbox(&bob).last(), Some(&change));
    assert_eq!(get(), 5);

    // Too large a step is refused, to the sender only, and changes nothing.
    match send(&mut ada, CounterIn::Add(MAX_STEP + 1)) {
        MessageResult::Err(WsError::Rejected(why)) => assert!(why.contains("at most"), "{why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(get(), 5);
    assert_eq!(send(&mut ada, CounterIn::Reset), MessageResult::Ok);
    assert_eq!(
        inbox(&bob).last(),
        Some(&CounterOut::Value {
            value: 0,
            by: Some(ada.id)
        })
    );
}
