use ic_ws_canister::{on_close, on_message, on_open, ClientId};

#[on_message(outbound = String, colour = "blue", outbound = u8)]
fn message(_client: ClientId, _text: String) {}

#[on_open(outbound = String)]
fn open(_client: ClientId) {}

#[on_close(crate = "not a path")]
fn close(_client: ClientId) {}

fn main() {}
