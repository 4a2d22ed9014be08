//! A hand-driven WebSocket client for tests that must misbehave on purpose: stop reading
//! (a stalled client), send malformed or forged frames. It speaks the protocol with
//! `ic-ws-protocol` directly and checks nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use candid::Principal;
use futures_util::{SinkExt, StreamExt};
use ic_ws_protocol::{
    ClientFrame, ClientMessage, GatewayFrame, MessageKind, OpenRequest, OpenResult, SessionKey,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// What arrived from the gateway.
#[derive(Debug)]
pub enum Incoming {
    /// A decoded frame.
    Frame(GatewayFrame),
    /// A close frame (code, reason).
    Close(u16, String),
    /// A binary message that does not decode.
    Garbage(Vec<u8>),
    /// The connection ended without a close frame.
    Ended,
}

/// A raw protocol client.
pub struct RawClient {
    ws: WebSocketStream<TcpStream>,
    key: SessionKey,
    canister: Principal,
    /// The gateway's principal (from `Hello`).
    pub gateway: Principal,
    /// Set after a successful open.
    pub client_id: Option<u64>,
    next_seq: u64,
}

impl RawClient {
    /// Connects to `url` (`ws://host:port`) and reads the `Hello`. `recv_buffer` shrinks the
    /// socket's receive buffer (a stalled client then pushes back on the gateway sooner).
    pub async fn connect(
        url: &str,
        canister: Principal,
        recv_buffer: Option<u32>,
    ) -> Result<Self, String> {
        Self::connect_from(url, canister, recv_buffer, None).await
    }

    /// [`RawClient::connect`] from the local address `source` (e.g. another loopback address
    /// such as 127.0.0.2, which the gateway counts as another source).
    pub async fn connect_from(
        url: &str,
        canister: Principal,
        recv_buffer: Option<u32>,
        source: Option<std::net::IpAddr>,
    ) -> Result<Self, String> {
        let ws = Self::handshake(url, recv_buffer, source).await?;
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&now_ns().to_le_bytes());
        seed[8..16].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
        let mut client = RawClient {
            ws,
            key: SessionKey::from_seed(seed),
            canister,
            gateway: Principal::anonymous(),
            client_id: None,
            next_seq: 0,
        };
        match client.next().await {
            Incoming::Frame(GatewayFrame::Hello { gateway, .. }) => client.gateway = gateway,
            other => return Err(format!("expected Hello, got {other:?}")),
        }
        Ok(client)
    }

    /// The TCP connection and WebSocket handshake only (nothing is read after it).
    pub async fn handshake(
        url: &str,
        recv_buffer: Option<u32>,
        source: Option<std::net::IpAddr>,
    ) -> Result<WebSocketStream<TcpStream>, String> {
        let addr: std::net::SocketAddr = url
            .trim_start_matches("ws://")
            .parse()
            .map_err(|e| format!("{url}: {e}"))?;
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(ip) = source {
            socket
                .bind(std::net::SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        if let Some(size) = recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .map_err(|e| e.to_string())?;
        }
        let tcp = socket.connect(addr).await.map_err(|e| e.to_string())?;
        let (ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    }

    /// The TCP socket under the WebSocket (to send bytes no WebSocket library would, e.g. a
    /// frame header without its payload).
    pub fn socket(&mut self) -> &mut TcpStream {
        self.ws.get_mut()
    }

    /// Sends a correctly signed open and returns the gateway's answer.
    pub async fn open(&mut self, args: Vec<u8>) -> Result<OpenResult, String> {
        let mut request = OpenRequest {
            client_key: self.key.public_key(),
            gateway: self.gateway,
            timestamp_ns: now_ns(),
            resume: None,
            args,
            signature: Vec::new(),
            identity: None,
        };
        self.key.sign_open(&self.canister, &mut request);
        self.send(&ClientFrame::Open {
            canister_id: self.canister,
            request,
        })
        .await?;
        loop {
            match self.next().await {
                Incoming::Frame(GatewayFrame::OpenResult(r)) => {
                    if let Ok(ok) = &r {
                        self.client_id = Some(ok.client_id);
                    }
                    return Ok(r);
                }
                Incoming::Frame(_) => {}
                other => return Err(format!("expected OpenResult, got {other:?}")),
            }
        }
    }

    /// A signed app message with the next sequence number (ack 0); `forge` breaks its
    /// signature.
    pub fn message(&mut self, payload: Vec<u8>, forge: bool) -> ClientMessage {
        let mut m = ClientMessage {
            client_id: self.client_id.unwrap_or(0),
            seq: self.next_seq,
            ack: 0,
            kind: MessageKind::App(payload),
            signature: Vec::new(),
        };
        self.next_seq += 1;
        self.key.sign_message(&self.canister, &mut m);
        if forge {
            m.signature[0] ^= 1;
        }
        m
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), String> {
        let bytes = ic_ws_protocol::encode(frame).map_err(|e| e.to_string())?;
        self.send_raw(WsMessage::Binary(bytes.into())).await
    }

    /// Sends any WebSocket message.
    pub async fn send_raw(&mut self, message: WsMessage) -> Result<(), String> {
        self.ws.send(message).await.map_err(|e| e.to_string())
    }

    /// The next thing from the gateway (pings are skipped).
    pub async fn next(&mut self) -> Incoming {
        loop {
            return match self.ws.next().await {
                Some(Ok(WsMessage::Binary(b))) => {
                    match ic_ws_protocol::decode::<GatewayFrame>(&b) {
                        Ok(f) => Incoming::Frame(f),
                        Err(_) => Incoming::Garbage(b.to_vec()),
                    }
                }
                Some(Ok(WsMessage::Close(c))) => match c {
                    Some(c) => Incoming::Close(u16::from(c.code), c.reason.to_string()),
                    None => Incoming::Close(1005, String::new()),
                },
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Incoming::Ended,
            };
        }
    }

    /// Reads (discarding frames) until the connection closes; returns the close code, if any.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Incoming::Close(code, _) => return Some(code),
                Incoming::Ended => return None,
                _ => {}
            }
        }
    }
}

