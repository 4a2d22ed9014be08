//! Client -> canister relay: one worker per canister turns the queue of opens, messages and
//! disconnects into batched update calls (`ws_message`, `ws_close`, `ws_open`).
//!
//! - Batching: a batch is a prefix of the queue bounded in entries and bytes; batches to one
//!   canister are at least `--batch-interval-ms` apart and never overlap (one in flight), so
//!   each client's messages reach the canister in the order it sent them.
//! - Within a batch, calls go in the order messages, closes, opens: a client's messages come
//!   before its disconnect, and a disconnect of a client's old connection before the resume on
//!   its new one.
//! - Retries: a transient failure repeats the same call with exponential backoff (the canister
//!   treats an already accepted message as a `Duplicate` no-op). When a call traps (an app
//!   handler panicked, the IC rolled the whole call back), the entry that traps is found by
//!   bisection ([`isolate`]: `ceil(log2 n)` more calls for a batch of `n`, 9 for 500) so only
//!   it fails, and only its client hears about it; the entries after it go again with the
//!   next batch.
//! - Not processed: entries the canister answers `NotProcessed` (its instruction budget per
//!   call ran out) go again, first, in the next batch, with every later entry of the same
//!   clients from the batch (messages, disconnect, resume), so no client's entry overtakes
//!   one of its own; the client hears nothing of it.
//! - Results go to each entry's client only: `MessageError` for errors that did not consume
//!   the sequence number (then 4004: the session cannot continue; `Rejected` and
//!   `DecodeError` reach the client as certified `MessageRejected` messages instead, protocol
//!   version 2), `OpenResult` (then 4003 when the open failed; for a certified refusal,
//!   `OpenRejected` or the `Closed` of a resumed closed session, only once that certified
//!   message is delivered).
//! - Fairness: the worker moves everything the sessions queued into a [`Scheduler`] with one
//!   lane per client (its messages, its disconnect, its resume) and one per new open. Batches
//!   are cut by deficit round-robin over the lanes, by bytes, and a lane that was empty goes
//!   before the backlogged ones (the "new flows" of FQ-CoDel, RFC 8290): a client with nothing
//!   queued has its message in the next batch however long other clients' backlogs are, and
//!   a backlogged client gets one quantum per round. Each lane keeps its own order, so a
//!   client's messages still come before its disconnect, and that before its resume.
//! - Shares: each client may have `--max-inflight-per-client` messages and
//!   `--max-inflight-bytes-per-client` bytes queued or in flight ([`ClientShare`]); beyond
//!   that its session stops reading its socket. Messages are charged to the memory ledger
//!   (`crate::memory`) until their result is known.
//! - Refusals: every `Rejected`, `DecodeError` or `TooLarge` result counts against the
//!   client's `--refusal-budget` (each accepted message pays one back). Past half of it the
//!   client is throttled to one message in flight; past all of it it is closed with 1008.

use crate::canister::{CallError, CanisterApi};
use crate::health::WorkerExit;
use crate::hub::{ClientEntry, Hub, Shared};
use crate::metrics::{ErrorKind, Histogram};
use crate::outbox::{CloseWith, Outbox};
use ic_ws_protocol::frames::close_code;
use ic_ws_protocol::text::bounded;
use ic_ws_protocol::types::{
    ClientId, CloseBatch, MessageBatch, MessageResult, OpenBatch, OpenResult, WsError,
};
use ic_ws_protocol::GatewayFrame;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::tungstenite::Bytes;

/// Most bytes of a canister's trap message quoted in an error frame to a client.
pub const MAX_ERROR_TEXT_BYTES: usize = 1024;

pub use crate::work::{
    ClientShare, Hold, OpenReply, PendingMessage, PendingOpen, RelayItem, SharePermit,
    ENTRY_OVERHEAD,
};

/// Whether the canister refused a message for its content (counted against the budget).
fn is_refusal(error: &WsError) -> bool {
    matches!(
        error,
        WsError::Rejected(_) | WsError::DecodeError(_) | WsError::TooLarge { .. }
    )
}

impl RelayItem {
    fn cost(&self) -> usize {
        match self {
            RelayItem::Open(o) => ENTRY_OVERHEAD.saturating_add(o.request.args.len()),
            RelayItem::Message(m) => ENTRY_OVERHEAD.saturating_add(m.size),
            RelayItem::Close { .. } => 16,
        }
    }

    /// The scheduler lane: a client's messages, disconnect and resume share one lane (their
    /// order matters); a new open has a lane of its own.
    fn lane(&self) -> Lane {
        match self {
            RelayItem::Message(m) => Lane::Client(m.message.client_id),
            RelayItem::Close { client_id, .. } => Lane::Client(*client_id),
            RelayItem::Open(o) => match &o.request.resume {
                Some(r) => Lane::Client(r.client_id),
                None => Lane::Conn(o.conn_id),
            },
        }
    }
}

/// Credit of a lane that was empty: a client sending small messages now and then has them
/// sent before every backlog; a bigger message waits for its round-robin turn like the rest.
const SPARSE_QUANTUM: usize = 4096;

/// A scheduler lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lane {
    Client(ClientId),
    Conn(u64),
}

#[derive(Debug)]
struct LaneQueue {
    items: VecDeque<RelayItem>,
    /// Bytes the lane may still send in its current turn (deficit round-robin).
    credit: usize,
    /// The batch count when the lane went from empty to non-empty (for the wait metric).
    since: Option<u64>,
}

/// The relay queue of one canister, drained fairly: deficit round-robin by bytes over one lane
/// per client; a lane that was empty first sends up to [`SPARSE_QUANTUM`] bytes before the
/// backlogged lanes (see the module doc).
#[derive(Debug)]
pub struct Scheduler {
    lanes: HashMap<Lane, LaneQueue>,
    /// Lanes that became non-empty and have not used their first quantum.
    new_lanes: VecDeque<Lane>,
    /// Backlogged lanes, in round-robin order.
    old_lanes: VecDeque<Lane>,
    quantum: usize,
    batches: u64,
    len: usize,
}

