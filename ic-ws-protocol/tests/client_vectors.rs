//! State-machine vectors: event sequences fed to `ic_ws_protocol::client::ClientSession` with
//! the outputs it must produce, covering the normal paths and every attack on outcomes
//! (docs/protocol.md, version 2). client-js runs the same file against its `session.ts`.
//!
//! `test-vectors/client-vectors.json` is generated from this file. After a deliberate change
//! regenerate it with
//! `IC_WS_UPDATE_VECTORS=1 cargo test --workspace --locked --test client_vectors` and review
//! the diff: the JS state machine must then produce the same outputs.
#![allow(clippy::unwrap_used)]

use candid::Principal;
use ic_ws_protocol::client::{
    Action, Claim, ClientSession, Event, Failure, Next, OnSessionLost, SessionConfig,
};
use ic_ws_protocol::test_utils::{cbor_self_describing, TestOutbox, TestRootKey};
use ic_ws_protocol::verify::prune_tree_for_client;
use ic_ws_protocol::*;
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000_000_000_000;
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
const CLIENT: ClientId = 7;

fn canister() -> Principal {
    Principal::from_text("bkyz2-fmaaa-aaaaa-qaaaq-cai").unwrap()
}

fn gateway() -> Principal {
    Principal::self_authenticating([3u8; 44])
}

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

fn root() -> TestRootKey {
    TestRootKey::from_seed(0x2b)
}

fn config() -> SessionConfig {
    SessionConfig {
        canister_id: canister(),
        root_key_der: root().public_key_der(),
        max_certificate_age_ns: 300 * SEC,
        open_args: candid::encode_one("alice").unwrap(),
        open_timeout_ns: 30 * SEC,
        keepalive_interval_ns: 30 * SEC,
        ack_threshold: 4,
        resend_buffer: 8,
        clock_skew_ns: 300 * SEC,
        resume_refusals_before_wait: 2,
        on_session_lost: OnSessionLost::NewSession,
    }
}

fn config_json(c: &SessionConfig) -> Value {
    json!({
        "canister_id": c.canister_id.to_text(),
        "root_key": hx(&c.root_key_der),
        "max_certificate_age_ns": c.max_certificate_age_ns.to_string(),
        "open_args": hx(&c.open_args),
        "open_timeout_ns": c.open_timeout_ns.to_string(),
        "keepalive_interval_ns": c.keepalive_interval_ns.to_string(),
        "ack_threshold": c.ack_threshold.to_string(),
        "resend_buffer": c.resend_buffer,
        "clock_skew_ns": c.clock_skew_ns.to_string(),
        "resume_refusals_before_wait": c.resume_refusals_before_wait,
        "on_session_lost": match c.on_session_lost { OnSessionLost::NewSession => "NewSession", OnSessionLost::Stop => "Stop" },
    })
}

/// Key seed number `n` (the vectors' key source hands out 1, 2, 3, ...).
fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

fn ws_error_json(e: &WsError) -> Value {
    match e {
        WsError::InvalidSignature => json!({"InvalidSignature": null}),
        WsError::MalformedKey => json!({"MalformedKey": null}),
        WsError::UnknownClient(id) => json!({"UnknownClient": id.to_string()}),
        WsError::WrongGateway => json!({"WrongGateway": null}),
        WsError::GatewayMismatch => json!({"GatewayMismatch": null}),
        WsError::AnonymousGateway => json!({"AnonymousGateway": null}),
        WsError::OutOfSequence { expected, got } => {
            json!({"OutOfSequence": {"expected": expected.to_string(), "got": got.to_string()}})
        }
        WsError::StaleOpen => json!({"StaleOpen": null}),
        WsError::ResumeUnavailable { first_available } => {
            json!({"ResumeUnavailable": {"first_available": first_available.to_string()}})
        }
        WsError::InvalidResume => json!({"InvalidResume": null}),
        WsError::Rejected(s) => json!({ "Rejected": s }),
        WsError::OpenRejected { client_id, reason } => {
            json!({"OpenRejected": {"client_id": client_id.to_string(), "reason": reason}})
        }
        WsError::DecodeError(s) => json!({ "DecodeError": s }),
        WsError::TooLarge { size, limit } => {
            json!({"TooLarge": {"size": size.to_string(), "limit": limit.to_string()}})
        }
        WsError::LimitReached(s) => json!({ "LimitReached": s }),
        WsError::Closed => json!({"Closed": null}),
        WsError::InvalidArgument(s) => json!({ "InvalidArgument": s }),
        WsError::NotProcessed => json!({"NotProcessed": null}),
        WsError::Identity(e) => json!({ "Identity": format!("{e:?}") }),
    }
}

