//! Native unit tests of the runtime logic, on the fake environment of `testing`.

use crate::__private::{self, Handlers};
use crate::testing::{self, gateway, open_request};
use crate::*;
use ic_certification::{HashTree, LookupResult};
use ic_ws_protocol::types::*;
use ic_ws_protocol::{content_hash, message_path, SessionKey};
use std::cell::RefCell;

thread_local! {
    static EVENTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn event(e: String) {
    EVENTS.with(|v| v.borrow_mut().push(e));
}

fn events() -> Vec<String> {
    EVENTS.with(|v| v.borrow().clone())
}

/// Handlers that record what they see; `on_message` echoes strings and obeys commands.
const H: Handlers = Handlers {
    on_open: |id, args| {
        let arg: String = ic_ws_protocol::decode(args).unwrap_or_default();
        match arg.as_str() {
            "reject" => {
                // Side effect before rejecting: must be undone by the runtime.
                send(id, &"welcome".to_string()).ok();
                return Err(WsError::Rejected("go away".into()));
            }
            "reject-closed" => {
                // Subscribes, sends and closes the session, then refuses: all undone, and
                // on_close is never called (the session never opened).
                subscribe(id, "room").ok();
                send(id, &"welcome".to_string()).ok();
                close(id, 4000, "closed in on_open");
                return Err(WsError::Rejected("go away".into()));
            }
            "undecodable" => return Err(WsError::DecodeError("bad args".into())),
            "long" => return Err(WsError::Rejected("é".repeat(2000))),
            _ => {}
        }
        event(format!("open {id}"));
        Ok(())
    },
    on_message: |id, payload| {
        let text: String = __private::decode_payload(payload)?;
        event(format!("msg {id} {text}"));
        match text.as_str() {
            "close me" => {
                close(id, 4000, "bye");
            }
            "refuse" => return Err(WsError::Rejected("no".into())),
            _ => {
                send(id, &format!("echo {text}")).map_err(|e| WsError::Rejected(e.to_string()))?;
            }
        }
        Ok(())
    },
    on_close: |id, reason| {
        event(format!("close {id} {reason:?}"));
        // Re-entrancy: handlers may use the API from on_close.
        let _ = send(id, &"too late".to_string());
    },
};

struct Client {
    id: ClientId,
    key: SessionKey,
    next_seq: u64,
    ack: u64,
}

fn canister() -> candid::Principal {
    testing::canister_id()
}

fn open(seed: u8, gw: u8) -> Client {
    let key = SessionKey::from_seed([seed; 32]);
    testing::set_caller(gateway(gw));
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![open_request(&key, gateway(gw), None)],
        },
    );
    let ok = r[0].clone().unwrap();
    assert_eq!(ok.opened_seq, 0);
    Client {
        id: ok.client_id,
        key,
        next_seq: 0,
        ack: 0,
    }
}

fn msg(c: &Client, seq: u64, kind: MessageKind) -> ClientMessage {
    let mut m = ClientMessage {
        client_id: c.id,
        seq,
        ack: c.ack,
        kind,
        signature: vec![],
    };
    c.key.sign_message(&canister(), &mut m);
    m
}

fn app(text: &str) -> MessageKind {
    MessageKind::App(candid::encode_one(text.to_string()).unwrap())
}

fn deliver(gw: u8, msgs: Vec<ClientMessage>) -> Vec<MessageResult> {
    testing::set_caller(gateway(gw));
    __private::ws_message(&H, MessageBatch { messages: msgs })
}

fn say(c: &mut Client, gw: u8, text: &str) -> MessageResult {
    let m = msg(c, c.next_seq, app(text));
    let r = deliver(gw, vec![m]).remove(0);
    if r == MessageResult::Ok {
        c.next_seq += 1;
    }
    r
}

fn poll(gw: u8, cursor: u64) -> PollReply {
    testing::set_caller(gateway(gw));
    __private::ws_poll(PollRequest {
        cursor,
        max_messages: None,
        max_bytes: None,
        max_clients: None,
    })
    .unwrap()
}

/// Checks what a client checks (without the BLS part): the tree's root is the certified data
/// and every message's hash sits at its path. Returns the decoded contents.
fn verify(reply: &PollReply) -> Vec<(ClientId, u64, OutboundContent)> {
    let tree: HashTree = serde_cbor::from_slice(&reply.tree).unwrap();
    assert_eq!(
        Some(tree.digest()),
        testing::certified_data(),
        "tree root != certified data"
    );
    reply
        .messages
        .iter()
        .map(|m| {
            let path = message_path(m.client_id, m.seq);
            match tree.lookup_path(path.iter()) {
                LookupResult::Found(v) => assert_eq!(v, content_hash(&m.content)),
                other => panic!("message {}/{} not witnessed: {other:?}", m.client_id, m.seq),
            }
            (
                m.client_id,
                m.seq,
                ic_ws_protocol::decode(&m.content).unwrap(),
            )
        })
        .collect()
}

fn app_text(c: &OutboundContent) -> Option<String> {
    match &c.body {
        OutboundBody::App { payload, .. } => candid::decode_one(payload).ok(),
        _ => None,
    }
}

#[test]
fn open_message_send_poll_verify() {
    let mut c = open(1, 1);
    assert_eq!(events(), vec![format!("open {}", c.id)]);
    assert_eq!(say(&mut c, 1, "hi"), MessageResult::Ok);
    let reply = poll(1, 0);
    let got = verify(&reply);
    assert_eq!(got.len(), 2);
    match &got[0].2.body {
        OutboundBody::Opened {
            client_key,
            resumed,
            next_inbound_seq,
            ..
        } => {
            assert_eq!(client_key, &c.key.public_key());
            assert!(!resumed);
            assert_eq!(*next_inbound_seq, 0);
        }
        other => panic!("first message must be Opened, got {other:?}"),
    }
    assert_eq!(app_text(&got[1].2).as_deref(), Some("echo hi"));
    assert_eq!((got[1].0, got[1].1), (c.id, 1));
    assert!(!reply.more);
    // Polling from next_cursor gives nothing new; polling again from 0 gives the same.
    assert!(poll(1, reply.next_cursor).messages.is_empty());
    assert_eq!(poll(1, 0).messages, reply.messages);
    // Another gateway sees nothing of this client.
    assert!(poll(2, 0).messages.is_empty());
}

#[test]
fn poll_replies_carry_the_earliest_future_hint_rounded_up() {
    let _c = open(1, 1);
    assert_eq!(poll(1, 0).next_poll_ms, None);
    let now = crate::time_ns();
    crate::expect_messages_at(now + 3_000_000_000);
    assert_eq!(poll(1, 0).next_poll_ms, Some(3_000));
    // A later time does not replace an earlier one still ahead; an earlier one does.
    crate::expect_messages_at(now + 9_000_000_000);
    assert_eq!(poll(1, 0).next_poll_ms, Some(3_000));
    crate::expect_messages_at(now + 1_500_000_001);
    assert_eq!(poll(1, 0).next_poll_ms, Some(1_501));
    // Past times are ignored; a passed hint is no longer reported.
    crate::expect_messages_at(now - 1);
    testing::advance_ns(1_000_000_000);
    assert_eq!(poll(1, 0).next_poll_ms, Some(501));
    testing::advance_ns(1_000_000_000);
    assert_eq!(poll(1, 0).next_poll_ms, None);
    // Once passed, a later time is taken.
    crate::expect_messages_at(now + 9_000_000_000);
    assert_eq!(poll(1, 0).next_poll_ms, Some(7_000));
    // Every gateway gets it, with or without messages of its own.
    assert_eq!(poll(2, 0).next_poll_ms, Some(7_000));
}

