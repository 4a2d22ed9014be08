//! ic-ws-e2e (being written).

pub mod chat;
pub mod process;
pub mod raw;
pub mod tamper;
