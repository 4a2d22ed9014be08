//! An in-memory canister implementing [`CanisterApi`] with the semantics of
//! docs/protocol.md that matter to a gateway (sessions, inbound sequence numbers, duplicates
//! as no-ops, traps rolling back a whole call, a per-gateway delivery log with a cursor, a hash
//! tree witnessing each poll reply), plus knobs to inject failures. Signatures and certificates
//! are not checked or produced (the certificate is a fixed blob): it exists to test and
//! benchmark the gateway without a replica.
//!
//! App payloads with a meaning: `b"trap"` traps the whole call (when it is reached within the
//! call's budget), `b"reject"` is rejected by
//! the "app" (`Rejected`, sequence consumed, certified `MessageRejected` queued), `b"close"`
//! makes the app close the session, anything starting with `b"echo:"` is sent back to the
//! sender. Open args `b"reject"`: the app refuses the open as a version-2 canister does (a
//! closed session holding the certified `OpenRejected` at seq 0, `Err(OpenRejected)`); the
//! resume of a closed session re-queues its retained messages (ending with `Closed`) and
//! answers `Err(Closed)`. [`FakeState::entries_per_call`] makes calls answer `NotProcessed`
//! past that many entries, as an instruction budget does.
#![allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "a test double over its own in-memory data, never peer input of a running gateway"
)]

use crate::canister::{CallError, CanisterApi};
use candid::Principal;
use ic_ws_protocol::types::*;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The certificate blob the fake returns.
pub const FAKE_CERTIFICATE: &[u8] = b"fake-certificate";

#[derive(Debug, Clone)]
struct Session {
    next_in: u64,
    next_out: u64,
    closed: bool,
    retained: Vec<OutboundMessage>,
    /// The session key of its open (checked in [`FakeState::app_like`] mode).
    key: Vec<u8>,
}

/// What the fake recorded and what it will do next.
#[derive(Debug, Default, Clone)]
pub struct FakeState {
    next_client: u64,
    sessions: HashMap<ClientId, Session>,
    /// The gateway's delivery log (`ws_poll` reads it from the cursor; a deque, so compaction
    /// does not move the unread rest).
    pub log: VecDeque<OutboundMessage>,
    /// Cursor of `log[0]` (non-zero once compacted).
    log_base: usize,
    /// Drop what a poll has read (long benchmarks; a restarted gateway then cannot re-read
    /// the log from 0).
    pub compact_log: bool,
    /// Accepted app payloads, in acceptance order.
    pub received: Vec<(ClientId, u64, Vec<u8>)>,
    /// Every update call: method and number of entries.
    pub calls: Vec<(&'static str, usize)>,
    /// Clients reported by `ws_close`.
    pub closed_by_gateway: Vec<ClientId>,
    /// Errors returned by the next update calls (before doing anything).
    pub fail_next: VecDeque<CallError>,
    /// Number of polls so far.
    pub polls: u64,
    /// Distinct clients of each poll reply that had messages, when the poll asked for a cap
    /// on them (`max_clients`).
    pub page_clients: Vec<usize>,
    /// The next this many `ws_message` calls are applied but their reply is "lost" (a
    /// transient error), as when a connection drops after the IC executed the call.
    pub lose_replies: usize,
    /// When set, `ws_open`, `ws_message` and `ws_close` handle at most this many entries (at
    /// least one) per call and answer `NotProcessed` for the rest (nothing changes for them),
    /// like a canister whose instruction budget per call ran out.
    pub entries_per_call: Option<usize>,
    /// Answer floods as the test app (`e2e/test-app`) does, for the attack benchmark: opens
    /// and messages must carry valid signatures (else `InvalidSignature`, nothing consumed),
    /// app payloads other than the meanings above are undecodable (`DecodeError`, sequence
    /// consumed, certified `MessageRejected` queued), and accepted payloads are not kept in
    /// `received` (a flood would otherwise measure the fake's memory, not the gateway's).
    pub app_like: bool,
}

/// The fake canister (cheap to clone: shared state).
#[derive(Debug, Clone, Default)]
pub struct FakeCanister {
    state: Arc<Mutex<FakeState>>,
    /// Artificial latency of update calls.
    pub update_delay: Duration,
    /// Artificial latency of queries.
    pub query_delay: Duration,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn content(body: OutboundBody) -> Vec<u8> {
    ic_ws_protocol::encode(&OutboundContent {
        timestamp_ns: now_ns(),
        body,
    })
    .unwrap_or_default()
}

pub use ic_ws_protocol::witness::tree_of;

impl FakeState {
    fn queue(&mut self, client: ClientId, body: OutboundBody) -> Option<u64> {
        self.queue_content(client, content(body))
    }

