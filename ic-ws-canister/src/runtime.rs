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
use crate::certification::{compose_root, compose_tree, encode_tree, ws_witness, WsTree};
use crate::config::WsConfig;
use crate::env;
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
use std::collections::BTreeMap;

pub(crate) mod identity;
mod sybil;
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
    activity: StableBTreeMap<[u8; 16], (), Memory>,
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
            activity: StableBTreeMap::init(ws_memory(slot::ACTIVITY)),
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

    /// The certified content of a retained message.
    pub(crate) fn content(&self, entry: &OutEntry) -> Vec<u8> {
        match &entry.body {
            OutBody::Shared { pid, .. } => {
                self.shared.get(pid).map(|s| s.content).unwrap_or_default()
            }
            OutBody::App { ts, payload } => ic_ws_protocol::content::app_content(*ts, payload),
            OutBody::Control { content } => content.clone(),
        }
    }

    fn touch_activity(&mut self, id: ClientId, rec: &mut ClientRecord, now: u64) {
        self.activity.remove(&pair_key(rec.last_activity_ns, id));
        rec.last_activity_ns = now;
        self.activity.insert(pair_key(now, id), ());
    }

    // ---------------------------------------------------------------- outbound

    /// Appends a message to a session's queue (limits already checked), logs it for the
    /// attached gateway and certifies it. Returns its sequence number; fails only if stable
    /// memory cannot grow (nothing changed then).
    fn enqueue(
        &mut self,
        id: ClientId,
        rec: &mut ClientRecord,
        body: OutBody,
        hash: Hash,
    ) -> Result<u64, Error> {
        let seq = rec.next_outbound_seq;
        let log_idx = if rec.attached {
            self.take_log_idx()
        } else {
            NOT_LOGGED
        };
        let entry = OutEntry {
            log_idx,
            hash: Some(hash),
            body,
        };
        let counted = entry.counted_bytes();
        let mut chunk = entry.to_chunk(0);
        let addr = self
            .arena
            .store(&mut chunk)
            .map_err(|_| Error::LimitReached("stable memory exhausted".into()))?;
        if log_idx != NOT_LOGGED {
            self.log.insert(
                (rec.gateway, log_idx),
                LogRef {
                    client: id,
                    seq,
                    addr,
                },
            );
        }
        if rec.tail != 0 && rec.first_retained_seq < rec.next_outbound_seq {
            self.arena.write(rec.tail + CHUNK_NEXT, &addr.to_be_bytes());
        } else {
            rec.head = addr;
        }
        rec.tail = addr;
        rec.queued_messages += 1;
        self.retained += 1;
        rec.queued_bytes += counted;
        self.retained_bytes = self.retained_bytes.saturating_add(counted);
        rec.next_outbound_seq += 1;
        self.tree.insert(id, seq, hash);
        Ok(seq)
    }

    /// Deletes the retained messages of a session with `seq < upto`.
    fn release(&mut self, id: ClientId, rec: &mut ClientRecord, upto: u64) {
        while rec.first_retained_seq < upto.min(rec.next_outbound_seq) {
            let seq = rec.first_retained_seq;
            let addr = rec.head;
            let mut next = 0;
            if let Some(h) = self.peek_msg(addr) {
                self.forget_msg(id, rec, seq, &h);
                self.arena.free(addr);
                next = h.next;
            }
            rec.head = next;
            rec.first_retained_seq += 1;
        }
        if rec.first_retained_seq >= rec.next_outbound_seq {
            rec.head = 0;
            rec.tail = 0;
        }
    }

    fn forget_msg(&mut self, id: ClientId, rec: &mut ClientRecord, seq: u64, h: &ChunkHead) {
        self.retained = self.retained.saturating_sub(1);
        if h.log_idx != NOT_LOGGED {
            self.log.remove(&(rec.gateway, h.log_idx));
        }
        if let Some((pid, _)) = h.shared {
            self.unref_shared(pid);
        }
        rec.queued_messages = rec.queued_messages.saturating_sub(1);
        rec.queued_bytes = rec.queued_bytes.saturating_sub(h.counted_bytes());
        self.retained_bytes = self.retained_bytes.saturating_sub(h.counted_bytes());
        self.tree.remove(id, seq);
    }

    fn unref_shared(&mut self, pid: u64) {
        if let Some(mut s) = self.shared.get(&pid) {
            s.refs = s.refs.saturating_sub(1);
            if s.refs == 0 {
                self.shared.remove(&pid);
            } else {
                self.shared.insert(pid, s);
            }
        }
    }

    /// Removes a session's retained messages from its gateway's delivery log.
    fn detach(&mut self, id: ClientId, rec: &mut ClientRecord) {
        if !rec.attached {
            return;
        }
        let _ = id;
        for (_, addr, h) in self.chain(rec) {
            if h.log_idx != NOT_LOGGED {
                self.log.remove(&(rec.gateway, h.log_idx));
                self.arena
                    .write(addr + CHUNK_LOG_IDX, &NOT_LOGGED.to_be_bytes());
            }
        }
        self.adjust_gateway_sessions(rec.gateway, -1);
        rec.attached = false;
    }

    /// Attaches a detached session to gateway `gw` and logs its retained messages for it.
    fn attach(&mut self, id: ClientId, rec: &mut ClientRecord, gw: u32) {
        rec.gateway = gw;
        rec.attached = true;
        self.adjust_gateway_sessions(gw, 1);
        for (seq, addr, _) in self.chain(rec) {
            let idx = self.take_log_idx();
            self.log.insert(
                (gw, idx),
                LogRef {
                    client: id,
                    seq,
                    addr,
                },
            );
            self.arena.write(addr + CHUNK_LOG_IDX, &idx.to_be_bytes());
        }
    }

    /// Checks the queue limits for one more message of `bytes` payload bytes.
    fn fits(&self, rec: &ClientRecord, bytes: u64) -> bool {
        rec.queued_messages < self.config.max_queued_messages
            && rec.queued_bytes.saturating_add(bytes) <= self.config.max_queued_bytes
    }

    /// Sends an app payload (candid bytes) to one client.
    pub(crate) fn send_payload(
        &mut self,
        id: ClientId,
        payload: Vec<u8>,
        now: u64,
    ) -> Result<u64, Error> {
        let mut rec = self.clients.get(&id).ok_or(Error::UnknownClient(id))?;
        if rec.closed {
            return Err(Error::Closed(id));
        }
        let size = payload.len() as u64;
        if size > self.config.max_outbound_payload_bytes {
            return Err(Error::TooLarge {
                size,
                limit: self.config.max_outbound_payload_bytes,
            });
        }
        if !self.fits(&rec, size) {
            return Err(self.overflow(id, now));
        }
        self.check_retained_bytes(size, 1)?;
        self.check_canister_room().map_err(Error::LimitReached)?;
        let hash = content_hash(&ic_ws_protocol::content::app_content(now, &payload));
        let seq = self.enqueue(id, &mut rec, OutBody::App { ts: now, payload }, hash)?;
        self.clients.insert(id, rec);
        Ok(seq)
    }

    /// Applies the overflow policy to a full session; returns the error for the sender.
    fn overflow(&mut self, id: ClientId, now: u64) -> Error {
        match self.config.overflow_policy {
            crate::OverflowPolicy::Reject => Error::QueueFull(id),
            crate::OverflowPolicy::Close => {
                self.close_session(id, CloseReason::QueueOverflow, now);
                Error::QueueOverflowClosed(id)
            }
        }
    }

    /// Closes a session: queues the certified `Closed` message (beyond the limits: it is the
    /// last one), drops its subscriptions, schedules `on_close` and its deletion. Returns
    /// false if it was already closed (or unknown).
    pub(crate) fn close_session(&mut self, id: ClientId, reason: CloseReason, now: u64) -> bool {
        let Some(mut rec) = self.clients.get(&id) else {
            return false;
        };
        if rec.closed {
            return false;
        }
        let reason_bytes = ic_ws_protocol::encode(&reason).unwrap_or_default();
        let content = encode_content(now, OutboundBody::Closed { reason });
        let hash = content_hash(&content);
        // Only fails when stable memory cannot grow: the session still closes (its clients
        // then learn it from `UnknownClient`/`Closed` errors instead of the message).
        let _ = self.enqueue(id, &mut rec, OutBody::Control { content }, hash);
        rec.closed = true;
        rec.closed_at_ns = now;
        self.activity.remove(&pair_key(rec.last_activity_ns, id));
        self.closed.insert(pair_key(now, id), ());
        self.unsubscribe_all(id);
        self.identity_closed(id);
        self.pending_close.insert(id, reason_bytes);
        self.clients.insert(id, rec);
        true
    }

    /// Deletes every trace of a session (after its retention, or a rejected open).
    fn delete_session(&mut self, id: ClientId, now: u64) {
        let Some(mut rec) = self.clients.remove(&id) else {
            return;
        };
        for (seq, addr, h) in self.chain(&rec) {
            self.forget_msg(id, &mut rec, seq, &h);
            self.arena.free(addr);
        }
        self.tree.remove_client(id);
        if rec.attached {
            self.adjust_gateway_sessions(rec.gateway, -1);
        }
        self.activity.remove(&pair_key(rec.last_activity_ns, id));
        self.closed.remove(&pair_key(rec.closed_at_ns, id));
        self.unsubscribe_all(id);
        self.pending_close.remove(&id);
        self.identity_deleted(id);
        if let Some(mut k) = self.keys.get(&rec.key) {
            k.sessions = k.sessions.saturating_sub(1);
            if k.sessions == 0 && !self.open_ts_replayable(&k, now) {
                self.keys.remove(&rec.key);
            } else {
                // Still replayable: kept (without sessions) until the sweep finds it expired.
                self.keys.insert(rec.key, k);
            }
        }
    }

    /// The key record of `key` (tests).
    #[cfg(test)]
    pub(crate) fn key_record(&self, key: &[u8; 32]) -> Option<KeyRecord> {
        self.keys.get(key)
    }

    /// Whether an open signed with `k.last_open_ts` could still pass the clock-skew check.
    fn open_ts_replayable(&self, k: &KeyRecord, now: u64) -> bool {
        k.last_open_ts.saturating_add(self.config.clock_skew_ns) >= now
    }

    /// Records that an open of `key` with timestamp `ts` was decided (accepted or refused
    /// after its signature checked out): the same signed open is `StaleOpen` from now on, so a
    /// gateway cannot replay a refused open once the reason for refusing it is gone.
    fn consume_open_ts(&mut self, key: [u8; 32], ts: u64, now: u64) {
        let mut k = self.keys.get(&key).unwrap_or_default();
        k.last_open_ts = k.last_open_ts.max(ts);
        self.keys.insert(key, k);
        if k.sessions == 0 {
            // Each record without sessions pays for the sweep of two: they cannot pile up
            // faster than the sweep goes round.
            self.sweep_keys(2, now);
        }
    }

    /// Deletes key records that hold no session and whose last open can no longer be replayed
    /// (it is outside the clock-skew window). Incremental: looks at `budget` records per call,
    /// continuing where the previous call stopped, so the work per call stays bounded.
    pub(crate) fn sweep_keys(&mut self, budget: usize, now: u64) {
        let mut left = budget;
        // At most one wrap-around per call: from the cursor to the end, then from the start.
        for _ in 0..2 {
            let from = self.key_sweep_from.take();
            let mut last = None;
            let mut expired = Vec::new();
            let range = match from {
                Some(k) => self
                    .keys
                    .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
                None => self.keys.range(..),
            };
            for entry in range.take(left) {
                let (key, k) = (*entry.key(), entry.value());
                left -= 1;
                last = Some(key);
                if k.sessions == 0 && !self.open_ts_replayable(&k, now) {
                    expired.push(key);
                }
            }
            for key in expired {
                self.keys.remove(&key);
            }
            if left == 0 {
                // Budget spent before the end: continue after `last` next time.
                self.key_sweep_from = last;
                return;
            }
            // The end was reached: the next round starts from the first key.
            if from.is_none() {
                return;
            }
        }
    }

    /// Takes the next session whose `on_close` is due.
    pub(crate) fn pop_pending_close(&mut self) -> Option<(ClientId, CloseReason)> {
        let (id, bytes) = self.pending_close.pop_first()?;
        let reason =
            ic_ws_protocol::decode(&bytes).unwrap_or(CloseReason::ProtocolError(String::new()));
        Some((id, reason))
    }

    // ---------------------------------------------------------------- open

    /// Every check of an open, without changing anything.
    fn check_open(
        &self,
        caller: Principal,
        canister: &Principal,
        open: &OpenRequest,
        now: u64,
    ) -> Result<([u8; 32], identity::VerifiedLinks), WsError> {
        if caller == Principal::anonymous() {
            return Err(WsError::AnonymousGateway);
        }
        if open.gateway != caller {
            return Err(WsError::GatewayMismatch);
        }
        let key: [u8; 32] = open
            .client_key
            .as_slice()
            .try_into()
            .map_err(|_| WsError::MalformedKey)?;
        let links = self.verify_open_signatures(canister, &key, open, now)?;
        if open.timestamp_ns.abs_diff(now) > self.config.clock_skew_ns {
            return Err(WsError::StaleOpen);
        }
        if let Some(k) = self.keys.get(&key) {
            if open.timestamp_ns <= k.last_open_ts {
                return Err(WsError::StaleOpen);
            }
        }
        Ok((key, links))
    }

    fn check_gateway_capacity(&self, caller: &Principal) -> Result<(), WsError> {
        let sessions = self.gateways.get(caller).map(|g| g.sessions).unwrap_or(0);
        if sessions >= self.config.max_sessions_per_gateway {
            return Err(WsError::LimitReached(format!(
                "{} sessions on this gateway",
                self.config.max_sessions_per_gateway
            )));
        }
        Ok(())
    }

    /// The canister-wide session cap: many principals acting as gateways at once (Sybil)
    /// cannot open more than `max_sessions` in all, whatever the per-gateway cap.
    fn check_canister_capacity(&self) -> Result<(), WsError> {
        let max = self.config.sessions();
        if self.clients.len() >= max {
            return Err(WsError::LimitReached(format!(
                "{max} sessions in this canister"
            )));
        }
        Ok(())
    }

    /// A new session: checks, then creates it with its `Opened` message (seq 0). The caller
    /// runs `on_open` next and calls [`State::abort_new_session`] if it rejects.
    pub(crate) fn open_new(
        &mut self,
        caller: Principal,
        canister: &Principal,
        open: &OpenRequest,
        now: u64,
    ) -> Result<NewSession, WsError> {
        let (key, links) = self.check_open(caller, canister, open, now)?;
        // The proof: verified after the open's own signature (which covers it) and before
        // anything changes; its refusals are pure functions of the signed bytes and the time,
        // so they consume nothing (a replay is refused the same way).
        let identity = self.verify_identity(canister, &key, open, now, &links)?;
        if let Err(e) = self
            .check_identity_policy(identity.as_ref())
            .and_then(|()| self.check_gateway_capacity(&caller))
            .and_then(|()| self.check_canister_capacity())
            .and_then(|()| self.check_gateway_records(&caller))
            .and_then(|()| self.check_room_for_opened(0))
        {
            self.consume_open_ts(key, open.timestamp_ns, now);
            return Err(e);
        }
        let id = self.counters.next_client_id;
        self.counters.next_client_id += 1;
        self.save_counters();
        let gw = self.gateway_or_create(caller);
        let prev_key = self.keys.get(&key);
        let mut k = prev_key.unwrap_or_default();
        k.last_open_ts = open.timestamp_ns;
        k.sessions += 1;
        self.keys.insert(key, k);
        let mut rec = ClientRecord {
            key,
            gateway: gw.id,
            attached: true,
            last_open_ts: open.timestamp_ns,
            opened_at_ns: now,
            last_activity_ns: now,
            ..ClientRecord::default()
        };
        self.adjust_gateway_sessions(gw.id, 1);
        self.activity.insert(pair_key(now, id), ());
        if let Some(v) = &identity {
            self.bind_identity(id, v);
        }
        let opened_seq = self.enqueue_opened(id, &mut rec, open.timestamp_ns, false, now);
        self.clients.insert(id, rec);
        Ok(NewSession {
            ok: OpenOk {
                client_id: id,
                next_inbound_seq: 0,
                opened_seq,
            },
            prev_key,
            key,
            open_ts: open.timestamp_ns,
        })
    }

    fn enqueue_opened(
        &mut self,
        id: ClientId,
        rec: &mut ClientRecord,
        open_ts: u64,
        resumed: bool,
        now: u64,
    ) -> u64 {
        let content = encode_content(
            now,
            OutboundBody::Opened {
                client_key: rec.key.to_vec(),
                open_timestamp_ns: open_ts,
                next_inbound_seq: rec.next_inbound_seq,
                resumed,
                max_inbound_payload_bytes: self.config.max_inbound_payload_bytes,
                idle_timeout_ns: self.config.idle_timeout_ns,
                principal: self.bound_identity(id).map(|b| b.principal),
            },
        );
        let hash = content_hash(&content);
        let body = OutBody::Control { content };
        let seq = rec.next_outbound_seq;
        // Cannot fail: `check_room_for_opened` made room for this chunk.
        self.enqueue(id, rec, body, hash).unwrap_or(seq)
    }

    /// Makes sure the arena can store an `Opened` message, or a new session's
    /// `OpenRejected` (checked before an open mutates), and the canister-wide message cap
    /// allows it. `releasing`: messages the open releases before it queues (a resume's
    /// acknowledgement).
    fn check_room_for_opened(&mut self, releasing: u64) -> Result<(), WsError> {
        self.check_canister_room_after(releasing)
            .map_err(WsError::LimitReached)?;
        if self.arena.reserve(ROOM_FOR_OPEN_OUTCOME) {
            Ok(())
        } else {
            Err(WsError::LimitReached("stable memory exhausted".into()))
        }
    }

    /// `on_open` refused the new session (`error`: `Rejected` or `DecodeError`, bounded by
    /// [`outcome_error`]): the session is kept, closed and never opened, with one certified
    /// message, seq 0 = `OpenRejected { client_key, open_timestamp_ns, error }`, logged for
    /// the calling gateway. Whatever `on_open` did to the session is undone first: its
    /// `Opened` and every message it queued are deleted, its subscriptions dropped, and a
    /// close it made forgotten (`on_close` is never called for a session that never opened).
    /// Like every closed session it is deleted `closed_retention` later; until then it counts
    /// toward the session caps (its gateway's and the canister's). The open's timestamp stays
    /// consumed (a replay is `StaleOpen`). Returns the `ws_open` result:
    /// `OpenRejected { client_id, reason }`, or `Rejected` (the old behaviour: nothing of the
    /// session left) in the one case the refusal cannot be stored (stable memory exhausted).
    pub(crate) fn reject_new_session(
        &mut self,
        new: &NewSession,
        error: WsError,
        now: u64,
    ) -> WsError {
        let id = new.ok.client_id;
        let reason = match &error {
            WsError::Rejected(r) => r.clone(),
            other => other.to_string(),
        };
        let Some(mut rec) = self.clients.get(&id) else {
            return WsError::Rejected(reason);
        };
        for (seq, addr, h) in self.chain(&rec) {
            self.forget_msg(id, &mut rec, seq, &h);
            self.arena.free(addr);
        }
        self.tree.remove_client(id);
        rec.head = 0;
        rec.tail = 0;
        rec.first_retained_seq = 0;
        rec.next_outbound_seq = 0;
        self.unsubscribe_all(id);
        self.pending_close.remove(&id);
        self.activity.remove(&pair_key(rec.last_activity_ns, id));
        if rec.closed {
            self.closed.remove(&pair_key(rec.closed_at_ns, id));
        }
        rec.closed = false;
        let content = encode_content(
            now,
            OutboundBody::OpenRejected {
                client_key: rec.key.to_vec(),
                open_timestamp_ns: new.open_ts,
                error,
            },
        );
        let hash = content_hash(&content);
        if self
            .enqueue(id, &mut rec, OutBody::Control { content }, hash)
            .is_err()
        {
            self.clients.insert(id, rec);
            self.abort_new_session(new, now);
            return WsError::Rejected(reason);
        }
        rec.closed = true;
        rec.closed_at_ns = now;
        self.closed.insert(pair_key(now, id), ());
        self.identity_closed(id);
        self.clients.insert(id, rec);
        WsError::OpenRejected {
            client_id: id,
            reason,
        }
    }

    /// The handler refused accepted message `inbound_seq` of session `id` (`error`:
    /// `Rejected` or `DecodeError`, bounded by [`outcome_error`]): queues the certified
    /// `MessageRejected { inbound_seq, error }`. It is a message like any other: past the
    /// session's queue limits the overflow policy applies (`Close`: the session closes with
    /// `QueueOverflow`, certified; `Reject`: the refusal is not queued and the client only
    /// learns, from a later `Opened`'s `next_inbound_seq`, that the message was consumed). A
    /// session the handler closed gets nothing after its `Closed`.
    pub(crate) fn queue_message_rejected(
        &mut self,
        id: ClientId,
        inbound_seq: u64,
        error: WsError,
        now: u64,
    ) {
        let Some(mut rec) = self.clients.get(&id) else {
            return;
        };
        if rec.closed {
            return;
        }
        let content = encode_content(now, OutboundBody::MessageRejected { inbound_seq, error });
        if !self.fits(&rec, content.len() as u64) {
            let _ = self.overflow(id, now);
            return;
        }
        let hash = content_hash(&content);
        if self
            .enqueue(id, &mut rec, OutBody::Control { content }, hash)
            .is_ok()
        {
            self.clients.insert(id, rec);
        }
    }

    /// Undoes [`State::open_new`] after `on_open` rejected (the client id stays consumed),
    /// except that the open's timestamp stays consumed too: replaying the refused open is
    /// `StaleOpen`.
    pub(crate) fn abort_new_session(&mut self, new: &NewSession, now: u64) {
        let id = new.ok.client_id;
        self.delete_session(id, now);
        match new.prev_key {
            Some(k) => {
                self.keys.insert(new.key, k);
            }
            None => {
                self.keys.remove(&new.key);
            }
        }
        self.consume_open_ts(new.key, new.open_ts, now);
    }

    /// A resume: checks, then re-attaches the session to the caller.
    pub(crate) fn open_resume(
        &mut self,
        caller: Principal,
        canister: &Principal,
        open: &OpenRequest,
        now: u64,
    ) -> Result<OpenOk, WsError> {
        let (key, links) = self.check_open(caller, canister, open, now)?;
        // A resume may carry a fresh proof (a later delegation expiry) for the same principal
        // only; without one the bound principal is kept as it is.
        let identity = self.verify_identity(canister, &key, open, now, &links)?;
        if let (Some(v), Some(r)) = (&identity, open.resume) {
            let owns = self
                .clients
                .get(&r.client_id)
                .is_some_and(|c| c.key == key && !c.closed);
            if owns && self.bound_identity(r.client_id).map(|b| b.principal) != Some(v.principal) {
                return Err(WsError::Identity(
                    ic_ws_protocol::identity::IdentityError::PrincipalMismatch,
                ));
            }
        }
        let result = self.resume_checked(caller, key, open, now);
        if let (Ok(ok), Some(v)) = (&result, &identity) {
            // Checked above: same principal; only the expiry moves.
            let _ = self.refresh_identity(ok.client_id, v);
        }
        if result.is_err() {
            self.consume_open_ts(key, open.timestamp_ns, now);
        }
        result
    }

    /// [`State::open_resume`] after the open's signature and timestamp checked out.
    fn resume_checked(
        &mut self,
        caller: Principal,
        key: [u8; 32],
        open: &OpenRequest,
        now: u64,
    ) -> Result<OpenOk, WsError> {
        let Some(resume) = open.resume else {
            return Err(WsError::InvalidArgument("not a resume".into()));
        };
        let id = resume.client_id;
        let mut rec = self.clients.get(&id).ok_or(WsError::UnknownClient(id))?;
        if rec.key != key {
            return Err(WsError::InvalidResume);
        }
        if resume.next_outbound_seq > rec.next_outbound_seq {
            return Err(WsError::InvalidResume);
        }
        if resume.next_outbound_seq < rec.first_retained_seq {
            return Err(WsError::ResumeUnavailable {
                first_available: rec.first_retained_seq,
            });
        }
        let same_gateway = rec.attached && self.gateway_principal(rec.gateway) == caller;
        if !same_gateway {
            self.check_gateway_capacity(&caller)?;
            self.check_gateway_records(&caller)?;
        }
        if rec.closed {
            // Closed but not yet deleted, and the key's owner asks: hand it its certified end.
            // Its retained messages from `next_outbound_seq` on (the last is its `Closed`, or
            // the `OpenRejected` of a refused open) are queued again for the caller; the answer
            // stays `Closed` (uncertified: the client believes the certified message).
            self.release(id, &mut rec, resume.next_outbound_seq);
            self.detach(id, &mut rec);
            let gw = self.gateway_or_create(caller);
            self.attach(id, &mut rec, gw.id);
            self.clients.insert(id, rec);
            return Err(WsError::Closed);
        }
        self.check_room_for_opened(
            resume
                .next_outbound_seq
                .saturating_sub(rec.first_retained_seq),
        )?;
        // All checks passed: from here on, mutate.
        self.release(id, &mut rec, resume.next_outbound_seq);
        self.detach(id, &mut rec);
        let gw = self.gateway_or_create(caller);
        self.attach(id, &mut rec, gw.id);
        if let Some(mut k) = self.keys.get(&key) {
            k.last_open_ts = open.timestamp_ns;
            self.keys.insert(key, k);
        }
        rec.last_open_ts = open.timestamp_ns;
        self.touch_activity(id, &mut rec, now);
        let opened_seq = self.enqueue_opened(id, &mut rec, open.timestamp_ns, true, now);
        let next_inbound_seq = rec.next_inbound_seq;
        self.clients.insert(id, rec);
        Ok(OpenOk {
            client_id: id,
            next_inbound_seq,
            opened_seq,
        })
    }

    // ---------------------------------------------------------------- inbound

    /// Batch verification for the next entries of a `ws_message` call (their signatures are
    /// then not verified again by [`State::accept_message`]): the entries that would reach
    /// their signature check now (known session, not closed, attached to the caller, payload
    /// within bounds) are verified together. Returns, per entry, the key its signature was
    /// found valid under (`None`: not known valid, verified alone when it is processed), and
    /// whether the batch held (`false` when an entry failed the batch equation).
    /// Pure: changes nothing but the decoded-key cache.
    pub(crate) fn preverify_messages(
        &self,
        caller: Principal,
        canister: &Principal,
        msgs: &[ClientMessage],
    ) -> (Vec<Option<[u8; 32]>>, bool) {
        let gateway = self.gateway_id(&caller);
        let mut batch = crate::ed25519::OwnedBatch::default();
        let mut member = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let rec = self.clients.get(&msg.client_id).filter(|rec| {
                !rec.closed
                    && rec.attached
                    && Some(rec.gateway) == gateway
                    && match &msg.kind {
                        MessageKind::App(p) => {
                            p.len() as u64 <= self.config.max_inbound_payload_bytes
                        }
                        _ => true,
                    }
            });
            member.push(rec.map(|rec| {
                batch.0.push((
                    rec.key,
                    ic_ws_protocol::signing::message_signing_bytes(canister, msg),
                    msg.signature.clone(),
                ));
                rec.key
            }));
        }
        let verified = batch.verified();
        let held = verified.iter().all(|v| *v);
        let mut verified = verified.into_iter();
        let keys = member
            .into_iter()
            .map(|k| k.filter(|_| verified.next().unwrap_or(false)))
            .collect();
        (keys, held)
    }

    /// Checks one client message and, if it is the next one, accepts it (sequence, activity,
    /// ack). Returns what the endpoint must do next; `Ok(None)` for a duplicate.
    /// `verified_key`: the key [`State::preverify_messages`] found the signature valid under
    /// (the signature is not verified again if that is still the session's key).
    pub(crate) fn accept_message(
        &mut self,
        caller: Principal,
        canister: &Principal,
        msg: ClientMessage,
        verified_key: Option<[u8; 32]>,
        now: u64,
    ) -> Result<Option<Accepted>, WsError> {
        let id = msg.client_id;
        let mut rec = self.clients.get(&id).ok_or(WsError::UnknownClient(id))?;
        if rec.closed {
            return Err(WsError::Closed);
        }
        if !rec.attached || self.gateway_id(&caller) != Some(rec.gateway) {
            return Err(WsError::WrongGateway);
        }
        if let MessageKind::App(p) = &msg.kind {
            let size = p.len() as u64;
            if size > self.config.max_inbound_payload_bytes {
                return Err(WsError::TooLarge {
                    size,
                    limit: self.config.max_inbound_payload_bytes,
                });
            }
        }
        if verified_key != Some(rec.key) {
            crate::ed25519::verify_message(canister, &rec.key, &msg).map_err(sig_error)?;
        }
        if msg.seq < rec.next_inbound_seq {
            return Ok(None);
        }
        if msg.seq > rec.next_inbound_seq {
            return Err(WsError::OutOfSequence {
                expected: rec.next_inbound_seq,
                got: msg.seq,
            });
        }
        if msg.ack > rec.next_outbound_seq {
            return Err(WsError::InvalidArgument(format!(
                "ack {} beyond the next outbound sequence number {}",
                msg.ack, rec.next_outbound_seq
            )));
        }
        rec.next_inbound_seq += 1;
        self.touch_activity(id, &mut rec, now);
        self.release(id, &mut rec, msg.ack);
        self.clients.insert(id, rec);
        Ok(Some(match msg.kind {
            MessageKind::App(payload) => Accepted::App(payload),
            MessageKind::KeepAlive => Accepted::KeepAlive,
            MessageKind::Close { code, reason } => {
                self.close_session(id, CloseReason::ClientClosed { code, reason }, now);
                Accepted::Closed
            }
        }))
    }

    /// `ws_close` for one client: detaches it from the calling gateway.
    pub(crate) fn gateway_detach(
        &mut self,
        caller: Principal,
        id: ClientId,
    ) -> Result<(), WsError> {
        let mut rec = self.clients.get(&id).ok_or(WsError::UnknownClient(id))?;
        if !rec.attached || self.gateway_id(&caller) != Some(rec.gateway) {
            return Err(WsError::WrongGateway);
        }
        self.detach(id, &mut rec);
        self.clients.insert(id, rec);
        Ok(())
    }

    // ---------------------------------------------------------------- poll

    /// `ws_poll`: the caller's delivery log from `cursor`, capped, with a witness.
    pub(crate) fn poll(&self, caller: Principal, req: PollRequest) -> Result<PollReply, WsError> {
        let certificate = env::data_certificate()
            .ok_or_else(|| WsError::InvalidArgument("ws_poll must be called as a query".into()))?;
        let max_messages = req
            .max_messages
            .unwrap_or(u32::MAX)
            .min(self.config.max_poll_messages)
            // At least one message when one is pending (a `max_messages` of 0 would stall a
            // gateway that asked for it with `more` set and nothing returned).
            .max(1) as usize;
        let max_bytes = u64::from(
            req.max_bytes
                .unwrap_or(u32::MAX)
                .min(self.config.max_poll_bytes),
        );
        let mut messages: Vec<OutboundMessage> = Vec::new();
        let mut ranges: Vec<(ClientId, u64, u64)> = Vec::new();
        let mut next_cursor = req.cursor;
        let mut more = false;
        if let Some(gw) = self.gateway_id(&caller) {
            let mut bytes = 0u64;
            for (&(_, idx), r) in self.log.range((gw, req.cursor)..=(gw, u64::MAX)) {
                if messages.len() >= max_messages {
                    more = true;
                    break;
                }
                let (client, seq) = (r.client, r.seq);
                let Some((_, out)) = self.read_msg(r.addr) else {
                    continue;
                };
                let content = self.content(&out);
                let size = content.len() as u64 + 24;
                if !messages.is_empty() && bytes + size > max_bytes {
                    more = true;
                    break;
                }
                bytes += size;
                next_cursor = idx + 1;
                match ranges.iter_mut().find(|r| r.0 == client) {
                    Some(r) => {
                        r.1 = r.1.min(seq);
                        r.2 = r.2.max(seq);
                    }
                    None => ranges.push((client, seq, seq)),
                }
                messages.push(OutboundMessage {
                    client_id: client,
                    seq,
                    content,
                });
            }
        }
        ranges.sort_unstable();
        let tree = compose_tree(ws_witness(&self.tree, &ranges), self.app_hash);
        Ok(PollReply {
            messages,
            next_cursor,
            more,
            certificate,
            tree: encode_tree(&tree),
            next_poll_ms: None,
        })
    }

    // ---------------------------------------------------------------- topics

    fn check_topic(&self, topic: &str) -> Result<(), Error> {
        if topic.is_empty() || topic.len() as u64 > self.config.max_topic_len.min(255) {
            return Err(Error::InvalidArgument(format!(
                "topic length must be 1..={}",
                self.config.max_topic_len.min(255)
            )));
        }
        Ok(())
    }

    pub(crate) fn subscribe(&mut self, id: ClientId, topic: &str) -> Result<(), Error> {
        self.check_topic(topic)?;
        let rec = self.clients.get(&id).ok_or(Error::UnknownClient(id))?;
        if rec.closed {
            return Err(Error::Closed(id));
        }
        let key = sub_key(topic, id);
        if self.subs.contains_key(&key) {
            return Ok(());
        }
        self.check_subscriptions()?;
        let count = self.topics.get(&topic.as_bytes().to_vec()).unwrap_or(0);
        if count >= self.config.max_topic_subscribers {
            return Err(Error::LimitReached(format!(
                "{} subscribers on topic {topic:?}",
                self.config.max_topic_subscribers
            )));
        }
        self.subs.insert(key, ());
        self.client_subs.insert(client_sub_key(id, topic), ());
        self.topics.insert(topic.as_bytes().to_vec(), count + 1);
        Ok(())
    }

    pub(crate) fn unsubscribe(&mut self, id: ClientId, topic: &str) -> bool {
        if self.subs.remove(&sub_key(topic, id)).is_none() {
            return false;
        }
        self.client_subs.remove(&client_sub_key(id, topic));
        let t = topic.as_bytes().to_vec();
        let count = self.topics.get(&t).unwrap_or(1).saturating_sub(1);
        if count == 0 {
            self.topics.remove(&t);
        } else {
            self.topics.insert(t, count);
        }
        true
    }

    fn unsubscribe_all(&mut self, id: ClientId) {
        let prefix = id.to_be_bytes().to_vec();
        let mut end = (id + 1).to_be_bytes().to_vec();
        if id == u64::MAX {
            end = vec![0xff; 9];
        }
        let keys: Vec<Vec<u8>> = self.client_subs.keys_range(prefix..end).collect();
        for k in keys {
            let topic = String::from_utf8_lossy(&k[8..]).into_owned();
            self.unsubscribe(id, &topic);
        }
    }

    pub(crate) fn subscriptions(&self, id: ClientId) -> Vec<String> {
        let prefix = id.to_be_bytes().to_vec();
        let end = (id.saturating_add(1)).to_be_bytes().to_vec();
        self.client_subs
            .keys_range(prefix..end)
            .map(|k| String::from_utf8_lossy(&k[8..]).into_owned())
            .collect()
    }

    pub(crate) fn subscribers(&self, topic: &str) -> Vec<ClientId> {
        let mut start = vec![topic.len() as u8];
        start.extend_from_slice(topic.as_bytes());
        let mut end = start.clone();
        end.extend_from_slice(&[0xff; 9]);
        self.subs
            .keys_range(start..end)
            .filter_map(|k| {
                k.get(k.len().saturating_sub(8)..)
                    .map(|b| crate::store::Reader::new(b).u64())
            })
            .collect()
    }

    /// Publishes a payload to every subscriber of `topic`, storing the content once.
    pub(crate) fn publish_payload(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        now: u64,
    ) -> Result<crate::PublishReport, Error> {
        self.check_topic(topic)?;
        let size = payload.len() as u64;
        if size > self.config.max_outbound_payload_bytes {
            return Err(Error::TooLarge {
                size,
                limit: self.config.max_outbound_payload_bytes,
            });
        }
        let content = encode_content(
            now,
            OutboundBody::App {
                topic: Some(topic.to_string()),
                payload,
            },
        );
        let hash = content_hash(&content);
        // The canister-wide cap: room for one copy per subscriber, or nothing is queued.
        let subscribers = self.topics.get(&topic.as_bytes().to_vec()).unwrap_or(0);
        self.check_retained_bytes(size, subscribers)?;
        let pid = self.counters.next_payload_id;
        let mut report = crate::PublishReport::default();
        let mut refs = 0u64;
        for id in self.subscribers(topic) {
            let Some(mut rec) = self.clients.get(&id) else {
                continue;
            };
            if rec.closed {
                continue;
            }
            if !self.fits(&rec, size) {
                match self.overflow(id, now) {
                    Error::QueueOverflowClosed(_) => report.closed.push(id),
                    _ => report.skipped.push(id),
                }
                continue;
            }
            if self.check_canister_room().is_err() {
                report.skipped.push(id);
                continue;
            }
            let Ok(seq) = self.enqueue(
                id,
                &mut rec,
                OutBody::Shared {
                    pid,
                    len: size as u32,
                },
                hash,
            ) else {
                report.skipped.push(id);
                continue;
            };
            self.clients.insert(id, rec);
            report.delivered.push((id, seq));
            refs += 1;
        }
        if refs > 0 {
            self.counters.next_payload_id += 1;
            self.save_counters();
            self.shared.insert(pid, SharedContent { refs, content });
        }
        Ok(report)
    }

    // ---------------------------------------------------------------- introspection

    pub(crate) fn info(&self, id: ClientId, rec: &ClientRecord) -> ClientInfo {
        ClientInfo {
            id,
            key: rec.key.to_vec(),
            gateway: self.gateway_principal(rec.gateway),
            attached: rec.attached,
            open: !rec.closed,
            opened_at_ns: rec.opened_at_ns,
            last_activity_ns: rec.last_activity_ns,
            next_inbound_seq: rec.next_inbound_seq,
            next_outbound_seq: rec.next_outbound_seq,
            first_retained_seq: rec.first_retained_seq,
            queued_messages: rec.queued_messages,
            queued_bytes: rec.queued_bytes,
            principal: self.bound_identity(id).map(|b| b.principal),
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
