use ic_ws_canister::{on_close, on_message, ClientId, CloseReason};

#[on_message]
fn message(_client: ClientId, _text: String) -> u32 {
    0
}

#[on_close]
fn close(_client: ClientId, _reason: CloseReason) -> Result<(), String> {
    Ok(())
}

fn main() {}
