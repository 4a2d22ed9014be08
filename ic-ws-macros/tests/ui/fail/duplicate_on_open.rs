use ic_ws_canister::{on_message, on_open, ClientId};

#[on_message]
fn message(_client: ClientId, _text: String) {}

#[on_open]
fn open(_client: ClientId) {}

#[on_open]
fn open_again(_client: ClientId) {}

fn main() {}
