//! Runtime limits and policies ([`WsConfig`]), persisted in stable memory.
//!
//! Defaults are those of the Limits table in `docs/protocol.md`. An app sets its own once,
//! typically in `#[init]`:
//!
//! ```
//! use ic_ws_canister::{configure, OverflowPolicy, WsConfig};
//! configure(WsConfig {
//!     max_queued_messages: 256,
//!     overflow_policy: OverflowPolicy::Reject,
//!     ..WsConfig::default()
//! })
//! .expect("valid config");
//! ```
//!
//! The configuration lives in stable memory, so it survives upgrades without being set again.

use candid::CandidType;
use serde::{Deserialize, Serialize};

const SECOND_NS: u64 = 1_000_000_000;

/// What happens when a session's retained (unacknowledged) messages would exceed
/// [`WsConfig::max_queued_messages`] or [`WsConfig::max_queued_bytes`].
#[derive(CandidType, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Close the session with `CloseReason::QueueOverflow` (its certified `Closed` message
    /// tells the client that it missed data) and return
    /// [`Error::QueueOverflowClosed`](crate::Error::QueueOverflowClosed) to the sender.
    #[default]
    Close,
    /// Queue nothing and return [`Error::QueueFull`](crate::Error::QueueFull); the session
    /// stays open and the app decides (drop, retry later, close).
    Reject,
}

