//! ic-ws-gateway (being written).
