use ic_ws_canister::{on_message, ClientId};

#[on_message(handle = OUT)]
fn message(_client: ClientId, _text: String) {}

fn main() {}
