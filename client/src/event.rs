//! What the client reports to the application.

use std::time::Duration;

use candid::CandidType;
use ic_ws_protocol::client::Claim;
use ic_ws_protocol::{ClientId, CloseReason, WsError};
use serde::de::DeserializeOwned;

use crate::ClientError;

/// A verified application message (certified by the canister, checked by the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<T> {
    /// Per-session outbound sequence number.
    pub seq: u64,
    /// Canister time when the message was queued (nanoseconds since the epoch).
    pub timestamp_ns: u64,
    /// The topic it was published to, or `None` for a direct send.
    pub topic: Option<String>,
    /// The decoded payload.
    pub value: T,
}

/// A verified application message whose payload is still candid bytes.
pub type RawMessage = Message<Vec<u8>>;

impl RawMessage {
    /// Decodes the payload as `T` (bounded candid decoding).
    pub fn decode<T: CandidType + DeserializeOwned>(self) -> Result<Message<T>, ClientError> {
        let value = ic_ws_protocol::decode::<T>(&self.value).map_err(|e| ClientError::Decode {
            seq: self.seq,
            error: e.to_string(),
        })?;
        Ok(Message {
            seq: self.seq,
            timestamp_ns: self.timestamp_ns,
            topic: self.topic,
            value,
        })
    }
}

/// Everything that happens to a session, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The canister certified the (re)open of this session for this client's key.
    Opened {
        /// The session.
        client_id: ClientId,
        /// True when an existing session was resumed.
        resumed: bool,
        /// The certified sequence number the canister expects for our next message.
        next_inbound_seq: u64,
        /// Own messages re-sent because the canister had not received them.
        resent: usize,
    },
    /// A verified application message.
    Message(RawMessage),
    /// Certified: the canister consumed our message `seq` (so it and every earlier one are
    /// accepted) and the application's handler refused it. A fact.
    MessageRejected {
        /// Its inbound sequence number.
        seq: u64,
        /// Why (`Rejected` or `DecodeError`).
        error: WsError,
    },
    /// Certified: the application refused this client's open. [`Event::Failed`] with
    /// [`ClientError::OpenRejected`] follows; nothing else.
    OpenRejected {
        /// The (closed) session holding the refusal.
        client_id: ClientId,
        /// Why (`Rejected` or `DecodeError`).
        error: WsError,
    },
    /// Uncertified: something the gateway claims (an open or message error). It is not a
    /// fact: no message is dropped because of it, and the client treats the connection as
    /// failed and retries (next gateway). Shown for diagnostics.
    Unverified(Claim),
    /// The connection ended; the client reconnects after `retry_in` (`None`: it does not).
    Disconnected {
        /// Why: a failed check, a gateway claim, a gateway close, a network error.
        error: ClientError,
        /// Delay before the next attempt.
        retry_in: Option<Duration>,
    },
    /// The session was given up: every gateway refused to resume it and the client's own
    /// clock proves it has expired (or own messages were lost from the resend buffer).
    /// Depending on the configuration the client continues with a new session.
    SessionLost {
        /// The lost session.
        client_id: ClientId,
        /// Own messages signed for it and not known to be accepted (not delivered).
        dropped_outgoing: u64,
    },
    /// The session ended (certified). Nothing follows.
    Closed(CloseReason),
    /// The client stopped for good. Nothing follows.
    Failed(ClientError),
}