/// What a flooding client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    /// Correctly signed app messages whose payload is not candid (the canister answers
    /// `DecodeError`, which does not end a session by itself).
    SignedJunk,
    /// App messages with a broken signature (the canister answers `InvalidSignature`).
    ForgedJunk,
}

impl RawClient {
    /// Sends `count` app messages of `size` junk bytes as fast as the gateway reads them,
    /// while reading (and discarding) what the gateway sends; returns the close code the
    /// gateway ends the connection with (`None`: ended without a close frame). Does not
    /// return while the gateway keeps the connection open.
    pub async fn flood(self, kind: Flood, count: usize, size: usize) -> Option<u16> {
        let RawClient {
            ws,
            key,
            canister,
            client_id,
            next_seq,
            ..
        } = self;
        let (mut sink, mut stream) = ws.split();
        let send = async move {
            for i in 0..count {
                // Not candid: no "DIDL" magic. Signed one at a time (bounded test memory).
                let mut m = ClientMessage {
                    client_id: client_id.unwrap_or(0),
                    seq: next_seq + i as u64,
                    ack: 0,
                    kind: MessageKind::App(vec![0xA5 ^ (i as u8); size]),
                    signature: Vec::new(),
                };
                key.sign_message(&canister, &mut m);
                if kind == Flood::ForgedJunk {
                    m.signature[0] ^= 1;
                }
                let Ok(bytes) = ic_ws_protocol::encode(&ClientFrame::Message(m)) else {
                    break;
                };
                if sink.send(WsMessage::Binary(bytes.into())).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
        };
        let read = async move {
            loop {
                match stream.next().await {
                    Some(Ok(WsMessage::Close(c))) => return c.map(|c| u16::from(c.code)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                }
            }
        };
        tokio::select! {
            code = read => code,
            () = send => None,
        }
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
