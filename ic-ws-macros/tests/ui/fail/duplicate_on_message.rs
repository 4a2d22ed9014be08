use ic_ws_canister::{on_message, ClientId};

mod a {
    #[ic_ws_canister::on_message]
    fn message(_client: super::ClientId, _text: String) {}
}

#[on_message]
fn message(_client: ClientId, _count: u64) {}

fn main() {}
