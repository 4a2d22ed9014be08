//! The gateway's error type. Peer input never becomes one of these: a client's bad frame ends
//! that client's session with a close code; these are for the operator (configuration, files,
//! sockets, the IC agent).

use std::path::PathBuf;

/// Everything that can stop the gateway from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A configuration value is invalid or inconsistent.
    #[error("configuration error: {0}")]
    Config(String),
    /// The identity key file could not be read, parsed or created.
    #[error("identity file {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// Which socket: the client port or the admin port.
        what: &'static str,
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The IC agent could not be built or the root key could not be fetched.
    #[error("IC agent: {0}")]
    Agent(String),
    /// Any other I/O failure (ready file, ...).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias.
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;