impl Scheduler {
    /// An empty scheduler giving each backlogged lane `quantum` bytes per turn (at least one
    /// entry when `quantum` covers the largest entry).
    pub fn new(quantum: usize) -> Self {
        Scheduler {
            lanes: HashMap::new(),
            new_lanes: VecDeque::new(),
            old_lanes: VecDeque::new(),
            quantum: quantum.max(1),
            batches: 0,
            len: 0,
        }
    }

    /// Entries queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues an item at the end of its lane.
    pub fn push(&mut self, item: RelayItem) {
        let lane = item.lane();
        let (new_lanes, batches) = (&mut self.new_lanes, self.batches);
        let queue = self.lanes.entry(lane).or_insert_with(|| {
            new_lanes.push_back(lane);
            LaneQueue {
                items: VecDeque::new(),
                credit: SPARSE_QUANTUM,
                since: Some(batches),
            }
        });
        queue.items.push_back(item);
        self.len = self.len.saturating_add(1);
    }

    /// Cuts the next batch (at least one entry, at most `max_entries` and, unless its first
    /// entry alone is larger, `max_bytes`). `waits` records, for each entry sent with the
    /// priority of a lane that was empty, how many batches were cut between its arrival and
    /// this one.
    pub fn take_batch(
        &mut self,
        max_entries: usize,
        max_bytes: usize,
        waits: Option<&Histogram>,
    ) -> Vec<RelayItem> {
        let this_batch = self.batches;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while batch.len() < max_entries {
            let (from_new, key) = match (self.new_lanes.front(), self.old_lanes.front()) {
                (Some(k), _) => (true, *k),
                (None, Some(k)) => (false, *k),
                (None, None) => break,
            };
            let list = if from_new {
                &mut self.new_lanes
            } else {
                &mut self.old_lanes
            };
            let Some(lane) = self.lanes.get_mut(&key) else {
                list.pop_front();
                continue;
            };
            let Some(cost) = lane.items.front().map(RelayItem::cost) else {
                list.pop_front();
                self.lanes.remove(&key);
                continue;
            };
            if lane.credit < cost {
                // Its turn is over: the next one starts at the back of the round.
                lane.credit = lane.credit.saturating_add(self.quantum);
                list.pop_front();
                self.old_lanes.push_back(key);
                continue;
            }
            if !batch.is_empty() && bytes.saturating_add(cost) > max_bytes {
                // The lane keeps its place: it goes first in the next batch.
                break;
            }
            // (`credit >= cost` here: the lane was topped up above until it covered the cost.)
            lane.credit = lane.credit.saturating_sub(cost);
            bytes = bytes.saturating_add(cost);
            if let (Some(since), Some(h)) = (lane.since.take(), waits) {
                if from_new {
                    h.observe(this_batch.saturating_sub(since) as f64);
                }
            }
            if let Some(item) = lane.items.pop_front() {
                self.len = self.len.saturating_sub(1);
                batch.push(item);
            }
            if lane.items.is_empty() {
                list.pop_front();
                self.lanes.remove(&key);
            }
        }
        self.batches = self.batches.saturating_add(1);
        batch
    }
}

/// Whether a per-entry error ends the client's session (it cannot send anything valid after
/// it). `Rejected` and `DecodeError` consume the sequence number: the client moves on.
pub fn is_fatal(error: &WsError) -> bool {
    !matches!(error, WsError::Rejected(_) | WsError::DecodeError(_))
}

/// The error a client gets when the canister trapped handling its `what` (the trap message,
/// from the canister, is bounded).
pub fn trapped(what: &str, why: &str) -> WsError {
    WsError::Rejected(format!(
        "the canister trapped handling this {what}: {}",
        bounded(why, MAX_ERROR_TEXT_BYTES)
    ))
}

fn send_frame(outbox: &Outbox, frame: &GatewayFrame) {
    match crate::codec::encode_frame(frame) {
        Ok(bytes) => {
            outbox.push(Bytes::from(bytes), None);
        }
        Err(e) => tracing::error!("cannot encode a frame: {e}"),
    }
}

/// Runs `call` until it succeeds, fails non-transiently, or runs out of attempts.
async fn with_retry<C, T, F, Fut>(
    shared: &Shared<C>,
    what: &str,
    mut call: F,
) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut backoff = shared.config.retry_backoff();
    let mut attempt = 1;
    loop {
        match call().await {
            Err(CallError::Transient(e)) if attempt < shared.config.retry_attempts => {
                shared.metrics.error(ErrorKind::CallTransient);
                tracing::warn!(
                    attempt,
                    "{what}: transient error, retrying in {backoff:?}: {e}"
                );
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
                attempt = attempt.saturating_add(1);
            }
            Err(e) => {
                shared.metrics.error(match e {
                    CallError::Transient(_) => ErrorKind::CallTransient,
                    CallError::Trapped(_) => ErrorKind::CallTrapped,
                    CallError::Permanent(_) => ErrorKind::CallPermanent,
                });
                return Err(e);
            }
            ok => return ok,
        }
    }
}

