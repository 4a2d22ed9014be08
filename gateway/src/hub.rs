//! Shared state, in one place: the gateway-wide [`Shared`] (configuration, canister API,
//! metrics, health, one [`Hub`] per canister) and, per canister, the table of attached clients,
//! the relay queue, the poll cursor and the delivery of certified messages to clients.
//!
//! This is the passive bottom layer: the workers (relay, poller, sessions) use it, and the
//! [`crate::supervisor`] runs them. The hub runs no task itself: when a canister needs a
//! relay or a poller it asks the supervisor with a [`Need`].
//!
//! The client table is the only state the relay (which attaches clients when their opens
//! succeed), the poller (which delivers to them) and the sessions (which detach on disconnect)
//! share. Everything it does under its lock is non-blocking: pushing to an [`Outbox`] never
//! waits for a client.

use crate::canister::CanisterApi;
use crate::codec::Terminal;
use crate::config::{CanisterPolicy, Config};
use crate::health::Health;
use crate::memory::{Category, Charge, Shed};
use crate::metrics::Metrics;
use crate::outbox::{CloseWith, Outbox, Push};
use crate::work::RelayItem;
use candid::Principal;
use ic_ws_protocol::frames::close_code;
use ic_ws_protocol::types::{ClientId, OutboundMessage, WsError};
use ic_ws_protocol::witness::PageWitness;
use ic_ws_protocol::GatewayFrame;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::Bytes;

/// Most messages kept for clients that are not attached (yet), per canister (their bytes are
/// bounded by `--orphan-max-bytes` and charged to the memory ledger).
const MAX_ORPHANS: usize = 20_000;
/// Bytes counted per orphan besides its messages (the entry, its share of the page).
const ORPHAN_OVERHEAD: usize = 256;

