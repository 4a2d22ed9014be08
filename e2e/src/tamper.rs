//! A test-only adversarial gateway: a WebSocket proxy between the real gateway and its
//! clients that tampers with the certified `Messages` frames it relays. It models everything
//! an untrusted gateway can do to outbound traffic: alter a payload, alter a certificate,
//! reorder, drop, duplicate, replay an old frame, deliver another client's frame, and replay
//! an old frame later (a stale certificate). Client -> gateway frames pass unchanged.
//!
//! Attacks are armed per client id and fire once, on the next `Messages` frame for that
//! client; [`TamperProxy::fired`] tells the test what was done (which sequence numbers), so it
//! can assert the exact check the client reports. Every frame the real gateway delivered is
//! recorded (untampered) for replays.
//!
//! Outcome attacks (protocol version 2, [`OutcomeAttack`]) lie about what the canister decided
//! instead: they forge the uncertified answers (`MessageError`, `OpenResult`) or withhold
//! them. They are armed for the next connection the proxy accepts ([`TamperProxy::arm_next`]),
//! since a client's id is not known before its open, and last for that connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::{SinkExt, StreamExt};
use ic_ws_protocol::{ClientId, GatewayFrame};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What the proxy does to the next `Messages` frame of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Flip one byte of the last message's content.
    AlterPayload,
    /// Flip one bit of the certificate's BLS signature.
    AlterCertificate,
    /// Hold the frame back and deliver it after the next one.
    Reorder,
    /// Never deliver the frame.
    Drop,
    /// Deliver the frame twice.
    Duplicate,
    /// Deliver the frame, then the client's first frame again (genuinely certified, old).
    ReplayOld,
    /// Replace the frame by the latest frame delivered to another client.
    DeliverOther,
}

/// What the proxy does to the outcomes one connection sees (armed for the next connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeAttack {
    /// Relay every client message, then inject `MessageError { seq, Rejected(text) }` for it
    /// (the canister accepts it: the refusal is a lie).
    ForgeMessageError(String),
    /// Answer the open with `Err(Rejected(text))` without relaying it.
    ForgeOpenRefusal(String),
    /// Answer the open with `Err(OpenRejected { client_id, reason })` without relaying it and
    /// drop every later frame: a "certified" refusal that never comes.
    ForgeOpenRejected(String),
    /// Swallow the open: no `OpenResult` ever comes.
    DropOpenResult,
    /// Deliver the `OpenResult` but never a `Messages` frame.
    WithholdFrames,
    /// Issue 10: relay the open with its identity proof replaced by the one of the latest
    /// open another client (another session key) sent through the proxy: a gateway moving a
    /// user's proof to another session.
    SwapIdentity,
}

/// An attack that was carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The victim.
    pub client_id: ClientId,
    /// What was done.
    pub attack: Attack,
    /// First sequence number of the frame the attack hit.
    pub frame_first_seq: u64,
    /// Last sequence number of that frame.
    pub frame_last_seq: u64,
    /// Reorder: first seq of the frame delivered ahead of it. ReplayOld: first seq of the
    /// replayed frame. DeliverOther: first seq of the other client's frame.
    pub other_seq: Option<u64>,
    /// DeliverOther: the client whose frame was delivered.
    pub other_client: Option<ClientId>,
}

#[derive(Clone)]
struct Recorded {
    client_id: ClientId,
    bytes: Vec<u8>,
    first_seq: u64,
}

#[derive(Default)]
struct State {
    armed: Vec<(ClientId, Attack)>,
    /// Outcome attacks for the next connections, in order.
    next_conn: std::collections::VecDeque<OutcomeAttack>,
    /// Outcome attacks carried out: (attack, client id of the session, if known).
    outcomes_fired: Vec<(OutcomeAttack, Option<ClientId>)>,
    /// Every `Open` frame a client sent (its bytes, as signed: for replays).
    client_opens: Vec<Vec<u8>>,
    frames: Vec<Recorded>,
    fired: Vec<Fired>,
    /// Latest connection of each client: where injected frames go.
    injectors: HashMap<ClientId, mpsc::UnboundedSender<Vec<u8>>>,
    connections: u64,
}

