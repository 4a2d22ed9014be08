//! The client side of the protocol as an I/O-free state machine (feature `client`).
//!
//! [`ClientSession`] holds everything a client decides: what to put in an open or resume
//! (open timestamps strictly increasing per key), the (uncertified) open result, `Messages`
//! frames held until it arrives (at most [`MAX_EARLY_FRAMES`]), checks 1-6 of every delivery
//! ([`crate::verify::DeliveryVerifier`] plus the certified `Opened` binding), the
//! acknowledgement and keep-alive policy, the resend queue (bounded) and the outcome rules of
//! protocol version 2 (docs/protocol.md, "Outcomes: what is certified and what a client may
//! believe"):
//!
//! - a certified `MessageRejected` is a fact (and confirms own messages up to its seq);
//! - a certified `OpenRejected` (seq 0 of the id the gateway named, own key, this open's
//!   timestamp) is a terminal, certified refusal;
//! - a certified `Closed` (also the one re-delivered after a resume's `Err(Closed)`) ends the
//!   session;
//! - everything uncertified (`MessageError`, an `OpenResult` error, an `OpenRejected` claim
//!   whose certified message does not come within the open timeout, a close code) is reported
//!   as [`Event::Unverified`] and only means "this connection failed: retry, next gateway";
//!   it never drops a message, skips a sequence number or stops the client;
//! - a resume refused again and again (every configured gateway claims the session is gone)
//!   is given up only when the client's own clock proves that the session has expired
//!   ([`ClientSession::expiry_proven_at`]); then [`Event::SessionLost`] names the own messages
//!   dropped and a new session starts.
//!
//! The machine never does I/O and never reads a clock or an RNG: the caller passes `now`
//! (nanoseconds since the epoch, its own clock) with every input and a [`KeySource`] for new
//! session keys, and carries out the returned [`Action`]s in order. The Rust client
//! (`ic-ws-client`) drives it over tokio-tungstenite; `client-js/src/session.ts` mirrors it,
//! and both run `test-vectors/client-vectors.json` (generated from this module).

use std::collections::VecDeque;

use candid::Principal;

use crate::frames::{ClientFrame, GatewayFrame, PROTOCOL_VERSION};
use crate::signing::SessionKey;
use crate::text::bounded;
use crate::types::{
    ClientId, ClientMessage, CloseReason, MessageKind, OpenRequest, OutboundBody, OutboundMessage,
    ResumeFrom, WsError,
};
use crate::verify::{DeliveryVerifier, VerifyError};

/// `Messages` frames held while the open result is outstanding.
pub const MAX_EARLY_FRAMES: usize = 64;
/// Most bytes of peer-supplied (uncertified) text kept in a claim.
pub const MAX_CLAIM_TEXT_BYTES: usize = 512;
/// The canister's default clock-skew window for opens (5 minutes).
pub const DEFAULT_CLOCK_SKEW_NS: u64 = 5 * 60 * 1_000_000_000;

/// A source of fresh session-key seeds (32 bytes from a CSPRNG in a real client; a counter in
/// the test vectors).
pub type KeySource = Box<dyn FnMut() -> [u8; 32] + Send + Sync>;

/// Issue 10: makes the identity proof for a session key (the client's IC identity signs a
/// delegation to it; see [`crate::identity`]). Called once per session key.
pub type Prover = Box<dyn FnMut(&[u8; 32]) -> crate::identity::IdentityProof + Send + Sync>;

/// What to do when a session is given up (its expiry proven by the client's own clock, or
/// its own unconfirmed messages lost from the bounded resend queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSessionLost {
    /// Report [`Event::SessionLost`] and open a new session (new key, new client id).
    NewSession,
    /// Report it and stop.
    Stop,
}

/// Settings of the state machine.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The canister.
    pub canister_id: Principal,
    /// The IC root key (DER).
    pub root_key_der: Vec<u8>,
    /// Maximum accepted certificate age.
    pub max_certificate_age_ns: u64,
    /// Candid open arguments for `on_open`.
    pub open_args: Vec<u8>,
    /// From `Connected` until the certified `Opened` (or `OpenRejected`) must arrive.
    pub open_timeout_ns: u64,
    /// A `KeepAlive` is signed when nothing was written for this long.
    pub keepalive_interval_ns: u64,
    /// A `KeepAlive` is signed as soon as more received messages are unacknowledged.
    pub ack_threshold: u64,
    /// Own messages kept for re-sending until the canister certifies it has them.
    pub resend_buffer: usize,
    /// The canister's clock-skew window for opens (default 5 min).
    pub clock_skew_ns: u64,
    /// Consecutive resumes refused with "the session is gone" (uncertified) before the client
    /// stops signing resumes and waits for its own clock to prove the expiry. At least the
    /// number of gateways, so that one lying gateway among honest ones changes nothing.
    pub resume_refusals_before_wait: u32,
    /// Policy when a session is given up.
    pub on_session_lost: OnSessionLost,
}

/// An uncertified outcome claimed by the gateway. It only ever means "this connection did not
/// work: retry, through another gateway if there is one".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// `OpenResult(Err(..))`.
    OpenError(WsError),
    /// `MessageError { seq, error }`.
    MessageError {
        /// The message it names.
        seq: u64,
        /// The claimed error.
        error: WsError,
    },
}