fn close_reason_json(r: &CloseReason) -> Value {
    match r {
        CloseReason::ClientClosed { code, reason } => {
            json!({"ClientClosed": {"code": code, "reason": reason}})
        }
        CloseReason::AppClosed { code, reason } => {
            json!({"AppClosed": {"code": code, "reason": reason}})
        }
        CloseReason::Expired => json!({"Expired": null}),
        CloseReason::QueueOverflow => json!({"QueueOverflow": null}),
        CloseReason::ProtocolError(s) => json!({ "ProtocolError": s }),
        CloseReason::IdentityExpired => json!({"IdentityExpired": null}),
    }
}

fn event_json(e: &Event) -> Value {
    match e {
        Event::Opened {
            client_id,
            resumed,
            next_inbound_seq,
            resent,
        } => json!({"Opened": {
            "client_id": client_id.to_string(), "resumed": resumed,
            "next_inbound_seq": next_inbound_seq.to_string(), "resent": resent,
        }}),
        Event::Message {
            seq,
            timestamp_ns,
            topic,
            payload,
        } => json!({"Message": {
            "seq": seq.to_string(), "timestamp_ns": timestamp_ns.to_string(),
            "topic": topic, "payload": hx(payload),
        }}),
        Event::MessageRejected { seq, error } => {
            json!({"MessageRejected": {"seq": seq.to_string(), "error": ws_error_json(error)}})
        }
        Event::OpenRejected { client_id, error } => {
            json!({"OpenRejected": {"client_id": client_id.to_string(), "error": ws_error_json(error)}})
        }
        Event::Unverified(Claim::OpenError(e)) => {
            json!({"Unverified": {"OpenError": ws_error_json(e)}})
        }
        Event::Unverified(Claim::MessageError { seq, error }) => {
            json!({"Unverified": {"MessageError": {"seq": seq.to_string(), "error": ws_error_json(error)}}})
        }
        Event::SessionLost {
            client_id,
            dropped_outgoing,
        } => json!({"SessionLost": {
            "client_id": client_id.to_string(), "dropped_outgoing": dropped_outgoing.to_string(),
        }}),
        Event::Closed(r) => json!({ "Closed": close_reason_json(r) }),
    }
}

fn next_json(n: &Next) -> Value {
    match n {
        Next::Reconnect => json!("Reconnect"),
        Next::ReconnectNow => json!("ReconnectNow"),
        Next::WaitUntil(t) => json!({"WaitUntil": t.to_string()}),
        Next::Stop => json!("Stop"),
    }
}

fn action_json(a: &Action) -> Value {
    match a {
        Action::Write(frame) => json!({"Write": hx(&encode(frame).unwrap())}),
        Action::Emit(e) => json!({ "Emit": event_json(e) }),
        Action::Close { error, next } => {
            json!({"Close": {"error": error.kind(), "next": next_json(next)}})
        }
    }
}

fn kind_json(k: &MessageKind) -> Value {
    match k {
        MessageKind::App(p) => json!({"App": hx(p)}),
        MessageKind::KeepAlive => json!("KeepAlive"),
        MessageKind::Close { code, reason } => {
            json!({"Close": {"code": code, "reason": reason}})
        }
    }
}

/// Records a vector while driving the machine; certifies frames like a canister would.
struct Script {
    name: &'static str,
    description: &'static str,
    config: SessionConfig,
    machine: ClientSession,
    outbox: TestOutbox,
    steps: Vec<Value>,
    /// Every frame the machine wrote, in order.
    written: Vec<ClientFrame>,
    /// Seeds handed out so far.
    keys: u8,
}

impl Script {
    fn new(name: &'static str, description: &'static str) -> Self {
        Self::with_config(name, description, config())
    }

    fn with_config(name: &'static str, description: &'static str, config: SessionConfig) -> Self {
        let mut n = 0u8;
        let keys = Box::new(move || {
            n += 1;
            seed(n)
        });
        Script {
            name,
            description,
            machine: ClientSession::new(config.clone(), keys),
            config,
            outbox: TestOutbox::default(),
            steps: Vec::new(),
            written: Vec::new(),
            keys: 1,
        }
    }

    fn record(&mut self, now: u64, input: Value, actions: &[Action], extra: Option<Value>) {
        for a in actions {
            if let Action::Write(f) = a {
                self.written.push(f.clone());
            }
            if let Action::Emit(Event::SessionLost { .. }) = a {
                self.keys += 1;
            }
        }
        let mut step = json!({
            "now_ns": now.to_string(),
            "input": input,
            "expect": actions.iter().map(action_json).collect::<Vec<_>>(),
        });
        if let Some(x) = extra {
            step["expect_send"] = x;
        }
        self.steps.push(step);
    }

