//! Native tests of the chat: the candid file is in sync, and the handlers behave as a chat
//! should, driven through the generated handlers and the runtime's fake environment (the
//! same code paths as in the canister, minus the IC system API).
#![allow(clippy::unwrap_used)]

use super::*;
use ic_ws_canister::__private::{ws_message, ws_open, ws_poll};
use ic_ws_canister::{testing, MessageBatch, MessageResult, OpenBatch, PollRequest, WsError};
use ic_ws_protocol::{ClientMessage, MessageKind, OutboundBody, OutboundContent, SessionKey};

const DID_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/chat.did");

#[test]
fn candid_interface_matches_chat_did() {
    let generated = __export_service();
    if std::env::var_os("UPDATE_DID").is_some() {
        std::fs::write(DID_PATH, &generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(DID_PATH).unwrap_or_default();
    assert!(
        on_disk == generated,
        "examples/chat/chat.did is out of date with the canister's interface; regenerate it \
         with `UPDATE_DID=1 cargo test -p ic-ws-example-chat candid_interface` and commit it.\n\
         Generated interface:\n{generated}"
    );
}

#[test]
fn candid_interface_names_the_chat_types() {
    let generated = __export_service();
    assert!(generated.contains("ws_app_types : () -> (opt ChatIn, opt ChatOut) query;"));
    assert!(generated.contains("ws_open_args_type : () -> (opt OpenArgs) query;"));
}

struct Client {
    id: ClientId,
    key: SessionKey,
    seq: u64,
}

fn handlers() -> &'static ic_ws_canister::__private::Handlers {
    &__ic_ws_on_message::App::HANDLERS
}

fn try_join(seed: u8, name: &str, room: Option<&str>) -> Result<Client, WsError> {
    let key = SessionKey::from_seed([seed; 32]);
    testing::set_caller(testing::gateway(1));
    let mut open = testing::open_request(&key, testing::gateway(1), None);
    open.args = candid::encode_one(OpenArgs {
        name: name.into(),
        room: room.map(Into::into),
    })
    .unwrap();
    key.sign_open(&testing::canister_id(), &mut open);
    let result = ws_open(handlers(), OpenBatch { opens: vec![open] }).pop();
    result.unwrap().map(|ok| Client {
        id: ok.client_id,
        key,
        seq: 0,
    })
}

fn join(seed: u8, name: &str, room: Option<&str>) -> Client {
    try_join(seed, name, room).unwrap()
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
    testing::set_caller(testing::gateway(1));
    let batch = MessageBatch {
        messages: vec![msg],
    };
    ws_message(handlers(), batch).pop().unwrap()
}

fn say(client: &mut Client, message: ChatIn) -> MessageResult {
    send_kind(
        client,
        MessageKind::App(candid::encode_one(message).unwrap()),
    )
}

/// Every app message the gateway would deliver to `client` so far (polling from 0).
fn inbox(client: &Client) -> Vec<ChatOut> {
    testing::set_caller(testing::gateway(1));
    let reply = ws_poll(PollRequest {
        cursor: 0,
        max_messages: None,
        max_bytes: None,
        max_clients: None,
    })
    .unwrap();
    assert!(!reply.more, "test inbox larger than one poll");
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

fn texts(events: &[ChatOut]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ChatOut::Message { from, text, .. } => Some(format!("{from}: {text}")),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_are_fanned_out_to_the_room() {
    let mut ada = join(1, "ada", None);
    let bob = join(2, "bob", None);
    let other = join(3, "cy", Some("kitchen"));
    let said = ChatIn::Say {
        text: "hello".into(),
    };
    assert_eq!(say(&mut ada, said), MessageResult::Ok);
    assert_eq!(texts(&inbox(&ada)), vec!["ada: hello"]);
    assert_eq!(texts(&inbox(&bob)), vec!["ada: hello"]);
    assert!(
        texts(&inbox(&other)).is_empty(),
        "another room hears nothing"
    );
}

#[test]
fn joining_lists_members_and_announces_the_newcomer() {
    let ada = join(1, "ada", None);
    let bob = join(2, "bob", None);
    let bob_inbox = inbox(&bob);
    assert_eq!(
        bob_inbox.first(),
        Some(&ChatOut::Members {
            room: "lobby".into(),
            names: vec!["ada".into(), "bob".into()],
            total: 2,
            principals: vec![None, None],
        })
    );
    assert!(inbox(&ada).contains(&ChatOut::Joined {
        name: "bob".into(),
        client: bob.id,
        room: "lobby".into(),
        principal: None,
    }));
}

#[test]
fn names_are_unique_and_validated() {
    let _ada = join(1, "Ada", None);
    // The refusal is certified (`OpenRejected` as message 0 of a closed session); the
    // uncertified answer names that session.
    assert!(matches!(
        try_join(2, "ada", None),
        Err(WsError::OpenRejected { reason, .. }) if reason == "the name \"ada\" is taken"
    ));
    for bad in ["", "   ", &"x".repeat(MAX_NAME_CHARS + 1), "a\u{7}b"] {
        // A new open each time: a refused open consumes its key's timestamp (replaying the
        // same bytes would be `StaleOpen`).
        testing::advance_ns(1);
        assert!(
            matches!(try_join(3, bad, None), Err(WsError::OpenRejected { .. })),
            "{bad:?} accepted"
        );
    }
    assert!(matches!(
        try_join(4, "dee", Some("Bad Room!")),
        Err(WsError::OpenRejected { .. })
    ));
    // A rejected open leaves no participant behind.
    assert_eq!(participants(None).len(), 1);
}

#[test]
fn leaving_is_announced_and_frees_the_name() {
    let ada = join(1, "ada", None);
    let mut bob = join(2, "bob", None);
    let closed = send_kind(
        &mut bob,
        MessageKind::Close {
            code: 1000,
            reason: "bye".into(),
        },
    );
    assert_eq!(closed, MessageResult::Ok);
    assert!(inbox(&ada).contains(&ChatOut::Left {
        name: "bob".into(),
        client: bob.id,
        room: "lobby".into(),
        reason: "left".into(),
    }));
    assert_eq!(participants(None).len(), 1);
    assert!(try_join(3, "bob", None).is_ok(), "the name is free again");
}

#[test]
fn switching_rooms_moves_the_participant() {
    let mut ada = join(1, "ada", None);
    let bob = join(2, "bob", None);
    let cy = join(3, "cy", Some("kitchen"));
    let switch = ChatIn::SwitchRoom {
        room: "kitchen".into(),
    };
    assert_eq!(say(&mut ada, switch), MessageResult::Ok);
    assert!(inbox(&bob)
        .iter()
        .any(|e| matches!(e, ChatOut::Left { name, .. } if name == "ada")));
    assert!(inbox(&cy)
        .iter()
        .any(|e| matches!(e, ChatOut::Joined { name, .. } if name == "ada")));
    let hello = ChatIn::Say {
        text: "hi kitchen".into(),
    };
    assert_eq!(say(&mut ada, hello), MessageResult::Ok);
    assert_eq!(texts(&inbox(&cy)), vec!["ada: hi kitchen"]);
    assert!(texts(&inbox(&bob)).is_empty());
    let rooms = rooms();
    assert_eq!(
        rooms,
        vec![
            RoomInfo {
                room: "kitchen".into(),
                participants: 2
            },
            RoomInfo {
                room: "lobby".into(),
                participants: 1
            },
        ]
    );
}

#[test]
fn bad_messages_are_refused_without_effect() {
    let mut ada = join(1, "ada", None);
    let bob = join(2, "bob", None);
    let empty = ChatIn::Say { text: "  ".into() };
    assert!(matches!(
        say(&mut ada, empty),
        MessageResult::Err(WsError::Rejected(_))
    ));
    let long = ChatIn::Say {
        text: "x".repeat(MAX_TEXT_CHARS + 1),
    };
    assert!(matches!(
        say(&mut ada, long),
        MessageResult::Err(WsError::Rejected(_))
    ));
    let garbage = send_kind(&mut ada, MessageKind::App(b"not candid".to_vec()));
    assert!(matches!(
        garbage,
        MessageResult::Err(WsError::DecodeError(_))
    ));
    assert!(texts(&inbox(&bob)).is_empty());
    // The session goes on.
    let ok = ChatIn::Say { text: "ok".into() };
    assert_eq!(say(&mut ada, ok), MessageResult::Ok);
    assert_eq!(texts(&inbox(&bob)), vec!["ada: ok"]);
}

#[test]
fn participants_query_reports_connection_state() {
    let ada = join(1, "ada", None);
    let _bob = join(2, "bob", Some("kitchen"));
    testing::set_caller(testing::gateway(1));
    let closed = ic_ws_canister::__private::ws_close(
        handlers(),
        ic_ws_canister::CloseBatch {
            clients: vec![ada.id],
        },
    );
    assert_eq!(closed, vec![Ok(())]);
    let all = participants(None);
    assert_eq!(all.len(), 2);
    let ada_presence = all.iter().find(|p| p.participant.client == ada.id).unwrap();
    assert!(!ada_presence.connected, "ada's gateway dropped her");
    assert!(all
        .iter()
        .any(|p| p.participant.name == "bob" && p.connected));
    let kitchen = participants(Some("kitchen".into()));
    assert_eq!(kitchen.len(), 1);
    assert_eq!(kitchen[0].participant.name, "bob");
}

#[test]
fn presence_notices_stop_past_the_announced_room_size() {
    let first = join(1, "p1", None);
    let n = MAX_ANNOUNCED_ROOM as u8 + 2;
    let mut last = None;
    for seed in 2..=n {
        last = Some(join(seed, &format!("p{seed}"), None));
    }
    // `first` got its Opened and Members messages and its own Joined, then one Joined per
    // newcomer while the room had at most MAX_ANNOUNCED_ROOM participants (sizes 2..=100:
    // 99 notices), then nothing.
    let info = ic_ws_canister::client_info(first.id).unwrap();
    assert_eq!(info.next_outbound_seq, 3 + MAX_ANNOUNCED_ROOM - 1);
    // A newcomer still learns who is there and how many (the `Members` message sent on entry).
    let last = last.unwrap();
    assert!(
        matches!(members("lobby"), ChatOut::Members { total, names, .. }
            if total == u64::from(n) && names.len() == usize::from(n))
    );
    // A leave from the large room is not announced either.
    let mut leaver = last;
    let closed = send_kind(
        &mut leaver,
        MessageKind::Close {
            code: 1000,
            reason: "bye".into(),
        },
    );
    assert_eq!(closed, MessageResult::Ok);
    let after = ic_ws_canister::client_info(first.id).unwrap();
    assert_eq!(after.next_outbound_seq, info.next_outbound_seq);
}

#[test]
fn newcomers_get_the_rooms_last_messages_and_the_history_stays_bounded() {
    let mut ada = join(1, "ada", None);
    let mut cy = join(3, "cy", Some("kitchen"));
    for i in 0..HISTORY_SENT + 5 {
        let text = format!("lobby {i}");
        assert_eq!(say(&mut ada, ChatIn::Say { text }), MessageResult::Ok);
    }
    let kitchen = ChatIn::Say {
        text: "kitchen talk".into(),
    };
    assert_eq!(say(&mut cy, kitchen), MessageResult::Ok);
    // A newcomer to the lobby (a reloaded page) gets the lobby's last HISTORY_SENT
    // messages, oldest first, after the member list, and nothing of the kitchen.
    let bob = join(2, "bob", None);
    let events = inbox(&bob);
    assert!(matches!(events.first(), Some(ChatOut::Members { .. })));
    let expected: Vec<String> = (5..HISTORY_SENT + 5)
        .map(|i| format!("ada: lobby {i}"))
        .collect();
    assert_eq!(texts(&events), expected);
    // Switching rooms brings that room's history.
    let mut bob = bob;
    let switch = ChatIn::SwitchRoom {
        room: "kitchen".into(),
    };
    assert_eq!(say(&mut bob, switch), MessageResult::Ok);
    assert!(texts(&inbox(&bob)).ends_with(&["cy: kitchen talk".to_string()]));
    // A resumed session (a reloaded page) asks again: the room's history comes once more, to
    // the asker only.
    assert_eq!(say(&mut bob, ChatIn::History), MessageResult::Ok);
    let again = texts(&inbox(&bob));
    assert_eq!(
        again.iter().filter(|t| *t == "cy: kitchen talk").count(),
        2,
        "{again:?}"
    );
    assert_eq!(
        texts(&inbox(&cy))
            .iter()
            .filter(|t| *t == "cy: kitchen talk")
            .count(),
        1,
        "only the asker gets it"
    );
    // However much is said, at most HISTORY_KEPT messages are kept.
    for i in 0..HISTORY_KEPT + 10 {
        let text = format!("more {i}");
        assert_eq!(say(&mut cy, ChatIn::Say { text }), MessageResult::Ok);
    }
    assert_eq!(HISTORY.with(|h| h.borrow().len()), HISTORY_KEPT);
    assert!(
        history("lobby").is_empty(),
        "the lobby's messages were the oldest"
    );
}

/// Issue 10: participants show their verified principal (anonymous ones none), and a direct
/// message reaches every session of the recipient principal, and only those.
#[test]
fn direct_messages_reach_every_session_of_a_principal() {
    testing::set_time_ns(1_800_000_000_000_000_000);
    let alice_identity = SessionKey::from_seed([100; 32]);
    let alice_principal = testing::identity_principal(&alice_identity);
    let join_as = |seed: u8, name: &str| {
        let key = SessionKey::from_seed([seed; 32]);
        testing::set_caller(testing::gateway(1));
        let mut open = testing::open_request_with_identity(
            &key,
            testing::gateway(1),
            &alice_identity,
            3_600_000_000_000,
        );
        open.args = candid::encode_one(OpenArgs {
            name: name.into(),
            room: None,
        })
        .unwrap();
        key.sign_open(&testing::canister_id(), &mut open);
        let ok = ws_open(handlers(), OpenBatch { opens: vec![open] })
            .pop()
            .unwrap()
            .unwrap();
        Client {
            id: ok.client_id,
            key,
            seq: 0,
        }
    };
    let phone = join_as(1, "alice-phone");
    let laptop = join_as(2, "alice-laptop");
    let mut bob = join(3, "bob", Some("elsewhere"));
    let carol = join(4, "carol", None);
    let listed: Vec<(String, Option<candid::Principal>)> = participants(None)
        .into_iter()
        .map(|p| (p.participant.name, p.participant.principal))
        .collect();
    assert!(listed.contains(&("alice-phone".into(), Some(alice_principal))));
    assert!(listed.contains(&("alice-laptop".into(), Some(alice_principal))));
    assert!(listed.contains(&("bob".into(), None)));
    // The page shows them: the join notice and the member list carry the principal.
    assert!(inbox(&phone).contains(&ChatOut::Joined {
        name: "alice-laptop".into(),
        client: laptop.id,
        room: "lobby".into(),
        principal: Some(alice_principal),
    }));
    let lobby = inbox(&carol)
        .into_iter()
        .find_map(|m| match m {
            ChatOut::Members {
                names, principals, ..
            } => Some(names.into_iter().zip(principals).collect::<Vec<_>>()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        lobby,
        vec![
            ("alice-phone".to_string(), Some(alice_principal)),
            ("alice-laptop".to_string(), Some(alice_principal)),
            ("carol".to_string(), None),
        ]
    );
    assert_eq!(
        say(
            &mut bob,
            ChatIn::Direct {
                to: alice_principal,
                text: "hi alice".into()
            }
        ),
        MessageResult::Ok
    );
    let direct = |c: &Client| -> Vec<(String, Option<candid::Principal>, String)> {
        inbox(c)
            .into_iter()
            .filter_map(|m| match m {
                ChatOut::Direct {
                    from,
                    from_principal,
                    text,
                    ..
                } => Some((from, from_principal, text)),
                _ => None,
            })
            .collect()
    };
    let expected = vec![("bob".to_string(), None, "hi alice".to_string())];
    assert_eq!(direct(&phone), expected);
    assert_eq!(direct(&laptop), expected);
    assert_eq!(direct(&bob), expected, "the sender sees what it sent");
    assert!(direct(&carol).is_empty(), "nobody else gets it");
    // A principal with no session: refused.
    let nobody = testing::identity_principal(&SessionKey::from_seed([101; 32]));
    assert!(matches!(
        say(
            &mut bob,
            ChatIn::Direct {
                to: nobody,
                text: "anyone?".into()
            }
        ),
        MessageResult::Err(_)
    ));
}
