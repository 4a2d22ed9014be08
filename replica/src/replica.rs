//! The [`Replica`] facade: one emulated subnet (engine + certified state + keys) behind a cheap,
//! thread-safe handle, used directly by Rust tests and by the HTTP interface.
//!
//! Everything that changes canister state goes through one mutex-protected [`Core`], so the
//! certified state tree always matches the engine: after every execution the affected canister
//! leaves (`certified_data`, `module_hash`, `controllers`) and `/time` are refreshed, and the
//! next certificate handed out is signed over exactly that state (once, then reused).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use candid::Principal;

use crate::certification::{Path, RequestStatus, StateTree};
use crate::engine::{
    self, Clock, Engine, EngineConfig, InstallMode, MethodKind, Reject, RejectCode,
};
use crate::error::{ReplicaError, Result};
use crate::keys::Keys;

/// With the real clock, a certificate's `/time` is refreshed when it is older than this, so
/// an idle replica signs at most about once a second, like a subnet finalizing empty rounds.
const IDLE_TIME_REFRESH: Duration = Duration::from_secs(1);
/// Request statuses are kept this long after their ingress expiry (then they look up Absent;
/// a replay is already refused by the expiry check by then).
const REQUEST_RETENTION_AFTER_EXPIRY: Duration = Duration::from_secs(60);

/// Settings of a [`Replica`].
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    /// Seed of the root and node keys. `None`: fresh random keys. A fixed seed gives the same
    /// root key, subnet id and node id on every run (reproducible tests, stable demo URLs).
    pub seed: Option<Vec<u8>>,
    /// Execution limits and clock.
    pub engine: EngineConfig,
    /// How long an update takes before it executes (0 = at once; about 1 s is mainnet-like).
    pub round_delay: Duration,
    /// How long a synchronous call (`/api/v3|v4/.../call`) waits for its certified result
    /// before answering 202 and leaving the client to poll `read_state`.
    pub sync_call_timeout: Duration,
    /// With [`Clock::Real`]: run a round (fire due timers, refresh `/time`) this often in the
    /// background. Ignored with a manual clock, where tests call [`Replica::tick`] themselves.
    pub tick_interval: Option<Duration>,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            seed: None,
            engine: EngineConfig::default(),
            round_delay: Duration::ZERO,
            sync_call_timeout: Duration::from_secs(10),
            tick_interval: Some(Duration::from_millis(100)),
        }
    }
}

impl ReplicaConfig {
    /// Default settings with keys derived from `seed`.
    pub fn with_seed(seed: impl AsRef<[u8]>) -> Self {
        ReplicaConfig {
            seed: Some(seed.as_ref().to_vec()),
            ..Default::default()
        }
    }

    /// Uses a manual clock starting at `now_ns` (nanoseconds since the epoch).
    pub fn manual_clock(mut self, now_ns: u64) -> Self {
        self.engine.clock = Clock::Manual { now_ns };
        self
    }
}

/// What the replica remembers about an ingress message (for `read_state` authorization,
/// deduplication and pruning).
#[derive(Clone, Debug)]
pub(crate) struct IngressRecord {
    pub(crate) sender: Principal,
    pub(crate) canister: Principal,
    pub(crate) expiry_ns: u64,
    pub(crate) completed: bool,
}

/// The mutable heart of the replica. Always accessed under the [`Shared::core`] mutex.
pub(crate) struct Core {
    pub(crate) engine: Engine,
    pub(crate) tree: StateTree,
    manual_clock: bool,
    /// Canisters whose state is published in the tree (all existing ones).
    pub(crate) canisters: BTreeSet<Principal>,
    requests: HashMap<[u8; 32], IngressRecord>,
    expiries: BTreeMap<u64, Vec<[u8; 32]>>,
    /// Each canister's wasm chunk store (`upload_chunk`, `install_chunked_code`): sha256 ->
    /// chunk, bounded as on the IC (see `management`).
    pub(crate) chunks: HashMap<Principal, BTreeMap<[u8; 32], Vec<u8>>>,
}

pub(crate) struct Shared {
    pub(crate) keys: Keys,
    pub(crate) config: ReplicaConfig,
    core: Mutex<Core>,
    /// The manual clock's time, readable without the core lock (which a running message
    /// holds); `u64::MAX` while the clock is real.
    manual_time_ns: AtomicU64,
}

