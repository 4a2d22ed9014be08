//! Sessions: open (new and resumed), identity-checked admission, gateway attachment,
//! close and deletion, open-timestamp replay records, and what a client may learn of its session.
//!
//! Methods of [`super::State`] for this flow (the state itself and what every flow shares
//! live in `runtime.rs`).

use super::*;

impl State {
    pub(super) fn touch_activity(&mut self, id: ClientId, rec: &mut ClientRecord, now: u64) {
        self.activity.remove(&(rec.last_activity_ns, id));
        rec.last_activity_ns = now;
        self.activity.insert((now, id));
    }

    /// Removes a session's retained messages from its gateway's delivery log.
    pub(super) fn detach(&mut self, id: ClientId, rec: &mut ClientRecord) {
        if !rec.attached {
            return;
        }
        let _ = id;
        for (_, addr, h) in self.chain(rec) {
            if h.log_idx != NOT_LOGGED {
                self.log.remove(&(rec.gateway, h.log_idx));
                self.arena
                    .write(addr + CHUNK_LOG_IDX, &NOT_LOGGED.to_be_bytes());
            }
        }
        self.adjust_gateway_sessions(rec.gateway, -1);
        rec.attached = false;
    }

    /// Attaches a detached session to gateway `gw` and logs its retained messages for it.
    pub(super) fn attach(&mut self, id: ClientId, rec: &mut ClientRecord, gw: u32) {
        rec.gateway = gw;
        rec.attached = true;
        self.adjust_gateway_sessions(gw, 1);
        for (seq, addr, _) in self.chain(rec) {
            let idx = self.take_log_idx();
            self.log.insert(
                (gw, idx),
                LogRef {
                    client: id,
                    seq,
                    addr,
                },
            );
            self.arena.write(addr + CHUNK_LOG_IDX, &idx.to_be_bytes());
        }
    }

    /// Closes a session: queues the certified `Closed` message (beyond the limits: it is the
    /// last one), drops its subscriptions, schedules `on_close` and its deletion. Returns
    /// false if it was already closed (or unknown).
    pub(crate) fn close_session(&mut self, id: ClientId, reason: CloseReason, now: u64) -> bool {
        let Some(mut rec) = self.clients.get(&id) else {
            return false;
        };
        if rec.closed {
            return false;
        }
        let reason_bytes = ic_ws_protocol::encode(&reason).unwrap_or_default();
        let content = encode_content(now, OutboundBody::Closed { reason });
        let hash = content_hash(&content);
        // Only fails when stable memory cannot grow: the session still closes (its clients
        // then learn it from `UnknownClient`/`Closed` errors instead of the message).
        let _ = self.enqueue(id, &mut rec, OutBody::Control { content }, hash);
        rec.closed = true;
        rec.closed_at_ns = now;
        self.activity.remove(&(rec.last_activity_ns, id));
        self.closed.insert(pair_key(now, id), ());
        self.unsubscribe_all(id);
        self.identity_closed(id);
        self.pending_close.insert(id, reason_bytes);
        self.clients.insert(id, rec);
        true
    }

    /// Deletes every trace of a session (after its retention, or a rejected open).
    pub(super) fn delete_session(&mut self, id: ClientId, now: u64) {
        let Some(mut rec) = self.clients.remove(&id) else {
            return;
        };
        for (seq, addr, h) in self.chain(&rec) {
            self.forget_msg(id, &mut rec, seq, &h);
            self.arena.free(addr);
        }
        self.tree.remove_client(id);
        if rec.attached {
            self.adjust_gateway_sessions(rec.gateway, -1);
        }
        self.activity.remove(&(rec.last_activity_ns, id));
        self.closed.remove(&pair_key(rec.closed_at_ns, id));
        self.unsubscribe_all(id);
        self.pending_close.remove(&id);
        self.identity_deleted(id);
        if let Some(mut k) = self.keys.get(&rec.key) {
            k.sessions = k.sessions.saturating_sub(1);
            if k.sessions == 0 && !self.open_ts_replayable(&k, now) {
                self.keys.remove(&rec.key);
            } else {
                // Still replayable: kept (without sessions) until the sweep finds it expired.
                self.keys.insert(rec.key, k);
            }
        }
    }