#[test]
fn batch_in_order_with_per_entry_results() {
    let a = open(1, 1);
    let b = open(2, 1);
    let batch = vec![
        msg(&a, 0, app("a0")),
        msg(&b, 0, app("b0")),
        msg(&a, 1, app("refuse")),
        msg(&a, 3, app("a3")),
        msg(&b, 1, MessageKind::KeepAlive),
        msg(&a, 0, app("a0")),
    ];
    let r = deliver(1, batch);
    assert_eq!(
        r,
        vec![
            MessageResult::Ok,
            MessageResult::Ok,
            MessageResult::Err(WsError::Rejected("no".into())),
            MessageResult::Err(WsError::OutOfSequence {
                expected: 2,
                got: 3
            }),
            MessageResult::Ok,
            MessageResult::Duplicate,
        ]
    );
    // The handler saw a0 once (the duplicate is a no-op), in order.
    let msgs: Vec<String> = events()
        .into_iter()
        .filter(|e| e.starts_with("msg"))
        .collect();
    assert_eq!(
        msgs,
        vec![
            format!("msg {} a0", a.id),
            format!("msg {} b0", b.id),
            format!("msg {} refuse", a.id)
        ]
    );
    assert_eq!(client_info(a.id).unwrap().next_inbound_seq, 2);
}

/// A snapshot of everything observable about a client: its info and the gateways' polls.
fn snapshot(
    id: ClientId,
) -> (
    Option<ClientInfo>,
    Vec<OutboundMessage>,
    Vec<OutboundMessage>,
    Option<[u8; 32]>,
) {
    (
        client_info(id),
        poll(1, 0).messages,
        poll(2, 0).messages,
        testing::certified_data(),
    )
}

#[test]
fn rejected_messages_change_nothing() {
    let mut c = open(1, 1);
    assert_eq!(say(&mut c, 1, "first"), MessageResult::Ok);
    let before = snapshot(c.id);

    // Tampered payload (signature over other bytes).
    let mut m = msg(&c, 1, app("real"));
    m.kind = app("forged");
    assert_eq!(
        deliver(1, vec![m]),
        vec![MessageResult::Err(WsError::InvalidSignature)]
    );
    // Signed for another canister.
    let mut m = ClientMessage {
        client_id: c.id,
        seq: 1,
        ack: 0,
        kind: app("x"),
        signature: vec![],
    };
    c.key
        .sign_message(&candid::Principal::from_slice(&[9, 9]), &mut m);
    assert_eq!(
        deliver(1, vec![m]),
        vec![MessageResult::Err(WsError::InvalidSignature)]
    );
    // Signed by another key.
    let mut m = ClientMessage {
        client_id: c.id,
        seq: 1,
        ack: 0,
        kind: app("x"),
        signature: vec![],
    };
    SessionKey::from_seed([77; 32]).sign_message(&canister(), &mut m);
    assert_eq!(
        deliver(1, vec![m]),
        vec![MessageResult::Err(WsError::InvalidSignature)]
    );
    // Truncated signature.
    let mut m = msg(&c, 1, app("x"));
    m.signature.truncate(10);
    assert_eq!(
        deliver(1, vec![m]),
        vec![MessageResult::Err(WsError::MalformedKey)]
    );
    // Relayed by another gateway.
    assert_eq!(
        deliver(2, vec![msg(&c, 1, app("x"))]),
        vec![MessageResult::Err(WsError::WrongGateway)]
    );
    // Out of sequence.
    assert_eq!(
        deliver(1, vec![msg(&c, 5, app("x"))]),
        vec![MessageResult::Err(WsError::OutOfSequence {
            expected: 1,
            got: 5
        })]
    );
    // Replay of the accepted message: a no-op.
    assert_eq!(
        deliver(1, vec![msg(&c, 0, app("first"))]),
        vec![MessageResult::Duplicate]
    );
    // Unknown client.
    let mut m = msg(&c, 1, app("x"));
    m.client_id = 999;
    assert_eq!(
        deliver(1, vec![m]),
        vec![MessageResult::Err(WsError::UnknownClient(999))]
    );
    // Oversized payload.
    let big = "x".repeat(70 * 1024);
    let m = msg(&c, 1, app(&big));
    assert!(matches!(
        deliver(1, vec![m])[0],
        MessageResult::Err(WsError::TooLarge { .. })
    ));
    // Ack beyond what was sent.
    let mut m = ClientMessage {
        client_id: c.id,
        seq: 1,
        ack: 99,
        kind: MessageKind::KeepAlive,
        signature: vec![],
    };
    c.key.sign_message(&canister(), &mut m);
    assert!(matches!(
        deliver(1, vec![m])[0],
        MessageResult::Err(WsError::InvalidArgument(_))
    ));

    assert_eq!(snapshot(c.id), before);
    // And the session still works.
    assert_eq!(say(&mut c, 1, "second"), MessageResult::Ok);
}

#[test]
fn rejected_opens_change_nothing() {
    let c = open(1, 1);
    let before = (snapshot(c.id), client_count());
    let key = SessionKey::from_seed([1; 32]);
    testing::set_caller(gateway(1));
    let ws_open = |o: OpenRequest| __private::ws_open(&H, OpenBatch { opens: vec![o] }).remove(0);

    // Replay of the accepted open.
    let replay = open_request(&key, gateway(1), None);
    // (same timestamp as the first open: the fake clock has not moved)
    assert_eq!(ws_open(replay), Err(WsError::StaleOpen));
    testing::advance_ns(1);
    // Bad signature.
    let mut o = open_request(&key, gateway(1), None);
    o.timestamp_ns += 1;
    assert_eq!(ws_open(o), Err(WsError::InvalidSignature));
    // Names another gateway than its caller.
    assert_eq!(
        ws_open(open_request(&key, gateway(2), None)),
        Err(WsError::GatewayMismatch)
    );
    // Anonymous caller.
    testing::set_caller(candid::Principal::anonymous());
    let o = open_request(&key, candid::Principal::anonymous(), None);
    assert_eq!(
        __private::ws_open(&H, OpenBatch { opens: vec![o] }).remove(0),
        Err(WsError::AnonymousGateway)
    );
    testing::set_caller(gateway(1));
    // Clock skew, both ways.
    for skewed in [
        testing::time_ns() + 400_000_000_000,
        testing::time_ns() - 400_000_000_000,
    ] {
        let mut o = open_request(&key, gateway(1), None);
        o.timestamp_ns = skewed;
        key.sign_open(&canister(), &mut o);
        assert_eq!(ws_open(o), Err(WsError::StaleOpen));
    }
    // Hijack: resume c's session with another key.
    let thief = SessionKey::from_seed([66; 32]);
    assert_eq!(
        ws_open(open_request(&thief, gateway(1), Some((c.id, 0)))),
        Err(WsError::InvalidResume)
    );
    testing::advance_ns(1); // (each refused open consumed its timestamp)
                            // Resume beyond what was sent.
    assert_eq!(
        ws_open(open_request(&key, gateway(1), Some((c.id, 50)))),
        Err(WsError::InvalidResume)
    );
    testing::advance_ns(1); // (each refused open consumed its timestamp)
                            // Resume of an unknown session.
    assert_eq!(
        ws_open(open_request(&key, gateway(1), Some((77, 0)))),
        Err(WsError::UnknownClient(77))
    );
    testing::advance_ns(1); // (each refused open consumed its timestamp)
                            // Malformed key.
    let mut o = open_request(&key, gateway(1), None);
    o.client_key.truncate(5);
    assert_eq!(ws_open(o), Err(WsError::MalformedKey));
    // (A refusal by on_open is certified: see `refused_open_is_certified_and_kept_closed`.)

    assert_eq!((snapshot(c.id), client_count()), before);
}

