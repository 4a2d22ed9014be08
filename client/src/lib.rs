//! `ic-ws-client`: the native Rust client of ic-ws.
//!
//! It talks to a canister through an **untrusted** ic-ws gateway (docs/protocol.md):
//! - every own message is signed with a fresh Ed25519 session key (seed from the OS CSPRNG),
//!   carries the next inbound sequence number and an acknowledgement;
//! - every message from the canister is checked before the application sees it: the BLS
//!   certificate against the IC root key, its age, the tree root against the certified data,
//!   the content hash at `/ws/<client>/<seq>`, the sequence (no gap, duplicate or reordering),
//!   the client id, and the certified `Opened` binding of the session to this key and open;
//! - a failed check drops the frame and the connection, is reported with the exact check
//!   ([`ClientError::Verify`] / [`ClientError::Binding`]), and the client reconnects (moving to
//!   the next configured gateway) with exponential backoff and resumes the session: nothing is
//!   lost or duplicated, own unacknowledged messages are re-sent from the certified
//!   `next_inbound_seq`;
//! - only certified outcomes are facts (protocol version 2): [`Event::MessageRejected`],
//!   [`Event::OpenRejected`] and [`Event::Closed`] come from certified messages; what the
//!   gateway merely claims (`MessageError`, an `OpenResult` error, close codes) is shown as
//!   [`Event::Unverified`] and only makes the client retry through the next gateway: it never
//!   drops a message, skips a sequence number or stops the client (`connect` included);
//! - a session whose resume every gateway refuses is given up only when the client's own
//!   clock proves it expired: then [`Event::SessionLost`] names the own messages dropped and
//!   a new session starts;
//! - `send` refuses an `App` payload over the canister's certified limit
//!   ([`ClientError::TooLarge`], nothing signed);
//! - keep-alives are sent when idle (30 s) and when more than 64 messages are unacknowledged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ic_ws_client::ClientError> {
//! use ic_ws_client::{Client, ClientConfig};
//! let canister = candid::Principal::from_text("aaaaa-aa").unwrap();
//! let config = ClientConfig::new("ws://127.0.0.1:8080", canister);
//! let mut client = Client::connect(config).await?;
//! client.send(&"hello".to_string()).await?;
//! let reply = client.recv::<String>().await?;
//! println!("{} (seq {}, topic {:?})", reply.value, reply.seq, reply.topic);
//! # Ok(()) }
//! ```
//!
//! Modules: [`config`] (settings), [`error`] (the error enum), [`event`] (what the app
//! receives), `driver` (the connection task: I/O only). The protocol decisions live in the
//! I/O-free state machine [`ic_ws_protocol::client::ClientSession`].
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]
// Gateway input never makes the client panic: text is cut with `ic_ws_protocol::text`, and no
// string slicing, indexing or unchecked arithmetic outside tests.
#![warn(
    clippy::string_slice,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
#![cfg_attr(
    test,
    allow(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        reason = "tests index their own fixtures"
    )
)]

pub mod config;
mod driver;
pub mod error;
pub mod event;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use candid::{CandidType, Principal};
use futures_util::Stream;
use ic_ws_protocol::{ClientId, CloseReason, MessageKind};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

pub use config::{identity_proof, system_clock, Backoff, ClientConfig, ClockFn, OnSessionLost};
use driver::{Command, Driver};
pub use error::{BindingError, Claim, ClientError};
pub use event::{Event, Message, RawMessage};
pub use ic_ws_protocol::verify::VerifyError;

/// `at + by`, or a year after `at` when that is beyond the clock's range (a configured
/// duration too long to matter).
pub(crate) fn later(at: tokio::time::Instant, by: Duration) -> tokio::time::Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    at.checked_add(by)
        .or_else(|| at.checked_add(YEAR))
        .unwrap_or(at)
}

/// State shared between the handle and the connection task (read-only for the handle).
#[derive(Debug)]
pub(crate) struct Shared {
    client_id: AtomicU64,
    /// Next outbound sequence number expected (= verified messages received in the session).
    received: AtomicU64,
    reconnects: AtomicU64,
}

const NO_CLIENT: u64 = u64::MAX;