    fn connected(&mut self, now: u64) -> Vec<Action> {
        let a = self.machine.connected(now);
        self.record(now, json!("Connected"), &a, None);
        a
    }

    fn frame(&mut self, now: u64, frame: GatewayFrame) -> Vec<Action> {
        let bytes = encode(&frame).unwrap();
        let a = self.machine.frame(frame, now);
        self.record(now, json!({ "Frame": hx(&bytes) }), &a, None);
        a
    }

    fn hello(&mut self, now: u64) -> OpenRequest {
        self.frame(
            now,
            GatewayFrame::Hello {
                gateway: gateway(),
                protocol_version: PROTOCOL_VERSION,
            },
        );
        self.last_open()
    }

    fn tick(&mut self, now: u64) -> Vec<Action> {
        let a = self.machine.tick(now);
        self.record(now, json!("Tick"), &a, None);
        a
    }

    fn lost(&mut self, now: u64) -> Vec<Action> {
        let a = self
            .machine
            .connection_lost(Failure::Transport("reset".into()), now);
        self.record(now, json!({"ConnectionLost": "reset"}), &a, None);
        a
    }

    fn send(&mut self, now: u64, kind: MessageKind) -> Vec<Action> {
        let input = json!({ "Send": kind_json(&kind) });
        match self.machine.send(kind, now) {
            Ok((seq, a)) => {
                self.record(now, input, &a, Some(json!({"Ok": seq.to_string()})));
                a
            }
            Err(e) => {
                let name = format!("{e:?}")
                    .split(|c: char| !c.is_alphanumeric())
                    .next()
                    .unwrap()
                    .to_string();
                self.record(now, input, &[], Some(json!({ "Err": name })));
                Vec::new()
            }
        }
    }

    fn last_open(&self) -> OpenRequest {
        self.written
            .iter()
            .rev()
            .find_map(|f| match f {
                ClientFrame::Open { request, .. } => Some(request.clone()),
                _ => None,
            })
            .expect("an open was written")
    }

    /// Certifies `bodies` as messages `from..` of `client` and returns the frame.
    fn certified(
        &mut self,
        client: ClientId,
        from: u64,
        bodies: Vec<OutboundBody>,
        time: u64,
    ) -> GatewayFrame {
        let messages: Vec<OutboundMessage> = bodies
            .into_iter()
            .zip(from..)
            .map(|(body, seq)| {
                self.outbox.push(
                    client,
                    seq,
                    &OutboundContent {
                        timestamp_ns: time,
                        body,
                    },
                )
            })
            .collect();
        let tree = self.outbox.tree();
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        let pruned = prune_tree_for_client(&tree, client, &seqs);
        GatewayFrame::Messages {
            messages,
            certificate: root().certificate(&canister(), &tree.digest(), time),
            tree: cbor_self_describing(&pruned),
        }
    }

    fn opened(&self, open: &OpenRequest, next_inbound_seq: u64) -> OutboundBody {
        OutboundBody::Opened {
            client_key: open.client_key.clone(),
            open_timestamp_ns: open.timestamp_ns,
            next_inbound_seq,
            resumed: open.resume.is_some(),
            max_inbound_payload_bytes: 1000,
            idle_timeout_ns: 120 * SEC,
            principal: None,
        }
    }

    fn ok(&mut self, now: u64, client_id: ClientId, next_inbound_seq: u64, opened_seq: u64) {
        self.frame(
            now,
            GatewayFrame::OpenResult(Ok(OpenOk {
                client_id,
                next_inbound_seq,
                opened_seq,
            })),
        );
    }

    /// Connect, Hello, Ok, certified Opened at seq 0: a new session `CLIENT` at `now`.
    fn open_new(&mut self, now: u64) -> OpenRequest {
        self.connected(now);
        let open = self.hello(now);
        assert!(open.resume.is_none());
        self.ok(now + MS, CLIENT, 0, 0);
        let body = self.opened(&open, 0);
        let f = self.certified(CLIENT, 0, vec![body], now + MS);
        let a = self.frame(now + 2 * MS, f);
        assert!(
            matches!(a.first(), Some(Action::Emit(Event::Opened { .. }))),
            "{a:?}"
        );
        open
    }

    fn done(self) -> Value {
        json!({
            "name": self.name,
            "description": self.description,
            "config": config_json(&self.config),
            "steps": self.steps,
        })
    }
}

fn app(s: &str) -> OutboundBody {
    OutboundBody::App {
        topic: None,
        payload: candid::encode_one(s).unwrap(),
    }
}

