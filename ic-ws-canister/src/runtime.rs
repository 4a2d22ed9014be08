//! The runtime's state (stable structures + the heap certification tree and delivery logs)
//! and every state transition of the protocol: open, resume, inbound messages, acks, detach,
//! close, expiry, deletion, send, publish, subscriptions and polling.
//!
//! Retained outbound messages: each is one arena chunk ([`crate::arena`]); a session's
//! chunks are linked oldest to newest from its client record (`head`/`tail`), which is all
//! its queue operations need (append, release a prefix on ack, walk on detach/attach/delete).
//! A chunk also holds its delivery-log index, from which the heap delivery logs
//! (`(gateway, log index)` -> message, the global poll order) are rebuilt when the state is
//! loaded, together with the certified tree. So a `send` writes one chunk, one 8-byte link
//! and the allocator's 8-byte end/free-list head, plus the client record; nothing of a
//! message is written twice and no B-tree node holds payloads.
//!
//! Nothing here calls an app handler: [`crate::lib`'s endpoint functions](crate::__private)
//! call handlers between state transitions, never while the state is borrowed, so handlers
//! can freely call `send`, `close`, `publish`, ... Each transition checks everything first
//! and only then mutates, so a rejected request changes nothing.

use crate::arena::Arena;
use crate::config::WsConfig;
use crate::env;
use crate::hash_tree::{compose_root, compose_tree, encode_tree, ws_witness, WsTree};
use crate::memory::{slot, ws_memory, Memory};
use crate::store::{
    client_sub_key, pair_key, sub_key, ChunkHead, ClientRecord, Counters, GatewayRecord, KeyRecord,
    OutBody, OutEntry, SharedContent, CHUNK_HEADER, CHUNK_LOG_IDX, CHUNK_NEXT, CHUNK_PEEK,
    NOT_LOGGED,
};
use crate::{ClientInfo, Error};
use candid::Principal;
use ic_certification::Hash;
use ic_stable_structures::{StableBTreeMap, StableCell};
use ic_ws_protocol::types::{
    ClientMessage, MessageKind, OpenOk, OpenRequest, OutboundBody, OutboundContent,
    OutboundMessage, PollReply, PollRequest,
};
use ic_ws_protocol::{content_hash, ClientId, CloseReason, WsError};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

pub(crate) mod identity;
mod inbound;
mod outbound;
mod sessions;
mod sybil;
mod topics;
pub(crate) use sybil::GatewayIdle;
mod upgrade;
#[cfg(feature = "test-hooks")]
pub(crate) use upgrade::test_fill;
pub(crate) use upgrade::{current_config, not_rebuilt_since_upgrade};

/// Log indices are persisted in blocks of this many: the counters cell is written once per
/// block instead of on every send. After an upgrade numbering resumes at the persisted
/// bound, so indices stay strictly increasing (gateway cursors stay valid); at most one
/// block is skipped per upgrade.
const LOG_IDX_BLOCK: u64 = 1 << 16;

/// Key records the sweep of consumed-open records looks at per update call (besides the two
/// each new record without sessions pays for, see `State::consume_open_ts`).
pub(crate) const KEY_SWEEP_PER_CALL: usize = 8;

/// Most bytes of the text in a certified refusal (`OpenRejected`, `MessageRejected`): an
/// application's error text is cut (on a character boundary) to this.
pub(crate) const MAX_OUTCOME_TEXT_BYTES: usize = 1024;

/// Room checked before a new session mutates anything: its `Opened` (~150 bytes) or, if
/// `on_open` refuses, its `OpenRejected` (key, timestamp and an error text of at most
/// [`MAX_OUTCOME_TEXT_BYTES`], with candid framing).
const ROOM_FOR_OPEN_OUTCOME: u64 = (CHUNK_HEADER + 512 + MAX_OUTCOME_TEXT_BYTES) as u64;