    fn queue_content(&mut self, client: ClientId, content: Vec<u8>) -> Option<u64> {
        let s = self.sessions.get_mut(&client)?;
        if s.closed {
            return None;
        }
        let seq = s.next_out;
        s.next_out += 1;
        let m = OutboundMessage {
            client_id: client,
            seq,
            content,
        };
        s.retained.push(m.clone());
        self.log.push_back(m);
        Some(seq)
    }

    fn close_session(&mut self, client: ClientId, reason: CloseReason) {
        self.queue(client, OutboundBody::Closed { reason });
        if let Some(s) = self.sessions.get_mut(&client) {
            s.closed = true;
        }
    }
}

impl FakeCanister {
    /// A fresh canister.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `payload` is one the fake's "app" understands (see the module docs).
    fn has_meaning(payload: &[u8]) -> bool {
        matches!(payload, b"trap" | b"reject" | b"close") || payload.starts_with(b"echo:")
    }

    /// The recorded state, locked.
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The app sends `payload` to `client`; returns its sequence number.
    pub fn send(&self, client: ClientId, payload: &[u8]) -> Option<u64> {
        self.state().queue(
            client,
            OutboundBody::App {
                topic: None,
                payload: payload.to_vec(),
            },
        )
    }

    /// The app sends `n` copies of `payload` to each of `clients`, all stamped with the same
    /// time (one content encoding for all: what a load test's producer needs to stay cheap).
    /// Returns the number of messages queued (closed or unknown sessions get none).
    pub fn send_to(&self, clients: &[ClientId], payload: &[u8], n: usize) -> usize {
        let body = content(OutboundBody::App {
            topic: None,
            payload: payload.to_vec(),
        });
        let mut s = self.state();
        let mut queued = 0;
        for client in clients {
            for _ in 0..n {
                queued += usize::from(s.queue_content(*client, body.clone()).is_some());
            }
        }
        queued
    }

    /// The app closes `client`'s session.
    pub fn close(&self, client: ClientId) {
        self.state().close_session(
            client,
            CloseReason::AppClosed {
                code: 1000,
                reason: "bye".into(),
            },
        );
    }

