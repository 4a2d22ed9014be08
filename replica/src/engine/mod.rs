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
//! - `registry` is the canisters of the subnet (creation, ids, controllers, what the facade
//!   reads about them);
//! - `install` is `install_code` (install, reinstall, upgrade);
//! - `execution` schedules and runs messages: call contexts, callbacks, the message queue,
//!   queries, inspect_message, timers;
//! - `lifecycle` is canister lifecycle (stop, start, delete) and what canisters may call on the
//!   management canister (`raw_rand`);
//! - this module holds the shared types (configuration, rejects, canister and call-context
//!   state), the engine's construction, time and logs.
//!
//! What is and is not faithful to the IC is listed in `replica/ENGINE.md`.

mod compile;
pub mod costs;
mod execution;
mod install;
pub mod instrument;
mod lifecycle;
mod registry;
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

pub use compile::{use_module_cache, Metadata, MAX_WASM_SIZE};

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
