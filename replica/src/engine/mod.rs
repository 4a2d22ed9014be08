//! Canister execution engine of the embedded replica.
//!
//! [`Engine`] is the single-threaded owner of every canister of the emulated subnet: it installs
//! wasm, executes update calls (with every downstream inter-canister call and callback) and
//! queries, fires global timers, and keeps the clock. The HTTP interface, certification and the
//! public `Replica` facade are layered on top of it.
//!
//! Layout:
//! - [`instrument`](self) rewrites wasm (exports for callbacks and globals, dirty-page tracking);
//! - `compile` compiles once per module per process;
//! - `system_api` is the `ic0` import set with the IC's per-context rules;
//! - `runtime` runs one message of one canister and commits or rolls it back;
//! - `stable` is stable memory with an undo log;
//! - `lifecycle` is canister lifecycle (stop, start, delete) and what canisters may call on the
//!   management canister (`raw_rand`);
//! - this module schedules messages: call contexts, callbacks, the message queue, timers,
//!   the management canister subset, time.
//!
//! What is and is not faithful to the IC is listed in `replica/ENGINE.md`.

mod compile;
pub mod instrument;
mod lifecycle;
mod runtime;
mod stable;
mod system_api;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use candid::Principal;
use sha2::{Digest, Sha256};

use runtime::{Entry, ExecError, OnSuccess, Outcome, Runtime};
use system_api::{ApiContext, Closure, Exec, Host, HostTrap, Response, SubnetInfo};

pub use compile::MAX_WASM_SIZE;

/// How the engine reads the IC time (`ic0.time`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Clock {
    /// Follows the host's real time (strictly increasing from one round to the next, constant
    /// within one message).
    #[default]
    Real,
    /// Frozen at `now_ns` until [`Engine::set_time_ns`] or [`Engine::advance_time`].
    Manual {
        /// Nanoseconds since the Unix epoch.
        now_ns: u64,
    },
}

/// The IC's instruction limit of one `install_code` message (install, reinstall or upgrade):
/// 300 billion (the IC's resource-limits table), for `canister_pre_upgrade`, the start
/// function and `canister_init` / `canister_post_upgrade` together.
pub const INSTALL_INSTRUCTION_LIMIT: u64 = 300_000_000_000;

/// An instruction-limit failure of a part of an install reported with the limit of the whole
/// install_code message (what the IC reports), not with what was left of it.
fn whole_limit(e: ExecError, limit: u64) -> ExecError {
    match e {
        ExecError::InstructionLimit(_) => ExecError::InstructionLimit(limit),
        other => other,
    }
}

/// Engine settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Instruction limit of one update message, callback or timer (IC: 40e9).
    pub update_instruction_limit: u64,
    /// Instruction limit of one `install_code` (IC: 300e9), shared as on the IC by everything
    /// it runs: `canister_pre_upgrade` on the old module, then the start function and
    /// `canister_init` / `canister_post_upgrade` on the new one get what is left.
    pub install_instruction_limit: u64,
    /// Instruction limit of one query or inspect_message (IC: 5e9).
    pub query_instruction_limit: u64,
    /// Where time comes from.
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            update_instruction_limit: 40_000_000_000,
            install_instruction_limit: INSTALL_INSTRUCTION_LIMIT,
            query_instruction_limit: 5_000_000_000,
            clock: Clock::Real,
        }
    }
}

/// `install_code` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallMode {
    /// The canister must be empty.
    Install,
    /// Throws away all state (heap, stable memory, certified data) and installs afresh.
    Reinstall,
    /// Runs `canister_pre_upgrade` on the old module, keeps stable memory and certified data,
    /// runs `canister_post_upgrade` on the new one.
    Upgrade,
}

/// How a canister exports a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    /// `canister_update <name>`
    Update,
    /// `canister_query <name>`
    Query,
    /// `canister_composite_query <name>`
    CompositeQuery,
}

/// IC reject codes (interface spec, "Reject codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RejectCode {
    /// Fatal system error.
    SysFatal = 1,
    /// Transient system error (retry may succeed).
    SysTransient = 2,
    /// Bad destination (canister does not exist).
    DestinationInvalid = 3,
    /// Explicit reject by the canister.
    CanisterReject = 4,
    /// Canister error (trap, instruction limit, no reply, missing method).
    CanisterError = 5,
}

impl RejectCode {
    /// Parses the numeric code (`None` for 0 or unknown codes).
    pub fn from_u32(code: u32) -> Option<Self> {
        Some(match code {
            1 => RejectCode::SysFatal,
            2 => RejectCode::SysTransient,
            3 => RejectCode::DestinationInvalid,
            4 => RejectCode::CanisterReject,
            5 => RejectCode::CanisterError,
            _ => return None,
        })
    }
}

/// A rejected call, as the IC reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Reject code.
    pub code: RejectCode,
    /// Human-readable message.
    pub message: String,
    /// The replica's error code, e.g. `"IC0503"`, when there is one.
    pub error_code: Option<String>,
}