/// A gateway that kept the bytes of a refused open must not get the session later, when the
/// reason for refusing it is gone (issue: a rejected open was replayable within the skew window).
#[test]
fn a_refused_open_cannot_be_replayed() {
    testing::set_caller(gateway(1));
    let ws_open = |o: OpenRequest| __private::ws_open(&H, OpenBatch { opens: vec![o] }).remove(0);
    let key = SessionKey::from_seed([9; 32]);
    let mut refused = open_request(&key, gateway(1), None);
    refused.args = candid::encode_one("reject".to_string()).unwrap();
    key.sign_open(&canister(), &mut refused);
    let Err(WsError::OpenRejected { client_id, reason }) = ws_open(refused.clone()) else {
        panic!("on_open's refusal is OpenRejected");
    };
    assert_eq!(reason, "go away");
    // Replayed later: stale, and nothing was created (the runtime used to forget the refused
    // open and run `on_open` again).
    testing::advance_ns(1_000_000_000);
    let clients = client_count();
    let before = snapshot(client_id);
    testing::set_caller(gateway(1));
    assert_eq!(ws_open(refused.clone()), Err(WsError::StaleOpen));
    assert_eq!(client_count(), clients);
    assert_eq!(snapshot(client_id), before);
    testing::set_caller(gateway(1));
    // The client's own next open (a newer timestamp) works.
    let ok = ws_open(open_request(&key, gateway(1), None)).unwrap();
    assert_eq!(ok.opened_seq, 0);

    // Refusals before the app runs consume the timestamp too: a resume of an unknown session.
    let k2 = SessionKey::from_seed([10; 32]);
    let resume = open_request(&k2, gateway(1), Some((999, 0)));
    assert_eq!(ws_open(resume.clone()), Err(WsError::UnknownClient(999)));
    assert_eq!(ws_open(resume), Err(WsError::StaleOpen));

    // The record of a refused open of an otherwise unknown key is kept while its session (the
    // certified refusal) lives, and then while the open could be replayed (within the
    // clock-skew window), and swept after that.
    let k3 = SessionKey::from_seed([11; 32]);
    let mut o = open_request(&k3, gateway(1), None);
    o.args = candid::encode_one("reject".to_string()).unwrap();
    k3.sign_open(&canister(), &mut o);
    assert!(ws_open(o.clone()).is_err());
    let pk: [u8; 32] = k3.public_key().try_into().unwrap();
    let rec = crate::runtime::with_state(|s| s.key_record(&pk)).expect("kept with its session");
    assert_eq!((rec.sessions, rec.last_open_ts), (1, o.timestamp_ns));
    // A refusal by a limit keeps a record without sessions while the open is replayable.
    let k4 = SessionKey::from_seed([13; 32]);
    let o4 = open_request(&k4, gateway(1), Some((999, 0)));
    assert_eq!(ws_open(o4.clone()), Err(WsError::UnknownClient(999)));
    let pk4: [u8; 32] = k4.public_key().try_into().unwrap();
    let rec = crate::runtime::with_state(|s| s.key_record(&pk4)).expect("kept while replayable");
    assert_eq!((rec.sessions, rec.last_open_ts), (0, o4.timestamp_ns));
    testing::advance_ns(WsConfig::default().closed_retention_ns + 1);
    // Any update call sweeps (bounded work per call); this one is an ordinary open.
    ws_open(open_request(
        &SessionKey::from_seed([12; 32]),
        gateway(1),
        None,
    ))
    .unwrap();
    assert_eq!(crate::runtime::with_state(|s| s.key_record(&pk)), None);
    assert_eq!(crate::runtime::with_state(|s| s.key_record(&pk4)), None);
    assert_eq!(ws_open(o), Err(WsError::StaleOpen));
    assert_eq!(ws_open(o4), Err(WsError::StaleOpen));
}

#[test]
fn acks_release_messages_and_certification() {
    let mut c = open(1, 1);
    for i in 0..5 {
        send(c.id, &format!("m{i}")).unwrap();
    }
    assert_eq!(client_info(c.id).unwrap().queued_messages, 6);
    c.ack = 4;
    let m = msg(&c, 0, MessageKind::KeepAlive);
    assert_eq!(deliver(1, vec![m]), vec![MessageResult::Ok]);
    let info = client_info(c.id).unwrap();
    assert_eq!((info.first_retained_seq, info.queued_messages), (4, 2));
    let got = verify(&poll(1, 0));
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn resume_through_second_gateway() {
    let mut c = open(1, 1);
    for i in 0..3 {
        send(c.id, &format!("m{i}")).unwrap();
    }
    // The client received 0..=1 (through gateway 1), then gateway 1 lost it.
    testing::set_caller(gateway(1));
    assert_eq!(
        __private::ws_close(
            &H,
            CloseBatch {
                clients: vec![c.id]
            }
        ),
        vec![Ok(())]
    );
    assert!(poll(1, 0).messages.is_empty());
    assert!(client_info(c.id).unwrap().open);
    testing::advance_ns(1_000);
    testing::set_caller(gateway(2));
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![open_request(&c.key, gateway(2), Some((c.id, 2)))],
        },
    );
    let ok = r[0].clone().unwrap();
    assert_eq!(
        ok,
        OpenOk {
            client_id: c.id,
            next_inbound_seq: 0,
            opened_seq: 4
        }
    );
    let got = verify(&poll(2, 0));
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert!(matches!(
        got[2].2.body,
        OutboundBody::Opened { resumed: true, .. }
    ));
    // Messages below the resume point are released; on_open ran once only.
    assert_eq!(client_info(c.id).unwrap().first_retained_seq, 2);
    assert_eq!(events().iter().filter(|e| e.starts_with("open")).count(), 1);
    // The old gateway can no longer act for it; the new one can.
    assert_eq!(
        say(&mut c, 1, "x"),
        MessageResult::Err(WsError::WrongGateway)
    );
    assert_eq!(say(&mut c, 2, "x"), MessageResult::Ok);
    // Resuming from before the oldest retained message is refused plainly.
    testing::advance_ns(1_000);
    testing::set_caller(gateway(1));
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![open_request(&c.key, gateway(1), Some((c.id, 1)))],
        },
    );
    assert_eq!(r[0], Err(WsError::ResumeUnavailable { first_available: 2 }));
}

#[test]
fn expiry_closes_once_with_certified_reason() {
    let a = open(1, 1);
    let mut b = open(2, 1);
    testing::advance_ns(100 * 1_000_000_000);
    assert_eq!(say(&mut b, 1, "alive"), MessageResult::Ok);
    testing::advance_ns(30 * 1_000_000_000);
    // Any update endpoint runs housekeeping: a is silent for 130 s > 120 s.
    assert_eq!(say(&mut b, 1, "still"), MessageResult::Ok);
    let closes: Vec<String> = events()
        .into_iter()
        .filter(|e| e.starts_with("close"))
        .collect();
    assert_eq!(closes, vec![format!("close {} Expired", a.id)]);
    assert!(!client_info(a.id).unwrap().open);
    let got = verify(&poll(1, 0));
    let last_a = got.iter().rfind(|g| g.0 == a.id).unwrap();
    assert_eq!(
        last_a.2.body,
        OutboundBody::Closed {
            reason: CloseReason::Expired
        }
    );
    // on_close's send after the close was refused (the session is closed): Closed is last.
    assert_eq!(send(a.id, &"x".to_string()), Err(Error::Closed(a.id)));
    // Later calls do not report it again; after the retention it is deleted.
    testing::advance_ns(700 * 1_000_000_000);
    housekeeping();
    assert_eq!(client_info(a.id), None);
    assert_eq!(
        events().iter().filter(|e| e.starts_with("close")).count(),
        2
    ); // a, then b expired
    assert!(poll(1, 0).messages.iter().all(|m| m.client_id != a.id));
}

#[test]
fn client_and_app_close() {
    let mut c = open(1, 1);
    let d = open(2, 1);
    assert_eq!(say(&mut c, 1, "close me"), MessageResult::Ok);
    assert!(close(d.id, 4001, "kicked"));
    assert!(!close(d.id, 4001, "again"));
    let closes: Vec<String> = events()
        .into_iter()
        .filter(|e| e.starts_with("close"))
        .collect();
    assert_eq!(
        closes,
        vec![
            format!("close {} AppClosed {{ code: 4000, reason: \"bye\" }}", c.id),
            format!(
                "close {} AppClosed {{ code: 4001, reason: \"kicked\" }}",
                d.id
            ),
        ]
    );
    assert_eq!(say(&mut c, 1, "x"), MessageResult::Err(WsError::Closed));
    // A signed client close.
    let mut e = open(3, 1);
    let m = msg(
        &e,
        0,
        MessageKind::Close {
            code: 1000,
            reason: "done".into(),
        },
    );
    assert_eq!(deliver(1, vec![m]), vec![MessageResult::Ok]);
    e.next_seq = 1;
    assert!(events().last().unwrap().contains("ClientClosed"));
    let _ = e;
}

