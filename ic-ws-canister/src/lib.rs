//! The ic-ws runtime inside a canister: WebSocket-style sessions for Internet Computer
//! canisters, relayed by an untrusted gateway.
//!
//! This crate owns everything that happens in the canister (the wire protocol is in
//! `ic-ws-protocol`, normative text in `docs/protocol.md`):
//!
//! - sessions bound to the client's Ed25519 session key and to the gateway they opened
//!   through; signature, sequence, replay and gateway checks on every inbound message;
//! - per-session outbound queues with sequence numbers, certified in a hash tree whose root
//!   goes into `certified_data` (composable with the app's own, see [`certification`]);
//! - acknowledged retention and resume through any gateway; idle expiry; limits with an
//!   explicit overflow policy ([`WsConfig`]);
//! - everything in stable memory ([`memory`]), so upgrades lose nothing.
//!
//! # Writing an app
//!
//! Annotate handlers with the attributes of `ic-ws-macros` (re-exported here); they generate
//! the `ws_open`, `ws_message`, `ws_close` and `ws_poll` endpoints:
//!
//! ```ignore
//! use ic_ws_canister::{on_message, send, ClientId};
//!
//! #[on_message]
//! fn on_message(client: ClientId, msg: ChatMessage) {
//!     // Echo: queued in stable memory, certified, delivered by the gateway's next poll.
//!     send(client, &Reply { text: msg.text }).ok();
//! }
//! ```
//!
//! From any update method (handlers, the app's own endpoints, timers) the app calls
//! [`send`], [`publish`], [`subscribe`], [`unsubscribe`], [`close`], and inspects sessions
//! with [`client_info`] and [`clients`]. An app that knows when it will next send (a timer)
//! says so with [`expect_messages_at`]: gateways read it from the poll reply
//! (`next_poll_ms`) and poll then instead of on their own, slower idle schedule.
//!
//! # Handlers and re-entrancy
//!
//! Handlers may call every function of this crate. `on_close` is called exactly once per
//! session, never from inside another runtime call: closes that happen during a ws endpoint
//! (client close, expiry, overflow, `close` from a handler) are reported when that endpoint's
//! work is done; a `close` from the app's own code outside ws endpoints reports at once.
//!
//! # Housekeeping and canister-wide limits
//!
//! Idle sessions expire (`on_close` runs for them), closed sessions are deleted after their
//! retention, and gateway records without sessions after theirs. The runtime does this from a
//! timer it arms itself (with `ic-cdk-timers`, which the app may use as well) for when the
//! next of these is due, never inside a ws endpoint call: no caller pays for other sessions'
//! expiry or for what their `on_close` does. A timer run stops once it has spent
//! [`WsConfig::housekeeping_instructions`] (checked between two sessions) and re-arms at once
//! if work is left. [`housekeeping`] runs one pass immediately.
//!
//! Besides the per-gateway and per-session limits, canister-wide caps bound what many
//! principals acting as gateways at once (Sybil callers) can make the canister hold: sessions,
//! retained bytes, subscriptions and gateway records ([`WsConfig`], [`usage`]). Each is
//! checked before anything changes (`LimitReached`). [`GatewayPolicy`] restricts who may act
//! as a gateway (an allowlist, or the app's own callback).
//!
//! # Upgrades
//!
//! All state is in stable memory. The certification tree and the gateways' delivery logs
//! live in the heap and are rebuilt from stable memory during the upgrade: `#[on_message]`
//! generates the canister's `canister_post_upgrade`, which calls [`post_upgrade`] (after the
//! app's own post-upgrade function, named with `#[on_message(post_upgrade = path)]`). An app
//! that writes its own `#[ic_cdk::post_upgrade]` sets `#[on_message(post_upgrade = false)]`
//! and must call [`post_upgrade`] from it. If it does not, the state is rebuilt by the first
//! update call that uses the runtime, and until then `ws_poll` refuses with an
//! `InvalidArgument` that says so (a query cannot keep the rebuild: each poll would pay for
//! all of it).
//!
//! What the rebuild costs is bounded by the configuration: each retained message stores its
//! content hash, so the rebuild reads 76 bytes per message and hashes only the tree, whatever
//! the message sizes; [`WsConfig::max_retained_messages`] (canister-wide) and
//! [`WsConfig::max_sessions`] bound the count, and [`configure`] refuses a configuration
//! whose worst-case rebuild ([`WsConfig::worst_case_rebuild_instructions`]) exceeds
//! [`config::REBUILD_INSTRUCTION_BUDGET`]. Figures: BENCHMARKS.md, "Upgrades at the limits".
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![warn(missing_docs)]

mod arena;
pub mod certification;
pub mod config;
mod ed25519;
mod env;
mod hash_tree;
pub mod memory;
mod runtime;
mod store;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_identity;
mod ws_tree;

use candid::{CandidType, Principal};
use serde::Deserialize;
use std::cell::Cell;

pub use config::{
    set_gateway_filter, set_identity_filter, GatewayPolicy, IdentityFilter, IdentityPolicy,
    OverflowPolicy, WsConfig, MAINNET_IC_ROOT_KEY_DER,
};
pub use ic_ws_protocol::identity::{IdentityError, KeyKind};
// The handler attributes; they generate the ws endpoints (docs in ic-ws-macros).
pub use ic_ws_macros::{on_close, on_message, on_open};
pub use ic_ws_protocol::{
    ClientId, CloseBatch, CloseReason, CloseResult, MessageBatch, MessageResult, OpenBatch,
    OpenResult, PollRequest, PollResult, WsError,
};

