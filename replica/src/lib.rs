//! Embedded single-subnet Internet Computer replica.
//!
//! `engine` executes canister wasm (owned by the engine work);
//! the facade, certification and HTTP interface are layered on top of it.

pub mod engine;
pub mod wasm_build;