#[test]
fn overflow_policies() {
    configure(WsConfig {
        max_queued_messages: 4,
        ..WsConfig::default()
    })
    .unwrap();
    let c = open(1, 1);
    for i in 0..3 {
        send(c.id, &i).unwrap();
    }
    assert_eq!(send(c.id, &9), Err(Error::QueueOverflowClosed(c.id)));
    assert!(!client_info(c.id).unwrap().open);
    let got = verify(&poll(1, 0));
    assert_eq!(
        got.last().unwrap().2.body,
        OutboundBody::Closed {
            reason: CloseReason::QueueOverflow
        }
    );
    assert!(events().contains(&format!("close {} QueueOverflow", c.id)));

    configure(WsConfig {
        max_queued_messages: 4,
        overflow_policy: OverflowPolicy::Reject,
        ..WsConfig::default()
    })
    .unwrap();
    let d = open(2, 1);
    for i in 0..3 {
        send(d.id, &i).unwrap();
    }
    let before = client_info(d.id);
    assert_eq!(send(d.id, &9), Err(Error::QueueFull(d.id)));
    assert_eq!(client_info(d.id), before);
    // Outbound size limit.
    let big = vec![0u8; 300 * 1024];
    assert!(matches!(send_bytes(d.id, big), Err(Error::TooLarge { .. })));
}

#[test]
fn poll_is_capped_by_count_and_bytes() {
    let c = open(1, 1);
    let payload = "y".repeat(100 * 1024);
    for _ in 0..40 {
        send(c.id, &payload).unwrap();
    }
    // 41 messages of which 40 are ~100 KiB: the default 1.5 MiB cap splits them.
    let mut cursor = 0;
    let mut seqs = Vec::new();
    let mut polls = 0;
    loop {
        let r = poll(1, cursor);
        let bytes: usize = r.messages.iter().map(|m| m.content.len()).sum();
        assert!(bytes <= 1536 * 1024, "reply content {bytes} over the cap");
        verify(&r);
        seqs.extend(r.messages.iter().map(|m| m.seq));
        cursor = r.next_cursor;
        polls += 1;
        if !r.more {
            break;
        }
    }
    assert_eq!(seqs, (0..41).collect::<Vec<_>>());
    assert!(polls >= 3);
    // The gateway's own caps apply too.
    testing::set_caller(gateway(1));
    let r = __private::ws_poll(PollRequest {
        cursor: 0,
        max_messages: Some(3),
        max_bytes: None,
        max_clients: None,
    })
    .unwrap();
    assert_eq!(r.messages.len(), 3);
    assert!(r.more);
    // Asking for none still moves: at least one message when one is pending.
    let r = __private::ws_poll(PollRequest {
        cursor: 0,
        max_messages: Some(0),
        max_bytes: Some(0),
        max_clients: None,
    })
    .unwrap();
    assert_eq!((r.messages.len(), r.more), (1, true));
    // A poll must be a query (a data certificate exists).
    testing::set_data_certificate(None);
    assert!(matches!(
        __private::ws_poll(PollRequest::default()),
        Err(WsError::InvalidArgument(_))
    ));
}

#[test]
fn poll_is_capped_by_distinct_clients() {
    let clients: Vec<Client> = (1..=4).map(|i| open(i, 1)).collect();
    let id = |i: usize| clients[i].id;
    for i in [0, 1, 0, 2, 3, 1, 1, 3] {
        send(id(i), &format!("to {i}")).unwrap();
    }
    let all: Vec<(ClientId, u64)> = poll(1, 0)
        .messages
        .iter()
        .map(|m| (m.client_id, m.seq))
        .collect();
    assert_eq!(all.len(), 12);
    let capped = |cursor: u64, max_clients: u32| {
        testing::set_caller(gateway(1));
        __private::ws_poll(PollRequest {
            cursor,
            max_messages: None,
            max_bytes: None,
            max_clients: Some(max_clients),
        })
        .unwrap()
    };
    for max_clients in [0, 1, 2, 3, 4] {
        let mut cursor = 0;
        let mut got = Vec::new();
        let mut pages: Vec<Vec<ClientId>> = Vec::new();
        loop {
            let r = capped(cursor, max_clients);
            verify(&r);
            let page: Vec<ClientId> = r.messages.iter().map(|m| m.client_id).collect();
            got.extend(r.messages.iter().map(|m| (m.client_id, m.seq)));
            pages.push(page);
            cursor = r.next_cursor;
            if !r.more {
                break;
            }
        }
        // Nothing lost, nothing reordered, at most `max_clients` (0 counts as 1) per page, and
        // each page ended only because the next message was for one client too many.
        assert_eq!(got, all, "max_clients {max_clients}");
        let cap = max_clients.max(1) as usize;
        let distinct = |page: &[ClientId]| {
            let mut d = page.to_vec();
            d.sort_unstable();
            d.dedup();
            d.len()
        };
        for (page, next) in pages.iter().zip(pages.iter().skip(1)) {
            assert_eq!(distinct(page), cap, "{pages:?}");
            assert!(!page.contains(&next[0]), "{pages:?}");
        }
        assert!(distinct(pages.last().unwrap()) <= cap);
        if max_clients >= 4 {
            assert_eq!(pages.len(), 1);
        }
    }
    // Four clients' opens then the sends: with a cap of 2 the first page is the first two
    // opens, the second the other two, and the third starts at the first send.
    let first = capped(0, 2);
    assert_eq!(
        first
            .messages
            .iter()
            .map(|m| (m.client_id, m.seq))
            .collect::<Vec<_>>(),
        vec![(id(0), 0), (id(1), 0)]
    );
    assert!(first.more);
}

#[test]
fn topics_fan_out_with_one_stored_payload() {
    let clients: Vec<Client> = (1..=20).map(|i| open(i, 1)).collect();
    for c in &clients[..15] {
        subscribe(c.id, "prices").unwrap();
    }
    unsubscribe(clients[0].id, "prices");
    let report = publish("prices", &42u64).unwrap();
    assert_eq!(report.delivered.len(), 14);
    assert!(report.delivered.iter().all(|&(_, seq)| seq == 1));
    runtime::with_state(|s| assert_eq!(s.shared.len(), 1));
    let got = verify(&poll(1, 0));
    let topical: Vec<_> = got
        .iter()
        .filter(|g| matches!(&g.2.body, OutboundBody::App { topic: Some(t), .. } if t == "prices"))
        .collect();
    assert_eq!(topical.len(), 14);
    // Closing a subscriber drops its subscription; acks free the shared payload.
    close(clients[1].id, 1000, "");
    assert_eq!(subscribers("prices").len(), 13);
    for c in &clients[1..15] {
        let m = ClientMessage {
            client_id: c.id,
            seq: 0,
            ack: 2,
            kind: MessageKind::KeepAlive,
            signature: vec![],
        };
        let mut m = m;
        c.key.sign_message(&canister(), &mut m);
        deliver(1, vec![m]);
    }
    // clients[1] is closed (its retained copy stays until deletion), the rest released it.
    runtime::with_state(|s| assert_eq!(s.shared.get(&0).unwrap().refs, 1));
    // Limits.
    configure(WsConfig {
        max_topic_subscribers: 13,
        ..WsConfig::default()
    })
    .unwrap();
    assert!(matches!(
        subscribe(clients[16].id, "prices"),
        Err(Error::LimitReached(_))
    ));
    assert!(matches!(
        subscribe(clients[16].id, ""),
        Err(Error::InvalidArgument(_))
    ));
}

