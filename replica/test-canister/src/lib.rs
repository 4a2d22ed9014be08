//! Canister used by ic-ws-replica's engine tests and benchmark.
//!
//! Plain ic-cdk 0.20 code (with ic-stable-structures and ic-cdk-timers) that exercises what the
//! engine must get right: heap and stable state, certified data, traps and their rollback,
//! queries that try to change state, the instruction limit and performance counter, timers
//! (which run through self-calls), inter-canister calls and their reject paths, upgrades,
//! inspect_message and the management canister's `raw_rand`.
//!
//! State: a heap counter and heap blob (lost on upgrade), a stable map (key -> text) and a
//! stable metadata map (upgrade counters), both kept across upgrades.

use candid::{CandidType, Deserialize, Principal};
use ic_cdk::call::{Call, CallFailed};
use ic_stable_structures::memory_manager::{MemoryId, MemoryManager, VirtualMemory};
use ic_stable_structures::{DefaultMemoryImpl, StableBTreeMap};
use std::cell::{Cell, RefCell};
use std::time::Duration;

type Memory = VirtualMemory<DefaultMemoryImpl>;

/// Key of the metadata map counting `post_upgrade` runs.
const UPGRADES: u8 = 0;
/// Key of the metadata map counting `pre_upgrade` runs.
const PRE_UPGRADES: u8 = 1;
/// Keys written by one-shot timers start here.
const TIMER_KEYS: u64 = 1_000_000;

thread_local! {
    static MEMORY_MANAGER: RefCell<MemoryManager<DefaultMemoryImpl>> =
        RefCell::new(MemoryManager::init(DefaultMemoryImpl::default()));
    static MAP: RefCell<StableBTreeMap<u64, String, Memory>> =
        RefCell::new(StableBTreeMap::init(MEMORY_MANAGER.with(|m| m.borrow().get(MemoryId::new(0)))));
    static META: RefCell<StableBTreeMap<u8, u64, Memory>> =
        RefCell::new(StableBTreeMap::init(MEMORY_MANAGER.with(|m| m.borrow().get(MemoryId::new(1)))));
    static COUNTER: Cell<u64> = const { Cell::new(0) };
    static TICKS: Cell<u64> = const { Cell::new(0) };
    static HEAP_BLOB: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Everything a test may want to compare before and after a message.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Heap counter (bumped by every successful `put`).
    pub counter: u64,
    /// Entries in the stable map.
    pub stable_len: u64,
    /// Interval timer ticks (heap).
    pub ticks: u64,
    /// `post_upgrade` runs (stable).
    pub upgrades: u64,
    /// `pre_upgrade` runs (stable).
    pub pre_upgrades: u64,
    /// Bytes held in the heap blob.
    pub heap_blob_len: u64,
    /// Wasm heap size in bytes, as the canister sees it.
    pub heap_bytes: u64,
}

fn heap_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * 65536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

fn meta(key: u8) -> u64 {
    META.with(|m| m.borrow().get(&key).unwrap_or(0))
}

fn bump_meta(key: u8) {
    META.with(|m| {
        let mut m = m.borrow_mut();
        let v = m.get(&key).unwrap_or(0);
        m.insert(key, v + 1);
    });
}

fn insert(key: u64, value: String) -> u64 {
    MAP.with(|m| {
        let mut m = m.borrow_mut();
        m.insert(key, value);
        m.len()
    })
}

/// Certified data after a `put`: the map length, big-endian.
fn certify_len(len: u64) {
    ic_cdk::api::certified_data_set(len.to_be_bytes());
}

#[ic_cdk::init]
fn init(greeting: Option<String>) {
    insert(0, greeting.unwrap_or_else(|| "hello".to_string()));
}

#[ic_cdk::pre_upgrade]
fn pre_upgrade() {
    bump_meta(PRE_UPGRADES);
}

/// `greeting == "trap"` makes the upgrade fail (to test that a failed upgrade changes nothing).
#[ic_cdk::post_upgrade]
fn post_upgrade(greeting: Option<String>) {
    if greeting.as_deref() == Some("trap") {
        ic_cdk::trap("post_upgrade asked to trap");
    }
    bump_meta(UPGRADES);
    if let Some(g) = greeting {
        insert(0, g);
    }
}