/// The relay worker of `hub`'s canister. Returns when the gateway drains and the queue is empty.
pub async fn run<C: CanisterApi>(shared: Arc<Shared<C>>, hub: Arc<Hub>) -> WorkerExit {
    let Some(mut rx) = hub.relay_receiver() else {
        return WorkerExit::Failed("another relay worker holds the queue".into());
    };
    let mut queue = Scheduler::new(
        shared
            .config
            .max_message_size
            .saturating_add(ENTRY_OVERHEAD),
    );
    let mut draining = shared.draining.subscribe();
    let interval = shared.config.batch_interval();
    let max_entries = shared.config.batch_max_messages;
    let max_bytes = shared.config.batch_max_bytes;
    let mut last_batch: Option<Instant> = None;
    // Entries of the last batch that go again, first (see `process`).
    let mut carry: Vec<RelayItem> = Vec::new();
    let mut stalled = 0u32;
    loop {
        if queue.is_empty() && carry.is_empty() {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => queue.push(item),
                    None => return WorkerExit::Done,
                },
                _ = draining.wait_for(|d| *d) => {
                    match rx.try_recv() {
                        Ok(item) => queue.push(item),
                        Err(_) => return WorkerExit::Done,
                    }
                }
            }
        }
        // Collect until the interval since the previous batch has passed or the batch is full.
        if let Some(last) = last_batch {
            let ready_at =
                tokio::time::Instant::from_std(last.checked_add(interval).unwrap_or(last));
            while queue.len() < max_entries && !*draining.borrow() {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => queue.push(item),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(ready_at) => break,
                }
            }
        }
        // Everything queued so far takes part in the fair choice (bounded by the channel's
        // capacity; the clients' shares bound what is behind it).
        for _ in 0..shared.config.relay_queue {
            match rx.try_recv() {
                Ok(item) => queue.push(item),
                Err(_) => break,
            }
        }
        // Entries that go again make up the next batch alone (they were cut within the bounds
        // of their batch; new entries wait for the one after).
        let batch = if carry.is_empty() {
            queue.take_batch(
                max_entries,
                max_bytes,
                Some(&shared.metrics.relay_wait_batches),
            )
        } else {
            std::mem::take(&mut carry)
        };
        last_batch = Some(Instant::now());
        if crate::testhook::fire(&shared.config, "panic-relay") {
            panic!(
                "test hook: relay of {} panics with {} items in hand",
                hub.canister,
                batch.len().saturating_add(queue.len())
            );
        }
        let sent = batch.len();
        carry = process(&shared, &hub, batch).await;
        stalled = if !carry.is_empty() && carry.len() == sent {
            stalled.saturating_add(1)
        } else {
            0
        };
        if stalled >= MAX_STALLED_CALLS {
            tracing::warn!(canister = %hub.canister, entries = carry.len(), "the canister processed none of these entries in {stalled} calls: giving them up");
            let error = CallError::Permanent(format!(
                "the canister processed none of the entries of {stalled} calls"
            ));
            for item in carry.drain(..) {
                match item {
                    RelayItem::Message(m) => unavailable(&shared, &m.outbox, &error),
                    RelayItem::Open(o) => unavailable(&shared, &o.outbox, &error),
                    RelayItem::Close { .. } => {}
                }
            }
            stalled = 0;
        }
    }
}

/// Calls in a row in which the canister processed none of the entries (all `NotProcessed`)
/// before the gateway gives them up (a conforming canister always processes a call's first
/// entry, so this only stops a canister that never does).
const MAX_STALLED_CALLS: u32 = 3;

/// Relays one batch; returns what must go again, first, in the next batch: entries the
/// canister did not process (`NotProcessed`: its instruction budget per call ran out), the
/// entries after an isolated trapping one, and every later entry of those clients in the batch
/// (so that none overtakes one that goes again), in batch order.
async fn process<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    hub: &Arc<Hub>,
    batch: Vec<RelayItem>,
) -> Vec<RelayItem> {
    let mut messages = Vec::new();
    let mut closes = Vec::new();
    let mut opens = Vec::new();
    for item in batch {
        match item {
            RelayItem::Message(m) => messages.push(m),
            RelayItem::Close { client_id, conn_id } => closes.push((client_id, conn_id)),
            RelayItem::Open(o) => opens.push(o),
        }
    }
    // Clients with an entry that goes again: their later entries go again too.
    let mut deferred: HashSet<ClientId> = HashSet::new();
    let mut carry = Vec::new();
    if !messages.is_empty() {
        let again = relay_messages(shared, hub, messages, &mut deferred).await;
        carry.extend(again.into_iter().map(RelayItem::Message));
        hub.poll_wake.notify_one();
    }
    if !closes.is_empty() {
        let again = relay_closes(shared, hub, closes, &mut deferred).await;
        carry.extend(
            again
                .into_iter()
                .map(|(client_id, conn_id)| RelayItem::Close { client_id, conn_id }),
        );
        // Closing may make the canister send (an `on_close` telling a room): poll soon.
        hub.poll_wake.notify_one();
    }
    if !opens.is_empty() {
        let again = relay_opens(shared, hub, opens, &deferred).await;
        carry.extend(again.into_iter().map(RelayItem::Open));
        hub.poll_wake.notify_one();
    }
    carry
}

/// What became of one entry of a relayed call.
#[derive(Debug)]
pub enum Outcome<R> {
    /// The canister's answer (possibly `NotProcessed`).
    Answered(R),
    /// The entry traps the canister (found by [`isolate`]).
    Trapped(String),
    /// The call failed otherwise (after its retries).
    Failed(CallError),
    /// Not executed yet: it goes again in the next batch.
    Later,
}