    /// Every open session's id.
    pub fn clients(&self) -> Vec<ClientId> {
        let s = self.state();
        let mut ids: Vec<ClientId> = s
            .sessions
            .iter()
            .filter(|(_, v)| !v.closed)
            .map(|(k, _)| *k)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Update calls made with `method` and their entry counts.
    pub fn calls(&self, method: &str) -> Vec<usize> {
        self.state()
            .calls
            .iter()
            .filter(|(m, _)| *m == method)
            .map(|(_, n)| *n)
            .collect()
    }

    async fn begin(&self, method: &'static str, entries: usize) -> Result<(), CallError> {
        if !self.update_delay.is_zero() {
            tokio::time::sleep(self.update_delay).await;
        }
        let mut s = self.state();
        s.calls.push((method, entries));
        match s.fail_next.pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl CanisterApi for FakeCanister {
    async fn ws_open(
        &self,
        canister: Principal,
        batch: &OpenBatch,
    ) -> Result<Vec<OpenResult>, CallError> {
        self.begin("ws_open", batch.opens.len()).await?;
        // A trap rolls the whole call back: decide before changing anything.
        if batch.opens.iter().any(|o| o.args == b"trap") {
            return Err(CallError::Trapped("on_open trapped".into()));
        }
        let mut s = self.state();
        let mut results = Vec::new();
        let budget = s.entries_per_call.unwrap_or(usize::MAX).max(1);
        for (i, open) in batch.opens.iter().enumerate() {
            if i >= budget {
                results.push(Err(WsError::NotProcessed));
                continue;
            }
            if s.app_like && ic_ws_protocol::signing::verify_open(&canister, open).is_err() {
                results.push(Err(WsError::InvalidSignature));
                continue;
            }
            if open.args == b"reject" && open.resume.is_none() {
                // Version 2: a closed session holding the certified refusal at seq 0.
                let id = s.next_client;
                s.next_client += 1;
                s.sessions.insert(
                    id,
                    Session {
                        next_in: 0,
                        next_out: 0,
                        closed: false,
                        retained: vec![],
                        key: open.client_key.clone(),
                    },
                );
                s.queue(
                    id,
                    OutboundBody::OpenRejected {
                        client_key: open.client_key.clone(),
                        open_timestamp_ns: open.timestamp_ns,
                        error: WsError::Rejected("not welcome".into()),
                    },
                );
                if let Some(x) = s.sessions.get_mut(&id) {
                    x.closed = true;
                }
                results.push(Err(WsError::OpenRejected {
                    client_id: id,
                    reason: "not welcome".into(),
                }));
                continue;
            }
            let client = match open.resume {
                None => {
                    let id = s.next_client;
                    s.next_client += 1;
                    s.sessions.insert(
                        id,
                        Session {
                            next_in: 0,
                            next_out: 0,
                            closed: false,
                            retained: vec![],
                            key: open.client_key.clone(),
                        },
                    );
                    id
                }
                Some(r) => {
                    let Some(session) = s.sessions.get(&r.client_id) else {
                        results.push(Err(WsError::UnknownClient(r.client_id)));
                        continue;
                    };
                    if session.closed {
                        // Version 2: its certified end again, for this gateway.
                        let again: Vec<OutboundMessage> = session
                            .retained
                            .iter()
                            .filter(|m| m.seq >= r.next_outbound_seq)
                            .cloned()
                            .collect();
                        s.log.extend(again);
                        results.push(Err(WsError::Closed));
                        continue;
                    }
                    let again: Vec<OutboundMessage> = session
                        .retained
                        .iter()
                        .filter(|m| m.seq >= r.next_outbound_seq)
                        .cloned()
                        .collect();
                    s.log.extend(again);
                    r.client_id
                }
            };
            let next_in = s.sessions.get(&client).map_or(0, |x| x.next_in);
            let opened_seq = s
                .queue(
                    client,
                    OutboundBody::Opened {
                        client_key: open.client_key.clone(),
                        open_timestamp_ns: open.timestamp_ns,
                        next_inbound_seq: next_in,
                        resumed: open.resume.is_some(),
                        max_inbound_payload_bytes: 64 * 1024,
                        idle_timeout_ns: 120_000_000_000,
                        principal: None,
                    },
                )
                .unwrap_or(0);
            results.push(Ok(OpenOk {
                client_id: client,
                next_inbound_seq: next_in,
                opened_seq,
            }));
        }
        Ok(results)
    }

    async fn ws_message(
        &self,
        canister: Principal,
        batch: &MessageBatch,
    ) -> Result<Vec<MessageResult>, CallError> {
        self.begin("ws_message", batch.messages.len()).await?;
        let mut s = self.state();
        // A trap rolls the whole call back: find out first whether an accepted message traps
        // (no copy of the state, which would cost O(state) per call).
        let budget = s.entries_per_call.unwrap_or(usize::MAX).max(1);
        let mut expected: HashMap<ClientId, u64> = HashMap::new();
        for m in batch.messages.iter().take(budget) {
            let Some(session) = s.sessions.get(&m.client_id).filter(|x| !x.closed) else {
                continue;
            };
            let next = expected.entry(m.client_id).or_insert(session.next_in);
            if m.seq == *next {
                *next += 1;
                if matches!(&m.kind, MessageKind::App(p) if p == b"trap") {
                    return Err(CallError::Trapped("on_message trapped".into()));
                }
            }
        }
        let mut results = Vec::new();
        let app_like = s.app_like;
        for m in &batch.messages {
            if results.len() >= budget {
                results.push(MessageResult::Err(WsError::NotProcessed));
                continue;
            }
            let Some(session) = s.sessions.get_mut(&m.client_id) else {
                results.push(MessageResult::Err(WsError::UnknownClient(m.client_id)));
                continue;
            };
            if session.closed {
                results.push(MessageResult::Err(WsError::Closed));
                continue;
            }
            if m.seq < session.next_in {
                results.push(MessageResult::Duplicate);
                continue;
            }
            if m.seq > session.next_in {
                results.push(MessageResult::Err(WsError::OutOfSequence {
                    expected: session.next_in,
                    got: m.seq,
                }));
                continue;
            }
            if app_like
                && ic_ws_protocol::signing::verify_message(&canister, &session.key, m).is_err()
            {
                results.push(MessageResult::Err(WsError::InvalidSignature));
                continue;
            }
            session.next_in += 1;
            session.retained.retain(|r| r.seq >= m.ack);
            match &m.kind {
                MessageKind::App(p) if p == b"reject" || (app_like && !Self::has_meaning(p)) => {
                    let error = if p == b"reject" {
                        WsError::Rejected("app said no".into())
                    } else {
                        WsError::DecodeError("not an app message".into())
                    };
                    s.queue(
                        m.client_id,
                        OutboundBody::MessageRejected {
                            inbound_seq: m.seq,
                            error: error.clone(),
                        },
                    );
                    results.push(MessageResult::Err(error));
                }
                MessageKind::App(p) => {
                    if !app_like {
                        s.received.push((m.client_id, m.seq, p.clone()));
                    }
                    if p == b"close" {
                        s.close_session(
                            m.client_id,
                            CloseReason::AppClosed {
                                code: 1000,
                                reason: "asked".into(),
                            },
                        );
                    } else if let Some(rest) = p.strip_prefix(b"echo:") {
                        s.queue(
                            m.client_id,
                            OutboundBody::App {
                                topic: None,
                                payload: rest.to_vec(),
                            },
                        );
                    }
                    results.push(MessageResult::Ok);
                }
                MessageKind::KeepAlive => results.push(MessageResult::Ok),
                MessageKind::Close { code, reason } => {
                    s.close_session(
                        m.client_id,
                        CloseReason::ClientClosed {
                            code: *code,
                            reason: reason.clone(),
                        },
                    );
                    results.push(MessageResult::Ok);
                }
            }
        }
        if s.lose_replies > 0 {
            s.lose_replies -= 1;
            return Err(CallError::Transient("reply lost".into()));
        }
        Ok(results)
    }

    async fn ws_close(
        &self,
        _canister: Principal,
        batch: &CloseBatch,
    ) -> Result<Vec<CloseResult>, CallError> {
        self.begin("ws_close", batch.clients.len()).await?;
        let mut s = self.state();
        let budget = s.entries_per_call.unwrap_or(usize::MAX).max(1);
        let done = batch.clients.len().min(budget);
        s.closed_by_gateway
            .extend(batch.clients.iter().take(done).copied());
        Ok((0..batch.clients.len())
            .map(|i| {
                if i < done {
                    Ok(())
                } else {
                    Err(WsError::NotProcessed)
                }
            })
            .collect())
    }

    async fn ws_poll(
        &self,
        _canister: Principal,
        request: PollRequest,
    ) -> Result<PollResult, CallError> {
        if !self.query_delay.is_zero() {
            tokio::time::sleep(self.query_delay).await;
        }
        let mut s = self.state();
        s.polls += 1;
        let max = request.max_messages.unwrap_or(500).min(500) as usize;
        if s.compact_log {
            let read = (request.cursor as usize)
                .saturating_sub(s.log_base)
                .min(s.log.len());
            s.log.drain(..read);
            s.log_base += read;
        }
        let base = s.log_base;
        let start = (request.cursor as usize)
            .saturating_sub(base)
            .min(s.log.len());
        let max_bytes = request.max_bytes.unwrap_or(1_572_864).min(1_572_864) as usize;
        // Like the runtime: 0 counts as 1; the page ends before one client too many.
        let max_clients = request.max_clients.map(|n| n.max(1) as usize);
        let mut clients: Vec<ClientId> = Vec::new();
        let mut end = start;
        let mut bytes = 0;
        while let Some(m) = s.log.get(end) {
            if end - start >= max || (end > start && bytes + m.content.len() > max_bytes) {
                break;
            }
            if let Some(cap) = max_clients {
                if !clients.contains(&m.client_id) {
                    if clients.len() >= cap {
                        break;
                    }
                    clients.push(m.client_id);
                }
            }
            bytes += m.content.len();
            end += 1;
        }
        let messages: Vec<OutboundMessage> = s.log.range(start..end).cloned().collect();
        if max_clients.is_some() && !messages.is_empty() {
            s.page_clients.push(clients.len());
        }
        let tree = serde_cbor::to_vec(&tree_of(&messages))
            .map_err(|e| CallError::Permanent(e.to_string()))?;
        Ok(Ok(PollReply {
            more: end < s.log.len(),
            next_cursor: (base + end) as u64,
            messages,
            certificate: FAKE_CERTIFICATE.to_vec(),
            tree,
            next_poll_ms: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_ws_protocol::signing::SessionKey;

    fn message(
        key: &SessionKey,
        canister: &Principal,
        client_id: u64,
        seq: u64,
        payload: &[u8],
    ) -> ClientMessage {
        let mut m = ClientMessage {
            client_id,
            seq,
            ack: 0,
            kind: MessageKind::App(payload.to_vec()),
            signature: Vec::new(),
        };
        key.sign_message(canister, &mut m);
        m
    }

    /// The attack benchmark's fake answers floods as the test app does: forged signatures
    /// refused without consuming a sequence number, undecodable payloads refused with a
    /// certified `MessageRejected`, nothing kept.
    #[tokio::test]
    async fn app_like_checks_signatures_and_refuses_undecodable_payloads() {
        let fake = FakeCanister::new();
        fake.state().app_like = true;
        let canister = Principal::from_slice(&[1; 10]);
        let key = SessionKey::from_seed([3; 32]);
        let mut open = OpenRequest {
            client_key: key.public_key(),
            gateway: Principal::anonymous(),
            timestamp_ns: 1,
            resume: None,
            args: Vec::new(),
            signature: vec![0; 64],
            identity: None,
        };
        let batch = OpenBatch {
            opens: vec![open.clone()],
        };
        let r = fake.ws_open(canister, &batch).await.unwrap();
        assert_eq!(r, vec![Err(WsError::InvalidSignature)]);
        key.sign_open(&canister, &mut open);
        let r = fake
            .ws_open(canister, &OpenBatch { opens: vec![open] })
            .await
            .unwrap();
        let Ok(ok) = &r[0] else { panic!("{r:?}") };
        let id = ok.client_id;
        let mut forged = message(&key, &canister, id, 0, b"echo:x");
        forged.signature[0] ^= 1;
        let junk = message(&key, &canister, id, 0, &[0xff; 100]);
        let echo = message(&key, &canister, id, 1, b"echo:hi");
        let r = fake
            .ws_message(
                canister,
                &MessageBatch {
                    messages: vec![forged, junk, echo],
                },
            )
            .await
            .unwrap();
        assert_eq!(
            r,
            vec![
                MessageResult::Err(WsError::InvalidSignature),
                MessageResult::Err(WsError::DecodeError("not an app message".into())),
                MessageResult::Ok,
            ]
        );
        let s = fake.state();
        assert!(s.received.is_empty(), "app_like keeps nothing");
        let bodies: Vec<OutboundBody> = s
            .log
            .iter()
            .filter_map(|m| ic_ws_protocol::decode::<OutboundContent>(&m.content).ok())
            .map(|c| c.body)
            .collect();
        assert!(
            bodies
                .iter()
                .any(|b| matches!(b, OutboundBody::MessageRejected { inbound_seq: 0, .. })),
            "{bodies:?}"
        );
        assert!(
            bodies
                .iter()
                .any(|b| matches!(b, OutboundBody::App { payload, .. } if payload == b"hi")),
            "{bodies:?}"
        );
    }
}
