//! The canister-facing side: [`CanisterApi`] (the four generated endpoints). Its ic-agent
//! implementation is `crate::agent::AgentCanister` (feature `server`); the relay and the
//! poller are generic over the trait, so tests drive them with an in-memory canister.
//!
//! Errors are classified once, here, into what the caller can do about them ([`CallError`]):
//! retry the same call (transient), isolate the entry that traps (trapped), or give up.

use candid::Principal;
use ic_ws_protocol::types::{
    CloseBatch, CloseResult, MessageBatch, MessageResult, OpenBatch, OpenResult, PollRequest,
    PollResult,
};
use std::future::Future;
use std::sync::Arc;

/// Why a call failed, by what the gateway should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The network or the IC had a temporary problem: retrying the same call is safe (duplicate
    /// client messages are no-ops in the canister).
    #[error("transient: {0}")]
    Transient(String),
    /// The canister trapped while executing the call (for example an app handler panicked): the
    /// whole call was rolled back. The culprit is found by bisection (`relay::isolate`).
    #[error("canister trapped: {0}")]
    Trapped(String),
    /// Retrying will not help (unknown canister, malformed reply, ...).
    #[error("{0}")]
    Permanent(String),
}

/// The generated ic-ws endpoints of one canister (docs/protocol.md, "Generated canister
/// interface"), called with the gateway's identity.
pub trait CanisterApi: Send + Sync + 'static {
    /// `ws_open` (update).
    fn ws_open(
        &self,
        canister: Principal,
        batch: &OpenBatch,
    ) -> impl Future<Output = Result<Vec<OpenResult>, CallError>> + Send;
    /// `ws_message` (update).
    fn ws_message(
        &self,
        canister: Principal,
        batch: &MessageBatch,
    ) -> impl Future<Output = Result<Vec<MessageResult>, CallError>> + Send;
    /// `ws_close` (update).
    fn ws_close(
        &self,
        canister: Principal,
        batch: &CloseBatch,
    ) -> impl Future<Output = Result<Vec<CloseResult>, CallError>> + Send;
    /// `ws_poll` (query).
    fn ws_poll(
        &self,
        canister: Principal,
        request: PollRequest,
    ) -> impl Future<Output = Result<PollResult, CallError>> + Send;
}

impl<T: CanisterApi> CanisterApi for Arc<T> {
    fn ws_open(
        &self,
        canister: Principal,
        batch: &OpenBatch,
    ) -> impl Future<Output = Result<Vec<OpenResult>, CallError>> + Send {
        (**self).ws_open(canister, batch)
    }
    fn ws_message(
        &self,
        canister: Principal,
        batch: &MessageBatch,
    ) -> impl Future<Output = Result<Vec<MessageResult>, CallError>> + Send {
        (**self).ws_message(canister, batch)
    }
    fn ws_close(
        &self,
        canister: Principal,
        batch: &CloseBatch,
    ) -> impl Future<Output = Result<Vec<CloseResult>, CallError>> + Send {
        (**self).ws_close(canister, batch)
    }
    fn ws_poll(
        &self,
        canister: Principal,
        request: PollRequest,
    ) -> impl Future<Output = Result<PollResult, CallError>> + Send {
        (**self).ws_poll(canister, request)
    }
}