/// An embedded single-subnet IC replica. Cloning gives another handle to the same replica.
///
/// ```no_run
/// use ic_ws_replica::{Replica, ReplicaConfig};
/// let replica = Replica::new(ReplicaConfig::with_seed("my test"));
/// let wasm = std::fs::read("canister.wasm")?;
/// let canister = replica.create_and_install(&wasm, &candid::encode_args(())?)?;
/// let reply = replica.update(canister, "put", &candid::encode_args((1u64,))?, candid::Principal::anonymous())?;
/// let server = replica.serve("127.0.0.1:0".parse()?)?; // real IC HTTP interface for agents
/// println!("{} root key {}", server.url(), hex::encode(replica.root_key_der()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Replica {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("subnet_id", &self.shared.keys.subnet_id().to_text())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Publishes the current state of every canister and the time (a "round" boundary).
    fn sync_tree(&mut self) {
        let now = self.engine.time_ns();
        self.tree.set_time(now);
        self.sync_canisters();
    }

    /// Publishes every canister's certified data, module hash and controllers.
    fn sync_canisters(&mut self) {
        for &canister in &self.canisters {
            let certified = self.engine.certified_data(canister).unwrap_or_default();
            let module_hash = self.engine.module_hash(canister);
            let controllers = self.engine.controllers(canister).unwrap_or_default();
            self.tree
                .set_canister(canister, certified, module_hash, &controllers);
            // Metadata changes only with the module: republished when the module hash does.
            if self.tree.metadata_published_for(canister) != Some(module_hash) {
                let metadata: Vec<(String, Vec<u8>)> = self
                    .engine
                    .metadata(canister)
                    .into_iter()
                    .map(|m| (m.name, m.content))
                    .collect();
                self.tree.set_metadata(canister, module_hash, &metadata);
            }
        }
    }

    /// Before handing out a certificate: bring `/time` up to date without re-signing for every
    /// request (manual clock: always exact, it only moves when told to).
    pub(crate) fn refresh_time(&mut self) {
        let now = self.engine.time_ns();
        let tree_time = self.tree.time_ns();
        let refresh = IDLE_TIME_REFRESH.as_nanos() as u64;
        if self.manual_clock || now < tree_time || now - tree_time >= refresh {
            self.tree.set_time(now);
        }
    }

    fn prune_requests(&mut self) {
        let now = self.engine.time_ns();
        let horizon = now.saturating_sub(REQUEST_RETENTION_AFTER_EXPIRY.as_nanos() as u64);
        while let Some(entry) = self.expiries.first_entry() {
            if *entry.key() >= horizon {
                break;
            }
            for rid in entry.remove() {
                self.requests.remove(&rid);
                self.tree.remove_request(&rid);
            }
        }
    }

    pub(crate) fn request(&self, request_id: &[u8; 32]) -> Option<&IngressRecord> {
        self.requests.get(request_id)
    }

    /// Registers a new ingress message as Received. Returns false if the id is already known
    /// (the IC deduplicates: a replayed envelope is never executed twice).
    pub(crate) fn register_request(&mut self, request_id: [u8; 32], record: IngressRecord) -> bool {
        self.prune_requests();
        if self.requests.contains_key(&request_id) {
            return false;
        }
        self.expiries
            .entry(record.expiry_ns)
            .or_default()
            .push(request_id);
        self.requests.insert(request_id, record);
        self.tree
            .set_request_status(&request_id, &RequestStatus::Received);
        true
    }

    /// Executes a registered ingress update and publishes its outcome.
    pub(crate) fn execute_ingress(
        &mut self,
        request_id: [u8; 32],
        canister: Principal,
        method: &str,
        arg: &[u8],
        sender: Principal,
    ) -> Result<Vec<u8>, Reject> {
        // An empty canister or a missing method: the engine's own reject (IC0537) or IC0302.
        let has_module = self.engine.module_hash(canister).is_some();
        let result = if canister == Principal::management_canister() {
            crate::management::execute(self, method, arg, sender)
        } else {
            match self.engine.method_kind(canister, method) {
                Some(MethodKind::Update | MethodKind::Query) => {
                    self.engine.update(canister, method, arg, sender)
                }
                _ if !has_module => self.engine.update(canister, method, arg, sender),
                _ => Err(method_not_found(canister, method, "update")),
            }
        };
        let status = match &result {
            Ok(reply) => RequestStatus::Replied(reply.clone()),
            Err(reject) => RequestStatus::Rejected {
                code: reject.code as u64,
                message: reject.message.clone(),
                error_code: reject.error_code.clone(),
            },
        };
        self.tree.set_request_status(&request_id, &status);
        if let Some(record) = self.requests.get_mut(&request_id) {
            record.completed = true;
        }
        self.sync_tree();
        result
    }

    /// Runs a query with the current data certificate, as the IC does for non-replicated queries.
    pub(crate) fn query(
        &mut self,
        keys: &Keys,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<Vec<u8>, Reject> {
        if !self.engine.canister_exists(canister) {
            return Err(canister_not_found(canister));
        }
        match self.engine.method_kind(canister, method) {
            Some(MethodKind::Query | MethodKind::CompositeQuery) => {}
            _ if self.engine.module_hash(canister).is_none() => {} // the engine answers IC0537
            _ => return Err(method_not_found(canister, method, "query")),
        }
        self.refresh_time();
        let certificate = self.tree.data_certificate(keys, canister);
        self.engine
            .query(canister, method, arg, caller, Some(&certificate))
    }
}

