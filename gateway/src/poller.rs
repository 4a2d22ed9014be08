//! Canister -> client delivery: one poller per canister with attached clients.
//!
//! It calls `ws_poll` from its cursor, cuts each client's messages out of the reply with a
//! witness pruned to them ([`crate::witness`]) and pushes one `Messages` frame per client into
//! that client's bounded send buffer (never waiting for a client). When it polls is the
//! [`crate::schedule`] policy's call: every `--poll-active-interval-ms` while there was
//! traffic in the last minute, backing off to `--poll-max-interval-ms` when idle, right after
//! every update the gateway relays (`hub.poll_wake`), at once after a reply flagged `more`,
//! no later than the canister's hint (`next_poll_ms`, clamped), jittered and within a query
//! budget. Each poll asks for at most [`crate::pagecap`]'s number of clients (one frame each),
//! which bounds how long a page's last frame waits behind the others. The poller stops some
//! time after its canister's last client left.

use crate::canister::CanisterApi;
use crate::health::WorkerExit;
use crate::hub::{Hub, Page, Shared};
use crate::metrics::ErrorKind;
use crate::pagecap::{Change, PageCap};
use crate::rhythm::Rhythm;
use crate::schedule::{Outcome, Schedule};
use ic_ws_protocol::types::{ClientId, OutboundMessage, PollReply, PollRequest};
use ic_ws_protocol::witness::PageWitness;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

/// Polls `hub`'s canister until the gateway closes or the canister has had no client for
/// `--poll-idle-stop-ms`.
pub async fn run<C: CanisterApi>(shared: Arc<Shared<C>>, hub: Arc<Hub>) -> WorkerExit {
    let mut closing = shared.closing.subscribe();
    // Jitter seed: differs per process and canister.
    let seed = std::collections::hash_map::RandomState::new().hash_one(hub.canister);
    let mut schedule = Schedule::new(shared.config.poll_schedule(), Instant::now(), seed);
    let mut rhythm = shared.config.poll_rhythm().map(Rhythm::new);
    let mut page_cap = PageCap::new(shared.config.poll_page_cap());
    let mut cursor = hub.cursor();
    let mut last_client = Instant::now();
    tracing::debug!(canister = %hub.canister, cursor, "poller started");
    'polls: loop {
        if *closing.borrow() {
            break;
        }
        hub.table()
            .expire_orphans(Instant::now(), shared.config.orphan_ttl());
        if hub.poller_may_stop(&mut last_client, shared.config.poll_idle_stop()) {
            tracing::debug!(canister = %hub.canister, "poller stopped: no clients");
            return WorkerExit::Done;
        }
        if crate::testhook::fire(&shared.config, "panic-poller") {
            panic!("test hook: poller of {} panics", hub.canister);
        }
        let request = PollRequest {
            cursor,
            max_messages: shared.config.poll_max_messages,
            max_bytes: shared.config.poll_max_bytes,
            max_clients: page_cap.request(),
        };
        let started = Instant::now();
        let started_wall_ns = wall_ns();
        schedule.poll_started(started);
        shared.metrics.polls.inc();
        let result = shared.api.ws_poll(hub.canister, request).await;
        shared
            .metrics
            .poll_latency
            .observe_duration(started.elapsed());
        let mut outcome = Outcome::default();
        match result {
            Ok(Ok(reply)) => {
                hub.call_succeeded();
                outcome.got_messages = !reply.messages.is_empty();
                outcome.more = reply.more;
                outcome.hint_ms = reply.next_poll_ms;
                if let Some(rhythm) = rhythm.as_mut() {
                    rhythm.observe(
                        started_wall_ns,
                        reply
                            .messages
                            .iter()
                            .filter_map(|m| crate::codec::timestamp_ns(&m.content)),
                    );
                }
                cursor = reply.next_cursor;
                hub.set_cursor(cursor);
                let more = reply.more;
                let clients = if outcome.got_messages {
                    deliver(&shared, &hub, reply)
                } else {
                    0
                };
                if page_cap.observe(Instant::now(), more, clients) == Change::Grown {
                    shared.metrics.page_cap_grown.inc();
                    tracing::debug!(canister = %hub.canister, cap = ?page_cap.request(), "backlog outlasted the poll interval: bigger pages");
                }
            }
            Ok(Err(e)) => {
                shared.metrics.error(ErrorKind::Poll);
                hub.call_failed("ws_poll (refused)", &e);
            }
            Err(e) => {
                shared.metrics.error(ErrorKind::Poll);
                hub.call_failed("ws_poll", &e);
            }
        }
        let now = Instant::now();
        outcome.rhythm_in = rhythm.as_ref().and_then(|r| r.predict(wall_ns()));
        let (mut next, reason) = schedule.poll_finished(now, outcome);
        tracing::debug!(canister = %hub.canister, ?reason, in_ms = next.saturating_duration_since(now).as_millis(), ?outcome, "next poll");
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => break,
                _ = hub.poll_wake.notified() => {
                    let now = Instant::now();
                    let (at, reason) = schedule.woken(now);
                    next = at;
                    tracing::debug!(canister = %hub.canister, ?reason, in_ms = at.saturating_duration_since(now).as_millis(), "woken");
                }
                _ = closing.wait_for(|c| *c) => break 'polls,
            }
        }
    }
    hub.poller_stopped();
    WorkerExit::Done
}

/// The wall clock in nanoseconds since the epoch (0 if it is set before 1970).
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Splits a reply by client and hands each client its messages; returns how many clients the
/// reply had messages for.
pub fn deliver<C: CanisterApi>(shared: &Shared<C>, hub: &Hub, reply: PollReply) -> usize {
    let received = Instant::now();
    let tree = match serde_cbor::from_slice::<ic_certification::HashTree>(&reply.tree) {
        Ok(t) => t,
        Err(e) => {
            // Clients would reject these messages anyway; they resume from what they have.
            shared.metrics.error(ErrorKind::Poll);
            tracing::warn!(canister = %hub.canister, "poll reply tree does not decode: {e}");
            return 0;
        }
    };
    let page = Arc::new(Page {
        certificate: reply.certificate,
        witness: PageWitness::new(&tree),
        received,
    });
    let mut order: Vec<ClientId> = Vec::new();
    let mut by_client: HashMap<ClientId, Vec<OutboundMessage>> = HashMap::new();
    let total = reply.messages.len();
    for m in reply.messages {
        by_client
            .entry(m.client_id)
            .or_insert_with(|| {
                order.push(m.client_id);
                Vec::new()
            })
            .push(m);
    }
    let clients = order.len();
    let mut table = hub.table();
    for client in order {
        if let Some(messages) = by_client.remove(&client) {
            shared.deliver_locked(&mut table, &page, client, messages);
        }
    }
    drop(table);
    shared.metrics.page_size.observe(total as f64);
    shared.metrics.page_clients.observe(clients as f64);
    shared
        .metrics
        .page_distribution
        .observe_duration(received.elapsed());
    clients
}