impl Reject {
    fn new(code: RejectCode, error_code: u16, message: impl Into<String>) -> Self {
        Reject {
            code,
            message: message.into(),
            error_code: Some(format!("IC{error_code:04}")),
        }
    }

    fn canister_not_found(id: Principal) -> Self {
        Reject::new(
            RejectCode::DestinationInvalid,
            301,
            format!("Canister {id} not found"),
        )
    }

    fn no_wasm_module(id: Principal) -> Self {
        Reject::new(
            RejectCode::CanisterError,
            537,
            format!("Error from Canister {id}: Attempted to execute a message, but the canister contains no Wasm module."),
        )
    }

    fn method_not_found(id: Principal, kind: &str, method: &str) -> Self {
        Reject::new(
            RejectCode::CanisterError,
            536,
            format!("Error from Canister {id}: Canister has no {kind} method '{method}'."),
        )
    }

    fn stopped(id: Principal) -> Self {
        Reject::new(
            RejectCode::CanisterError,
            508,
            format!("Canister {id} is stopped and therefore does not have a CallContextManager"),
        )
    }

    fn did_not_reply(id: Principal) -> Self {
        Reject::new(
            RejectCode::CanisterError,
            506,
            format!("Error from Canister {id}: Canister did not produce a response."),
        )
    }

    fn explicit(message: String) -> Self {
        Reject::new(RejectCode::CanisterReject, 406, message)
    }

