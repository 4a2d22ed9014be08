//! A handler in a child module that glob-imports its parent names the parent with
//! `on_message_in` (see ui/fail/child_module_glob.rs for what happens without it).
use ic_ws_canister::{on_message, ClientId};

#[on_message]
fn message(_client: ClientId, _text: String) {}

mod child {
    use super::*;
    use ic_ws_canister::{on_close, on_open, CloseReason};

    #[on_open(on_message_in = super)]
    fn open(_client: ClientId) {}

    #[on_close(on_message_in = super)]
    fn close(_client: ClientId, _reason: CloseReason) {}
}

fn main() {
    let _ = __ic_ws_on_message::App::HANDLERS;
}