    /// The key record of `key` (tests).
    #[cfg(test)]
    pub(crate) fn key_record(&self, key: &[u8; 32]) -> Option<KeyRecord> {
        self.keys.get(key)
    }

    /// Whether an open signed with `k.last_open_ts` could still pass the clock-skew check.
    pub(super) fn open_ts_replayable(&self, k: &KeyRecord, now: u64) -> bool {
        k.last_open_ts.saturating_add(self.config.clock_skew_ns) >= now
    }

    /// Records that an open of `key` with timestamp `ts` was decided (accepted or refused
    /// after its signature checked out): the same signed open is `StaleOpen` from now on, so a
    /// gateway cannot replay a refused open once the reason for refusing it is gone.
    pub(super) fn consume_open_ts(&mut self, key: [u8; 32], ts: u64, now: u64) {
        let mut k = self.keys.get(&key).unwrap_or_default();
        k.last_open_ts = k.last_open_ts.max(ts);
        self.keys.insert(key, k);
        if k.sessions == 0 {
            // Each record without sessions pays for the sweep of two: they cannot pile up
            // faster than the sweep goes round.
            self.sweep_keys(2, now);
        }
    }

    /// Deletes key records that hold no session and whose last open can no longer be replayed
    /// (it is outside the clock-skew window). Incremental: looks at `budget` records per call,
    /// continuing where the previous call stopped, so the work per call stays bounded.
    pub(crate) fn sweep_keys(&mut self, budget: usize, now: u64) {
        let mut left = budget;
        // At most one wrap-around per call: from the cursor to the end, then from the start.
        for _ in 0..2 {
            let from = self.key_sweep_from.take();
            let mut last = None;
            let mut expired = Vec::new();
            let range = match from {
                Some(k) => self
                    .keys
                    .range((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded)),
                None => self.keys.range(..),
            };
            for entry in range.take(left) {
                let (key, k) = (*entry.key(), entry.value());
                left -= 1;
                last = Some(key);
                if k.sessions == 0 && !self.open_ts_replayable(&k, now) {
                    expired.push(key);
                }
            }
            for key in expired {
                self.keys.remove(&key);
            }
            if left == 0 {
                // Budget spent before the end: continue after `last` next time.
                self.key_sweep_from = last;
                return;
            }
            // The end was reached: the next round starts from the first key.
            if from.is_none() {
                return;
            }
        }
    }

    /// Takes the next session whose `on_close` is due.
    pub(crate) fn pop_pending_close(&mut self) -> Option<(ClientId, CloseReason)> {
        let (id, bytes) = self.pending_close.pop_first()?;
        let reason =
            ic_ws_protocol::decode(&bytes).unwrap_or(CloseReason::ProtocolError(String::new()));
        Some((id, reason))
    }

    // ---------------------------------------------------------------- open

    /// Every check of an open, without changing anything.
    pub(super) fn check_open(
        &self,
        caller: Principal,
        canister: &Principal,
        open: &OpenRequest,
        now: u64,
    ) -> Result<([u8; 32], identity::VerifiedLinks), WsError> {
        if caller == Principal::anonymous() {
            return Err(WsError::AnonymousGateway);
        }
        if open.gateway != caller {
            return Err(WsError::GatewayMismatch);
        }
        let key: [u8; 32] = open
            .client_key
            .as_slice()
            .try_into()
            .map_err(|_| WsError::MalformedKey)?;
        let links = self.verify_open_signatures(canister, &key, open, now)?;
        if open.timestamp_ns.abs_diff(now) > self.config.clock_skew_ns {
            return Err(WsError::StaleOpen);
        }
        if let Some(k) = self.keys.get(&key) {
            if open.timestamp_ns <= k.last_open_ts {
                return Err(WsError::StaleOpen);
            }
        }
        Ok((key, links))
    }

    pub(super) fn check_gateway_capacity(&self, caller: &Principal) -> Result<(), WsError> {
        let sessions = self.gateways.get(caller).map(|g| g.sessions).unwrap_or(0);
        if sessions >= self.config.max_sessions_per_gateway {
            return Err(WsError::LimitReached(format!(
                "{} sessions on this gateway",
                self.config.max_sessions_per_gateway
            )));
        }
        Ok(())
    }

