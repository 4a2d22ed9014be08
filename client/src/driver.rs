//! The background task that owns the WebSocket. It is I/O only: it connects, feeds every
//! frame, own message and timer to the protocol's state machine
//! ([`ic_ws_protocol::client::ClientSession`]) and carries out what the machine decides
//! (write a frame, tell the application, close and reconnect with backoff, wait, stop).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ic_ws_protocol::client::{self as machine, Action, ClientSession, Failure, Next};
use ic_ws_protocol::{GatewayFrame, MessageKind};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::error::{undecodable_frame, MAX_PEER_TEXT_BYTES};
use crate::{ClientConfig, ClientError, Event, Message, Shared};
use ic_ws_protocol::text::bounded;

pub(crate) enum Command {
    Send {
        kind: MessageKind,
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
}

/// How one connection ended.
enum End {
    /// The application dropped the handle.
    HandleGone,
    /// The machine closed the connection; `next` says what comes next.
    Closed { error: ClientError, next: Next },
}

/// A fresh session-key seed from the operating system's CSPRNG.
pub(crate) fn os_key_source() -> machine::KeySource {
    Box::new(|| {
        use rand::RngCore;
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        seed
    })
}

pub(crate) struct Driver {
    pub(crate) config: ClientConfig,
    pub(crate) session: ClientSession,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) url_index: usize,
    /// A certified `Opened` arrived on the current connection (resets the backoff).
    pub(crate) opened: bool,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Sink = futures_util::stream::SplitSink<Ws, WsMessage>;

fn ns_to_duration(from: u64, to: u64) -> Duration {
    Duration::from_nanos(to.saturating_sub(from))
}

impl Driver {
    fn now(&self) -> u64 {
        (self.config.clock)()
    }

    pub(crate) async fn run(mut self) {
        let mut attempts: u32 = 0;
        loop {
            // `ClientConfig::validate` refuses an empty list.
            let Some(url) = self.config.gateway_urls.get(self.url_index).cloned() else {
                let error = ClientError::Config("no gateway URL".into());
                let _ = self.events.send(Event::Failed(error)).await;
                return;
            };
            self.opened = false;
            let (error, next) = match self.connection(&url).await {
                End::HandleGone => return,
                End::Closed { error, next } => (error, next),
            };
            if self.opened {
                attempts = 0;
            }
            tracing::debug!(%url, %error, ?next, "connection ended");
            let delay = match next {
                Next::Stop => {
                    // A certified `Closed` was reported as `Event::Closed` already.
                    if !matches!(error, ClientError::SessionClosed(_)) {
                        let _ = self.events.send(Event::Failed(error)).await;
                    }
                    return;
                }
                Next::ReconnectNow => Duration::ZERO,
                Next::WaitUntil(at) => ns_to_duration(self.now(), at),
                Next::Reconnect => {
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
                    self.config.backoff.delay(attempts)
                }
            };
            self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
            let event = Event::Disconnected {
                error,
                retry_in: Some(delay),
            };
            if self.events.send(event).await.is_err() {
                return;
            }
            if next != Next::ReconnectNow {
                self.url_index = self
                    .url_index
                    .saturating_add(1)
                    .checked_rem(self.config.gateway_urls.len())
                    .unwrap_or(0);
            }
            if !self.wait(delay).await {
                return;
            }
        }
    }