/// The error a certified refusal carries: `Rejected` or `DecodeError` with its text bounded
/// to [`MAX_OUTCOME_TEXT_BYTES`]; any other error a handler returns becomes `Rejected` with
/// its description (the sequence number is consumed all the same).
pub(crate) fn outcome_error(e: WsError) -> WsError {
    let cut = |t: &str| ic_ws_protocol::text::bounded(t, MAX_OUTCOME_TEXT_BYTES);
    match e {
        WsError::Rejected(t) => WsError::Rejected(cut(&t)),
        WsError::DecodeError(t) => WsError::DecodeError(cut(&t)),
        other => WsError::Rejected(cut(&other.to_string())),
    }
}

/// A delivery-log entry: which message a gateway's log position refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LogRef {
    client: ClientId,
    seq: u64,
    /// Arena address of the message.
    addr: u64,
}

/// Everything the runtime keeps.
pub(crate) struct State {
    counters_cell: StableCell<[u8; 32], Memory>,
    config_cell: StableCell<Vec<u8>, Memory>,
    app_hash_cell: StableCell<Vec<u8>, Memory>,
    pub(crate) clients: StableBTreeMap<u64, ClientRecord, Memory>,
    keys: StableBTreeMap<[u8; 32], KeyRecord, Memory>,
    gateways: StableBTreeMap<Principal, GatewayRecord, Memory>,
    gateway_ids: StableBTreeMap<u32, Principal, Memory>,
    /// Retained outbound messages (chunks linked per session, see [`crate::arena`]).
    arena: Arena,
    /// Delivery logs of all gateways, `(gateway id, log index)` -> message. Heap only:
    /// rebuilt from the chunks (which hold their log index) when the state is loaded.
    log: BTreeMap<(u32, u64), LogRef>,
    pub(crate) shared: StableBTreeMap<u64, SharedContent, Memory>,
    subs: StableBTreeMap<Vec<u8>, (), Memory>,
    client_subs: StableBTreeMap<Vec<u8>, (), Memory>,
    topics: StableBTreeMap<Vec<u8>, u64, Memory>,
    /// Open sessions by their last activity, `(last_activity_ns, id)`: expiry takes the
    /// oldest. Heap only, rebuilt from the client records when the state is loaded: every
    /// accepted message moves its session's entry, and in stable memory that move cost
    /// 47k-134k instructions per message (a B-tree remove and insert, more with more sessions
    /// open), against a few thousand here.
    activity: BTreeSet<(u64, ClientId)>,
    closed: StableBTreeMap<[u8; 16], (), Memory>,
    pending_close: StableBTreeMap<u64, Vec<u8>, Memory>,
    /// Issue 10: verified principals of sessions (see `runtime/identity.rs`).
    pub(crate) identities: StableBTreeMap<Vec<u8>, Vec<u8>, Memory>,
    /// Persisted counters; `next_log_idx` there is the bound of the reserved block.
    counters: Counters,
    /// The next delivery-log index (heap; `< counters.next_log_idx`).
    next_log_idx: u64,
    pub(crate) config: WsConfig,
    app_hash: Option<Hash>,
    pub(crate) tree: WsTree,
    /// Where the incremental sweep of consumed-open records stopped (heap: after an upgrade
    /// the sweep starts over from the first key).
    key_sweep_from: Option<[u8; 32]>,
    /// Retained outbound payload bytes of all sessions (heap; the sum of the client records'
    /// `queued_bytes`, recomputed when the state is loaded): `max_retained_bytes`.
    retained_bytes: u64,
    /// Gateway records without attached sessions, by the time they became idle (heap;
    /// rebuilt when the state is loaded): deleted after `gateway_retention_ns`.
    gateway_idle: GatewayIdle,
    /// Retained messages in the whole canister (heap: counted by the rebuild, kept by
    /// `enqueue` / `forget_msg`), against [`WsConfig::retained_messages`].
    retained: u64,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// Runs `f` on the state, loading it (and rebuilding the tree) on first use.
///
/// Never call an app handler inside `f`.
pub(crate) fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|cell| {
        let mut guard = cell.borrow_mut();
        let state = guard.get_or_insert_with(State::load);
        f(state)
    })
}

/// Loads the state now (after an upgrade: rebuilds the tree and re-sets certified data).
pub(crate) fn load_now() {
    with_state(|s| s.certify());
}