impl Shared {
    fn set_client_id(&self, id: Option<ClientId>) {
        self.client_id
            .store(id.unwrap_or(NO_CLIENT), Ordering::Relaxed);
        if id.is_none() {
            self.received.store(0, Ordering::Relaxed);
        }
    }
}

/// A cloneable handle for sending own messages (while another task reads the stream).
#[derive(Clone, Debug)]
pub struct Sender {
    commands: mpsc::Sender<Command>,
}

impl Sender {
    /// Signs and sends an application message (candid-encoded `msg`). Returns its inbound
    /// sequence number. While disconnected the message is queued and sent after the resume.
    pub async fn send<T: CandidType>(&self, msg: &T) -> Result<u64, ClientError> {
        let payload = candid::encode_one(msg).map_err(|e| ClientError::Encode(e.to_string()))?;
        self.send_raw(payload).await
    }

    /// Sends an already candid-encoded application payload.
    pub async fn send_raw(&self, payload: Vec<u8>) -> Result<u64, ClientError> {
        self.command(MessageKind::App(payload)).await
    }

    /// Sends a signed keep-alive now (it also carries the current ack).
    pub async fn keep_alive(&self) -> Result<u64, ClientError> {
        self.command(MessageKind::KeepAlive).await
    }

    async fn command(&self, kind: MessageKind) -> Result<u64, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Send { kind, reply })
            .await
            .map_err(|_| ClientError::Stopped)?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }
}

/// A connected ic-ws session. Dropping it closes the WebSocket (the session stays resumable
/// on the canister until it expires); [`Client::close`] ends the session.
#[derive(Debug)]
pub struct Client {
    sender: Sender,
    events: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
    canister_id: Principal,
    principal: Option<Principal>,
}

