//! The session state machine, free of I/O: what to put in an open, what a `Messages` frame
//! means after every check, which own messages must be re-sent. The connection driver feeds it
//! frames; unit tests feed it frames directly.

use std::collections::VecDeque;

use candid::Principal;
use ic_ws_protocol::verify::DeliveryVerifier;
use ic_ws_protocol::{
    ClientFrame, ClientId, ClientMessage, CloseReason, MessageKind, OpenRequest, OpenResult,
    OutboundBody, OutboundMessage, ResumeFrom, SessionKey, WsError,
};

use crate::{BindingError, ClientConfig, ClientError, Event, Message};

/// A fresh session key from the operating system's CSPRNG.
pub(crate) fn fresh_key() -> SessionKey {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    SessionKey::from_seed(seed)
}

/// The open whose certified `Opened` confirmation we are waiting for.
#[derive(Debug, Clone, Copy)]
struct PendingOpen {
    timestamp_ns: u64,
    resume: bool,
}

/// What one verified `Messages` frame produced.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    /// Events for the application, in order.
    pub events: Vec<Event>,
    /// Own messages to (re-)send now, in order (after a certified `Opened`).
    pub resend: Vec<ClientMessage>,
    /// The frame contained this session's certified `Opened`.
    pub opened: bool,
    /// The session ended (certified `Closed`).
    pub closed: Option<CloseReason>,
}

pub(crate) struct Session {
    canister_id: Principal,
    key: SessionKey,
    verifier: DeliveryVerifier,
    client_id: Option<ClientId>,
    /// Next outbound (canister -> client) sequence number expected; also our ack.
    next_expected: u64,
    /// The ack carried by the last message we signed.
    last_ack_signed: u64,
    /// Our next inbound sequence number.
    next_seq: u64,
    /// Signed messages not yet known to be accepted by the canister, in sequence order.
    unconfirmed: VecDeque<ClientMessage>,
    resend_cap: usize,
    pending_open: Option<PendingOpen>,
    last_open_ts: u64,
    ready: bool,
}

impl Session {
    pub(crate) fn new(config: &ClientConfig) -> Self {
        Session {
            canister_id: config.canister_id,
            key: fresh_key(),
            verifier: DeliveryVerifier {
                root_key_der: config.root_key_der.clone(),
                canister_id: config.canister_id,
                client_id: 0,
                max_certificate_age_ns: config.max_certificate_age.as_nanos() as u64,
            },
            client_id: None,
            next_expected: 0,
            last_ack_signed: 0,
            next_seq: 0,
            unconfirmed: VecDeque::new(),
            resend_cap: config.resend_buffer,
            pending_open: None,
            last_open_ts: 0,
            ready: false,
        }
    }

    pub(crate) fn client_id(&self) -> Option<ClientId> {
        self.client_id
    }