impl core::fmt::Display for Claim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Claim::OpenError(e) => write!(f, "open refused: {e}"),
            Claim::MessageError { seq, error } => write!(f, "message {seq}: {error}"),
        }
    }
}

/// A failed check on the certified `Opened` / `OpenRejected` message that binds a session to
/// this client's key for one particular open (docs/protocol.md, check 6), or on what a
/// certified outcome claims about own messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The first message of a new session is not `Opened` (or `OpenRejected`).
    #[error("first message of the new session (seq {seq}) is not Opened")]
    NotOpenedFirst {
        /// Its sequence number.
        seq: u64,
    },
    /// `Opened` binds another principal than this client proved (or one where it proved none,
    /// or none where it proved one: a canister that does not know identity proofs).
    #[error("Opened (seq {seq}) binds principal {got:?}, expected {expected:?}")]
    WrongPrincipal {
        /// Its sequence number.
        seq: u64,
        /// The principal our proof names (none for an anonymous session).
        expected: Option<Principal>,
        /// What the canister certified.
        got: Option<Principal>,
    },
    /// `Opened` / `OpenRejected` names another session key.
    #[error("Opened (seq {seq}) binds another key")]
    WrongKey {
        /// Its sequence number.
        seq: u64,
    },
    /// `Opened` / `OpenRejected` answers another open than the one this client sent last.
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
    /// An `OpenRejected` anywhere but at seq 0 of a new session's open.
    #[error("unexpected OpenRejected (seq {seq})")]
    UnexpectedOpenRejected {
        /// Its sequence number.
        seq: u64,
    },
    /// A certified `next_inbound_seq` (or rejected `inbound_seq` + 1) claims messages this
    /// client never sent.
    #[error("certified next inbound seq {certified}, but only {sent} messages were sent")]
    InboundBeyondSent {
        /// The certified value.
        certified: u64,
        /// Messages this client signed so far in the session.
        sent: u64,
    },
}

/// Why a connection ended (the error of [`Action::Close`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A `Messages` frame failed one of checks 1-5 (or its content did not decode).
    #[error("verification failed: {0}")]
    Verify(#[from] VerifyError),
    /// Check 6: the certified `Opened`/`OpenRejected` does not answer this client's open.
    #[error("open confirmation: {0}")]
    Binding(#[from] BindingError),
    /// A frame that is not valid at this point.
    #[error("gateway protocol violation: {0}")]
    Protocol(String),
    /// The gateway speaks another protocol version (uncertified: the next gateway may not).
    #[error("gateway speaks protocol version {got}, this client {supported}")]
    UnsupportedVersion {
        /// The gateway's version.
        got: u32,
        /// Ours.
        supported: u32,
    },
    /// A step did not complete within the open timeout.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// An uncertified refusal claimed by the gateway.
    #[error("unverified gateway claim: {0}")]
    Claim(Claim),
    /// The transport failed (reported by the driver).
    #[error("connection: {0}")]
    Transport(String),
    /// The gateway closed the WebSocket (reported by the driver; close codes are uncertified).
    #[error("gateway closed the connection (code {code}: {reason})")]
    GatewayClosed {
        /// WebSocket close code.
        code: u16,
        /// Close reason text.
        reason: String,
    },
    /// Own messages left the bounded resend queue before the canister certified it has them,
    /// and the certified `Opened` shows it does not: the session cannot go on.
    #[error("own messages {from}..{to} were lost before the canister accepted them")]
    OutboundLost {
        /// First lost sequence number.
        from: u64,
        /// One past the last lost one.
        to: u64,
    },
    /// Resumes were refused by every gateway and the client's own clock proves the session
    /// expired.
    #[error("session {client_id} expired (proven by the client's own clock)")]
    SessionExpired {
        /// The lost session.
        client_id: ClientId,
    },
    /// Certified: the application refused this open (`OpenRejected` at seq 0).
    #[error("open rejected (certified, session {client_id}): {error}")]
    OpenRejected {
        /// The closed session holding the certified refusal.
        client_id: ClientId,
        /// Why (`Rejected` or `DecodeError`).
        error: WsError,
    },
    /// Certified: the session ended.
    #[error("session closed: {0:?}")]
    SessionClosed(CloseReason),
}

impl Failure {
    /// A stable name of the failure (for logs and the cross-language test vectors): the
    /// variant, and for `Verify` / `Binding` / `Claim` the inner variant.
    pub fn kind(&self) -> String {
        fn first_word(debug: String) -> String {
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_string()
        }
        match self {
            Failure::Verify(e) => format!("Verify.{}", first_word(format!("{e:?}"))),
            Failure::Binding(e) => format!("Binding.{}", first_word(format!("{e:?}"))),
            Failure::Claim(Claim::OpenError(e)) => {
                format!("Claim.OpenError.{}", first_word(format!("{e:?}")))
            }
            Failure::Claim(Claim::MessageError { error, .. }) => {
                format!("Claim.MessageError.{}", first_word(format!("{error:?}")))
            }
            other => first_word(format!("{other:?}")),
        }
    }
}

/// What the caller does after a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Back off and reconnect (the next gateway in the list).
    Reconnect,
    /// Reconnect at once (a new session starts; nothing to wait for).
    ReconnectNow,
    /// Do not reconnect before the client's own clock reaches this time (ns): the session's
    /// expiry is proven then, and the next connection starts a new session.
    WaitUntil(u64),
    /// Stop for good (a certified end, or a policy).
    Stop,
}

