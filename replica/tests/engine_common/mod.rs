//! Shared setup of the engine tests: the test canister's wasm (built once per test process
//! through `wasm_build`), engines on a manual clock, candid helpers.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use candid::utils::{ArgumentDecoder, ArgumentEncoder};
use candid::{CandidType, Deserialize, Principal};
use ic_ws_replica::engine::{Clock, Engine, EngineConfig, InstallMode, Reject};

/// The test canister's package.
pub const PACKAGE: &str = "ic-ws-replica-test-canister";
/// 2026-01-01T00:00:00Z: the manual clock of every test starts here.
pub const START_NS: u64 = 1_767_225_600_000_000_000;

pub fn controller() -> Principal {
    Principal::from_slice(&[0xC0; 29])
}

pub fn user() -> Principal {
    Principal::from_slice(&[0x05; 29])
}

/// The test canister wasm (built on first use).
pub fn wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        ic_ws_replica::wasm_build::build_canister_wasm(PACKAGE)
            .unwrap_or_else(|e| panic!("cannot build the test canister: {e}"))
    })
}

pub fn config() -> EngineConfig {
    EngineConfig {
        clock: Clock::Manual { now_ns: START_NS },
        ..EngineConfig::default()
    }
}

pub fn engine() -> Engine {
    Engine::new(config())
}

/// Creates a canister controlled by [`controller`] and installs the test canister in it.
pub fn install(engine: &mut Engine, greeting: Option<&str>) -> Principal {
    let id = engine.create_canister(vec![controller()]);
    let arg = candid::encode_one(greeting.map(str::to_string)).unwrap();
    engine
        .install(id, wasm(), &arg, InstallMode::Install, controller())
        .expect("install");
    id
}

pub fn update<A: ArgumentEncoder, R: for<'a> ArgumentDecoder<'a>>(
    engine: &mut Engine,
    id: Principal,
    method: &str,
    args: A,
) -> Result<R, Reject> {
    let arg = candid::encode_args(args).unwrap();
    let bytes = engine.update(id, method, &arg, user())?;
    Ok(candid::decode_args(&bytes)
        .unwrap_or_else(|e| panic!("decoding the reply of {method}: {e}")))
}

pub fn query<A: ArgumentEncoder, R: for<'a> ArgumentDecoder<'a>>(
    engine: &mut Engine,
    id: Principal,
    method: &str,
    args: A,
) -> Result<R, Reject> {
    let arg = candid::encode_args(args).unwrap();
    let bytes = engine.query(id, method, &arg, user(), None)?;
    Ok(candid::decode_args(&bytes)
        .unwrap_or_else(|e| panic!("decoding the reply of {method}: {e}")))
}

/// Mirror of the canister's `State`.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub counter: u64,
    pub stable_len: u64,
    pub ticks: u64,
    pub upgrades: u64,
    pub pre_upgrades: u64,
    pub heap_blob_len: u64,
    pub heap_bytes: u64,
}

pub fn state(engine: &mut Engine, id: Principal) -> State {
    let (s,): (State,) = query(engine, id, "state", ()).expect("state");
    s
}

/// Everything observable about a canister from outside plus its own view of its state.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub state: State,
    pub certified_data: Vec<u8>,
    pub heap_size: u64,
    pub stable_size: u64,
    pub timer: Option<u64>,
}

pub fn snapshot(engine: &mut Engine, id: Principal) -> Snapshot {
    Snapshot {
        state: state(engine, id),
        certified_data: engine.certified_data(id).unwrap(),
        heap_size: engine.heap_size(id).unwrap(),
        stable_size: engine.stable_memory_size(id).unwrap(),
        timer: engine.global_timer(id),
    }
}