    /// The canister-wide session cap: many principals acting as gateways at once (Sybil)
    /// cannot open more than `max_sessions` in all, whatever the per-gateway cap.
    pub(super) fn check_canister_capacity(&self) -> Result<(), WsError> {
        let max = self.config.sessions();
        if self.clients.len() >= max {
            return Err(WsError::LimitReached(format!(
                "{max} sessions in this canister"
            )));
        }
        Ok(())
    }

    /// A new session: checks, then creates it with its `Opened` message (seq 0). The caller
    /// runs `on_open` next and calls [`State::abort_new_session`] if it rejects.
    pub(crate) fn open_new(
        &mut self,
        caller: Principal,
        canister: &Principal,
        open: &OpenRequest,
        now: u64,
    ) -> Result<NewSession, WsError> {
        let (key, links) = self.check_open(caller, canister, open, now)?;
        // The proof: verified after the open's own signature (which covers it) and before
        // anything changes; its refusals are pure functions of the signed bytes and the time,
        // so they consume nothing (a replay is refused the same way).
        let identity = self.verify_identity(canister, &key, open, now, &links)?;
        if let Err(e) = self
            .check_identity_policy(identity.as_ref())
            .and_then(|()| self.check_gateway_capacity(&caller))
            .and_then(|()| self.check_canister_capacity())
            .and_then(|()| self.check_gateway_records(&caller))
            .and_then(|()| self.check_room_for_opened(0))
        {
            self.consume_open_ts(key, open.timestamp_ns, now);
            return Err(e);
        }
        let id = self.counters.next_client_id;
        self.counters.next_client_id += 1;
        self.save_counters();
        let gw = self.gateway_or_create(caller);
        let prev_key = self.keys.get(&key);
        let mut k = prev_key.unwrap_or_default();
        k.last_open_ts = open.timestamp_ns;
        k.sessions += 1;
        self.keys.insert(key, k);
        let mut rec = ClientRecord {
            key,
            gateway: gw.id,
            attached: true,
            last_open_ts: open.timestamp_ns,
            opened_at_ns: now,
            last_activity_ns: now,
            ..ClientRecord::default()
        };
        self.adjust_gateway_sessions(gw.id, 1);
        self.activity.insert((now, id));
        if let Some(v) = &identity {
            self.bind_identity(id, v);
        }
        let opened_seq = self.enqueue_opened(id, &mut rec, open.timestamp_ns, false, now);
        self.clients.insert(id, rec);
        Ok(NewSession {
            ok: OpenOk {
                client_id: id,
                next_inbound_seq: 0,
                opened_seq,
            },
            prev_key,
            key,
            open_ts: open.timestamp_ns,
        })
    }

    pub(super) fn enqueue_opened(
        &mut self,
        id: ClientId,
        rec: &mut ClientRecord,
        open_ts: u64,
        resumed: bool,
        now: u64,
    ) -> u64 {
        let content = encode_content(
            now,
            OutboundBody::Opened {
                client_key: rec.key.to_vec(),
                open_timestamp_ns: open_ts,
                next_inbound_seq: rec.next_inbound_seq,
                resumed,
                max_inbound_payload_bytes: self.config.max_inbound_payload_bytes,
                idle_timeout_ns: self.config.idle_timeout_ns,
                principal: self.bound_identity(id).map(|b| b.principal),
            },
        );
        let hash = content_hash(&content);
        let body = OutBody::Control { content };
        let seq = rec.next_outbound_seq;
        // Cannot fail: `check_room_for_opened` made room for this chunk.
        self.enqueue(id, rec, body, hash).unwrap_or(seq)
    }

    /// Makes sure the arena can store an `Opened` message, or a new session's
    /// `OpenRejected` (checked before an open mutates), and the canister-wide message cap
    /// allows it. `releasing`: messages the open releases before it queues (a resume's
    /// acknowledgement).
    pub(super) fn check_room_for_opened(&mut self, releasing: u64) -> Result<(), WsError> {
        self.check_canister_room_after(releasing)
            .map_err(WsError::LimitReached)?;
        if self.arena.reserve(ROOM_FOR_OPEN_OUTCOME) {
            Ok(())
        } else {
            Err(WsError::LimitReached("stable memory exhausted".into()))
        }
    }

