//! An in-process fake of gateway + canister for the client's tests: real WebSockets on a
//! port-0 listener, real Ed25519 checks of the client's signatures, real certificates signed
//! by a test BLS root key (`ic_ws_protocol::test_utils`). Tests script it: tamper with the
//! next frames, refuse opens, drop inbound messages, kick connections, stop listening.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use candid::Principal;
use futures_util::{SinkExt, StreamExt};
use ic_ws_protocol::test_utils::{cbor_self_describing, TestOutbox, TestRootKey};
use ic_ws_protocol::verify::prune_tree_for_client;
use ic_ws_protocol::{
    ClientFrame, ClientId, ClientMessage, CloseReason, GatewayFrame, MessageKind, OpenOk,
    OutboundBody, OutboundContent, OutboundMessage, WsError,
};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A `Messages` frame on its way to the client, open to tampering.
pub struct Frame {
    pub messages: Vec<OutboundMessage>,
    pub certificate: Vec<u8>,
    pub tree: Vec<u8>,
}

pub type Tamper = Box<dyn FnOnce(&mut Frame, &Canister) + Send>;

pub struct FakeSession {
    pub key: Vec<u8>,
    pub next_inbound: u64,
    pub outbound: Vec<OutboundMessage>,
    pub first_available: u64,
    pub last_ack: u64,
    pub app_payloads: Vec<Vec<u8>>,
    pub keepalives: u64,
    pub acks_seen: Vec<u64>,
    pub opens: u64,
    /// Closed (a certified `Closed` or `OpenRejected` is its last message).
    pub closed: bool,
}

impl FakeSession {
    fn new(key: Vec<u8>) -> Self {
        FakeSession {
            key,
            next_inbound: 0,
            outbound: Vec::new(),
            first_available: 0,
            last_ack: 0,
            app_payloads: Vec::new(),
            keepalives: 0,
            acks_seen: Vec::new(),
            opens: 0,
            closed: false,
        }
    }
}

/// What one gateway does wrong (the canister behind it is honest).
#[derive(Default, Clone)]
pub struct Knobs {
    /// Replace the result of every open (new or resume) by this error, whatever the canister
    /// answered; deliver nothing of that session on this connection.
    pub forge_open_error: Option<WsError>,
    /// After relaying a client message (accepted by the canister), also send
    /// `MessageError { seq, this }`.
    pub forge_message_error: Option<WsError>,
    /// Send nothing after `Hello` (withhold every outcome).
    pub withhold: bool,
}

/// The canister side: sessions, certified outbox, behaviour switches.
pub struct Canister {
    pub id: Principal,
    pub root: TestRootKey,
    pub outbox: TestOutbox,
    pub sessions: BTreeMap<ClientId, FakeSession>,
    next_id: u64,
    /// Echo every app message back to its sender.
    pub echo: bool,
    /// False: client messages are silently dropped (as if the relay lost them).
    pub accept_inbound: bool,
    /// Refuse every open with this error.
    pub refuse_open: Option<WsError>,
    /// Certify `Opened` with another key than the client's.
    pub lie_opened_key: bool,
    /// Protocol version announced in Hello.
    pub protocol_version: u32,
    /// Deliver certified messages before the OpenResult (a legal race at real gateways).
    pub messages_before_open_result: bool,
    /// Drop this many connections right after accepting their open (nothing is sent back).
    pub drop_after_open: u32,
    /// Protocol v2: `on_open` refuses new sessions with this reason (certified
    /// `OpenRejected` at seq 0 of a closed session; `ws_open` answers `Err(OpenRejected)`).
    pub reject_open: Option<String>,
    /// Close the session (app close) when its next resume arrives, before handling it: the
    /// resume gets `Err(Closed)` and the re-queued messages ending with the certified `Closed`.
    pub close_on_next_resume: bool,
    /// Certified in `Opened`.
    pub max_inbound_payload_bytes: u64,
    /// Certified in `Opened`.
    pub idle_timeout_ns: u64,
    /// Opens seen (accepted or not), for tests that count attempts.
    pub open_attempts: u64,
    changed: watch::Sender<u64>,
}

impl Canister {
    /// Queues an outbound message for `client` (certified at once).
    pub fn push(&mut self, client: ClientId, body: OutboundBody) -> u64 {
        let s = self.sessions.get_mut(&client).unwrap();
        let seq = s.outbound.len() as u64;
        let content = OutboundContent {
            timestamp_ns: now_ns(),
            body,
        };
        s.outbound.push(self.outbox.push(client, seq, &content));
        self.changed.send_modify(|v| *v += 1);
        seq
    }

    pub fn push_app(&mut self, client: ClientId, payload: Vec<u8>) -> u64 {
        self.push(
            client,
            OutboundBody::App {
                topic: None,
                payload,
            },
        )
    }

