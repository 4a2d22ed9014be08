//! Canister execution on wasmtime (placeholder: being written).
