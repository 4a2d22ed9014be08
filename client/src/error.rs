//! The client's one error type. Every verification failure keeps the exact check that failed
//! ([`VerifyError`] or [`BindingError`]), so callers (and tests) can tell a forged payload from
//! a stale certificate from a replayed message.

use ic_ws_protocol::text::{bounded, describe_bytes};
use ic_ws_protocol::verify::VerifyError;
use ic_ws_protocol::{ClientId, CloseReason, WsError};

/// Most bytes of peer-supplied text (a decoder's message, an error relayed by the gateway)
/// kept in an error: a hostile gateway must not make the client build huge strings.
pub const MAX_PEER_TEXT_BYTES: usize = 512;
/// Bytes of an undecodable frame quoted (in hex) in [`ClientError::Protocol`].
pub const QUOTED_FRAME_BYTES: usize = 32;

/// The error for a frame that does not decode: its length and first bytes, and the decoder's
/// message, all bounded (the frame can be as large as `max_frame_bytes`).
pub(crate) fn undecodable_frame(bytes: &[u8], error: &dyn std::fmt::Display) -> ClientError {
    ClientError::Protocol(format!(
        "undecodable frame ({}): {}",
        describe_bytes(bytes, QUOTED_FRAME_BYTES),
        bounded(&error.to_string(), MAX_PEER_TEXT_BYTES)
    ))
}

pub use ic_ws_protocol::client::bounded_ws_error;
pub use ic_ws_protocol::client::{BindingError, Claim};
use ic_ws_protocol::client::{Failure, SendError};

/// Everything that can go wrong in the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A `Messages` frame failed one of the certificate, tree or sequence checks.
    #[error("verification failed: {0}")]
    Verify(#[from] VerifyError),
    /// The certified `Opened` confirmation does not match this client's open.
    #[error("open confirmation: {0}")]
    Binding(#[from] BindingError),
    /// Invalid configuration (URL, root key, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// TCP/TLS/WebSocket failure while connecting or on an established connection.
    #[error("connection: {0}")]
    Connection(String),
    /// A step did not complete in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The gateway sent something that is not a valid frame at this point.
    #[error("gateway protocol violation: {0}")]
    Protocol(String),
    /// The gateway speaks another protocol version.
    #[error("gateway speaks protocol version {got}, this client {supported}")]
    UnsupportedVersion {
        /// The gateway's version.
        got: u32,
        /// Ours.
        supported: u32,
    },
    /// The gateway closed the WebSocket.
    #[error("gateway closed the connection (code {code}: {reason})")]
    GatewayClosed {
        /// WebSocket close code (see `ic_ws_protocol::frames::close_code`).
        code: u16,
        /// Close reason text.
        reason: String,
    },
    /// Uncertified: the gateway claims the canister refused the open. Only means "this
    /// connection failed"; the client retries (next gateway) within its backoff policy.
    #[error("open refused (unverified gateway claim): {0}")]
    OpenRefused(WsError),
    /// Uncertified: the gateway claims the canister refused one of our messages. The client
    /// reconnects and resumes; the message is re-sent unless the canister certifies it has it.
    #[error("message {seq} refused (unverified gateway claim): {error}")]
    MessageError {
        /// Its inbound sequence number.
        seq: u64,
        /// The claimed error.
        error: WsError,
    },
    /// Certified: the application refused this client's open (`OpenRejected` at seq 0 with
    /// our key and this open's timestamp). Terminal.
    #[error("open rejected by the application (certified, session {client_id}): {error}")]
    OpenRejected {
        /// The (closed) session holding the certified refusal.
        client_id: ClientId,
        /// `Rejected` or `DecodeError`.
        error: WsError,
    },
    /// The session was given up: its expiry is proven by the client's own clock after every
    /// gateway refused to resume it, or own messages were lost from the resend buffer.
    #[error("session {client_id} lost ({dropped_outgoing} own messages not delivered)")]
    SessionLost {
        /// The lost session.
        client_id: ClientId,
        /// Own messages signed for it and not known to be accepted.
        dropped_outgoing: u64,
    },
    /// Certified: the canister consumed our message `seq` and its handler refused it.
    #[error("message {seq} rejected (certified): {error}")]
    MessageRejected {
        /// Its inbound sequence number.
        seq: u64,
        /// Why (`Rejected` or `DecodeError`).
        error: WsError,
    },
    /// `send` refused an `App` payload over the canister's certified limit (nothing signed).
    #[error("payload of {size} bytes exceeds the canister's limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The certified `max_inbound_payload_bytes`.
        limit: u64,
    },
    /// Messages we signed were dropped from the re-send buffer before the canister confirmed
    /// them, and the canister did not accept them (the session is given up).
    #[error("own messages {from}..{to} were lost before the canister accepted them")]
    OutboundLost {
        /// First lost sequence number.
        from: u64,
        /// One past the last lost one.
        to: u64,
    },
    /// The session ended (certified `Closed` message).
    #[error("session closed: {0:?}")]
    SessionClosed(CloseReason),
    /// A candid encoding failure of our own message.
    #[error("encoding: {0}")]
    Encode(String),
    /// A verified app message did not decode as the requested type.
    #[error("message {seq}: payload does not decode as the requested type: {error}")]
    Decode {
        /// Its sequence number.
        seq: u64,
        /// The candid error.
        error: String,
    },
    /// Reconnection attempts exhausted.
    #[error("gave up after {attempts} reconnection attempts; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Box<ClientError>,
    },
    /// No session to sign for at the moment: a new session is being opened (after
    /// [`crate::Event::SessionLost`]); retry after its `Opened` event.
    #[error("no session yet: a new session is being opened")]
    NoSession,
    /// The client's background task has stopped (after a terminal event).
    #[error("client stopped")]
    Stopped,
}

