use candid::CandidType;
use ic_ws_canister::{on_message, ClientId};

#[derive(CandidType)]
enum Out {
    Echo(String),
}

// The handle sends `Out` only: sending the inbound `String` by mistake does not compile.
#[on_message(outbound = Out, handle = OUT)]
fn message(client: ClientId, text: String) {
    OUT.send(client, &text).ok();
}

fn main() {}
