//! Embedded single-subnet Internet Computer replica for tests, benchmarks and demos.
//!
//! - [`engine`] executes canister wasm on wasmtime (see `ENGINE.md`).
//! - [`Replica`] is the thread-safe facade: canisters, calls, time, certified state.
//! - [`certification`] keeps the certified state tree and signs it with a BLS root key.
//! - [`auth`] authenticates request envelopes as the IC does (signatures, delegations, expiry).
//! - [`http`] serves the real IC HTTP interface, so unmodified agents (ic-agent,
//!   @icp-sdk/core) talk to it with full verification on.
//!
//! ```no_run
//! use ic_ws_replica::{Replica, ReplicaConfig};
//! let replica = Replica::new(ReplicaConfig::with_seed("example"));
//! let wasm = std::fs::read("my_canister.wasm")?;
//! let canister = replica.create_and_install(&wasm, &candid::encode_args(())?)?;
//! let server = replica.serve("127.0.0.1:0".parse()?)?;
//! println!("agent URL {} canister {canister}", server.url());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod certification;
pub mod engine;
mod error;
pub mod http;
mod keys;
mod management;
mod replica;
pub mod wasm_build;

pub use engine::{Clock, EngineConfig, InstallMode, MethodKind, Reject, RejectCode};
pub use error::{ReplicaError, Result};
pub use http::ServerHandle;
pub use keys::{BLS_DER_PREFIX, ED25519_DER_PREFIX};
pub use replica::{Replica, ReplicaConfig};
