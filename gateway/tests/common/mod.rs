//! Helpers for gateway integration tests: a gateway on a real port-0 socket in front of the
//! in-memory canister, and a minimal protocol client.
#![allow(dead_code, clippy::unwrap_used)]

use candid::Principal;
use futures_util::{SinkExt, StreamExt};
use ic_certification::{HashTree, LookupResult};
use ic_ws_gateway::fake::FakeCanister;
use ic_ws_gateway::{Config, Gateway};
use ic_ws_protocol::types::*;
use ic_ws_protocol::{ClientFrame, GatewayFrame};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const CANISTER: &str = "rrkah-fqaaa-aaaaa-aaaaq-cai";
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn canister() -> Principal {
    Principal::from_text(CANISTER).unwrap()
}

pub fn gateway_principal() -> Principal {
    Principal::self_authenticating(b"ic-ws gateway under test")
}

/// Fast intervals so tests run quickly; `extra` overrides.
pub async fn start_with(fake: FakeCanister, extra: &[&str]) -> Gateway<FakeCanister> {
    let mut args = vec![
        "ic-ws-gateway",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--canister",
        CANISTER,
        "--batch-interval-ms",
        "10",
        "--poll-min-interval-ms",
        "5",
        "--poll-max-interval-ms",
        "40",
        "--ip-connect-rate",
        "0",
    ];
    args.extend_from_slice(extra);
    let config = Config::from_args(args).unwrap();
    Gateway::start(config, fake, gateway_principal())
        .await
        .unwrap()
}

pub async fn start(extra: &[&str]) -> (Gateway<FakeCanister>, FakeCanister) {
    let fake = FakeCanister::new();
    (start_with(fake.clone(), extra).await, fake)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub client_id: u64,
    /// Next inbound sequence number to use.
    pub seq: u64,
    /// Next outbound sequence number expected.
    pub next_out: u64,
}

/// Connects from `local` (an address in 127.0.0.0/8) or the default.
pub async fn connect_from(addr: SocketAddr, local: Option<&str>) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = local {
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    }
    let tcp = socket.connect(addr).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/"), MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    ws
}

pub async fn next_message(ws: &mut Ws) -> Message {
    match tokio::time::timeout(TIMEOUT, ws.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("expected a frame, got {other:?}"),
    }
}

pub async fn next_frame(ws: &mut Ws) -> GatewayFrame {
    loop {
        match next_message(ws).await {
            Message::Binary(b) => return ic_ws_protocol::decode(&b).unwrap(),
            Message::Pong(_) | Message::Ping(_) => continue,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}

/// Reads until the close frame; returns its code and reason (1006 if the socket just ended).
pub async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(c))))) => return (c.code.into(), c.reason.to_string()),
            Ok(Some(Ok(Message::Close(None)))) => return (1005, String::new()),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return (1006, String::new()),
            Err(_) => panic!("connection not closed in time"),
        }
    }
}

pub async fn hello(ws: &mut Ws) -> Principal {
    match next_frame(ws).await {
        GatewayFrame::Hello {
            gateway,
            protocol_version,
        } => {
            assert_eq!(protocol_version, ic_ws_protocol::PROTOCOL_VERSION);
            gateway
        }
        other => panic!("expected Hello, got {other:?}"),
    }
}

pub fn open_request(args: &[u8], resume: Option<ResumeFrom>) -> ClientFrame {
    open_request_through(gateway_principal(), args, resume)
}

/// An open naming `gateway` as the gateway it goes through.
pub fn open_request_through(
    gateway: Principal,
    args: &[u8],
    resume: Option<ResumeFrom>,
) -> ClientFrame {
    ClientFrame::Open {
        canister_id: canister(),
        request: OpenRequest {
            client_key: vec![7; 32],
            gateway,
            timestamp_ns: 1,
            resume,
            args: args.to_vec(),
            signature: vec![0; 64],
            identity: None,
        },
    }
}

pub async fn send_frame(ws: &mut Ws, frame: &ClientFrame) {
    ws.send(Message::Binary(
        ic_ws_protocol::encode(frame).unwrap().into(),
    ))
    .await
    .unwrap();
}

