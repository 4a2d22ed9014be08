use ic_ws_canister::{on_message, ClientId};

struct NotCandid;

#[on_message(outbound = NotCandid)]
fn message(_client: ClientId, _text: String) {}

fn main() {}
