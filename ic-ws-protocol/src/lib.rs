//! ic-ws-protocol (being written).
