//! Outbound: per-client queues in stable memory (enqueue, release on acknowledgement, the
//! byte and count limits) and the certified poll.
//!
//! Methods of [`super::State`] for this flow (the state itself and what every flow shares
//! live in `runtime.rs`).

use super::*;

impl State {
    /// The certified content of a retained message.
    pub(crate) fn content(&self, entry: &OutEntry) -> Vec<u8> {
        match &entry.body {
            OutBody::Shared { pid, .. } => {
                self.shared.get(pid).map(|s| s.content).unwrap_or_default()
            }
            OutBody::App { ts, payload } => ic_ws_protocol::content::app_content(*ts, payload),
            OutBody::Control { content } => content.clone(),
        }
    }

    // ---------------------------------------------------------------- outbound

    /// Appends a message to a session's queue (limits already checked), logs it for the
    /// attached gateway and certifies it. Returns its sequence number; fails only if stable
    /// memory cannot grow (nothing changed then).
    pub(super) fn enqueue(
        &mut self,
        id: ClientId,
        rec: &mut ClientRecord,
        body: OutBody,
        hash: Hash,
    ) -> Result<u64, Error> {
        let seq = rec.next_outbound_seq;
        let log_idx = if rec.attached {
            self.take_log_idx()
        } else {
            NOT_LOGGED
        };
        let entry = OutEntry {
            log_idx,
            hash: Some(hash),
            body,
        };
        let counted = entry.counted_bytes();
        let mut chunk = entry.to_chunk(0);
        let addr = self
            .arena
            .store(&mut chunk)
            .map_err(|_| Error::LimitReached("stable memory exhausted".into()))?;
        if log_idx != NOT_LOGGED {
            self.log.insert(
                (rec.gateway, log_idx),
                LogRef {
                    client: id,
                    seq,
                    addr,
                },
            );
        }
        if rec.tail != 0 && rec.first_retained_seq < rec.next_outbound_seq {
            self.arena.write(rec.tail + CHUNK_NEXT, &addr.to_be_bytes());
        } else {
            rec.head = addr;
        }
        rec.tail = addr;
        rec.queued_messages += 1;
        self.retained += 1;
        rec.queued_bytes += counted;
        self.retained_bytes = self.retained_bytes.saturating_add(counted);
        rec.next_outbound_seq += 1;
        self.tree.insert(id, seq, hash);
        Ok(seq)
    }

    /// Deletes the retained messages of a session with `seq < upto`.
    pub(super) fn release(&mut self, id: ClientId, rec: &mut ClientRecord, upto: u64) {
        while rec.first_retained_seq < upto.min(rec.next_outbound_seq) {
            let seq = rec.first_retained_seq;
            let addr = rec.head;
            let mut next = 0;
            if let Some(h) = self.peek_msg(addr) {
                self.forget_msg(id, rec, seq, &h);
                self.arena.free(addr);
                next = h.next;
            }
            rec.head = next;
            rec.first_retained_seq += 1;
        }
        if rec.first_retained_seq >= rec.next_outbound_seq {
            rec.head = 0;
            rec.tail = 0;
        }
    }

    pub(super) fn forget_msg(
        &mut self,
        id: ClientId,
        rec: &mut ClientRecord,
        seq: u64,
        h: &ChunkHead,
    ) {
        self.retained = self.retained.saturating_sub(1);
        if h.log_idx != NOT_LOGGED {
            self.log.remove(&(rec.gateway, h.log_idx));
        }
        if let Some((pid, _)) = h.shared {
            self.unref_shared(pid);
        }
        rec.queued_messages = rec.queued_messages.saturating_sub(1);
        rec.queued_bytes = rec.queued_bytes.saturating_sub(h.counted_bytes());
        self.retained_bytes = self.retained_bytes.saturating_sub(h.counted_bytes());
        self.tree.remove(id, seq);
    }

    pub(super) fn unref_shared(&mut self, pid: u64) {
        if let Some(mut s) = self.shared.get(&pid) {
            s.refs = s.refs.saturating_sub(1);
            if s.refs == 0 {
                self.shared.remove(&pid);
            } else {
                self.shared.insert(pid, s);
            }
        }
    }