/// IC0301: the destination canister does not exist.
pub(crate) fn canister_not_found(canister: Principal) -> Reject {
    Reject {
        code: RejectCode::DestinationInvalid,
        message: format!("Canister {canister} not found"),
        error_code: Some("IC0301".into()),
    }
}

/// IC0302: the canister exports no method of this name and kind.
pub(crate) fn method_not_found(canister: Principal, method: &str, kind: &str) -> Reject {
    Reject {
        code: RejectCode::DestinationInvalid,
        message: format!("Canister {canister} has no {kind} method '{method}'"),
        error_code: Some("IC0302".into()),
    }
}

impl Replica {
    /// Starts a replica with no canisters.
    pub fn new(config: ReplicaConfig) -> Self {
        let keys = match &config.seed {
            Some(seed) => Keys::from_seed(seed),
            None => Keys::random(),
        };
        let engine = Engine::new(config.engine.clone());
        let (first, last) = engine::canister_id_range();
        let tree = StateTree::new(&keys, &[(first, last)], engine.time_ns());
        let core = Core {
            engine,
            tree,
            manual_clock: matches!(config.engine.clock, Clock::Manual { .. }),
            canisters: BTreeSet::new(),
            requests: HashMap::new(),
            expiries: BTreeMap::new(),
            chunks: HashMap::new(),
        };
        let manual_time_ns = match config.engine.clock {
            Clock::Manual { .. } => core.engine.time_ns(),
            Clock::Real => u64::MAX,
        };
        let shared = Arc::new(Shared {
            keys,
            config,
            core: Mutex::new(core),
            manual_time_ns: AtomicU64::new(manual_time_ns),
        });
        if let (Clock::Real, Some(interval)) =
            (shared.config.engine.clock, shared.config.tick_interval)
        {
            spawn_ticker(Arc::downgrade(&shared), interval);
        }
        Replica { shared }
    }

    /// Locks the core. A panic while locked (an engine bug) must not wedge every later caller,
    /// so poisoning is ignored: the engine's own state is rolled back per message.
    pub(crate) fn core(&self) -> MutexGuard<'_, Core> {
        self.shared
            .core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A certificate over `paths` of the current state, like [`Core::certificate`], but a
    /// needed BLS signature (about 0.5 ms) is made **outside** the core lock, so updates keep
    /// executing meanwhile; the signature is then kept for reuse if the state did not move.
    pub(crate) fn certificate_unlocked(&self, paths: &[Path]) -> Vec<u8> {
        let unsigned = {
            let mut core = self.core();
            core.refresh_time();
            core.tree.unsigned_certificate(paths)
        };
        let signature = match unsigned.signature.clone() {
            Some(signature) => signature,
            None => {
                let signature = self.shared.keys.sign_state_root(&unsigned.root_hash);
                self.core()
                    .tree
                    .record_signature(unsigned.root_hash, &signature);
                signature
            }
        };
        unsigned.encode(signature)
    }

    /// The settings this replica was started with.
    pub fn config(&self) -> &ReplicaConfig {
        &self.shared.config
    }