/// Errors of the app-facing API ([`send`], [`publish`], [`subscribe`], ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, CandidType, Deserialize)]
pub enum Error {
    /// No session with this id (never opened, or deleted after its close).
    #[error("unknown client {0}")]
    UnknownClient(ClientId),
    /// The session is closed.
    #[error("client {0} is closed")]
    Closed(ClientId),
    /// The payload exceeds `max_outbound_payload_bytes`.
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Payload size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The session's queue is full and the overflow policy is `Reject`: nothing was queued.
    #[error("queue of client {0} is full")]
    QueueFull(ClientId),
    /// The session's queue was full and the overflow policy is `Close`: the session is now
    /// closed with `QueueOverflow`.
    #[error("queue of client {0} overflowed: session closed")]
    QueueOverflowClosed(ClientId),
    /// A configured limit (e.g. subscribers per topic).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The value could not be candid-encoded.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// A bad argument (topic name, configuration, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// Former name of [`Error`] for `send`.
pub type SendError = Error;

/// A session as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq, CandidType, Deserialize)]
pub struct ClientInfo {
    /// Its id.
    pub id: ClientId,
    /// The session's Ed25519 public key.
    pub key: Vec<u8>,
    /// The gateway it is (or was last) attached to.
    pub gateway: Principal,
    /// Whether a gateway currently holds its connection.
    pub attached: bool,
    /// False once closed (a closed session is kept until its retention ends).
    pub open: bool,
    /// When it was opened (canister time, ns).
    pub opened_at_ns: u64,
    /// Last accepted signed open or message (ns).
    pub last_activity_ns: u64,
    /// The next inbound sequence number expected.
    pub next_inbound_seq: u64,
    /// The next outbound sequence number to be assigned.
    pub next_outbound_seq: u64,
    /// The oldest outbound sequence number still retained.
    pub first_retained_seq: u64,
    /// Retained (unacknowledged) messages.
    pub queued_messages: u64,
    /// Retained app payload bytes.
    pub queued_bytes: u64,
    /// Issue 10: the IC principal verified at open (none: an anonymous session). Kept across
    /// resumes, gateway switches and upgrades; never changed by a resume.
    pub principal: Option<Principal>,
}

/// What [`publish`] did for each subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq, CandidType, Deserialize)]
pub struct PublishReport {
    /// Subscribers that got the message, with its sequence number in their stream.
    pub delivered: Vec<(ClientId, u64)>,
    /// Subscribers whose queue was full (policy `Reject`): they did not get it.
    pub skipped: Vec<ClientId>,
    /// Subscribers whose queue overflowed (policy `Close`): now closed.
    pub closed: Vec<ClientId>,
}

fn encode_payload<T: CandidType>(msg: &T) -> Result<Vec<u8>, Error> {
    ic_ws_protocol::encode(msg).map_err(|e| Error::Encode(e.to_string()))
}

/// Embeds a candid file in the canister's wasm as its `candid:service` metadata: the public
/// custom section `icp:public candid:service`, as `ic-wasm <wasm> metadata candid:service -f
/// <file> -v public` writes it, where icp-cli, dfx and the IC dashboard read a canister's
/// interface (`icp canister call` without it: "no Candid interface is available").
///
/// The path is relative to the crate's `Cargo.toml`; the file is read at compile time (a
/// change rebuilds the canister) and only wasm builds get the section. Invoke it once per
/// canister, at the crate root beside `ic_cdk::export_candid!()`, and keep the file in sync
/// with a test comparing it to `__export_service()` (as `examples/chat` does):
///
/// ```ignore
/// ic_ws_canister::candid_metadata!("chat.did");
/// ic_cdk::export_candid!();
/// ```
///
/// dfx's `"metadata": [{ "name": "candid:service" }]` in `dfx.json` writes the same section
/// again (ic-wasm replaces a section of that name), so the two agree.
#[macro_export]
macro_rules! candid_metadata {
    ($path:literal) => {
        #[cfg(target_family = "wasm")]
        #[doc(hidden)]
        #[unsafe(link_section = "icp:public candid:service")]
        #[used]
        static __IC_WS_CANDID_SERVICE: [u8; ::core::include_bytes!(::core::concat!(
            ::core::env!("CARGO_MANIFEST_DIR"),
            "/",
            $path
        ))
        .len()] = *::core::include_bytes!(::core::concat!(
            ::core::env!("CARGO_MANIFEST_DIR"),
            "/",
            $path
        ));
    };
}

/// Sends `msg` (candid-encoded) to one client; returns its sequence number in the client's
/// stream. The message is retained in stable memory and certified until the client
/// acknowledges it.
///
/// ```
/// # use ic_ws_canister::testing;
/// # let (client, _) = testing::open_test_client(1);
/// let seq = ic_ws_canister::send(client, &"hello".to_string())?;
/// assert_eq!(seq, 1); // 0 was the session's certified `Opened` message
/// # Ok::<(), ic_ws_canister::Error>(())
/// ```
pub fn send<T: CandidType>(client: ClientId, msg: &T) -> Result<u64, Error> {
    let payload = encode_payload(msg)?;
    send_bytes(client, payload)
}

/// [`send`] for an already candid-encoded payload.
pub fn send_bytes(client: ClientId, payload: Vec<u8>) -> Result<u64, Error> {
    let now = env::time_ns();
    let r = runtime::with_state(|s| {
        let r = s.send_payload(client, payload, now);
        certify_unless_in_endpoint(s);
        r
    });
    report_closes();
    r
}

/// [`send`] and [`publish`] for one message type: the compiler checks every call against it,
/// where the plain functions take any candid type (and a wrong one reaches clients as a
/// payload their bindings cannot decode). `#[on_message(outbound = T, handle = NAME)]`
/// generates `pub const NAME: Outbound<T>`:
///
/// ```ignore
/// #[on_message(outbound = ChatOut, handle = OUT)]
/// fn message(client: ClientId, m: ChatIn) { OUT.send(client, &ChatOut::Ack).ok(); }
/// ```
pub struct Outbound<T>(core::marker::PhantomData<fn(&T)>);

impl<T: CandidType> Outbound<T> {
    /// The handle (the macro makes one; an app may too).
    pub const fn new() -> Self {
        Outbound(core::marker::PhantomData)
    }

