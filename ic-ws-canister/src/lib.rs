//! ic-ws-canister (being written).