/// What the application is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The canister certified the (re)open of this session for this client's key.
    Opened {
        /// The session.
        client_id: ClientId,
        /// True when an existing session was resumed.
        resumed: bool,
        /// The certified next inbound sequence number.
        next_inbound_seq: u64,
        /// Own messages re-sent because the canister did not have them.
        resent: usize,
    },
    /// A verified application message.
    Message {
        /// Outbound sequence number.
        seq: u64,
        /// Canister time when it was queued.
        timestamp_ns: u64,
        /// Topic, or none for a direct send.
        topic: Option<String>,
        /// Candid bytes of the app's outbound type.
        payload: Vec<u8>,
    },
    /// Certified: the canister consumed own message `seq` and the handler refused it.
    MessageRejected {
        /// Own inbound sequence number.
        seq: u64,
        /// `Rejected` or `DecodeError`.
        error: WsError,
    },
    /// Certified: the application refused this client's open. Nothing follows but the stop.
    OpenRejected {
        /// The (closed) session that holds the refusal.
        client_id: ClientId,
        /// `Rejected` or `DecodeError`.
        error: WsError,
    },
    /// Uncertified: something the gateway claims. Only means "retry elsewhere".
    Unverified(Claim),
    /// The session was given up (its expiry proven by the own clock, or own messages lost).
    SessionLost {
        /// The lost session.
        client_id: ClientId,
        /// Own messages signed for it and not known to be accepted.
        dropped_outgoing: u64,
    },
    /// Certified: the session ended. Nothing follows.
    Closed(CloseReason),
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this frame on the current connection.
    Write(ClientFrame),
    /// Tell the application.
    Emit(Event),
    /// Close the current connection (if any) and continue as `next` says.
    Close {
        /// Why.
        error: Failure,
        /// What comes next.
        next: Next,
    },
}

/// Why [`ClientSession::send`] refused to sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No session to sign for (before the first certified `Opened`, or while a lost session
    /// is replaced).
    #[error("no session yet: a session is being opened")]
    NoSession,
    /// An `App` payload over the canister's certified `max_inbound_payload_bytes`.
    #[error("payload of {size} bytes exceeds the canister's limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The certified limit.
        limit: u64,
    },
    /// The session ended or the client stopped.
    #[error("the client stopped")]
    Stopped,
}

/// The canister's limits, certified in `Opened` (the last certified values are kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertifiedLimits {
    /// Largest inbound `App` payload.
    pub max_inbound_payload_bytes: u64,
    /// The session's idle timeout.
    pub idle_timeout_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingOpen {
    timestamp_ns: u64,
    resume: bool,
}

#[derive(Debug)]
enum Phase {
    Hello,
    OpenResult(PendingOpen),
    /// The open result arrived (or an `OpenRejected` / resume `Closed` claim to be certified).
    Confirming {
        pending: PendingOpen,
        claim: Option<WsError>,
    },
    Ready,
}

struct EarlyFrame {
    messages: Vec<OutboundMessage>,
    certificate: Vec<u8>,
    tree: Vec<u8>,
}

struct Conn {
    phase: Phase,
    connected_at: u64,
    last_sent: u64,
    early: Vec<EarlyFrame>,
}

/// The client session state machine (see the module documentation).
pub struct ClientSession {
    config: SessionConfig,
    keys: KeySource,
    key: SessionKey,
    verifier: DeliveryVerifier,
    /// The session id: provisional (from the open result) until `confirmed`.
    client_id: Option<ClientId>,
    /// A certified `Opened` bound `client_id` to our key at least once.
    confirmed: bool,
    /// Next outbound (canister -> client) sequence number expected; also our ack.
    next_expected: u64,
    last_ack_signed: u64,
    /// Our next inbound sequence number.
    next_seq: u64,
    /// Own messages below this are certified accepted.
    confirmed_inbound: u64,
    /// Signed messages not yet known to be accepted, in sequence order.
    unconfirmed: VecDeque<ClientMessage>,
    last_open_ts: u64,
    last_message_signed_at: u64,
    limits: Option<CertifiedLimits>,
    resume_refusals: u32,
    wait_until: Option<u64>,
    stopped: bool,
    conn: Option<Conn>,
    prover: Option<Prover>,
    /// The proof for the current key and its principal (made when the key is made).
    proof: Option<(crate::identity::IdentityProof, Principal)>,
}

impl core::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientSession")
            .field("client_id", &self.client_id)
            .field("confirmed", &self.confirmed)
            .field("next_expected", &self.next_expected)
            .field("next_seq", &self.next_seq)
            .field("unconfirmed", &self.unconfirmed.len())
            .finish_non_exhaustive()
    }
}