/// Stores `value` under `key` (stable), bumps the heap counter, certifies the map length.
#[ic_cdk::update]
fn put(key: u64, value: String) -> u64 {
    let len = insert(key, value);
    COUNTER.set(COUNTER.get() + 1);
    certify_len(len);
    ic_cdk::println!("put {key} -> len {len}");
    len
}

#[ic_cdk::query]
fn get(key: u64) -> Option<String> {
    MAP.with(|m| m.borrow().get(&key))
}

#[ic_cdk::query]
fn state() -> State {
    State {
        counter: COUNTER.get(),
        stable_len: MAP.with(|m| m.borrow().len()),
        ticks: TICKS.get(),
        upgrades: meta(UPGRADES),
        pre_upgrades: meta(PRE_UPGRADES),
        heap_blob_len: HEAP_BLOB.with(|b| b.borrow().len() as u64),
        heap_bytes: heap_bytes(),
    }
}

/// Changes everything it can (heap, stable, certified data, timer, an outgoing call to
/// `target`), then traps: none of it may survive.
#[ic_cdk::update]
fn put_then_trap(key: u64, value: String, target: Principal) {
    let len = insert(key, value.clone());
    COUNTER.set(COUNTER.get() + 1);
    HEAP_BLOB.with(|b| b.borrow_mut().extend_from_slice(&[7u8; 3 * 65536]));
    certify_len(len + 1000);
    ic_cdk::api::global_timer_set(ic_cdk::api::time() + 1);
    let _ = Call::unbounded_wait(target, "put")
        .with_args(&(key, value))
        .oneway();
    ic_cdk::trap("put_then_trap: trapping on purpose");
}

/// A query that changes heap, stable memory and heap size: the engine must discard it all.
#[ic_cdk::query]
fn mutate_in_query(key: u64, value: String) -> State {
    insert(key, value);
    COUNTER.set(COUNTER.get() + 100);
    HEAP_BLOB.with(|b| {
        b.borrow_mut()
            .extend_from_slice(&vec![9u8; 4 * 1024 * 1024])
    });
    state()
}

/// Not allowed in a query: traps.
#[ic_cdk::query]
fn certify_in_query() {
    ic_cdk::api::certified_data_set(b"query");
}

/// Writes state, then loops until the instruction limit stops it.
#[ic_cdk::update]
fn spin() -> u64 {
    insert(424_242, "spin".to_string());
    COUNTER.set(COUNTER.get() + 1);
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
        if std::hint::black_box(x) == u64::MAX {
            return x;
        }
    }
}

/// Same as [`spin`] in a query.
#[ic_cdk::query]
fn spin_query() -> u64 {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
        if std::hint::black_box(x) == u64::MAX {
            return x;
        }
    }
}

fn busy_work(iterations: u64) -> u64 {
    let mut acc: u64 = 0;
    for i in 0..iterations {
        acc = std::hint::black_box(acc.wrapping_mul(31).wrapping_add(i));
    }
    acc
}

/// `(performance_counter before, performance_counter after)` around `iterations` of work.
#[ic_cdk::update]
fn instructions(iterations: u64) -> (u64, u64) {
    let before = ic_cdk::api::performance_counter(0);
    busy_work(iterations);
    (before, ic_cdk::api::performance_counter(0))
}

/// [`instructions`] in a query.
#[ic_cdk::query]
fn instructions_query(iterations: u64) -> (u64, u64) {
    let before = ic_cdk::api::performance_counter(0);
    busy_work(iterations);
    (before, ic_cdk::api::performance_counter(0))
}

/// Starts an interval timer that bumps the tick counter every `secs` seconds.
#[ic_cdk::update]
fn start_interval(secs: u64) {
    ic_cdk_timers::set_timer_interval(Duration::from_secs(secs), || async {
        TICKS.set(TICKS.get() + 1);
    });
}

/// Starts a one-shot timer that writes `value` under `TIMER_KEYS + n` after `secs` seconds.
#[ic_cdk::update]
fn start_timer(secs: u64, n: u64, value: String) {
    ic_cdk_timers::set_timer(Duration::from_secs(secs), async move {
        insert(TIMER_KEYS + n, value);
    });
}

