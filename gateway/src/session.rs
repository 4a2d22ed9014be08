//! One client connection, from `Hello` to close, in a single task.
//!
//! The session reads the client's frames (decoding each as a `ClientFrame`; anything else
//! closes this connection only, with 1008), hands opens and messages to its canister's relay,
//! and writes what its [`Outbox`] holds. A client that does not read blocks only this task, and
//! is closed with 4001 when its outbox overflows or a write stays blocked too long. Generic over
//! any WebSocket `Sink + Stream`, so TLS and plain TCP share the code.
//!
//! Pings are answered by tungstenite itself while the session reads. They are not activity:
//! only protocol frames reset the idle timer, so a socket that pings and never opens (or an
//! idle session) still times out. A connection's pings (and pongs) are rate-limited by a token
//! bucket (`--ping-rate`, `--ping-burst`; beyond it: close 1008), and after a ping the session
//! reads nothing more until the pong has left for the socket: a peer that pings without
//! reading stops being read, so at most one pong per connection waits in memory.
//!
//! Memory: a decoded message is charged to the gateway's ledger (`crate::memory`) while the
//! session holds it, then while the relay does; the session reads nothing more until its
//! client's relay share has room. Past 3/4 of the budget a new connection is closed 4006
//! before its `Hello` and an open is refused 4006; a message that does not fit the budget
//! closes its sender 4006.
//!
//! A panic in a session (a bug, whatever the peer sent) ends that connection only: [`run`]
//! catches it, logs it, counts it (`ic_ws_gateway_session_panics_total`) and detaches the
//! session from its hub, so the client resumes on a new connection.

use crate::canister::CanisterApi;
use crate::hub::{Hub, Shared};
use crate::memory::{Category, Shed};
use crate::metrics::ErrorKind;
use crate::outbox::{CloseWith, Outbox, Outgoing};
use crate::work::{
    ClientShare, Hold, OpenReply, PendingMessage, PendingOpen, RelayItem, SharePermit,
};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use ic_ws_protocol::frames::close_code;
use ic_ws_protocol::types::{ClientId, WsError};
use ic_ws_protocol::{ClientFrame, GatewayFrame};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsProtoError, Message};

/// How often an idle timeout beyond the clock's range is looked at again.
const DAY: Duration = Duration::from_secs(86_400);

/// How long a close frame may take to leave before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

enum State {
    /// Waiting for the client's `Open`.
    New,
    /// `ws_open` in flight.
    Opening { hub: Arc<Hub> },
    /// Attached as `client_id`.
    Open { hub: Arc<Hub>, client_id: ClientId },
    /// Protocol version 2: the open was refused and the refusal is certified as a message of
    /// session `client_id` (`OpenRejected`, or the `Closed` of a resumed closed session):
    /// attached to it until that message is delivered (then the hub closes the connection),
    /// reading nothing more, closed 4003 at `until` if it has not come.
    Ending {
        hub: Arc<Hub>,
        client_id: ClientId,
        until: Instant,
    },
    /// The open failed; waiting for the outbox to deliver the result and close.
    Failed,
}

/// Per-session values that exist only once the client sent an `Open`.
struct Attached {
    outbox: Arc<Outbox>,
    share: Arc<ClientShare>,
}

/// What woke the session up.
enum Event {
    Shutdown,
    Out(Outgoing),
    Opened(Option<OpenReply>),
    Slot(
        Option<SharePermit>,
        Option<tokio::sync::mpsc::OwnedPermit<RelayItem>>,
    ),
    Frame(Option<Result<Message, WsProtoError>>),
    /// The pong owed for a ping left for the socket (or the socket failed).
    PongFlushed(Result<(), WsProtoError>),
    IdleTimer,
}

/// A connection's ping allowance: a token bucket.
struct PingBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl PingBudget {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        PingBudget {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token for a ping or pong at `now`; `false` when the bucket is empty.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the read side asks to end the session.
enum End {
    /// Send this close and stop.
    Close(CloseWith),
    /// The peer went away (closed or errored): nothing to send.
    Gone,
}

fn close_message(close: &CloseWith) -> Message {
    // `CloseWith::new` bounds the reason already; the fields are public, so cut again.
    let reason = ic_ws_protocol::text::truncate_utf8(
        &close.reason,
        ic_ws_protocol::text::MAX_CLOSE_REASON_BYTES,
    );
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(close.code),
        reason: reason.to_string().into(),
    }))
}

