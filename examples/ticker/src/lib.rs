//! ic-ws-example-ticker (being written).
