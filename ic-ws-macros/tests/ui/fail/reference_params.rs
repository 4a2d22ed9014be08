use ic_ws_canister::{on_message, ClientId};

#[on_message]
fn message(_client: &ClientId, _text: &str) {}

fn main() {}