/// Sends `close` (bounded in time) and flushes; errors only mean the peer is gone.
pub async fn send_close<W>(ws: &mut W, close: &CloseWith)
where
    W: Sink<Message, Error = WsProtoError> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = ws.send(close_message(close)).await;
        let _ = ws.close().await;
    })
    .await;
}

/// After our close frame: reads (and drops) what the client still sends until its close frame
/// arrives or the stream ends, within [`CLOSE_TIMEOUT`] and at most [`LINGER_MESSAGES`]
/// messages (each bounded by the frame meter and the message size limit). Closing the TCP
/// connection while the client's data sits unread in the kernel's buffer makes the kernel
/// send a reset, which the client may see before our close frame and its code (a 1012 "resume
/// elsewhere" became "connection reset"); RFC 6455 7.1.1 has the server close TCP after the
/// closing handshake.
async fn linger<W>(ws: &mut W)
where
    W: Stream<Item = Result<Message, WsProtoError>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        for _ in 0..LINGER_MESSAGES {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
}

/// Most messages read (and dropped) while waiting for a client's close frame.
const LINGER_MESSAGES: usize = 1024;

/// Which session a connection has attached, known outside its task (to detach it after a
/// panic).
type Attachment = Arc<Mutex<Option<(Arc<Hub>, ClientId)>>>;

/// Runs one client's session to its end. A panic inside ends only this connection.
pub async fn run<C, W>(shared: Arc<Shared<C>>, ws: W, peer: std::net::SocketAddr)
where
    C: CanisterApi,
    W: Stream<Item = Result<Message, WsProtoError>>
        + Sink<Message, Error = WsProtoError>
        + Unpin
        + Send,
{
    run_metered(shared, ws, peer, None).await
}

/// [`run`] over a metered socket (`crate::inbound`): `opened` is set once the session is open,
/// which lifts the meter's limit on messages before the open.
pub async fn run_metered<C, W>(
    shared: Arc<Shared<C>>,
    ws: W,
    peer: std::net::SocketAddr,
    opened: Option<Arc<AtomicBool>>,
) where
    C: CanisterApi,
    W: Stream<Item = Result<Message, WsProtoError>>
        + Sink<Message, Error = WsProtoError>
        + Unpin
        + Send,
{
    let conn_id = shared.next_conn_id();
    let attachment = Attachment::default();
    let session = serve(
        shared.clone(),
        ws,
        peer,
        conn_id,
        attachment.clone(),
        opened,
    );
    let Err(panic) = std::panic::AssertUnwindSafe(session).catch_unwind().await else {
        return;
    };
    shared.metrics.session_panics.inc();
    let cause = crate::health::panic_message(panic.as_ref());
    let attached = attachment.lock().unwrap_or_else(|p| p.into_inner()).take();
    tracing::error!(%peer, client_id = ?attached.as_ref().map(|a| a.1), "session panicked (connection dropped, other clients unaffected): {cause}");
    // The socket is gone with the session; detach it so that the client's resume on a new
    // connection starts clean and the canister hears of the disconnect.
    if let Some((hub, client_id)) = attached {
        if shared.detach(&hub, client_id, conn_id) {
            let item = RelayItem::Close { client_id, conn_id };
            if hub.relay.try_send(item).is_err() {
                tracing::debug!(
                    client_id,
                    "relay queue full: ws_close skipped (the session expires)"
                );
            }
        }
    }
}

