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

/// `error` (relayed, uncertified, by the gateway) with its text bounded.
pub(crate) fn bounded_ws_error(error: WsError) -> WsError {
    let b = |s: String| {
        if s.len() > MAX_PEER_TEXT_BYTES {
            bounded(&s, MAX_PEER_TEXT_BYTES)
        } else {
            s
        }
    };
    match error {
        WsError::Rejected(s) => WsError::Rejected(b(s)),
        WsError::DecodeError(s) => WsError::DecodeError(b(s)),
        WsError::LimitReached(s) => WsError::LimitReached(b(s)),
        WsError::InvalidArgument(s) => WsError::InvalidArgument(b(s)),
        other => other,
    }
}

/// A failed check on the certified `Opened` message that binds a session to this client's key
/// for one particular open (docs/protocol.md, check 6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The first message of a new session is not `Opened`.
    #[error("first message of the new session (seq {seq}) is not Opened")]
    NotOpenedFirst {
        /// Its sequence number.
        seq: u64,
    },
    /// `Opened` names another session key.
    #[error("Opened (seq {seq}) binds another key")]
    WrongKey {
        /// Its sequence number.
        seq: u64,
    },
    /// `Opened` confirms another open than the one this client sent last.
    #[error("Opened (seq {seq}) confirms the open at {got} ns, not ours at {expected} ns")]
    WrongOpenTimestamp {
        /// Its sequence number.
        seq: u64,
        /// Our open's timestamp.
        expected: u64,
        /// The timestamp in the message.
        got: u64,
    },
    /// `Opened.resumed` says resume where we opened a new session, or the other way round.
    #[error("Opened (seq {seq}) has resumed = {got}, expected {expected}")]
    WrongResumeFlag {
        /// Its sequence number.
        seq: u64,
        /// What we asked for.
        expected: bool,
        /// What it says.
        got: bool,
    },
    /// An `Opened` when no open of ours is outstanding (a replayed confirmation).
    #[error("unexpected Opened (seq {seq}): no open outstanding")]
    UnexpectedOpened {
        /// Its sequence number.
        seq: u64,
    },
    /// The certified `next_inbound_seq` claims messages this client never sent.
    #[error("Opened claims next_inbound_seq {certified}, but only {sent} messages were sent")]
    InboundBeyondSent {
        /// The certified value.
        certified: u64,
        /// Messages this client signed so far in the session.
        sent: u64,
    },
}

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
    /// The canister refused the open (as relayed, uncertified, by the gateway).
    #[error("open refused: {0}")]
    OpenRefused(WsError),
    /// The session cannot be resumed: messages before `first_available` are gone.
    #[error("session {client_id} cannot be resumed: messages before {first_available} are gone")]
    ResumeUnavailable {
        /// The lost session.
        client_id: ClientId,
        /// Oldest outbound sequence number the canister still had.
        first_available: u64,
    },
    /// The canister rejected one of our messages (as relayed by the gateway).
    #[error("message {seq} rejected: {error}")]
    MessageRejected {
        /// Its inbound sequence number.
        seq: u64,
        /// Why.
        error: WsError,
    },
    /// Messages we signed were dropped from the re-send buffer before the canister confirmed
    /// them, and the canister did not accept them.
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
    /// [`crate::Event::ResumeUnavailable`]); retry after its `Opened` event.
    #[error("no session yet: a new session is being opened")]
    NoSession,
    /// The client's background task has stopped (after a terminal event).
    #[error("client stopped")]
    Stopped,
}

impl ClientError {
    /// True when the error ends the session for good (no reconnection helps).
    pub fn is_terminal(&self) -> bool {
        match self {
            ClientError::OpenRefused(e) => !matches!(e, WsError::LimitReached(_)),
            ClientError::Config(_)
            | ClientError::UnsupportedVersion { .. }
            | ClientError::SessionClosed(_)
            | ClientError::OutboundLost { .. }
            | ClientError::GaveUp { .. }
            | ClientError::Stopped => true,
            _ => false,
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
                prop_assert!(shown.len() <= 64 + MAX_PEER_TEXT_BYTES, "{}", shown.len());
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