    /// [`send`] of a `T`.
    pub fn send(&self, client: ClientId, msg: &T) -> Result<u64, Error> {
        send(client, msg)
    }

    /// [`publish`] of a `T`.
    pub fn publish(&self, topic: &str, msg: &T) -> Result<PublishReport, Error> {
        publish(topic, msg)
    }
}

impl<T: CandidType> Default for Outbound<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Publishes `msg` to every subscriber of `topic`. The content is stored once; each
/// subscriber gets it under its own sequence number (and certified path).
pub fn publish<T: CandidType>(topic: &str, msg: &T) -> Result<PublishReport, Error> {
    let payload = encode_payload(msg)?;
    let now = env::time_ns();
    let r = runtime::with_state(|s| {
        let r = s.publish_payload(topic, payload, now);
        certify_unless_in_endpoint(s);
        r
    });
    report_closes();
    r
}

/// Subscribes an open session to `topic` (idempotent). Subscriptions end with the session.
pub fn subscribe(client: ClientId, topic: &str) -> Result<(), Error> {
    runtime::with_state(|s| s.subscribe(client, topic))
}

/// Unsubscribes; returns whether the client was subscribed.
pub fn unsubscribe(client: ClientId, topic: &str) -> bool {
    runtime::with_state(|s| s.unsubscribe(client, topic))
}

/// The topics a client is subscribed to.
pub fn subscriptions(client: ClientId) -> Vec<String> {
    runtime::with_state(|s| s.subscriptions(client))
}

/// The subscribers of a topic.
pub fn subscribers(topic: &str) -> Vec<ClientId> {
    runtime::with_state(|s| s.subscribers(topic))
}

/// How many subscribers a topic has (constant cost: a per-topic count, no scan).
pub fn subscribers_count(topic: &str) -> u64 {
    runtime::with_state(|s| s.subscriber_count(topic))
}

/// The first `limit` subscribers of a topic, in client id order (cost proportional to
/// `limit`, not to the topic's size).
pub fn subscribers_up_to(topic: &str, limit: usize) -> Vec<ClientId> {
    runtime::with_state(|s| s.subscribers_up_to(topic, limit))
}

/// Closes a session with `AppClosed { code, reason }`: a certified `Closed` message is its
/// last, and `on_close` runs once. Returns false if it was unknown or already closed.
pub fn close(client: ClientId, code: u16, reason: &str) -> bool {
    let now = env::time_ns();
    let closed = runtime::with_state(|s| {
        let c = s.close_session(
            client,
            CloseReason::AppClosed {
                code,
                reason: reason.to_string(),
            },
            now,
        );
        s.certify();
        c
    });
    report_closes();
    closed
}

/// A session's state, or `None` if unknown.
pub fn client_info(client: ClientId) -> Option<ClientInfo> {
    runtime::with_state(|s| s.clients.get(&client).map(|r| s.info(client, &r)))
}

/// Up to `limit` sessions with ids after `after` (all from the start with `None`), in id
/// order: page through them with the last id seen.
pub fn clients(after: Option<ClientId>, limit: usize) -> Vec<ClientInfo> {
    runtime::with_state(|s| {
        let start = after.map_or(0, |a| a.saturating_add(1));
        if after == Some(u64::MAX) {
            return Vec::new();
        }
        s.clients
            .range(start..)
            .take(limit)
            .map(|e| s.info(*e.key(), &e.value()))
            .collect()
    })
}

/// Issue 10: what an `#[on_open]` handler may take as its last parameter: the IC principal the
/// open proved (verified by the runtime before the handler runs), none for an anonymous
/// session.
///
/// ```
/// use ic_ws_canister::{on_message, on_open, ClientId, ClientIdentity};
///
/// #[on_open]
/// fn open(client: ClientId, name: String, identity: ClientIdentity) -> Result<(), String> {
///     match identity.principal {
///         Some(user) => Ok(()), // e.g. remember `user` for `clients_of(&user)`
///         None if name == "guest" => Ok(()),
///         None => Err("log in first".into()),
///     }
/// }
///
/// #[on_message]
/// fn message(client: ClientId, text: String) {}
/// # fn main() {}
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, CandidType, Deserialize)]
pub struct ClientIdentity {
    /// The verified principal (none: anonymous).
    pub principal: Option<Principal>,
    /// When the delegation binding it expires (ns); the session is closed then.
    pub expires_ns: Option<u64>,
}

/// Issue 10: the IC principal verified when `client` opened (none: anonymous or unknown).
/// What `#[on_open]` hands a `principal: Option<Principal>` parameter.
pub fn client_principal(client: ClientId) -> Option<Principal> {
    runtime::with_state(|s| s.bound_identity(client).map(|b| b.principal))
}

