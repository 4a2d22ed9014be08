//! A collaborative counter over ic-ws: every open page shows the same number and sees it
//! change live, each change certified by the Internet Computer and verified by the page.
//!
//! The ws part is the three annotated handlers: `#[on_open]`, `#[on_message]` and
//! `#[on_close]` generate the canister's `ws_open`, `ws_message`, `ws_close` and `ws_poll`
//! endpoints; a gateway (`ic-ws-gateway`) relays between browsers and these endpoints.
//! The counter itself lives in stable memory, so an upgrade keeps it (and the runtime keeps
//! the sessions).
//!
//! `counter.did` is this canister's candid interface, kept in sync by the test
//! `candid_interface_matches_counter_did` (`UPDATE_DID=1 cargo test` rewrites it) and
//! embedded in the wasm as the `candid:service` metadata that tools read.

use candid::{CandidType, Deserialize};
use ic_stable_structures::memory_manager::MemoryId;
use ic_stable_structures::Cell as StableCell;
use ic_ws_canister::{on_close, on_message, on_open, subscribe, ClientId, CloseReason};
use std::cell::RefCell;

/// The topic every session subscribes to: a change is published to all of them.
const TOPIC: &str = "counter";

/// The largest step of one `Add`.
pub const MAX_STEP: i64 = 1_000;

/// What a page sends.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CounterIn {
    /// Add this (negative: subtract), at most [`MAX_STEP`] either way.
    Add(i64),
    /// Back to zero.
    Reset,
}

/// What the canister sends.
#[derive(CandidType, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CounterOut {
    /// The counter's value: to a new session when it opens (`by` is none), then to everyone
    /// after each change (`by` is the session that made it).
    Value {
        /// The counter.
        value: i64,
        /// Who changed it (a session's client id).
        by: Option<ClientId>,
    },
}

thread_local! {
    // Memory ids 0..=238 are the app's; the ws runtime keeps its state in 239..=254.
    // The value's bits as a u64 (what the stable cell stores).
    static COUNTER: RefCell<StableCell<u64, ic_ws_canister::memory::Memory>> = RefCell::new(
        StableCell::init(ic_ws_canister::memory::get(MemoryId::new(0)), 0),
    );
}

fn value() -> i64 {
    COUNTER.with(|c| c.borrow().get().cast_signed())
}

/// A new session: subscribe it to changes and tell it the current value.
#[on_open]
fn open(client: ClientId) -> Result<(), String> {
    subscribe(client, TOPIC).map_err(|e| e.to_string())?;
    OUT.send(
        client,
        &CounterOut::Value {
            value: value(),
            by: None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// A message: change the counter and publish the new value to every session. `OUT` (the
/// `handle`) sends and publishes `CounterOut` only; an `Err` is answered to the sender as
/// `WsError::Rejected` and changes nothing.
#[on_message(outbound = CounterOut, handle = OUT)]
fn message(client: ClientId, message: CounterIn) -> Result<(), String> {
    let value = match message {
        CounterIn::Add(step) if step.abs() > MAX_STEP => {
            return Err(format!(
                "a step is at most {MAX_STEP} either way, not {step}"
            ))
        }
        CounterIn::Add(step) => value().saturating_add(step),
        CounterIn::Reset => 0,
    };
    COUNTER.with(|c| c.borrow_mut().set(value.cast_unsigned()));
    OUT.publish(
        TOPIC,
        &CounterOut::Value {
            value,
            by: Some(client),
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// A session ended (the runtime drops its subscriptions).
#[on_close]
fn close(client: ClientId, reason: CloseReason) {
    ic_cdk::println!("session {client} closed: {reason:?}");
}

/// The counter's value, for anyone (no session needed).
#[ic_cdk::query]
fn get() -> i64 {
    value()
}

// The interface (`counter.did`) as the wasm's `candid:service` metadata, where icp-cli, dfx
// and the dashboard look for it.
ic_ws_canister::candid_metadata!("counter.did");
ic_cdk::export_candid!();

#[cfg(test)]
mod tests;