fn pay(s: &str) -> MessageKind {
    MessageKind::App(candid::encode_one(s).unwrap())
}

fn is_close(a: &[Action], next: Next) -> bool {
    matches!(a.last(), Some(Action::Close { next: n, .. }) if *n == next)
}

fn vectors() -> Vec<Value> {
    let mut out = Vec::new();

    // 1. The normal path: open, send, receive, keep-alive when idle.
    let mut s = Script::new(
        "new_session_round_trip",
        "open a new session, send, receive the echo, keep-alive after the idle interval",
    );
    s.open_new(NOW);
    let a = s.send(NOW + 10 * MS, pay("hello"));
    assert!(matches!(a.as_slice(), [Action::Write(_)]));
    let f = s.certified(CLIENT, 1, vec![app("hello")], NOW + 20 * MS);
    s.frame(NOW + 30 * MS, f);
    s.tick(NOW + 40 * MS);
    let a = s.tick(NOW + 10 * MS + 30 * SEC);
    assert!(matches!(a.as_slice(), [Action::Write(_)]), "keep-alive");
    out.push(s.done());

    // 2. Certified frames that overtake the open result are held, then checked.
    let mut s = Script::new(
        "early_frames_are_held",
        "Messages before the OpenResult are held (bounded) and checked once the id is known",
    );
    s.connected(NOW);
    let open = s.hello(NOW);
    let body = s.opened(&open, 0);
    let f = s.certified(CLIENT, 0, vec![body, app("welcome")], NOW);
    let a = s.frame(NOW + MS, f);
    assert!(a.is_empty());
    let a = s.frame(
        NOW + 2 * MS,
        GatewayFrame::OpenResult(Ok(OpenOk {
            client_id: CLIENT,
            next_inbound_seq: 0,
            opened_seq: 0,
        })),
    );
    assert_eq!(a.len(), 2, "{a:?}");
    out.push(s.done());

    // 3. Too many early frames.
    let mut s = Script::new(
        "too_many_early_frames",
        "more than 64 frames before the open result close the connection (retry)",
    );
    s.connected(NOW);
    s.hello(NOW);
    let mut last = Vec::new();
    for _ in 0..65 {
        last = s.frame(
            NOW + MS,
            GatewayFrame::Messages {
                messages: vec![],
                certificate: vec![],
                tree: vec![],
            },
        );
    }
    assert!(is_close(&last, Next::Reconnect), "{last:?}");
    out.push(s.done());

    // 4. Ack threshold: more than 4 unacknowledged messages make a keep-alive.
    let mut s = Script::new(
        "ack_threshold",
        "a keep-alive acknowledges as soon as more than ack_threshold messages are unacknowledged",
    );
    s.open_new(NOW);
    let f = s.certified(
        CLIENT,
        1,
        (0..5).map(|i| app(&format!("m{i}"))).collect(),
        NOW + 5 * MS,
    );
    let a = s.frame(NOW + 6 * MS, f);
    assert!(matches!(a.last(), Some(Action::Write(_))), "{a:?}");
    out.push(s.done());

    // 5. Forged MessageError while the message is accepted.
    let mut s = Script::new(
        "forged_message_error",
        "a MessageError (uncertified) is reported unverified and only causes a reconnect; the resume's certified Opened shows the message accepted: nothing re-sent, the echo arrives once",
    );
    s.open_new(NOW);
    s.send(NOW + 10 * MS, pay("pay"));
    let a = s.frame(
        NOW + 11 * MS,
        GatewayFrame::MessageError {
            seq: 0,
            error: WsError::Rejected("insufficient funds".into()),
        },
    );
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    s.connected(NOW + SEC);
    let open = s.hello(NOW + SEC);
    assert!(open.resume.is_some());
    s.ok(NOW + SEC + MS, CLIENT, 1, 2);
    let body = s.opened(&open, 1);
    let f = s.certified(CLIENT, 1, vec![app("pay"), body], NOW + SEC + MS);
    let a = s.frame(NOW + SEC + 2 * MS, f);
    assert!(
        matches!(
            a.get(1),
            Some(Action::Emit(Event::Opened { resent: 0, .. }))
        ),
        "{a:?}"
    );
    out.push(s.done());

    // 6. Forged MessageError while the message was not accepted: re-sent on resume.
    let mut s = Script::new(
        "message_error_resend",
        "after a MessageError the resume's certified next_inbound_seq says the message is missing: it is re-sent verbatim",
    );
    s.open_new(NOW);
    s.send(NOW + 10 * MS, pay("a"));
    s.frame(
        NOW + 11 * MS,
        GatewayFrame::MessageError {
            seq: 0,
            error: WsError::OutOfSequence {
                expected: 0,
                got: 0,
            },
        },
    );
    s.connected(NOW + SEC);
    let open = s.hello(NOW + SEC);
    s.ok(NOW + SEC + MS, CLIENT, 0, 1);
    let body = s.opened(&open, 0);
    let f = s.certified(CLIENT, 1, vec![body], NOW + SEC + MS);
    let a = s.frame(NOW + SEC + 2 * MS, f);
    assert!(
        matches!(a.get(1), Some(Action::Write(ClientFrame::Message(m))) if m.seq == 0),
        "{a:?}"
    );
    out.push(s.done());

    // 7. Forged OpenResult error on the first connect.
    let mut s = Script::new(
        "forged_open_error_first_connect",
        "an uncertified Err(Rejected) on the first open only means retry: the next connection opens a new session again (same key, newer timestamp)",
    );
    s.connected(NOW);
    s.hello(NOW);
    let a = s.frame(
        NOW + MS,
        GatewayFrame::OpenResult(Err(WsError::Rejected("the name is taken".into()))),
    );
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    s.open_new(NOW + SEC);
    out.push(s.done());

    // 8. OpenRejected claim without the certified message.
    let mut s = Script::new(
        "open_rejected_claim_times_out",
        "Err(OpenRejected) is believed only with the certified OpenRejected; without it the open timeout makes it a failed connection (retry)",
    );
    s.connected(NOW);
    s.hello(NOW);
    let a = s.frame(
        NOW + MS,
        GatewayFrame::OpenResult(Err(WsError::OpenRejected {
            client_id: 9,
            reason: "banned".into(),
        })),
    );
    assert!(
        matches!(a.as_slice(), [Action::Emit(Event::Unverified(_))]),
        "{a:?}"
    );
    s.tick(NOW + 10 * SEC);
    let a = s.tick(NOW + 30 * SEC);
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    s.open_new(NOW + 31 * SEC);
    out.push(s.done());

    // 9. Certified OpenRejected.
    let mut s = Script::new(
        "certified_open_rejected",
        "the certified OpenRejected (seq 0, own key, own timestamp) is a terminal, certified refusal",
    );
    s.connected(NOW);
    let open = s.hello(NOW);
    s.frame(
        NOW + MS,
        GatewayFrame::OpenResult(Err(WsError::OpenRejected {
            client_id: 9,
            reason: "the name is taken".into(),
        })),
    );
    let f = s.certified(
        9,
        0,
        vec![OutboundBody::OpenRejected {
            client_key: open.client_key.clone(),
            open_timestamp_ns: open.timestamp_ns,
            error: WsError::Rejected("the name is taken".into()),
        }],
        NOW + MS,
    );
    let a = s.frame(NOW + 2 * MS, f);
    assert!(is_close(&a, Next::Stop), "{a:?}");
    s.send(NOW + 3 * MS, pay("x"));
    out.push(s.done());

    // 10. OpenRejected for another open (older timestamp): a binding failure, retry.
    let mut s = Script::new(
        "open_rejected_for_another_open",
        "a certified OpenRejected of another open of this key (other timestamp) is not this open's refusal",
    );
    s.connected(NOW);
    let open = s.hello(NOW);
    s.frame(
        NOW + MS,
        GatewayFrame::OpenResult(Err(WsError::OpenRejected {
            client_id: 9,
            reason: "x".into(),
        })),
    );
    let f = s.certified(
        9,
        0,
        vec![OutboundBody::OpenRejected {
            client_key: open.client_key.clone(),
            open_timestamp_ns: open.timestamp_ns - 1,
            error: WsError::Rejected("x".into()),
        }],
        NOW + MS,
    );
    let a = s.frame(NOW + 2 * MS, f);
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    out.push(s.done());

    // 11. Certified MessageRejected.
    let mut s = Script::new(
        "certified_message_rejected",
        "a certified MessageRejected is a fact and confirms own messages up to its seq: a resume re-sends only later ones",
    );
    s.open_new(NOW);
    s.send(NOW + 10 * MS, pay("bad"));
    s.send(NOW + 11 * MS, pay("good"));
    s.send(NOW + 12 * MS, pay("later"));
    let f = s.certified(
        CLIENT,
        1,
        vec![OutboundBody::MessageRejected {
            inbound_seq: 1,
            error: WsError::Rejected("no".into()),
        }],
        NOW + 13 * MS,
    );
    s.frame(NOW + 14 * MS, f);
    s.lost(NOW + 15 * MS);
    s.connected(NOW + SEC);
    let open = s.hello(NOW + SEC);
    s.ok(NOW + SEC + MS, CLIENT, 2, 2);
    let body = s.opened(&open, 2);
    let f = s.certified(CLIENT, 2, vec![body], NOW + SEC + MS);
    let a = s.frame(NOW + SEC + 2 * MS, f);
    assert!(
        matches!(
            a.first(),
            Some(Action::Emit(Event::Opened { resent: 1, .. }))
        ),
        "{a:?}"
    );
    out.push(s.done());

    // 12. MessageRejected naming a message never sent.
    let mut s = Script::new(
        "message_rejected_beyond_sent",
        "a certified MessageRejected for a seq this client never signed is a binding failure",
    );
    s.open_new(NOW);
    let f = s.certified(
        CLIENT,
        1,
        vec![OutboundBody::MessageRejected {
            inbound_seq: 0,
            error: WsError::Rejected("no".into()),
        }],
        NOW + 13 * MS,
    );
    let a = s.frame(NOW + 14 * MS, f);
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    out.push(s.done());

    // 13. Resume of a closed session: Err(Closed) then the certified Closed.
    let mut s = Script::new(
        "resume_closed",
        "a resume answered Err(Closed) keeps the connection; the certified Closed re-delivered after it ends the session",
    );
    s.open_new(NOW);
    s.lost(NOW + SEC);
    s.connected(NOW + 2 * SEC);
    s.hello(NOW + 2 * SEC);
    s.frame(
        NOW + 2 * SEC + MS,
        GatewayFrame::OpenResult(Err(WsError::Closed)),
    );
    let f = s.certified(
        CLIENT,
        1,
        vec![
            app("last words"),
            OutboundBody::Closed {
                reason: CloseReason::Expired,
            },
        ],
        NOW + 2 * SEC + MS,
    );
    let a = s.frame(NOW + 2 * SEC + 2 * MS, f);
    assert!(is_close(&a, Next::Stop), "{a:?}");
    out.push(s.done());

    // 14. Resume refused everywhere: wait for the own-clock proof, then a new session.
    let mut s = Script::new(
        "resume_refused_until_expiry",
        "resumes refused as gone (uncertified) by every gateway: the client stops signing resumes, waits until its own clock proves expiry (last signed + skew + (1 + unconfirmed) x idle), reports the session lost and opens a new one",
    );
    s.open_new(NOW);
    s.send(NOW + SEC, pay("unconfirmed"));
    s.lost(NOW + 2 * SEC);
    let mut now = NOW + 3 * SEC;
    let mut last = Vec::new();
    for _ in 0..2 {
        s.connected(now);
        s.hello(now);
        last = s.frame(
            now + MS,
            GatewayFrame::OpenResult(Err(WsError::UnknownClient(CLIENT))),
        );
        now += SEC;
    }
    let until = match last.last() {
        Some(Action::Close {
            next: Next::WaitUntil(t),
            ..
        }) => *t,
        other => panic!("{other:?}"),
    };
    assert_eq!(until, NOW + 4 * SEC + 300 * SEC + 2 * 120 * SEC);
    s.send(now, pay("while waiting"));
    s.connected(until);
    let open = s.hello(until);
    assert!(open.resume.is_none());
    s.ok(until + MS, CLIENT + 1, 0, 0);
    let body = s.opened(&open, 0);
    let f = s.certified(CLIENT + 1, 0, vec![body], until + MS);
    s.frame(until + 2 * MS, f);
    out.push(s.done());

    // 15. One gateway claims gone, the next resumes: no wait, no loss.
    let mut s = Script::new(
        "resume_refused_once",
        "one resume refused as gone (uncertified) and the next accepted: the session goes on",
    );
    s.open_new(NOW);
    s.lost(NOW + SEC);
    s.connected(NOW + 2 * SEC);
    s.hello(NOW + 2 * SEC);
    let a = s.frame(
        NOW + 2 * SEC + MS,
        GatewayFrame::OpenResult(Err(WsError::ResumeUnavailable { first_available: 5 })),
    );
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    s.connected(NOW + 3 * SEC);
    let open = s.hello(NOW + 3 * SEC);
    s.ok(NOW + 3 * SEC + MS, CLIENT, 0, 1);
    let body = s.opened(&open, 0);
    let f = s.certified(CLIENT, 1, vec![body], NOW + 3 * SEC + MS);
    s.frame(NOW + 3 * SEC + 2 * MS, f);
    out.push(s.done());

    // 16. Payload over the certified limit.
    let mut s = Script::new(
        "send_too_large",
        "an App payload over the certified max_inbound_payload_bytes is refused before signing",
    );
    s.open_new(NOW);
    s.send(NOW + MS, MessageKind::App(vec![0; 1001]));
    s.send(NOW + 2 * MS, MessageKind::App(vec![0; 1000]));
    out.push(s.done());

    // 17. Verification failure: altered content.
    let mut s = Script::new(
        "altered_content",
        "a delivered message whose content is not certified fails check 5: the frame is dropped, reconnect",
    );
    s.open_new(NOW);
    let mut f = s.certified(CLIENT, 1, vec![app("x")], NOW + MS);
    if let GatewayFrame::Messages { messages, .. } = &mut f {
        let last = messages[0].content.len() - 1;
        messages[0].content[last] ^= 1;
    }
    let a = s.frame(NOW + 2 * MS, f);
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    out.push(s.done());

    // 18. Opened for another key.
    let mut s = Script::new(
        "opened_other_key",
        "a certified Opened binding another key fails check 6",
    );
    s.connected(NOW);
    let open = s.hello(NOW);
    s.ok(NOW + MS, CLIENT, 0, 0);
    let body = OutboundBody::Opened {
        client_key: vec![9; 32],
        open_timestamp_ns: open.timestamp_ns,
        next_inbound_seq: 0,
        resumed: false,
        max_inbound_payload_bytes: 1000,
        idle_timeout_ns: 120 * SEC,
        principal: None,
    };
    let f = s.certified(CLIENT, 0, vec![body], NOW + MS);
    let a = s.frame(NOW + 2 * MS, f);
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    out.push(s.done());

    // 19. Other protocol version.
    let mut s = Script::new(
        "other_protocol_version",
        "a gateway announcing another version is a failed connection (the next gateway may speak it)",
    );
    s.connected(NOW);
    let a = s.frame(
        NOW,
        GatewayFrame::Hello {
            gateway: gateway(),
            protocol_version: 1,
        },
    );
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    out.push(s.done());

    // 20. Withheld outcome: timeout.
    let mut s = Script::new(
        "withheld_open_result",
        "no open result within the open timeout: a failed connection (retry elsewhere)",
    );
    s.connected(NOW);
    s.hello(NOW);
    let a = s.tick(NOW + 30 * SEC);
    assert!(is_close(&a, Next::Reconnect), "{a:?}");
    out.push(s.done());

    // 21. Certified Closed in the stream.
    let mut s = Script::new(
        "certified_closed",
        "the certified Closed ends the session; nothing after it in the frame is accepted",
    );
    s.open_new(NOW);
    let f = s.certified(
        CLIENT,
        1,
        vec![OutboundBody::Closed {
            reason: CloseReason::AppClosed {
                code: 4000,
                reason: "bye".into(),
            },
        }],
        NOW + MS,
    );
    let a = s.frame(NOW + 2 * MS, f);
    assert!(is_close(&a, Next::Stop), "{a:?}");
    out.push(s.done());

    // 22. The Opened of an earlier lost resume is skipped.
    let mut s = Script::new(
        "earlier_opened_skipped",
        "a resume re-delivers the Opened of an earlier open whose connection died: skipped, the resume completes with its own",
    );
    let first = s.open_new(NOW);
    s.lost(NOW + SEC);
    s.connected(NOW + 2 * SEC);
    let lost_open = s.hello(NOW + 2 * SEC);
    s.lost(NOW + 2 * SEC + MS);
    s.connected(NOW + 3 * SEC);
    let open = s.hello(NOW + 3 * SEC);
    s.ok(NOW + 3 * SEC + MS, CLIENT, 0, 2);
    let earlier = s.opened(&lost_open, 0);
    let body = s.opened(&open, 0);
    let f = s.certified(CLIENT, 1, vec![earlier, body], NOW + 3 * SEC + MS);
    let a = s.frame(NOW + 3 * SEC + 2 * MS, f);
    assert!(
        matches!(
            a.first(),
            Some(Action::Emit(Event::Opened { resumed: true, .. }))
        ),
        "{a:?}"
    );
    let _ = first;
    out.push(s.done());

    out
}

