//! WebSocket frames between a client and the gateway. Every frame is one binary WebSocket
//! message holding the candid encoding of [`ClientFrame`] or [`GatewayFrame`].
//!
//! The gateway is untrusted: nothing in a [`GatewayFrame`] is believed by a client unless it
//! is certified (`Messages`) or can only hurt availability (`Hello`, `OpenResult`,
//! `MessageError`, close frames).

use crate::types::{ClientMessage, OpenRequest, OpenResult, OutboundMessage, WsError};
use candid::{CandidType, Principal};
use serde::{Deserialize, Serialize};

/// Protocol version spoken by this crate (in `Hello`).
pub const PROTOCOL_VERSION: u32 = 2;

/// A frame from a client to the gateway.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// Open (or resume) a session with `canister_id`. One session per WebSocket.
    Open {
        /// The canister to talk to.
        canister_id: Principal,
        /// The signed open request, relayed unchanged to `ws_open`.
        request: OpenRequest,
    },
    /// A signed message (app payload, keep-alive or close), relayed unchanged to `ws_message`.
    Message(ClientMessage),
}

/// A frame from the gateway to a client.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum GatewayFrame {
    /// First frame on every connection.
    Hello {
        /// The gateway's principal: the client names it in its signed open.
        gateway: Principal,
        /// [`PROTOCOL_VERSION`].
        protocol_version: u32,
    },
    /// The canister's (uncertified) answer to the client's open.
    OpenResult(OpenResult),
    /// Certified messages for this client only, with the data certificate and a hash tree
    /// pruned to this client's paths.
    Messages {
        /// This client's messages, in sequence.
        messages: Vec<OutboundMessage>,
        /// The IC data certificate (CBOR).
        #[serde(with = "serde_bytes")]
        certificate: Vec<u8>,
        /// CBOR hash tree whose root hash is the certified_data.
        #[serde(with = "serde_bytes")]
        tree: Vec<u8>,
    },
    /// The canister rejected one of the client's messages.
    MessageError {
        /// Sequence number of the rejected message.
        seq: u64,
        /// Why.
        error: WsError,
    },
}

/// WebSocket close codes used by the gateway (besides the standard 1000, 1008, 1009, 1011).
pub mod close_code {
    /// The gateway is shutting down or restarting: reconnect (elsewhere) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The client sent something that is not a valid frame.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame over the gateway's size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Gateway restart: reconnect and resume.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The canister closed the session (the reason is in the certified `Closed` message).
    pub const SESSION_CLOSED: u16 = 4000;
    /// The client did not read fast enough: its send buffer at the gateway overflowed.
    pub const SLOW_CLIENT: u16 = 4001;
    /// No frame from the client within the gateway's idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4002;
    /// The canister refused the open (the reason is in the preceding `OpenResult`).
    pub const OPEN_FAILED: u16 = 4003;
    /// The canister rejected a message of this client (see the preceding `MessageError`).
    pub const MESSAGE_REJECTED: u16 = 4004;
    /// The canister cannot be reached (unknown canister or persistent errors).
    pub const CANISTER_UNAVAILABLE: u16 = 4005;
    /// Too many connections (gateway-wide or from this address).
    pub const OVERLOADED: u16 = 4006;
}
