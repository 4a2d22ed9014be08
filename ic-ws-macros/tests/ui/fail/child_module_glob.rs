use ic_ws_canister::{on_message, ClientId};

#[on_message]
fn message(_client: ClientId, _text: String) {}

// A handler in another module than `#[on_message]` names that module (`on_message_in`), also
// when the module glob-imports it: otherwise the marker's name is ambiguous between the glob
// and the handler's own stand-in for a missing `#[on_message]`.
mod child {
    use super::*;
    use ic_ws_canister::on_open;

    #[on_open]
    fn open(_client: ClientId) {}
}

fn main() {}
