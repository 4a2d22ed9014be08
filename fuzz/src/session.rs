//! The gateway's session state machine (`ic_ws_gateway::session::run`, generic over any
//! WebSocket `Sink + Stream`) fed an arbitrary script of client frames over an in-memory
//! socket, with the in-memory `FakeCanister` behind the real relay and poller, on a paused
//! tokio clock (timeouts fire as soon as nothing else can run).
//!
//! Input (see [`crate::input::Reader`]): a header byte (bits 0-1: what the socket does once
//! the script is over: 0/3 stay silent, 1 end of stream, 2 a read error; bits 2-4: after how
//! many written frames the client stops reading, 0 never), then steps, each a tag byte:
//! 0 a binary frame (2-byte length), 1 a structured `Open`, 2 a structured `Message`, 3 a text
//! frame, 4 a ping, 5 a pong, 6 a close frame, 7 a pause (ms in one byte, times 2),
//! 8 a read error (kind in one byte). Structured frames are candid-encoded by the target
//! with the gateway's principal, so most inputs get past decoding into the states behind it.
//!
//! Invariants: no panic; the session ends (the idle timeout bounds it); `Hello` comes first;
//! every binary frame sent decodes as a `GatewayFrame`; at most one close frame, sent last,
//! with a documented close code, and one is sent unless the client went away or stopped
//! reading; once the session has ended and the relay has run, no client entry of its
//! connection is left in any hub and the sessions gauge matches the hubs' tables.

use crate::input::{Reader, Writer};
use candid::Principal;
use futures_util::{Sink, Stream};
use ic_ws_gateway::fake::FakeCanister;
use ic_ws_gateway::hub::Shared;
use ic_ws_gateway::Config;
use ic_ws_protocol::types::{ClientMessage, MessageKind, OpenRequest, ResumeFrom};
use ic_ws_protocol::{ClientFrame, GatewayFrame};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

const MAX_STEPS: usize = 64;
/// Close codes the gateway documents (docs/protocol.md, `close_code`), plus 1002/1007 for
/// WebSocket protocol errors and 1011 for internal errors.
const CLOSE_CODES: [u16; 15] = [
    1000, 1001, 1002, 1007, 1008, 1009, 1011, 1012, 4000, 4001, 4002, 4003, 4004, 4005, 4006,
];

enum Step {
    Frame(Message),
    Error(WsError),
    Pause(Duration),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterScript {
    Silent,
    EndOfStream,
    ReadError,
}

/// The client side of an in-memory WebSocket: plays a script, records what the gateway sends.
struct ScriptedSocket {
    script: VecDeque<Step>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    after: AfterScript,
    sent: Arc<Mutex<Vec<Message>>>,
    /// The client stops reading after this many frames (writes then block).
    stall_after: Option<usize>,
}

impl ScriptedSocket {
    fn stalled(&self) -> bool {
        let sent = self.sent.lock().map_or(0, |s| s.len());
        self.stall_after.is_some_and(|n| sent >= n)
    }
}

impl Stream for ScriptedSocket {
    type Item = Result<Message, WsError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            match self.script.pop_front() {
                Some(Step::Frame(m)) => return Poll::Ready(Some(Ok(m))),
                Some(Step::Error(e)) => return Poll::Ready(Some(Err(e))),
                Some(Step::Pause(d)) => self.pause = Some(Box::pin(tokio::time::sleep(d))),
                None => {
                    return match self.after {
                        AfterScript::Silent => Poll::Pending,
                        AfterScript::EndOfStream => Poll::Ready(None),
                        AfterScript::ReadError => Poll::Ready(Some(Err(WsError::Io(
                            std::io::ErrorKind::ConnectionReset.into(),
                        )))),
                    }
                }
            }
        }
    }
}