/// The activity index is heap state: after an upgrade it is rebuilt from the client records,
/// and expiry follows each session's last activity as before (the oldest first, the active
/// one kept).
#[test]
fn expiry_follows_activity_across_an_upgrade() {
    let a = open(1, 1);
    let mut b = open(2, 1);
    let c = open(3, 1);
    testing::advance_ns(60 * 1_000_000_000);
    assert_eq!(say(&mut b, 1, "alive"), MessageResult::Ok);
    testing::simulate_upgrade();
    post_upgrade();
    // a and c are silent for 121 s > 120 s, b for 61 s.
    testing::advance_ns(61 * 1_000_000_000);
    housekeeping();
    let closes = |n: usize| -> Vec<String> {
        events()
            .into_iter()
            .filter(|e| e.starts_with("close"))
            .take(n)
            .collect()
    };
    assert_eq!(
        closes(3),
        vec![
            format!("close {} Expired", a.id),
            format!("close {} Expired", c.id)
        ]
    );
    assert!(client_info(b.id).unwrap().open);
    // A message after the upgrade moves b's entry in the rebuilt index.
    assert_eq!(say(&mut b, 1, "still"), MessageResult::Ok);
    testing::advance_ns(100 * 1_000_000_000);
    housekeeping();
    assert!(client_info(b.id).unwrap().open);
    testing::advance_ns(21 * 1_000_000_000);
    housekeeping();
    assert_eq!(closes(4).get(2), Some(&format!("close {} Expired", b.id)));
}

/// A canister upgraded from a version that kept the activity index in stable memory: the old
/// map is emptied at load and never read (a stale entry there would expire an active session).
#[test]
fn an_earlier_stable_activity_index_is_emptied_and_ignored() {
    use crate::memory::{slot, ws_memory, Memory};
    use ic_stable_structures::StableBTreeMap;
    let mut a = open(1, 1);
    let old_map = || -> StableBTreeMap<[u8; 16], (), Memory> {
        StableBTreeMap::init(ws_memory(slot::ACTIVITY))
    };
    // As the earlier version left it, with an entry older than a's last activity.
    old_map().insert(crate::store::pair_key(0, a.id), ());
    testing::advance_ns(100 * 1_000_000_000);
    assert_eq!(say(&mut a, 1, "alive"), MessageResult::Ok);
    testing::simulate_upgrade();
    post_upgrade();
    assert!(old_map().is_empty());
    testing::advance_ns(100 * 1_000_000_000);
    housekeeping();
    assert!(client_info(a.id).unwrap().open);
}

#[test]
fn upgrade_rebuilds_the_same_tree() {
    let mut c = open(1, 1);
    for i in 0..10 {
        assert_eq!(say(&mut c, 1, &format!("m{i}")), MessageResult::Ok);
    }
    let d = open(2, 1);
    subscribe(d.id, "t").unwrap();
    subscribe(c.id, "t").unwrap();
    publish("t", &"news".to_string()).unwrap();
    set_ws_and_app_hash();
    let before = (testing::certified_data(), poll(1, 0));
    testing::simulate_upgrade();
    post_upgrade();
    let after = (testing::certified_data(), poll(1, 0));
    assert_eq!(before, after);
    verify(&after.1);
    // Sessions go on after the upgrade.
    assert_eq!(say(&mut c, 1, "after"), MessageResult::Ok);
    assert_eq!(client_info(c.id).unwrap().next_inbound_seq, 11);
}

fn set_ws_and_app_hash() {
    certification::set_app_root_hash(Some([5; 32]));
}

#[test]
fn app_certified_data_composes() {
    use ic_certification::{AsHashTree, RbTree};
    let c = open(1, 1);
    send(c.id, &"x".to_string()).unwrap();
    let mut app: RbTree<Vec<u8>, Vec<u8>> = RbTree::new();
    app.insert(b"k".to_vec(), b"v".to_vec());
    certification::set_app_root_hash(Some(app.root_hash()));
    // The ws witness still matches certified_data (check done by verify()).
    verify(&poll(1, 0));
    // The app's witness does too, and proves its value at /app/k.
    let tree = certification::app_witness(app.witness(b"k"));
    assert_eq!(Some(tree.digest()), testing::certified_data());
    let decoded: HashTree = serde_cbor::from_slice(&certification::encode_tree(&tree)).unwrap();
    assert_eq!(
        decoded.lookup_path([b"app".as_slice(), b"k"]),
        LookupResult::Found(b"v")
    );
    certification::set_app_root_hash(None);
    assert_eq!(
        testing::certified_data(),
        Some(certification::ws_labeled_hash())
    );
    verify(&poll(1, 0));
}

#[test]
fn on_close_reentrancy_close_from_on_close() {
    // on_close of H sends (refused: closed); a handler closing another client from on_close
    // is covered by queueing: every close is reported exactly once.
    let a = open(1, 1);
    let b = open(2, 1);
    testing::advance_ns(200 * 1_000_000_000);
    housekeeping();
    let mut closes: Vec<String> = events()
        .into_iter()
        .filter(|e| e.starts_with("close"))
        .collect();
    closes.sort();
    assert_eq!(
        closes,
        vec![
            format!("close {} Expired", a.id),
            format!("close {} Expired", b.id)
        ]
    );
    housekeeping();
    assert_eq!(
        events().iter().filter(|e| e.starts_with("close")).count(),
        2
    );
}

#[test]
fn sessions_per_gateway_limit() {
    configure(WsConfig {
        max_sessions_per_gateway: 2,
        ..WsConfig::default()
    })
    .unwrap();
    open(1, 1);
    open(2, 1);
    let key = SessionKey::from_seed([3; 32]);
    testing::set_caller(gateway(1));
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![open_request(&key, gateway(1), None)],
        },
    );
    assert!(matches!(r[0], Err(WsError::LimitReached(_))));
    // Another gateway has room (a new open: the refused one consumed its timestamp).
    testing::advance_ns(1);
    open(3, 2);
}

#[test]
fn clients_listing_pages() {
    for i in 1..=5 {
        open(i, 1);
    }
    let first = clients(None, 3);
    assert_eq!(
        first.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let rest = clients(Some(2), 10);
    assert_eq!(rest.iter().map(|c| c.id).collect::<Vec<_>>(), vec![3, 4]);
    assert!(rest
        .iter()
        .all(|c| c.attached && c.open && c.gateway == gateway(1)));
}

#[test]
fn config_validation() {
    assert!(configure(WsConfig {
        max_poll_bytes: 3 * 1024 * 1024,
        ..WsConfig::default()
    })
    .is_err());
    assert!(configure(WsConfig {
        closed_retention_ns: 1,
        ..WsConfig::default()
    })
    .is_err());
    assert_eq!(config(), WsConfig::default());
}

fn arena_end() -> u64 {
    runtime::with_state(|s| s.arena_end())
}

fn ack_everything(c: &mut Client, gw: u8) {
    c.ack = client_info(c.id).unwrap().next_outbound_seq;
    let m = msg(c, c.next_seq, MessageKind::KeepAlive);
    assert_eq!(deliver(gw, vec![m]), vec![MessageResult::Ok]);
    c.next_seq += 1;
}

#[test]
fn acked_and_deleted_messages_give_their_space_back() {
    let mut c = open(1, 1);
    for i in 0..20 {
        send(c.id, &format!("round 0 {i:02}")).unwrap();
    }
    let high = arena_end();
    for round in 1..10 {
        ack_everything(&mut c, 1);
        assert_eq!(client_info(c.id).unwrap().queued_messages, 0);
        for i in 0..20 {
            send(c.id, &format!("round {round} {i:02}")).unwrap();
        }
        // Acked chunks were reused: the arena did not grow.
        assert_eq!(arena_end(), high, "round {round}");
        if round == 5 {
            // The allocator state (free lists) and the queue survive an upgrade.
            let before = (testing::certified_data(), poll(1, 0));
            testing::simulate_upgrade();
            post_upgrade();
            assert_eq!((testing::certified_data(), poll(1, 0)), before);
        }
    }
    let got = verify(&poll(1, 0));
    let texts: Vec<String> = got.iter().filter_map(|g| app_text(&g.2)).collect();
    assert_eq!(texts.len(), 20);
    assert_eq!(texts[0], "round 9 00");
    assert_eq!(texts[19], "round 9 19");
    // A closed session's messages are freed when it is deleted after its retention, and a
    // new session reuses the space.
    assert!(close(c.id, 4000, "bye"));
    testing::advance_ns(WsConfig::default().closed_retention_ns + 1);
    housekeeping();
    assert_eq!(client_info(c.id), None);
    let d = open(2, 1);
    for i in 0..20 {
        send(d.id, &format!("round 0 {i:02}")).unwrap();
    }
    assert!(arena_end() <= high);
}

#[test]
fn delivery_log_is_rebuilt_after_upgrade_and_cursors_stay_valid() {
    let mut c = open(1, 1);
    let mut d = open(2, 1);
    for i in 0..5 {
        send(c.id, &format!("c{i}")).unwrap();
        send(d.id, &format!("d{i}")).unwrap();
    }
    // d is detached: its messages leave gateway 1's log (and stay retained).
    testing::set_caller(gateway(1));
    assert_eq!(
        __private::ws_close(
            &H,
            CloseBatch {
                clients: vec![d.id]
            }
        ),
        vec![Ok(())]
    );
    ack_everything(&mut c, 1);
    send(c.id, &"c5".to_string()).unwrap();
    let before = poll(1, 0);
    testing::simulate_upgrade();
    post_upgrade();
    let after = poll(1, 0);
    assert_eq!(before, after);
    let got = verify(&after);
    assert_eq!(got.len(), 1);
    assert_eq!(app_text(&got[0].2).as_deref(), Some("c5"));
    // New messages come after every cursor handed out before the upgrade.
    send(c.id, &"c6".to_string()).unwrap();
    let next = poll(1, after.next_cursor);
    let got = verify(&next);
    assert_eq!(got.len(), 1);
    assert_eq!(app_text(&got[0].2).as_deref(), Some("c6"));
    // d resumes on gateway 2 after the upgrade: its retained messages are logged there.
    testing::advance_ns(1_000);
    testing::set_caller(gateway(2));
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![open_request(&d.key, gateway(2), Some((d.id, 0)))],
        },
    );
    assert!(r[0].is_ok(), "{r:?}");
    let texts: Vec<String> = verify(&poll(2, 0))
        .iter()
        .filter_map(|g| app_text(&g.2))
        .collect();
    assert_eq!(texts, vec!["d0", "d1", "d2", "d3", "d4"]);
    d.next_seq = 0;
    let _ = d;
}

