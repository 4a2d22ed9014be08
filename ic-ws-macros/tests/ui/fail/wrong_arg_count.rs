use ic_ws_canister::{on_close, on_message, on_open, ClientId, CloseReason};

#[on_message]
fn message(_client: ClientId) {}

#[on_open]
fn open(_client: ClientId, _name: String, _extra: u8, _more: u8) {}

#[on_close]
fn close() {}

fn main() {
    let _: fn(ClientId, String, CloseReason) = |_, _, _| {};
}