    /// `on_open` refused the new session (`error`: `Rejected` or `DecodeError`, bounded by
    /// [`outcome_error`]): the session is kept, closed and never opened, with one certified
    /// message, seq 0 = `OpenRejected { client_key, open_timestamp_ns, error }`, logged for
    /// the calling gateway. Whatever `on_open` did to the session is undone first: its
    /// `Opened` and every message it queued are deleted, its subscriptions dropped, and a
    /// close it made forgotten (`on_close` is never called for a session that never opened).
    /// Like every closed session it is deleted `closed_retention` later; until then it counts
    /// toward the session caps (its gateway's and the canister's). The open's timestamp stays
    /// consumed (a replay is `StaleOpen`). Returns the `ws_open` result:
    /// `OpenRejected { client_id, reason }`, or `Rejected` (the old behaviour: nothing of the
    /// session left) in the one case the refusal cannot be stored (stable memory exhausted).
    pub(crate) fn reject_new_session(
        &mut self,
        new: &NewSession,
        error: WsError,
        now: u64,
    ) -> WsError {
        let id = new.ok.client_id;
        let reason = match &error {
            WsError::Rejected(r) => r.clone(),
            other => other.to_string(),
        };
        let Some(mut rec) = self.clients.get(&id) else {
            return WsError::Rejected(reason);
        };
        for (seq, addr, h) in self.chain(&rec) {
            self.forget_msg(id, &mut rec, seq, &h);
            self.arena.free(addr);
        }
        self.tree.remove_client(id);
        rec.head = 0;
        rec.tail = 0;
        rec.first_retained_seq = 0;
        rec.next_outbound_seq = 0;
        self.unsubscribe_all(id);
        self.pending_close.remove(&id);
        self.activity.remove(&(rec.last_activity_ns, id));
        if rec.closed {
            self.closed.remove(&pair_key(rec.closed_at_ns, id));
        }
        rec.closed = false;
        let content = encode_content(
            now,
            OutboundBody::OpenRejected {
                client_key: rec.key.to_vec(),
                open_timestamp_ns: new.open_ts,
                error,
            },
        );
        let hash = content_hash(&content);
        if self
            .enqueue(id, &mut rec, OutBody::Control { content }, hash)
            .is_err()
        {
            self.clients.insert(id, rec);
            self.abort_new_session(new, now);
            return WsError::Rejected(reason);
        }
        rec.closed = true;
        rec.closed_at_ns = now;
        self.closed.insert(pair_key(now, id), ());
        self.identity_closed(id);
        self.clients.insert(id, rec);
        WsError::OpenRejected {
            client_id: id,
            reason,
        }
    }

    /// Undoes [`State::open_new`] after `on_open` rejected (the client id stays consumed),
    /// except that the open's timestamp stays consumed too: replaying the refused open is
    /// `StaleOpen`.
    pub(crate) fn abort_new_session(&mut self, new: &NewSession, now: u64) {
        let id = new.ok.client_id;
        self.delete_session(id, now);
        match new.prev_key {
            Some(k) => {
                self.keys.insert(new.key, k);
            }
            None => {
                self.keys.remove(&new.key);
            }
        }
        self.consume_open_ts(new.key, new.open_ts, now);
    }

    /// A resume: checks, then re-attaches the session to the caller.
    pub(crate) fn open_resume(
        &mut self,
        caller: Principal,
        canister: &Principal,
        open: &OpenRequest,
        now: u64,
    ) -> Result<OpenOk, WsError> {
        let (key, links) = self.check_open(caller, canister, open, now)?;
        // A resume may carry a fresh proof (a later delegation expiry) for the same principal
        // only; without one the bound principal is kept as it is.
        let identity = self.verify_identity(canister, &key, open, now, &links)?;
        if let (Some(v), Some(r)) = (&identity, open.resume) {
            let owns = self
                .clients
                .get(&r.client_id)
                .is_some_and(|c| c.key == key && !c.closed);
            if owns && self.bound_identity(r.client_id).map(|b| b.principal) != Some(v.principal) {
                return Err(WsError::Identity(
                    ic_ws_protocol::identity::IdentityError::PrincipalMismatch,
                ));
            }
        }
        let result = self.resume_checked(caller, key, open, now);
        if let (Ok(ok), Some(v)) = (&result, &identity) {
            // Checked above: same principal; only the expiry moves.
            let _ = self.refresh_identity(ok.client_id, v);
        }
        if result.is_err() {
            self.consume_open_ts(key, open.timestamp_ns, now);
        }
        result
    }