/// Limits and policies of the runtime. Every field has the documented default.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WsConfig {
    /// Largest inbound app payload (bytes of `MessageKind::App`); larger: `TooLarge`.
    /// Default 64 KiB.
    pub max_inbound_payload_bytes: u64,
    /// Largest outbound app payload (candid bytes of what `send`/`publish` encode).
    /// Default 256 KiB.
    pub max_outbound_payload_bytes: u64,
    /// Retained (unacknowledged) messages per session. Default 1 024.
    pub max_queued_messages: u64,
    /// Retained content bytes per session. Default 4 MiB.
    pub max_queued_bytes: u64,
    /// Attached sessions per gateway; further opens get `LimitReached`. Default 50 000.
    pub max_sessions_per_gateway: u64,
    /// Subscribers per topic; further `subscribe` calls fail. Default 10 000.
    pub max_topic_subscribers: u64,
    /// Longest topic name in bytes. Default 128.
    pub max_topic_len: u64,
    /// Messages per poll reply (the gateway may ask for fewer). Default 500.
    pub max_poll_messages: u32,
    /// Content bytes per poll reply (the gateway may ask for fewer). Default 1.5 MiB, which
    /// keeps the reply (with certificate and witness) far below the 3 MiB query reply limit.
    pub max_poll_bytes: u32,
    /// A session with no accepted signed message (or open) for this long is closed with
    /// `Expired`. Default 120 s.
    pub idle_timeout_ns: u64,
    /// Allowed distance between an open's timestamp and canister time. Default 5 min.
    pub clock_skew_ns: u64,
    /// How long a closed session (its `Closed` message and unacknowledged messages) is kept
    /// before it is deleted. At least `clock_skew_ns` (so a replayed open of its key is still
    /// recognised as stale). Default 10 min.
    pub closed_retention_ns: u64,
    /// What to do when a session's queue is full. Default [`OverflowPolicy::Close`].
    pub overflow_policy: OverflowPolicy,
    /// Most sessions or records handled by one call of [`crate::housekeeping`] (and, in native
    /// unit tests where there are no timers, by the housekeeping each ws endpoint call runs).
    /// The runtime's own housekeeping timer is bounded by
    /// [`WsConfig::housekeeping_instructions`] instead. Default 100.
    pub max_housekeeping_per_call: u32,
    /// Most entries in one `ws_open`, `ws_message` or `ws_close` call; a larger call is
    /// refused whole, before any entry is looked at (and by the generated
    /// `canister_inspect_message` before it executes). `None`: the default, 500 (the gateway's
    /// default batch). Bounds the signature checks one call can make the canister pay for.
    ///
    /// This and the fields below are options so that a configuration stored by an older
    /// version of the runtime still decodes after an upgrade (`None` = the default).
    pub max_entries_per_call: Option<u32>,
    /// Sessions in the whole canister (open, or closed and not yet deleted), whatever gateway
    /// they came through; further opens get `LimitReached`. `None`: the default, 200 000.
    /// Where `max_sessions_per_gateway` bounds one principal, this bounds many principals at
    /// once (any principal can act as a gateway unless [`WsConfig::gateways`] says otherwise).
    pub max_sessions: Option<u64>,
    /// Which principals may act as gateways (call `ws_open`, `ws_message`, `ws_close`).
    /// `None`: [`GatewayPolicy::Open`].
    pub gateways: Option<GatewayPolicy>,
    /// Instruction budget of one `ws_open`, `ws_message` or `ws_close` call: before each entry
    /// after the first, the endpoint reads the call's instruction counter (everything the call
    /// executed so far: decoding, housekeeping, earlier entries and their handlers); once it is
    /// at or past the budget, that entry and every later one are answered
    /// `WsError::NotProcessed` with nothing changed (the gateway sends them again in its next
    /// call). The first entry always runs, so every call makes progress and a single
    /// expensive entry still runs alone, up to the IC's limit. `None`: the default,
    /// 2 billion ([`DEFAULT_MAX_INSTRUCTIONS_PER_CALL`]).
    pub max_instructions_per_call: Option<u64>,
    /// Retained outbound payload bytes in the whole canister: the sum over all sessions of
    /// what [`WsConfig::max_queued_bytes`] counts (a published payload counts once per
    /// recipient, as each recipient's copy is certified and, after an upgrade, re-hashed).
    /// A `send` or `publish` that would exceed it fails with `LimitReached` and queues
    /// nothing. `None`: the default, 1 GiB.
    pub max_retained_bytes: Option<u64>,
    /// Topic subscriptions in the whole canister; further `subscribe` calls get
    /// `LimitReached`. `None`: the default, 1 000 000.
    pub max_subscriptions: Option<u64>,
    /// Gateway records (principals that opened sessions and whose record has not expired);
    /// an open or resume through one more principal gets `LimitReached`. `None`: the default,
    /// 10 000.
    pub max_gateways: Option<u64>,
    /// How long a gateway record with no attached session is kept before it is deleted
    /// (deletion is incremental, from the housekeeping). `None`: the default, 10 min.
    pub gateway_retention_ns: Option<u64>,
    /// Instructions one housekeeping run may spend (expiring idle sessions and calling their
    /// `on_close`, deleting closed sessions, sweeping records). Housekeeping runs from a
    /// timer the runtime arms itself, never inside a ws endpoint call, so no caller pays for
    /// sessions that are not its own; a run that stops at its budget re-arms the timer at
    /// once. `None`: the default, 1 000 000 000 (at least one session is handled per run).
    pub housekeeping_instructions: Option<u64>,
    /// Retained (unacknowledged) outbound messages in the whole canister, all sessions
    /// together. At the cap, `send` fails with `LimitReached`, `publish` skips subscribers and
    /// opens/resumes get `LimitReached` (a session's final `Closed` message is always queued).
    /// `None`: the default, [`DEFAULT_MAX_RETAINED_MESSAGES`]. It bounds what the
    /// post-upgrade rebuild costs (see [`WsConfig::worst_case_rebuild_instructions`]): the
    /// per-session limits alone allow `max_sessions x max_queued_messages` (200 million with
    /// the defaults), which no upgrade could rebuild and no wasm heap could hold.
    pub max_retained_messages: Option<u64>,
    /// Issue 10: which opens must prove an IC principal (see [`IdentityPolicy`]). `None`:
    /// [`IdentityPolicy::AnonymousAllowed`].
    pub identity_policy: Option<IdentityPolicy>,
    /// Issue 10: the IC root public key (DER, 133 bytes, or the raw 96 bytes) that canister
    /// signatures in identity proofs (Internet Identity's) are verified under. `None`: the
    /// mainnet root key ([`MAINNET_IC_ROOT_KEY_DER`]); a local replica's canister passes
    /// that replica's key.
    pub ic_root_key: Option<Vec<u8>>,
    /// Issue 10: most sessions (open, or closed and not yet deleted) bound to one principal;
    /// a further open proving it gets `LimitReached`. Bounds [`crate::clients_of`]. `None`:
    /// the default, 64.
    pub max_sessions_per_principal: Option<u64>,
}

