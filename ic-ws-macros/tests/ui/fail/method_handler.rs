use ic_ws_canister::{on_message, ClientId};

struct Chat;

impl Chat {
    #[on_message]
    fn message(&self, _client: ClientId, _text: String) {}
}

fn main() {}
