//! The smallest app: only `#[on_message]`, unit return, no outbound type. Open and close use
//! the runtime's defaults.
use ic_ws_canister::{on_message, ClientId};

#[on_message]
fn message(_client: ClientId, _text: String) {}

ic_cdk::export_candid!();

fn main() {
    let did = __export_service();
    assert!(did.contains("ws_app_types : () -> (opt text) query;"), "{did}");
    assert!(!did.contains("ws_open_args_type"), "{did}");
}