    /// Checks the queue limits for one more message of `bytes` payload bytes.
    pub(super) fn fits(&self, rec: &ClientRecord, bytes: u64) -> bool {
        rec.queued_messages < self.config.max_queued_messages
            && rec.queued_bytes.saturating_add(bytes) <= self.config.max_queued_bytes
    }

    /// Sends an app payload (candid bytes) to one client.
    pub(crate) fn send_payload(
        &mut self,
        id: ClientId,
        payload: Vec<u8>,
        now: u64,
    ) -> Result<u64, Error> {
        let mut rec = self.clients.get(&id).ok_or(Error::UnknownClient(id))?;
        if rec.closed {
            return Err(Error::Closed(id));
        }
        let size = payload.len() as u64;
        if size > self.config.max_outbound_payload_bytes {
            return Err(Error::TooLarge {
                size,
                limit: self.config.max_outbound_payload_bytes,
            });
        }
        if !self.fits(&rec, size) {
            return Err(self.overflow(id, now));
        }
        self.check_retained_bytes(size, 1)?;
        self.check_canister_room().map_err(Error::LimitReached)?;
        let hash = content_hash(&ic_ws_protocol::content::app_content(now, &payload));
        let seq = self.enqueue(id, &mut rec, OutBody::App { ts: now, payload }, hash)?;
        self.clients.insert(id, rec);
        Ok(seq)
    }

    /// Applies the overflow policy to a full session; returns the error for the sender.
    pub(super) fn overflow(&mut self, id: ClientId, now: u64) -> Error {
        match self.config.overflow_policy {
            crate::OverflowPolicy::Reject => Error::QueueFull(id),
            crate::OverflowPolicy::Close => {
                self.close_session(id, CloseReason::QueueOverflow, now);
                Error::QueueOverflowClosed(id)
            }
        }
    }

    // ---------------------------------------------------------------- poll

    /// `ws_poll`: the caller's delivery log from `cursor`, capped, with a witness.
    pub(crate) fn poll(&self, caller: Principal, req: PollRequest) -> Result<PollReply, WsError> {
        let certificate = env::data_certificate()
            .ok_or_else(|| WsError::InvalidArgument("ws_poll must be called as a query".into()))?;
        let max_messages = req
            .max_messages
            .unwrap_or(u32::MAX)
            .min(self.config.max_poll_messages)
            // At least one message when one is pending (a `max_messages` of 0 would stall a
            // gateway that asked for it with `more` set and nothing returned).
            .max(1) as usize;
        let max_bytes = u64::from(
            req.max_bytes
                .unwrap_or(u32::MAX)
                .min(self.config.max_poll_bytes),
        );
        // Clients per reply: 0 counts as 1, like `max_messages`.
        let max_clients = req.max_clients.unwrap_or(u32::MAX).max(1) as usize;
        let mut messages: Vec<OutboundMessage> = Vec::new();
        let mut ranges: Vec<(ClientId, u64, u64)> = Vec::new();
        let mut next_cursor = req.cursor;
        let mut more = false;
        if let Some(gw) = self.gateway_id(&caller) {
            let mut bytes = 0u64;
            for (&(_, idx), r) in self.log.range((gw, req.cursor)..=(gw, u64::MAX)) {
                if messages.len() >= max_messages {
                    more = true;
                    break;
                }
                let (client, seq) = (r.client, r.seq);
                let known = ranges.iter().position(|r| r.0 == client);
                if known.is_none() && ranges.len() >= max_clients {
                    more = true;
                    break;
                }
                let Some((_, out)) = self.read_msg(r.addr) else {
                    continue;
                };
                let content = self.content(&out);
                let size = content.len() as u64 + 24;
                if !messages.is_empty() && bytes + size > max_bytes {
                    more = true;
                    break;
                }
                bytes += size;
                next_cursor = idx + 1;
                match known.and_then(|i| ranges.get_mut(i)) {
                    Some(r) => {
                        r.1 = r.1.min(seq);
                        r.2 = r.2.max(seq);
                    }
                    None => ranges.push((client, seq, seq)),
                }
                messages.push(OutboundMessage {
                    client_id: client,
                    seq,
                    content,
                });
            }
        }
        ranges.sort_unstable();
        let tree = compose_tree(ws_witness(&self.tree, &ranges), self.app_hash);
        Ok(PollReply {
            messages,
            next_cursor,
            more,
            certificate,
            tree: encode_tree(&tree),
            next_poll_ms: None,
        })
    }
}