/// Calls `put(key, value)` on `target` and returns its answer.
#[ic_cdk::update]
async fn call_put(target: Principal, key: u64, value: String) -> Result<u64, String> {
    let response = Call::unbounded_wait(target, "put")
        .with_args(&(key, value))
        .await
        .map_err(describe)?;
    response.candid::<u64>().map_err(|e| e.to_string())
}

/// Calls `method` on `target` without arguments: `Ok(reply bytes)` or `Err((reject code, message))`.
#[ic_cdk::update]
async fn call_raw(target: Principal, method: String) -> Result<Vec<u8>, (u32, String)> {
    COUNTER.set(COUNTER.get() + 1);
    match Call::unbounded_wait(target, &method).await {
        Ok(response) => Ok(response.into_bytes()),
        Err(CallFailed::CallRejected(r)) => {
            Err((r.raw_reject_code(), r.reject_message().to_string()))
        }
        Err(other) => Err((0, other.to_string())),
    }
}

/// Calls `put` on `target`, then traps in the reply callback: the callee keeps its change, the
/// caller's callback changes are rolled back.
#[ic_cdk::update]
async fn call_then_trap(target: Principal, key: u64, value: String) {
    let _ = Call::unbounded_wait(target, "put")
        .with_args(&(key, value))
        .await;
    COUNTER.set(COUNTER.get() + 1_000);
    ic_cdk::trap("call_then_trap: trapping in the callback");
}

fn describe(e: CallFailed) -> String {
    match e {
        CallFailed::CallRejected(r) => format!("{}: {}", r.raw_reject_code(), r.reject_message()),
        other => other.to_string(),
    }
}

/// Traps.
#[ic_cdk::update]
fn boom() {
    ic_cdk::trap("boom");
}

/// Rejects explicitly.
#[ic_cdk::update(manual_reply = true)]
fn reject_me() {
    ic_cdk::api::msg_reject("rejected on purpose");
}

/// Replies twice: the second `msg_reply` traps, so the counter bump must be rolled back.
#[ic_cdk::update(manual_reply = true)]
fn reply_twice() {
    COUNTER.set(COUNTER.get() + 1);
    let empty = candid::encode_args(()).unwrap_or_default();
    ic_cdk::api::msg_reply(&empty);
    ic_cdk::api::msg_reply(&empty);
}

/// Grows the heap blob by `mib` MiB (every byte written); returns the heap size in bytes.
#[ic_cdk::update]
fn grow_heap(mib: u32) -> u64 {
    HEAP_BLOB.with(|b| {
        let mut b = b.borrow_mut();
        let new_len = b.len() + mib as usize * 1024 * 1024;
        b.resize(new_len, 0xAB);
    });
    heap_bytes()
}

/// Sum of a sample of the heap blob (touches it without changing it).
#[ic_cdk::query]
fn heap_checksum() -> u64 {
    HEAP_BLOB.with(|b| b.borrow().iter().step_by(4096).map(|x| *x as u64).sum())
}

/// 32 random bytes from the management canister.
#[ic_cdk::update]
async fn rand() -> Result<Vec<u8>, String> {
    let response = Call::unbounded_wait(Principal::management_canister(), "raw_rand")
        .await
        .map_err(describe)?;
    response.candid::<Vec<u8>>().map_err(|e| e.to_string())
}

#[ic_cdk::query]
fn whoami() -> Principal {
    ic_cdk::api::msg_caller()
}

#[ic_cdk::query]
fn now() -> u64 {
    ic_cdk::api::time()
}

#[ic_cdk::query]
fn certificate() -> Option<Vec<u8>> {
    ic_cdk::api::data_certificate()
}

#[ic_cdk::query]
fn in_replicated_execution() -> bool {
    ic_cdk::api::in_replicated_execution()
}

/// Refused by `canister_inspect_message`.
#[ic_cdk::update]
fn forbidden() {}

#[ic_cdk::inspect_message]
fn inspect_message() {
    if ic_cdk::api::msg_method_name() != "forbidden" {
        ic_cdk::api::accept_message();
    }
}

ic_cdk::export_candid!();