/// Gateway-wide state.
pub struct Shared<C> {
    /// The configuration.
    pub config: Config,
    /// Which canisters are served.
    pub policy: CanisterPolicy,
    /// The canisters' endpoints.
    pub api: Arc<C>,
    /// The gateway's principal (in `Hello`; the caller of every update).
    pub principal: Principal,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `Hello`, encoded once.
    pub hello: Bytes,
    /// Which workers are down (`/healthz`).
    pub health: Arc<Health>,
    hubs: Mutex<HashMap<Principal, Arc<Hub>>>,
    needs: mpsc::UnboundedSender<Need>,
    needs_rx: Mutex<Option<mpsc::UnboundedReceiver<Need>>>,
    next_conn_id: AtomicU64,
    /// Set on shutdown: sessions close their clients, pollers stop.
    pub closing: watch::Sender<bool>,
    /// Set once sessions are gone: relays flush what is queued and exit.
    pub draining: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only follows a panic elsewhere; the maps stay structurally valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<C: CanisterApi> Shared<C> {
    /// New state for a gateway with `principal`.
    pub fn new(
        config: Config,
        policy: CanisterPolicy,
        api: Arc<C>,
        principal: Principal,
    ) -> Arc<Self> {
        let hello = crate::codec::encode_frame(&GatewayFrame::Hello {
            gateway: principal,
            protocol_version: ic_ws_protocol::PROTOCOL_VERSION,
        })
        .map(Bytes::from)
        .unwrap_or_default();
        let (needs, needs_rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(Metrics::default());
        metrics.memory.set_budget(config.memory_budget_bytes);
        Arc::new(Shared {
            config,
            policy,
            api,
            principal,
            metrics,
            hello,
            health: Arc::new(Health::default()),
            hubs: Mutex::new(HashMap::new()),
            needs,
            needs_rx: Mutex::new(Some(needs_rx)),
            next_conn_id: AtomicU64::new(1),
            closing: watch::channel(false).0,
            draining: watch::channel(false).0,
        })
    }

    /// A fresh connection id (distinguishes a client's old and new connections).
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// What the hubs need run (taken once, by the supervisor).
    pub fn take_needs(&self) -> Option<mpsc::UnboundedReceiver<Need>> {
        lock(&self.needs_rx).take()
    }

    fn need(&self, need: Need) {
        // Fails only once the supervisor is gone (the gateway stopped): nothing to run then.
        let _ = self.needs.send(need);
    }

    /// The hub of `canister`, created on first use (the supervisor starts its relay).
    pub fn hub(self: &Arc<Self>, canister: Principal) -> Result<Arc<Hub>, WsError> {
        if !self.policy.allows(&canister) {
            return Err(WsError::InvalidArgument(format!(
                "canister {canister} is not served by this gateway"
            )));
        }
        let mut hubs = lock(&self.hubs);
        if let Some(h) = hubs.get(&canister) {
            return Ok(h.clone());
        }
        if hubs.len() >= self.config.max_canisters {
            return Err(WsError::LimitReached(format!(
                "this gateway serves at most {} canisters",
                self.config.max_canisters
            )));
        }
        let (tx, rx) = mpsc::channel(self.config.relay_queue);
        let hub = Arc::new(Hub {
            canister,
            relay: tx,
            relay_rx: Mutex::new(Some(rx)),
            table: Mutex::new(Table::default()),
            poll_wake: Notify::new(),
            cursor: AtomicU64::new(0),
            call_failures: Mutex::new(crate::warnings::Throttle::default()),
        });
        hubs.insert(canister, hub.clone());
        drop(hubs);
        self.need(Need::Relay(hub.clone()));
        Ok(hub)
    }

    /// Every hub.
    pub fn hubs(&self) -> Vec<Arc<Hub>> {
        lock(&self.hubs).values().cloned().collect()
    }

    /// Attaches a client whose open succeeded and hands it the messages polled before it was
    /// attached. Asks for the canister's poller if it is not running.
    pub fn attach(self: &Arc<Self>, hub: &Arc<Hub>, client_id: ClientId, entry: ClientEntry) {
        let mut table = hub.table();
        if let Some(old) = table.clients.insert(client_id, entry) {
            old.outbox.abort(CloseWith::new(
                1000,
                "session resumed on another connection",
            ));
        } else {
            self.metrics.sessions.inc();
        }
        let orphans: Vec<Orphan> = {
            let (mine, rest): (VecDeque<Orphan>, VecDeque<Orphan>) =
                table.orphans.drain(..).partition(|o| o.client == client_id);
            table.orphans = rest;
            mine.into()
        };
        for o in orphans {
            table.orphan_count = table.orphan_count.saturating_sub(o.messages.len());
            table.orphan_bytes = table.orphan_bytes.saturating_sub(o.bytes);
            self.deliver_locked(&mut table, &o.page, client_id, o.messages);
        }
        if !table.poller_running {
            table.poller_running = true;
            drop(table);
            self.need(Need::Poller(hub.clone()));
        }
    }

    /// Delivers one page's messages for `client_id` (in log order) to the client, or keeps
    /// them as orphans when the client is not attached.
    pub fn deliver_locked(
        &self,
        table: &mut Table,
        page: &Arc<Page>,
        client_id: ClientId,
        messages: Vec<OutboundMessage>,
    ) {
        let Some(entry) = table.clients.get_mut(&client_id) else {
            let bytes = messages.iter().fold(ORPHAN_OVERHEAD, |sum, m| {
                sum.saturating_add(m.content.len().saturating_add(MESSAGE_OVERHEAD))
            });
            if bytes > self.config.orphan_max_bytes {
                self.metrics.memory.shed(Shed::Orphan);
                tracing::debug!(client_id, "orphan messages over --orphan-max-bytes dropped");
                return;
            }
            // Oldest first: make room within the canister's count and byte bounds.
            while table.orphan_count.saturating_add(messages.len()) > MAX_ORPHANS
                || table.orphan_bytes.saturating_add(bytes) > self.config.orphan_max_bytes
            {
                if !table.pop_orphan() {
                    break;
                }
            }
            let Some(charge) = self.metrics.memory.try_charge(Category::Orphans, bytes) else {
                self.metrics.memory.shed(Shed::Orphan);
                tracing::debug!(client_id, "memory budget spent: orphan messages dropped");
                return;
            };
            table.orphan_count = table.orphan_count.saturating_add(messages.len());
            table.orphan_bytes = table.orphan_bytes.saturating_add(bytes);
            table.orphans.push_back(Orphan {
                at: page.received,
                page: page.clone(),
                client: client_id,
                messages,
                bytes,
                _charge: charge,
            });
            return;
        };
        // A restarted gateway re-reads the log from cursor 0: skip what this client already
        // has (it resumed from `next_seq`). Deliver only the contiguous run from `next_seq`:
        // after a resume, orphans polled while the client was away can start beyond it (the
        // client would reject the gap); the canister re-queues everything from the resume
        // point, so messages past a gap arrive again, in order.
        let mut next = entry.next_seq;
        let messages: Vec<OutboundMessage> = messages
            .into_iter()
            .filter(|m| {
                let contiguous = m.seq == next;
                if contiguous {
                    next = next.saturating_add(1);
                }
                contiguous
            })
            .collect();
        let Some(last) = messages.last() else { return };
        entry.next_seq = last.seq.saturating_add(1);
        let terminal = crate::codec::terminal(&last.content);
        let count = messages.len() as u64;
        // The frame is built by the client's session task (see `crate::outbox`); its size for
        // the byte bound is estimated: contents, certificate, and a witness allowance.
        let size = messages
            .iter()
            .map(|m| m.content.len().saturating_add(MESSAGE_OVERHEAD))
            .fold(
                page.certificate.len().saturating_add(WITNESS_ALLOWANCE),
                usize::saturating_add,
            );
        let frame_page = page.clone();
        let build = move || build_frame(&frame_page, client_id, messages);
        match entry
            .outbox
            .push_deferred(size, Box::new(build), Some(page.received))
        {
            Push::Queued => {
                self.metrics.messages_out.add(count);
                self.metrics.frames_out.inc();
            }
            Push::Overflowed => {
                self.metrics.buffer_overflows.inc();
                tracing::info!(client_id, "slow client closed: send buffer overflow");
            }
            Push::Closed | Push::Dropped => {}
        }
        if let Some(terminal) = terminal {
            // The session's certified end (its `Closed`, or the `OpenRejected` of a refused
            // open, protocol version 2) is on its way: close once it is written.
            entry.outbox.finish(match terminal {
                Terminal::Closed => {
                    CloseWith::new(close_code::SESSION_CLOSED, "session closed by the canister")
                }
                Terminal::OpenRejected => CloseWith::new(
                    close_code::OPEN_FAILED,
                    "open rejected by the canister (certified)",
                ),
            });
            table.clients.remove(&client_id);
            self.metrics.sessions.dec();
        }
    }

    /// Detaches `client_id` if `conn_id` still owns it; returns whether the canister should be
    /// told (`ws_close`).
    pub fn detach(&self, hub: &Hub, client_id: ClientId, conn_id: u64) -> bool {
        let mut table = hub.table();
        match table.clients.get(&client_id) {
            Some(e) if e.conn_id == conn_id => {
                table.clients.remove(&client_id);
                self.metrics.sessions.dec();
                true
            }
            _ => false,
        }
    }
}

/// What a hub needs run: the supervisor spawns it (and restarts it when it fails).
#[derive(Clone)]
pub enum Need {
    /// The canister's relay (once, when its hub is created).
    Relay(Arc<Hub>),
    /// The canister's poller (when a client attaches and no poller runs).
    Poller(Arc<Hub>),
}

/// One canister: its relay queue, its attached clients, its poller's wake-up.
pub struct Hub {
    /// The canister.
    pub canister: Principal,
    /// Items for the relay worker.
    pub relay: mpsc::Sender<RelayItem>,
    /// The relay queue's receiving end while no relay worker holds it (it outlives a failed
    /// worker: what is still queued goes to the restarted one).
    relay_rx: Mutex<Option<mpsc::Receiver<RelayItem>>>,
    table: Mutex<Table>,
    /// Wakes the poller early (a message was relayed: replies are likely).
    pub poll_wake: Notify,
    /// Position in this gateway's delivery log (kept when the poller stops and restarts).
    cursor: AtomicU64,
    /// Failed calls to the canister (polls and relayed updates), for rate-limited warnings.
    call_failures: Mutex<crate::warnings::Throttle>,
}

impl Hub {
    /// The poll cursor.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }
    /// Stores the poll cursor.
    pub fn set_cursor(&self, cursor: u64) {
        self.cursor.store(cursor, Ordering::Relaxed);
    }

    /// Logs a failed call to the canister (`ws_poll`, `ws_message`, ...): the first at once,
    /// then at most one line per [`crate::warnings::EVERY`] with the number left out.
    pub fn call_failed(&self, call: &str, error: &dyn std::fmt::Display) {
        use crate::warnings::Verdict;
        let verdict = lock(&self.call_failures).failed(Instant::now());
        if let Verdict::Log { suppressed } = verdict {
            // The canister's reject text is its own choice: quote a bounded part of it.
            let error = ic_ws_protocol::text::bounded(
                &error.to_string(),
                crate::warnings::MAX_QUOTED_BYTES,
            );
            if suppressed == 0 {
                tracing::warn!(canister = %self.canister, "{call} failed: {error}");
            } else {
                tracing::warn!(canister = %self.canister, suppressed, "{call} failed: {error} ({suppressed} more failed calls to this canister since the last warning)");
            }
        }
    }

    /// Records a call to the canister that succeeded; logs the recovery after failures.
    pub fn call_succeeded(&self) {
        let failures = lock(&self.call_failures).succeeded();
        if failures > 0 {
            tracing::info!(canister = %self.canister, failures, "calls to the canister succeed again after {failures} failed");
        }
    }

    /// The client table, locked.
    pub fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// The relay queue's receiver, for the relay worker; `None` while another worker holds
    /// it. It returns to the hub when the worker ends, also by a panic.
    pub fn relay_receiver(self: &Arc<Self>) -> Option<RelayReceiver> {
        lock(&self.relay_rx).take().map(|rx| RelayReceiver {
            hub: self.clone(),
            rx,
        })
    }

    /// Stops the poller if the canister has had no client for `idle_stop` (`last_client` is
    /// updated while it has clients). Decided under the table lock, so an attach either sees
    /// the poller running or asks for a new one.
    pub fn poller_may_stop(&self, last_client: &mut Instant, idle_stop: Duration) -> bool {
        let mut table = self.table();
        if !table.clients.is_empty() {
            *last_client = Instant::now();
            return false;
        }
        if last_client.elapsed() < idle_stop {
            return false;
        }
        table.poller_running = false;
        true
    }

    /// The poller stopped for another reason (the gateway is closing).
    pub fn poller_stopped(&self) {
        self.table().poller_running = false;
    }

    /// Closes every attached client with `close` (dropping what is queued for them); returns
    /// how many. Used when a worker of this canister failed: any of its clients may have had
    /// messages in the failed worker's hands, and resuming re-sends whatever the canister did
    /// not accept.
    pub fn close_all(&self, close: &CloseWith) -> usize {
        let table = self.table();
        for entry in table.clients.values() {
            entry.outbox.abort(close.clone());
        }
        table.clients.len()
    }
}

/// The relay queue's receiver, held by the relay worker; back to its hub on drop.
pub struct RelayReceiver {
    hub: Arc<Hub>,
    rx: mpsc::Receiver<RelayItem>,
}

impl std::ops::Deref for RelayReceiver {
    type Target = mpsc::Receiver<RelayItem>;
    fn deref(&self) -> &Self::Target {
        &self.rx
    }
}

impl std::ops::DerefMut for RelayReceiver {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rx
    }
}

impl Drop for RelayReceiver {
    fn drop(&mut self) {
        let (_, closed) = mpsc::channel(1);
        let rx = std::mem::replace(&mut self.rx, closed);
        *lock(&self.hub.relay_rx) = Some(rx);
    }
}

/// A client attached through this gateway.
#[derive(Debug)]
pub struct ClientEntry {
    /// The connection that owns the session now.
    pub conn_id: u64,
    /// Its send buffer.
    pub outbox: Arc<Outbox>,
    /// The next outbound sequence number it expects (older ones are not delivered again).
    pub next_seq: u64,
}

/// Messages for a client that is not attached (yet).
#[derive(Debug)]
pub struct Orphan {
    at: Instant,
    page: Arc<Page>,
    client: ClientId,
    messages: Vec<OutboundMessage>,
    bytes: usize,
    _charge: Charge,
}

/// Attached clients and orphans of one canister.
#[derive(Debug, Default)]
pub struct Table {
    /// Attached clients.
    pub clients: HashMap<ClientId, ClientEntry>,
    orphans: VecDeque<Orphan>,
    orphan_count: usize,
    orphan_bytes: usize,
    /// Whether the canister's poller runs (set on attach, cleared when it stops).
    poller_running: bool,
}

impl Table {
    /// Drops orphans older than `ttl`.
    pub fn expire_orphans(&mut self, now: Instant, ttl: std::time::Duration) {
        while let Some(o) = self.orphans.front() {
            if now.duration_since(o.at) <= ttl {
                break;
            }
            self.pop_orphan();
        }
    }