/// The proxy. Dropping it stops accepting; open connections end with their peers.
pub struct TamperProxy {
    url: String,
    state: Arc<Mutex<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TamperProxy {
    /// Listens on a free local port and relays every connection to `upstream` (a gateway's
    /// `ws://` URL).
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("ws://{}", listener.local_addr()?);
        let state: Arc<Mutex<State>> = Arc::default();
        let upstream = upstream.to_string();
        let accept = {
            let state = state.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let state = state.clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
                            return;
                        };
                        let Ok((gateway, _)) =
                            tokio_tungstenite::connect_async(upstream.as_str()).await
                        else {
                            return;
                        };
                        let outcome = {
                            let mut s = lock(&state);
                            s.connections += 1;
                            s.next_conn.pop_front()
                        };
                        relay(state, client, gateway, outcome).await;
                    });
                }
            })
        };
        Ok(TamperProxy { url, state, accept })
    }

    /// `ws://127.0.0.1:<port>`: give this to clients instead of the gateway's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Arms `attack` for the next `Messages` frame of `client_id`.
    pub fn arm(&self, client_id: ClientId, attack: Attack) {
        lock(&self.state).armed.push((client_id, attack));
    }

    /// Arms `attack` for the next connection the proxy accepts (for all of that connection).
    pub fn arm_next(&self, attack: OutcomeAttack) {
        lock(&self.state).next_conn.push_back(attack);
    }

    /// Outcome attacks carried out so far (each once per forged or withheld frame), with the
    /// client id the real gateway named.
    pub fn outcomes_fired(&self) -> Vec<(OutcomeAttack, Option<ClientId>)> {
        lock(&self.state).outcomes_fired.clone()
    }

    /// The `Open` frames clients sent through the proxy so far (encoded `ClientFrame`s), oldest
    /// first: what a gateway that keeps signed opens could replay.
    pub fn client_opens(&self) -> Vec<Vec<u8>> {
        lock(&self.state).client_opens.clone()
    }

    /// True while an armed attack for `client_id` has not fired.
    pub fn is_armed(&self, client_id: ClientId) -> bool {
        lock(&self.state).armed.iter().any(|(c, _)| *c == client_id)
    }

    /// The attacks carried out so far.
    pub fn fired(&self) -> Vec<Fired> {
        lock(&self.state).fired.clone()
    }

    /// `Messages` frames the real gateway delivered to `client_id` so far.
    pub fn frames_for(&self, client_id: ClientId) -> usize {
        lock(&self.state)
            .frames
            .iter()
            .filter(|f| f.client_id == client_id)
            .count()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        lock(&self.state).connections
    }

    /// Sends `client_id`'s first recorded frame (genuine, old) into its current connection
    /// now. Returns the frame's first sequence number, or `None` if there is no such frame or
    /// connection.
    pub fn replay_first_frame(&self, client_id: ClientId) -> Option<u64> {
        let state = lock(&self.state);
        let frame = state.frames.iter().find(|f| f.client_id == client_id)?;
        state
            .injectors
            .get(&client_id)?
            .send(frame.bytes.clone())
            .ok()?;
        Some(frame.first_seq)
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

async fn relay<C, G>(
    state: Arc<Mutex<State>>,
    client: Ws<C>,
    gateway: Ws<G>,
    outcome: Option<OutcomeAttack>,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    G: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_client, mut from_client) = client.split();
    let (mut to_gateway, mut from_gateway) = gateway.split();
    let (inject_tx, mut inject_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut conn = Conn {
        state,
        client_id: None,
        held: None,
        inject: inject_tx,
        outcome,
        mute: false,
        swallow: false,
        replace: None,
    };
    loop {
        tokio::select! {
            m = from_client.next() => match m {
                Some(Ok(m)) => {
                    let close = m.is_close();
                    let forged = conn.on_client_frame(&m);
                    if std::mem::take(&mut conn.swallow) {
                        // An open the attack answers itself: the canister never sees it.
                    } else if let Some(bytes) = conn.replace.take() {
                        if to_gateway.send(WsMessage::Binary(bytes.into())).await.is_err() {
                            return;
                        }
                    } else if to_gateway.send(m).await.is_err() || close {
                        return;
                    }
                    if let Some(bytes) = forged {
                        if to_client.send(WsMessage::Binary(bytes.into())).await.is_err() {
                            return;
                        }
                    }
                }
                _ => {
                    let _ = to_gateway.close().await;
                    return;
                }
            },
            m = from_gateway.next() => match m {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    for out in conn.on_gateway_frame(bytes.to_vec()) {
                        if to_client.send(WsMessage::Binary(out.into())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(m)) => {
                    let close = m.is_close();
                    if to_client.send(m).await.is_err() || close {
                        return;
                    }
                }
                _ => {
                    let _ = to_client.close().await;
                    return;
                }
            },
            Some(bytes) = inject_rx.recv() => {
                if to_client.send(WsMessage::Binary(bytes.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Conn {
    state: Arc<Mutex<State>>,
    client_id: Option<ClientId>,
    /// A frame held back by `Reorder`.
    held: Option<Recorded>,
    inject: mpsc::UnboundedSender<Vec<u8>>,
    /// The outcome attack on this connection.
    outcome: Option<OutcomeAttack>,
    /// Deliver no more gateway frames (after a forged `OpenRejected`).
    mute: bool,
    /// Do not relay the client frame just examined (an open the attack answers itself).
    swallow: bool,
    /// Relay these bytes instead of the client frame just examined (`SwapIdentity`).
    replace: Option<Vec<u8>>,
}

impl Conn {
    /// A forged frame to send the client after relaying its frame `m`, if the connection's
    /// outcome attack calls for one.
    fn on_client_frame(&mut self, m: &WsMessage) -> Option<Vec<u8>> {
        let WsMessage::Binary(bytes) = m else {
            return None;
        };
        let frame: ic_ws_protocol::ClientFrame = ic_ws_protocol::decode(bytes).ok()?;
        if let ic_ws_protocol::ClientFrame::Open {
            canister_id,
            request,
        } = &frame
        {
            if self.outcome == Some(OutcomeAttack::SwapIdentity) {
                let stolen = {
                    let s = lock(&self.state);
                    s.client_opens.iter().rev().find_map(|b| {
                        match ic_ws_protocol::decode::<ic_ws_protocol::ClientFrame>(b).ok()? {
                            ic_ws_protocol::ClientFrame::Open { request: other, .. }
                                if other.client_key != request.client_key =>
                            {
                                other.identity
                            }
                            _ => None,
                        }
                    })
                };
                if let Some(proof) = stolen {
                    let mut swapped = request.clone();
                    swapped.identity = Some(proof);
                    self.replace = ic_ws_protocol::encode(&ic_ws_protocol::ClientFrame::Open {
                        canister_id: *canister_id,
                        request: swapped,
                    })
                    .ok();
                    lock(&self.state)
                        .outcomes_fired
                        .push((OutcomeAttack::SwapIdentity, None));
                    self.outcome = None;
                }
            }
            lock(&self.state).client_opens.push(bytes.to_vec());
            // The open-outcome attacks answer the open themselves and never relay it: a
            // relayed open would create a real session whose `on_open` keeps what it took
            // (the chat name) until it expires, and the client's retry elsewhere would then
            // be refused for that reason, certified (docs/protocol.md, threat model: a hidden
            // open success). The client's side of the attack is the same.
            let forged = match &self.outcome {
                Some(OutcomeAttack::ForgeOpenRefusal(text)) => Some(GatewayFrame::OpenResult(Err(
                    ic_ws_protocol::WsError::Rejected(text.clone()),
                ))),
                Some(OutcomeAttack::ForgeOpenRejected(text)) => {
                    self.mute = true;
                    Some(GatewayFrame::OpenResult(Err(
                        ic_ws_protocol::WsError::OpenRejected {
                            client_id: u64::from(u32::MAX),
                            reason: text.clone(),
                        },
                    )))
                }
                Some(OutcomeAttack::DropOpenResult) => None,
                _ => return None,
            };
            self.swallow = true;
            let attack = self.outcome.clone()?;
            lock(&self.state).outcomes_fired.push((attack, None));
            return forged.map(|f| reencode(&f));
        }
        let Some(OutcomeAttack::ForgeMessageError(text)) = &self.outcome else {
            return None;
        };
        let ic_ws_protocol::ClientFrame::Message(msg) = frame else {
            return None;
        };
        let frame = GatewayFrame::MessageError {
            seq: msg.seq,
            error: ic_ws_protocol::WsError::Rejected(text.clone()),
        };
        let attack = OutcomeAttack::ForgeMessageError(text.clone());
        lock(&self.state)
            .outcomes_fired
            .push((attack, Some(msg.client_id)));
        Some(reencode(&frame))
    }

    /// The outcome attack applied to one gateway frame: `None` to deliver it as is.
    fn outcome_frame(&mut self, frame: &GatewayFrame) -> Option<Vec<Vec<u8>>> {
        if self.mute {
            return Some(vec![]);
        }
        let attack = self.outcome.clone()?;
        let (out, client) = match (&attack, frame) {
            (OutcomeAttack::ForgeOpenRefusal(text), GatewayFrame::OpenResult(Ok(ok))) => {
                let forged =
                    GatewayFrame::OpenResult(Err(ic_ws_protocol::WsError::Rejected(text.clone())));
                (vec![reencode(&forged)], Some(ok.client_id))
            }
            (OutcomeAttack::ForgeOpenRejected(text), GatewayFrame::OpenResult(Ok(ok))) => {
                self.mute = true;
                let forged = GatewayFrame::OpenResult(Err(ic_ws_protocol::WsError::OpenRejected {
                    client_id: ok.client_id,
                    reason: text.clone(),
                }));
                (vec![reencode(&forged)], Some(ok.client_id))
            }
            (OutcomeAttack::DropOpenResult, GatewayFrame::OpenResult(r)) => {
                (vec![], r.as_ref().ok().map(|ok| ok.client_id))
            }
            (OutcomeAttack::WithholdFrames, GatewayFrame::Messages { messages, .. }) => {
                (vec![], messages.first().map(|m| m.client_id))
            }
            _ => return None,
        };
        lock(&self.state).outcomes_fired.push((attack, client));
        Some(out)
    }

    /// What the client gets for one frame from the gateway.
    fn on_gateway_frame(&mut self, bytes: Vec<u8>) -> Vec<Vec<u8>> {
        let frame: GatewayFrame = match ic_ws_protocol::decode(&bytes) {
            Ok(f) => f,
            Err(_) => return vec![bytes],
        };
        if let Some(out) = self.outcome_frame(&frame) {
            return out;
        }
        let (first_seq, last_seq, client_id) = match &frame {
            GatewayFrame::OpenResult(Ok(ok)) => {
                self.client_id = Some(ok.client_id);
                lock(&self.state)
                    .injectors
                    .insert(ok.client_id, self.inject.clone());
                return vec![bytes];
            }
            GatewayFrame::Messages { messages, .. } => match (messages.first(), messages.last()) {
                (Some(f), Some(l)) => (f.seq, l.seq, f.client_id),
                _ => return vec![bytes],
            },
            _ => return vec![bytes],
        };
        let this = Recorded {
            client_id,
            bytes: bytes.clone(),
            first_seq,
        };
        let mut state = lock(&self.state);
        state.frames.push(this.clone());
        if let Some(held) = self.held.take() {
            return vec![bytes, held.bytes];
        }
        let Some(pos) = state.armed.iter().position(|(c, _)| *c == client_id) else {
            return vec![bytes];
        };
        let (_, attack) = state.armed.remove(pos);
        let mut fired = Fired {
            client_id,
            attack,
            frame_first_seq: first_seq,
            frame_last_seq: last_seq,
            other_seq: None,
            other_client: None,
        };
        let out = match attack {
            Attack::AlterPayload => vec![alter_payload(frame)],
            Attack::AlterCertificate => vec![alter_certificate(frame)],
            Attack::Reorder => {
                self.held = Some(this);
                vec![]
            }
            Attack::Drop => vec![],
            Attack::Duplicate => vec![bytes.clone(), bytes],
            Attack::ReplayOld => match state.frames.iter().find(|f| f.client_id == client_id) {
                Some(old) if old.first_seq < first_seq => {
                    fired.other_seq = Some(old.first_seq);
                    vec![bytes, old.bytes.clone()]
                }
                _ => {
                    // Nothing older yet: try again on the next frame.
                    state.armed.insert(pos, (client_id, attack));
                    return vec![bytes];
                }
            },
            Attack::DeliverOther => {
                match state.frames.iter().rev().find(|f| f.client_id != client_id) {
                    Some(other) => {
                        fired.other_seq = Some(other.first_seq);
                        fired.other_client = Some(other.client_id);
                        vec![other.bytes.clone()]
                    }
                    None => {
                        state.armed.insert(pos, (client_id, attack));
                        return vec![bytes];
                    }
                }
            }
        };
        if attack == Attack::Reorder {
            // Completed when the next frame arrives; record what will be delivered ahead.
            fired.other_seq = Some(last_seq + 1);
        }
        state.fired.push(fired);
        out
    }
}

fn reencode(frame: &GatewayFrame) -> Vec<u8> {
    ic_ws_protocol::encode(frame).unwrap_or_default()
}

fn alter_payload(mut frame: GatewayFrame) -> Vec<u8> {
    if let GatewayFrame::Messages { messages, .. } = &mut frame {
        if let Some(m) = messages.last_mut() {
            let i = m.content.len() / 2;
            if let Some(b) = m.content.get_mut(i) {
                *b ^= 0x01;
            }
        }
    }
    reencode(&frame)
}

fn alter_certificate(mut frame: GatewayFrame) -> Vec<u8> {
    if let GatewayFrame::Messages { certificate, .. } = &mut frame {
        if let Ok(serde_cbor::Value::Map(mut map)) = serde_cbor::from_slice(certificate) {
            if let Some(serde_cbor::Value::Bytes(sig)) =
                map.get_mut(&serde_cbor::Value::Text("signature".into()))
            {
                if let Some(b) = sig.last_mut() {
                    *b ^= 0x01;
                }
            }
            if let Ok(bytes) = serde_cbor::to_vec(&serde_cbor::Value::Map(map)) {
                *certificate = bytes;
            }
        }
    }
    reencode(&frame)
}
