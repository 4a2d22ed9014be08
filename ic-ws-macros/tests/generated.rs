//! Behaviour of the code the attributes generate, driven natively through the runtime (its
//! `testing` module fakes the IC environment): typed decoding, `Err` -> `Rejected`, open
//! arguments, `on_close` with the reason, and the exported candid interface (compared with
//! `docs/protocol.md`).
#![allow(clippy::unwrap_used)]

use candid::{CandidType, Deserialize};
use ic_ws_canister::__private::{ws_message, ws_open};
use ic_ws_canister::{
    on_close, on_message, on_open, testing, ClientId, CloseReason, MessageBatch, MessageResult,
    OpenBatch, WsError,
};
use ic_ws_protocol::{ClientMessage, MessageKind, OpenRequest, SessionKey};
use std::cell::RefCell;

#[derive(CandidType, Deserialize)]
pub struct Join {
    name: String,
}

#[derive(CandidType, Deserialize)]
pub enum Inbound {
    Ping(u32),
    Refuse(String),
}

#[derive(CandidType, Deserialize)]
pub enum Outbound {
    Pong(u32),
}

thread_local! {
    /// What the handlers saw, in order.
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn log(entry: String) {
    LOG.with(|l| l.borrow_mut().push(entry));
}

fn take_log() -> Vec<String> {
    LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

#[on_open]
fn open(client: ClientId, join: Join) -> Result<(), String> {
    if join.name == "nobody" {
        return Err("nobody may join".to_string());
    }
    log(format!("open {client} {}", join.name));
    Ok(())
}

// Parameter names equal to the generated shim's locals and the handler named like the
// attribute: hygiene must keep them apart.
#[on_message(outbound = Outbound)]
fn message(message: ClientId, client: Inbound) -> Result<(), String> {
    match client {
        Inbound::Ping(n) => {
            log(format!("ping {message} {n}"));
            ic_ws_canister::send(message, &Outbound::Pong(n)).map_err(|e| e.to_string())?;
            Ok(())
        }
        Inbound::Refuse(why) => Err(why),
    }
}

#[on_close]
fn close(client: ClientId, reason: CloseReason) {
    log(format!("close {client} {reason:?}"));
}

ic_cdk::export_candid!();

/// A test client: its key and next inbound sequence number.
struct Client {
    id: ClientId,
    key: SessionKey,
    seq: u64,
}

fn open_with_args(seed: u8, args: Vec<u8>) -> (Result<ClientId, WsError>, SessionKey) {
    let key = SessionKey::from_seed([seed; 32]);
    testing::set_caller(testing::gateway(1));
    let mut open: OpenRequest = testing::open_request(&key, testing::gateway(1), None);
    open.args = args;
    key.sign_open(&testing::canister_id(), &mut open);
    let batch = OpenBatch { opens: vec![open] };
    let result = ws_open(&__ic_ws_on_message::App::HANDLERS, batch)
        .pop()
        .unwrap();
    (result.map(|ok| ok.client_id), key)
}

fn join(seed: u8, name: &str) -> Client {
    let args = candid::encode_one(Join { name: name.into() }).unwrap();
    let (id, key) = open_with_args(seed, args);
    Client {
        id: id.unwrap(),
        key,
        seq: 0,
    }
}

fn send_kind(client: &mut Client, kind: MessageKind) -> MessageResult {
    let mut msg = ClientMessage {
        client_id: client.id,
        seq: client.seq,
        ack: 0,
        kind,
        signature: Vec::new(),
    };
    client.key.sign_message(&testing::canister_id(), &mut msg);
    client.seq += 1;
    let batch = MessageBatch {
        messages: vec![msg],
    };
    ws_message(&__ic_ws_on_message::App::HANDLERS, batch)
        .pop()
        .unwrap()
}

fn send_app(client: &mut Client, payload: Vec<u8>) -> MessageResult {
    send_kind(client, MessageKind::App(payload))
}

#[test]
fn open_arguments_are_decoded_and_given_to_on_open() {
    let client = join(1, "ada");
    assert_eq!(take_log(), vec![format!("open {} ada", client.id)]);
}

#[test]
fn on_open_error_rejects_the_open() {
    let args = candid::encode_one(Join {
        name: "nobody".into(),
    })
    .unwrap();
    let (result, _) = open_with_args(2, args);
    // Protocol version 2: the refusal is certified in a closed session; the answer names it.
    assert!(
        matches!(&result, Err(WsError::OpenRejected { reason, .. }) if reason == "nobody may join"),
        "{result:?}"
    );
    assert!(take_log().is_empty());
}

#[test]
fn undecodable_open_arguments_reject_the_open_without_calling_on_open() {
    // Two keys: a refused open consumes its key's timestamp (a replay would be `StaleOpen`).
    for (seed, args) in [
        (3, b"not candid".to_vec()),
        (30, candid::encode_one(42u8).unwrap()),
    ] {
        let (result, _) = open_with_args(seed, args);
        match result {
            Err(WsError::OpenRejected { reason, .. }) => {
                assert!(reason.contains("does not decode"), "{reason}")
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert!(take_log().is_empty());
}

#[test]
fn typed_message_reaches_the_handler() {
    let mut client = join(4, "bob");
    take_log();
    let payload = candid::encode_one(Inbound::Ping(7)).unwrap();
    assert_eq!(send_app(&mut client, payload), MessageResult::Ok);
    assert_eq!(take_log(), vec![format!("ping {} 7", client.id)]);
    // The handler's `send` was queued after the certified `Opened` (seq 0).
    let info = ic_ws_canister::client_info(client.id).unwrap();
    assert_eq!(info.next_outbound_seq, 2);
}

#[test]
fn bad_payload_is_a_decode_error_for_that_message_only() {
    let mut client = join(5, "cy");
    take_log();
    for payload in [
        b"garbage".to_vec(),
        candid::encode_one("a string, not an Inbound").unwrap(),
    ] {
        match send_app(&mut client, payload) {
            MessageResult::Err(WsError::DecodeError(_)) => {}
            other => panic!("expected DecodeError, got {other:?}"),
        }
    }
    assert!(take_log().is_empty(), "the handler must not run");
    // The session goes on: the next good message is handled.
    let payload = candid::encode_one(Inbound::Ping(1)).unwrap();
    assert_eq!(send_app(&mut client, payload), MessageResult::Ok);
    assert_eq!(take_log(), vec![format!("ping {} 1", client.id)]);
}

#[test]
fn handler_error_is_rejected() {
    let mut client = join(6, "dee");
    let payload = candid::encode_one(Inbound::Refuse("no thanks".into())).unwrap();
    assert_eq!(
        send_app(&mut client, payload),
        MessageResult::Err(WsError::Rejected("no thanks".into()))
    );
}

#[test]
fn client_close_calls_on_close_with_the_reason() {
    let mut client = join(7, "eve");
    take_log();
    let result = send_kind(
        &mut client,
        MessageKind::Close {
            code: 1000,
            reason: "bye".into(),
        },
    );
    assert_eq!(result, MessageResult::Ok);
    let expected = CloseReason::ClientClosed {
        code: 1000,
        reason: "bye".into(),
    };
    assert_eq!(
        take_log(),
        vec![format!("close {} {expected:?}", client.id)]
    );
}

#[test]
fn candid_names_the_app_message_types() {
    let generated = __export_service();
    for expected in [
        "ws_app_types : () -> (opt Inbound, opt Outbound) query;",
        "ws_open_args_type : () -> (opt Join) query;",
        "type Inbound = variant { Refuse : text; Ping : nat32 };",
        "type Outbound = variant { Pong : nat32 };",
        "type Join = record { name : text };",
    ] {
        assert!(
            generated.contains(expected),
            "missing `{expected}` in:\n{generated}"
        );
    }
}