    /// Drops the oldest orphan; false when there is none.
    fn pop_orphan(&mut self) -> bool {
        match self.orphans.pop_front() {
            Some(o) => {
                self.orphan_count = self.orphan_count.saturating_sub(o.messages.len());
                self.orphan_bytes = self.orphan_bytes.saturating_sub(o.bytes);
                true
            }
            None => false,
        }
    }

    /// Orphan messages kept and their counted bytes.
    pub fn orphans(&self) -> (usize, usize) {
        (self.orphan_count, self.orphan_bytes)
    }
}

/// Estimated bytes of a witness in a client's frame (a few pruned hashes per tree level).
const WITNESS_ALLOWANCE: usize = 1024;
/// Estimated bytes per message in a frame besides its content (ids, lengths, leaf path).
const MESSAGE_OVERHEAD: usize = 32;

/// `client_id`'s `Messages` frame from `page`: its messages, the certificate and the witness
/// pruned to them. `None` (logged) if it cannot be encoded.
fn build_frame(page: &Page, client_id: ClientId, messages: Vec<OutboundMessage>) -> Option<Bytes> {
    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    let tree = match serde_cbor::to_vec(&page.witness.for_client(client_id, &seqs)) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(client_id, "cannot encode a witness: {e}");
            return None;
        }
    };
    let frame = GatewayFrame::Messages {
        messages,
        certificate: page.certificate.clone(),
        tree,
    };
    match crate::codec::encode_frame(&frame) {
        Ok(bytes) => Some(Bytes::from(bytes)),
        Err(e) => {
            tracing::error!(client_id, "cannot encode a Messages frame: {e}");
            None
        }
    }
}