    /// A correctly certified frame for `client` holding `seqs` (for tampering tests that
    /// need another client's or an old message).
    pub fn frame_for(&self, client: ClientId, seqs: &[u64], time_ns: u64) -> Frame {
        let s = &self.sessions[&client];
        let messages = seqs
            .iter()
            .map(|&q| s.outbound[q as usize].clone())
            .collect();
        self.certify(client, messages, time_ns)
    }

    fn certify(&self, client: ClientId, messages: Vec<OutboundMessage>, time_ns: u64) -> Frame {
        let tree = self.outbox.tree();
        let seqs: Vec<u64> = messages.iter().map(|m: &OutboundMessage| m.seq).collect();
        let pruned = prune_tree_for_client(&tree, client, &seqs);
        Frame {
            messages,
            certificate: self.root.certificate(&self.id, &tree.digest(), time_ns),
            tree: cbor_self_describing(&pruned),
        }
    }
}

pub type Shared = Arc<Mutex<Canister>>;

/// A fake gateway in front of a (possibly shared) fake canister.
pub struct FakeGateway {
    pub url: String,
    pub canister: Shared,
    pub tamper: Arc<Mutex<VecDeque<Tamper>>>,
    pub knobs: Arc<Mutex<Knobs>>,
    kick: broadcast::Sender<()>,
    accept: tokio::task::JoinHandle<()>,
}

pub fn new_canister(root_seed: u8) -> (Shared, watch::Receiver<u64>) {
    let (changed, rx) = watch::channel(0);
    let canister = Canister {
        id: Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 1]),
        root: TestRootKey::from_seed(root_seed),
        outbox: TestOutbox::default(),
        sessions: BTreeMap::new(),
        next_id: 1,
        echo: true,
        accept_inbound: true,
        refuse_open: None,
        lie_opened_key: false,
        protocol_version: ic_ws_protocol::PROTOCOL_VERSION,
        messages_before_open_result: false,
        drop_after_open: 0,
        reject_open: None,
        close_on_next_resume: false,
        max_inbound_payload_bytes: 64 * 1024,
        idle_timeout_ns: 120_000_000_000,
        open_attempts: 0,
        changed,
    };
    (Arc::new(Mutex::new(canister)), rx)
}

impl FakeGateway {
    pub async fn start() -> Self {
        let (canister, changed) = new_canister(7);
        Self::start_with(canister, changed).await
    }

    /// Another gateway in front of the same canister.
    pub async fn start_with(canister: Shared, changed: watch::Receiver<u64>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let tamper: Arc<Mutex<VecDeque<Tamper>>> = Arc::default();
        let knobs: Arc<Mutex<Knobs>> = Arc::default();
        let (kick, _) = broadcast::channel(4);
        let principal = Principal::from_slice(&[9, 9, listener.local_addr().unwrap().port() as u8]);
        let accept = {
            let canister = canister.clone();
            let tamper = tamper.clone();
            let knobs = knobs.clone();
            let kick = kick.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let conn = Conn {
                        canister: canister.clone(),
                        tamper: tamper.clone(),
                        knobs: knobs.clone(),
                        changed: changed.clone(),
                        kick: kick.subscribe(),
                        gateway: principal,
                    };
                    tokio::spawn(async move {
                        if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                            conn.run(ws).await;
                        }
                    });
                }
            })
        };
        FakeGateway {
            url,
            canister,
            tamper,
            knobs,
            kick,
            accept,
        }
    }

    /// Another gateway (own principal and port) in front of the same canister.
    pub async fn start_shared(other: &FakeGateway) -> Self {
        let rx = other.canister.lock().unwrap().changed.subscribe();
        Self::start_with(other.canister.clone(), rx).await
    }

    pub fn root_key_der(&self) -> Vec<u8> {
        self.canister.lock().unwrap().root.public_key_der()
    }

    pub fn canister_id(&self) -> Principal {
        self.canister.lock().unwrap().id
    }

    /// Tampers with the next `Messages` frame sent to any client.
    pub fn tamper_next(&self, f: impl FnOnce(&mut Frame, &Canister) + Send + 'static) {
        self.tamper.lock().unwrap().push_back(Box::new(f));
    }

    /// Drops every open connection abruptly.
    pub fn kick_all(&self) {
        let _ = self.kick.send(());
    }

    /// Stops accepting connections (and drops the open ones).
    pub fn shut_down(&self) {
        self.accept.abort();
        self.kick_all();
    }

    /// Makes this gateway misbehave.
    pub fn knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut self.knobs.lock().unwrap())
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Canister) -> R) -> R {
        f(&mut self.canister.lock().unwrap())
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.shut_down();
    }
}