/// Checks a `Messages` frame: the tree proves each message at its path and shows no other
/// client's leaf.
pub fn check_witness(client_id: u64, messages: &[OutboundMessage], tree: &[u8]) {
    let tree: HashTree = serde_cbor::from_slice(tree).unwrap();
    for m in messages {
        assert_eq!(
            m.client_id, client_id,
            "message for another client delivered"
        );
        let path = ic_ws_protocol::message_path(m.client_id, m.seq);
        match tree.lookup_path(path.iter()) {
            LookupResult::Found(v) => assert_eq!(v, ic_ws_protocol::content_hash(&m.content)),
            other => panic!("message {} not proven: {other:?}", m.seq),
        }
    }
    for path in tree.list_paths() {
        let labels: Vec<&[u8]> = path.iter().map(|l| l.as_bytes()).collect();
        if labels.first() == Some(&b"ws".as_slice()) {
            assert_eq!(
                labels.get(1).copied(),
                Some(client_id.to_be_bytes().as_slice()),
                "another client's leaf visible"
            );
        }
    }
}

pub fn body(m: &OutboundMessage) -> OutboundBody {
    ic_ws_protocol::decode::<OutboundContent>(&m.content)
        .unwrap()
        .body
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut ws = connect_from(addr, None).await;
        assert_eq!(hello(&mut ws).await, gateway_principal());
        Client {
            ws,
            client_id: u64::MAX,
            seq: 0,
            next_out: 0,
        }
    }

    /// Connects and opens a new session; consumes the `Opened` message.
    pub async fn open(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        send_frame(&mut c.ws, &open_request(b"", None)).await;
        c.expect_open_ok(None).await;
        c
    }

    /// Reads `OpenResult` Ok and the certified `Opened`.
    pub async fn expect_open_ok(&mut self, resumed_from: Option<u64>) -> OpenOk {
        let ok = match next_frame(&mut self.ws).await {
            GatewayFrame::OpenResult(Ok(ok)) => ok,
            other => panic!("expected OpenResult Ok, got {other:?}"),
        };
        self.client_id = ok.client_id;
        self.seq = ok.next_inbound_seq;
        self.next_out = resumed_from.unwrap_or(0);
        // Resumed messages (if any) come before `Opened`.
        loop {
            let m = self.messages(1).await.remove(0);
            if matches!(body(&m), OutboundBody::Opened { .. }) {
                assert_eq!(m.seq, ok.opened_seq);
                return ok;
            }
        }
    }

    pub async fn send(&mut self, payload: &[u8]) -> u64 {
        let seq = self.seq;
        self.send_seq(seq, payload).await;
        self.seq += 1;
        seq
    }

    pub async fn send_seq(&mut self, seq: u64, payload: &[u8]) {
        let m = ClientMessage {
            client_id: self.client_id,
            seq,
            ack: self.next_out,
            kind: MessageKind::App(payload.to_vec()),
            signature: vec![0; 64],
        };
        send_frame(&mut self.ws, &ClientFrame::Message(m)).await;
    }

    /// Reads `n` certified messages, checking order and witnesses.
    pub async fn messages(&mut self, n: usize) -> Vec<OutboundMessage> {
        let mut out = Vec::new();
        while out.len() < n {
            match next_frame(&mut self.ws).await {
                GatewayFrame::Messages {
                    messages,
                    certificate,
                    tree,
                } => {
                    assert_eq!(certificate, ic_ws_gateway::fake::FAKE_CERTIFICATE);
                    check_witness(self.client_id, &messages, &tree);
                    for m in messages {
                        assert_eq!(m.seq, self.next_out, "out of order or duplicated");
                        self.next_out += 1;
                        out.push(m);
                    }
                }
                other => panic!("expected Messages, got {other:?}"),
            }
        }
        out
    }

    /// The app payloads of the next `n` messages.
    pub async fn payloads(&mut self, n: usize) -> Vec<Vec<u8>> {
        self.messages(n)
            .await
            .iter()
            .map(|m| match body(m) {
                OutboundBody::App { payload, .. } => payload,
                other => panic!("expected an App message, got {other:?}"),
            })
            .collect()
    }
}

/// Polls `cond` until true (10 s max).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