impl Sink<Message> for ScriptedSocket {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        // A client that stopped reading: the write never completes (the gateway's write
        // timeout, on the paused clock, ends it).
        if self.stalled() {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        if let Ok(mut sent) = self.sent.lock() {
            sent.push(item);
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

/// The test vectors' gateway and canister: their signed opens and messages are valid here.
fn principals() -> (Principal, Principal) {
    static PRINCIPALS: OnceLock<(Principal, Principal)> = OnceLock::new();
    *PRINCIPALS.get_or_init(|| {
        let v = crate::vectors();
        let p = |x: &serde_json::Value| {
            Principal::from_text(x.as_str().unwrap_or_default()).unwrap_or(Principal::anonymous())
        };
        (p(&v["gateway"]), p(&v["canister_id"]))
    })
}

/// Encodes with a `TypedEncoder` built once (the same bytes as `ic_ws_protocol::encode`,
/// without rebuilding the type table per step: that was a third of the target's time).
fn encode(frame: &ClientFrame) -> Message {
    static ENCODER: OnceLock<Option<ic_ws_protocol::TypedEncoder<ClientFrame>>> = OnceLock::new();
    let bytes = match ENCODER.get_or_init(|| ic_ws_protocol::TypedEncoder::new().ok()) {
        Some(encoder) => encoder.encode(frame),
        None => ic_ws_protocol::encode(frame),
    };
    Message::Binary(Bytes::from(bytes.unwrap_or_default()))
}

fn read_error(kind: u8) -> WsError {
    match kind % 5 {
        0 => WsError::Capacity(CapacityError::MessageTooLong {
            size: 1 << 20,
            max_size: 1 << 17,
        }),
        1 => WsError::Protocol(ProtocolError::UnmaskedFrameFromClient),
        2 => WsError::Utf8("invalid".into()),
        3 => WsError::ConnectionClosed,
        _ => WsError::AlreadyClosed,
    }
}

fn parse(data: &[u8], gateway: Principal, canister: Principal) -> (ScriptedSocket, bool) {
    let mut r = Reader::new(data);
    let header = r.u8();
    let after = match header & 3 {
        1 => AfterScript::EndOfStream,
        2 => AfterScript::ReadError,
        _ => AfterScript::Silent,
    };
    let stall = usize::from((header >> 2) & 7);
    let mut script = VecDeque::new();
    let mut went_away = after != AfterScript::Silent;
    while !r.is_empty() && script.len() < MAX_STEPS {
        let step = match r.u8() % 9 {
            0 => Step::Frame(Message::Binary(Bytes::copy_from_slice(r.bytes16()))),
            1 => {
                let flags = r.u8();
                let resume = (flags & 1 != 0).then(|| ResumeFrom {
                    client_id: u64::from(r.u8()),
                    next_outbound_seq: u64::from(r.u8()),
                });
                let args = match (flags >> 3) & 3 {
                    0 => Vec::new(),
                    1 => b"reject".to_vec(),
                    2 => b"trap".to_vec(),
                    _ => r.bytes8().to_vec(),
                };
                Step::Frame(encode(&ClientFrame::Open {
                    canister_id: if flags & 2 != 0 {
                        Principal::management_canister()
                    } else {
                        canister
                    },
                    request: OpenRequest {
                        client_key: vec![flags; 32],
                        gateway: if flags & 4 != 0 {
                            Principal::anonymous()
                        } else {
                            gateway
                        },
                        timestamp_ns: 1,
                        resume,
                        args,
                        signature: vec![0; 64],
                        identity: None,
                    },
                }))
            }
            2 => {
                let client_id = u64::from(r.u8());
                let seq = u64::from(r.u8());
                let ack = u64::from(r.u8());
                let kind = match r.u8() % 6 {
                    0 => MessageKind::KeepAlive,
                    1 => MessageKind::Close {
                        code: r.u16(),
                        reason: String::from_utf8_lossy(r.bytes8()).into_owned(),
                    },
                    2 => MessageKind::App(b"close".to_vec()),
                    3 => MessageKind::App(b"reject".to_vec()),
                    4 => MessageKind::App(b"trap".to_vec()),
                    _ => MessageKind::App(r.bytes8().to_vec()),
                };
                Step::Frame(encode(&ClientFrame::Message(ClientMessage {
                    client_id,
                    seq,
                    ack,
                    kind,
                    signature: vec![0; 64],
                })))
            }
            3 => Step::Frame(Message::text(
                String::from_utf8_lossy(r.bytes8()).into_owned(),
            )),
            4 => Step::Frame(Message::Ping(Bytes::copy_from_slice(r.bytes8()))),
            5 => Step::Frame(Message::Pong(Bytes::new())),
            6 => {
                went_away = true;
                Step::Frame(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
            }
            7 => Step::Pause(Duration::from_millis(u64::from(r.u8()) * 2)),
            _ => {
                went_away = true;
                Step::Error(read_error(r.u8()))
            }
        };
        script.push_back(step);
    }
    let socket = ScriptedSocket {
        script,
        pause: None,
        after,
        sent: Arc::new(Mutex::new(Vec::new())),
        stall_after: (stall > 0).then_some(stall),
    };
    (socket, went_away)
}

/// The gateway's configuration (parsed once): short timeouts, since every timer the
/// session waits on advances the paused clock and each virtual second costs relay and poller
/// wake-ups; small buffers and queues, so their limits are reachable.
fn config(canister: Principal) -> Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Config::from_args([
                "ic-ws-gateway",
                "--canister",
                &canister.to_text(),
                "--idle-timeout-ms",
                "400",
                "--write-timeout-ms",
                "100",
                "--send-buffer-frames",
                "8",
                "--max-inflight-per-client",
                "4",
                "--relay-queue",
                "16",
                "--batch-interval-ms",
                "10",
                "--retry-backoff-ms",
                "10",
                "--poll-max-interval-ms",
                "200",
                "--poll-idle-stop-ms",
                "300",
            ])
            .expect("a valid configuration")
        })
        .clone()
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let (gateway, canister) = principals();
    let (socket, went_away) = parse(data, gateway, canister);
    let stalls = socket.stall_after.is_some();
    let sent = socket.sent.clone();
    let config = config(canister);
    let policy = config.canister_policy().expect("a valid policy");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let shared = Shared::new(config, policy, Arc::new(FakeCanister::new()), gateway);
        let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        ic_ws_gateway::session::run(shared.clone(), socket, peer).await;
        // Let the relay and the poller finish what the session left them.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut attached = 0;
        for hub in shared.hubs() {
            let table = hub.table();
            attached += table.clients.len();
            assert!(
                table.clients.values().all(|e| e.conn_id != 1),
                "the ended session's client is still attached"
            );
        }
        assert_eq!(
            shared.metrics.sessions.get(),
            attached as i64,
            "sessions gauge differs from the attached clients"
        );
    });
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    let mut frames = sent.iter();
    match frames.next() {
        Some(Message::Binary(b)) => assert!(matches!(
            ic_ws_protocol::decode::<GatewayFrame>(b),
            Ok(GatewayFrame::Hello { .. })
        )),
        other => panic!("first frame is not Hello: {other:?}"),
    }
    let mut closed = false;
    for m in frames {
        assert!(!closed, "a frame after the close frame: {m:?}");
        match m {
            Message::Binary(b) => {
                if let Err(e) = ic_ws_protocol::decode::<GatewayFrame>(b) {
                    panic!("the gateway sent an undecodable frame: {e}");
                }
            }
            Message::Close(Some(c)) => {
                let code = u16::from(c.code);
                assert!(
                    CLOSE_CODES.contains(&code),
                    "undocumented close code {code}"
                );
                assert!(c.reason.len() <= 123, "close reason over 123 bytes");
                closed = true;
            }
            other => panic!("unexpected frame from the gateway: {other:?}"),
        }
    }
    assert!(
        closed || went_away || stalls,
        "the session ended without a close frame"
    );
}