struct Conn {
    canister: Shared,
    tamper: Arc<Mutex<VecDeque<Tamper>>>,
    knobs: Arc<Mutex<Knobs>>,
    changed: watch::Receiver<u64>,
    kick: broadcast::Receiver<()>,
    gateway: Principal,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

impl Conn {
    async fn run(mut self, ws: Ws) {
        let (mut sink, mut stream) = ws.split();
        let version = self.canister.lock().unwrap().protocol_version;
        let hello = GatewayFrame::Hello {
            gateway: self.gateway,
            protocol_version: version,
        };
        if sink.send(encode(&hello)).await.is_err() {
            return;
        }
        let mut client: Option<ClientId> = None;
        let mut cursor = 0u64;
        loop {
            let mut replies = Vec::new();
            tokio::select! {
                _ = self.kick.recv() => return,
                changed = self.changed.changed() => if changed.is_err() { return },
                msg = stream.next() => {
                    let Some(Ok(WsMessage::Binary(bytes))) = msg else { return };
                    if self.knobs.lock().unwrap().withhold {
                        continue;
                    }
                    let Ok(frame) = ic_ws_protocol::decode::<ClientFrame>(&bytes) else { return };
                    let is_open = matches!(frame, ClientFrame::Open { .. });
                    self.handle(frame, &mut client, &mut cursor, &mut replies);
                    let mut c = self.canister.lock().unwrap();
                    if is_open && c.drop_after_open > 0 {
                        c.drop_after_open -= 1;
                        return;
                    }
                }
            }
            let early = self.canister.lock().unwrap().messages_before_open_result;
            let messages = self.flush(client, &mut cursor);
            let mut out = replies;
            if early {
                out.splice(0..0, messages);
            } else {
                out.extend(messages);
            }
            for frame in out {
                if sink.send(encode(&frame)).await.is_err() {
                    return;
                }
            }
        }
    }

    fn handle(
        &self,
        frame: ClientFrame,
        client: &mut Option<ClientId>,
        cursor: &mut u64,
        replies: &mut Vec<GatewayFrame>,
    ) {
        let mut guard = self.canister.lock().unwrap();
        let c = &mut *guard;
        match frame {
            ClientFrame::Open {
                canister_id,
                request,
            } => {
                let request_resume = request.resume;
                let result = (|| {
                    if canister_id != c.id {
                        return Err(WsError::InvalidArgument("unknown canister".into()));
                    }
                    if request.gateway != self.gateway {
                        return Err(WsError::GatewayMismatch);
                    }
                    ic_ws_protocol::signing::verify_open(&c.id, &request)
                        .map_err(|_| WsError::InvalidSignature)?;
                    c.open_attempts += 1;
                    if let Some(e) = &c.refuse_open {
                        return Err(e.clone());
                    }
                    if let (Some(reason), None) = (&c.reject_open, &request.resume) {
                        // Protocol v2: the refusal is certified as seq 0 of a closed session.
                        let (reason, id) = (reason.clone(), c.next_id);
                        c.next_id += 1;
                        let mut s = FakeSession::new(request.client_key.clone());
                        s.closed = true;
                        c.sessions.insert(id, s);
                        c.push(
                            id,
                            OutboundBody::OpenRejected {
                                client_key: request.client_key.clone(),
                                open_timestamp_ns: request.timestamp_ns,
                                error: WsError::Rejected(reason.clone()),
                            },
                        );
                        return Err(WsError::OpenRejected {
                            client_id: id,
                            reason,
                        });
                    }
                    let opened_key = if c.lie_opened_key {
                        vec![7u8; 32]
                    } else {
                        request.client_key.clone()
                    };
                    let (id, resumed, from) = match request.resume {
                        None => {
                            let id = c.next_id;
                            c.next_id += 1;
                            c.sessions
                                .insert(id, FakeSession::new(request.client_key.clone()));
                            (id, false, 0)
                        }
                        Some(r) => {
                            if c.close_on_next_resume && c.sessions.contains_key(&r.client_id) {
                                c.close_on_next_resume = false;
                                c.push(
                                    r.client_id,
                                    OutboundBody::Closed {
                                        reason: CloseReason::AppClosed {
                                            code: 4000,
                                            reason: "closed while away".into(),
                                        },
                                    },
                                );
                                c.sessions.get_mut(&r.client_id).unwrap().closed = true;
                            }
                            let s = c
                                .sessions
                                .get(&r.client_id)
                                .ok_or(WsError::UnknownClient(r.client_id))?;
                            if s.key != request.client_key
                                || r.next_outbound_seq > s.outbound.len() as u64
                            {
                                return Err(WsError::InvalidResume);
                            }
                            if r.next_outbound_seq < s.first_available {
                                return Err(WsError::ResumeUnavailable {
                                    first_available: s.first_available,
                                });
                            }
                            if s.closed {
                                // Protocol v2: the retained messages (ending with the
                                // certified Closed) go to this gateway; the answer is Closed.
                                return Err(WsError::Closed);
                            }
                            (r.client_id, true, r.next_outbound_seq)
                        }
                    };
                    let s = c.sessions.get_mut(&id).unwrap();
                    s.opens += 1;
                    let next_inbound_seq = s.next_inbound;
                    let opened_seq = c.push(
                        id,
                        OutboundBody::Opened {
                            client_key: opened_key,
                            open_timestamp_ns: request.timestamp_ns,
                            next_inbound_seq,
                            resumed,
                            max_inbound_payload_bytes: c.max_inbound_payload_bytes,
                            idle_timeout_ns: c.idle_timeout_ns,
                            principal: None,
                        },
                    );
                    Ok((
                        OpenOk {
                            client_id: id,
                            next_inbound_seq,
                            opened_seq,
                        },
                        from,
                    ))
                })();
                let forged = self.knobs.lock().unwrap().forge_open_error.clone();
                match (result, forged) {
                    (_, Some(e)) => replies.push(GatewayFrame::OpenResult(Err(e))),
                    (Ok((ok, from)), None) => {
                        *client = Some(ok.client_id);
                        *cursor = from;
                        replies.push(GatewayFrame::OpenResult(Ok(ok)));
                    }
                    (Err(e), None) => {
                        // As the v2 gateway: attach to the session that holds the certified
                        // outcome (OpenRejected, or the Closed after a resume's Err(Closed)).
                        match (&e, &request_resume) {
                            (WsError::OpenRejected { client_id, .. }, None) => {
                                *client = Some(*client_id);
                                *cursor = 0;
                            }
                            (WsError::Closed, Some(r)) => {
                                *client = Some(r.client_id);
                                *cursor = r.next_outbound_seq;
                            }
                            _ => {}
                        }
                        replies.push(GatewayFrame::OpenResult(Err(e)));
                    }
                }
            }
            ClientFrame::Message(m) => {
                if Some(m.client_id) != *client {
                    replies.push(GatewayFrame::MessageError {
                        seq: m.seq,
                        error: WsError::WrongGateway,
                    });
                    return;
                }
                if let Err(error) = accept(c, &m) {
                    replies.push(GatewayFrame::MessageError { seq: m.seq, error });
                } else if let Some(error) = self.knobs.lock().unwrap().forge_message_error.clone() {
                    if matches!(m.kind, MessageKind::App(_)) {
                        replies.push(GatewayFrame::MessageError { seq: m.seq, error });
                    }
                }
            }
        }
    }