/// What an accepted inbound message asks the endpoint to do next.
pub(crate) enum Accepted {
    /// Call `on_message` with this payload.
    App(Vec<u8>),
    /// Nothing more.
    KeepAlive,
    /// The session was closed by the client.
    Closed,
}

/// Outcome of a new-session open before `on_open` runs.
pub(crate) struct NewSession {
    pub(crate) ok: OpenOk,
    prev_key: Option<KeyRecord>,
    key: [u8; 32],
    open_ts: u64,
}

impl State {
    fn load() -> State {
        let counters_cell = StableCell::init(ws_memory(slot::COUNTERS), [0u8; 32]);
        let config_cell = StableCell::init(ws_memory(slot::CONFIG), Vec::new());
        let app_hash_cell = StableCell::init(ws_memory(slot::APP_HASH), Vec::new());
        let counters = Counters::from_array(counters_cell.get());
        let config = if config_cell.get().is_empty() {
            WsConfig::default()
        } else {
            // Written by `configure` from a validated value; on a decode failure (an
            // incompatible older layout) the defaults are the safe choice.
            ic_ws_protocol::decode(config_cell.get()).unwrap_or_default()
        };
        let app_hash = <[u8; 32]>::try_from(app_hash_cell.get().as_slice()).ok();
        let mut s = State {
            counters_cell,
            config_cell,
            app_hash_cell,
            clients: StableBTreeMap::init(ws_memory(slot::CLIENTS)),
            keys: StableBTreeMap::init(ws_memory(slot::KEYS)),
            gateways: StableBTreeMap::init(ws_memory(slot::GATEWAYS)),
            gateway_ids: StableBTreeMap::init(ws_memory(slot::GATEWAY_IDS)),
            arena: Arena::init(ws_memory(slot::OUTBOX)),
            log: BTreeMap::new(),
            shared: StableBTreeMap::init(ws_memory(slot::SHARED)),
            subs: StableBTreeMap::init(ws_memory(slot::SUBS)),
            client_subs: StableBTreeMap::init(ws_memory(slot::CLIENT_SUBS)),
            topics: StableBTreeMap::init(ws_memory(slot::TOPICS)),
            activity: BTreeSet::new(),
            closed: StableBTreeMap::init(ws_memory(slot::CLOSED)),
            pending_close: StableBTreeMap::init(ws_memory(slot::PENDING_CLOSE)),
            identities: StableBTreeMap::init(ws_memory(slot::IDENTITIES)),
            next_log_idx: counters.next_log_idx,
            counters,
            config,
            app_hash,
            tree: WsTree::default(),
            key_sweep_from: None,
            retained_bytes: 0,
            gateway_idle: GatewayIdle::default(),
            retained: 0,
        };
        s.rebuild();
        s.rebuild_sybil_accounting(env::time_ns());
        s
    }

    /// The message stored at `addr`: its `next` link and itself.
    fn read_msg(&self, addr: u64) -> Option<(u64, OutEntry)> {
        let mut head = [0u8; CHUNK_HEADER];
        if !self.arena.read(addr, &mut head) {
            return None;
        }
        let h = ChunkHead::parse(&head);
        let mut chunk = vec![0u8; h.body_offset() + h.body_len as usize];
        if !self.arena.read(addr, &mut chunk) {
            return None;
        }
        Some(OutEntry::from_chunk(&chunk))
    }

    /// The fixed part of the message at `addr`.
    fn peek_msg(&self, addr: u64) -> Option<ChunkHead> {
        let mut head = [0u8; CHUNK_PEEK];
        // Shorter reads only for a small last chunk of the arena.
        [CHUNK_PEEK, CHUNK_HEADER + 32, CHUNK_HEADER]
            .into_iter()
            .find(|&n| self.arena.read(addr, &mut head[..n]))
            .map(|n| ChunkHead::parse(&head[..n]))
    }

