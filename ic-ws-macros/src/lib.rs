//! ic-ws-macros (being written).
