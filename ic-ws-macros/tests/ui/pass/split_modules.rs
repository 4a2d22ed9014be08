//! Handlers spread over modules: `on_message_in` names the module of `#[on_message]`. Types
//! are written as paths that resolve from the crate root, where `export_candid!()` is.
pub mod types {
    use candid::{CandidType, Deserialize};

    #[derive(CandidType, Deserialize)]
    pub struct Hello {
        pub name: String,
    }

    #[derive(CandidType, Deserialize)]
    pub enum Event {
        Greeted(String),
    }
}

pub mod ws {
    use ic_ws_canister::ClientId;

    #[ic_ws_canister::on_message(outbound = crate::types::Event)]
    fn message(_client: ClientId, _hello: crate::types::Hello) {}
}

mod lifecycle {
    use ic_ws_canister::{on_close, on_open, ClientId, CloseReason};

    #[on_open(on_message_in = crate::ws)]
    fn open(_client: ClientId, _hello: crate::types::Hello) {}

    #[on_close(on_message_in = crate::ws)]
    fn close(_client: ClientId, _reason: CloseReason) {}
}

ic_cdk::export_candid!();

fn main() {
    let did = __export_service();
    assert!(did.contains("ws_open_args_type : () -> (opt Hello) query;"), "{did}");
    assert!(did.contains("(opt Hello, opt Event)"), "{did}");
}
