//! ic-ws-client (being written).
