//! ic-ws runtime (stub API for the macros; bodies being written).
#![allow(missing_docs)]

pub use ic_ws_protocol::{
    ClientId, CloseBatch, CloseReason, CloseResult, MessageBatch, MessageResult, OpenBatch,
    OpenResult, PollRequest, PollResult, WsError,
};

#[doc(hidden)]
pub mod __private {
    pub use ::candid;
    pub use ::ic_cdk;
    use super::*;
    use candid::CandidType;
    use serde::de::DeserializeOwned;

    #[derive(Clone, Copy)]
    pub struct Handlers {
        pub on_open: fn(ClientId, &[u8]) -> Result<(), String>,
        pub on_message: fn(ClientId, &[u8]) -> Result<(), WsError>,
        pub on_close: fn(ClientId, CloseReason),
    }
    pub fn ws_open(_h: &Handlers, batch: OpenBatch) -> Vec<OpenResult> {
        batch.opens.iter().map(|_| Err(WsError::InvalidArgument("stub".into()))).collect()
    }
    pub fn ws_message(_h: &Handlers, batch: MessageBatch) -> Vec<MessageResult> {
        batch.messages.iter().map(|_| MessageResult::Err(WsError::InvalidArgument("stub".into()))).collect()
    }
    pub fn ws_close(_h: &Handlers, batch: CloseBatch) -> Vec<CloseResult> {
        batch.clients.iter().map(|_| Err(WsError::InvalidArgument("stub".into()))).collect()
    }
    pub fn ws_poll(_req: PollRequest) -> PollResult {
        Err(WsError::InvalidArgument("stub".into()))
    }
    pub fn decode_payload<T: CandidType + DeserializeOwned>(bytes: &[u8]) -> Result<T, WsError> {
        ic_ws_protocol::decode(bytes).map_err(|e| WsError::DecodeError(e.to_string()))
    }
    pub fn default_on_open(_client: ClientId, _args: &[u8]) -> Result<(), String> { Ok(()) }
    pub fn default_on_close(_client: ClientId, _reason: CloseReason) {}
    pub fn post_upgrade() {}
}
