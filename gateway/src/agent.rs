//! [`CanisterApi`] over the IC's HTTP interface with ic-agent (feature `server`, on by
//! default): the real canister, on dfx, PocketIC, icp-cli, the embedded replica or mainnet.
//! Agent errors are classified here into [`CallError`]s.

use crate::canister::{CallError, CanisterApi};
use candid::Principal;
use ic_agent::agent::{RejectCode, RejectResponse};
use ic_agent::{Agent, AgentError};
use ic_ws_protocol::types::{
    CloseBatch, CloseResult, MessageBatch, MessageResult, OpenBatch, OpenResult, PollRequest,
    PollResult,
};

/// [`CanisterApi`] over the real IC HTTP interface with ic-agent.
pub struct AgentCanister {
    agent: Agent,
}

impl AgentCanister {
    /// Wraps an agent (built with the gateway's identity; root key already set).
    pub fn new(agent: Agent) -> Self {
        AgentCanister { agent }
    }

    async fn update<A, R>(&self, canister: Principal, method: &str, arg: &A) -> Result<R, CallError>
    where
        A: candid::CandidType,
        R: candid::CandidType + for<'de> serde::Deserialize<'de>,
    {
        let bytes = ic_ws_protocol::encode(arg)
            .map_err(|e| CallError::Permanent(format!("cannot encode {method} argument: {e}")))?;
        let reply = self
            .agent
            .update(&canister, method)
            .with_arg(bytes)
            .call_and_wait()
            .await
            .map_err(classify)?;
        decode_reply(method, &reply)
    }
}

fn decode_reply<R>(method: &str, reply: &[u8]) -> Result<R, CallError>
where
    R: candid::CandidType + for<'de> serde::Deserialize<'de>,
{
    ic_ws_protocol::decode(reply)
        .map_err(|e| CallError::Permanent(format!("{method} reply does not decode: {e}")))
}

impl CanisterApi for AgentCanister {
    async fn ws_open(
        &self,
        canister: Principal,
        batch: &OpenBatch,
    ) -> Result<Vec<OpenResult>, CallError> {
        self.update(canister, "ws_open", batch).await
    }

    async fn ws_message(
        &self,
        canister: Principal,
        batch: &MessageBatch,
    ) -> Result<Vec<MessageResult>, CallError> {
        self.update(canister, "ws_message", batch).await
    }

    async fn ws_close(
        &self,
        canister: Principal,
        batch: &CloseBatch,
    ) -> Result<Vec<CloseResult>, CallError> {
        self.update(canister, "ws_close", batch).await
    }

    async fn ws_poll(
        &self,
        canister: Principal,
        request: PollRequest,
    ) -> Result<PollResult, CallError> {
        let bytes = ic_ws_protocol::encode(&request)
            .map_err(|e| CallError::Permanent(format!("cannot encode ws_poll argument: {e}")))?;
        let reply = self
            .agent
            .query(&canister, "ws_poll")
            .with_arg(bytes)
            .call()
            .await
            .map_err(classify)?;
        decode_reply("ws_poll", &reply)
    }
}

/// IC error codes of a canister failure that depends on the call's content (so isolating the
/// entry that causes it is worthwhile): trapped, called trap, contract violation, did not
/// reply, out of memory, instruction limit.
const ENTRY_FAILURE_CODES: [&str; 6] = ["IC0502", "IC0503", "IC0504", "IC0506", "IC0507", "IC0522"];

fn classify_reject(reject: &RejectResponse) -> CallError {
    let text = format!(
        "{:?} {}: {}",
        reject.reject_code,
        reject.error_code.as_deref().unwrap_or("-"),
        reject.reject_message
    );
    match reject.reject_code {
        RejectCode::SysTransient => CallError::Transient(text),
        RejectCode::CanisterError => match reject.error_code.as_deref() {
            None => CallError::Trapped(text),
            Some(code) if ENTRY_FAILURE_CODES.contains(&code) => CallError::Trapped(text),
            // Stopped, stopping, out of cycles...: may recover.
            Some("IC0508" | "IC0509" | "IC0207") => CallError::Transient(text),
            Some(_) => CallError::Permanent(text),
        },
        RejectCode::SysFatal | RejectCode::DestinationInvalid | RejectCode::CanisterReject => {
            CallError::Permanent(text)
        }
    }
}

/// Maps an agent error to what the gateway can do about it.
pub fn classify(error: AgentError) -> CallError {
    match &error {
        AgentError::CertifiedReject { reject, .. }
        | AgentError::UncertifiedReject { reject, .. } => classify_reject(reject),
        AgentError::HttpError(payload)
            if (400..500).contains(&payload.status) && payload.status != 429 =>
        {
            CallError::Permanent(error.to_string())
        }
        AgentError::InvalidReplicaUrl(_) | AgentError::CandidError(_) => {
            CallError::Permanent(error.to_string())
        }
        // Timeouts, transport errors, 5xx/429, certificate hiccups: retrying is safe.
        _ => CallError::Transient(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(code: RejectCode, error_code: Option<&str>) -> RejectResponse {
        RejectResponse {
            reject_code: code,
            reject_message: "boom".into(),
            error_code: error_code.map(str::to_string),
        }
    }

    #[test]
    fn rejects_are_classified_by_what_the_gateway_can_do() {
        assert!(matches!(
            classify_reject(&reject(RejectCode::CanisterError, Some("IC0503"))),
            CallError::Trapped(_)
        ));
        assert!(matches!(
            classify_reject(&reject(RejectCode::CanisterError, None)),
            CallError::Trapped(_)
        ));
        assert!(matches!(
            classify_reject(&reject(RejectCode::CanisterError, Some("IC0508"))),
            CallError::Transient(_)
        ));
        assert!(matches!(
            classify_reject(&reject(RejectCode::SysTransient, None)),
            CallError::Transient(_)
        ));
        assert!(matches!(
            classify_reject(&reject(RejectCode::DestinationInvalid, Some("IC0301"))),
            CallError::Permanent(_)
        ));
        assert!(matches!(
            classify(AgentError::TimeoutWaitingForResponse()),
            CallError::Transient(_)
        ));
    }
}