impl ClientError {
    /// True when the error ends the client for good (no reconnection helps). Only certified
    /// outcomes, the configuration and the backoff policy are terminal: nothing a gateway
    /// merely claims is.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            ClientError::Config(_)
                | ClientError::SessionClosed(_)
                | ClientError::OpenRejected { .. }
                | ClientError::GaveUp { .. }
                | ClientError::Stopped
        )
    }
}

impl From<Failure> for ClientError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Verify(e) => ClientError::Verify(e),
            Failure::Binding(e) => ClientError::Binding(e),
            Failure::Protocol(s) => ClientError::Protocol(s),
            Failure::UnsupportedVersion { got, supported } => {
                ClientError::UnsupportedVersion { got, supported }
            }
            Failure::Timeout(step) => ClientError::Timeout(step),
            Failure::Claim(Claim::OpenError(e)) => ClientError::OpenRefused(e),
            Failure::Claim(Claim::MessageError { seq, error }) => {
                ClientError::MessageError { seq, error }
            }
            Failure::Transport(s) => ClientError::Connection(s),
            Failure::GatewayClosed { code, reason } => ClientError::GatewayClosed { code, reason },
            Failure::OutboundLost { from, to } => ClientError::OutboundLost { from, to },
            Failure::SessionExpired { client_id } => ClientError::SessionLost {
                client_id,
                dropped_outgoing: 0,
            },
            Failure::OpenRejected { client_id, error } => {
                ClientError::OpenRejected { client_id, error }
            }
            Failure::SessionClosed(r) => ClientError::SessionClosed(r),
        }
    }
}

impl From<SendError> for ClientError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NoSession => ClientError::NoSession,
            SendError::TooLarge { size, limit } => ClientError::TooLarge { size, limit },
            SendError::Stopped => ClientError::Stopped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn error_texts_from_a_gateway_are_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            text in "\\PC{0,2000}",
        ) {
            let shown = undecodable_frame(&bytes, &text).to_string();
            prop_assert!(shown.len() <= 128 + 2 * QUOTED_FRAME_BYTES + MAX_PEER_TEXT_BYTES, "{}", shown.len());
            let length = format!("{} bytes", bytes.len());
            prop_assert!(shown.contains(&length), "{}", shown);
            for e in [
                WsError::Rejected(text.clone()),
                WsError::DecodeError(text.clone()),
                WsError::LimitReached(text.clone()),
                WsError::InvalidArgument(text.clone()),
            ] {
                let shown = ClientError::OpenRefused(bounded_ws_error(e)).to_string();
                prop_assert!(shown.len() <= 96 + MAX_PEER_TEXT_BYTES, "{}", shown.len());
            }
        }
    }

    #[test]
    fn a_huge_undecodable_frame_gives_a_short_error() {
        let frame = vec![0xab_u8; 15 * 1024 * 1024];
        let error = ic_ws_protocol::decode::<ic_ws_protocol::GatewayFrame>(&frame).unwrap_err();
        let text = undecodable_frame(&frame, &error).to_string();
        assert!(text.len() < 700, "{text}");
        assert!(text.contains("15728640 bytes: abab"), "{text}");
    }
}