    /// A session's retained messages: `(seq, address, fixed part)`, oldest first.
    fn chain(&self, rec: &ClientRecord) -> Vec<(u64, u64, ChunkHead)> {
        let mut out = Vec::new();
        let mut addr = rec.head;
        for seq in rec.first_retained_seq..rec.next_outbound_seq {
            let Some(h) = self.peek_msg(addr) else {
                break;
            };
            out.push((seq, addr, h));
            addr = h.next;
        }
        out
    }

    /// The arena's end (bytes in use, free chunks included).
    #[cfg(test)]
    pub(crate) fn arena_end(&self) -> u64 {
        self.arena.end()
    }

    /// Takes the next delivery-log index (persisting a new block bound when needed).
    fn take_log_idx(&mut self) -> u64 {
        let idx = self.next_log_idx;
        self.next_log_idx += 1;
        if self.next_log_idx > self.counters.next_log_idx {
            self.counters.next_log_idx = self.next_log_idx.saturating_add(LOG_IDX_BLOCK);
            self.save_counters();
        }
        idx
    }

    // ---------------------------------------------------------------- helpers

    fn save_counters(&mut self) {
        self.counters_cell.set(self.counters.to_array());
    }

    pub(crate) fn app_hash(&self) -> Option<Hash> {
        self.app_hash
    }

    pub(crate) fn set_app_hash(&mut self, hash: Option<Hash>) {
        self.app_hash = hash;
        self.app_hash_cell
            .set(hash.map(|h| h.to_vec()).unwrap_or_default());
    }

    pub(crate) fn root_hash(&mut self) -> Hash {
        compose_root(self.tree.labeled_hash(), self.app_hash)
    }

    /// Puts the current root hash into `certified_data`.
    pub(crate) fn certify(&mut self) {
        env::set_certified_data(&self.root_hash());
    }

    pub(crate) fn set_config(&mut self, config: WsConfig) -> Result<(), Error> {
        config.validate().map_err(Error::InvalidArgument)?;
        let bytes = ic_ws_protocol::encode(&config).map_err(|e| Error::Encode(e.to_string()))?;
        self.config_cell.set(bytes);
        self.config = config;
        Ok(())
    }

    fn gateway_id(&self, p: &Principal) -> Option<u32> {
        self.gateways.get(p).map(|g| g.id)
    }

    fn gateway_principal(&self, id: u32) -> Principal {
        self.gateway_ids.get(&id).unwrap_or(Principal::anonymous())
    }

    fn gateway_or_create(&mut self, p: Principal) -> GatewayRecord {
        if let Some(g) = self.gateways.get(&p) {
            return g;
        }
        let id = self.counters.next_gateway_id as u32;
        self.counters.next_gateway_id += 1;
        self.save_counters();
        let g = GatewayRecord { id, sessions: 0 };
        self.gateways.insert(p, g);
        self.gateway_ids.insert(id, p);
        self.gateway_idle.mark(id, env::time_ns());
        g
    }

    fn adjust_gateway_sessions(&mut self, id: u32, delta: i64) {
        let p = self.gateway_principal(id);
        if let Some(mut g) = self.gateways.get(&p) {
            g.sessions = g.sessions.saturating_add_signed(delta);
            self.gateways.insert(p, g);
            if g.sessions == 0 {
                self.gateway_idle.mark(id, env::time_ns());
            } else {
                self.gateway_idle.unmark(id);
            }
        }
    }
}

fn sig_error(e: ic_ws_protocol::SignatureError) -> WsError {
    match e {
        ic_ws_protocol::SignatureError::Malformed => WsError::MalformedKey,
        ic_ws_protocol::SignatureError::Invalid => WsError::InvalidSignature,
    }
}

/// candid of an `OutboundContent`.
pub(crate) fn encode_content(timestamp_ns: u64, body: OutboundBody) -> Vec<u8> {
    // Encoding our own well-formed value cannot fail; an empty content would simply not
    // verify at the client rather than trap the canister.
    ic_ws_protocol::encode(&OutboundContent { timestamp_ns, body }).unwrap_or_default()
}

/// Forgets the heap state (what an upgrade does); stable memory stays. Native tests only.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn forget_heap() {
    STATE.with(|s| *s.borrow_mut() = None);
}