/// Which opens must carry a verified identity proof.
#[derive(CandidType, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IdentityPolicy {
    /// Anonymous sessions and sessions with a verified principal (the default).
    #[default]
    AnonymousAllowed,
    /// Only opens with a valid proof; others get `WsError::Identity(Required)`.
    AuthenticatedOnly,
    /// The function registered with [`crate::set_identity_filter`] decides for each new
    /// session, given its verified principal (`None`: anonymous). It runs inside the runtime:
    /// it must be cheap, deterministic and must not call `ic_ws_canister` functions. Without
    /// a registered function every open is refused (fails closed); register it in `#[init]`
    /// and `#[post_upgrade]`. A refusal is `WsError::Identity(Refused(reason))`.
    Callback,
}

/// An app's identity filter ([`IdentityPolicy::Callback`]).
pub type IdentityFilter = fn(Option<&candid::Principal>) -> Result<(), String>;

thread_local! {
    static IDENTITY_FILTER: std::cell::Cell<Option<IdentityFilter>> =
        const { std::cell::Cell::new(None) };
}

/// Registers the app's identity filter, used under [`IdentityPolicy::Callback`].
pub fn set_identity_filter(filter: IdentityFilter) {
    IDENTITY_FILTER.with(|f| f.set(Some(filter)));
}

/// Runs the registered identity filter (refuses when none is registered).
pub(crate) fn run_identity_filter(principal: Option<&candid::Principal>) -> Result<(), String> {
    match IDENTITY_FILTER.with(std::cell::Cell::get) {
        Some(f) => f(principal),
        None => Err("no identity filter registered".into()),
    }
}

/// The IC mainnet root public key (DER), the default of [`WsConfig::ic_root_key`].
pub const MAINNET_IC_ROOT_KEY_DER: &[u8; 133] = b"\x30\x81\x82\x30\x1d\x06\x0d\x2b\x06\x01\x04\x01\x82\xdc\x7c\x05\x03\x01\x02\x01\x06\x0c\x2b\x06\x01\x04\x01\x82\xdc\x7c\x05\x03\x02\x01\x03\x61\x00\x81\x4c\x0e\x6e\xc7\x1f\xab\x58\x3b\x08\xbd\x81\x37\x3c\x25\x5c\x3c\x37\x1b\x2e\x84\x86\x3c\x98\xa4\xf1\xe0\x8b\x74\x23\x5d\x14\xfb\x5d\x9c\x0c\xd5\x46\xd9\x68\x5f\x91\x3a\x0c\x0b\x2c\xc5\x34\x15\x83\xbf\x4b\x43\x92\xe4\x67\xdb\x96\xd6\x5b\x9b\xb4\xcb\x71\x71\x12\xf8\x47\x2e\x0d\x5a\x4d\x14\x50\x5f\xfd\x74\x84\xb0\x12\x91\x09\x1c\x5f\x87\xb9\x88\x83\x46\x3f\x98\x09\x1a\x0b\xaa\xae";

/// Which principals may act as gateways.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub enum GatewayPolicy {
    /// Any principal except the anonymous one (the default: clients may pick any gateway, and
    /// cannot be harmed by one; see docs/protocol.md, threat model).
    #[default]
    Open,
    /// Only these principals (e.g. the gateways the app's operators run). Others are refused
    /// by `canister_inspect_message` and by the endpoints (`InvalidArgument`, nothing changes).
    Allowlist(Vec<candid::Principal>),
    /// The app decides: the function registered with [`crate::set_gateway_filter`] is asked
    /// for every caller (by `canister_inspect_message` and by the endpoints, like the
    /// allowlist). It must be cheap and deterministic (e.g. a lookup in the app's own
    /// registry of gateways). Without a registered function every caller is refused, so a
    /// canister whose code forgot to register one fails closed. The function is code, not
    /// data: register it in `#[init]` and `#[post_upgrade]` (or use the `gateway_filter`
    /// argument of `#[on_message]`, which registers it on every ws call).
    Callback,
}

