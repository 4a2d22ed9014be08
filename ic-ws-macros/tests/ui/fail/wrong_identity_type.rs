use candid::Principal;
use ic_ws_canister::{on_message, on_open, ClientId};

#[on_message]
fn message(_client: ClientId, _text: String) {}

// The third parameter must be the `ClientIdentity`.
#[on_open]
fn open(_client: ClientId, _name: String, _who: Option<Principal>) {}

fn main() {}