    fn from_exec(id: Principal, error: &ExecError) -> Self {
        let (code, text) = match error {
            ExecError::Host(trap @ HostTrap::CalledTrap(_)) => (503, trap.to_string()),
            ExecError::Host(trap @ (HostTrap::ContractViolation(_) | HostTrap::Unsupported(_))) => {
                (504, trap.to_string())
            }
            ExecError::Host(trap @ HostTrap::Trapped(_)) => (502, trap.to_string()),
            ExecError::Wasm(what) => (502, format!("Canister trapped: {what}")),
            ExecError::InstructionLimit(limit) => (
                522,
                format!("Canister exceeded the limit of {limit} instructions for single message execution"),
            ),
            ExecError::Other(what) => (521, format!("Canister encountered a Wasm engine error: {what}")),
        };
        Reject::new(
            RejectCode::CanisterError,
            code,
            format!("Error from Canister {id}: {text}."),
        )
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reject code {}", self.code as u8)?;
        if let Some(code) = &self.error_code {
            write!(f, " ({code})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Reject {}

/// First and last canister id of the emulated subnet (indices 0 ..= 0xFFFFF).
pub fn canister_id_range() -> (Principal, Principal) {
    (
        canister_id_from_index(0),
        canister_id_from_index(LAST_CANISTER_INDEX),
    )
}

const LAST_CANISTER_INDEX: u64 = 0xFFFFF;

/// IC-style canister id: 8-byte big-endian index followed by `[0x01, 0x01]`.
pub fn canister_id_from_index(index: u64) -> Principal {
    let mut bytes = index.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x01, 0x01]);
    Principal::from_slice(&bytes)
}

/// Messages processed by one drain before the engine gives up (a canister calling itself
/// forever would otherwise never let `update` return). The rest stays queued for the next
/// `update` or `tick`.
const MAX_MESSAGES_PER_DRAIN: usize = 100_000;
/// `debug_print` lines kept for [`Engine::drain_logs`].
const MAX_LOGS: usize = 100_000;

/// Where the answer of a call context goes.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// An ingress update (`Engine::update`): the result is stored under this id.
    Ingress(u64),
    /// Another canister's call: answered by queuing a response for this callback.
    Canister { callback: u64 },
    /// A timer or heartbeat: nobody waits for an answer.
    System,
}

struct CallContext {
    canister: Principal,
    caller: Principal,
    origin: Origin,
    responded: bool,
    outstanding: usize,
    instructions: u64,
    last_error: Option<Reject>,
}

struct Callback {
    call_context: u64,
    canister: Principal,
    /// Module generation the callback belongs to (an upgrade or reinstall drops callbacks).
    generation: u64,
    reply: Closure,
    reject: Closure,
    cleanup: Option<Closure>,
}

enum Message {
    Request {
        from: Principal,
        to: Principal,
        method: String,
        arg: Vec<u8>,
        callback: u64,
    },
    Response {
        callback: u64,
        result: Result<Vec<u8>, (RejectCode, String)>,
    },
}

struct Canister {
    controllers: Vec<Principal>,
    module_hash: Option<[u8; 32]>,
    runtime: Option<Runtime>,
    generation: u64,
    version: u64,
    /// `stop_canister` was called (and no `start_canister` since): messages are refused.
    stopped: bool,
}

/// The single-threaded owner of all canisters of the emulated subnet.
///
/// Every call runs to completion: [`Engine::update`] returns after the message and every call
/// and callback it caused have executed. Time only moves when the clock says so.
pub struct Engine {
    config: EngineConfig,
    subnet: Arc<SubnetInfo>,
    canisters: BTreeMap<Principal, Canister>,
    next_canister_index: u64,
    /// Time of the current round (constant within a message and its downstream calls).
    round_time: u64,
    queue: VecDeque<Message>,
    contexts: HashMap<u64, CallContext>,
    callbacks: HashMap<u64, Callback>,
    ingress_results: HashMap<u64, Result<Vec<u8>, Reject>>,
    next_id: u64,
    last_instructions: u64,
    logs: VecDeque<(Principal, String)>,
    rand_seed: [u8; 32],
    rand_counter: u64,
}

fn system_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Engine {
    /// Creates an engine with no canisters.
    pub fn new(config: EngineConfig) -> Self {
        let now = system_now_ns();
        let round_time = match config.clock {
            Clock::Real => now,
            Clock::Manual { now_ns } => now_ns,
        };
        let rand_seed: [u8; 32] = Sha256::digest(now.to_le_bytes()).into();
        Engine {
            config,
            subnet: Arc::new(SubnetInfo::default()),
            canisters: BTreeMap::new(),
            next_canister_index: 0,
            round_time,
            queue: VecDeque::new(),
            contexts: HashMap::new(),
            callbacks: HashMap::new(),
            ingress_results: HashMap::new(),
            next_id: 0,
            last_instructions: 0,
            logs: VecDeque::new(),
            rand_seed,
            rand_counter: 0,
        }
    }

    /// The configuration (the clock field is the initial clock).
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Tells canisters which subnet they run on (`ic0.subnet_self`) and its root key
    /// (`ic0.root_key`, DER). Applies to installed canisters too.
    pub fn set_subnet(&mut self, subnet_id: Principal, root_key_der: Vec<u8>) {
        self.subnet = Arc::new(SubnetInfo {
            subnet_id: Some(subnet_id),
            root_key: root_key_der,
        });
        for canister in self.canisters.values_mut() {
            if let Some(rt) = canister.runtime.as_mut() {
                rt.host_mut().subnet = self.subnet.clone();
            }
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ---------------------------------------------------------------- canisters

    /// Creates an empty canister with the next IC-style id.
    pub fn create_canister(&mut self, controllers: Vec<Principal>) -> Principal {
        let id = canister_id_from_index(self.next_canister_index);
        self.next_canister_index += 1;
        self.canisters.insert(
            id,
            Canister {
                controllers,
                module_hash: None,
                runtime: None,
                generation: 0,
                version: 0,
                stopped: false,
            },
        );
        id
    }

    /// Whether the canister exists.
    pub fn canister_exists(&self, canister: Principal) -> bool {
        self.canisters.contains_key(&canister)
    }

    /// Ids of all canisters, in order.
    pub fn canister_ids(&self) -> Vec<Principal> {
        self.canisters.keys().copied().collect()
    }

    /// Controllers of a canister.
    pub fn controllers(&self, canister: Principal) -> Option<Vec<Principal>> {
        self.canisters.get(&canister).map(|c| c.controllers.clone())
    }

    /// Replaces the controllers (`update_settings`). Returns false if the canister does not exist.
    pub fn set_controllers(&mut self, canister: Principal, controllers: Vec<Principal>) -> bool {
        let Some(c) = self.canisters.get_mut(&canister) else {
            return false;
        };
        if let Some(rt) = c.runtime.as_mut() {
            rt.host_mut().controllers = controllers.clone();
        }
        c.controllers = controllers;
        true
    }

    /// SHA-256 of the installed module (of the bytes as installed, gzipped or not).
    pub fn module_hash(&self, canister: Principal) -> Option<[u8; 32]> {
        self.canisters.get(&canister).and_then(|c| c.module_hash)
    }

    /// Certified data of a canister (empty if nothing installed or set).
    pub fn certified_data(&self, canister: Principal) -> Option<Vec<u8>> {
        let c = self.canisters.get(&canister)?;
        Some(
            c.runtime
                .as_ref()
                .map(|rt| rt.host().certified_data.clone())
                .unwrap_or_default(),
        )
    }

    /// Kind of an exported method (`None`: no such canister, module or method).
    pub fn method_kind(&self, canister: Principal, method: &str) -> Option<MethodKind> {
        let rt = self.canisters.get(&canister)?.runtime.as_ref()?;
        rt.compiled().methods.get(method).copied()
    }

    /// Stable memory size in bytes.
    pub fn stable_memory_size(&self, canister: Principal) -> Option<u64> {
        let c = self.canisters.get(&canister)?;
        Some(
            c.runtime
                .as_ref()
                .map(|rt| rt.host().stable.size_bytes())
                .unwrap_or(0),
        )
    }

    /// Wasm heap size in bytes, as the canister sees it.
    pub fn heap_size(&self, canister: Principal) -> Option<u64> {
        let c = self.canisters.get(&canister)?;
        Some(
            c.runtime
                .as_ref()
                .map(|rt| rt.committed_heap_bytes() as u64)
                .unwrap_or(0),
        )
    }

    /// `ic0.canister_version` of a canister.
    pub fn canister_version(&self, canister: Principal) -> Option<u64> {
        let c = self.canisters.get(&canister)?;
        Some(
            c.runtime
                .as_ref()
                .map(|rt| rt.host().version)
                .unwrap_or(c.version),
        )
    }

    /// The global timer deadline of a canister (`None`: disarmed or no such canister).
    pub fn global_timer(&self, canister: Principal) -> Option<u64> {
        let t = self
            .canisters
            .get(&canister)?
            .runtime
            .as_ref()?
            .host()
            .global_timer;
        (t != 0).then_some(t)
    }

    /// The earliest armed global timer of any canister (lets a driver sleep until then).
    pub fn next_timer_ns(&self) -> Option<u64> {
        self.canisters
            .keys()
            .filter_map(|id| self.global_timer(*id))
            .min()
    }

    /// Imports of the installed module that this replica does not implement (they trap).
    pub fn unsupported_imports(&self, canister: Principal) -> Option<Vec<String>> {
        let rt = self.canisters.get(&canister)?.runtime.as_ref()?;
        Some(rt.compiled().unsupported_imports.clone())
    }

    // ---------------------------------------------------------------- time

    /// Current IC time: the time of the last round, or now when the real clock has moved on.
    pub fn time_ns(&self) -> u64 {
        match self.config.clock {
            Clock::Real => system_now_ns().max(self.round_time),
            Clock::Manual { now_ns } => now_ns,
        }
    }

    /// Sets the time and switches to the manual clock.
    pub fn set_time_ns(&mut self, t: u64) {
        self.config.clock = Clock::Manual { now_ns: t };
        self.round_time = t;
    }

    /// Advances the time and switches to the manual clock.
    pub fn advance_time(&mut self, d: Duration) {
        let now = self.time_ns().saturating_add(d.as_nanos() as u64);
        self.set_time_ns(now);
    }

    /// Starts a round: fixes the time every message of the round sees. With the real clock the
    /// time strictly increases from one round to the next, as block times do on the IC.
    fn begin_round(&mut self) {
        self.round_time = match self.config.clock {
            Clock::Real => system_now_ns().max(self.round_time.saturating_add(1)),
            Clock::Manual { now_ns } => now_ns,
        };
    }

    // ---------------------------------------------------------------- logs

    /// Takes the `debug_print` output collected so far (oldest first).
    pub fn drain_logs(&mut self) -> Vec<(Principal, String)> {
        self.logs.drain(..).collect()
    }

    fn collect_logs(&mut self, canister: Principal) {
        let Some(rt) = self
            .canisters
            .get_mut(&canister)
            .and_then(|c| c.runtime.as_mut())
        else {
            return;
        };
        let lines = std::mem::take(&mut rt.host_mut().logs);
        for line in lines {
            tracing::debug!(target: "ic_ws_replica::canister", canister = %canister, "{line}");
            if self.logs.len() >= MAX_LOGS {
                self.logs.pop_front();
            }
            self.logs.push_back((canister, line));
        }
    }

    /// Instructions (the canister's own wasm operators, plus data-copy charges) used by the last
    /// top-level message: the entry point of the last update (not its callbacks), query,
    /// inspect_message or install.
    pub fn last_instructions(&self) -> u64 {
        self.last_instructions
    }

    // ---------------------------------------------------------------- install

    /// Installs `wasm` (plain or gzipped) in `canister`. `sender` must be a controller.
    ///
    /// `Install` needs an empty canister; `Reinstall` starts from scratch; `Upgrade` runs
    /// `canister_pre_upgrade`, keeps stable memory and certified data, and runs
    /// `canister_post_upgrade(arg)`. Any trap leaves the canister exactly as it was. The global
    /// timer is disarmed by every mode, and callbacks of calls still in flight are dropped.
    pub fn install(
        &mut self,
        canister: Principal,
        wasm: &[u8],
        arg: &[u8],
        mode: InstallMode,
        sender: Principal,
    ) -> Result<(), Reject> {
        self.begin_round();
        let result = self.install_inner(canister, wasm, arg, mode, sender);
        self.collect_logs(canister);
        result
    }

    fn install_inner(
        &mut self,
        id: Principal,
        wasm: &[u8],
        arg: &[u8],
        mode: InstallMode,
        sender: Principal,
    ) -> Result<(), Reject> {
        // One budget for the whole install_code message, as on the IC.
        let limit = self.config.install_instruction_limit;
        let mut used = 0u64;
        let time = self.round_time;
        let subnet = self.subnet.clone();
        let canister = self
            .canisters
            .get_mut(&id)
            .ok_or_else(|| Reject::canister_not_found(id))?;
        if !canister.controllers.contains(&sender) {
            return Err(Reject::new(
                RejectCode::CanisterError,
                512,
                format!("Only controllers of canister {id} can call ic00 method install_code"),
            ));
        }
        match mode {
            InstallMode::Install if canister.runtime.is_some() => {
                return Err(Reject::new(
                    RejectCode::CanisterError,
                    538,
                    format!("Canister {id} is already installed."),
                ));
            }
            InstallMode::Upgrade if canister.runtime.is_none() => {
                return Err(Reject::no_wasm_module(id))
            }
            _ => {}
        }
        let compiled = compile::compile(wasm).map_err(|e| {
            Reject::new(
                RejectCode::CanisterError,
                505,
                format!("Error from Canister {id}: Canister's Wasm module is not valid: {e}"),
            )
        })?;
        let version = canister
            .runtime
            .as_ref()
            .map(|rt| rt.host().version)
            .unwrap_or(canister.version)
            + 1;
        let mut host = Host::new(id, canister.controllers.clone(), subnet, Default::default());
        host.version = version;

        // Upgrade: pre_upgrade on the old module, left open so a failing post_upgrade can
        // roll it back.
        let mut pre_upgrade_open = false;
        if mode == InstallMode::Upgrade {
            let Some(old) = canister.runtime.as_mut() else {
                return Err(Reject::no_wasm_module(id));
            };
            if old.compiled().exports("canister_pre_upgrade") {
                let exec = Exec::new(ApiContext::PreUpgrade, sender, time, limit);
                let outcome = old.execute(
                    Entry::Export("canister_pre_upgrade"),
                    exec,
                    OnSuccess::Defer,
                );
                used = outcome.instructions;
                self.last_instructions = used;
                if let Err(e) = outcome.result {
                    return Err(Reject::from_exec(id, &e));
                }
                pre_upgrade_open = true;
            }
            host.stable = old.host().stable.snapshot();
            host.certified_data = old.host().certified_data.clone();
        }

        let init_name = if mode == InstallMode::Upgrade {
            "canister_post_upgrade"
        } else {
            "canister_init"
        };
        let fail = |canister: &mut Canister, reject: Reject| {
            if pre_upgrade_open {
                if let Some(old) = canister.runtime.as_mut() {
                    old.rollback();
                }
            }
            Err(reject)
        };
        // What pre_upgrade left (at least 1: a zero limit would mean "no limit set" to the
        // instrumentation; the start function and init/post_upgrade then fail at once).
        let left = limit.saturating_sub(used).max(1);
        let mut runtime = match Runtime::new(compiled, host, left) {
            Ok(rt) => rt,
            Err(e) => return fail(canister, Reject::from_exec(id, &whole_limit(e, limit))),
        };
        if runtime.compiled().exports(init_name) {
            let mut exec = Exec::new(ApiContext::Init, sender, time, left);
            exec.arg = arg.to_vec();
            let outcome = runtime.execute(Entry::Export(init_name), exec, OnSuccess::Commit);
            // The install_code message's total (pre_upgrade included).
            self.last_instructions = used + outcome.instructions;
            // Logs of a failed init would be lost with the runtime: keep them.
            let logs = std::mem::take(&mut runtime.host_mut().logs);
            self.logs.extend(logs.into_iter().map(|l| (id, l)));
            if let Err(e) = outcome.result {
                return fail(canister, Reject::from_exec(id, &whole_limit(e, limit)));
            }
        }
        let hash: [u8; 32] = Sha256::digest(wasm).into();
        canister.module_hash = Some(hash);
        canister.runtime = Some(runtime);
        canister.generation += 1;
        canister.version = version;
        Ok(())
    }

    // ---------------------------------------------------------------- updates

    /// Executes an update call (or a query method called as an update) and everything it causes
    /// downstream, then returns the answer of the call.
    pub fn update(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<Vec<u8>, Reject> {
        self.begin_round();
        if canister == Principal::management_canister() {
            return Err(Reject::new(
                RejectCode::CanisterReject,
                407,
                format!(
                    "ic-ws-replica: management canister method '{method}' cannot be called through Engine::update; \
                     use the replica's canister management functions"
                ),
            ));
        }
        if !self.canister_exists(canister) {
            return Err(Reject::canister_not_found(canister));
        }
        let id = self.fresh_id();
        let instructions =
            self.run_method(canister, method, arg.to_vec(), caller, Origin::Ingress(id));
        self.last_instructions = instructions;
        self.drain();
        self.ingress_results.remove(&id).unwrap_or_else(|| {
            Err(Reject::new(
                RejectCode::SysTransient,
                202,
                format!(
                    "the call to {canister} did not complete within {MAX_MESSAGES_PER_DRAIN} messages \
                     (a canister calling itself forever?); the rest stays queued"
                ),
            ))
        })
    }

    /// Starts executing `method` in a new call context; returns the instructions used.
    fn run_method(
        &mut self,
        id: Principal,
        method: &str,
        arg: Vec<u8>,
        caller: Principal,
        origin: Origin,
    ) -> u64 {
        let limit = self.config.update_instruction_limit;
        let time = self.round_time;
        let Some(canister) = self.canisters.get_mut(&id) else {
            self.answer(origin, Err(Reject::canister_not_found(id)));
            return 0;
        };
        if canister.stopped {
            self.answer(origin, Err(Reject::stopped(id)));
            return 0;
        }
        let Some(rt) = canister.runtime.as_mut() else {
            self.answer(origin, Err(Reject::no_wasm_module(id)));
            return 0;
        };
        let (context, export, on_success) = match rt.compiled().methods.get(method) {
            Some(MethodKind::Update) => (
                ApiContext::Update,
                format!("canister_update {method}"),
                OnSuccess::Commit,
            ),
            Some(MethodKind::Query) => (
                ApiContext::ReplicatedQuery,
                format!("canister_query {method}"),
                OnSuccess::Rollback,
            ),
            Some(MethodKind::CompositeQuery) => {
                let reject = Reject::new(
                    RejectCode::CanisterError,
                    527,
                    format!("Error from Canister {id}: Composite query cannot be called in replicated mode."),
                );
                self.answer(origin, Err(reject));
                return 0;
            }
            None => {
                self.answer(origin, Err(Reject::method_not_found(id, "update", method)));
                return 0;
            }
        };
        let mut exec = Exec::new(context, caller, time, limit);
        exec.arg = arg;
        exec.can_respond = true;
        let outcome = rt.execute(Entry::Export(&export), exec, on_success);
        let instructions = outcome.instructions;
        let cc = self.fresh_id();
        self.contexts.insert(
            cc,
            CallContext {
                canister: id,
                caller,
                origin,
                responded: false,
                outstanding: 0,
                instructions: 0,
                last_error: None,
            },
        );
        self.after_execution(cc, outcome);
        instructions
    }

    /// Records what a message of call context `cc` did: queues its calls, delivers its answer,
    /// closes the context when nothing can answer it any more.
    fn after_execution(&mut self, cc_id: u64, outcome: Outcome) {
        let Some(cc) = self.contexts.get_mut(&cc_id) else {
            return;
        };
        let canister = cc.canister;
        cc.instructions += outcome.instructions;
        let generation = self
            .canisters
            .get(&canister)
            .map(|c| c.generation)
            .unwrap_or(0);
        let mut answer = None;
        match outcome.result {
            Ok(()) => {
                for call in outcome.outgoing {
                    let callback = self.next_id + 1;
                    self.next_id = callback;
                    self.callbacks.insert(
                        callback,
                        Callback {
                            call_context: cc_id,
                            canister,
                            generation,
                            reply: call.reply,
                            reject: call.reject,
                            cleanup: call.cleanup,
                        },
                    );
                    cc.outstanding += 1;
                    self.queue.push_back(Message::Request {
                        from: canister,
                        to: call.callee,
                        method: call.method,
                        arg: call.arg,
                        callback,
                    });
                }
                if let Some(response) = outcome.response {
                    cc.responded = true;
                    answer = Some(match response {
                        Response::Reply(bytes) => Ok(bytes),
                        Response::Reject(message) => Err(Reject::explicit(message)),
                    });
                }
            }
            Err(e) => cc.last_error = Some(Reject::from_exec(canister, &e)),
        }
        let origin = cc.origin;
        if answer.is_none() && !cc.responded && cc.outstanding == 0 {
            cc.responded = true;
            answer = Some(Err(cc
                .last_error
                .take()
                .unwrap_or_else(|| Reject::did_not_reply(canister))));
        }
        if cc.responded && cc.outstanding == 0 {
            self.contexts.remove(&cc_id);
        }
        self.collect_logs(canister);
        if let Some(answer) = answer {
            self.answer(origin, answer);
        }
    }

    fn answer(&mut self, origin: Origin, result: Result<Vec<u8>, Reject>) {
        match origin {
            Origin::Ingress(id) => {
                self.ingress_results.insert(id, result);
            }
            Origin::Canister { callback } => {
                self.queue.push_back(Message::Response {
                    callback,
                    result: result.map_err(|r| (r.code, r.message)),
                });
            }
            Origin::System => {
                if let Err(reject) = result {
                    tracing::debug!(target: "ic_ws_replica::engine", "system task failed: {reject}");
                }
            }
        }
    }

    /// Processes queued messages until none is left (or the per-drain budget is spent).
    fn drain(&mut self) {
        for _ in 0..MAX_MESSAGES_PER_DRAIN {
            let Some(message) = self.queue.pop_front() else {
                return;
            };
            match message {
                Message::Request {
                    from,
                    to,
                    method,
                    arg,
                    callback,
                } => {
                    let origin = Origin::Canister { callback };
                    if to == Principal::management_canister() {
                        let result = self.management_call(from, &method, &arg);
                        self.answer(origin, result);
                    } else {
                        self.run_method(to, &method, arg, from, origin);
                    }
                }
                Message::Response { callback, result } => self.deliver_response(callback, result),
            }
        }
    }

    fn deliver_response(
        &mut self,
        callback_id: u64,
        result: Result<Vec<u8>, (RejectCode, String)>,
    ) {
        let Some(cb) = self.callbacks.remove(&callback_id) else {
            return;
        };
        let limit = self.config.update_instruction_limit;
        let time = self.round_time;
        let Some(cc) = self.contexts.get_mut(&cb.call_context) else {
            return;
        };
        cc.outstanding = cc.outstanding.saturating_sub(1);
        let (caller, can_respond, cc_instructions) = (cc.caller, !cc.responded, cc.instructions);
        let runtime = self
            .canisters
            .get_mut(&cb.canister)
            .filter(|c| c.generation == cb.generation)
            .and_then(|c| c.runtime.as_mut());
        let Some(rt) = runtime else {
            // The module was replaced while the call was in flight: the callback is gone.
            let outcome = Outcome {
                result: Ok(()),
                response: None,
                outgoing: Vec::new(),
                instructions: 0,
                accepted: false,
            };
            self.after_execution(cb.call_context, outcome);
            return;
        };
        let (context, closure, mut exec) = match result {
            Ok(bytes) => {
                let mut exec = Exec::new(ApiContext::ReplyCallback, caller, time, limit);
                exec.arg = bytes;
                (ApiContext::ReplyCallback, cb.reply, exec)
            }
            Err((code, message)) => {
                let mut exec = Exec::new(ApiContext::RejectCallback, caller, time, limit);
                exec.reject_code = code as u32;
                exec.reject_message = message;
                (ApiContext::RejectCallback, cb.reject, exec)
            }
        };
        debug_assert_eq!(exec.context, context);
        exec.can_respond = can_respond;
        exec.call_context_instructions = cc_instructions;
        let outcome = rt.execute(Entry::Callback(closure), exec, OnSuccess::Commit);
        if outcome.result.is_err() {
            if let Some(cleanup) = cb.cleanup {
                let mut exec = Exec::new(ApiContext::Cleanup, caller, time, limit);
                exec.call_context_instructions = cc_instructions + outcome.instructions;
                // The cleanup's own trap is only logged: the callback's error is what counts.
                let cleanup_outcome = rt.execute(Entry::Callback(cleanup), exec, OnSuccess::Commit);
                if let Err(e) = cleanup_outcome.result {
                    tracing::debug!(target: "ic_ws_replica::engine", "cleanup callback of {} trapped: {e:?}", cb.canister);
                }
            }
        }
        self.after_execution(cb.call_context, outcome);
    }

    // ---------------------------------------------------------------- queries

    /// Executes a query. Never changes state, whatever the canister does.
    pub fn query(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
        data_certificate: Option<&[u8]>,
    ) -> Result<Vec<u8>, Reject> {
        let time = self.time_ns();
        let limit = self.config.query_instruction_limit;
        let c = self
            .canisters
            .get_mut(&canister)
            .ok_or_else(|| Reject::canister_not_found(canister))?;
        if c.stopped {
            return Err(Reject::stopped(canister));
        }
        let rt = c
            .runtime
            .as_mut()
            .ok_or_else(|| Reject::no_wasm_module(canister))?;
        let (context, export) = match rt.compiled().methods.get(method) {
            Some(MethodKind::Query) => (
                ApiContext::NonReplicatedQuery,
                format!("canister_query {method}"),
            ),
            Some(MethodKind::CompositeQuery) => (
                ApiContext::CompositeQuery,
                format!("canister_composite_query {method}"),
            ),
            _ => return Err(Reject::method_not_found(canister, "query", method)),
        };
        let mut exec = Exec::new(context, caller, time, limit);
        exec.arg = arg.to_vec();
        exec.can_respond = true;
        exec.data_certificate = data_certificate.map(<[u8]>::to_vec);
        let outcome = rt.execute(Entry::Export(&export), exec, OnSuccess::Rollback);
        self.last_instructions = outcome.instructions;
        self.collect_logs(canister);
        match (outcome.result, outcome.response) {
            (Err(e), _) => Err(Reject::from_exec(canister, &e)),
            (Ok(()), Some(Response::Reply(bytes))) => Ok(bytes),
            (Ok(()), Some(Response::Reject(message))) => Err(Reject::explicit(message)),
            (Ok(()), None) => Err(Reject::did_not_reply(canister)),
        }
    }

    /// Runs `canister_inspect_message` if the canister exports it (else accepts). Never changes
    /// state.
    pub fn inspect_message(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<(), Reject> {
        let time = self.time_ns();
        let limit = self.config.query_instruction_limit;
        let c = self
            .canisters
            .get_mut(&canister)
            .ok_or_else(|| Reject::canister_not_found(canister))?;
        if c.stopped {
            return Err(Reject::stopped(canister));
        }
        let rt = c
            .runtime
            .as_mut()
            .ok_or_else(|| Reject::no_wasm_module(canister))?;
        if !rt.compiled().exports("canister_inspect_message") {
            return Ok(());
        }
        let mut exec = Exec::new(ApiContext::InspectMessage, caller, time, limit);
        exec.arg = arg.to_vec();
        exec.method_name = method.to_string();
        let outcome = rt.execute(
            Entry::Export("canister_inspect_message"),
            exec,
            OnSuccess::Rollback,
        );
        self.last_instructions = outcome.instructions;
        self.collect_logs(canister);
        match outcome.result {
            Err(e) => Err(Reject::from_exec(canister, &e)),
            Ok(()) if outcome.accepted => Ok(()),
            Ok(()) => Err(Reject::new(
                RejectCode::CanisterReject,
                406,
                format!("Canister {canister} rejected the message"),
            )),
        }
    }

    // ---------------------------------------------------------------- timers

    /// Fires due global timers (and heartbeats), then runs every call they cause.
    pub fn tick(&mut self) {
        self.begin_round();
        let now = self.round_time;
        let ids: Vec<Principal> = self.canisters.keys().copied().collect();
        for id in ids {
            // Stopped canisters run no timers or heartbeats (as on the IC).
            let Some(rt) = self
                .canisters
                .get_mut(&id)
                .filter(|c| !c.stopped)
                .and_then(|c| c.runtime.as_mut())
            else {
                continue;
            };
            let timer = rt.host().global_timer;
            if timer != 0 && timer <= now {
                // Disarmed before the handler runs (and stays disarmed if it traps).
                rt.host_mut().global_timer = 0;
                if rt.compiled().exports("canister_global_timer") {
                    self.run_system_task(id, "canister_global_timer");
                }
            }
            let heartbeat = self
                .canisters
                .get(&id)
                .and_then(|c| c.runtime.as_ref())
                .is_some_and(|rt| rt.compiled().exports("canister_heartbeat"));
            if heartbeat {
                self.run_system_task(id, "canister_heartbeat");
            }
        }
        self.drain();
    }

    fn run_system_task(&mut self, id: Principal, export: &str) {
        let limit = self.config.update_instruction_limit;
        let time = self.round_time;
        let Some(rt) = self.canisters.get_mut(&id).and_then(|c| c.runtime.as_mut()) else {
            return;
        };
        let caller = Principal::management_canister();
        let exec = Exec::new(ApiContext::SystemTask, caller, time, limit);
        let outcome = rt.execute(Entry::Export(export), exec, OnSuccess::Commit);
        let cc = self.fresh_id();
        self.contexts.insert(
            cc,
            CallContext {
                canister: id,
                caller,
                origin: Origin::System,
                responded: true, // nobody waits for an answer
                outstanding: 0,
                instructions: 0,
                last_error: None,
            },
        );
        self.after_execution(cc, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn engine_is_send() {
        assert_send::<Engine>();
    }

    #[test]
    fn canister_ids_follow_the_ic_layout() {
        let (first, last) = canister_id_range();
        assert_eq!(first.as_slice(), &[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(last.as_slice(), &[0, 0, 0, 0, 0, 0x0F, 0xFF, 0xFF, 1, 1]);
        // The first canister of a subnet whose range starts at 0 is rwlgt-iiaaa-aaaaa-aaaaa-cai.
        assert_eq!(first.to_text(), "rwlgt-iiaaa-aaaaa-aaaaa-cai");
        let mut engine = Engine::new(EngineConfig::default());
        assert_eq!(engine.create_canister(vec![]), first);
        assert_eq!(engine.create_canister(vec![]), canister_id_from_index(1));
    }

    #[test]
    fn manual_clock_is_frozen_until_moved() {
        let mut engine = Engine::new(EngineConfig {
            clock: Clock::Manual { now_ns: 1_000 },
            ..Default::default()
        });
        assert_eq!(engine.time_ns(), 1_000);
        engine.advance_time(Duration::from_nanos(500));
        assert_eq!(engine.time_ns(), 1_500);
        engine.set_time_ns(42);
        assert_eq!(engine.time_ns(), 42);
    }

    #[test]
    fn real_clock_rounds_strictly_increase() {
        let mut engine = Engine::new(EngineConfig::default());
        engine.begin_round();
        let a = engine.round_time;
        engine.begin_round();
        assert!(engine.round_time > a);
        assert!(engine.time_ns() >= engine.round_time);
    }

    #[test]
    fn missing_canister_and_empty_canister_are_rejected_like_the_ic() {
        let mut engine = Engine::new(EngineConfig::default());
        let ghost = canister_id_from_index(77);
        let err = engine
            .update(ghost, "f", &[], Principal::anonymous())
            .unwrap_err();
        assert_eq!(
            (err.code, err.error_code.as_deref()),
            (RejectCode::DestinationInvalid, Some("IC0301"))
        );
        let empty = engine.create_canister(vec![Principal::anonymous()]);
        let err = engine
            .query(empty, "f", &[], Principal::anonymous(), None)
            .unwrap_err();
        assert_eq!(
            (err.code, err.error_code.as_deref()),
            (RejectCode::CanisterError, Some("IC0537"))
        );
        assert_eq!(engine.certified_data(empty), Some(vec![]));
        assert_eq!(engine.module_hash(empty), None);
    }
}