/// The error with its peer-supplied text bounded.
pub fn bounded_ws_error(error: WsError) -> WsError {
    let b = |s: String| {
        if s.len() > MAX_CLAIM_TEXT_BYTES {
            bounded(&s, MAX_CLAIM_TEXT_BYTES)
        } else {
            s
        }
    };
    match error {
        WsError::Rejected(s) => WsError::Rejected(b(s)),
        WsError::DecodeError(s) => WsError::DecodeError(b(s)),
        WsError::LimitReached(s) => WsError::LimitReached(b(s)),
        WsError::InvalidArgument(s) => WsError::InvalidArgument(b(s)),
        WsError::OpenRejected { client_id, reason } => WsError::OpenRejected {
            client_id,
            reason: b(reason),
        },
        other => other,
    }
}

/// A resume refusal that claims the session is gone (as opposed to "try again").
fn claims_gone(error: &WsError) -> bool {
    matches!(
        error,
        WsError::UnknownClient(_)
            | WsError::InvalidResume
            | WsError::ResumeUnavailable { .. }
            | WsError::Closed
    )
}

impl ClientSession {
    /// A machine with no session yet (the first connection opens one with a key from `keys`).
    pub fn new(config: SessionConfig, mut keys: KeySource) -> Self {
        let key = SessionKey::from_seed(keys());
        let verifier = DeliveryVerifier {
            root_key_der: config.root_key_der.clone(),
            canister_id: config.canister_id,
            client_id: 0,
            max_certificate_age_ns: config.max_certificate_age_ns,
        };
        ClientSession {
            config,
            keys,
            key,
            verifier,
            client_id: None,
            confirmed: false,
            next_expected: 0,
            last_ack_signed: 0,
            next_seq: 0,
            confirmed_inbound: 0,
            unconfirmed: VecDeque::new(),
            last_open_ts: 0,
            last_message_signed_at: 0,
            limits: None,
            resume_refusals: 0,
            wait_until: None,
            stopped: false,
            conn: None,
            prover: None,
            proof: None,
        }
    }

    /// Issue 10: sessions of this client prove an IC identity: `prover` makes the proof for
    /// each session key (a new session after a lost one gets a new key and a new proof). New
    /// opens carry it, resumes do not (the canister keeps the bound principal), and every
    /// certified `Opened` must name the proof's principal.
    pub fn with_identity(mut self, mut prover: Prover) -> Self {
        self.proof = Some(self.make_proof(&mut prover));
        self.prover = Some(prover);
        self
    }

    fn make_proof(&self, prover: &mut Prover) -> (crate::identity::IdentityProof, Principal) {
        let mut key = [0u8; 32];
        let pk = self.key.public_key();
        if let Some(src) = pk.get(..32) {
            key.copy_from_slice(src);
        }
        let proof = prover(&key);
        let principal = crate::identity::principal_of(&proof.sender_pubkey);
        (proof, principal)
    }

    /// The principal this client proves (none: anonymous).
    pub fn principal(&self) -> Option<Principal> {
        self.proof.as_ref().map(|(_, p)| *p)
    }

    /// The session's client id once certified (`None` before the first `Opened` and while a
    /// lost session is replaced).
    pub fn client_id(&self) -> Option<ClientId> {
        self.client_id.filter(|_| self.confirmed)
    }

