//! ic-ws-replica-test-canister (being written).
