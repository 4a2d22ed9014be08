use ic_ws_canister::{on_close, on_message, ClientId};

#[on_message]
fn message(_client: ClientId, _text: String) {}

#[on_close]
fn close(_client: ClientId, _reason: String) {}

fn main() {}
