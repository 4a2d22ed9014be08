//! The crate's error type: what the facade, the HTTP server and the CLI can fail with.
//!
//! Canister-level failures (traps, rejects, missing methods) are not errors of the replica: they
//! are [`Reject`](crate::Reject)s, returned as values exactly as the IC returns them.

use std::path::PathBuf;

/// Everything the replica itself can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// A canister call or installation was rejected (trap, explicit reject, missing method...).
    #[error("{0}")]
    Rejected(#[from] crate::engine::Reject),
    /// No canister with this id exists on the replica.
    #[error("canister {0} not found")]
    CanisterNotFound(candid::Principal),
    /// The server could not bind or run.
    #[error("HTTP server error: {0}")]
    Server(#[from] std::io::Error),
    /// A file (wasm module) could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A command-line or configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The replica's internal worker thread is gone (a previous operation panicked).
    #[error("replica worker failed: {0}")]
    Internal(String),
}

/// Result alias used throughout the crate.
pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;