#[test]
fn calls_are_admitted_by_gateway_policy_and_entry_count() {
    let batch = |n: usize| {
        candid::encode_one(CloseBatch {
            clients: (0..n as u64).collect(),
        })
        .unwrap()
    };
    // Defaults: any non-anonymous principal, up to 500 entries.
    assert_eq!(
        inspect_ws_call("ws_close", &gateway(1), &batch(500)),
        Ok(())
    );
    let err = inspect_ws_call("ws_close", &gateway(1), &batch(501)).unwrap_err();
    assert!(err.contains("501 entries"), "{err}");
    assert!(inspect_ws_call("ws_close", &candid::Principal::anonymous(), &batch(1)).is_err());
    assert!(inspect_ws_call("ws_message", &gateway(1), b"junk").is_err());
    assert!(inspect_ws_call("ws_poll", &gateway(1), &[]).is_err());
    // The app's own methods are the app's business.
    assert_eq!(inspect_ws_call("join", &gateway(1), b"junk"), Ok(()));

    configure(WsConfig {
        max_entries_per_call: Some(2),
        gateways: Some(GatewayPolicy::Allowlist(vec![gateway(1)])),
        ..WsConfig::default()
    })
    .unwrap();
    assert_eq!(inspect_ws_call("ws_close", &gateway(1), &batch(2)), Ok(()));
    assert!(inspect_ws_call("ws_close", &gateway(1), &batch(3)).is_err());
    let err = inspect_ws_call("ws_close", &gateway(2), &batch(1)).unwrap_err();
    assert!(err.contains("not an allowed gateway"), "{err}");
    // The endpoints' own admission (the generated shim traps on `Err`).
    testing::set_caller(gateway(2));
    assert!(__private::admit_call("ws_open", 1).is_err());
    testing::set_caller(gateway(1));
    assert_eq!(__private::admit_call("ws_open", 2), Ok(()));
    assert!(__private::admit_call("ws_open", 3).is_err());
    // An empty allowlist is a mistake, not a policy.
    assert!(configure(WsConfig {
        gateways: Some(GatewayPolicy::Allowlist(vec![])),
        ..WsConfig::default()
    })
    .is_err());
}

/// Many principals acting as gateways (Sybil) share one canister-wide session cap.
#[test]
fn sessions_are_capped_canister_wide() {
    configure(WsConfig {
        max_sessions: Some(3),
        ..WsConfig::default()
    })
    .unwrap();
    open(1, 1);
    open(2, 2);
    open(3, 3);
    let key = SessionKey::from_seed([4; 32]);
    testing::set_caller(gateway(4));
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![open_request(&key, gateway(4), None)],
        },
    );
    assert!(
        matches!(&r[0], Err(WsError::LimitReached(why)) if why.contains("in this canister")),
        "{r:?}"
    );
    assert_eq!(client_count(), 3);
}

// ------------------------------------------------------------ certified outcomes (v2)

/// Opens a new session whose `on_open` gets `arg`; returns the key, the request and the result.
fn open_with_arg(seed: u8, gw: u8, arg: &str) -> (SessionKey, OpenRequest, OpenResult) {
    let key = SessionKey::from_seed([seed; 32]);
    testing::set_caller(gateway(gw));
    let mut o = open_request(&key, gateway(gw), None);
    o.args = candid::encode_one(arg.to_string()).unwrap();
    key.sign_open(&canister(), &mut o);
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![o.clone()],
        },
    )
    .remove(0);
    (key, o, r)
}

/// The messages of one client in a gateway's poll, verified against the certified data.
fn certified_for(gw: u8, id: ClientId) -> Vec<(u64, OutboundBody)> {
    verify(&poll(gw, 0))
        .into_iter()
        .filter(|m| m.0 == id)
        .map(|m| (m.1, m.2.body))
        .collect()
}

#[test]
fn refused_open_is_certified_and_kept_closed() {
    let other = open(1, 1);
    let before_other = client_info(other.id);
    let count = client_count();
    let (key, o, r) = open_with_arg(2, 1, "reject");
    let Err(WsError::OpenRejected {
        client_id: id,
        reason,
    }) = r
    else {
        panic!("expected OpenRejected, got {r:?}");
    };
    assert_eq!(reason, "go away");
    // Exactly one certified message, seq 0, naming this open (key and timestamp); the
    // `Opened` and on_open's "welcome" are gone.
    assert_eq!(
        certified_for(1, id),
        vec![(
            0,
            OutboundBody::OpenRejected {
                client_key: key.public_key(),
                open_timestamp_ns: o.timestamp_ns,
                error: WsError::Rejected("go away".into()),
            }
        )]
    );
    // The session exists, closed and never opened, attached to the calling gateway, and
    // counts toward the caps; on_open's refusal did not call on_close.
    let info = client_info(id).unwrap();
    assert!(!info.open && info.attached);
    assert_eq!((info.next_outbound_seq, info.first_retained_seq), (1, 0));
    assert_eq!(client_count(), count + 1);
    assert!(!events()
        .iter()
        .any(|e| e.ends_with(&format!(" {id}")) || e.starts_with(&format!("close {id}"))));
    // Nothing else changed; the session takes no message and no send.
    assert_eq!(client_info(other.id), before_other);
    let c = Client {
        id,
        key: key.clone(),
        next_seq: 0,
        ack: 0,
    };
    assert_eq!(
        deliver(1, vec![msg(&c, 0, app("hi"))]),
        vec![MessageResult::Err(WsError::Closed)]
    );
    assert_eq!(send(id, &"x".to_string()), Err(Error::Closed(id)));
    // The replay of the refused open is stale and changes nothing.
    let before = snapshot(id);
    testing::advance_ns(1_000);
    testing::set_caller(gateway(1));
    assert_eq!(
        __private::ws_open(&H, OpenBatch { opens: vec![o] }).remove(0),
        Err(WsError::StaleOpen)
    );
    assert_eq!(snapshot(id), before);
    // Deleted `closed_retention` later like every closed session, still without on_close.
    testing::advance_ns(WsConfig::default().closed_retention_ns + 1);
    housekeeping();
    assert_eq!(client_info(id), None);
    assert_eq!(client_count(), count);
    assert!(!events()
        .iter()
        .any(|e| e.starts_with(&format!("close {id}"))));
}