/// Issue 10: when the delegation that bound `client`'s principal expires (ns); the session is
/// closed with `CloseReason::IdentityExpired` then (unless a resume brought a fresh proof).
pub fn client_identity_expiry(client: ClientId) -> Option<u64> {
    runtime::with_state(|s| s.bound_identity(client).map(|b| b.expires_ns))
}

/// Issue 10: the open sessions bound to `principal`, in id order: every session of one user,
/// e.g. for per-user notifications. At most `max_sessions_per_principal` (the cap on
/// sessions per principal enforced at open), so the work is bounded.
pub fn clients_of(principal: &Principal) -> Vec<ClientId> {
    runtime::with_state(|s| s.clients_of(principal))
}

/// Number of sessions (open, and closed ones not yet deleted).
pub fn client_count() -> u64 {
    runtime::with_state(|s| s.clients.len())
}

/// Sets limits and policies (validated; persisted in stable memory).
pub fn configure(config: WsConfig) -> Result<(), Error> {
    runtime::with_state(|s| s.set_config(config))
}

/// The current configuration.
pub fn config() -> WsConfig {
    runtime::with_state(|s| s.config.clone())
}

/// Expires idle sessions (calling their `on_close`), deletes closed sessions past their
/// retention and gateway records past theirs, now: at most `max_housekeeping_per_call`
/// sessions or records, and at most `housekeeping_instructions` (checked between two).
///
/// The runtime does this by itself from a timer (see the crate docs, "Housekeeping"); an app
/// calls it only to hurry it.
pub fn housekeeping() {
    let max = runtime::with_state(|s| s.config.max_housekeeping_per_call as usize);
    housekeeping_run(max);
    runtime::with_state(|s| s.certify());
    report_closes();
}