/// An app's gateway filter ([`GatewayPolicy::Callback`]).
pub type GatewayFilter = fn(&candid::Principal) -> bool;

thread_local! {
    static GATEWAY_FILTER: std::cell::Cell<Option<GatewayFilter>> =
        const { std::cell::Cell::new(None) };
}

/// Registers the app's gateway filter, used under [`GatewayPolicy::Callback`].
pub fn set_gateway_filter(filter: GatewayFilter) {
    GATEWAY_FILTER.with(|f| f.set(Some(filter)));
}

impl GatewayPolicy {
    /// Whether `caller` may act as a gateway.
    pub fn allows(&self, caller: &candid::Principal) -> bool {
        match self {
            GatewayPolicy::Open => true,
            GatewayPolicy::Allowlist(list) => list.contains(caller),
            GatewayPolicy::Callback => GATEWAY_FILTER
                .with(std::cell::Cell::get)
                .is_some_and(|f| f(caller)),
        }
    }
}

/// Default of [`WsConfig::max_entries_per_call`].
pub const DEFAULT_MAX_ENTRIES_PER_CALL: u32 = 500;
/// Default of [`WsConfig::max_instructions_per_call`]: 2 billion instructions, one execution
/// slice on the IC (an update executing more is spread over several rounds by deterministic
/// time slicing; the limit of one update is 40 billion). An honest batch of 500 entries with
/// cheap handlers costs about 1.1 billion (measured: 2.2M per verified entry whose handler
/// sends one message, BENCHMARKS.md), so it fits in one call; a batch of expensive entries is cut at 2 billion plus its last entry,
/// which may use up to 38 billion more before the IC's limit would trap the whole call.
pub const DEFAULT_MAX_INSTRUCTIONS_PER_CALL: u64 = 2_000_000_000;
/// Default of [`WsConfig::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: u64 = 200_000;
/// Default of [`WsConfig::max_retained_bytes`].
pub const DEFAULT_MAX_RETAINED_BYTES: u64 = 1 << 30;
/// Default of [`WsConfig::max_subscriptions`].
pub const DEFAULT_MAX_SUBSCRIPTIONS: u64 = 1_000_000;
/// Default of [`WsConfig::max_gateways`].
pub const DEFAULT_MAX_GATEWAYS: u64 = 10_000;
/// Default of [`WsConfig::gateway_retention_ns`].
pub const DEFAULT_GATEWAY_RETENTION_NS: u64 = 600 * SECOND_NS;
/// Default of [`WsConfig::housekeeping_instructions`].
pub const DEFAULT_HOUSEKEEPING_INSTRUCTIONS: u64 = 1_000_000_000;
/// Default of [`WsConfig::max_retained_messages`].
pub const DEFAULT_MAX_RETAINED_MESSAGES: u64 = 1_000_000;

/// The IC's instruction limit of one `install_code` (pre_upgrade + post_upgrade together).
pub const UPGRADE_INSTRUCTION_LIMIT: u64 = 300_000_000_000;
/// What the runtime's post-upgrade rebuild may cost in the worst case a configuration allows:
/// 20 % of [`UPGRADE_INSTRUCTION_LIMIT`] (the rest is the app's own post-upgrade work and
/// margin).
pub const REBUILD_INSTRUCTION_BUDGET: u64 = 60_000_000_000;
/// Rebuild instructions of an upgrade with nothing retained (measured: 0.8M; rounded up).
pub const REBUILD_BASE_INSTRUCTIONS: u64 = 5_000_000;
/// Rebuild instructions per session, besides its messages (measured, rounded up 25 %: see
/// BENCHMARKS.md, "Upgrades at the limits").
pub const REBUILD_INSTRUCTIONS_PER_SESSION: u64 = 25_000;
/// Rebuild instructions per retained message, whatever its size (measured, rounded up 25 %).
pub const REBUILD_INSTRUCTIONS_PER_MESSAGE: u64 = 37_500;

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_inbound_payload_bytes: 64 * 1024,
            max_outbound_payload_bytes: 256 * 1024,
            max_queued_messages: 1024,
            max_queued_bytes: 4 * 1024 * 1024,
            max_sessions_per_gateway: 50_000,
            max_topic_subscribers: 10_000,
            max_topic_len: 128,
            max_poll_messages: 500,
            max_poll_bytes: 1536 * 1024,
            idle_timeout_ns: 120 * SECOND_NS,
            clock_skew_ns: 300 * SECOND_NS,
            closed_retention_ns: 600 * SECOND_NS,
            overflow_policy: OverflowPolicy::Close,
            max_housekeeping_per_call: 100,
            max_entries_per_call: None,
            max_sessions: None,
            gateways: None,
            max_instructions_per_call: None,
            max_retained_bytes: None,
            max_subscriptions: None,
            max_gateways: None,
            gateway_retention_ns: None,
            housekeeping_instructions: None,
            max_retained_messages: None,
            identity_policy: None,
            ic_root_key: None,
            max_sessions_per_principal: None,
        }
    }
}