    /// The DER-encoded BLS root public key (133 bytes) that verifies every certificate.
    pub fn root_key_der(&self) -> Vec<u8> {
        self.shared.keys.root_key_der().to_vec()
    }

    /// The subnet id: the self-authenticating principal of the root key (what agents assume
    /// when a certificate carries no delegation).
    pub fn subnet_id(&self) -> Principal {
        self.shared.keys.subnet_id()
    }

    /// The id of the (single) node that signs query responses.
    pub fn node_id(&self) -> Principal {
        self.shared.keys.node_id()
    }

    /// Creates an empty canister controlled by `controllers`.
    pub fn create_canister(&self, controllers: Vec<Principal>) -> Principal {
        let mut core = self.core();
        let canister = core.engine.create_canister(controllers);
        core.canisters.insert(canister);
        core.sync_tree();
        canister
    }

    /// Installs, reinstalls or upgrades `wasm` (plain or gzipped) on `canister`, as `sender`.
    pub fn install_code(
        &self,
        canister: Principal,
        wasm: &[u8],
        arg: &[u8],
        mode: InstallMode,
        sender: Principal,
    ) -> Result<(), Reject> {
        let mut core = self.core();
        if !core.engine.canister_exists(canister) {
            return Err(canister_not_found(canister));
        }
        let result = core.engine.install(canister, wasm, arg, mode, sender);
        core.sync_tree();
        result
    }

    /// Creates a canister controlled by the anonymous principal and installs `wasm` with `arg`.
    pub fn create_and_install(&self, wasm: &[u8], arg: &[u8]) -> Result<Principal> {
        let canister = self.create_canister(vec![Principal::anonymous()]);
        self.install_code(
            canister,
            wasm,
            arg,
            InstallMode::Install,
            Principal::anonymous(),
        )?;
        Ok(canister)
    }

    /// Upgrades `canister` to `wasm` (pre_upgrade, stable memory kept, post_upgrade with `arg`).
    pub fn upgrade(&self, canister: Principal, wasm: &[u8], arg: &[u8]) -> Result<(), Reject> {
        let sender = self
            .controllers(canister)
            .and_then(|c| c.first().copied())
            .unwrap_or_else(Principal::anonymous);
        self.install_code(canister, wasm, arg, InstallMode::Upgrade, sender)
    }

