use ic_ws_canister::{on_open, ClientId};

#[on_open]
fn open(_client: ClientId) {}

fn main() {}
