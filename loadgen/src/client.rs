//! A lean protocol client for load: connects (from a chosen loopback source address), opens a
//! signed session, sends signed messages and acknowledgements, and counts what it receives.
//! It does not verify certificates (the Rust client does; here the gateway is measured).

use crate::stats::Stats;
use crate::LoadError;
use candid::{CandidType, Deserialize, Principal};
use futures_util::{SinkExt, StreamExt};
use ic_ws_protocol::types::*;
use ic_ws_protocol::{ClientFrame, GatewayFrame, SessionKey};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The test app's inbound messages (e2e/test-app).
#[derive(CandidType, Deserialize, Clone, Debug)]
pub enum Inbound {
    /// Answered with `Outbound::Echo`.
    Echo(String),
    /// Subscribe to a topic.
    Subscribe(String),
    /// Ask to be closed.
    CloseMe,
    /// Rejected.
    Fail,
}

/// The test app's outbound messages.
#[derive(CandidType, Deserialize, Clone, Debug)]
pub enum Outbound {
    /// Reply to `Inbound::Echo`.
    Echo(String),
    /// Text.
    Text(String),
    /// Bulk bytes.
    Bytes(serde_bytes::ByteBuf),
}

/// A WebSocket to the gateway.
pub type Ws = WebSocketStream<TcpStream>;

/// Acknowledge after this many unacknowledged messages (the canister keeps 1 024).
const ACK_EVERY: u64 = 200;

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `127.10.x.y` for source number `k` (Linux routes all of 127.0.0.0/8 to loopback).
pub fn source_ip(k: usize) -> IpAddr {
    let k = k % 65_000 + 1;
    IpAddr::from([127, 10, (k >> 8) as u8, (k & 0xff) as u8])
}

/// Connects from `source` and reads `Hello`; returns the socket and the gateway's principal.
pub async fn connect(
    gateway: SocketAddr,
    source: Option<IpAddr>,
) -> Result<(Ws, Principal), LoadError> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(LoadError::io("socket"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(LoadError::io("bind"))?;
    }
    let tcp = socket
        .connect(gateway)
        .await
        .map_err(LoadError::io("connect"))?;
    let _ = tcp.set_nodelay(true);
    // Small buffers: the load generator holds up to 100k of these.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{gateway}/"), tcp, Some(config))
            .await
            .map_err(|e| LoadError::Protocol(format!("handshake: {e}")))?;
    match next_frame(&mut ws).await? {
        GatewayFrame::Hello { gateway, .. } => Ok((ws, gateway)),
        other => Err(LoadError::Protocol(format!(
            "expected Hello, got {other:?}"
        ))),
    }
}

/// The next gateway frame (pings skipped).
pub async fn next_frame(ws: &mut Ws) -> Result<GatewayFrame, LoadError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                return ic_ws_protocol::decode(&b)
                    .map_err(|e| LoadError::Protocol(format!("bad frame: {e}")))
            }
            Some(Ok(Message::Close(c))) => {
                return Err(LoadError::Protocol(format!("closed by the gateway: {c:?}")))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(LoadError::Protocol(format!("socket: {e}"))),
            None => return Err(LoadError::Protocol("connection ended".into())),
        }
    }
}

/// An open session.
pub struct Session {
    /// The socket.
    pub ws: Ws,
    key: SessionKey,
    canister: Principal,
    /// The session's id.
    pub client_id: ClientId,
    seq: u64,
    next_out: u64,
    acked: u64,
}

impl Session {
    /// Opens a new session on `ws` for `canister`.
    pub async fn open(
        mut ws: Ws,
        gateway: Principal,
        canister: Principal,
    ) -> Result<Session, LoadError> {
        let key = SessionKey::from_seed(rand::random());
        let mut request = OpenRequest {
            client_key: key.public_key(),
            gateway,
            timestamp_ns: now_ns(),
            resume: None,
            args: candid::encode_one("loadgen").unwrap_or_default(),
            signature: vec![],
            identity: None,
        };
        key.sign_open(&canister, &mut request);
        send(
            &mut ws,
            &ClientFrame::Open {
                canister_id: canister,
                request,
            },
        )
        .await?;
        let ok = match next_frame(&mut ws).await? {
            GatewayFrame::OpenResult(Ok(ok)) => ok,
            other => return Err(LoadError::Protocol(format!("open failed: {other:?}"))),
        };
        let mut s = Session {
            ws,
            key,
            canister,
            client_id: ok.client_id,
            seq: ok.next_inbound_seq,
            next_out: 0,
            acked: 0,
        };
        // Wait for the certified `Opened`.
        while s.next_out <= ok.opened_seq {
            match next_frame(&mut s.ws).await? {
                GatewayFrame::Messages { messages, .. } => {
                    if let Some(m) = messages.last() {
                        s.next_out = m.seq + 1;
                    }
                }
                other => {
                    return Err(LoadError::Protocol(format!(
                        "expected Opened, got {other:?}"
                    )))
                }
            }
        }
        Ok(s)
    }

    fn sign(&mut self, kind: MessageKind) -> ClientMessage {
        let mut m = ClientMessage {
            client_id: self.client_id,
            seq: self.seq,
            ack: self.next_out,
            kind,
            signature: vec![],
        };
        self.seq += 1;
        self.acked = self.next_out;
        self.key.sign_message(&self.canister, &mut m);
        m
    }

    /// Sends an app message.
    pub async fn send_app(&mut self, msg: &Inbound) -> Result<u64, LoadError> {
        let payload = candid::encode_one(msg).map_err(|e| LoadError::Protocol(e.to_string()))?;
        let m = self.sign(MessageKind::App(payload));
        let seq = m.seq;
        send(&mut self.ws, &ClientFrame::Message(m)).await?;
        Ok(seq)
    }