/// Finds the first trapping entry of a call of `n` entries that trapped with `why`, by
/// bisection, given `call(range)` that calls the canister with those entries.
///
/// Invariant: the entries before `lo` are done (answered), and a call with the entries
/// `lo..hi` traps. Each step calls the first half of `lo..hi`: if it traps, the trap is in it
/// (`hi` moves down); if it succeeds, its answers are final and, execution being deterministic
/// given the same state, the second half is the one that trapped (`lo` moves up, without
/// calling it). With one entry left, that entry is the trapping one. So the first trapping
/// entry of `n` is found in `ceil(log2 n)` calls (9 for 500) after the call that trapped; the
/// entries after it are `Later`: they go, with the next batch, in one call (which isolates the
/// next trapping entry, if any, the same way). An entry can only be accused wrongly if the
/// canister's behaviour changed between the calls (another gateway's call, time): then its
/// client loses this connection, as when a gateway drops it, and resumes.
///
/// A step whose answers include `NotProcessed` (`not_processed`) ends the search early: the
/// rest is `Later`. A step failing otherwise marks its entries `Failed` and the rest `Later`.
pub async fn isolate<R, F, Fut>(
    n: usize,
    why: String,
    not_processed: impl Fn(&R) -> bool,
    mut call: F,
) -> Vec<Outcome<R>>
where
    F: FnMut(std::ops::Range<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, CallError>>,
{
    let mut outcomes: Vec<Outcome<R>> = (0..n).map(|_| Outcome::Later).collect();
    let (mut lo, mut hi, mut why) = (0usize, n, why);
    loop {
        let len = hi.saturating_sub(lo);
        if len <= 1 {
            if let (1, Some(o)) = (len, outcomes.get_mut(lo)) {
                *o = Outcome::Trapped(why);
            }
            return outcomes;
        }
        let mid = lo.saturating_add(len / 2);
        match call(lo..mid).await {
            Ok(results) => {
                let mut cut = false;
                for (o, r) in outcomes.iter_mut().take(mid).skip(lo).zip(results) {
                    cut |= not_processed(&r);
                    *o = Outcome::Answered(r);
                }
                if cut {
                    return outcomes;
                }
                lo = mid;
            }
            Err(CallError::Trapped(w)) => {
                hi = mid;
                why = w;
            }
            Err(e) => {
                for o in outcomes.iter_mut().take(mid).skip(lo) {
                    *o = Outcome::Failed(e.clone());
                }
                return outcomes;
            }
        }
    }
}

async fn call_messages<C: CanisterApi>(
    shared: &Shared<C>,
    hub: &Hub,
    entries: &[&PendingMessage],
) -> Result<Vec<MessageResult>, CallError> {
    let batch = MessageBatch {
        messages: entries.iter().map(|m| m.message.clone()).collect(),
    };
    let n = entries.len();
    let result = with_retry(shared, "ws_message", || {
        shared.metrics.calls_message.inc();
        shared.metrics.batch_size.observe(n as f64);
        let started = Instant::now();
        let fut = shared.api.ws_message(hub.canister, &batch);
        async move {
            let r = fut.await;
            shared
                .metrics
                .message_call_latency
                .observe_duration(started.elapsed());
            r
        }
    })
    .await?;
    if result.len() != n {
        return Err(CallError::Permanent(format!(
            "ws_message returned {} results for {n} messages",
            result.len()
        )));
    }
    Ok(result)
}

async fn relay_messages<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    hub: &Arc<Hub>,
    messages: Vec<PendingMessage>,
    deferred: &mut HashSet<ClientId>,
) -> Vec<PendingMessage> {
    let all: Vec<&PendingMessage> = messages.iter().collect();
    let outcomes: Vec<Outcome<MessageResult>> = match call_messages(shared, hub, &all).await {
        Ok(results) => {
            hub.call_succeeded();
            results.into_iter().map(Outcome::Answered).collect()
        }
        Err(CallError::Trapped(reason)) => {
            tracing::warn!(canister = %hub.canister, entries = all.len(), "ws_message trapped, isolating the entry by bisection: {reason}");
            isolate(
                all.len(),
                reason,
                |r| matches!(r, MessageResult::Err(WsError::NotProcessed)),
                |range| {
                    shared.metrics.isolation_calls.inc();
                    let part: Vec<&PendingMessage> = all
                        .get(range)
                        .map(<[&PendingMessage]>::to_vec)
                        .unwrap_or_default();
                    async move { call_messages(shared, hub, &part).await }
                },
            )
            .await
        }
        Err(e) => {
            hub.call_failed("ws_message", &e);
            all.iter().map(|_| Outcome::Failed(e.clone())).collect()
        }
    };
    drop(all);
    settle_messages(shared, messages, outcomes, deferred)
}

/// Hands each entry's outcome to its client, in batch order; returns the entries that go
/// again. A client's entries after one that goes again go again too (never ahead of it); a
/// client's entries after one that ended its session are dropped (the trapping entry's later
/// ones were answered `OutOfSequence` by the canister, if they were executed at all: its
/// sequence number was rolled back).
fn settle_messages<C>(
    shared: &Shared<C>,
    messages: Vec<PendingMessage>,
    outcomes: Vec<Outcome<MessageResult>>,
    deferred: &mut HashSet<ClientId>,
) -> Vec<PendingMessage> {
    // Clients whose session ended in this batch: their later entries are not reported again.
    let mut failed: HashSet<ClientId> = HashSet::new();
    let mut again = Vec::new();
    for (m, outcome) in messages.into_iter().zip(outcomes) {
        let client = m.message.client_id;
        if matches!(
            outcome,
            Outcome::Answered(MessageResult::Err(WsError::NotProcessed))
        ) {
            shared.metrics.not_processed.inc();
        }
        if failed.contains(&client) {
            continue;
        }
        if deferred.contains(&client) {
            again.push(m);
            continue;
        }
        match outcome {
            Outcome::Answered(MessageResult::Err(WsError::NotProcessed)) | Outcome::Later => {
                deferred.insert(client);
                again.push(m);
            }
            Outcome::Answered(r) => handle_message_result(shared, &m, r, false, &mut failed),
            Outcome::Trapped(why) => {
                // The trap rolled the message back: its sequence number is not consumed and
                // the same signed message would trap again, so the session cannot continue.
                shared.metrics.trapped_entries.inc();
                let error = trapped("message", &why);
                handle_message_result(shared, &m, MessageResult::Err(error), true, &mut failed);
            }
            Outcome::Failed(e) => {
                if failed.insert(client) {
                    unavailable(shared, &m.outbox, &e);
                }
            }
        }
    }
    again
}

