//! Canister execution engine of the embedded replica (work in progress: API frozen, bodies
//! being filled in).
//!
//! [`Engine`] is the single-threaded owner of every canister of the emulated subnet: it
//! installs wasm, executes update calls (and every downstream inter-canister call and callback)
//! and queries, fires global timers and keeps the clock. The HTTP interface, certification and
//! the public `Replica` facade are layered on top of it.

use candid::Principal;
use std::time::Duration;

/// How the engine reads the IC time (`ic0.time`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Clock {
    /// Follows the host's real time (strictly monotonic, constant within one message).
    #[default]
    Real,
    /// Frozen at `now_ns` until [`Engine::set_time_ns`] or [`Engine::advance_time`].
    Manual {
        /// Nanoseconds since the Unix epoch.
        now_ns: u64,
    },
}

/// Engine settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Instruction (fuel) limit of one update message (IC: 40e9).
    pub update_instruction_limit: u64,
    /// Instruction (fuel) limit of one query (IC: 5e9).
    pub query_instruction_limit: u64,
    /// Where time comes from.
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            update_instruction_limit: 40_000_000_000,
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
    /// Throws away all state (heap and stable memory) and installs afresh.
    Reinstall,
    /// Runs `canister_pre_upgrade` on the old module, keeps stable memory, runs
    /// `canister_post_upgrade` on the new one.
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
    /// Bad destination (canister or method does not exist).
    DestinationInvalid = 3,
    /// Explicit reject by the canister.
    CanisterReject = 4,
    /// Canister error (trap, instruction limit, no reply).
    CanisterError = 5,
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

/// The single-threaded owner of all canisters.
pub struct Engine {
    config: EngineConfig,
}

/// First and last canister id of the emulated subnet.
pub fn canister_id_range() -> (Principal, Principal) {
    (canister_id_from_index(0), canister_id_from_index(0xFFFFF))
}

fn canister_id_from_index(index: u64) -> Principal {
    let mut bytes = index.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x01, 0x01]);
    Principal::from_slice(&bytes)
}

#[allow(unused_variables, clippy::unused_self)]
impl Engine {
    /// Creates an engine with no canisters.
    pub fn new(config: EngineConfig) -> Self {
        Self { config }
    }
    /// Creates an empty canister.
    pub fn create_canister(&mut self, controllers: Vec<Principal>) -> Principal {
        canister_id_from_index(0)
    }
    /// Installs wasm (plain or gzipped).
    pub fn install(
        &mut self,
        canister: Principal,
        wasm: &[u8],
        arg: &[u8],
        mode: InstallMode,
        sender: Principal,
    ) -> Result<(), Reject> {
        unimplemented!("engine being written")
    }
    /// Executes an update call and everything downstream.
    pub fn update(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<Vec<u8>, Reject> {
        unimplemented!("engine being written")
    }
    /// Executes a query; never changes state.
    pub fn query(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
        data_certificate: Option<&[u8]>,
    ) -> Result<Vec<u8>, Reject> {
        unimplemented!("engine being written")
    }
    /// Runs `canister_inspect_message` if exported.
    pub fn inspect_message(
        &mut self,
        canister: Principal,
        method: &str,
        arg: &[u8],
        caller: Principal,
    ) -> Result<(), Reject> {
        Ok(())
    }
    /// Kind of an exported method.
    pub fn method_kind(&self, canister: Principal, method: &str) -> Option<MethodKind> {
        None
    }
    /// Certified data of a canister.
    pub fn certified_data(&self, canister: Principal) -> Option<Vec<u8>> {
        None
    }
    /// SHA-256 of the installed module.
    pub fn module_hash(&self, canister: Principal) -> Option<[u8; 32]> {
        None
    }
    /// Controllers of a canister.
    pub fn controllers(&self, canister: Principal) -> Option<Vec<Principal>> {
        None
    }
    /// Whether the canister exists.
    pub fn canister_exists(&self, canister: Principal) -> bool {
        false
    }
    /// Current IC time.
    pub fn time_ns(&self) -> u64 {
        0
    }
    /// Sets the time (switches to the manual clock).
    pub fn set_time_ns(&mut self, t: u64) {}
    /// Advances the time (switches to the manual clock).
    pub fn advance_time(&mut self, d: Duration) {}
    /// Fires due global timers and drains the resulting calls.
    pub fn tick(&mut self) {}
    /// Instructions used by the last top-level message.
    pub fn last_instructions(&self) -> u64 {
        0
    }
    /// Stable memory size in bytes.
    pub fn stable_memory_size(&self, canister: Principal) -> Option<u64> {
        None
    }
    /// Wasm heap size in bytes.
    pub fn heap_size(&self, canister: Principal) -> Option<u64> {
        None
    }
    /// Takes the debug_print output collected so far.
    pub fn drain_logs(&mut self) -> Vec<(Principal, String)> {
        Vec::new()
    }
}
