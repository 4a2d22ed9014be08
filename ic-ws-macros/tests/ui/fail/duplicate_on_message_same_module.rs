// Two `#[on_message]` in one module: the first error names the
// one-`#[on_message]`-per-canister sentinel at both attributes (the duplicate marker names
// follow it).
use ic_ws_canister::{on_message, ClientId};

#[on_message]
fn message(_client: ClientId, _text: String) {}

#[on_message]
fn message_again(_client: ClientId, _count: u64) {}

fn main() {}
