//! The background task that owns the WebSocket: connects, opens or resumes, feeds frames to
//! the [`Session`], writes own messages and keep-alives, and reconnects with backoff.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ic_ws_protocol::{ClientFrame, GatewayFrame, MessageKind, PROTOCOL_VERSION};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::error::{bounded_ws_error, undecodable_frame, MAX_PEER_TEXT_BYTES};
use crate::session::Session;
use crate::{ClientConfig, ClientError, Event, OnResumeUnavailable, Shared};
use ic_ws_protocol::text::bounded;

/// Frames held while the open result is outstanding (see `connection`).
const MAX_EARLY_FRAMES: usize = 64;

pub(crate) enum Command {
    Send {
        kind: MessageKind,
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
}

/// How one connection ended.
enum End {
    /// Nothing more to do (session closed, handle dropped, terminal event reported).
    Stop,
    /// The connection failed; maybe reconnect.
    Failed(ClientError),
}

pub(crate) struct Driver {
    pub(crate) config: ClientConfig,
    pub(crate) session: Session,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) url_index: usize,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Driver {
    pub(crate) async fn run(mut self) {
        let mut attempts: u32 = 0;
        let mut ever_opened = false;
        loop {
            // `ClientConfig::validate` refuses an empty list.
            let Some(url) = self.config.gateway_urls.get(self.url_index).cloned() else {
                let error = ClientError::Config("no gateway URL".into());
                let _ = self.events.send(Event::Failed(error)).await;
                return;
            };
            let mut opened = false;
            let end = self.connection(&url, &mut opened).await;
            self.session.connection_lost();
            ever_opened |= opened;
            if opened {
                attempts = 0;
            }
            let error = match end {
                End::Stop => return,
                End::Failed(e) => e,
            };
            tracing::debug!(%url, %error, "connection ended");
            if !ever_opened || error.is_terminal() {
                // The first connection never opened: `Client::connect` reports it.
                let _ = self.events.send(Event::Failed(error)).await;
                return;
            }
            if let ClientError::ResumeUnavailable {
                client_id,
                first_available,
            } = &error
            {
                let dropped = self.session.start_over();
                self.shared.set_client_id(None);
                let event = Event::ResumeUnavailable {
                    client_id: *client_id,
                    first_available: *first_available,
                    dropped_outgoing: dropped,
                };
                if self.events.send(event).await.is_err() {
                    return;
                }
                if self.config.on_resume_unavailable == OnResumeUnavailable::Stop {
                    let _ = self.events.send(Event::Failed(error)).await;
                    return;
                }
                continue; // a new session, at once, on the same gateway
            }
            attempts = attempts.saturating_add(1);
            if let Some(max) = self.config.backoff.max_attempts {
                if attempts > max {
                    let gave_up = ClientError::GaveUp {
                        attempts: attempts.saturating_sub(1),
                        last: Box::new(error),
                    };
                    let _ = self.events.send(Event::Failed(gave_up)).await;
                    return;
                }
            }
            let delay = self.config.backoff.delay(attempts);
            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
            let event = Event::Disconnected {
                error,
                retry_in: Some(delay),
            };
            if self.events.send(event).await.is_err() {
                return;
            }
            self.url_index = self
                .url_index
                .saturating_add(1)
                .checked_rem(self.config.gateway_urls.len())
                .unwrap_or(0);
            if !self.wait(delay).await {
                return;
            }
        }
    }

    /// Sleeps `delay` while still accepting own messages (queued until the next open).
    /// Returns false when the handle is gone.
    async fn wait(&mut self, delay: Duration) -> bool {
        let deadline = crate::later(Instant::now(), delay);
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Send { kind, reply }) => {
                        let _ = reply.send(self.session.sign(kind).map(|m| m.seq));
                    }
                },
            }
        }
    }

    async fn connect(&self, url: &str) -> Result<Ws, ClientError> {
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(self.config.max_frame_bytes))
            .max_frame_size(Some(self.config.max_frame_bytes));
        let (ws, _response) = timeout(
            self.config.connect_timeout,
            tokio_tungstenite::connect_async_with_config(url, Some(ws_config), true),
        )
        .await
        .map_err(|_| ClientError::Timeout("the WebSocket handshake"))?
        .map_err(|e| ClientError::Connection(bounded(&e.to_string(), MAX_PEER_TEXT_BYTES)))?;
        Ok(ws)
    }

    async fn connection(&mut self, url: &str, opened: &mut bool) -> End {
        let ws = match self.connect(url).await {
            Ok(ws) => ws,
            Err(e) => return End::Failed(e),
        };
        let (mut sink, mut stream) = ws.split();
        let open_deadline = crate::later(Instant::now(), self.config.open_timeout);
        let mut awaiting_hello = true;
        let mut awaiting_open_result = false;
        let mut last_sent = Instant::now();
        let mut queue: VecDeque<GatewayFrame> = VecDeque::new();
        let mut early: Vec<GatewayFrame> = Vec::new();

        macro_rules! write {
            ($frame:expr) => {{
                let frame: ClientFrame = $frame;
                match ic_ws_protocol::encode(&frame) {
                    Ok(bytes) => {
                        if let Err(e) = sink.send(WsMessage::Binary(bytes.into())).await {
                            return End::Failed(ClientError::Connection(e.to_string()));
                        }
                        last_sent = Instant::now();
                    }
                    Err(e) => return End::Failed(ClientError::Encode(e.to_string())),
                }
            }};
        }
        macro_rules! emit {
            ($event:expr) => {
                if self.events.send($event).await.is_err() {
                    return End::Stop;
                }
            };
        }

        loop {
            let ready = self.session.is_ready();
            let keepalive_at = crate::later(last_sent, self.config.keepalive_interval);
            tokio::select! {
                incoming = stream.next() => {
                    let bytes = match incoming {
                        Some(Ok(WsMessage::Binary(b))) => b,
                        Some(Ok(WsMessage::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            return End::Failed(ClientError::GatewayClosed { code, reason });
                        }
                        // Pings are answered by tungstenite itself.
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
                        Some(Ok(WsMessage::Text(_))) => {
                            let _ = sink.close().await;
                            return End::Failed(ClientError::Protocol("text frame".into()));
                        }
                        Some(Err(e)) => return End::Failed(ClientError::Connection(bounded(&e.to_string(), MAX_PEER_TEXT_BYTES))),
                        None => return End::Failed(ClientError::Connection("connection closed".into())),
                    };
                    let frame: GatewayFrame = match ic_ws_protocol::decode(&bytes) {
                        Ok(f) => bound_texts(f),
                        Err(e) => {
                            let _ = sink.close().await;
                            return End::Failed(undecodable_frame(&bytes, &e));
                        }
                    };
                    queue.push_back(frame);
                    while let Some(frame) = queue.pop_front() {
                        match frame {
                            GatewayFrame::Hello { gateway, protocol_version } if awaiting_hello => {
                                if protocol_version != PROTOCOL_VERSION {
                                    let _ = sink.close().await;
                                    return End::Failed(ClientError::UnsupportedVersion {
                                        got: protocol_version,
                                        supported: PROTOCOL_VERSION,
                                    });
                                }
                                awaiting_hello = false;
                                awaiting_open_result = true;
                                let now = (self.config.clock)();
                                let open = self.session.open_frame(gateway, &self.config.open_args, now);
                                write!(open);
                            }
                            GatewayFrame::OpenResult(result) if awaiting_open_result => {
                                awaiting_open_result = false;
                                if let Err(e) = self.session.on_open_result(result) {
                                    let _ = sink.close().await;
                                    return End::Failed(e);
                                }
                                self.shared.set_client_id(self.session.client_id());
                                // Frames that overtook the open result, in their order.
                                for f in early.drain(..).rev() {
                                    queue.push_front(f);
                                }
                            }
                            m @ GatewayFrame::Messages { .. } if awaiting_open_result => {
                                // A gateway may deliver the certified Opened before relaying
                                // the open's result: hold it (bounded) until the id is known.
                                if early.len() >= MAX_EARLY_FRAMES {
                                    let _ = sink.close().await;
                                    return End::Failed(ClientError::Protocol(
                                        "too many frames before the open result".into(),
                                    ));
                                }
                                early.push(m);
                            }
                            GatewayFrame::Messages { messages, certificate, tree }
                                if !awaiting_hello && !awaiting_open_result =>
                            {
                                let now = (self.config.clock)();
                                let delivery = match self.session.on_messages(&messages, &certificate, &tree, now) {
                                    Ok(d) => d,
                                    Err(e) => {
                                        // Drop the whole frame and this gateway connection.
                                        let _ = sink.close().await;
                                        return End::Failed(e);
                                    }
                                };
                                self.shared.received.store(self.session.next_expected(), Ordering::Relaxed);
                                for m in delivery.resend {
                                    write!(ClientFrame::Message(m));
                                }
                                if delivery.opened {
                                    *opened = true;
                                }
                                for event in delivery.events {
                                    emit!(event);
                                }
                                if delivery.closed.is_some() {
                                    let _ = sink.close().await;
                                    return End::Stop;
                                }
                                if self.session.is_ready() && self.session.ack_due(self.config.ack_threshold) {
                                    match self.session.sign(MessageKind::KeepAlive) {
                                        Ok(m) => write!(ClientFrame::Message(m)),
                                        Err(e) => return End::Failed(e),
                                    }
                                }
                            }
                            GatewayFrame::MessageError { seq, error } => {
                                emit!(Event::MessageRejected { seq, error });
                            }
                            other => {
                                let _ = sink.close().await;
                                return End::Failed(ClientError::Protocol(format!(
                                    "unexpected frame {}",
                                    frame_name(&other)
                                )));
                            }
                        }
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    None => {
                        let _ = sink.close().await;
                        return End::Stop;
                    }
                    Some(Command::Send { kind, reply }) => {
                        let signed = self.session.sign(kind);
                        let _ = reply.send(signed.as_ref().map(|m| m.seq).map_err(Clone::clone));
                        if let (Ok(m), true) = (signed, self.session.is_ready()) {
                            write!(ClientFrame::Message(m));
                        }
                    }
                },
                _ = sleep_until(open_deadline), if !ready => {
                    let _ = sink.close().await;
                    let step = if awaiting_hello {
                        "the gateway's Hello"
                    } else if awaiting_open_result {
                        "the open result"
                    } else {
                        "the certified Opened"
                    };
                    return End::Failed(ClientError::Timeout(step));
                }
                _ = sleep_until(keepalive_at), if ready => {
                    match self.session.sign(MessageKind::KeepAlive) {
                        Ok(m) => write!(ClientFrame::Message(m)),
                        Err(e) => return End::Failed(e),
                    }
                }
            }
        }
    }
}

fn frame_name(frame: &GatewayFrame) -> &'static str {
    match frame {
        GatewayFrame::Hello { .. } => "Hello",
        GatewayFrame::OpenResult(_) => "OpenResult",
        GatewayFrame::Messages { .. } => "Messages",
        GatewayFrame::MessageError { .. } => "MessageError",
    }
}

/// The frame with the uncertified texts a gateway relays (open and message errors) bounded.
fn bound_texts(frame: GatewayFrame) -> GatewayFrame {
    match frame {
        GatewayFrame::OpenResult(Err(e)) => GatewayFrame::OpenResult(Err(bounded_ws_error(e))),
        GatewayFrame::MessageError { seq, error } => GatewayFrame::MessageError {
            seq,
            error: bounded_ws_error(error),
        },
        other => other,
    }
}