async fn serve<C, W>(
    shared: Arc<Shared<C>>,
    mut ws: W,
    peer: std::net::SocketAddr,
    conn_id: u64,
    attachment: Attachment,
    opened: Option<Arc<AtomicBool>>,
) where
    C: CanisterApi,
    W: Stream<Item = Result<Message, WsProtoError>>
        + Sink<Message, Error = WsProtoError>
        + Unpin
        + Send,
{
    let mut closing = shared.closing.subscribe();
    if !shared.metrics.memory.admits_new_work() {
        // Shed new connections first, before the sessions that exist suffer.
        shared.metrics.memory.shed(Shed::Connection);
        send_close(&mut ws, &overloaded()).await;
        return;
    }
    if ws
        .send(Message::Binary(shared.hello.clone()))
        .await
        .is_err()
    {
        return;
    }
    let idle = shared.config.idle_timeout();
    let mut last_activity = Instant::now();
    let mut pings = PingBudget::new(
        shared.config.ping_rate,
        shared.config.ping_burst,
        last_activity,
    );
    // A ping was read and its pong has not left for the socket yet: read nothing more.
    let mut pong_owed = false;
    let idle_sleep = tokio::time::sleep(idle);
    tokio::pin!(idle_sleep);
    let mut state = State::New;
    let mut attached: Option<Attached> = None;
    // A decoded message waiting for an in-flight slot and room in the relay queue.
    let mut held: Option<RelayItem> = None;
    // The relay's answer to our open, while it is in flight.
    let mut open_reply: Option<oneshot::Receiver<OpenReply>> = None;

    let end: CloseWith = loop {
        let reading = held.is_none() && matches!(state, State::New | State::Open { .. });
        // Reads come before writes: a client under a constant stream of deliveries must still
        // get its acknowledgements and pings through. (A client flooding its own reads only
        // delays its own writes, and its reads pause when its messages in flight are bounded.)
        let event = tokio::select! {
            biased;
            _ = closing.wait_for(|c| *c) => Event::Shutdown,
            ok = async {
                match &mut open_reply { Some(reply) => reply.await.ok(), None => std::future::pending().await }
            } => Event::Opened(ok),
            sent = async {
                let (Some(RelayItem::Message(m)), State::Open { hub, .. }, Some(a)) = (&held, &state, &attached) else {
                    return std::future::pending().await;
                };
                let relay = hub.relay.clone();
                let permit = a.share.acquire(m.size).await;
                (permit, relay.reserve_owned().await.ok())
            } => Event::Slot(sent.0, sent.1),
            io = async {
                if pong_owed {
                    Event::PongFlushed(ws.flush().await)
                } else {
                    Event::Frame(ws.next().await)
                }
            }, if reading || pong_owed => io,
            out = async { match &attached { Some(a) => a.outbox.next().await, None => std::future::pending().await } } => Event::Out(out),
            _ = &mut idle_sleep => Event::IdleTimer,
        };
        match event {
            Event::Shutdown => {
                break CloseWith::new(
                    shared.config.shutdown_close_code,
                    "gateway restarting: reconnect and resume",
                );
            }
            Event::Out(Outgoing::Close(c)) => break c,
            Event::Out(Outgoing::Frame(frame, since)) => {
                let Some(a) = &attached else { continue };
                match write(&shared, &mut ws, &a.outbox, frame).await {
                    Ok(()) => {
                        if let Some(since) = since {
                            shared
                                .metrics
                                .delivery_delay
                                .observe_duration(since.elapsed());
                        }
                    }
                    Err(End::Close(c)) => break c,
                    Err(End::Gone) => break CloseWith::new(1006, ""),
                }
            }
            Event::Opened(ok) => {
                open_reply = None;
                state = match (ok, std::mem::replace(&mut state, State::Failed)) {
                    (Some(OpenReply::Opened(ok)), State::Opening { hub, .. }) => {
                        *attachment.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((hub.clone(), ok.client_id));
                        if let Some(opened) = &opened {
                            opened.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        State::Open {
                            hub,
                            client_id: ok.client_id,
                        }
                    }
                    (Some(OpenReply::Certifying(client_id)), State::Opening { hub, .. }) => {
                        *attachment.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((hub.clone(), client_id));
                        let wait = shared.config.open_outcome_timeout();
                        let until = Instant::now()
                            .checked_add(wait)
                            .unwrap_or_else(Instant::now);
                        idle_sleep.as_mut().reset(until);
                        State::Ending {
                            hub,
                            client_id,
                            until,
                        }
                    }
                    // Failed opens: the relay queued the OpenResult and a 4003/4005 close.
                    _ => State::Failed,
                };
                // An open dropped without an answer was lost with a failed relay worker: the
                // client opens again (here, once the relay is back, or elsewhere).
                if matches!(state, State::Failed)
                    && attached.as_ref().is_some_and(|a| !a.outbox.is_closing())
                {
                    break CloseWith::new(
                        close_code::SERVICE_RESTART,
                        "gateway relay restarted: reconnect and resume",
                    );
                }
            }
            Event::Slot(permit, slot) => match (held.take(), slot) {
                (Some(RelayItem::Message(mut m)), Some(slot)) => {
                    m.hold.permit = permit;
                    if let Some(charge) = &mut m.hold.charge {
                        charge.move_to(Category::Relay);
                    }
                    shared.metrics.messages_in.inc();
                    slot.send(RelayItem::Message(m));
                }
                _ => break CloseWith::new(1011, "relay unavailable"),
            },
            Event::PongFlushed(Ok(())) => pong_owed = false,
            Event::PongFlushed(Err(_)) => break CloseWith::new(1006, ""),
            Event::Frame(frame) => {
                if let (Some(_), State::Open { client_id, .. }) =
                    (&shared.config.test_hook_dir, &state)
                {
                    let hook = format!("panic-session-{client_id}");
                    if crate::testhook::fire(&shared.config, &hook) {
                        panic!("test hook: session of client {client_id} panics");
                    }
                }
                let frame = match frame {
                    None => break CloseWith::new(1006, ""),
                    Some(Err(e)) => match read_error(&shared, e) {
                        End::Close(c) => break c,
                        End::Gone => break CloseWith::new(1006, ""),
                    },
                    Some(Ok(frame)) => frame,
                };
                if let Message::Ping(_) | Message::Pong(_) = frame {
                    // Not activity: the idle timer keeps running.
                    if !pings.take(Instant::now()) {
                        shared.metrics.error(ErrorKind::PingFlood);
                        break CloseWith::new(
                            close_code::POLICY_VIOLATION,
                            "ping flood: too many pings",
                        );
                    }
                    pong_owed = matches!(frame, Message::Ping(_));
                    continue;
                }
                last_activity = Instant::now();
                match on_frame(
                    &shared,
                    frame,
                    &mut state,
                    &mut attached,
                    &mut open_reply,
                    conn_id,
                ) {
                    Ok(Some(item)) => held = Some(item),
                    Ok(None) => {}
                    Err(End::Close(c)) => break c,
                    Err(End::Gone) => break CloseWith::new(1006, ""),
                }
            }
            Event::IdleTimer if matches!(state, State::Ending { .. }) => {
                if let State::Ending { until, .. } = &state {
                    if *until > Instant::now() {
                        idle_sleep.as_mut().reset(*until);
                        continue;
                    }
                }
                break CloseWith::new(
                    close_code::OPEN_FAILED,
                    "open failed: the certified outcome did not arrive in time",
                );
            }
            Event::IdleTimer => match last_activity.checked_add(idle) {
                Some(deadline) if deadline > Instant::now() => idle_sleep.as_mut().reset(deadline),
                Some(_) => break CloseWith::new(close_code::IDLE_TIMEOUT, "idle timeout"),
                // A timeout beyond the clock's range: never idle; look again in a day.
                None => idle_sleep
                    .as_mut()
                    .reset(Instant::now().checked_add(DAY).unwrap_or(last_activity)),
            },
        }
    };
    if end.code != 1006 {
        send_close(&mut ws, &end).await;
    }
    tracing::debug!(%peer, code = end.code, reason = %end.reason, "session ended");
    // Tell the canister the client went away (it stays resumable), unless the session ended
    // in the canister already or another connection took it over.
    if let State::Open { hub, client_id } | State::Ending { hub, client_id, .. } = state {
        if end.code != close_code::SESSION_CLOSED && shared.detach(&hub, client_id, conn_id) {
            let item = RelayItem::Close { client_id, conn_id };
            if tokio::time::timeout(CLOSE_TIMEOUT, hub.relay.send(item))
                .await
                .is_err()
            {
                tracing::debug!(
                    client_id,
                    "relay queue full: ws_close skipped (the session expires)"
                );
            }
        }
    }
    // Last: the canister hears of the disconnect without waiting for the client's close.
    if end.code != 1006 {
        linger(&mut ws).await;
    }
}

/// Writes one frame, giving up when the client is aborted meanwhile or the write blocks longer
/// than the write timeout.
async fn write<C, W>(
    shared: &Shared<C>,
    ws: &mut W,
    outbox: &Outbox,
    frame: Bytes,
) -> Result<(), End>
where
    W: Sink<Message, Error = WsProtoError> + Unpin,
{
    tokio::select! {
        r = tokio::time::timeout(shared.config.write_timeout(), ws.send(Message::Binary(frame))) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                shared.metrics.error(ErrorKind::ClientIo);
                Err(End::Gone)
            }
            Err(_) => {
                shared.metrics.buffer_overflows.inc();
                Err(End::Close(CloseWith::new(close_code::SLOW_CLIENT, "slow client: write timed out")))
            }
        },
        c = outbox.until_aborted() => Err(End::Close(c)),
    }
}