    /// [`State::open_resume`] after the open's signature and timestamp checked out.
    pub(super) fn resume_checked(
        &mut self,
        caller: Principal,
        key: [u8; 32],
        open: &OpenRequest,
        now: u64,
    ) -> Result<OpenOk, WsError> {
        let Some(resume) = open.resume else {
            return Err(WsError::InvalidArgument("not a resume".into()));
        };
        let id = resume.client_id;
        let mut rec = self.clients.get(&id).ok_or(WsError::UnknownClient(id))?;
        if rec.key != key {
            return Err(WsError::InvalidResume);
        }
        if resume.next_outbound_seq > rec.next_outbound_seq {
            return Err(WsError::InvalidResume);
        }
        if resume.next_outbound_seq < rec.first_retained_seq {
            return Err(WsError::ResumeUnavailable {
                first_available: rec.first_retained_seq,
            });
        }
        let same_gateway = rec.attached && self.gateway_principal(rec.gateway) == caller;
        if !same_gateway {
            self.check_gateway_capacity(&caller)?;
            self.check_gateway_records(&caller)?;
        }
        if rec.closed {
            // Closed but not yet deleted, and the key's owner asks: hand it its certified end.
            // Its retained messages from `next_outbound_seq` on (the last is its `Closed`, or
            // the `OpenRejected` of a refused open) are queued again for the caller; the answer
            // stays `Closed` (uncertified: the client believes the certified message).
            self.release(id, &mut rec, resume.next_outbound_seq);
            self.detach(id, &mut rec);
            let gw = self.gateway_or_create(caller);
            self.attach(id, &mut rec, gw.id);
            self.clients.insert(id, rec);
            return Err(WsError::Closed);
        }
        self.check_room_for_opened(
            resume
                .next_outbound_seq
                .saturating_sub(rec.first_retained_seq),
        )?;
        // All checks passed: from here on, mutate.
        self.release(id, &mut rec, resume.next_outbound_seq);
        self.detach(id, &mut rec);
        let gw = self.gateway_or_create(caller);
        self.attach(id, &mut rec, gw.id);
        if let Some(mut k) = self.keys.get(&key) {
            k.last_open_ts = open.timestamp_ns;
            self.keys.insert(key, k);
        }
        rec.last_open_ts = open.timestamp_ns;
        self.touch_activity(id, &mut rec, now);
        let opened_seq = self.enqueue_opened(id, &mut rec, open.timestamp_ns, true, now);
        let next_inbound_seq = rec.next_inbound_seq;
        self.clients.insert(id, rec);
        Ok(OpenOk {
            client_id: id,
            next_inbound_seq,
            opened_seq,
        })
    }

    /// `ws_close` for one client: detaches it from the calling gateway.
    pub(crate) fn gateway_detach(
        &mut self,
        caller: Principal,
        id: ClientId,
    ) -> Result<(), WsError> {
        let mut rec = self.clients.get(&id).ok_or(WsError::UnknownClient(id))?;
        if !rec.attached || self.gateway_id(&caller) != Some(rec.gateway) {
            return Err(WsError::WrongGateway);
        }
        self.detach(id, &mut rec);
        self.clients.insert(id, rec);
        Ok(())
    }

    // ---------------------------------------------------------------- introspection

    pub(crate) fn info(&self, id: ClientId, rec: &ClientRecord) -> ClientInfo {
        ClientInfo {
            id,
            key: rec.key.to_vec(),
            gateway: self.gateway_principal(rec.gateway),
            attached: rec.attached,
            open: !rec.closed,
            opened_at_ns: rec.opened_at_ns,
            last_activity_ns: rec.last_activity_ns,
            next_inbound_seq: rec.next_inbound_seq,
            next_outbound_seq: rec.next_outbound_seq,
            first_retained_seq: rec.first_retained_seq,
            queued_messages: rec.queued_messages,
            queued_bytes: rec.queued_bytes,
            principal: self.bound_identity(id).map(|b| b.principal),
        }
    }
}
