//! Inbound: client messages checked before the handler runs (signature batch, sequence) and
//! accepted or refused with a certified outcome.
//!
//! Methods of [`super::State`] for this flow (the state itself and what every flow shares
//! live in `runtime.rs`).

use super::*;

impl State {
    /// The handler refused accepted message `inbound_seq` of session `id` (`error`:
    /// `Rejected` or `DecodeError`, bounded by [`outcome_error`]): queues the certified
    /// `MessageRejected { inbound_seq, error }`. It is a message like any other: past the
    /// session's queue limits the overflow policy applies (`Close`: the session closes with
    /// `QueueOverflow`, certified; `Reject`: the refusal is not queued and the client only
    /// learns, from a later `Opened`'s `next_inbound_seq`, that the message was consumed). A
    /// session the handler closed gets nothing after its `Closed`.
    pub(crate) fn queue_message_rejected(
        &mut self,
        id: ClientId,
        inbound_seq: u64,
        error: WsError,
        now: u64,
    ) {
        let Some(mut rec) = self.clients.get(&id) else {
            return;
        };
        if rec.closed {
            return;
        }
        let content = encode_content(now, OutboundBody::MessageRejected { inbound_seq, error });
        if !self.fits(&rec, content.len() as u64) {
            let _ = self.overflow(id, now);
            return;
        }
        let hash = content_hash(&content);
        if self
            .enqueue(id, &mut rec, OutBody::Control { content }, hash)
            .is_ok()
        {
            self.clients.insert(id, rec);
        }
    }

    // ---------------------------------------------------------------- inbound

    /// Batch verification for the next entries of a `ws_message` call (their signatures are
    /// then not verified again by [`State::accept_message`]): the entries that would reach
    /// their signature check now (known session, not closed, attached to the caller, payload
    /// within bounds) are verified together. Returns, per entry, the key its signature was
    /// found valid under (`None`: not known valid, verified alone when it is processed), and
    /// whether the batch held (`false` when an entry failed the batch equation).
    /// Pure: changes nothing but the decoded-key cache.
    pub(crate) fn preverify_messages(
        &self,
        caller: Principal,
        canister: &Principal,
        msgs: &[ClientMessage],
    ) -> (Vec<Option<[u8; 32]>>, bool) {
        let gateway = self.gateway_id(&caller);
        let mut batch = crate::ed25519::OwnedBatch::default();
        let mut member = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let rec = self.clients.get(&msg.client_id).filter(|rec| {
                !rec.closed
                    && rec.attached
                    && Some(rec.gateway) == gateway
                    && match &msg.kind {
                        MessageKind::App(p) => {
                            p.len() as u64 <= self.config.max_inbound_payload_bytes
                        }
                        _ => true,
                    }
            });
            member.push(rec.map(|rec| {
                batch.0.push((
                    rec.key,
                    ic_ws_protocol::signing::message_signing_bytes(canister, msg),
                    msg.signature.clone(),
                ));
                rec.key
            }));
        }
        let verified = batch.verified();
        let held = verified.iter().all(|v| *v);
        let mut verified = verified.into_iter();
        let keys = member
            .into_iter()
            .map(|k| k.filter(|_| verified.next().unwrap_or(false)))
            .collect();
        (keys, held)
    }

    /// Checks one client message and, if it is the next one, accepts it (sequence, activity,
    /// ack). Returns what the endpoint must do next; `Ok(None)` for a duplicate.
    /// `verified_key`: the key [`State::preverify_messages`] found the signature valid under
    /// (the signature is not verified again if that is still the session's key).
    pub(crate) fn accept_message(
        &mut self,
        caller: Principal,
        canister: &Principal,
        msg: ClientMessage,
        verified_key: Option<[u8; 32]>,
        now: u64,
    ) -> Result<Option<Accepted>, WsError> {
        let id = msg.client_id;
        let mut rec = self.clients.get(&id).ok_or(WsError::UnknownClient(id))?;
        if rec.closed {
            return Err(WsError::Closed);
        }
        if !rec.attached || self.gateway_id(&caller) != Some(rec.gateway) {
            return Err(WsError::WrongGateway);
        }
        if let MessageKind::App(p) = &msg.kind {
            let size = p.len() as u64;
            if size > self.config.max_inbound_payload_bytes {
                return Err(WsError::TooLarge {
                    size,
                    limit: self.config.max_inbound_payload_bytes,
                });
            }
        }
        if verified_key != Some(rec.key) {
            crate::ed25519::verify_message(canister, &rec.key, &msg).map_err(sig_error)?;
        }
        if msg.seq < rec.next_inbound_seq {
            return Ok(None);
        }
        if msg.seq > rec.next_inbound_seq {
            return Err(WsError::OutOfSequence {
                expected: rec.next_inbound_seq,
                got: msg.seq,
            });
        }
        if msg.ack > rec.next_outbound_seq {
            return Err(WsError::InvalidArgument(format!(
                "ack {} beyond the next outbound sequence number {}",
                msg.ack, rec.next_outbound_seq
            )));
        }
        rec.next_inbound_seq += 1;
        self.touch_activity(id, &mut rec, now);
        self.release(id, &mut rec, msg.ack);
        self.clients.insert(id, rec);
        Ok(Some(match msg.kind {
            MessageKind::App(payload) => Accepted::App(payload),
            MessageKind::KeepAlive => Accepted::KeepAlive,
            MessageKind::Close { code, reason } => {
                self.close_session(id, CloseReason::ClientClosed { code, reason }, now);
                Accepted::Closed
            }
        }))
    }
}
