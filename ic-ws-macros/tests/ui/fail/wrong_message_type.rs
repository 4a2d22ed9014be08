use ic_ws_canister::{on_message, ClientId};

/// Not candid: cannot be decoded from a client's payload.
struct Plain {
    _text: String,
}

#[on_message]
fn message(_client: ClientId, _msg: Plain) {}

fn main() {}
