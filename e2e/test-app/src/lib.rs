//! Test canister of the ic-ws runtime: the attributes generate the ws endpoints; the `app_*`
//! methods let tests and the benchmark reach the runtime's app-facing API (send, publish,
//! subscribe, close, configure, client info, the app's own certified data and stable
//! structures beside the runtime's).
//!
//! Not an example to copy: its methods are open to any caller, for tests.

use candid::{CandidType, Deserialize};
use ic_certification::{AsHashTree, RbTree};
use ic_stable_structures::memory_manager::MemoryId;
use ic_stable_structures::StableBTreeMap;
use ic_ws_canister::{
    certification, memory, on_close, on_message, on_open, ClientId, ClientInfo, CloseReason,
    WsConfig,
};
use std::cell::RefCell;

/// What clients send.
#[derive(CandidType, Deserialize, Clone, Debug)]
pub enum Inbound {
    /// Answered with `Outbound::Echo`.
    Echo(String),
    /// Subscribes the sender to a topic.
    Subscribe(String),
    /// Asks the app to close the sender's session.
    CloseMe,
    /// Rejected by the handler.
    Fail,
    /// Does nothing (measures the runtime's cost of an inbound message).
    Noop,
    /// Traps (panics): the IC rolls the whole call back (trap isolation tests).
    Trap,
    /// Burns about this many instructions (instruction budget tests).
    Burn(u64),
    /// The app says it will send messages in this many ms
    /// (`ic_ws_canister::expect_messages_at`), then answers `Outbound::Echo("expect")`.
    ExpectIn(u64),
}

/// What the app sends.
#[derive(CandidType, Deserialize, Clone, Debug)]
pub enum Outbound {
    /// Reply to `Inbound::Echo`.
    Echo(String),
    /// Text sent by `app_send`.
    Text(String),
    /// Bulk bytes (benchmarks, limits).
    Bytes(serde_bytes::ByteBuf),
}

type Mem = memory::Memory;

thread_local! {
    /// The app's own stable structures, in memory ids outside the runtime's range.
    static OPENS: RefCell<StableBTreeMap<u64, String, Mem>> =
        RefCell::new(StableBTreeMap::init(memory::get(MemoryId::new(0))));
    static CLOSES: RefCell<StableBTreeMap<u64, String, Mem>> =
        RefCell::new(StableBTreeMap::init(memory::get(MemoryId::new(1))));
    static VALUES: RefCell<StableBTreeMap<String, String, Mem>> =
        RefCell::new(StableBTreeMap::init(memory::get(MemoryId::new(2))));
    /// The app's own certified map (heap, rebuilt from VALUES after upgrade).
    static CERTIFIED: RefCell<RbTree<Vec<u8>, Vec<u8>>> = const { RefCell::new(RbTree::new()) };
}

thread_local! {
    /// Issue 10: the identity each `on_open` was handed (heap: tests read it before upgrades;
    /// the runtime's own record survives them).
    static OPEN_IDENTITIES: RefCell<Vec<(u64, Option<candid::Principal>)>> = const { RefCell::new(Vec::new()) };
}

#[on_open]
fn open(
    client: ClientId,
    args: String,
    identity: ic_ws_canister::ClientIdentity,
) -> Result<(), String> {
    if args == "reject" {
        return Err("rejected by the test app".into());
    }
    OPEN_IDENTITIES.with(|o| o.borrow_mut().push((client, identity.principal)));
    OPENS.with(|o| o.borrow_mut().insert(client, args));
    Ok(())
}

/// Issue 10: the principal each `on_open` saw, in order.
#[ic_cdk::query]
fn app_open_identities() -> Vec<(u64, Option<candid::Principal>)> {
    OPEN_IDENTITIES.with(|o| o.borrow().clone())
}

/// Issue 10: the open sessions of a principal.
#[ic_cdk::query]
fn app_clients_of(p: candid::Principal) -> Vec<u64> {
    ic_ws_canister::clients_of(&p)
}