/// Largest poll reply content the runtime ever allows, whatever the configuration: 2.5 MiB
/// leaves room for the certificate, the witness and candid framing under the 3 MiB limit.
pub const HARD_MAX_POLL_BYTES: u32 = 2560 * 1024;

impl WsConfig {
    /// Checks that the values are usable; returns what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_queued_messages == 0 || self.max_queued_bytes == 0 {
            return Err("queue limits must be positive".into());
        }
        if self.max_poll_messages == 0 || self.max_poll_bytes == 0 {
            return Err("poll limits must be positive".into());
        }
        if self.max_poll_bytes > HARD_MAX_POLL_BYTES {
            return Err(format!(
                "max_poll_bytes {} exceeds {HARD_MAX_POLL_BYTES} (3 MiB query reply limit)",
                self.max_poll_bytes
            ));
        }
        if u64::from(self.max_poll_bytes) < self.max_outbound_payload_bytes + 1024 {
            return Err(
                "max_poll_bytes must exceed max_outbound_payload_bytes + 1 KiB, \
                 or a large message could never be polled"
                    .into(),
            );
        }
        if self.idle_timeout_ns == 0 {
            return Err("idle_timeout_ns must be positive".into());
        }
        if self.closed_retention_ns < self.clock_skew_ns {
            return Err("closed_retention_ns must be at least clock_skew_ns".into());
        }
        if self.max_housekeeping_per_call == 0 {
            return Err("max_housekeeping_per_call must be positive".into());
        }
        if self.max_entries_per_call == Some(0) {
            return Err("max_entries_per_call must be positive".into());
        }
        if self.max_instructions_per_call == Some(0) {
            return Err("max_instructions_per_call must be positive".into());
        }
        if self.max_sessions == Some(0) {
            return Err("max_sessions must be positive".into());
        }
        for (name, v) in [
            ("max_retained_bytes", self.max_retained_bytes),
            ("max_subscriptions", self.max_subscriptions),
            ("max_gateways", self.max_gateways),
            ("housekeeping_instructions", self.housekeeping_instructions),
        ] {
            if v == Some(0) {
                return Err(format!("{name} must be positive"));
            }
        }
        if matches!(&self.gateways, Some(GatewayPolicy::Allowlist(l)) if l.is_empty()) {
            return Err("an empty gateway allowlist would refuse every gateway".into());
        }
        if self.max_sessions_per_principal == Some(0) {
            return Err("max_sessions_per_principal must be positive".into());
        }
        if let Some(k) = &self.ic_root_key {
            if k.len() != 96 && k.len() != 133 {
                return Err("ic_root_key must be 96 raw bytes or the 133-byte DER form".into());
            }
        }
        if self.max_retained_messages == Some(0) {
            return Err("max_retained_messages must be positive".into());
        }
        let cost = self.worst_case_rebuild_instructions();
        if cost > REBUILD_INSTRUCTION_BUDGET {
            return Err(format!(
                "the post-upgrade rebuild could cost {cost} instructions with max_sessions = {} \
                 and max_retained_messages = {}, more than the budget of \
                 {REBUILD_INSTRUCTION_BUDGET} (20 % of the IC's upgrade limit): lower them",
                self.sessions(),
                self.retained_messages()
            ));
        }
        Ok(())
    }

    /// [`WsConfig::max_retained_messages`] with its default applied.
    pub fn retained_messages(&self) -> u64 {
        self.max_retained_messages
            .unwrap_or(DEFAULT_MAX_RETAINED_MESSAGES)
    }

    /// The most instructions the post-upgrade rebuild can cost under this configuration:
    ///
    /// ```text
    /// BASE + PER_SESSION x max_sessions + PER_MESSAGE x (max_retained_messages + max_sessions)
    /// ```
    ///
    /// (`+ max_sessions` messages: each session's `Closed` message, exempt from the cap).
    /// Message sizes do not appear: the rebuild reads each message's stored content hash, not
    /// its content. [`configure`](crate::configure) refuses a configuration above
    /// [`REBUILD_INSTRUCTION_BUDGET`].
    pub fn worst_case_rebuild_instructions(&self) -> u64 {
        let sessions = self.sessions();
        REBUILD_BASE_INSTRUCTIONS
            .saturating_add(REBUILD_INSTRUCTIONS_PER_SESSION.saturating_mul(sessions))
            .saturating_add(
                REBUILD_INSTRUCTIONS_PER_MESSAGE
                    .saturating_mul(self.retained_messages().saturating_add(sessions)),
            )
    }

    /// [`WsConfig::max_entries_per_call`] with its default applied.
    pub fn entries_per_call(&self) -> usize {
        self.max_entries_per_call
            .unwrap_or(DEFAULT_MAX_ENTRIES_PER_CALL) as usize
    }

    /// [`WsConfig::max_instructions_per_call`] with its default applied.
    pub fn instructions_per_call(&self) -> u64 {
        self.max_instructions_per_call
            .unwrap_or(DEFAULT_MAX_INSTRUCTIONS_PER_CALL)
    }

    /// [`WsConfig::max_sessions`] with its default applied.
    pub fn sessions(&self) -> u64 {
        self.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS)
    }

    /// [`WsConfig::max_retained_bytes`] with its default applied.
    pub fn retained_bytes(&self) -> u64 {
        self.max_retained_bytes
            .unwrap_or(DEFAULT_MAX_RETAINED_BYTES)
    }

    /// [`WsConfig::max_subscriptions`] with its default applied.
    pub fn subscriptions(&self) -> u64 {
        self.max_subscriptions.unwrap_or(DEFAULT_MAX_SUBSCRIPTIONS)
    }

    /// [`WsConfig::max_gateways`] with its default applied.
    pub fn gateway_records(&self) -> u64 {
        self.max_gateways.unwrap_or(DEFAULT_MAX_GATEWAYS)
    }

    /// [`WsConfig::gateway_retention_ns`] with its default applied.
    pub fn gateway_retention(&self) -> u64 {
        self.gateway_retention_ns
            .unwrap_or(DEFAULT_GATEWAY_RETENTION_NS)
    }

    /// [`WsConfig::housekeeping_instructions`] with its default applied.
    pub fn housekeeping_budget(&self) -> u64 {
        self.housekeeping_instructions
            .unwrap_or(DEFAULT_HOUSEKEEPING_INSTRUCTIONS)
    }

    /// [`WsConfig::identity_policy`] with its default applied.
    pub fn identity_policy(&self) -> IdentityPolicy {
        self.identity_policy.unwrap_or_default()
    }

    /// [`WsConfig::ic_root_key`] with its default applied.
    pub fn ic_root_key(&self) -> Vec<u8> {
        self.ic_root_key
            .clone()
            .unwrap_or_else(|| MAINNET_IC_ROOT_KEY_DER.to_vec())
    }

    /// [`WsConfig::max_sessions_per_principal`] with its default applied.
    pub fn sessions_per_principal(&self) -> u64 {
        self.max_sessions_per_principal.unwrap_or(64)
    }

    /// Whether `caller` may act as a gateway ([`WsConfig::gateways`]).
    pub fn allows_gateway(&self, caller: &candid::Principal) -> bool {
        self.gateways.as_ref().is_none_or(|p| p.allows(caller))
    }
}