/// Scripts made of the vectors' opens and messages, plus structured ones.
pub fn seeds() -> Vec<Vec<u8>> {
    let v = crate::vectors();
    let (_, canister) = principals();
    let raw = |w: &mut Writer, frame: &ClientFrame| {
        w.u8(0)
            .bytes16(&ic_ws_protocol::encode(frame).unwrap_or_default());
    };
    let mut vector_script = Writer::default();
    vector_script.u8(0);
    for o in v["opens"].as_array().into_iter().flatten() {
        if let Ok(request) = ic_ws_protocol::decode(&crate::vector_bytes(&o["candid"])) {
            raw(
                &mut vector_script,
                &ClientFrame::Open {
                    canister_id: canister,
                    request,
                },
            );
            vector_script.u8(7).u8(10);
        }
    }
    for m in v["messages"].as_array().into_iter().flatten() {
        vector_script
            .u8(0)
            .bytes16(&crate::vector_bytes(&m["frame_candid"]));
    }
    let mut seeds = vec![vector_script.0];
    // open, pause, echo, keep-alive, close; then variations of the ending.
    for header in [0u8, 1, 2, 1 << 2] {
        let mut w = Writer::default();
        w.u8(header).u8(1).u8(0).u8(7).u8(10);
        w.u8(2).u8(0).u8(0).u8(0).u8(5).bytes8(b"echo:hi");
        w.u8(7).u8(10);
        w.u8(2).u8(0).u8(1).u8(1).u8(0);
        w.u8(2)
            .u8(0)
            .u8(2)
            .u8(1)
            .u8(1)
            .u8(3)
            .u8(0xe8)
            .bytes8(b"bye");
        w.u8(7).u8(20);
        seeds.push(w.0);
    }
    // A resume, a rejected open, a trap, text and ping frames, a read error.
    let mut w = Writer::default();
    w.u8(0)
        .u8(1)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(7)
        .u8(5)
        .u8(4)
        .bytes8(b"ping")
        .u8(3)
        .bytes8(b"text");
    seeds.push(w.0);
    let mut w = Writer::default();
    w.u8(0).u8(1).u8(1 << 3).u8(7).u8(5).u8(8).u8(0);
    seeds.push(w.0);
    let mut w = Writer::default();
    w.u8(1)
        .u8(1)
        .u8(2 << 3)
        .u8(7)
        .u8(5)
        .u8(2)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(4);
    seeds.push(w.0);
    seeds
}