// `post_upgrade = false`: this app writes its own `#[post_upgrade]` (below), which can skip
// the runtime's rebuild to test what a canister that forgets it does.
#[on_message(outbound = Outbound, gateway_filter = registered_gateway, post_upgrade = false)]
fn message(client: ClientId, msg: Inbound) -> Result<(), String> {
    match msg {
        Inbound::Echo(text) => ic_ws_canister::send(client, &Outbound::Echo(text))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Inbound::Subscribe(topic) => {
            ic_ws_canister::subscribe(client, &topic).map_err(|e| e.to_string())
        }
        Inbound::CloseMe => {
            ic_ws_canister::close(client, 4000, "asked to");
            Ok(())
        }
        Inbound::Fail => Err("fail requested".into()),
        Inbound::Noop => Ok(()),
        Inbound::Trap => panic!("trap requested by client {client}"),
        Inbound::Burn(n) => {
            burn(n);
            Ok(())
        }
        Inbound::ExpectIn(ms) => {
            let at = ic_ws_canister::time_ns().saturating_add(ms.saturating_mul(1_000_000));
            ic_ws_canister::expect_messages_at(at);
            ic_ws_canister::send(client, &Outbound::Echo("expect".into()))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

/// Spends about `n` instructions (a few per iteration; measured with the call's counter).
fn burn(n: u64) {
    let start = ic_cdk::api::instruction_counter();
    let mut x = 0u64;
    while ic_cdk::api::instruction_counter().saturating_sub(start) < n {
        for i in 0..1000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    std::hint::black_box(x);
}

thread_local! {
    /// Gateways registered with `app_register_gateway` (heap: a test registry).
    static REGISTERED: RefCell<std::collections::BTreeSet<candid::Principal>> =
        const { RefCell::new(std::collections::BTreeSet::new()) };
    /// Topic that `on_close` announces every close to (like the chat's `Left`), if any.
    static CLOSE_NOTICE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The gateway filter (`GatewayPolicy::Callback`): registered principals only.
fn registered_gateway(p: &candid::Principal) -> bool {
    REGISTERED.with(|r| r.borrow().contains(p))
}

/// Registers a principal as a gateway (for `GatewayPolicy::Callback`).
#[ic_cdk::update]
fn app_register_gateway(p: candid::Principal) {
    REGISTERED.with(|r| r.borrow_mut().insert(p));
}

/// Makes `on_close` publish a notice to `topic` (`None`: no notices).
#[ic_cdk::update]
fn app_set_close_notice(topic: Option<String>) {
    CLOSE_NOTICE.with(|t| *t.borrow_mut() = topic);
}

/// The runtime's canister-wide usage.
#[ic_cdk::query]
fn app_usage() -> ic_ws_canister::Usage {
    ic_ws_canister::usage()
}

#[on_close]
fn closed(client: ClientId, reason: CloseReason) {
    if let Some(topic) = CLOSE_NOTICE.with(|t| t.borrow().clone()) {
        let _ = ic_ws_canister::publish(&topic, &Outbound::Echo(format!("{client} left")));
    }
    CLOSES.with(|c| {
        let mut c = c.borrow_mut();
        // Exactly once: a second report would be a runtime bug the tests must see.
        let text = match c.get(&client) {
            Some(prev) => format!("{prev} | AGAIN {reason:?}"),
            None => format!("{reason:?}"),
        };
        c.insert(client, text);
    });
}

#[ic_cdk::init]
fn init() {
    // 64 KiB buckets (instead of 8 MiB) so that the benchmark sees stable-memory growth at
    // a fine grain; only the allocation unit changes, not the data structures.
    memory::set_bucket_size_pages(1).expect("init runs before any stable memory use");
}

/// Queue limits large enough for the memory benchmark (20 000 messages, 64 MiB per client).
#[ic_cdk::update]
fn app_configure_big_queues() -> Result<(), String> {
    ic_ws_canister::configure(WsConfig {
        max_queued_messages: 20_000,
        max_queued_bytes: 64 * 1024 * 1024,
        ..WsConfig::default()
    })
    .map_err(|e| e.to_string())
}

/// Upgrade argument `opt true`: skip `ic_ws_canister::post_upgrade()` (as an app that forgot
/// it; tests only).
#[ic_cdk::post_upgrade]
fn post_upgrade(skip_ws_rebuild: Option<bool>) {
    if skip_ws_rebuild != Some(true) {
        ic_ws_canister::post_upgrade();
    }
    // Rebuild the app's heap tree from its stable map and register its root again.
    let pairs: Vec<(String, String)> =
        VALUES.with(|v| v.borrow().iter().map(|e| e.into_pair()).collect());
    CERTIFIED.with(|t| {
        let mut t = t.borrow_mut();
        for (k, v) in pairs {
            t.insert(k.into_bytes(), v.into_bytes());
        }
        if !t.is_empty() {
            certification::set_app_root_hash(Some(t.root_hash()));
        }
    });
}

/// Benchmark bulk (runtime test hook): `sessions` sessions on `gateway` that no client holds,
/// each with `messages` retained messages of `payload_bytes` bytes. Returns the first id.
#[ic_cdk::update]
fn app_test_fill(
    gateway: candid::Principal,
    sessions: u32,
    messages: u32,
    payload_bytes: u32,
) -> u64 {
    ic_ws_canister::__private::test_fill(gateway, sessions, messages, payload_bytes)
}

/// The configuration's worst-case rebuild cost (`WsConfig::worst_case_rebuild_instructions`).
#[ic_cdk::query]
fn app_worst_case_rebuild() -> u64 {
    ic_ws_canister::config().worst_case_rebuild_instructions()
}

/// Sends `Outbound::Text(text)` to a client.
#[ic_cdk::update]
fn app_send(client: ClientId, text: String) -> Result<u64, String> {
    ic_ws_canister::send(client, &Outbound::Text(text)).map_err(|e| e.to_string())
}

/// Sends `count` messages of `size` bytes; returns the last sequence number.
#[ic_cdk::update]
fn app_send_bytes(client: ClientId, size: u32, count: u32) -> Result<u64, String> {
    let mut last = 0;
    for _ in 0..count {
        last = ic_ws_canister::send(
            client,
            &Outbound::Bytes(serde_bytes::ByteBuf::from(vec![7; size as usize])),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(last)
}

/// Subscribes a client to a topic.
#[ic_cdk::update]
fn app_subscribe(client: ClientId, topic: String) -> Result<(), String> {
    ic_ws_canister::subscribe(client, &topic).map_err(|e| e.to_string())
}

/// Publishes `size` bytes to a topic; returns (delivered, skipped, closed) counts.
#[ic_cdk::update]
fn app_publish(topic: String, size: u32) -> Result<(u64, u64, u64), String> {
    let r = ic_ws_canister::publish(
        &topic,
        &Outbound::Bytes(serde_bytes::ByteBuf::from(vec![9; size as usize])),
    )
    .map_err(|e| e.to_string())?;
    Ok((
        r.delivered.len() as u64,
        r.skipped.len() as u64,
        r.closed.len() as u64,
    ))
}

/// [`app_publish`], then announces the next publish in `next_in_ms`
/// (`ic_ws_canister::expect_messages_at`), as a timer-driven app would (benchmarks of the
/// gateway's use of the hint).
#[ic_cdk::update]
fn app_publish_expect(
    topic: String,
    size: u32,
    next_in_ms: u64,
) -> Result<(u64, u64, u64), String> {
    let r = app_publish(topic, size)?;
    let at = ic_ws_canister::time_ns().saturating_add(next_in_ms.saturating_mul(1_000_000));
    ic_ws_canister::expect_messages_at(at);
    Ok(r)
}

/// Closes a session.
#[ic_cdk::update]
fn app_close(client: ClientId, code: u16, reason: String) -> bool {
    ic_ws_canister::close(client, code, &reason)
}

/// Sets the runtime's limits.
#[ic_cdk::update]
fn app_configure(config: WsConfig) -> Result<(), String> {
    ic_ws_canister::configure(config).map_err(|e| e.to_string())
}

/// Runs housekeeping (expiry) now.
#[ic_cdk::update]
fn app_housekeeping() {
    ic_ws_canister::housekeeping();
}

/// A session's info.
#[ic_cdk::query]
fn app_client_info(client: ClientId) -> Option<ClientInfo> {
    ic_ws_canister::client_info(client)
}

/// Every `on_open` the app saw: (client, args).
#[ic_cdk::query]
fn app_opens() -> Vec<(u64, String)> {
    OPENS.with(|o| o.borrow().iter().map(|e| e.into_pair()).collect())
}

/// Every `on_close` the app saw: (client, reason).
#[ic_cdk::query]
fn app_closes() -> Vec<(u64, String)> {
    CLOSES.with(|c| c.borrow().iter().map(|e| e.into_pair()).collect())
}

/// Stores a value in the app's own certified map.
#[ic_cdk::update]
fn app_set_value(key: String, value: String) {
    VALUES.with(|v| v.borrow_mut().insert(key.clone(), value.clone()));
    CERTIFIED.with(|t| {
        let mut t = t.borrow_mut();
        t.insert(key.into_bytes(), value.into_bytes());
        certification::set_app_root_hash(Some(t.root_hash()));
    });
}

/// A certified read of the app's own data: (value, data certificate, CBOR tree).
#[ic_cdk::query]
fn app_get_value(key: String) -> (Option<String>, Vec<u8>, Vec<u8>) {
    let value = VALUES.with(|v| v.borrow().get(&key));
    let tree = CERTIFIED.with(|t| certification::app_witness(t.borrow().witness(key.as_bytes())));
    (
        value,
        certification::data_certificate().unwrap_or_default(),
        certification::encode_tree(&tree),
    )
}

/// Stable memory size in bytes.
#[ic_cdk::query]
fn app_stable_bytes() -> u64 {
    ic_cdk::stable::stable_size() * 65536
}

ic_cdk::export_candid!();