    /// Sleeps `delay` while still accepting own messages (signed now, sent after the next
    /// certified `Opened`). Returns false when the handle is gone.
    async fn wait(&mut self, delay: Duration) -> bool {
        let deadline = crate::later(Instant::now(), delay);
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return true,
                cmd = self.commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Send { kind, reply }) => {
                        let now = self.now();
                        let result = self.session.send(kind, now).map(|(seq, _)| seq);
                        let _ = reply.send(result.map_err(ClientError::from));
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

    /// The machine's verdict on a transport failure, with the driver's own error.
    fn lost(&mut self, error: ClientError) -> End {
        let failure = match &error {
            ClientError::GatewayClosed { code, reason } => Failure::GatewayClosed {
                code: *code,
                reason: reason.clone(),
            },
            ClientError::Protocol(s) => Failure::Protocol(s.clone()),
            other => Failure::Transport(other.to_string()),
        };
        let now = self.now();
        let next = self
            .session
            .connection_lost(failure, now)
            .into_iter()
            .find_map(|a| match a {
                Action::Close { next, .. } => Some(next),
                _ => None,
            })
            .unwrap_or(Next::Reconnect);
        End::Closed { error, next }
    }

    /// Carries out the machine's actions; `Some` when the connection ended.
    async fn apply(&mut self, actions: Vec<Action>, sink: &mut Sink) -> Option<End> {
        let mut end = None;
        for action in actions {
            match action {
                Action::Write(frame) => {
                    let sent = match ic_ws_protocol::encode(&frame) {
                        Ok(bytes) => sink
                            .send(WsMessage::Binary(bytes.into()))
                            .await
                            .map_err(|e| ClientError::Connection(e.to_string())),
                        Err(e) => Err(ClientError::Encode(e.to_string())),
                    };
                    if let Err(e) = sent {
                        let _ = sink.close().await;
                        end = Some(self.lost(e));
                        break;
                    }
                }
                Action::Emit(event) => {
                    // Published before the event: whoever sees `Opened` (`Client::connect`
                    // included) reads the session's id.
                    self.shared.set_client_id(self.session.client_id());
                    if let Some(event) = self.event(event) {
                        if self.events.send(event).await.is_err() {
                            let _ = sink.close().await;
                            return Some(End::HandleGone);
                        }
                    }
                }
                Action::Close { error, next } => {
                    let _ = sink.close().await;
                    end = Some(End::Closed {
                        error: error.into(),
                        next,
                    });
                    break;
                }
            }
        }
        self.shared.set_client_id(self.session.client_id());
        self.shared
            .received
            .store(self.session.next_expected(), Ordering::Relaxed);
        end
    }

    fn event(&mut self, event: machine::Event) -> Option<Event> {
        Some(match event {
            machine::Event::Opened {
                client_id,
                resumed,
                next_inbound_seq,
                resent,
            } => {
                self.opened = true;
                Event::Opened {
                    client_id,
                    resumed,
                    next_inbound_seq,
                    resent,
                }
            }
            machine::Event::Message {
                seq,
                timestamp_ns,
                topic,
                payload,
            } => Event::Message(Message {
                seq,
                timestamp_ns,
                topic,
                value: payload,
            }),
            machine::Event::MessageRejected { seq, error } => Event::MessageRejected { seq, error },
            machine::Event::OpenRejected { client_id, error } => {
                Event::OpenRejected { client_id, error }
            }
            machine::Event::Unverified(claim) => Event::Unverified(claim),
            machine::Event::SessionLost {
                client_id,
                dropped_outgoing,
            } => Event::SessionLost {
                client_id,
                dropped_outgoing,
            },
            machine::Event::Closed(reason) => Event::Closed(reason),
        })
    }

    async fn connection(&mut self, url: &str) -> End {
        let ws = match self.connect(url).await {
            Ok(ws) => ws,
            Err(e) => return self.lost(e),
        };
        let (mut sink, mut stream) = ws.split();
        let now = self.now();
        let actions = self.session.connected(now);
        if let Some(end) = self.apply(actions, &mut sink).await {
            return end;
        }
        loop {
            let deadline = self.session.next_deadline().map(|at| {
                let now = self.now();
                crate::later(Instant::now(), ns_to_duration(now, at))
            });
            let actions = tokio::select! {
                incoming = stream.next() => {
                    let bytes = match incoming {
                        Some(Ok(WsMessage::Binary(b))) => b,
                        Some(Ok(WsMessage::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), bounded(&f.reason, MAX_PEER_TEXT_BYTES)))
                                .unwrap_or((1005, String::new()));
                            return self.lost(ClientError::GatewayClosed { code, reason });
                        }
                        // Pings are answered by tungstenite itself.
                        Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
                        Some(Ok(WsMessage::Text(_))) => {
                            let _ = sink.close().await;
                            return self.lost(ClientError::Protocol("text frame".into()));
                        }
                        Some(Err(e)) => return self.lost(ClientError::Connection(bounded(&e.to_string(), MAX_PEER_TEXT_BYTES))),
                        None => return self.lost(ClientError::Connection("connection closed".into())),
                    };
                    let frame: GatewayFrame = match ic_ws_protocol::decode(&bytes) {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = sink.close().await;
                            return self.lost(undecodable_frame(&bytes, &e));
                        }
                    };
                    let now = self.now();
                    self.session.frame(frame, now)
                }
                cmd = self.commands.recv() => match cmd {
                    None => {
                        let _ = sink.close().await;
                        return End::HandleGone;
                    }
                    Some(Command::Send { kind, reply }) => {
                        let now = self.now();
                        match self.session.send(kind, now) {
                            Ok((seq, actions)) => {
                                let _ = reply.send(Ok(seq));
                                actions
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e.into()));
                                Vec::new()
                            }
                        }
                    }
                },
                _ = async {
                    match deadline {
                        Some(at) => sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = self.now();
                    self.session.tick(now)
                }
            };
            if let Some(end) = self.apply(actions, &mut sink).await {
                return end;
            }
        }
    }
}
