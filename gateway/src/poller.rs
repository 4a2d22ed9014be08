//! Canister -> client delivery: one poller per canister with attached clients.
//!
//! It calls `ws_poll` from its cursor, cuts each client's messages out of the reply with a
//! witness pruned to them ([`crate::witness`]) and pushes one `Messages` frame per client into
//! that client's bounded send buffer (never waiting for a client). The interval adapts: the
//! minimum while messages flow (and right after a client message was relayed, since replies
//! are likely), doubling after each empty poll up to the maximum; `more` in a reply means poll
//! again at once. The poller stops some time after its canister's last client left.

use crate::canister::CanisterApi;
use crate::health::WorkerExit;
use crate::hub::{Hub, Page, Shared};
use crate::metrics::ErrorKind;
use crate::witness::PageWitness;
use ic_ws_protocol::types::{ClientId, OutboundMessage, PollReply, PollRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The next poll interval after a poll that returned `got_messages`.
pub fn next_interval(
    current: Duration,
    got_messages: bool,
    min: Duration,
    max: Duration,
) -> Duration {
    if got_messages {
        min
    } else {
        current.saturating_mul(2).clamp(min, max)
    }
}

/// Polls `hub`'s canister until the gateway closes or the canister has had no client for
/// `--poll-idle-stop-ms`.
pub async fn run<C: CanisterApi>(shared: Arc<Shared<C>>, hub: Arc<Hub>) -> WorkerExit {
    let min = shared.config.poll_min_interval();
    let max = shared.config.poll_max_interval();
    let mut closing = shared.closing.subscribe();
    let mut interval = min;
    let mut cursor = hub.cursor();
    let mut last_client = Instant::now();
    tracing::debug!(canister = %hub.canister, cursor, "poller started");
    loop {
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
        };
        let started = Instant::now();
        shared.metrics.polls.inc();
        let result = shared.api.ws_poll(hub.canister, request).await;
        shared
            .metrics
            .poll_latency
            .observe_duration(started.elapsed());
        let mut more = false;
        match result {
            Ok(Ok(reply)) => {
                let got = !reply.messages.is_empty();
                more = reply.more;
                cursor = reply.next_cursor;
                hub.set_cursor(cursor);
                if got {
                    deliver(&shared, &hub, reply);
                }
                interval = next_interval(interval, got, min, max);
            }
            Ok(Err(e)) => {
                shared.metrics.error(ErrorKind::Poll);
                tracing::warn!(canister = %hub.canister, cursor, "ws_poll refused: {e}");
                interval = next_interval(interval, false, min, max);
            }
            Err(e) => {
                shared.metrics.error(ErrorKind::Poll);
                tracing::warn!(canister = %hub.canister, cursor, "ws_poll failed: {e}");
                interval = next_interval(interval, false, min, max);
            }
        }
        if more {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = hub.poll_wake.notified() => interval = min,
            _ = closing.wait_for(|c| *c) => break,
        }
    }
    hub.poller_stopped();
    WorkerExit::Done
}

/// Splits a reply by client and hands each client its messages.
pub fn deliver<C: CanisterApi>(shared: &Shared<C>, hub: &Hub, reply: PollReply) {
    let received = Instant::now();
    let tree = match serde_cbor::from_slice::<ic_certification::HashTree>(&reply.tree) {
        Ok(t) => t,
        Err(e) => {
            // Clients would reject these messages anyway; they resume from what they have.
            shared.metrics.error(ErrorKind::Poll);
            tracing::warn!(canister = %hub.canister, "poll reply tree does not decode: {e}");
            return;
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
    let mut table = hub.table();
    for client in order {
        if let Some(messages) = by_client.remove(&client) {
            shared.deliver_locked(&mut table, &page, client, messages);
        }
    }
    drop(table);
    shared.metrics.page_size.observe(total as f64);
    shared
        .metrics
        .page_distribution
        .observe_duration(received.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_fast_with_traffic_and_backs_off_when_idle() {
        let (min, max) = (Duration::from_millis(20), Duration::from_millis(500));
        let mut i = min;
        let mut seen = vec![];
        for _ in 0..7 {
            i = next_interval(i, false, min, max);
            seen.push(i.as_millis());
        }
        assert_eq!(seen, vec![40, 80, 160, 320, 500, 500, 500]);
        assert_eq!(next_interval(i, true, min, max), min);
    }
}