/// One poll reply, shared by the frames cut from it.
#[derive(Debug)]
pub struct Page {
    /// The data certificate.
    pub certificate: Vec<u8>,
    /// The indexed tree.
    pub witness: PageWitness,
    /// When the reply arrived.
    pub received: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{tree_of, FakeCanister};
    use crate::outbox::Outgoing;

    fn page(messages: &[OutboundMessage]) -> Arc<Page> {
        Arc::new(Page {
            certificate: b"cert".to_vec(),
            witness: PageWitness::new(&tree_of(messages)),
            received: Instant::now(),
        })
    }

    fn msg(client: ClientId, seq: u64) -> OutboundMessage {
        OutboundMessage {
            client_id: client,
            seq,
            content: vec![seq as u8],
        }
    }

    async fn delivered(outbox: &Outbox) -> Vec<u64> {
        match outbox.next().await {
            Outgoing::Frame(bytes, _) => match ic_ws_protocol::decode::<GatewayFrame>(&bytes)
                .unwrap()
            {
                GatewayFrame::Messages { messages, .. } => messages.iter().map(|m| m.seq).collect(),
                other => panic!("{other:?}"),
            },
            Outgoing::Close(c) => panic!("closed: {c:?}"),
        }
    }

    #[tokio::test]
    async fn messages_polled_before_the_open_reply_reach_the_client() {
        let config = Config::from_args(["gw", "--canister", "aaaaa-aa"]).unwrap();
        let policy = config.canister_policy().unwrap();
        let shared = Shared::new(
            config,
            policy,
            Arc::new(FakeCanister::new()),
            Principal::anonymous(),
        );
        let hub = shared.hub(Principal::management_canister()).unwrap();
        // The poll that carries client 5's `Opened` lands before ws_open's reply.
        let early = vec![msg(5, 0), msg(6, 0)];
        {
            let mut table = hub.table();
            shared.deliver_locked(&mut table, &page(&early), 5, vec![msg(5, 0)]);
        }
        let outbox = Arc::new(Outbox::new(10, 1 << 20));
        shared.attach(
            &hub,
            5,
            ClientEntry {
                conn_id: 1,
                outbox: outbox.clone(),
                next_seq: 0,
            },
        );
        assert_eq!(delivered(&outbox).await, vec![0]);
        // Later pages go straight to it; old sequence numbers (a re-read log) are skipped.
        let later = vec![msg(5, 0), msg(5, 1), msg(5, 2)];
        {
            let mut table = hub.table();
            shared.deliver_locked(&mut table, &page(&later), 5, later.clone());
        }
        assert_eq!(delivered(&outbox).await, vec![1, 2]);
        assert_eq!(outbox.len().0, 0);
        // Messages past a gap (orphans polled before a resume from an earlier point) wait
        // for the re-queued run.
        let gap = vec![msg(5, 4), msg(5, 5)];
        {
            let mut table = hub.table();
            shared.deliver_locked(&mut table, &page(&gap), 5, gap.clone());
        }
        assert_eq!(outbox.len().0, 0);
        let requeued = vec![msg(5, 3), msg(5, 4), msg(5, 5)];
        {
            let mut table = hub.table();
            shared.deliver_locked(&mut table, &page(&requeued), 5, requeued.clone());
        }
        assert_eq!(delivered(&outbox).await, vec![3, 4, 5]);
        // Orphans expire.
        let mut table = hub.table();
        shared.deliver_locked(&mut table, &page(&early), 6, vec![msg(6, 0)]);
        assert_eq!(table.orphan_count, 1);
        table.expire_orphans(
            Instant::now() + std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(30),
        );
        assert_eq!(table.orphan_count, 0);
    }