impl Client {
    /// Connects to the first gateway, opens a new session and waits for its certified
    /// `Opened`. A failed attempt (network, failed check, an uncertified refusal claimed by
    /// the gateway) is retried through the next gateway within `config.backoff`; it fails
    /// only with a certified refusal ([`ClientError::OpenRejected`]) or after the policy's
    /// attempts ([`ClientError::GaveUp`]).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        if let Some(url) = config.mainnet_key_with_local_gateway() {
            tracing::warn!(
                gateway = %url,
                "the client verifies with the mainnet root key but the gateway is on this machine: \
                 a local replica (dfx, PocketIC, the embedded replica) signs with its own key, so \
                 every certificate will fail as BadCertificateSignature; set \
                 ClientConfig::with_root_key (the replica's /api/v2/status gives it)"
            );
        }
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (events_tx, mut events_rx) = mpsc::channel(config.event_buffer);
        let shared = Arc::new(Shared {
            client_id: AtomicU64::new(NO_CLIENT),
            received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        let canister_id = config.canister_id;
        let principal = config.identity.as_ref().and_then(|i| i.sender().ok());
        let driver = Driver {
            session: {
                let session = ic_ws_protocol::client::ClientSession::new(
                    config.session_config(),
                    driver::os_key_source(),
                );
                match config.prover() {
                    Some(prover) => session.with_identity(prover),
                    None => session,
                }
            },
            config,
            commands: commands_rx,
            events: events_tx,
            shared: shared.clone(),
            url_index: 0,
            opened: false,
        };
        tokio::spawn(driver.run());
        loop {
            match events_rx.recv().await {
                Some(Event::Opened { .. }) => break,
                Some(Event::Failed(e)) => return Err(e),
                // Failed connections (uncertified refusals included) are retried within the
                // backoff policy, through the next gateway.
                Some(Event::Disconnected { error, retry_in }) => {
                    tracing::info!(%error, ?retry_in, "ic-ws open failed; retrying");
                }
                Some(Event::Unverified(claim)) => {
                    tracing::info!(%claim, "unverified gateway claim");
                }
                // The certified refusal: `Failed(OpenRejected)` follows.
                Some(Event::OpenRejected { .. }) | Some(Event::SessionLost { .. }) => {}
                Some(other) => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected event before the first Opened: {other:?}"
                    )))
                }
                None => return Err(ClientError::Stopped),
            }
        }
        Ok(Client {
            sender: Sender {
                commands: commands_tx,
            },
            events: events_rx,
            shared,
            canister_id,
            principal,
        })
    }

    /// Issue 10: the IC principal the canister bound to this session (certified in every
    /// `Opened`, which the client checks), none for an anonymous session.
    pub fn principal(&self) -> Option<Principal> {
        self.principal
    }

    /// The current session's client id (changes only after [`Event::SessionLost`]).
    pub fn client_id(&self) -> Option<ClientId> {
        match self.shared.client_id.load(Ordering::Relaxed) {
            NO_CLIENT => None,
            id => Some(id),
        }
    }

    /// The canister this client talks to.
    pub fn canister_id(&self) -> Principal {
        self.canister_id
    }

    /// Verified messages received in the current session (= the next expected sequence).
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Reconnections so far.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// A cloneable sending handle.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Signs and sends an application message; see [`Sender::send`].
    pub async fn send<T: CandidType>(&self, msg: &T) -> Result<u64, ClientError> {
        self.sender.send(msg).await
    }

    /// Sends an already candid-encoded payload; see [`Sender::send_raw`].
    pub async fn send_raw(&self, payload: Vec<u8>) -> Result<u64, ClientError> {
        self.sender.send_raw(payload).await
    }

    /// The next event of any kind; `None` after the last one.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next verified application message, decoded as `T`. Reconnections and unverified
    /// gateway claims are handled silently (logged); every other event is returned as an
    /// error: certified rejections of own messages ([`ClientError::MessageRejected`]) and
    /// [`ClientError::SessionLost`] (the client continues, call again), the session's close
    /// ([`ClientError::SessionClosed`]) and terminal failures (nothing follows).
    pub async fn recv<T: CandidType + DeserializeOwned>(
        &mut self,
    ) -> Result<Message<T>, ClientError> {
        loop {
            match self.events.recv().await {
                None => return Err(ClientError::Stopped),
                Some(Event::Message(m)) => return m.decode::<T>(),
                Some(Event::Opened { .. }) => {}
                Some(Event::Disconnected { error, retry_in }) => {
                    tracing::info!(%error, ?retry_in, "ic-ws connection lost; reconnecting");
                }
                Some(Event::Unverified(claim)) => {
                    tracing::info!(%claim, "unverified gateway claim; retrying elsewhere");
                }
                Some(Event::MessageRejected { seq, error }) => {
                    return Err(ClientError::MessageRejected { seq, error })
                }
                Some(Event::OpenRejected { client_id, error }) => {
                    return Err(ClientError::OpenRejected { client_id, error })
                }
                Some(Event::SessionLost {
                    client_id,
                    dropped_outgoing,
                }) => {
                    return Err(ClientError::SessionLost {
                        client_id,
                        dropped_outgoing,
                    })
                }
                Some(Event::Closed(reason)) => return Err(ClientError::SessionClosed(reason)),
                Some(Event::Failed(e)) => return Err(e),
            }
        }
    }

    /// The verified messages as a [`Stream`] (ends after a terminal error). Keep a
    /// [`Client::sender`] to send meanwhile.
    pub fn into_stream<T: CandidType + DeserializeOwned>(
        self,
    ) -> impl Stream<Item = Result<Message<T>, ClientError>> {
        futures_util::stream::unfold(Some(self), |client| async move {
            let mut client = client?;
            let item = client.recv::<T>().await;
            let terminal = matches!(&item, Err(e) if e.is_terminal());
            Some((item, (!terminal).then_some(client)))
        })
    }

    /// Ends the session: sends a signed `Close` and waits (up to `wait`) for the canister's
    /// certified `Closed`. Application messages arriving meanwhile are discarded.
    pub async fn close(
        mut self,
        code: u16,
        reason: impl Into<String>,
        wait: Duration,
    ) -> Result<CloseReason, ClientError> {
        let kind = MessageKind::Close {
            code,
            reason: reason.into(),
        };
        self.sender.command(kind).await?;
        let deadline = later(tokio::time::Instant::now(), wait);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Err(ClientError::Timeout("the certified Closed")),
                Ok(None) => return Err(ClientError::Stopped),
                Ok(Some(Event::Closed(reason))) => return Ok(reason),
                Ok(Some(Event::Failed(e))) => return Err(e),
                Ok(Some(_)) => {}
            }
        }
    }
}
