// `#[on_open]` taking only the verified identity (no open arguments), by its full path.
use ic_ws_canister::{on_message, on_open, ClientId};

#[on_message]
fn message(_client: ClientId, _text: String) {}

#[on_open]
fn open(_client: ClientId, identity: ic_ws_canister::ClientIdentity) {
    let _ = (identity.principal, identity.expires_ns);
}

ic_cdk::export_candid!();

fn main() {
    // No open arguments: the identity is not an argument type.
    assert!(!__export_service().contains("ws_open_args_type"));
}
