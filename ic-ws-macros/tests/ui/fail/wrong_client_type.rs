use ic_ws_canister::{on_message, ClientId};

#[on_message]
fn message(_client: String, _text: String) {}

fn main() {
    let _: Option<ClientId> = None;
}
