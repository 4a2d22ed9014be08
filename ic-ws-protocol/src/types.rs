//! Candid types of the canister endpoints the macros generate (`ws_open`, `ws_message`,
//! `ws_close`, `ws_poll`) and of the certified outbound content.
//!
//! These are the only definitions of the wire format on the Rust side: canister runtime,
//! gateway and Rust client all use them. `docs/protocol.md` documents them field by field.

use candid::{CandidType, Principal};
use serde::{Deserialize, Serialize};

/// A connection's identity inside one canister, assigned by the canister on first open and
/// never reused. Bound to the client's Ed25519 session key.
pub type ClientId = u64;

/// Length of an Ed25519 public key (the client's session key).
pub const CLIENT_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// A client's request to open (or resume) a session, relayed by the gateway in `ws_open`.
/// Signed by the client's session key over [`crate::signing::open_signing_bytes`].
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpenRequest {
    /// The client's Ed25519 session public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub client_key: Vec<u8>,
    /// The gateway the client connects through (from the gateway's `Hello`). Must be the
    /// caller of `ws_open`.
    pub gateway: Principal,
    /// Client clock in nanoseconds since the epoch. Must be within the canister's clock-skew
    /// window and greater than the timestamp of any earlier open with this key.
    pub timestamp_ns: u64,
    /// Present when the client resumes an earlier session.
    pub resume: Option<ResumeFrom>,
    /// Application-defined open arguments (candid), handed to `on_open`.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Ed25519 signature (64 bytes) over the open signing bytes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    /// Issue 10: proof that an IC principal authorised this session key (a delegation chain
    /// ending at `client_key`, see [`crate::identity`]); none for an anonymous session. The
    /// signing bytes cover it (its digest), so a gateway can neither strip nor swap it. An
    /// `opt` field: opens of clients built before it decode with `None`.
    #[serde(default)]
    pub identity: Option<crate::identity::IdentityProof>,
}

/// Where a resuming client continues.
#[derive(CandidType, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The session being resumed.
    pub client_id: ClientId,
    /// The first outbound sequence number the client has not received (all below were
    /// received and verified).
    pub next_outbound_seq: u64,
}

/// The canister's (uncertified) answer to an open. The certified confirmation is the
/// [`OutboundBody::Opened`] message that follows in the client's stream.
#[derive(CandidType, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOk {
    /// The session's client id.
    pub client_id: ClientId,
    /// The sequence number the canister expects for the client's next message.
    pub next_inbound_seq: u64,
    /// The sequence number of the `Opened` confirmation queued for the client.
    pub opened_seq: u64,
}

/// Result of one open in a `ws_open` batch.
pub type OpenResult = Result<OpenOk, WsError>;

/// Argument of `ws_open`: opens from one gateway, handled in order.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct OpenBatch {
    /// The opens, each answered by the result at the same index.
    pub opens: Vec<OpenRequest>,
}

/// What a client message carries.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// An application message: candid bytes of the app's inbound type.
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Signed liveness (and acknowledgement) with no payload.
    KeepAlive,
    /// The client ends its session.
    Close {
        /// WebSocket-style close code chosen by the client (1000 for normal).
        code: u16,
        /// Human-readable reason.
        reason: String,
    },
}

/// One signed client message, relayed by the client's gateway in `ws_message`.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClientMessage {
    /// The sender's session.
    pub client_id: ClientId,
    /// Inbound sequence number: 0 for the session's first message, then +1 each.
    pub seq: u64,
    /// Acknowledgement: the first outbound sequence number the client has not yet received.
    pub ack: u64,
    /// What the message carries.
    pub kind: MessageKind,
    /// Ed25519 signature (64 bytes) over the message signing bytes.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// Argument of `ws_message`: messages of many clients, each client's in order.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct MessageBatch {
    /// The messages, each answered by the result at the same index.
    pub messages: Vec<ClientMessage>,
}

/// Result of one message in a `ws_message` batch.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum MessageResult {
    /// Accepted and handled.
    Ok,
    /// A validly signed message that was already accepted earlier (a gateway retry): no-op.
    Duplicate,
    /// Rejected; nothing changed.
    Err(WsError),
}

/// Argument of `ws_close`: the gateway reports clients whose WebSocket went away. Their
/// sessions stay resumable until they expire.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct CloseBatch {
    /// Clients that disconnected from the calling gateway.
    pub clients: Vec<ClientId>,
}

/// Result of one entry of a `ws_close` batch.
pub type CloseResult = Result<(), WsError>;

