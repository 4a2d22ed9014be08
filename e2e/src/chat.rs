//! Helpers for end-to-end tests with the chat example (`ic-ws-example-chat`): its candid
//! message types (mirroring examples/chat), Rust clients connected through a gateway, and
//! waiting for what they receive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use candid::{CandidType, Principal};
use ic_ws_client::{Backoff, Client, ClientConfig, ClientError, Event};
use serde::Deserialize;

/// The chat canister's package. Its types are mirrored below (the crate is a cdylib only);
/// a drift shows up as a decode error in every test.
pub const CHAT: &str = "ic-ws-example-chat";

/// Generous deadline for anything the tests wait for (a loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(120);

/// `on_open` argument of the chat.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpenArgs {
    /// Display name (unique in the chat).
    pub name: String,
    /// Room to join (default `lobby`).
    pub room: Option<String>,
}

/// What a chat client sends.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ChatIn {
    /// Say something to the room (1 to 1000 characters).
    Say {
        /// The text.
        text: String,
    },
    /// Move to another room.
    SwitchRoom {
        /// The room.
        room: String,
    },
}

/// What the chat canister sends.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ChatOut {
    /// Someone said something.
    Message {
        /// Sender's name.
        from: String,
        /// Sender's client id.
        client: u64,
        /// The room.
        room: String,
        /// The text.
        text: String,
        /// Canister time (ns).
        at_ns: u64,
    },
    /// Someone joined.
    Joined {
        /// Name.
        name: String,
        /// Client id.
        client: u64,
        /// The room.
        room: String,
    },
    /// Someone left.
    Left {
        /// Name.
        name: String,
        /// Client id.
        client: u64,
        /// The room.
        room: String,
        /// Why.
        reason: String,
    },
    /// The members present (sent on joining a room).
    Members {
        /// The room.
        room: String,
        /// Names.
        names: Vec<String>,
        /// How many.
        total: u64,
    },
}

/// Open arguments for `name` in the default room.
pub fn open_args(name: &str) -> Vec<u8> {
    candid::encode_one(OpenArgs {
        name: name.into(),
        room: None,
    })
    .unwrap_or_default()
}

/// A client's clock that a test can move forward (offset in nanoseconds).
#[derive(Clone, Default)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    /// Moves the clock `by` ahead of real time (replaces any earlier offset).
    pub fn set_ahead(&self, by: Duration) {
        self.0.store(by.as_nanos() as u64, Ordering::SeqCst);
    }

    /// The clock as a client clock function.
    pub fn clock_fn(&self) -> ic_ws_client::ClockFn {
        let offset = self.0.clone();
        let system = ic_ws_client::system_clock();
        Arc::new(move || system() + offset.load(Ordering::SeqCst))
    }
}

/// Client settings for a chat member `name` through `gateway_url`.
pub fn config(
    gateway_url: &str,
    canister: Principal,
    root_key_der: &[u8],
    name: &str,
) -> ClientConfig {
    let mut c = ClientConfig::new(gateway_url, canister)
        .with_root_key(root_key_der.to_vec())
        .with_open_args(open_args(name));
    c.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(2),
        multiplier: 2.0,
        max_attempts: Some(200),
    };
    c.open_timeout = Duration::from_secs(60);
    c
}

/// Connects a chat member.
pub async fn join(config: ClientConfig) -> Result<Client, ClientError> {
    tokio::time::timeout(WAIT, Client::connect(config))
        .await
        .map_err(|_| ClientError::Timeout("connect"))?
}

/// Says `text`.
pub async fn say(client: &Client, text: &str) -> Result<u64, ClientError> {
    client.send(&ChatIn::Say { text: text.into() }).await
}

/// Everything a test observes on one client, in order.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Chat messages `(from, text)`, in delivery order.
    pub said: Vec<(String, String)>,
    /// Non-message events (opens, disconnects with their errors, ...).
    pub events: Vec<Event>,
}

impl Observed {
    /// Texts said by `from`, in order.
    pub fn texts_from(&self, from: &str) -> Vec<String> {
        self.said
            .iter()
            .filter(|(f, _)| f == from)
            .map(|(_, t)| t.clone())
            .collect()
    }

    /// The errors of `Disconnected` events.
    pub fn disconnects(&self) -> Vec<ClientError> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Disconnected { error, .. } => Some(error.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Reads events into `seen` until `done(seen)` holds. Fails on a terminal event or after
/// [`WAIT`].
pub async fn read_until(
    client: &mut Client,
    seen: &mut Observed,
    mut done: impl FnMut(&Observed) -> bool,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(seen) {
        let event = match tokio::time::timeout_at(deadline, client.next_event()).await {
            Err(_) => return Err(format!("timed out; observed so far: {seen:?}")),
            Ok(None) => return Err(format!("client stopped; observed: {seen:?}")),
            Ok(Some(e)) => e,
        };
        match event {
            Event::Message(m) => match m.decode::<ChatOut>() {
                Ok(m) => {
                    if let ChatOut::Message { from, text, .. } = m.value {
                        seen.said.push((from, text));
                    }
                }
                Err(e) => return Err(format!("undecodable chat message: {e}")),
            },
            e @ (Event::Failed(_) | Event::Closed(_)) => {
                return Err(format!("terminal event {e:?}; observed: {seen:?}"))
            }
            e => seen.events.push(e),
        }
    }
    Ok(())
}

/// The texts `prefix0`, `prefix1`, ... `prefix{n-1}`.
pub fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}