    /// True once this connection's `Opened` was verified: own messages may be written.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready
    }

    pub(crate) fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// The signed `Open` frame for `gateway` (new session, or resume of the current one).
    pub(crate) fn open_frame(
        &mut self,
        gateway: Principal,
        args: &[u8],
        now_ns: u64,
    ) -> ClientFrame {
        // Open timestamps must strictly increase per key, or the canister answers StaleOpen.
        let timestamp_ns = now_ns.max(self.last_open_ts.saturating_add(1));
        self.last_open_ts = timestamp_ns;
        let resume = self.client_id.map(|client_id| ResumeFrom {
            client_id,
            next_outbound_seq: self.next_expected,
        });
        let mut request = OpenRequest {
            client_key: self.key.public_key(),
            gateway,
            timestamp_ns,
            resume,
            args: args.to_vec(),
            signature: Vec::new(),
        };
        self.key.sign_open(&self.canister_id, &mut request);
        self.pending_open = Some(PendingOpen {
            timestamp_ns,
            resume: resume.is_some(),
        });
        self.ready = false;
        ClientFrame::Open {
            canister_id: self.canister_id,
            request,
        }
    }

    /// The gateway's (uncertified) answer to our open. The client id of a new session is
    /// taken from it provisionally: the certified `Opened` at seq 0 must then bind it to our key.
    pub(crate) fn on_open_result(&mut self, result: OpenResult) -> Result<(), ClientError> {
        match result {
            Ok(ok) => match self.client_id {
                Some(id) if id != ok.client_id => Err(ClientError::Protocol(format!(
                    "resume of client {id} answered with client {}",
                    ok.client_id
                ))),
                Some(_) => Ok(()),
                None => {
                    self.client_id = Some(ok.client_id);
                    self.verifier.client_id = ok.client_id;
                    self.next_expected = 0;
                    Ok(())
                }
            },
            Err(WsError::ResumeUnavailable { first_available }) => match self.client_id {
                Some(client_id) => Err(ClientError::ResumeUnavailable {
                    client_id,
                    first_available,
                }),
                None => Err(ClientError::OpenRefused(WsError::ResumeUnavailable {
                    first_available,
                })),
            },
            Err(e) => {
                if self.pending_open.is_some_and(|p| !p.resume) {
                    // A refused new session leaves nothing behind.
                    self.client_id = None;
                }
                Err(ClientError::OpenRefused(e))
            }
        }
    }

    /// Checks one `Messages` frame (docs/protocol.md checks 1-6). On error nothing changes.
    ///
    /// Check 6 (the `Opened` binding): a new session's first message (seq 0) must be the
    /// `Opened` of our open (our key, our timestamp, `resumed = false`). On a resume the
    /// canister re-queues every retained message first, which may include `Opened`
    /// confirmations of earlier opens of ours whose connections died before they arrived
    /// (our key, an older timestamp): those are skipped; the resume completes with the
    /// `Opened` carrying our current open's timestamp and `resumed = true`.
    pub(crate) fn on_messages(
        &mut self,
        messages: &[OutboundMessage],
        certificate: &[u8],
        tree: &[u8],
        now_ns: u64,
    ) -> Result<Delivery, ClientError> {
        let Some(client_id) = self.client_id else {
            return Err(ClientError::Protocol(
                "messages before the open result".into(),
            ));
        };
        let verified =
            self.verifier
                .verify(messages, certificate, tree, self.next_expected, now_ns)?;

        // Check 6 and interpretation, without touching state until everything passed.
        let mut pending = self.pending_open;
        let mut delivery = Delivery::default();
        let mut opened_inbound = None;
        for m in &verified {
            if delivery.closed.is_some() {
                return Err(ClientError::Protocol(format!(
                    "message {} after the session's Closed",
                    m.seq
                )));
            }
            match &m.content.body {
                OutboundBody::Opened {
                    client_key,
                    open_timestamp_ns,
                    next_inbound_seq,
                    resumed,
                    ..
                } => {
                    let p = pending.ok_or(BindingError::UnexpectedOpened { seq: m.seq })?;
                    if *client_key != self.key.public_key() {
                        return Err(BindingError::WrongKey { seq: m.seq }.into());
                    }
                    if p.resume && *open_timestamp_ns < p.timestamp_ns {
                        // The confirmation of an earlier open of ours whose connection died
                        // before it arrived: re-queued by this resume like every retained
                        // message. Certified, in sequence, for our key; nothing to do.
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
                    opened_inbound = Some(*next_inbound_seq);
                    delivery.opened = true;
                    delivery.events.push(Event::Opened {
                        client_id,
                        resumed: *resumed,
                        next_inbound_seq: *next_inbound_seq,
                        resent: 0,
                    });
                }
                _ if pending.is_some_and(|p| !p.resume) => {
                    return Err(BindingError::NotOpenedFirst { seq: m.seq }.into());
                }
                OutboundBody::App { topic, payload } => {
                    delivery.events.push(Event::Message(Message {
                        seq: m.seq,
                        timestamp_ns: m.content.timestamp_ns,
                        topic: topic.clone(),
                        value: payload.clone(),
                    }));
                }
                OutboundBody::Closed { reason } => {
                    delivery.closed = Some(reason.clone());
                    delivery.events.push(Event::Closed(reason.clone()));
                }
                // Protocol version 2 bodies: handled by the client state machine (in progress).
                OutboundBody::MessageRejected { inbound_seq, error } => {
                    delivery.events.push(Event::MessageRejected {
                        seq: *inbound_seq,
                        error: error.clone(),
                    });
                }
                OutboundBody::OpenRejected { .. } => {
                    return Err(BindingError::UnexpectedOpened { seq: m.seq }.into());
                }
            }
        }

        let mut confirmed_upto = None;
        if let Some(k) = opened_inbound {
            if k > self.next_seq {
                return Err(BindingError::InboundBeyondSent {
                    certified: k,
                    sent: self.next_seq,
                }
                .into());
            }
            let first_kept = self.unconfirmed.iter().find(|m| m.seq >= k).map(|m| m.seq);
            let first_kept = first_kept.unwrap_or(self.next_seq);
            if first_kept > k {
                return Err(ClientError::OutboundLost {
                    from: k,
                    to: first_kept,
                });
            }
            confirmed_upto = Some(k);
        }

        // Commit.
        self.next_expected = self.next_expected.saturating_add(verified.len() as u64);
        self.pending_open = pending;
        if let Some(k) = confirmed_upto {
            while self.unconfirmed.front().is_some_and(|m| m.seq < k) {
                self.unconfirmed.pop_front();
            }
            delivery.resend = self.unconfirmed.iter().cloned().collect();
            let resent = delivery.resend.len();
            for e in &mut delivery.events {
                if let Event::Opened { resent: r, .. } = e {
                    *r = resent;
                }
            }
            self.ready = true;
        }
        Ok(delivery)
    }

    /// Signs the next own message (with the current ack) and keeps it for re-sending.
    pub(crate) fn sign(&mut self, kind: MessageKind) -> Result<ClientMessage, ClientError> {
        let client_id = self.client_id.ok_or(ClientError::NoSession)?;
        let mut msg = ClientMessage {
            client_id,
            seq: self.next_seq,
            ack: self.next_expected,
            kind,
            signature: Vec::new(),
        };
        self.key.sign_message(&self.canister_id, &mut msg);
        self.next_seq = self.next_seq.saturating_add(1);
        self.last_ack_signed = self.next_expected;
        self.unconfirmed.push_back(msg.clone());
        if self.unconfirmed.len() > self.resend_cap {
            // Oldest first: it has had the longest time to be accepted. If it was not, the
            // next resume reports OutboundLost instead of silently skipping it.
            self.unconfirmed.pop_front();
        }
        Ok(msg)
    }

    /// More received messages are unacknowledged than the threshold allows.
    pub(crate) fn ack_due(&self, threshold: u64) -> bool {
        self.next_expected.saturating_sub(self.last_ack_signed) > threshold
    }

    /// The connection is gone: wait for a new open before writing.
    pub(crate) fn connection_lost(&mut self) {
        self.ready = false;
        self.pending_open = None;
    }

    /// Abandons the current session (it cannot be resumed); returns how many own messages
    /// signed for it are dropped undelivered.
    pub(crate) fn start_over(&mut self) -> usize {
        let dropped = self.unconfirmed.len();
        self.key = fresh_key();
        self.client_id = None;
        self.next_expected = 0;
        self.last_ack_signed = 0;
        self.next_seq = 0;
        self.unconfirmed.clear();
        self.pending_open = None;
        self.last_open_ts = 0;
        self.ready = false;
        dropped
    }
}