    #[tokio::test]
    async fn orphans_are_bounded_by_bytes_and_charged() {
        let config = Config::from_args([
            "gw",
            "--canister",
            "aaaaa-aa",
            "--orphan-max-bytes",
            "10000",
        ])
        .unwrap();
        let policy = config.canister_policy().unwrap();
        let shared = Shared::new(
            config,
            policy,
            Arc::new(FakeCanister::new()),
            Principal::anonymous(),
        );
        let hub = shared.hub(Principal::management_canister()).unwrap();
        let big = |client: ClientId| OutboundMessage {
            client_id: client,
            seq: 0,
            content: vec![0; 3000],
        };
        let mut table = hub.table();
        for client in 0..10 {
            let m = big(client);
            shared.deliver_locked(&mut table, &page(std::slice::from_ref(&m)), client, vec![m]);
        }
        let (count, bytes) = table.orphans();
        let one = 3000 + MESSAGE_OVERHEAD + ORPHAN_OVERHEAD;
        assert_eq!((count, bytes), (3, 3 * one), "the oldest are dropped first");
        assert_eq!(shared.metrics.memory.used(Category::Orphans), 3 * one);
        assert!(table.orphans.iter().all(|o| o.client >= 7));
        // One page's messages over the whole bound are dropped, not kept past it.
        let huge = OutboundMessage {
            client_id: 99,
            seq: 0,
            content: vec![0; 20_000],
        };
        shared.deliver_locked(
            &mut table,
            &page(std::slice::from_ref(&huge)),
            99,
            vec![huge],
        );
        assert_eq!(table.orphans(), (3, 3 * one));
        assert_eq!(shared.metrics.memory.shed_count(Shed::Orphan), 1);
        table.expire_orphans(
            Instant::now() + std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(30),
        );
        assert_eq!(shared.metrics.memory.used(Category::Orphans), 0);
        // With the budget spent, new orphans are dropped and counted.
        shared.metrics.memory.set_budget(100);
        let m = big(1);
        shared.deliver_locked(&mut table, &page(std::slice::from_ref(&m)), 1, vec![m]);
        assert_eq!(table.orphans(), (0, 0));
        assert_eq!(shared.metrics.memory.shed_count(Shed::Orphan), 2);
    }
}