fn overloaded() -> CloseWith {
    CloseWith::new(
        close_code::OVERLOADED,
        "gateway overloaded: try again later",
    )
}

fn read_error<C>(shared: &Shared<C>, e: WsProtoError) -> End {
    match e {
        WsProtoError::Capacity(e) => {
            shared.metrics.error(ErrorKind::FrameTooBig);
            End::Close(CloseWith::new(1009, format!("frame too big: {e}")))
        }
        WsProtoError::Protocol(e) => {
            shared.metrics.error(ErrorKind::MalformedFrame);
            End::Close(CloseWith::new(1002, format!("protocol error: {e}")))
        }
        WsProtoError::Utf8(_) => {
            shared.metrics.error(ErrorKind::MalformedFrame);
            End::Close(CloseWith::new(1007, "invalid UTF-8"))
        }
        WsProtoError::ConnectionClosed | WsProtoError::AlreadyClosed => End::Gone,
        WsProtoError::Io(e) => match crate::inbound::meter_error(&e) {
            // A frame header announced more than the memory budget can take now.
            Some(crate::inbound::MeterError::BudgetExceeded { .. }) => {
                shared.metrics.memory.shed(Shed::Frame);
                End::Close(overloaded())
            }
            Some(e @ crate::inbound::MeterError::FrameTimeout { .. }) => {
                shared.metrics.error(ErrorKind::SlowFrame);
                End::Close(CloseWith::new(close_code::POLICY_VIOLATION, e.to_string()))
            }
            Some(e @ crate::inbound::MeterError::BeforeOpen { .. }) => {
                shared.metrics.error(ErrorKind::FrameTooBig);
                End::Close(CloseWith::new(1009, format!("frame too big: {e}")))
            }
            None => {
                shared.metrics.error(ErrorKind::ClientIo);
                End::Gone
            }
        },
        _ => {
            shared.metrics.error(ErrorKind::ClientIo);
            End::Gone
        }
    }
}

