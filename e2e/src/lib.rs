//! ic-ws-e2e (being written).

pub mod canister_harness;
pub mod chat;
pub mod process;
pub mod raw;
pub mod tamper;