/// Argument of the `ws_poll` query.
#[derive(CandidType, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PollRequest {
    /// Position in the calling gateway's delivery log: messages at or after it are returned.
    /// 0 on a fresh gateway.
    pub cursor: u64,
    /// Cap on messages in the reply (the canister applies its own lower cap).
    pub max_messages: Option<u32>,
    /// Cap on reply bytes (the canister applies its own lower cap).
    pub max_bytes: Option<u32>,
    /// Cap on distinct clients in the reply (0 counts as 1): the reply ends before the first
    /// message for a client beyond this many, with `more` set. A gateway writes one frame per
    /// client of a page, so this bounds the work (and delay) one page costs it. Absent: no cap.
    /// Canisters older than this field ignore it.
    pub max_clients: Option<u32>,
}

/// One certified outbound message.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Recipient.
    pub client_id: ClientId,
    /// Per-client outbound sequence number (0 = the first `Opened`).
    pub seq: u64,
    /// Candid-encoded [`OutboundContent`]; its SHA-256 is the certified leaf at
    /// `/ws/<client_id>/<seq>`.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
}

/// The `ws_poll` reply.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PollReply {
    /// Messages for the calling gateway's clients, in log order (each client's in sequence).
    pub messages: Vec<OutboundMessage>,
    /// Cursor to send in the next poll.
    pub next_cursor: u64,
    /// True when more messages were pending than fit in this reply (poll again at once).
    pub more: bool,
    /// The IC data certificate (CBOR) certifying the canister's certified_data.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// CBOR hash tree whose root hash is the certified_data; it witnesses every message above.
    #[serde(with = "serde_bytes")]
    pub tree: Vec<u8>,
    /// The canister's scheduling hint: it expects to send messages in about this many
    /// milliseconds (its next timer, say), so a gateway may poll then rather than on its own
    /// schedule. Advisory and uncertified; gateways clamp it. Absent in replies of canisters
    /// built before it existed (candid decodes a missing `opt` field as `None`).
    #[serde(default)]
    pub next_poll_ms: Option<u64>,
}

/// Result of `ws_poll`.
pub type PollResult = Result<PollReply, WsError>;

/// What the canister certifies for one outbound message (candid-encoded into
/// [`OutboundMessage::content`]).
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OutboundContent {
    /// Canister time when the message was queued.
    pub timestamp_ns: u64,
    /// What it says.
    pub body: OutboundBody,
}

/// The kinds of outbound message.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum OutboundBody {
    /// An application message: candid bytes of the app's outbound type.
    App {
        /// The topic it was published to, or none for a direct `send`.
        topic: Option<String>,
        /// Candid bytes of the app's outbound type.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Certified confirmation of an open or resume: binds this client id to the key.
    Opened {
        /// The session key the canister bound to this client id.
        #[serde(with = "serde_bytes")]
        client_key: Vec<u8>,
        /// The timestamp of the open request this confirms.
        open_timestamp_ns: u64,
        /// The inbound sequence number the canister expects next.
        next_inbound_seq: u64,
        /// True for a resume of an existing session.
        resumed: bool,
        /// The canister's limit on an inbound `App` payload (protocol version 2): a client
        /// refuses to sign a larger one (the canister's `TooLarge` is not certified).
        max_inbound_payload_bytes: u64,
        /// The canister's idle timeout (protocol version 2): a session with no accepted
        /// signed message for this long is expired. A client that has signed nothing for
        /// longer may take an uncertified refusal of its resume as true.
        idle_timeout_ns: u64,
        /// Issue 10: the IC principal the canister bound to this session (verified from the
        /// open's identity proof), none for an anonymous session. Certified, so the client
        /// checks that the canister bound the principal it proved. Absent (`None`) in
        /// confirmations of canisters built before it.
        #[serde(default)]
        principal: Option<Principal>,
    },
    /// Protocol version 2: the canister consumed inbound message `inbound_seq` of this session
    /// (it is accepted, later ones follow it) and the application's handler refused it
    /// (`Rejected`) or its payload did not decode (`DecodeError`). Certified, so a client
    /// reports it as fact; the gateway's `MessageError` for it is only a hint.
    MessageRejected {
        /// The refused inbound message's sequence number.
        inbound_seq: u64,
        /// Why (`Rejected` or `DecodeError`, text bounded by the canister).
        error: WsError,
    },
    /// Protocol version 2: the only message (seq 0) of a session whose open `on_open` refused:
    /// certifies the refusal of this very open (key and timestamp, as `Opened` does). The
    /// session is closed; its id is never reused.
    OpenRejected {
        /// The key of the refused open.
        #[serde(with = "serde_bytes")]
        client_key: Vec<u8>,
        /// The timestamp of the refused open.
        open_timestamp_ns: u64,
        /// Why (`Rejected` or `DecodeError`, text bounded by the canister).
        error: WsError,
    },
    /// The session ended; nothing follows. `on_close` has been called.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// Why a session ended. Given to `on_close` and certified to the client.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a signed close.
    ClientClosed {
        /// The client's close code.
        code: u16,
        /// The client's reason.
        reason: String,
    },
    /// The application closed the session (`ic_ws_canister::close`).
    AppClosed {
        /// The app's close code.
        code: u16,
        /// The app's reason.
        reason: String,
    },
    /// No signed activity within the configured idle timeout.
    Expired,
    /// The client's outbound queue exceeded its limits (overflow policy `Close`).
    QueueOverflow,
    /// The client broke the protocol (for example a message its handler could not decode).
    ProtocolError(String),
    /// Issue 10: the delegation that bound the session's principal expired (only sessions
    /// opened with an identity proof can end this way).
    IdentityExpired,
}

