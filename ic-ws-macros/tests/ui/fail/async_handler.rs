use ic_ws_canister::{on_message, ClientId};

#[on_message]
async fn message(_client: ClientId, _text: String) {}

// The item is still emitted: using it adds no second error.
fn main() {
    let _ = message(1, String::new());
}
