//! The ic-ws fuzz targets, as plain functions of the input bytes.
//!
//! Each target is one module with `run(&[u8])` (panics on a bug: a crash, or a broken
//! invariant checked with `assert!`) and `seeds()` (inputs built from the protocol's test
//! vectors, `ic-ws-protocol/test-vectors/vectors.json`). The libFuzzer harness in
//! `fuzz/libfuzzer` calls `run` under coverage guidance; `tests/corpus.rs` replays every file
//! of `fuzz/corpus/<target>/` and every seed through `run` in the ordinary `cargo test`.
//! FUZZING.md at the repository root says how to run, minimise and extend them.
//!
//! - [`frames`]: `ClientFrame`, `GatewayFrame` and `OutboundContent` decoding, with round trips;
//! - [`verify`]: a client's checks of a `Messages` frame (certificate, tree, contents);
//! - [`session`]: the gateway's session state machine fed arbitrary frame sequences;
//! - [`canister`]: the canister runtime's endpoints fed arbitrary (and validly signed)
//!   arguments, natively;
//! - [`canister_sig`]: canister signatures (Internet Identity's scheme): key parsing and
//!   verification;
//! - [`meter`]: the gateway's frame meter (what a client's raw bytes charge to the memory
//!   ledger), against tungstenite's own header parser.
#![warn(missing_docs)]

pub mod canister;
pub mod canister_sig;
pub mod frames;
pub mod input;
pub mod meter;
pub mod session;
pub mod verify;

/// Every target: its name (the corpus directory and the libFuzzer binary) and functions.
pub const TARGETS: [Target; 6] = [
    Target {
        name: "frames",
        run: frames::run,
        seeds: frames::seeds,
    },
    Target {
        name: "verify",
        run: verify::run,
        seeds: verify::seeds,
    },
    Target {
        name: "session",
        run: session::run,
        seeds: session::seeds,
    },
    Target {
        name: "canister",
        run: canister::run,
        seeds: canister::seeds,
    },
    Target {
        name: "meter",
        run: meter::run,
        seeds: meter::seeds,
    },
    Target {
        name: "canister_sig",
        run: canister_sig::run,
        seeds: canister_sig::seeds,
    },
];

/// One fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    /// Name of the corpus directory and of the libFuzzer binary.
    pub name: &'static str,
    /// Runs one input; panics on a bug.
    pub run: fn(&[u8]),
    /// Seed inputs built from the test vectors.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// The protocol's test vectors (`ic-ws-protocol/test-vectors/vectors.json`).
pub fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!(
        "../../ic-ws-protocol/test-vectors/vectors.json"
    ))
    .unwrap_or(serde_json::Value::Null)
}

/// A hex string of the vectors as bytes (empty if absent or malformed).
pub fn vector_bytes(value: &serde_json::Value) -> Vec<u8> {
    value
        .as_str()
        .and_then(|s| hex::decode(s).ok())
        .unwrap_or_default()
}
