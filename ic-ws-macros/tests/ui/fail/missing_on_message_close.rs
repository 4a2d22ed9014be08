use ic_ws_canister::{on_close, on_open, ClientId, CloseReason};

// Both other handlers, no `#[on_message]`: one clear error for each.
#[on_open]
fn open(_client: ClientId) {}

#[on_close]
fn close(_client: ClientId, _reason: CloseReason) {}

fn main() {}