    fn flush(&self, client: Option<ClientId>, cursor: &mut u64) -> Option<GatewayFrame> {
        let client = client?;
        let c = self.canister.lock().unwrap();
        let s = c.sessions.get(&client)?;
        if *cursor >= s.outbound.len() as u64 {
            return None;
        }
        let messages = s.outbound[*cursor as usize..].to_vec();
        *cursor = s.outbound.len() as u64;
        let mut frame = c.certify(client, messages, now_ns());
        if let Some(t) = self.tamper.lock().unwrap().pop_front() {
            t(&mut frame, &c);
        }
        Some(GatewayFrame::Messages {
            messages: frame.messages,
            certificate: frame.certificate,
            tree: frame.tree,
        })
    }
}

/// The canister's checks of a client message (docs/protocol.md), in order.
fn accept(c: &mut Canister, m: &ClientMessage) -> Result<(), WsError> {
    let id = c.id;
    let s = c
        .sessions
        .get_mut(&m.client_id)
        .ok_or(WsError::UnknownClient(m.client_id))?;
    ic_ws_protocol::signing::verify_message(&id, &s.key, m)
        .map_err(|_| WsError::InvalidSignature)?;
    if !c.accept_inbound {
        return Ok(());
    }
    if m.seq < s.next_inbound {
        return Ok(()); // duplicate: no-op
    }
    if s.closed {
        return Err(WsError::Closed);
    }
    if m.seq > s.next_inbound {
        return Err(WsError::OutOfSequence {
            expected: s.next_inbound,
            got: m.seq,
        });
    }
    s.next_inbound += 1;
    s.last_ack = s.last_ack.max(m.ack);
    s.acks_seen.push(m.ack);
    match &m.kind {
        MessageKind::App(p) => {
            s.app_payloads.push(p.clone());
            if c.echo {
                c.push_app(m.client_id, p.clone());
            }
        }
        MessageKind::KeepAlive => s.keepalives += 1,
        MessageKind::Close { code, reason } => {
            c.push(
                m.client_id,
                OutboundBody::Closed {
                    reason: CloseReason::ClientClosed {
                        code: *code,
                        reason: reason.clone(),
                    },
                },
            );
        }
    }
    Ok(())
}

fn encode(frame: &GatewayFrame) -> WsMessage {
    WsMessage::Binary(ic_ws_protocol::encode(frame).unwrap().into())
}
