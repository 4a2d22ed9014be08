//! ic-ws-example-chat (being written).