fn unavailable<C>(shared: &Shared<C>, outbox: &Outbox, error: &CallError) {
    let _ = shared;
    outbox.finish(CloseWith::new(
        close_code::CANISTER_UNAVAILABLE,
        format!("canister unavailable: {error}"),
    ));
}

fn handle_message_result<C>(
    shared: &Shared<C>,
    m: &PendingMessage,
    result: MessageResult,
    always_fatal: bool,
    failed: &mut HashSet<ClientId>,
) {
    let client = m.message.client_id;
    match result {
        MessageResult::Ok | MessageResult::Duplicate => {
            if let Some(share) = &m.hold.share {
                share.accepted();
            }
        }
        MessageResult::Err(error) => {
            if failed.contains(&client) {
                return;
            }
            shared.metrics.error(ErrorKind::MessageRejected);
            let fatal = always_fatal || is_fatal(&error);
            let over_budget =
                !fatal && is_refusal(&error) && m.hold.share.as_ref().is_some_and(|s| s.refused());
            tracing::debug!(
                client,
                seq = m.message.seq,
                fatal,
                "message rejected: {error}"
            );
            // Protocol version 2: a refusal that consumed the sequence number (`Rejected`,
            // `DecodeError`) reaches the client certified (`MessageRejected`, delivered like any
            // message); `MessageError` is only sent for errors that did not consume it.
            if fatal {
                send_frame(
                    &m.outbox,
                    &GatewayFrame::MessageError {
                        seq: m.message.seq,
                        error: error.clone(),
                    },
                );
            }
            if fatal {
                failed.insert(client);
                m.outbox.finish(CloseWith::new(
                    close_code::MESSAGE_REJECTED,
                    format!("message {} rejected: {error}", m.message.seq),
                ));
            } else if over_budget && !m.outbox.is_closing() {
                failed.insert(client);
                shared.metrics.refusal_closes.inc();
                tracing::info!(client, "client closed: too many refused messages");
                m.outbox.finish(CloseWith::new(
                    close_code::POLICY_VIOLATION,
                    "too many messages refused by the canister",
                ));
            }
        }
    }
}

async fn relay_closes<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    hub: &Arc<Hub>,
    closes: Vec<(ClientId, u64)>,
    deferred: &mut HashSet<ClientId>,
) -> Vec<(ClientId, u64)> {
    // A disconnect never overtakes its client's messages that go again.
    let (mut again, closes): (Vec<_>, Vec<_>) =
        closes.into_iter().partition(|(c, _)| deferred.contains(c));
    // A client that already resumed on another connection of this gateway stays attached.
    let closes: Vec<(ClientId, u64)> = {
        let table = hub.table();
        closes
            .into_iter()
            .filter(|(client, conn)| table.clients.get(client).is_none_or(|e| e.conn_id == *conn))
            .collect()
    };
    if closes.is_empty() {
        return again;
    }
    let batch = CloseBatch {
        clients: closes.iter().map(|(c, _)| *c).collect(),
    };
    let result = with_retry(shared, "ws_close", || {
        shared.metrics.calls_close.inc();
        shared.api.ws_close(hub.canister, &batch)
    })
    .await;
    match result {
        Ok(results) => {
            hub.call_succeeded();
            for ((client, conn), r) in closes.into_iter().zip(results) {
                if r == Err(WsError::NotProcessed) {
                    shared.metrics.not_processed.inc();
                    deferred.insert(client);
                    again.push((client, conn));
                }
            }
        }
        // The sessions expire in the canister anyway; nothing else depends on this.
        Err(e) => hub.call_failed("ws_close", &e),
    }
    again
}

async fn call_opens<C: CanisterApi>(
    shared: &Shared<C>,
    hub: &Hub,
    entries: &[&PendingOpen],
) -> Result<Vec<ic_ws_protocol::types::OpenResult>, CallError> {
    let batch = OpenBatch {
        opens: entries.iter().map(|o| o.request.clone()).collect(),
    };
    let n = entries.len();
    let result = with_retry(shared, "ws_open", || {
        shared.metrics.calls_open.inc();
        shared.api.ws_open(hub.canister, &batch)
    })
    .await?;
    if result.len() != n {
        return Err(CallError::Permanent(format!(
            "ws_open returned {} results for {n} opens",
            result.len()
        )));
    }
    Ok(result)
}

