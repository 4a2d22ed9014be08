// `handle = OUT`: a typed send / publish for the declared outbound type.
use candid::CandidType;
use ic_ws_canister::{on_message, ClientId};

#[derive(CandidType)]
enum Out {
    Echo(String),
}

#[on_message(outbound = Out, handle = OUT)]
fn message(client: ClientId, text: String) {
    OUT.send(client, &Out::Echo(text.clone())).ok();
    OUT.publish("echoes", &Out::Echo(text)).ok();
}

fn main() {}