fn bad_frame<C>(shared: &Shared<C>, why: impl Into<String>) -> End {
    shared.metrics.error(ErrorKind::MalformedFrame);
    End::Close(CloseWith::new(close_code::POLICY_VIOLATION, why))
}

/// Handles one frame from the client; returns a message to relay.
fn on_frame<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    frame: Message,
    state: &mut State,
    attached: &mut Option<Attached>,
    open_reply: &mut Option<oneshot::Receiver<OpenReply>>,
    conn_id: u64,
) -> Result<Option<RelayItem>, End> {
    let bytes = match frame {
        Message::Binary(b) => b,
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(None),
        Message::Close(_) => return Err(End::Gone),
        Message::Text(_) => {
            return Err(bad_frame(
                shared,
                "text frames are not part of the protocol",
            ))
        }
    };
    let client_frame: ClientFrame = match ic_ws_protocol::decode(&bytes) {
        Ok(f) => f,
        Err(e) => return Err(bad_frame(shared, format!("not a ClientFrame: {e}"))),
    };
    match (client_frame, &*state) {
        (
            ClientFrame::Open {
                canister_id,
                request,
            },
            State::New,
        ) => {
            let outbox = Arc::new(Outbox::accounted(
                shared.config.send_buffer_frames,
                shared.config.send_buffer_bytes,
                shared.metrics.memory.clone(),
            ));
            *attached = Some(Attached {
                outbox: outbox.clone(),
                share: Arc::new(ClientShare::new(
                    shared.config.max_inflight_per_client,
                    shared.config.max_inflight_bytes_per_client,
                    shared.config.refusal_budget,
                )),
            });
            let refuse = |error: WsError| -> Result<Option<RelayItem>, End> {
                if let Ok(b) = ic_ws_protocol::encode(&GatewayFrame::OpenResult(Err(error.clone())))
                {
                    outbox.push(Bytes::from(b), None);
                }
                outbox.finish(CloseWith::new(
                    close_code::OPEN_FAILED,
                    format!("open failed: {error}"),
                ));
                Ok(None)
            };
            if request.gateway != shared.principal {
                *state = State::Failed;
                return refuse(WsError::GatewayMismatch);
            }
            if !shared.metrics.memory.admits_new_work() {
                shared.metrics.memory.shed(Shed::Open);
                *state = State::Failed;
                if let Ok(b) = ic_ws_protocol::encode(&GatewayFrame::OpenResult(Err(
                    WsError::LimitReached("gateway overloaded".into()),
                ))) {
                    outbox.push(Bytes::from(b), None);
                }
                outbox.finish(overloaded());
                return Ok(None);
            }
            let charge = shared.metrics.memory.charge(
                Category::Relay,
                bytes.len().saturating_add(crate::work::ENTRY_OVERHEAD),
            );
            let hub = match shared.hub(canister_id) {
                Ok(h) => h,
                Err(e) => {
                    *state = State::Failed;
                    return refuse(e);
                }
            };
            let (tx, rx) = oneshot::channel();
            let item = RelayItem::Open(PendingOpen {
                request,
                conn_id,
                outbox: outbox.clone(),
                reply: tx,
                charge: Some(charge),
            });
            if let Err(e) = hub.relay.try_send(item) {
                drop(e);
                *state = State::Failed;
                return refuse(WsError::LimitReached(
                    "gateway overloaded: relay queue full".into(),
                ));
            }
            *state = State::Opening { hub };
            *open_reply = Some(rx);
            Ok(None)
        }
        (ClientFrame::Open { .. }, _) => {
            Err(bad_frame(shared, "one session per WebSocket: second Open"))
        }
        (ClientFrame::Message(message), State::Open { client_id, .. }) => {
            if message.client_id != *client_id {
                return Err(bad_frame(shared, "message for another client id"));
            }
            let Some(a) = attached else {
                return Err(End::Close(CloseWith::new(1011, "internal error")));
            };
            // The decoded message is held until the relay takes it: charged from now on. When
            // the budget is spent, this client's new message is shed, not someone's queue.
            let cost = bytes.len().saturating_add(crate::work::ENTRY_OVERHEAD);
            let Some(charge) = shared.metrics.memory.try_charge(Category::Held, cost) else {
                shared.metrics.memory.shed(Shed::Message);
                return Err(End::Close(overloaded()));
            };
            Ok(Some(RelayItem::Message(PendingMessage {
                size: bytes.len(),
                message,
                outbox: a.outbox.clone(),
                hold: Hold {
                    share: Some(a.share.clone()),
                    permit: None,
                    charge: Some(charge),
                },
            })))
        }
        (ClientFrame::Message(_), _) => Err(bad_frame(shared, "message before a successful open")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn close_frames_carry_at_most_123_bytes(reason in proptest::prelude::any::<String>(), code in 1000u16..5000) {
            // Built directly (public fields), so not bounded by `CloseWith::new`.
            let close = CloseWith { code, reason: reason.clone() };
            let Message::Close(Some(frame)) = close_message(&close) else {
                panic!("not a close frame");
            };
            proptest::prop_assert!(frame.reason.len() <= 123);
            proptest::prop_assert!(reason.starts_with(frame.reason.as_str()));
            let bounded = CloseWith::new(code, reason);
            proptest::prop_assert!(bounded.reason.len() <= 123);
        }
    }
}