async fn relay_opens<C: CanisterApi>(
    shared: &Arc<Shared<C>>,
    hub: &Arc<Hub>,
    opens: Vec<PendingOpen>,
    deferred: &HashSet<ClientId>,
) -> Vec<PendingOpen> {
    // A resume never overtakes its client's messages or disconnect that go again.
    let (mut again, opens): (Vec<_>, Vec<_>) = opens.into_iter().partition(|o| {
        o.request
            .resume
            .is_some_and(|r| deferred.contains(&r.client_id))
    });
    if opens.is_empty() {
        return again;
    }
    let all: Vec<&PendingOpen> = opens.iter().collect();
    let outcomes: Vec<Outcome<OpenResult>> = match call_opens(shared, hub, &all).await {
        Ok(results) => {
            hub.call_succeeded();
            results.into_iter().map(Outcome::Answered).collect()
        }
        Err(CallError::Trapped(reason)) => {
            tracing::warn!(canister = %hub.canister, entries = all.len(), "ws_open trapped, isolating the entry by bisection: {reason}");
            isolate(
                all.len(),
                reason,
                |r| matches!(r, Err(WsError::NotProcessed)),
                |range| {
                    shared.metrics.isolation_calls.inc();
                    let part: Vec<&PendingOpen> = all
                        .get(range)
                        .map(<[&PendingOpen]>::to_vec)
                        .unwrap_or_default();
                    async move { call_opens(shared, hub, &part).await }
                },
            )
            .await
        }
        Err(e) => {
            hub.call_failed("ws_open", &e);
            all.iter().map(|_| Outcome::Failed(e.clone())).collect()
        }
    };
    drop(all);
    for (open, outcome) in opens.into_iter().zip(outcomes) {
        let result = match outcome {
            Outcome::Answered(Err(WsError::NotProcessed)) => {
                shared.metrics.not_processed.inc();
                again.push(open);
                continue;
            }
            Outcome::Later => {
                again.push(open);
                continue;
            }
            Outcome::Answered(r) => r,
            Outcome::Trapped(why) => {
                shared.metrics.trapped_entries.inc();
                Err(trapped("open", &why))
            }
            Outcome::Failed(e) => {
                unavailable(shared, &open.outbox, &e);
                continue;
            }
        };
        send_frame(&open.outbox, &GatewayFrame::OpenResult(result.clone()));
        // Protocol version 2: the refusal of a new session's open (`OpenRejected`) and of the
        // resume of a closed session (`Closed`) are certified messages of that session: attach
        // the connection to it so they are delivered.
        let reply = match &result {
            Ok(ok) => Some((ok.client_id, OpenReply::Opened(*ok))),
            Err(WsError::OpenRejected { client_id, .. }) if open.request.resume.is_none() => {
                Some((*client_id, OpenReply::Certifying(*client_id)))
            }
            Err(WsError::Closed) => open
                .request
                .resume
                .map(|r| (r.client_id, OpenReply::Certifying(r.client_id))),
            Err(_) => None,
        };
        if result.is_err() {
            shared.metrics.error(ErrorKind::OpenRejected);
        }
        match (reply, result) {
            (Some((client_id, reply)), _) => {
                let next_seq = open.request.resume.map_or(0, |r| r.next_outbound_seq);
                shared.attach(
                    hub,
                    client_id,
                    ClientEntry {
                        conn_id: open.conn_id,
                        outbox: open.outbox.clone(),
                        next_seq,
                    },
                );
                if open.reply.send(reply).is_err() && shared.detach(hub, client_id, open.conn_id) {
                    // The connection went away while its open was in flight.
                    let item = RelayItem::Close {
                        client_id,
                        conn_id: open.conn_id,
                    };
                    if hub.relay.try_send(item).is_err() {
                        tracing::debug!(
                            client = client_id,
                            "relay queue full: ws_close skipped (the session expires)"
                        );
                    }
                }
            }
            (None, Ok(_)) => {}
            (None, Err(error)) => {
                open.outbox.finish(CloseWith::new(
                    close_code::OPEN_FAILED,
                    format!("open failed: {error}"),
                ));
            }
        }
    }
    again
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_ws_protocol::types::ClientMessage;

    fn msg(client: ClientId, seq: u64, size: usize) -> RelayItem {
        RelayItem::Message(PendingMessage {
            message: ClientMessage {
                client_id: client,
                seq,
                ack: 0,
                kind: ic_ws_protocol::types::MessageKind::App(vec![0; size]),
                signature: vec![0; 64],
            },
            size,
            outbox: Arc::new(Outbox::new(10, 1000)),
            hold: Hold::default(),
        })
    }

    fn seqs(batch: &[RelayItem]) -> Vec<(ClientId, u64)> {
        batch
            .iter()
            .filter_map(|i| match i {
                RelayItem::Message(m) => Some((m.message.client_id, m.message.seq)),
                _ => None,
            })
            .collect()
    }

    fn close(client: ClientId) -> RelayItem {
        RelayItem::Close {
            client_id: client,
            conn_id: 1,
        }
    }

    fn lanes(batch: &[RelayItem]) -> Vec<String> {
        batch
            .iter()
            .map(|i| match i {
                RelayItem::Message(m) => format!("{}:{}", m.message.client_id, m.message.seq),
                RelayItem::Close { client_id, .. } => format!("{client_id}:close"),
                RelayItem::Open(o) => format!("open{}", o.conn_id),
            })
            .collect()
    }

    fn scheduler(items: Vec<RelayItem>) -> Scheduler {
        let mut s = Scheduler::new(1000 + ENTRY_OVERHEAD);
        for i in items {
            s.push(i);
        }
        s
    }

    #[test]
    fn batches_are_bounded_by_count_and_bytes() {
        let mut q = scheduler((0..10).map(|i| msg(i % 3, i / 3, 100)).collect());
        let first = q.take_batch(4, 1_000_000, None);
        assert_eq!(first.len(), 4);
        let second = q.take_batch(100, 2 * (ENTRY_OVERHEAD + 100), None);
        assert_eq!(second.len(), 2);
        assert_eq!(q.len(), 4);
        // An entry larger than the byte bound still goes alone (the canister judges it).
        let mut q = scheduler(vec![msg(1, 0, 5000), msg(1, 1, 10)]);
        assert_eq!(seqs(&q.take_batch(100, 1000, None)), vec![(1, 0)]);
        assert_eq!(seqs(&q.take_batch(100, 1000, None)), vec![(1, 1)]);
        assert!(q.is_empty());
    }

    #[test]
    fn each_lane_keeps_its_order_and_a_disconnect_follows_its_messages() {
        let mut items = Vec::new();
        for seq in 0..20 {
            items.push(msg(1, seq, 300));
            items.push(msg(2, seq, 10));
        }
        items.push(close(2));
        items.push(close(1));
        let mut q = scheduler(items);
        let mut seen = Vec::new();
        while !q.is_empty() {
            seen.extend(lanes(&q.take_batch(7, 3000, None)));
        }
        for client in [1, 2] {
            let mine: Vec<&String> = seen
                .iter()
                .filter(|l| l.starts_with(&format!("{client}:")))
                .collect();
            let mut expected: Vec<String> = (0..20).map(|s| format!("{client}:{s}")).collect();
            expected.push(format!("{client}:close"));
            assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "client {client}");
        }
    }

    #[test]
    fn a_client_with_nothing_queued_goes_in_the_next_batch_despite_backlogs() {
        // Three clients with backlogs of big entries.
        let big = 10_000 + ENTRY_OVERHEAD;
        let mut q = Scheduler::new(big);
        for seq in 0..50 {
            for client in 1..=3 {
                q.push(msg(client, seq, 10_000));
            }
        }
        let waits = Histogram::new(crate::metrics::WAIT_BATCH_BUCKETS);
        let first = q.take_batch(500, 2 * big, Some(&waits));
        assert_eq!(seqs(&first), vec![(1, 0), (2, 0)]);
        // An honest client's small message arrives: it is first in the very next batch.
        q.push(msg(9, 0, 50));
        let next = q.take_batch(500, 2 * big, Some(&waits));
        assert_eq!(seqs(&next), vec![(9, 0), (3, 0)]);
        assert_eq!(waits.quantile_upper_bound(1.0), Some(0.0));
        assert_eq!(
            waits.count(),
            1,
            "only the honest entry went with priority (the big ones waited their turn)"
        );
    }

    #[test]
    fn backlogged_clients_are_served_round_robin_by_bytes() {
        // Client 1 sends big entries, client 2 small ones: per round, client 1 gets one entry
        // (its quantum), client 2 as many as fit its quantum in bytes.
        let quantum = 10_000 + ENTRY_OVERHEAD;
        let mut items = Vec::new();
        for seq in 0..30 {
            items.push(msg(1, seq, 10_000));
        }
        for seq in 0..300 {
            items.push(msg(2, seq, 72)); // 200 bytes with the overhead
        }
        let mut q = Scheduler::new(quantum);
        for i in items {
            q.push(i);
        }
        let batch = q.take_batch(10_000, 10_000_000, None);
        assert_eq!(batch.len(), 330);
        let order: Vec<ClientId> = seqs(&batch).iter().map(|(c, _)| *c).collect();
        // The small lane's first turn (4 KiB, it was empty) comes before any big entry.
        assert_eq!(order.iter().position(|c| *c == 1), Some(4096 / 200));
        // Then one big entry per round, each followed by at most a quantum of small ones,
        // until the small lane runs dry (the other 56,000 bytes: 6 rounds).
        let runs: Vec<usize> = order
            .split(|c| *c == 1)
            .skip(1)
            .map(<[ClientId]>::len)
            .collect();
        assert!(runs.iter().all(|r| *r <= quantum / 200 + 1), "{runs:?}");
        let busy = runs.iter().take_while(|r| **r > 0).count();
        assert_eq!(busy, 6, "{runs:?}");
        assert!(runs[busy..].iter().all(|r| *r == 0));
    }

    #[test]
    fn no_backlog_delays_another_client_by_more_than_one_batch() {
        // Deterministic simulation: 40 flooders keep 4 big entries queued each; one client
        // sends one small message, waits for its batch, sends the next.
        let mut q = Scheduler::new(128 * 1024 + ENTRY_OVERHEAD);
        let mut next_seq = [0u64; 41];
        let waits = Histogram::new(crate::metrics::WAIT_BATCH_BUCKETS);
        let mut queued = [0usize; 41];
        for round in 0..200 {
            for client in 1..=40u64 {
                while queued[client as usize] < 4 {
                    q.push(msg(client, next_seq[client as usize], 120_000));
                    next_seq[client as usize] += 1;
                    queued[client as usize] += 1;
                }
            }
            if round % 3 == 0 {
                q.push(msg(0, next_seq[0], 100));
                next_seq[0] += 1;
                queued[0] += 1;
            }
            let honest_waiting = queued[0] > 0;
            let batch = q.take_batch(500, 1024 * 1024, Some(&waits));
            for (client, _) in seqs(&batch) {
                queued[client as usize] -= 1;
            }
            if honest_waiting {
                assert_eq!(queued[0], 0, "round {round}: the honest message waited");
            }
        }
        assert_eq!(next_seq[0], 67);
    }

    use futures_util::FutureExt;

    #[tokio::test]
    async fn refusals_throttle_then_close_and_accepted_messages_pay_back() {
        let share = ClientShare::new(4, 1000, 4);
        let held: Vec<SharePermit> = vec![
            share.acquire(10).await.unwrap(),
            share.acquire(10).await.unwrap(),
        ];
        assert!(!share.refused() && !share.refused());
        assert!(!share.throttled());
        assert!(!share.refused());
        assert!(share.throttled(), "3 of 4: throttled");
        // Throttled: the next message waits until everything in flight is answered.
        let waiting = share.acquire(10);
        tokio::pin!(waiting);
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(held);
        let one = waiting.await.unwrap();
        drop(one);
        share.accepted();
        share.accepted();
        assert!(!share.throttled());
        assert!(!share.refused() && !share.refused() && !share.refused());
        assert!(share.refused(), "5 net refusals > 4");
        assert!(is_refusal(&WsError::TooLarge { size: 2, limit: 1 }));
        assert!(!is_refusal(&WsError::InvalidSignature));
    }

    #[tokio::test]
    async fn a_share_bounds_bytes_too() {
        let share = ClientShare::new(100, 1000, 10);
        let a = share.acquire(600).await.unwrap();
        let b = share.acquire(600);
        tokio::pin!(b);
        assert!(b.as_mut().now_or_never().is_none());
        drop(a);
        // Larger than the whole share: takes all of it.
        let b = b.await.unwrap();
        drop(b);
        assert!(share.acquire(5000).await.is_some());
    }

    proptest::proptest! {
        #[test]
        fn error_texts_in_frames_are_bounded(why in "\\PC{0,3000}", code in 0u16..5000) {
            let WsError::Rejected(text) = trapped("message", &why) else {
                panic!("not Rejected");
            };
            let prefix = "the canister trapped handling this message: ";
            proptest::prop_assert!(text.len() <= prefix.len() + MAX_ERROR_TEXT_BYTES);
            let kept = text.strip_prefix(prefix).unwrap_or_default();
            proptest::prop_assert!(why.starts_with(kept.strip_suffix('…').unwrap_or(kept)));
            // Every close built from peer text fits a close frame, cut on a char boundary.
            for reason in [
                format!("open failed: {}", WsError::Rejected(why.clone())),
                format!("message 7 rejected: {}", trapped("message", &why)),
                format!("canister unavailable: {why}"),
            ] {
                let close = CloseWith::new(code, reason.clone());
                proptest::prop_assert!(close.reason.len() <= 123);
                let kept = close.reason.strip_suffix('…').unwrap_or(&close.reason);
                proptest::prop_assert!(reason.starts_with(kept));
            }
        }
    }

    /// A canister of `n` entries where those in `traps` trap the whole call; `budget` entries
    /// at most are processed per call (the rest `NotProcessed`). Returns the outcomes of
    /// isolating after the first call trapped, and the calls made.
    fn bisect(n: usize, traps: &[usize], budget: usize) -> (Vec<Outcome<MessageResult>>, usize) {
        let mut calls = 0;
        let outcomes = isolate(
            n,
            "trap".into(),
            |r| matches!(r, MessageResult::Err(WsError::NotProcessed)),
            |range: std::ops::Range<usize>| {
                calls += 1;
                let processed = range.start..range.end.min(range.start.saturating_add(budget));
                let r = if traps.iter().any(|t| processed.contains(t)) {
                    Err(CallError::Trapped(format!("{range:?}")))
                } else {
                    Ok(range
                        .map(|i| {
                            if processed.contains(&i) {
                                MessageResult::Ok
                            } else {
                                MessageResult::Err(WsError::NotProcessed)
                            }
                        })
                        .collect())
                };
                std::future::ready(r)
            },
        )
        .now_or_never()
        .unwrap();
        (outcomes, calls)
    }

    fn kinds(outcomes: &[Outcome<MessageResult>]) -> String {
        outcomes
            .iter()
            .map(|o| match o {
                Outcome::Answered(MessageResult::Err(WsError::NotProcessed)) => 'n',
                Outcome::Answered(_) => 'a',
                Outcome::Trapped(_) => 'T',
                Outcome::Failed(_) => 'F',
                Outcome::Later => 'l',
            })
            .collect()
    }

    #[test]
    fn bisection_finds_the_trapping_entry_of_500_in_9_calls() {
        for t in 0..500 {
            let (outcomes, calls) = bisect(500, &[t], usize::MAX);
            assert!(calls <= 9, "entry {t}: {calls} calls");
            let expected: String = (0..500)
                .map(|i| match i.cmp(&t) {
                    std::cmp::Ordering::Less => 'a',
                    std::cmp::Ordering::Equal => 'T',
                    std::cmp::Ordering::Greater => 'l',
                })
                .collect();
            assert_eq!(kinds(&outcomes), expected, "entry {t}");
        }
        // The bound is ceil(log2 n) for every n; one entry needs no call.
        for n in 1..=64usize {
            let bound = n.next_power_of_two().trailing_zeros() as usize;
            for t in 0..n {
                assert!(bisect(n, &[t], usize::MAX).1 <= bound, "n {n} t {t}");
            }
        }
        assert_eq!(bisect(1, &[0], usize::MAX).1, 0);
    }

    #[test]
    fn bisection_finds_the_first_of_several_and_leaves_the_rest_for_later() {
        let (outcomes, calls) = bisect(8, &[2, 5], usize::MAX);
        assert_eq!(kinds(&outcomes), "aaTlllll");
        assert!(calls <= 3);
        // The rest, sent again, isolates the next one.
        let (outcomes, _) = bisect(5, &[2], usize::MAX);
        assert_eq!(kinds(&outcomes), "aaTll");
    }

    #[test]
    fn bisection_stops_at_not_processed_and_at_other_failures() {
        // Budget of 2 entries: the first half [0, 4) is cut at 2; the search stops there.
        let (outcomes, calls) = bisect(8, &[6], 2);
        assert_eq!(kinds(&outcomes), "aannllll");
        assert_eq!(calls, 1);
        let mut calls = 0;
        let outcomes = isolate(
            4,
            "trap".into(),
            |_: &MessageResult| false,
            |_range| {
                calls += 1;
                std::future::ready(Err::<Vec<MessageResult>, _>(CallError::Permanent(
                    "gone".into(),
                )))
            },
        )
        .now_or_never()
        .unwrap();
        assert_eq!(kinds(&outcomes), "FFll");
        assert_eq!(calls, 1);
    }

    #[test]
    fn only_sequence_consuming_errors_let_a_session_continue() {
        assert!(!is_fatal(&WsError::Rejected("no".into())));
        assert!(!is_fatal(&WsError::DecodeError("bad".into())));
        assert!(is_fatal(&WsError::OutOfSequence {
            expected: 1,
            got: 3
        }));
        assert!(is_fatal(&WsError::InvalidSignature));
        assert!(is_fatal(&WsError::Closed));
    }
}