/// Typed error of every endpoint. Nothing changes in the canister when one is returned.
#[derive(CandidType, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WsError {
    /// The Ed25519 signature does not verify (wrong key, tampered content, or a message meant
    /// for another canister).
    InvalidSignature,
    /// A key or signature of the wrong length.
    MalformedKey,
    /// No session with this client id.
    UnknownClient(ClientId),
    /// The caller is not the gateway this client is bound to.
    WrongGateway,
    /// The open names another gateway than its caller.
    GatewayMismatch,
    /// The anonymous principal cannot act as a gateway.
    AnonymousGateway,
    /// Not the next inbound sequence number (and not a duplicate).
    OutOfSequence {
        /// The sequence number the canister expects.
        expected: u64,
        /// The one received.
        got: u64,
    },
    /// The open's timestamp is outside the clock-skew window or not newer than an earlier open.
    StaleOpen,
    /// The session cannot be resumed from the requested point: messages before
    /// `first_available` are gone. Open a new session.
    ResumeUnavailable {
        /// The oldest outbound sequence number still retained.
        first_available: u64,
    },
    /// The resume point is beyond what the canister ever sent, or the key does not own the
    /// session.
    InvalidResume,
    /// The application rejected the open or the message.
    Rejected(String),
    /// Protocol version 2, `ws_open` only: the application refused this new session's open.
    /// The canister certified the refusal as message 0 (`OutboundBody::OpenRejected`) of
    /// session `client_id` and delivers it to the calling gateway like any message: a client
    /// believes the refusal only once that certified message arrives.
    OpenRejected {
        /// The (closed) session that holds the certified refusal.
        client_id: ClientId,
        /// Why (uncertified copy, for logs).
        reason: String,
    },
    /// The payload does not decode as the handler's type.
    DecodeError(String),
    /// A payload over the configured limit.
    TooLarge {
        /// Its size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// A configured limit was reached (clients per gateway, subscribers, ...).
    LimitReached(String),
    /// The session is closed.
    Closed,
    /// Anything else that is wrong with the request.
    InvalidArgument(String),
    /// Protocol version 2: the call's instruction budget ran out before this entry. Nothing
    /// changed for it; the gateway sends it again in a later call (safe: a duplicate is a no-op).
    NotProcessed,
    /// Issue 10, `ws_open` only: the open's identity proof (or its absence) was refused.
    /// Nothing changed; a new open with a valid proof may follow.
    Identity(crate::identity::IdentityError),
}

impl core::fmt::Display for WsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WsError::InvalidSignature => f.write_str("invalid signature"),
            WsError::MalformedKey => f.write_str("malformed key or signature"),
            WsError::UnknownClient(id) => write!(f, "unknown client {id}"),
            WsError::WrongGateway => f.write_str("caller is not the client's gateway"),
            WsError::GatewayMismatch => f.write_str("open names another gateway than its caller"),
            WsError::AnonymousGateway => f.write_str("the anonymous principal cannot be a gateway"),
            WsError::OutOfSequence { expected, got } => {
                write!(f, "out of sequence: expected {expected}, got {got}")
            }
            WsError::StaleOpen => f.write_str("stale or replayed open"),
            WsError::ResumeUnavailable { first_available } => write!(
                f,
                "cannot resume: messages before {first_available} are gone"
            ),
            WsError::InvalidResume => f.write_str("invalid resume"),
            WsError::Rejected(r) => write!(f, "rejected by the application: {r}"),
            WsError::OpenRejected { client_id, reason } => write!(
                f,
                "open rejected by the application (certified in session {client_id}): {reason}"
            ),
            WsError::DecodeError(e) => write!(f, "payload does not decode: {e}"),
            WsError::TooLarge { size, limit } => {
                write!(f, "too large: {size} bytes, limit {limit}")
            }
            WsError::LimitReached(what) => write!(f, "limit reached: {what}"),
            WsError::Closed => f.write_str("session closed"),
            WsError::InvalidArgument(e) => write!(f, "invalid argument: {e}"),
            WsError::Identity(e) => write!(f, "identity: {e}"),
            WsError::NotProcessed => {
                write!(
                    f,
                    "not processed (the call's instruction budget ran out): retry"
                )
            }
        }
    }
}

impl std::error::Error for WsError {}