thread_local! {
    /// The earliest time (ns) the app said it will send messages at ([`expect_messages_at`]).
    static POLL_HINT_AT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Tells the gateways that this canister expects to send messages at `time_ns` (IC time,
/// e.g. its next timer's deadline), so they poll then instead of waiting for their own
/// schedule: `ws_poll` replies carry the time left as `next_poll_ms` until it passes. The
/// earliest future time given wins; times already past are ignored. Advisory: it is kept in
/// the heap only (an upgrade forgets it) and gateways clamp it to their own bounds.
///
/// ```
/// # use ic_ws_canister::testing;
/// # let _ = testing::open_test_client(1);
/// // In a timer that fires every second:
/// let next_tick = ic_ws_canister::time_ns() + 1_000_000_000;
/// ic_ws_canister::expect_messages_at(next_tick);
/// ```
pub fn expect_messages_at(time_ns: u64) {
    let now = env::time_ns();
    if time_ns <= now {
        return;
    }
    POLL_HINT_AT.with(|h| {
        let keep = h.get().filter(|&t| t > now && t <= time_ns);
        h.set(Some(keep.unwrap_or(time_ns)));
    });
}

/// The current IC time in ns (what [`expect_messages_at`] compares with).
pub fn time_ns() -> u64 {
    env::time_ns()
}

/// Milliseconds from `now` to the hinted time (rounded up: a poll at the hint does not come
/// before it), if one is ahead.
fn poll_hint_ms(now: u64) -> Option<u64> {
    POLL_HINT_AT
        .with(Cell::get)
        .filter(|&t| t > now)
        .map(|t| (t - now).div_ceil(1_000_000))
}

/// The canister-wide usage the Sybil-proof caps bound (see [`WsConfig`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, CandidType, Deserialize)]
pub struct Usage {
    /// Sessions (open, and closed ones not yet deleted): `max_sessions`.
    pub sessions: u64,
    /// Retained outbound payload bytes of all sessions: `max_retained_bytes`.
    pub retained_bytes: u64,
    /// Topic subscriptions: `max_subscriptions`.
    pub subscriptions: u64,
    /// Gateway records: `max_gateways`.
    pub gateways: u64,
}

/// The canister-wide usage, to compare with the caps of [`config`].
pub fn usage() -> Usage {
    runtime::with_state(|s| Usage {
        sessions: s.clients.len(),
        retained_bytes: s.total_retained_bytes(),
        subscriptions: s.subscription_count(),
        gateways: s.gateway_count(),
    })
}

/// One housekeeping run: steps (one session or record each) until nothing is due, `max_steps`
/// were done or the instruction budget is spent (at least one step is done). `on_close` of
/// each expired session runs right after its step, so the budget covers the app's work too
/// (inside a ws endpoint, natively, reports wait for its end). Returns whether it stopped
/// before running out of work.
fn housekeeping_run(max_steps: usize) -> bool {
    let now = env::time_ns();
    let start = env::instruction_counter();
    let budget = runtime::with_state(|s| s.config.housekeeping_budget());
    let mut steps = 0usize;
    let mut more = false;
    loop {
        let spent = env::instruction_counter().saturating_sub(start);
        if steps >= max_steps || (steps > 0 && spent >= budget) {
            more = true;
            break;
        }
        if runtime::with_state(|s| s.housekeeping_step(now)).is_none() {
            break;
        }
        steps += 1;
        report_closes();
    }
    runtime::with_state(|s| s.housekeeping_sweep(now));
    more
}

// ------------------------------------------------------------------- housekeeping timer

/// How late an armed housekeeping timer may be before a ws call arms another: a timer run
/// that trapped (an `on_close` that traps) is gone, while this instance's note that it was
/// armed survives the rollback.
const TIMER_OVERDUE_NS: u64 = 60_000_000_000;

thread_local! {
    /// When the housekeeping timer armed by this instance fires.
    static TIMER_AT: Cell<Option<u64>> = const { Cell::new(None) };
}

#[cfg(target_arch = "wasm32")]
thread_local! {
    static TIMER_ID: Cell<Option<ic_cdk_timers::TimerId>> = const { Cell::new(None) };
}

/// Makes sure a housekeeping timer fires when the next housekeeping work is due (no timer
/// when nothing is due: the next ws call arms one). Cheap: three first-key lookups.
fn arm_housekeeping(h: __private::Handlers, more_now: bool) {
    let now = env::time_ns();
    let due = if more_now {
        Some(now)
    } else {
        runtime::with_state(|s| s.next_housekeeping_due())
    };
    let Some(due) = due.map(|d| d.max(now)) else {
        return;
    };
    if let Some(at) = TIMER_AT.with(Cell::get) {
        if at <= due && now <= at.saturating_add(TIMER_OVERDUE_NS) {
            return;
        }
    }
    TIMER_AT.with(|t| t.set(Some(due)));
    #[cfg(target_arch = "wasm32")]
    {
        if let Some(old) = TIMER_ID.with(Cell::take) {
            ic_cdk_timers::clear_timer(old);
        }
        let delay = std::time::Duration::from_nanos(due.saturating_sub(now));
        let id = ic_cdk_timers::set_timer(delay, async move { housekeeping_tick(h) });
        TIMER_ID.with(|t| t.set(Some(id)));
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = h;
}

/// The housekeeping timer: one run within `housekeeping_instructions`, then the next timer
/// (at once if work is left).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
fn housekeeping_tick(h: __private::Handlers) {
    TIMER_AT.with(|t| t.set(None));
    #[cfg(target_arch = "wasm32")]
    TIMER_ID.with(|t| t.set(None));
    HANDLERS.with(|c| c.set(Some(h)));
    let more = housekeeping_run(usize::MAX);
    runtime::with_state(|s| s.certify());
    report_closes();
    arm_housekeeping(h, more);
}

/// The housekeeping a ws endpoint call does for others. On the IC: none but the bounded
/// sweep of consumed-open records (the timer does the rest, so no caller pays for other
/// sessions' expiry and their `on_close`). Natively (unit tests, no timers): a run capped
/// at `max_housekeeping_per_call`.
fn endpoint_housekeeping() {
    #[cfg(target_arch = "wasm32")]
    {
        let now = env::time_ns();
        runtime::with_state(|s| s.housekeeping_sweep(now));
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let max = runtime::with_state(|s| s.config.max_housekeeping_per_call as usize);
        housekeeping_run(max);
    }
}

/// Rebuilds the certification tree and delivery logs from stable memory and sets
/// `certified_data` (once per canister instance; later calls only re-certify). The
/// `canister_post_upgrade` that `#[on_message]` generates calls it; call it yourself only
/// from your own `#[ic_cdk::post_upgrade]` with `#[on_message(post_upgrade = false)]` (after
/// [`memory::set_base_memory_id`] if used). See "Upgrades" in the crate docs. (Called this
/// way, the runtime's housekeeping timer, which an upgrade clears, is armed again by the next
/// ws update call; the generated hook arms it at once.)
pub fn post_upgrade() {
    runtime::load_now();
}

// ------------------------------------------------------------------- on_close delivery

thread_local! {
    static HANDLERS: Cell<Option<__private::Handlers>> = const { Cell::new(None) };
    /// Depth of ws endpoint calls in progress (closes are reported when it returns to 0).
    static IN_ENDPOINT: Cell<u32> = const { Cell::new(0) };
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Puts the new root into `certified_data`, unless a ws endpoint is in progress: it certifies
/// once when it returns (see [`EndpointGuard`]), so handlers' sends do not each re-hash it.
fn certify_unless_in_endpoint(s: &mut runtime::State) {
    if IN_ENDPOINT.with(Cell::get) == 0 {
        s.certify();
    }
}

/// Calls `on_close` for every session closed since the last report, unless a ws endpoint is
/// in progress (it reports at its end) or a report is already running (it picks these up).
fn report_closes() {
    if IN_ENDPOINT.with(Cell::get) > 0 || REPORTING.with(Cell::get) {
        return;
    }
    let Some(h) = HANDLERS.with(Cell::get) else {
        // No ws endpoint has run in this canister instance yet (e.g. a timer right after an
        // upgrade): the closes stay pending in stable memory until the next endpoint call.
        return;
    };
    REPORTING.with(|r| r.set(true));
    while let Some((id, reason)) = runtime::with_state(|s| s.pop_pending_close()) {
        (h.on_close)(id, reason);
    }
    REPORTING.with(|r| r.set(false));
}

/// Whether `caller` may make a `method` call with `entries` entries under `config`.
fn admit(
    config: &WsConfig,
    method: &str,
    caller: &Principal,
    entries: usize,
) -> Result<(), String> {
    if !config.allows_gateway(caller) {
        return Err(format!(
            "{method}: {caller} is not an allowed gateway of this canister"
        ));
    }
    let max = config.entries_per_call();
    if entries > max {
        return Err(format!(
            "{method}: {entries} entries, more than this canister allows per call ({max})"
        ));
    }
    Ok(())
}

/// What the generated `canister_inspect_message` checks, for an app that writes its own
/// (`#[on_message(inspect_message = false)]`) and calls this from it:
/// `Ok` for every method that is not a ws update endpoint (the app decides about those), and
/// for `ws_open` / `ws_message` / `ws_close` calls whose caller is not anonymous, may act as a
/// gateway ([`WsConfig::gateways`]), whose argument decodes and carries at most
/// [`WsConfig::max_entries_per_call`] entries; `ws_poll` as an update is refused (it must be
/// a query). Decoding costs instructions proportional to the argument (at most the 2 MiB
/// ingress limit).
///
/// On the IC, `canister_inspect_message` runs for ingress messages only, on one replica,
/// before the message is inducted: it keeps most junk from executing, but it is a filter,
/// not a security boundary (calls from other canisters skip it, and a malicious replica could
/// too). The endpoints check the same things again.
pub fn inspect_ws_call(method: &str, caller: &Principal, arg: &[u8]) -> Result<(), String> {
    let entries = match method {
        "ws_open" => decode_count::<OpenBatch>(arg, |b| b.opens.len()),
        "ws_message" => decode_count::<MessageBatch>(arg, |b| b.messages.len()),
        "ws_close" => decode_count::<CloseBatch>(arg, |b| b.clients.len()),
        "ws_poll" => return Err("ws_poll must be called as a query".into()),
        _ => return Ok(()),
    }
    .map_err(|e| format!("{method}: the argument does not decode: {e}"))?;
    if *caller == Principal::anonymous() {
        return Err(format!(
            "{method}: the anonymous principal cannot act as a gateway"
        ));
    }
    // Without loading the state: inspect_message must stay cheap also right after an upgrade.
    let config = runtime::current_config();
    admit(&config, method, caller, entries)
}

fn decode_count<T: CandidType + serde::de::DeserializeOwned>(
    arg: &[u8],
    count: impl FnOnce(&T) -> usize,
) -> Result<usize, String> {
    ic_ws_protocol::decode::<T>(arg)
        .map(|b| count(&b))
        .map_err(|e| e.to_string())
}

/// The instruction budget of one ws update call ([`WsConfig::max_instructions_per_call`]).
struct CallBudget {
    limit: u64,
    /// Set once the budget ran out: every later entry is not processed either (an entry of a
    /// client after its not-processed one would otherwise be out of sequence).
    spent: Cell<bool>,
}

impl CallBudget {
    fn new() -> Self {
        CallBudget {
            limit: runtime::with_state(|s| s.config.instructions_per_call()),
            spent: Cell::new(false),
        }
    }

    /// Whether the entry after `done` processed entries must be answered `NotProcessed`: the
    /// call's instruction counter reached the budget (never before the first entry).
    fn spent(&self, done: usize) -> bool {
        if !self.spent.get() && done > 0 && env::instruction_counter() >= self.limit {
            self.spent.set(true);
        }
        self.spent.get()
    }

    /// Instructions left before the budget (0 once it is reached).
    fn remaining(&self) -> u64 {
        self.limit.saturating_sub(env::instruction_counter_peek())
    }
}

/// Most entries of a `ws_message` call verified in one batch (one multi-scalar
/// multiplication). Past ~50 entries the cost per entry hardly falls; smaller batches keep
/// the budget's granularity and what a failed batch wastes small.
const MESSAGE_BATCH_MAX: usize = 64;

/// Upper estimate of one entry's share of a batch verification, in instructions: a batch is
/// only as large as the call's remaining budget allows at this rate, so batching does not
/// move the budget's cut (at most one entry past it, as without batches).
const BATCH_COST_PER_ENTRY: u64 = 1_000_000;

/// Smallest batch worth making after failures (below it, single verifications).
const MESSAGE_BATCH_MIN: usize = 8;

/// The batch verification state of one `ws_message` call: verdicts for the next entries.
struct MessageBatches {
    /// Per upcoming entry, the key its signature was found valid under.
    ahead: std::collections::VecDeque<Option<[u8; 32]>>,
    /// Size of the next batch: [`MESSAGE_BATCH_MAX`], halved after each failed batch (a
    /// failed batch is split once into 4 groups checked as batches again; the entries of the
    /// groups that fail are verified one by one); no more batches in the call once it falls
    /// below [`MESSAGE_BATCH_MIN`]. So one bad entry costs the single verifications of a
    /// quarter of its batch, and a caller sending bad signatures wastes at most two passes
    /// over 64 + 32 + 16 + 8 entries per call.
    size: usize,
}

impl MessageBatches {
    fn new() -> Self {
        MessageBatches {
            ahead: std::collections::VecDeque::new(),
            size: MESSAGE_BATCH_MAX,
        }
    }

    /// The verdict for the next entry (`rest` starts with it), verifying a batch of the
    /// entries from it on when none is pending.
    fn next(
        &mut self,
        caller: Principal,
        canister: &Principal,
        rest: &[ic_ws_protocol::types::ClientMessage],
        budget: &CallBudget,
    ) -> Option<[u8; 32]> {
        if self.ahead.is_empty() && self.size >= MESSAGE_BATCH_MIN {
            let fits =
                usize::try_from(budget.remaining() / BATCH_COST_PER_ENTRY).unwrap_or(usize::MAX);
            let n = rest.len().min(self.size).min(fits);
            if n >= 2 {
                let (keys, held) = runtime::with_state(|s| {
                    s.preverify_messages(caller, canister, rest.get(..n).unwrap_or_default())
                });
                if !held {
                    self.size /= 2;
                }
                self.ahead.extend(keys);
            }
        }
        self.ahead.pop_front().flatten()
    }
}

struct EndpointGuard(__private::Handlers);

impl EndpointGuard {
    fn enter(h: &__private::Handlers) -> Self {
        HANDLERS.with(|c| c.set(Some(*h)));
        IN_ENDPOINT.with(|d| d.set(d.get() + 1));
        endpoint_housekeeping();
        EndpointGuard(*h)
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        IN_ENDPOINT.with(|d| d.set(d.get().saturating_sub(1)));
        runtime::with_state(|s| s.certify());
        report_closes();
        arm_housekeeping(self.0, false);
    }
}

/// What the code generated by `ic-ws-macros` calls. Not a stable API for apps.
#[doc(hidden)]
pub mod __private {
    pub use ::candid;
    pub use ::ic_cdk;

    /// Implemented by `#[on_message]` for its marker type; `#[on_open]` requires it of the
    /// marker it attaches to, which is a stand-in when its module has no `#[on_message]`.
    #[diagnostic::on_unimplemented(
        message = "`#[on_open]` needs the canister's `#[on_message]` handler in the same module, and there is none",
        label = "no `#[on_message]` in this module",
        note = "add the message handler, e.g. `#[on_message] fn message(client: ClientId, message: MyMessage) {{ .. }}`: it generates the canister's ws endpoints (exactly one per canister)",
        note = "if it is in another module, name that module: `#[on_open(on_message_in = path::to::module)]`"
    )]
    pub trait OnOpenNeedsOnMessage {}

    /// As [`OnOpenNeedsOnMessage`], for `#[on_close]`.
    #[diagnostic::on_unimplemented(
        message = "`#[on_close]` needs the canister's `#[on_message]` handler in the same module, and there is none",
        label = "no `#[on_message]` in this module",
        note = "add the message handler, e.g. `#[on_message] fn message(client: ClientId, message: MyMessage) {{ .. }}`: it generates the canister's ws endpoints (exactly one per canister)",
        note = "if it is in another module, name that module: `#[on_close(on_message_in = path::to::module)]`"
    )]
    pub trait OnCloseNeedsOnMessage {}

    use super::*;
    use crate::runtime::{with_state, Accepted};
    use serde::de::DeserializeOwned;

    /// The app's handlers (defaults where the app defines none).
    #[derive(Clone, Copy)]
    pub struct Handlers {
        /// Called once when a session is created, with the open's `args` (candid).
        /// `Err(Rejected(reason))` refuses the open, `Err(DecodeError(..))` says the
        /// arguments did not decode (any other error is taken as `Rejected` with its text):
        /// the refusal is certified (`OutboundBody::OpenRejected`).
        pub on_open: fn(ClientId, &[u8]) -> Result<(), WsError>,
        /// Called for every accepted app message (payload candid, decoded by the shim with
        /// [`decode_payload`]). Its error is the entry's result.
        pub on_message: fn(ClientId, &[u8]) -> Result<(), WsError>,
        /// Called exactly once when a session ends.
        pub on_close: fn(ClientId, CloseReason),
    }

    /// `ws_open` (update).
    pub fn ws_open(h: &Handlers, batch: OpenBatch) -> Vec<OpenResult> {
        let _guard = EndpointGuard::enter(h);
        let caller = env::caller();
        let canister = env::canister_id();
        let now = env::time_ns();
        let budget = CallBudget::new();
        let mut results = Vec::with_capacity(batch.opens.len());
        for open in batch.opens {
            if budget.spent(results.len()) {
                results.push(Err(WsError::NotProcessed));
                continue;
            }
            if open.resume.is_some() {
                results.push(with_state(|s| s.open_resume(caller, &canister, &open, now)));
                continue;
            }
            match with_state(|s| s.open_new(caller, &canister, &open, now)) {
                Err(e) => results.push(Err(e)),
                Ok(new) => match (h.on_open)(new.ok.client_id, &open.args) {
                    Ok(()) => results.push(Ok(new.ok)),
                    Err(e) => {
                        // Certified refusal: the session is kept closed with `OpenRejected`
                        // as its only message (see `State::reject_new_session`).
                        let error = runtime::outcome_error(e);
                        results.push(Err(with_state(|s| s.reject_new_session(&new, error, now))));
                    }
                },
            }
        }
        results
    }

    /// `ws_message` (update).
    pub fn ws_message(h: &Handlers, batch: MessageBatch) -> Vec<MessageResult> {
        let _guard = EndpointGuard::enter(h);
        let caller = env::caller();
        let canister = env::canister_id();
        let now = env::time_ns();
        let budget = CallBudget::new();
        let mut results = Vec::with_capacity(batch.messages.len());
        let mut batches = MessageBatches::new();
        let mut messages = batch.messages.into_iter();
        while !messages.as_slice().is_empty() {
            if budget.spent(results.len()) {
                messages.next();
                results.push(MessageResult::Err(WsError::NotProcessed));
                continue;
            }
            // The entries' signatures are verified in batches ahead of their processing, each
            // entry's verdict kept for when its turn comes (entries are processed in order, as
            // before).
            let verified = batches.next(caller, &canister, messages.as_slice(), &budget);
            let Some(msg) = messages.next() else { break };
            let id = msg.client_id;
            let seq = msg.seq;
            let r = match with_state(|s| s.accept_message(caller, &canister, msg, verified, now)) {
                Err(e) => MessageResult::Err(e),
                Ok(None) => MessageResult::Duplicate,
                Ok(Some(Accepted::App(payload))) => match (h.on_message)(id, &payload) {
                    Ok(()) => MessageResult::Ok,
                    Err(e) => {
                        // The sequence number is consumed: certify the refusal for the client
                        // (`MessageRejected`); the entry's result is only the gateway's hint.
                        let error = runtime::outcome_error(e);
                        with_state(|s| s.queue_message_rejected(id, seq, error.clone(), now));
                        MessageResult::Err(error)
                    }
                },
                Ok(Some(Accepted::KeepAlive | Accepted::Closed)) => MessageResult::Ok,
            };
            results.push(r);
        }
        results
    }

    /// `ws_close` (update): the gateway lost these clients' connections.
    pub fn ws_close(h: &Handlers, batch: CloseBatch) -> Vec<CloseResult> {
        let _guard = EndpointGuard::enter(h);
        let caller = env::caller();
        let budget = CallBudget::new();
        let mut results = Vec::with_capacity(batch.clients.len());
        for id in batch.clients {
            results.push(if budget.spent(results.len()) {
                Err(WsError::NotProcessed)
            } else {
                with_state(|s| s.gateway_detach(caller, id))
            });
        }
        results
    }

    /// Admission of a whole `ws_open` / `ws_message` / `ws_close` call (the generated shim
    /// traps with the error): the caller may act as a gateway and the call carries at most
    /// `max_entries_per_call` entries.
    pub fn admit_call(method: &str, entries: usize) -> Result<(), String> {
        let caller = env::caller();
        with_state(|s| crate::admit(&s.config, method, &caller, entries))
    }

    /// The generated `canister_inspect_message`: accepts the message unless
    /// [`crate::inspect_ws_call`] refuses it (an ingress message that is not accepted is
    /// rejected before it executes).
    pub fn inspect_message() {
        let method = ic_cdk::api::msg_method_name();
        let caller = ic_cdk::api::msg_caller();
        let arg = ic_cdk::api::msg_arg_data();
        if crate::inspect_ws_call(&method, &caller, &arg).is_ok() {
            ic_cdk::api::accept_message();
        }
    }

    /// `ws_poll` (query). Refuses, loudly and cheaply, to serve a canister that was upgraded
    /// without the rebuild ([`crate::post_upgrade`]) and has had no update call since: a
    /// query cannot keep the rebuild, so every poll would pay for all of it (and at scale
    /// exceed the query instruction limit). The next update call rebuilds.
    pub fn ws_poll(req: PollRequest) -> PollResult {
        if runtime::not_rebuilt_since_upgrade() {
            return Err(WsError::InvalidArgument(NOT_REBUILT.into()));
        }
        let caller = env::caller();
        let mut reply = with_state(|s| s.poll(caller, req))?;
        reply.next_poll_ms = crate::poll_hint_ms(env::time_ns());
        Ok(reply)
    }

    /// What `ws_poll` answers on a canister upgraded without the rebuild.
    pub const NOT_REBUILT: &str =
        "ws_poll: this canister was upgraded without rebuilding the ic-ws \
        state (ic_ws_canister::post_upgrade() was not called from its post_upgrade; the hook that \
        #[on_message] generates calls it unless `post_upgrade = false`); polls are refused until \
        the next update call rebuilds it";

    /// Decodes an app payload (bounded candid decoding); failures are `DecodeError`.
    pub fn decode_payload<T: CandidType + DeserializeOwned>(bytes: &[u8]) -> Result<T, WsError> {
        ic_ws_protocol::decode(bytes).map_err(|e| WsError::DecodeError(e.to_string()))
    }

    /// What `#[on_open]` hands a `ClientIdentity` parameter.
    pub fn client_identity(client: ClientId) -> crate::ClientIdentity {
        let bound = with_state(|s| s.bound_identity(client));
        crate::ClientIdentity {
            principal: bound.map(|b| b.principal),
            expires_ns: bound.map(|b| b.expires_ns),
        }
    }

    /// `on_open` of an app that defines none: accepts every open.
    pub fn default_on_open(_client: ClientId, _args: &[u8]) -> Result<(), WsError> {
        Ok(())
    }

    /// `on_message` of an app that defines none: rejects app messages.
    pub fn default_on_message(_client: ClientId, _payload: &[u8]) -> Result<(), WsError> {
        Err(WsError::Rejected(
            "this canister accepts no app messages".into(),
        ))
    }

    /// `on_close` of an app that defines none.
    pub fn default_on_close(_client: ClientId, _reason: CloseReason) {}

    /// See [`crate::post_upgrade`].
    pub fn post_upgrade() {
        crate::post_upgrade();
    }

    /// The generated `canister_post_upgrade`: the rebuild, then the housekeeping timer armed
    /// again (an upgrade clears the canister's timers; without this, sessions and gateway
    /// records would wait for the next ws update call to expire).
    pub fn post_upgrade_with(h: &Handlers) {
        crate::post_upgrade();
        crate::arm_housekeeping(*h, false);
    }

    /// Test hook (feature `test-hooks`): `sessions` unsigned sessions on `gateway`, each with
    /// `messages` sends of `payload_bytes` bytes; returns the first id. Benchmarks only.
    #[cfg(feature = "test-hooks")]
    pub fn test_fill(gateway: Principal, sessions: u32, messages: u32, payload_bytes: u32) -> u64 {
        crate::runtime::test_fill(gateway, sessions, messages, payload_bytes)
    }
}