#[test]
fn refused_open_undoes_on_open_subscriptions_and_close() {
    let (key, o, r) = open_with_arg(3, 2, "reject-closed");
    let Err(WsError::OpenRejected { client_id: id, .. }) = r else {
        panic!("expected OpenRejected, got {r:?}");
    };
    assert_eq!(subscriptions(id), Vec::<String>::new());
    assert!(subscribers("room").is_empty());
    assert!(!events()
        .iter()
        .any(|e| e.starts_with(&format!("close {id}"))));
    assert_eq!(
        certified_for(2, id),
        vec![(
            0,
            OutboundBody::OpenRejected {
                client_key: key.public_key(),
                open_timestamp_ns: o.timestamp_ns,
                error: WsError::Rejected("go away".into()),
            }
        )]
    );
    // A later endpoint call reports no close for it either.
    let _ = open(4, 2);
    assert!(!events()
        .iter()
        .any(|e| e.starts_with(&format!("close {id}"))));
}

#[test]
fn refused_open_error_kinds_and_bounded_text() {
    let (_, _, r) = open_with_arg(5, 1, "undecodable");
    let Err(WsError::OpenRejected { client_id: id, .. }) = r else {
        panic!("expected OpenRejected, got {r:?}");
    };
    match &certified_for(1, id)[..] {
        [(0, OutboundBody::OpenRejected { error, .. })] => {
            assert_eq!(error, &WsError::DecodeError("bad args".into()));
        }
        other => panic!("{other:?}"),
    }
    let (_, _, r) = open_with_arg(6, 1, "long");
    let Err(WsError::OpenRejected {
        client_id: id,
        reason,
    }) = r
    else {
        panic!("expected OpenRejected, got {r:?}");
    };
    assert!(reason.len() <= crate::runtime::MAX_OUTCOME_TEXT_BYTES);
    match &certified_for(1, id)[..] {
        [(
            0,
            OutboundBody::OpenRejected {
                error: WsError::Rejected(text),
                ..
            },
        )] => {
            assert!(
                text.len() <= crate::runtime::MAX_OUTCOME_TEXT_BYTES,
                "{}",
                text.len()
            );
            assert!(text.starts_with("éé"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn refused_message_is_certified_at_its_inbound_seq() {
    let mut c = open(1, 1);
    assert_eq!(say(&mut c, 1, "hi"), MessageResult::Ok);
    // Refused by the handler: the sequence number is consumed, the refusal certified.
    let m = msg(&c, 1, app("refuse"));
    assert_eq!(
        deliver(1, vec![m]),
        vec![MessageResult::Err(WsError::Rejected("no".into()))]
    );
    // A payload that does not decode as the handler's type.
    let m = msg(&c, 2, MessageKind::App(vec![1, 2, 3]));
    let r = deliver(1, vec![m]);
    assert!(
        matches!(r[..], [MessageResult::Err(WsError::DecodeError(_))]),
        "{r:?}"
    );
    assert_eq!(client_info(c.id).unwrap().next_inbound_seq, 3);
    let got = certified_for(1, c.id);
    assert_eq!(got.len(), 4, "{got:?}"); // Opened, echo hi, two refusals
    assert_eq!(
        got[2],
        (
            2,
            OutboundBody::MessageRejected {
                inbound_seq: 1,
                error: WsError::Rejected("no".into())
            }
        )
    );
    assert!(matches!(
        &got[3],
        (
            3,
            OutboundBody::MessageRejected {
                inbound_seq: 2,
                error: WsError::DecodeError(_)
            }
        )
    ));
    // The duplicate of a refused message is a no-op (no second certified refusal).
    assert_eq!(
        deliver(1, vec![msg(&c, 1, app("refuse"))]),
        vec![MessageResult::Duplicate]
    );
    assert_eq!(certified_for(1, c.id).len(), 4);
    // Refusals that do not consume the sequence number are not certified.
    assert_eq!(
        deliver(1, vec![msg(&c, 9, app("refuse"))]),
        vec![MessageResult::Err(WsError::OutOfSequence {
            expected: 3,
            got: 9
        })]
    );
    assert_eq!(certified_for(1, c.id).len(), 4);
}

#[test]
fn message_refusals_obey_the_overflow_policy() {
    configure(WsConfig {
        max_queued_messages: 3,
        ..WsConfig::default()
    })
    .unwrap();
    let mut c = open(1, 1);
    send(c.id, &"a".to_string()).unwrap();
    let m = msg(&c, 0, app("refuse"));
    assert_eq!(
        deliver(1, vec![m]),
        vec![MessageResult::Err(WsError::Rejected("no".into()))]
    );
    c.next_seq = 1;
    // The queue is full (3): the next refusal closes the session (policy Close).
    let m = msg(&c, 1, app("refuse"));
    assert_eq!(
        deliver(1, vec![m]),
        vec![MessageResult::Err(WsError::Rejected("no".into()))]
    );
    let got = certified_for(1, c.id);
    assert!(matches!(
        got[2].1,
        OutboundBody::MessageRejected { inbound_seq: 0, .. }
    ));
    assert_eq!(
        got.last().unwrap().1,
        OutboundBody::Closed {
            reason: CloseReason::QueueOverflow
        }
    );
    assert!(events().contains(&format!("close {} QueueOverflow", c.id)));

    configure(WsConfig {
        max_queued_messages: 3,
        overflow_policy: OverflowPolicy::Reject,
        ..WsConfig::default()
    })
    .unwrap();
    let d = open(2, 1);
    send(d.id, &"a".to_string()).unwrap();
    send(d.id, &"b".to_string()).unwrap();
    let before = certified_for(1, d.id);
    // Full under policy Reject: the refusal is not queued, the session stays open.
    assert_eq!(
        deliver(1, vec![msg(&d, 0, app("refuse"))]),
        vec![MessageResult::Err(WsError::Rejected("no".into()))]
    );
    assert_eq!(certified_for(1, d.id), before);
    let info = client_info(d.id).unwrap();
    assert!(info.open);
    assert_eq!(info.next_inbound_seq, 1);
}

#[test]
fn resume_of_a_closed_session_requeues_its_certified_end() {
    let mut c = open(1, 1);
    assert_eq!(say(&mut c, 1, "hi"), MessageResult::Ok); // seq 1: echo
    assert!(close(c.id, 4001, "kicked")); // seq 2: Closed
    testing::set_caller(gateway(1));
    __private::ws_close(
        &H,
        CloseBatch {
            clients: vec![c.id],
        },
    );
    assert!(certified_for(1, c.id).is_empty());
    // Another key cannot: InvalidResume, nothing queued.
    testing::advance_ns(1_000);
    let thief = SessionKey::from_seed([66; 32]);
    testing::set_caller(gateway(2));
    let ws_open = |o: OpenRequest| __private::ws_open(&H, OpenBatch { opens: vec![o] }).remove(0);
    assert_eq!(
        ws_open(open_request(&thief, gateway(2), Some((c.id, 1)))),
        Err(WsError::InvalidResume)
    );
    assert!(certified_for(2, c.id).is_empty());
    // The owner resumes from 1 through gateway 2: `Closed` answer, and the certified
    // messages 1..=2 (ending with `Closed`) are queued for gateway 2.
    let resume = open_request(&c.key, gateway(2), Some((c.id, 1)));
    assert_eq!(ws_open(resume.clone()), Err(WsError::Closed));
    let got = certified_for(2, c.id);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        got[1].1,
        OutboundBody::Closed {
            reason: CloseReason::AppClosed {
                code: 4001,
                reason: "kicked".into()
            }
        }
    );
    let info = client_info(c.id).unwrap();
    assert!(info.attached && !info.open);
    assert_eq!(info.first_retained_seq, 1);
    // Its replay is stale; on_close ran once only.
    assert_eq!(ws_open(resume), Err(WsError::StaleOpen));
    assert_eq!(
        events()
            .iter()
            .filter(|e| e.starts_with(&format!("close {}", c.id)))
            .count(),
        1
    );
    // A refused open's session resumed by its owner: its certified `OpenRejected` again.
    let (key, o, r) = open_with_arg(7, 1, "reject");
    let Err(WsError::OpenRejected { client_id: id, .. }) = r else {
        panic!("{r:?}");
    };
    testing::advance_ns(1_000);
    testing::set_caller(gateway(2));
    assert_eq!(
        ws_open(open_request(&key, gateway(2), Some((id, 0)))),
        Err(WsError::Closed)
    );
    assert!(certified_for(1, id).is_empty());
    assert!(matches!(
        &certified_for(2, id)[..],
        [(0, OutboundBody::OpenRejected { open_timestamp_ns, .. })] if *open_timestamp_ns == o.timestamp_ns
    ));
}

/// The instruction budget per call: entries after it are `NotProcessed` with nothing changed,
/// and succeed when sent again; the first entry always runs.
#[test]
fn entries_past_the_instruction_budget_are_not_processed_and_succeed_when_resent() {
    let a = open(1, 1);
    let b = open(2, 1);
    configure(WsConfig {
        max_instructions_per_call: Some(180),
        ..WsConfig::default()
    })
    .unwrap();
    let before_a = client_info(a.id).unwrap();
    // The counter reads 0 and 40 in the endpoint's native housekeeping run (natively it runs
    // inside the call; on the IC a timer does it), then 80, 120, 160, 200 before entries
    // 1, 2, 3, 4 (none before entry 0): entry 4 finds the budget spent.
    testing::set_instructions(0, 40);
    let batch = vec![
        msg(&a, 0, app("a0")),
        msg(&b, 0, app("b0")),
        msg(&a, 1, app("a1")),
        msg(&b, 1, app("b1")),
        msg(&a, 2, app("a2")),
        msg(&b, 2, app("b2")),
    ];
    let r = deliver(1, batch.clone());
    let np = MessageResult::Err(WsError::NotProcessed);
    assert_eq!(
        r,
        vec![
            MessageResult::Ok,
            MessageResult::Ok,
            MessageResult::Ok,
            MessageResult::Ok,
            np.clone(),
            np.clone()
        ]
    );
    assert_eq!(client_info(a.id).unwrap().next_inbound_seq, 2);
    assert_eq!(client_info(b.id).unwrap().next_inbound_seq, 2);
    assert!(!events().contains(&format!("msg {} a2", a.id)));
    assert_eq!(
        client_info(a.id).unwrap().next_outbound_seq,
        before_a.next_outbound_seq + 2,
        "only the processed entries' echoes"
    );
    // Sent again (with the accepted ones: duplicates are no-ops).
    testing::set_instructions(0, 0);
    let r = deliver(1, batch);
    assert!(
        r[..4].iter().all(|x| *x == MessageResult::Duplicate),
        "{r:?}"
    );
    assert_eq!(&r[4..], &[MessageResult::Ok, MessageResult::Ok]);
    assert!(events().contains(&format!("msg {} a2", a.id)));

    // A budget spent before the call's first entry still lets that entry run (progress).
    testing::set_instructions(1_000, 0);
    assert_eq!(
        deliver(1, vec![msg(&a, 3, app("a3")), msg(&b, 3, app("b3"))]),
        vec![MessageResult::Ok, np]
    );

    // ws_open: a not-processed open consumes nothing (its timestamp stays usable).
    let k1 = SessionKey::from_seed([11; 32]);
    let k2 = SessionKey::from_seed([12; 32]);
    let opens = vec![
        open_request(&k1, gateway(1), None),
        open_request(&k2, gateway(1), None),
    ];
    let count = client_count();
    testing::set_instructions(1_000, 0);
    testing::set_caller(gateway(1));
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: opens.clone(),
        },
    );
    assert!(r[0].is_ok(), "{r:?}");
    assert_eq!(r[1], Err(WsError::NotProcessed));
    assert_eq!(client_count(), count + 1);
    testing::set_instructions(0, 0);
    let r = __private::ws_open(
        &H,
        OpenBatch {
            opens: vec![opens[1].clone()],
        },
    );
    assert!(
        r[0].is_ok(),
        "the same signed open succeeds when sent again: {r:?}"
    );

    // ws_close: a not-processed detach leaves the session attached.
    testing::set_instructions(1_000, 0);
    let r = __private::ws_close(
        &H,
        CloseBatch {
            clients: vec![a.id, b.id],
        },
    );
    assert_eq!(r, vec![Ok(()), Err(WsError::NotProcessed)]);
    assert!(!client_info(a.id).unwrap().attached);
    assert!(client_info(b.id).unwrap().attached);
    testing::set_instructions(0, 0);
    assert!(configure(WsConfig {
        max_instructions_per_call: Some(0),
        ..WsConfig::default()
    })
    .is_err());
}

/// Batch verification in `ws_message` (issue 13): across batch boundaries, with badly signed
/// entries (their batch fails and its entries are verified one by one), entries refused
/// before their signature check and duplicates, every entry gets the result it gets alone,
/// and the handler sees the accepted ones in order.
#[test]
fn batched_signature_checks_give_every_entry_its_own_result() {
    let clients: Vec<Client> = (1..=40).map(|i| open(i, 1)).collect();
    let elsewhere = open(41, 2);
    let mut batch = Vec::new();
    for round in 0..2u64 {
        for (i, c) in clients.iter().enumerate() {
            batch.push(msg(c, round, app(&format!("m{i}-{round}"))));
        }
    }
    let ok = MessageResult::Ok;
    let mut expected = vec![ok.clone(); batch.len()];
    // A broken S in the first batch (entries 0..64): invalid, and the same client's next
    // entry is then out of sequence.
    batch[5].signature[40] ^= 1;
    expected[5] = MessageResult::Err(WsError::InvalidSignature);
    expected[45] = MessageResult::Err(WsError::OutOfSequence {
        expected: 0,
        got: 1,
    });
    // A non-canonical R in the second batch.
    batch[70].signature[..32].copy_from_slice(&[0xff; 32]);
    expected[70] = MessageResult::Err(WsError::InvalidSignature);
    // Refused before the signature check; a duplicate.
    batch.push(msg(&elsewhere, 0, app("x")));
    expected.push(MessageResult::Err(WsError::WrongGateway));
    let mut unknown = msg(&clients[0], 0, app("x"));
    unknown.client_id = 9_999;
    batch.push(unknown);
    expected.push(MessageResult::Err(WsError::UnknownClient(9_999)));
    batch.push(msg(&clients[0], 0, app("m0-0")));
    expected.push(MessageResult::Duplicate);
    // And many more valid entries after the failures (batches again, smaller).
    for round in 2..4u64 {
        for (i, c) in clients.iter().enumerate().skip(6).take(30) {
            batch.push(msg(c, round, app(&format!("m{i}-{round}"))));
            // Client 30's entry 1 was refused: its later ones are out of sequence.
            expected.push(if i == 30 {
                MessageResult::Err(WsError::OutOfSequence {
                    expected: 1,
                    got: round,
                })
            } else {
                ok.clone()
            });
        }
    }
    let before = events().len();
    let r = deliver(1, batch.clone());
    assert_eq!(r, expected);
    let seen: Vec<String> = events()[before..].to_vec();
    let want: Vec<String> = batch
        .iter()
        .zip(&expected)
        .filter(|(_, r)| **r == MessageResult::Ok)
        .map(|(m, _)| {
            let text: String = match &m.kind {
                MessageKind::App(p) => candid::decode_one(p).unwrap(),
                _ => unreachable!(),
            };
            format!("msg {} {text}", m.client_id)
        })
        .collect();
    assert_eq!(seen, want, "handled in order, each once");
    // The whole call again: every accepted entry is a duplicate, the rest as before.
    let r = deliver(1, batch);
    for (got, first) in r.iter().zip(&expected) {
        match first {
            MessageResult::Ok => assert_eq!(*got, MessageResult::Duplicate),
            other => assert_eq!(got, other),
        }
    }
}
