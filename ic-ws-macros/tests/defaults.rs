//! An app with only `#[on_message]`: the generated endpoints fall back to the runtime's
//! default `on_open` (accept every open, whatever its arguments) and `on_close` (nothing),
//! through the marker's trait constants, and the handler still runs.
#![allow(clippy::unwrap_used)]

use ic_ws_canister::__private::{default_on_close, default_on_open, ws_message, ws_open};
use ic_ws_canister::{on_message, testing, ClientId, MessageBatch, MessageResult, OpenBatch};
use ic_ws_protocol::{ClientMessage, MessageKind, SessionKey};
use std::cell::Cell;

thread_local! {
    static RECEIVED: Cell<u64> = const { Cell::new(0) };
}

#[on_message]
fn count(_client: ClientId, amount: u64) {
    RECEIVED.with(|r| r.set(r.get() + amount));
}

#[test]
fn missing_handlers_are_the_runtime_defaults() {
    let handlers = __ic_ws_on_message::App::HANDLERS;
    assert_eq!(
        handlers.on_open as usize,
        default_on_open as fn(ClientId, &[u8]) -> Result<(), ic_ws_canister::WsError> as usize
    );
    assert_eq!(
        handlers.on_close as usize,
        default_on_close as fn(ClientId, ic_ws_canister::CloseReason) as usize
    );
}

#[test]
fn opens_are_accepted_whatever_their_arguments_and_messages_handled() {
    let key = SessionKey::from_seed([9; 32]);
    testing::set_caller(testing::gateway(1));
    let mut open = testing::open_request(&key, testing::gateway(1), None);
    open.args = b"anything at all".to_vec();
    key.sign_open(&testing::canister_id(), &mut open);
    let handlers = &__ic_ws_on_message::App::HANDLERS;
    let client = ws_open(handlers, OpenBatch { opens: vec![open] })
        .pop()
        .unwrap()
        .unwrap()
        .client_id;

    let mut msg = ClientMessage {
        client_id: client,
        seq: 0,
        ack: 0,
        kind: MessageKind::App(candid::encode_one(5u64).unwrap()),
        signature: Vec::new(),
    };
    key.sign_message(&testing::canister_id(), &mut msg);
    let batch = MessageBatch {
        messages: vec![msg],
    };
    assert_eq!(ws_message(handlers, batch).pop(), Some(MessageResult::Ok));
    assert_eq!(RECEIVED.with(Cell::get), 5);
}
