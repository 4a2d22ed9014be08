//! ic-ws-e2e (being written).
