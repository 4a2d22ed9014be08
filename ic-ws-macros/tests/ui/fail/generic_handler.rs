use ic_ws_canister::{on_message, ClientId};

#[on_message]
fn message<T: candid::CandidType>(_client: ClientId, _msg: T) {}

fn main() {}
