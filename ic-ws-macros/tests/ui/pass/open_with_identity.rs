// `#[on_open]` taking the verified identity after the open arguments.
use ic_ws_canister::{on_message, on_open, ClientId, ClientIdentity};

#[on_message]
fn message(_client: ClientId, _text: String) {}

#[on_open]
fn open(_client: ClientId, name: String, identity: ClientIdentity) -> Result<(), String> {
    match identity.principal {
        Some(_) => Ok(()),
        None if name == "guest" => Ok(()),
        None => Err("log in first".into()),
    }
}

fn main() {}
