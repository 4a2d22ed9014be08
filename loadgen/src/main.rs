//! ic-ws-loadgen (being written).
fn main() {}
