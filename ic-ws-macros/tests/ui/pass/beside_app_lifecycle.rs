//! The generated endpoints live beside the app's own `#[init]`, post-upgrade code (called by
//! the generated `canister_post_upgrade`), queries, timers, stable structures (in the app's
//! memory ids) and certified data.
use ic_stable_structures::{memory_manager::MemoryId, StableBTreeMap};
use ic_ws_canister::{certification, memory, on_message, ClientId};
use std::cell::RefCell;
use std::time::Duration;

thread_local! {
    static COUNTS: RefCell<StableBTreeMap<u64, u64, memory::Memory>> =
        RefCell::new(StableBTreeMap::init(memory::get(MemoryId::new(0))));
}

fn start_timer() {
    ic_cdk_timers::set_timer_interval(Duration::from_secs(1), || async {});
}

#[ic_cdk::init]
fn init() {
    certification::set_app_root_hash(Some([7; 32]));
    start_timer();
}

fn upgraded() {
    start_timer();
}

#[ic_cdk::query]
fn count(client: ClientId) -> u64 {
    COUNTS.with(|c| c.borrow().get(&client).unwrap_or_default())
}

#[on_message(post_upgrade = upgraded)]
fn message(client: ClientId, _ping: ()) {
    COUNTS.with(|c| {
        let mut c = c.borrow_mut();
        let n = c.get(&client).unwrap_or_default();
        c.insert(client, n + 1);
    });
}

ic_cdk::export_candid!();

fn main() {
    let did = __export_service();
    assert!(did.contains("count : (nat64) -> (nat64) query;"), "{did}");
    assert!(did.contains("ws_message : (MessageBatch) -> (vec MessageResult);"), "{did}");
}