fn generate() -> Value {
    json!({
        "description": "ic-ws client state-machine vectors (protocol v2); generated by ic-ws-protocol/tests/client_vectors.rs. Each vector starts a fresh machine with `config` and a key source handing out seeds [1; 32], [2; 32], ... (one per new session key); each step feeds `input` at `now_ns` and expects exactly `expect` (and for Send, `expect_send`). u64 values are decimal strings, bytes hex; Write is the candid ClientFrame; Close.error is Failure::kind().",
        "protocol_version": PROTOCOL_VERSION,
        "gateway": gateway().to_text(),
        "vectors": vectors(),
    })
}

#[test]
fn client_vectors_file_is_up_to_date() {
    let generated = serde_json::to_string_pretty(&generate()).unwrap() + "\n";
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-vectors/client-vectors.json");
    if std::env::var_os("IC_WS_UPDATE_VECTORS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "test-vectors/client-vectors.json is out of date; regenerate with IC_WS_UPDATE_VECTORS=1 cargo test --workspace --locked --test client_vectors and review the diff"
    );
}

mod claims {
    //! Property: nothing a gateway merely claims makes the machine drop an own message, stop,
    //! report a certified outcome, or give up the session before the own clock proves expiry.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Input {
        Connected,
        Hello,
        OpenOk(ClientId),
        OpenErr(WsError),
        MessageError(u64, WsError),
        Junk,
        Lost,
        Tick,
    }

    fn ws_error() -> impl Strategy<Value = WsError> {
        prop_oneof![
            Just(WsError::InvalidSignature),
            any::<u64>().prop_map(WsError::UnknownClient),
            Just(WsError::WrongGateway),
            Just(WsError::StaleOpen),
            Just(WsError::InvalidResume),
            any::<u64>().prop_map(|first_available| WsError::ResumeUnavailable { first_available }),
            "[a-z]{0,8}".prop_map(WsError::Rejected),
            ("[a-z]{0,8}", any::<u64>())
                .prop_map(|(reason, client_id)| WsError::OpenRejected { client_id, reason }),
            "[a-z]{0,8}".prop_map(WsError::DecodeError),
            Just(WsError::Closed),
            Just(WsError::NotProcessed),
            (any::<u64>(), any::<u64>())
                .prop_map(|(expected, got)| WsError::OutOfSequence { expected, got }),
        ]
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            3 => Just(Input::Connected),
            3 => Just(Input::Hello),
            1 => prop_oneof![Just(CLIENT), any::<u64>()].prop_map(Input::OpenOk),
            3 => ws_error().prop_map(Input::OpenErr),
            2 => (0u64..4, ws_error()).prop_map(|(s, e)| Input::MessageError(s, e)),
            1 => Just(Input::Junk),
            2 => Just(Input::Lost),
            2 => Just(Input::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn uncertified_claims_never_drop_stop_or_decide(
            steps in proptest::collection::vec((input(), 0u64..60), 1..60),
        ) {
            // A resend buffer that never evicts: only claims could remove a message here.
            let mut s = Script::with_config("prop", "", SessionConfig { resend_buffer: 1024, ..config() });
            s.open_new(NOW);
            for i in 0..3 {
                s.send(NOW + SEC + i, pay("keep me"));
            }
            let mut unconfirmed = s.machine.unconfirmed();
            prop_assert_eq!(unconfirmed, 3);
            let mut now = NOW + 2 * SEC;
            for (input, advance) in steps {
                now += advance * SEC;
                let proof = s.machine.expiry_proven_at().unwrap();
                let actions = match input {
                    Input::Connected => s.machine.connected(now),
                    Input::Hello => s.machine.frame(GatewayFrame::Hello { gateway: gateway(), protocol_version: PROTOCOL_VERSION }, now),
                    Input::OpenOk(id) => s.machine.frame(GatewayFrame::OpenResult(Ok(OpenOk { client_id: id, next_inbound_seq: 0, opened_seq: 0 })), now),
                    Input::OpenErr(e) => s.machine.frame(GatewayFrame::OpenResult(Err(e)), now),
                    Input::MessageError(seq, error) => s.machine.frame(GatewayFrame::MessageError { seq, error }, now),
                    Input::Junk => s.machine.frame(GatewayFrame::Messages { messages: vec![], certificate: vec![1], tree: vec![2] }, now),
                    Input::Lost => s.machine.connection_lost(Failure::Transport("x".into()), now),
                    Input::Tick => s.machine.tick(now),
                };
                let lost = actions.iter().any(|a| matches!(a, Action::Emit(Event::SessionLost { .. })));
                for a in &actions {
                    prop_assert!(!matches!(a, Action::Emit(Event::MessageRejected { .. } | Event::OpenRejected { .. } | Event::Closed(_))), "{:?}", a);
                    prop_assert!(!matches!(a, Action::Close { next: Next::Stop, .. }), "{:?}", a);
                }
                if lost {
                    prop_assert!(now >= proof, "gave up at {} before the proof {}", now, proof);
                    return Ok(());
                }
                // Keep-alives may be added; nothing leaves without a certified confirmation.
                prop_assert!(s.machine.unconfirmed() >= unconfirmed);
                unconfirmed = s.machine.unconfirmed();
                prop_assert_eq!(s.machine.client_id(), Some(CLIENT));
                prop_assert!(!s.machine.is_stopped());
            }
        }
    }
}
