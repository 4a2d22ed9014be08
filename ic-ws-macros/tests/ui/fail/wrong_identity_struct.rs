use ic_ws_canister::{on_message, on_open, ClientId};

/// Not the runtime's `ClientIdentity`.
pub struct ClientIdentity;

#[on_message]
fn message(_client: ClientId, _text: String) {}

#[on_open]
fn open(_client: ClientId, _identity: ClientIdentity) {}

fn main() {}