    /// An update call as `caller`, executed to completion (including downstream calls).
    /// Takes [`ReplicaConfig::round_delay`] first, like an update waiting for its round.
    pub fn update(
        &self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<Vec<u8>, Reject> {
        if !self.shared.config.round_delay.is_zero() {
            std::thread::sleep(self.shared.config.round_delay);
        }
        let mut core = self.core();
        if !core.engine.canister_exists(canister) {
            return Err(canister_not_found(canister));
        }
        let result = core.engine.update(canister, method, arg, caller);
        core.sync_tree();
        result
    }

    /// Runs the canister's `canister_inspect_message` for an ingress update of `method` from
    /// `sender` (as the HTTP interface does before inducting a call): `Err` if the canister
    /// does not accept the message. Changes nothing.
    pub fn inspect_message(
        &self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        sender: Principal,
    ) -> Result<(), Reject> {
        let mut core = self.core();
        if !core.engine.canister_exists(canister) {
            return Err(canister_not_found(canister));
        }
        core.engine.inspect_message(canister, method, arg, sender)
    }

    /// A query as `caller`. The canister sees a data certificate (`ic0.data_certificate_*`)
    /// over its current certified data, as for a non-replicated query on the IC.
    pub fn query(
        &self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<Vec<u8>, Reject> {
        let mut core = self.core();
        core.query(&self.shared.keys, canister, method, arg, caller)
    }

    /// The canister's current certified data (`None` if it does not exist).
    pub fn certified_data(&self, canister: Principal) -> Option<Vec<u8>> {
        self.core().engine.certified_data(canister)
    }

    /// The data certificate a query on `canister` would see now (CBOR `Certificate`), or
    /// `None` if the canister does not exist.
    pub fn data_certificate(&self, canister: Principal) -> Option<Vec<u8>> {
        let mut core = self.core();
        if !core.engine.canister_exists(canister) {
            return None;
        }
        core.refresh_time();
        Some(
            core.tree
                .data_certificate(&self.shared.keys, canister)
                .as_ref()
                .clone(),
        )
    }

    /// A certificate (CBOR) revealing `/time` and the given state-tree `paths`.
    pub fn state_certificate(&self, paths: &[Vec<Vec<u8>>]) -> Vec<u8> {
        self.certificate_unlocked(paths)
    }

    /// SHA-256 of the installed module.
    pub fn module_hash(&self, canister: Principal) -> Option<[u8; 32]> {
        self.core().engine.module_hash(canister)
    }

    /// The canister's controllers.
    pub fn controllers(&self, canister: Principal) -> Option<Vec<Principal>> {
        self.core().engine.controllers(canister)
    }

    /// Whether `canister` exists.
    pub fn canister_exists(&self, canister: Principal) -> bool {
        self.core().engine.canister_exists(canister)
    }

    /// The time ingress validation (expiry) uses, without waiting for a running message.
    pub(crate) fn ingress_time_ns(&self) -> u64 {
        match self.shared.manual_time_ns.load(Ordering::SeqCst) {
            u64::MAX => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            manual => manual,
        }
    }

    /// The IC time, nanoseconds since the epoch.
    pub fn time_ns(&self) -> u64 {
        self.core().engine.time_ns()
    }

    /// Sets the IC time (switches the engine to a manual clock).
    pub fn set_time_ns(&self, time_ns: u64) {
        let mut core = self.core();
        core.engine.set_time_ns(time_ns);
        core.manual_clock = true;
        self.shared
            .manual_time_ns
            .store(core.engine.time_ns(), Ordering::SeqCst);
        core.sync_tree();
    }

    /// Advances the IC time (switches the engine to a manual clock). Call [`Replica::tick`]
    /// to fire timers that became due.
    pub fn advance_time(&self, by: Duration) {
        let mut core = self.core();
        core.engine.advance_time(by);
        core.manual_clock = true;
        self.shared
            .manual_time_ns
            .store(core.engine.time_ns(), Ordering::SeqCst);
        core.sync_tree();
    }

    /// The global timer deadline of a canister (`None`: disarmed or no such canister).
    pub fn global_timer(&self, canister: Principal) -> Option<u64> {
        self.core().engine.global_timer(canister)
    }

    /// Runs a round: fires due global timers and drains the calls they make.
    pub fn tick(&self) {
        let mut core = self.core();
        core.engine.tick();
        core.prune_requests();
        // A round without ingress only moves /time when it is stale (see IDLE_TIME_REFRESH),
        // so background ticks do not force a new signature every 100 ms.
        core.sync_canisters();
        core.refresh_time();
    }

    /// Instructions (the canister's own wasm operators, plus data-copy charges) used by the last
    /// top-level message.
    pub fn last_instructions(&self) -> u64 {
        self.core().engine.last_instructions()
    }

    /// Takes the `debug_print` output collected so far, per canister.
    pub fn drain_logs(&self) -> Vec<(Principal, String)> {
        self.core().engine.drain_logs()
    }

    /// How many certificate signatures were made so far (each costs ~0.5 ms of BLS).
    pub fn signatures_made(&self) -> u64 {
        self.core().tree.signatures_made()
    }

    /// Starts the IC HTTP interface on `addr` (port 0 picks a free port) in a background
    /// thread with its own async runtime. The server stops when the handle is dropped.
    pub fn serve(&self, addr: std::net::SocketAddr) -> Result<crate::http::ServerHandle> {
        crate::http::ServerHandle::start(self.clone(), addr)
    }

    /// Convenience for tests: reads a wasm file, creates and installs it.
    pub fn install_file(&self, path: impl AsRef<std::path::Path>, arg: &[u8]) -> Result<Principal> {
        let path = path.as_ref();
        let wasm = std::fs::read(path).map_err(|source| ReplicaError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        self.create_and_install(&wasm, arg)
    }
}

/// Background rounds for the real clock: timers fire and `/time` stays fresh without anyone
/// calling `tick`. Holds only a weak reference so dropping the last handle stops the thread.
fn spawn_ticker(shared: Weak<Shared>, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("ic-ws-replica-ticker".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(shared) = shared.upgrade() else {
                return;
            };
            Replica { shared }.tick();
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the ticker thread (timers will only fire on tick()): {e}");
    }
}