    /// Sends an app message with this payload as is (not candid-encoded).
    pub async fn send_payload(&mut self, payload: Vec<u8>) -> Result<u64, LoadError> {
        let m = self.sign(MessageKind::App(payload));
        let seq = m.seq;
        send(&mut self.ws, &ClientFrame::Message(m)).await?;
        Ok(seq)
    }

    /// Sends a keep-alive carrying the acknowledgement.
    pub async fn ack(&mut self) -> Result<(), LoadError> {
        let m = self.sign(MessageKind::KeepAlive);
        send(&mut self.ws, &ClientFrame::Message(m)).await
    }

    /// Handles one frame: counts messages, samples latency, acknowledges when due. Only the
    /// sampled messages are decoded (and, with `want_echo`, every message, to find echoes), so
    /// a receiver costs little more than reading the frame: the load generator shares the
    /// gateway's cores and must not be what a fan-out figure measures.
    pub async fn on_frame(
        &mut self,
        frame: GatewayFrame,
        stats: &Stats,
        want_echo: bool,
    ) -> Result<Vec<Outbound>, LoadError> {
        let mut out = Vec::new();
        match frame {
            GatewayFrame::Messages { messages, .. } => {
                let now = now_ns();
                let first = stats.count_deliveries(messages.len() as u64);
                for (i, m) in messages.iter().enumerate() {
                    if m.seq != self.next_out {
                        stats
                            .gaps
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.next_out = m.seq + 1;
                    let sampled = stats.is_sampled(first + i as u64);
                    if !sampled && !want_echo {
                        continue;
                    }
                    if let Ok(content) = ic_ws_protocol::decode::<OutboundContent>(&m.content) {
                        if let OutboundBody::App { payload, .. } = content.body {
                            if sampled {
                                stats.record_latency(now.saturating_sub(content.timestamp_ns));
                            }
                            if want_echo {
                                if let Ok(o) = candid::decode_one::<Outbound>(&payload) {
                                    if matches!(o, Outbound::Echo(_)) {
                                        out.push(o);
                                    }
                                }
                            }
                        }
                    }
                }
                if self.next_out - self.acked >= ACK_EVERY {
                    self.ack().await?;
                }
            }
            GatewayFrame::MessageError { seq, error } => {
                stats
                    .errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if stats.errors.load(std::sync::atomic::Ordering::Relaxed) < 5 {
                    eprintln!(
                        "message {seq} of client {} rejected: {error}",
                        self.client_id
                    );
                }
            }
            _ => {}
        }
        Ok(out)
    }

    /// Reads frames until the session ends, counting deliveries; echo round trips are timed
    /// against `sent` (send instants by echo text).
    pub async fn run_receiver(
        mut self,
        stats: Arc<Stats>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut stop = stop;
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                f = next_frame(&mut self.ws) => match f {
                    Ok(frame) => {
                        if self.on_frame(frame, &stats, false).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => {
                        stats.closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }

    /// Sends an `Echo` every `period` (first after a random phase) until `stop`, timing each
    /// echo's round trip.
    pub async fn run_echo(
        mut self,
        period: Duration,
        stats: Arc<Stats>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut stop = stop;
        let phase = Duration::from_micros(rand::random::<u64>() % period.as_micros().max(1) as u64);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        let mut pending: std::collections::HashMap<String, Instant> =
            std::collections::HashMap::new();
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
                _ = tick.tick() => {
                    n += 1;
                    let text = format!("{}-{n}", self.client_id);
                    pending.insert(text.clone(), Instant::now());
                    if self.send_app(&Inbound::Echo(text)).await.is_err() {
                        stats.closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    stats.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                f = next_frame(&mut self.ws) => match f {
                    Ok(frame) => match self.on_frame(frame, &stats, true).await {
                        Ok(echoes) => {
                            for e in echoes {
                                if let Outbound::Echo(text) = e {
                                    if let Some(at) = pending.remove(&text) {
                                        stats.record_round_trip(at.elapsed());
                                    }
                                }
                            }
                        }
                        Err(_) => return,
                    },
                    Err(_) => {
                        stats.closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }
}

/// Signs messages of a session whose socket was taken apart (the attack modes write and read
/// it from separate tasks).
pub struct Signer {
    key: SessionKey,
    canister: Principal,
    client_id: ClientId,
    seq: u64,
}

impl Session {
    /// The socket and a signer for the session's next messages.
    pub fn into_parts(self) -> (Ws, Signer) {
        (
            self.ws,
            Signer {
                key: self.key,
                canister: self.canister,
                client_id: self.client_id,
                seq: self.seq,
            },
        )
    }
}

impl Signer {
    /// The encoded frame of the session's next app message carrying `payload`, validly signed
    /// or with a junk signature.
    pub fn app_frame(&mut self, payload: Vec<u8>, valid: bool) -> Result<Vec<u8>, LoadError> {
        let mut m = ClientMessage {
            client_id: self.client_id,
            seq: self.seq,
            ack: 0,
            kind: MessageKind::App(payload),
            signature: vec![0x5a; 64],
        };
        self.seq += 1;
        if valid {
            self.key.sign_message(&self.canister, &mut m);
        }
        ic_ws_protocol::encode(&ClientFrame::Message(m))
            .map_err(|e| LoadError::Protocol(e.to_string()))
    }
}

async fn send(ws: &mut Ws, frame: &ClientFrame) -> Result<(), LoadError> {
    let bytes = ic_ws_protocol::encode(frame).map_err(|e| LoadError::Protocol(e.to_string()))?;
    ws.send(Message::Binary(bytes.into()))
        .await
        .map_err(|e| LoadError::Protocol(format!("send: {e}")))
}