    /// The session key's public half.
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key()
    }

    /// Verified messages received in the session (= the next expected outbound seq).
    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// True when own messages are written at once (this connection's `Opened` verified).
    pub fn is_ready(&self) -> bool {
        matches!(
            self.conn,
            Some(Conn {
                phase: Phase::Ready,
                ..
            })
        )
    }

    /// True after a terminal outcome.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The limits the canister certified last.
    pub fn limits(&self) -> Option<CertifiedLimits> {
        self.limits
    }

    /// Own messages signed and not yet certified accepted.
    pub fn unconfirmed(&self) -> usize {
        self.unconfirmed.len()
    }

    /// When the client's own clock proves the current session expired: nothing it signed
    /// can keep the session alive past this time (docs/protocol.md). An open is accepted at
    /// most `clock_skew` after its timestamp; a signed message a gateway withholds can still
    /// be accepted later, each one extending the session by at most one idle timeout, so every
    /// own message not certified accepted adds one. `None` before any certified limits.
    pub fn expiry_proven_at(&self) -> Option<u64> {
        let idle = self.limits?.idle_timeout_ns;
        let unaccepted = self.next_seq.saturating_sub(self.confirmed_inbound);
        let base = self
            .last_open_ts
            .max(self.last_message_signed_at)
            .saturating_add(self.config.clock_skew_ns);
        Some(base.saturating_add(idle.saturating_mul(unaccepted.saturating_add(1))))
    }

    /// The earliest time at which [`Self::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let conn = self.conn.as_ref()?;
        Some(match conn.phase {
            Phase::Ready => conn
                .last_sent
                .saturating_add(self.config.keepalive_interval_ns),
            _ => conn
                .connected_at
                .saturating_add(self.config.open_timeout_ns),
        })
    }

    /// A new connection is established (WebSocket handshake done): the gateway's `Hello`
    /// comes next. A session whose expiry the own clock now proves is given up here.
    pub fn connected(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.stopped {
            out.push(Action::Close {
                error: Failure::Protocol("the client stopped".into()),
                next: Next::Stop,
            });
            return out;
        }
        if let Some(until) = self.wait_until {
            let proven = self.expiry_proven_at().unwrap_or(until).max(until);
            if now >= proven {
                let client_id = self.client_id.unwrap_or_default();
                let dropped = self.lose_session();
                out.push(Action::Emit(Event::SessionLost {
                    client_id,
                    dropped_outgoing: dropped,
                }));
                if self.config.on_session_lost == OnSessionLost::Stop {
                    self.stopped = true;
                    out.push(Action::Close {
                        error: Failure::SessionExpired { client_id },
                        next: Next::Stop,
                    });
                    return out;
                }
            }
        }
        self.conn = Some(Conn {
            phase: Phase::Hello,
            connected_at: now,
            last_sent: now,
            early: Vec::new(),
        });
        out
    }

    /// The transport ended (or could not be established): what next.
    pub fn connection_lost(&mut self, error: Failure, now: u64) -> Vec<Action> {
        vec![self.fail(error, false, now)]
    }

    /// Signs an own message. Written at once when ready, else kept (and re-sent after the next
    /// certified `Opened`). Returns its inbound sequence number.
    pub fn send(&mut self, kind: MessageKind, now: u64) -> Result<(u64, Vec<Action>), SendError> {
        if self.stopped {
            return Err(SendError::Stopped);
        }
        if !self.confirmed || self.wait_until.is_some() {
            return Err(SendError::NoSession);
        }
        if let (MessageKind::App(payload), Some(limits)) = (&kind, self.limits) {
            let size = payload.len() as u64;
            if size > limits.max_inbound_payload_bytes {
                return Err(SendError::TooLarge {
                    size,
                    limit: limits.max_inbound_payload_bytes,
                });
            }
        }
        let msg = self.sign(kind, now).ok_or(SendError::NoSession)?;
        let seq = msg.seq;
        let mut out = Vec::new();
        if self.is_ready() {
            self.write(ClientFrame::Message(msg), now, &mut out);
        }
        Ok((seq, out))
    }

    /// Time passed: open timeout, keep-alive.
    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(deadline) = self.next_deadline() else {
            return out;
        };
        if now < deadline {
            return out;
        }
        if self.is_ready() {
            if let Some(m) = self.sign(MessageKind::KeepAlive, now) {
                self.write(ClientFrame::Message(m), now, &mut out);
            }
            return out;
        }
        let step = match self.conn.as_ref().map(|c| &c.phase) {
            Some(Phase::Hello) => "the gateway's Hello",
            Some(Phase::OpenResult(_)) => "the open result",
            Some(Phase::Confirming {
                claim: Some(WsError::OpenRejected { .. }),
                ..
            }) => "the certified OpenRejected",
            Some(Phase::Confirming {
                claim: Some(WsError::Closed),
                ..
            }) => "the certified Closed",
            _ => "the certified Opened",
        };
        out.push(self.fail(Failure::Timeout(step), false, now));
        out
    }

    /// A frame from the gateway.
    pub fn frame(&mut self, frame: GatewayFrame, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.conn.is_none() {
            return out;
        }
        self.on_frame(frame, now, &mut out);
        out
    }

    fn on_frame(&mut self, frame: GatewayFrame, now: u64, out: &mut Vec<Action>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match (frame, &conn.phase) {
            (
                GatewayFrame::Hello {
                    gateway,
                    protocol_version,
                },
                Phase::Hello,
            ) => {
                if protocol_version != PROTOCOL_VERSION {
                    let e = Failure::UnsupportedVersion {
                        got: protocol_version,
                        supported: PROTOCOL_VERSION,
                    };
                    out.push(self.fail(e, false, now));
                    return;
                }
                let open = self.open_frame(gateway, now);
                self.write(open, now, out);
            }
            (GatewayFrame::OpenResult(result), Phase::OpenResult(pending)) => {
                let pending = *pending;
                self.on_open_result(result, pending, now, out);
            }
            (
                GatewayFrame::Messages {
                    messages,
                    certificate,
                    tree,
                },
                Phase::OpenResult(_),
            ) => {
                // A gateway may deliver certified frames before relaying the open's result:
                // hold them (bounded) until the client id is known.
                if conn.early.len() >= MAX_EARLY_FRAMES {
                    let e = Failure::Protocol("too many frames before the open result".into());
                    out.push(self.fail(e, false, now));
                    return;
                }
                conn.early.push(EarlyFrame {
                    messages,
                    certificate,
                    tree,
                });
            }
            (
                GatewayFrame::Messages {
                    messages,
                    certificate,
                    tree,
                },
                Phase::Confirming { .. } | Phase::Ready,
            ) => self.on_messages(&messages, &certificate, &tree, now, out),
            (
                GatewayFrame::MessageError { seq, error },
                Phase::Confirming { .. } | Phase::Ready,
            ) => {
                // Uncertified. For Rejected / DecodeError the certified MessageRejected comes
                // (a version-2 gateway does not even send this); any other error means the
                // message was not accepted: resume elsewhere and re-send from the certified
                // next_inbound_seq. Never drop the message on this word.
                let claim = Claim::MessageError {
                    seq,
                    error: bounded_ws_error(error),
                };
                out.push(Action::Emit(Event::Unverified(claim.clone())));
                out.push(self.fail(Failure::Claim(claim), false, now));
            }
            (frame, _) => {
                let name = match frame {
                    GatewayFrame::Hello { .. } => "Hello",
                    GatewayFrame::OpenResult(_) => "OpenResult",
                    GatewayFrame::Messages { .. } => "Messages",
                    GatewayFrame::MessageError { .. } => "MessageError",
                };
                let e = Failure::Protocol(format!("unexpected frame {name}"));
                out.push(self.fail(e, false, now));
            }
        }
    }

    fn open_frame(&mut self, gateway: Principal, now: u64) -> ClientFrame {
        // Open timestamps strictly increase per key, or the canister answers StaleOpen.
        let timestamp_ns = now.max(self.last_open_ts.saturating_add(1));
        self.last_open_ts = timestamp_ns;
        let resume = self
            .client_id
            .filter(|_| self.confirmed)
            .map(|client_id| ResumeFrom {
                client_id,
                next_outbound_seq: self.next_expected,
            });
        let mut request = OpenRequest {
            client_key: self.key.public_key(),
            gateway,
            timestamp_ns,
            resume,
            args: if resume.is_some() {
                Vec::new()
            } else {
                self.config.open_args.clone()
            },
            signature: Vec::new(),
            identity: if resume.is_some() {
                None
            } else {
                self.proof.as_ref().map(|(p, _)| p.clone())
            },
        };
        self.key.sign_open(&self.config.canister_id, &mut request);
        if let Some(conn) = self.conn.as_mut() {
            conn.phase = Phase::OpenResult(PendingOpen {
                timestamp_ns,
                resume: resume.is_some(),
            });
        }
        ClientFrame::Open {
            canister_id: self.config.canister_id,
            request,
        }
    }

    fn on_open_result(
        &mut self,
        result: Result<crate::types::OpenOk, WsError>,
        pending: PendingOpen,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let claim = match result {
            Ok(ok) => {
                if pending.resume && self.client_id != Some(ok.client_id) {
                    let e = Failure::Protocol(format!(
                        "resume of client {} answered with client {}",
                        self.client_id.unwrap_or_default(),
                        ok.client_id
                    ));
                    out.push(self.fail(e, false, now));
                    return;
                }
                if !pending.resume {
                    self.client_id = Some(ok.client_id);
                }
                None
            }
            Err(error) => {
                let error = bounded_ws_error(error);
                out.push(Action::Emit(Event::Unverified(Claim::OpenError(
                    error.clone(),
                ))));
                match (&error, pending.resume) {
                    // The certified refusal is seq 0 of the named session: wait for it.
                    (WsError::OpenRejected { client_id, .. }, false) => {
                        self.client_id = Some(*client_id);
                    }
                    // The certified re-delivered `Closed` comes: wait for it.
                    (WsError::Closed, true) => {}
                    _ => {
                        let gone = pending.resume && claims_gone(&error);
                        out.push(self.fail(Failure::Claim(Claim::OpenError(error)), gone, now));
                        return;
                    }
                }
                Some(error)
            }
        };
        if !pending.resume {
            // A new session: its stream starts at seq 0 of the (provisional) id.
            self.next_expected = 0;
            self.last_ack_signed = 0;
        }
        self.verifier.client_id = self.client_id.unwrap_or_default();
        let early = match self.conn.as_mut() {
            Some(conn) => {
                conn.phase = Phase::Confirming { pending, claim };
                std::mem::take(&mut conn.early)
            }
            None => return,
        };
        for f in early {
            if self.conn.is_none() {
                return;
            }
            self.on_messages(&f.messages, &f.certificate, &f.tree, now, out);
        }
    }

    fn on_messages(
        &mut self,
        messages: &[OutboundMessage],
        certificate: &[u8],
        tree: &[u8],
        now: u64,
        out: &mut Vec<Action>,
    ) {
        match self.interpret(messages, certificate, tree, now, out) {
            Ok(()) => {}
            Err(e) => out.push(self.fail(e, false, now)),
        }
    }

    /// Checks one frame (1-6) and applies it; on error nothing changes.
    fn interpret(
        &mut self,
        messages: &[OutboundMessage],
        certificate: &[u8],
        tree: &[u8],
        now: u64,
        out: &mut Vec<Action>,
    ) -> Result<(), Failure> {
        let pending = match self.conn.as_ref().map(|c| &c.phase) {
            Some(Phase::Confirming { pending, .. }) => Some(*pending),
            Some(Phase::Ready) => None,
            _ => return Err(Failure::Protocol("Messages before the open result".into())),
        };
        let client_id = self.client_id.unwrap_or_default();
        let verified =
            self.verifier
                .verify(messages, certificate, tree, self.next_expected, now)?;
        let own_key = self.key.public_key();

        // Check 6 and interpretation, without touching state until everything passed.
        let mut pending = pending;
        let mut events = Vec::new();
        let mut opened: Option<(u64, CertifiedLimits)> = None;
        let mut rejected_upto: Option<u64> = None;
        let mut end: Option<Failure> = None;
        for m in &verified {
            if end.is_some() {
                return Err(Failure::Protocol(format!(
                    "message {} after the session's end",
                    m.seq
                )));
            }
            let new_session = pending.is_some_and(|p| !p.resume);
            match &m.content.body {
                OutboundBody::Opened {
                    client_key,
                    open_timestamp_ns,
                    next_inbound_seq,
                    resumed,
                    max_inbound_payload_bytes,
                    idle_timeout_ns,
                    principal,
                } => {
                    let p = pending.ok_or(BindingError::UnexpectedOpened { seq: m.seq })?;
                    if *client_key != own_key {
                        return Err(BindingError::WrongKey { seq: m.seq }.into());
                    }
                    let expected = self.principal();
                    if *principal != expected {
                        return Err(BindingError::WrongPrincipal {
                            seq: m.seq,
                            expected,
                            got: *principal,
                        }
                        .into());
                    }
                    if p.resume && *open_timestamp_ns < p.timestamp_ns {
                        // The confirmation of an earlier open of ours whose connection died
                        // before it arrived: certified history, nothing to do.
                        continue;
                    }
                    if *open_timestamp_ns != p.timestamp_ns {
                        return Err(BindingError::WrongOpenTimestamp {
                            seq: m.seq,
                            expected: p.timestamp_ns,
                            got: *open_timestamp_ns,
                        }
                        .into());
                    }
                    if *resumed != p.resume {
                        return Err(BindingError::WrongResumeFlag {
                            seq: m.seq,
                            expected: p.resume,
                            got: *resumed,
                        }
                        .into());
                    }
                    pending = None;
                    opened = Some((
                        *next_inbound_seq,
                        CertifiedLimits {
                            max_inbound_payload_bytes: *max_inbound_payload_bytes,
                            idle_timeout_ns: *idle_timeout_ns,
                        },
                    ));
                    events.push(Event::Opened {
                        client_id,
                        resumed: *resumed,
                        next_inbound_seq: *next_inbound_seq,
                        resent: 0,
                    });
                }
                OutboundBody::OpenRejected {
                    client_key,
                    open_timestamp_ns,
                    error,
                } => {
                    let p = match pending {
                        Some(p) if !p.resume && m.seq == 0 => p,
                        _ => return Err(BindingError::UnexpectedOpenRejected { seq: m.seq }.into()),
                    };
                    if *client_key != own_key {
                        return Err(BindingError::WrongKey { seq: m.seq }.into());
                    }
                    if *open_timestamp_ns != p.timestamp_ns {
                        return Err(BindingError::WrongOpenTimestamp {
                            seq: m.seq,
                            expected: p.timestamp_ns,
                            got: *open_timestamp_ns,
                        }
                        .into());
                    }
                    events.push(Event::OpenRejected {
                        client_id,
                        error: error.clone(),
                    });
                    end = Some(Failure::OpenRejected {
                        client_id,
                        error: error.clone(),
                    });
                }
                _ if new_session => {
                    return Err(BindingError::NotOpenedFirst { seq: m.seq }.into());
                }
                OutboundBody::App { topic, payload } => events.push(Event::Message {
                    seq: m.seq,
                    timestamp_ns: m.content.timestamp_ns,
                    topic: topic.clone(),
                    payload: payload.clone(),
                }),
                OutboundBody::MessageRejected { inbound_seq, error } => {
                    if *inbound_seq >= self.next_seq {
                        return Err(BindingError::InboundBeyondSent {
                            certified: inbound_seq.saturating_add(1),
                            sent: self.next_seq,
                        }
                        .into());
                    }
                    rejected_upto = Some(rejected_upto.unwrap_or(0).max(*inbound_seq));
                    events.push(Event::MessageRejected {
                        seq: *inbound_seq,
                        error: error.clone(),
                    });
                }
                OutboundBody::Closed { reason } => {
                    events.push(Event::Closed(reason.clone()));
                    end = Some(Failure::SessionClosed(reason.clone()));
                }
            }
        }

        let mut lost = None;
        if let Some((k, _)) = opened {
            if k > self.next_seq {
                return Err(BindingError::InboundBeyondSent {
                    certified: k,
                    sent: self.next_seq,
                }
                .into());
            }
            let first_kept = self
                .unconfirmed
                .iter()
                .find(|m| m.seq >= k)
                .map_or(self.next_seq, |m| m.seq);
            if first_kept > k {
                lost = Some(Failure::OutboundLost {
                    from: k,
                    to: first_kept,
                });
            }
        }

        // Commit.
        self.next_expected = self.next_expected.saturating_add(verified.len() as u64);
        if let Some(upto) = rejected_upto {
            self.confirm_upto(upto.saturating_add(1));
        }
        let mut resend = Vec::new();
        if let Some((k, limits)) = opened {
            self.limits = Some(limits);
            self.confirmed = true;
            self.confirm_upto(k);
            self.resume_refusals = 0;
            self.wait_until = None;
            if lost.is_none() {
                resend = self.unconfirmed.iter().cloned().collect();
                for e in &mut events {
                    if let Event::Opened { resent, .. } = e {
                        *resent = resend.len();
                    }
                }
                if let Some(conn) = self.conn.as_mut() {
                    conn.phase = Phase::Ready;
                }
            }
        }
        out.extend(events.into_iter().map(Action::Emit));
        if let Some(e) = lost {
            self.give_up_lost(e, out);
            return Ok(());
        }
        for m in resend {
            self.write(ClientFrame::Message(m), now, out);
        }
        if let Some(e) = end {
            self.stopped = true;
            self.conn = None;
            out.push(Action::Close {
                error: e,
                next: Next::Stop,
            });
            return Ok(());
        }
        if self.is_ready()
            && self.next_expected.saturating_sub(self.last_ack_signed) > self.config.ack_threshold
        {
            if let Some(m) = self.sign(MessageKind::KeepAlive, now) {
                self.write(ClientFrame::Message(m), now, out);
            }
        }
        Ok(())
    }

    /// Own messages below `k` are certified accepted.
    fn confirm_upto(&mut self, k: u64) {
        self.confirmed_inbound = self.confirmed_inbound.max(k);
        while self.unconfirmed.front().is_some_and(|m| m.seq < k) {
            self.unconfirmed.pop_front();
        }
    }

    fn sign(&mut self, kind: MessageKind, now: u64) -> Option<ClientMessage> {
        let client_id = self.client_id.filter(|_| self.confirmed)?;
        let mut msg = ClientMessage {
            client_id,
            seq: self.next_seq,
            ack: self.next_expected,
            kind,
            signature: Vec::new(),
        };
        self.key.sign_message(&self.config.canister_id, &mut msg);
        self.next_seq = self.next_seq.saturating_add(1);
        self.last_ack_signed = self.next_expected;
        self.last_message_signed_at = self.last_message_signed_at.max(now);
        self.unconfirmed.push_back(msg.clone());
        if self.unconfirmed.len() > self.config.resend_buffer {
            // Oldest first: it has had the longest time to be accepted. If it was not, the
            // next resume's certified Opened shows it (OutboundLost).
            self.unconfirmed.pop_front();
        }
        Some(msg)
    }

    fn write(&mut self, frame: ClientFrame, now: u64, out: &mut Vec<Action>) {
        if let Some(conn) = self.conn.as_mut() {
            conn.last_sent = now;
        }
        out.push(Action::Write(frame));
    }

    /// Ends the current connection after a failure; decides what comes next.
    fn fail(&mut self, error: Failure, gone_claim: bool, now: u64) -> Action {
        let resuming = matches!(
            self.conn.as_ref().map(|c| &c.phase),
            Some(Phase::OpenResult(PendingOpen { resume: true, .. }))
                | Some(Phase::Confirming {
                    pending: PendingOpen { resume: true, .. },
                    ..
                })
        );
        let closed_claim = matches!(
            self.conn.as_ref().map(|c| &c.phase),
            Some(Phase::Confirming {
                claim: Some(WsError::Closed),
                ..
            })
        );
        let new_open_unconfirmed = matches!(
            self.conn.as_ref().map(|c| &c.phase),
            Some(Phase::OpenResult(PendingOpen { resume: false, .. }))
                | Some(Phase::Confirming {
                    pending: PendingOpen { resume: false, .. },
                    ..
                })
        );
        self.conn = None;
        if new_open_unconfirmed && !self.confirmed {
            // The id was only the gateway's claim: forget it, the next open is a new session
            // again (with the same key, a newer timestamp).
            self.client_id = None;
        }
        if self.stopped {
            return Action::Close {
                error,
                next: Next::Stop,
            };
        }
        if resuming && (gone_claim || closed_claim) {
            self.resume_refusals = self.resume_refusals.saturating_add(1);
        }
        if let Some(until) = self.wait_until {
            return Action::Close {
                error,
                next: Next::WaitUntil(until),
            };
        }
        if self.confirmed && self.resume_refusals >= self.config.resume_refusals_before_wait.max(1)
        {
            if let Some(until) = self.expiry_proven_at() {
                self.wait_until = Some(until);
                let next = if now >= until {
                    Next::ReconnectNow
                } else {
                    Next::WaitUntil(until)
                };
                return Action::Close { error, next };
            }
        }
        Action::Close {
            error,
            next: Next::Reconnect,
        }
    }

    /// The certified `Opened` shows own messages lost from the resend queue: the session
    /// cannot go on (the canister waits for a message this client no longer has).
    fn give_up_lost(&mut self, error: Failure, out: &mut Vec<Action>) {
        let client_id = self.client_id.unwrap_or_default();
        let dropped = self.lose_session();
        self.conn = None;
        out.push(Action::Emit(Event::SessionLost {
            client_id,
            dropped_outgoing: dropped,
        }));
        let next = if self.config.on_session_lost == OnSessionLost::Stop {
            self.stopped = true;
            Next::Stop
        } else {
            Next::ReconnectNow
        };
        out.push(Action::Close { error, next });
    }

    /// Abandons the session: a new key, nothing signed. Returns the own messages dropped.
    fn lose_session(&mut self) -> u64 {
        let dropped = self.next_seq.saturating_sub(self.confirmed_inbound);
        self.key = SessionKey::from_seed((self.keys)());
        if let Some(mut prover) = self.prover.take() {
            self.proof = Some(self.make_proof(&mut prover));
            self.prover = Some(prover);
        }
        self.client_id = None;
        self.confirmed = false;
        self.next_expected = 0;
        self.last_ack_signed = 0;
        self.next_seq = 0;
        self.confirmed_inbound = 0;
        self.unconfirmed.clear();
        self.last_open_ts = 0;
        self.last_message_signed_at = 0;
        self.resume_refusals = 0;
        self.wait_until = None;
        dropped
    }
}
