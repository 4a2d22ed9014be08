//! Canister-wide limits (what many principals acting as gateways at once can make the
//! canister hold), expiring gateway records, and housekeeping in bounded steps.
//!
//! The per-gateway limits bound one principal; any non-anonymous principal can act as a
//! gateway under `GatewayPolicy::Open`, so a Sybil caller with many principals is bounded
//! only by the canister-wide caps checked here: sessions (`max_sessions`, in
//! `State::check_canister_capacity`), retained payload bytes (`max_retained_bytes`),
//! subscriptions (`max_subscriptions`) and gateway records (`max_gateways`). Each check runs
//! before its operation changes anything, so a refusal leaves the state as it was.
//!
//! Housekeeping is split into steps of one session or one record each
//! ([`State::housekeeping_step`]), so its driver (a timer, see `crate::housekeeping_run`) can
//! stop at an instruction budget between any two steps.

use super::{State, KEY_SWEEP_PER_CALL};
use crate::store::{pair_key, split_pair};
use crate::Error;
use candid::Principal;
use ic_ws_protocol::{ClientId, CloseReason, WsError};
use std::collections::{BTreeMap, BTreeSet};

/// Gateway records with no attached session, by the time they became idle (heap only).
#[derive(Default, Debug)]
pub(crate) struct GatewayIdle {
    by_time: BTreeSet<(u64, u32)>,
    since: BTreeMap<u32, u64>,
}

impl GatewayIdle {
    /// Records that gateway `id` has no session since `now` (keeps an earlier time).
    pub(crate) fn mark(&mut self, id: u32, now: u64) {
        if self.since.contains_key(&id) {
            return;
        }
        self.since.insert(id, now);
        self.by_time.insert((now, id));
    }

    /// Gateway `id` has sessions again.
    pub(crate) fn unmark(&mut self, id: u32) {
        if let Some(t) = self.since.remove(&id) {
            self.by_time.remove(&(t, id));
        }
    }

    fn first(&self) -> Option<(u64, u32)> {
        self.by_time.first().copied()
    }
}

/// One unit of housekeeping work done by [`State::housekeeping_step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chore {
    /// A silent session was closed with `Expired` (its `on_close` is pending).
    Expired(ClientId),
    /// A closed session past its retention was deleted.
    Deleted(ClientId),
    /// A gateway record without sessions past its retention was deleted.
    GatewayDeleted,
}

impl State {
    /// Recomputes the heap accounting of the canister-wide limits from stable memory (when
    /// the state is loaded): retained bytes and idle gateway records (whose retention starts
    /// over at `now`).
    pub(crate) fn rebuild_sybil_accounting(&mut self, now: u64) {
        self.retained_bytes = self
            .clients
            .iter()
            .map(|e| e.value().queued_bytes)
            .fold(0u64, u64::saturating_add);
        let mut idle = GatewayIdle::default();
        for e in self.gateways.iter() {
            let g = e.value();
            if g.sessions == 0 {
                idle.mark(g.id, now);
            }
        }
        self.gateway_idle = idle;
    }

    /// Retained payload bytes of all sessions.
    pub(crate) fn total_retained_bytes(&self) -> u64 {
        self.retained_bytes
    }

    /// Number of gateway records.
    pub(crate) fn gateway_count(&self) -> u64 {
        self.gateways.len()
    }

    /// Number of topic subscriptions.
    pub(crate) fn subscription_count(&self) -> u64 {
        self.subs.len()
    }

    /// `max_retained_bytes`: room for `copies` more retained copies of `size` bytes.
    pub(super) fn check_retained_bytes(&self, size: u64, copies: u64) -> Result<(), Error> {
        let max = self.config.retained_bytes();
        let more = size.saturating_mul(copies);
        if self.retained_bytes.saturating_add(more) > max {
            return Err(Error::LimitReached(format!(
                "{max} retained bytes in this canister ({} retained, {more} more needed)",
                self.retained_bytes
            )));
        }
        Ok(())
    }

    /// `max_subscriptions`: room for one more subscription.
    pub(super) fn check_subscriptions(&self) -> Result<(), Error> {
        let max = self.config.subscriptions();
        if self.subs.len() >= max {
            return Err(Error::LimitReached(format!(
                "{max} subscriptions in this canister"
            )));
        }
        Ok(())
    }

    /// `max_gateways`: `caller` has a record, or there is room for one more (and an internal
    /// id for it).
    pub(super) fn check_gateway_records(&self, caller: &Principal) -> Result<(), WsError> {
        if self.gateways.contains_key(caller) {
            return Ok(());
        }
        let max = self.config.gateway_records();
        if self.gateways.len() >= max {
            return Err(WsError::LimitReached(format!(
                "{max} gateways in this canister"
            )));
        }
        if self.counters.next_gateway_id > u64::from(u32::MAX) {
            return Err(WsError::LimitReached("gateway ids exhausted".into()));
        }
        Ok(())
    }

    /// Does one unit of housekeeping that is due at `now`, oldest first: expire the
    /// longest-silent session, else delete the oldest closed session past its retention,
    /// else delete the oldest idle gateway record past its retention. `None`: nothing is due.
    pub(crate) fn housekeeping_step(&mut self, now: u64) -> Option<Chore> {
        let idle_before = now.saturating_sub(self.config.idle_timeout_ns);
        let expired = self.activity.range(..(idle_before, 0)).next().copied();
        if let Some(k) = expired {
            let id = k.1;
            self.close_session(id, CloseReason::Expired, now);
            // `close_session` removes the entry; an entry without an open session (which
            // cannot happen) must not be found again forever.
            self.activity.remove(&k);
            return Some(Chore::Expired(id));
        }
        // Issue 10: a session whose delegation expired is closed (certified reason).
        if let Some((exp, id)) = self.first_identity_expired(now) {
            self.close_session(id, CloseReason::IdentityExpired, now);
            // `close_session` removes the entry (also when the session was closed already).
            self.drop_expiry_entry(exp, id);
            return Some(Chore::Expired(id));
        }
        let delete_before = now.saturating_sub(self.config.closed_retention_ns);
        let done = self
            .closed
            .keys_range(pair_key(0, 0)..pair_key(delete_before, 0))
            .next();
        if let Some(k) = done {
            let id = split_pair(&k).1;
            self.delete_session(id, now);
            // `delete_session` removes the entry; make sure it is gone whatever happened.
            self.closed.remove(&k);
            return Some(Chore::Deleted(id));
        }
        let gateway_before = now.saturating_sub(self.config.gateway_retention());
        if let Some((since, id)) = self.gateway_idle.first() {
            if since < gateway_before {
                self.gateway_idle.unmark(id);
                if let Some(p) = self.gateway_ids.get(&id) {
                    if self.gateways.get(&p).is_some_and(|g| g.sessions == 0) {
                        self.gateways.remove(&p);
                        self.gateway_ids.remove(&id);
                    }
                }
                return Some(Chore::GatewayDeleted);
            }
        }
        None
    }

    /// The incremental sweep of consumed-open records done once per housekeeping run.
    pub(crate) fn housekeeping_sweep(&mut self, now: u64) {
        self.sweep_keys(KEY_SWEEP_PER_CALL, now);
    }

    /// When housekeeping has work next (the earliest expiry, deletion or gateway record
    /// expiry), or `None` when there is nothing to wait for.
    pub(crate) fn next_housekeeping_due(&self) -> Option<u64> {
        let expiry = self
            .activity
            .first()
            .map(|(t, _)| t.saturating_add(self.config.idle_timeout_ns));
        let deletion = self.closed.keys_range(pair_key(0, 0)..).next().map(|k| {
            split_pair(&k)
                .0
                .saturating_add(self.config.closed_retention_ns)
        });
        let gateway = self
            .gateway_idle
            .first()
            .map(|(t, _)| t.saturating_add(self.config.gateway_retention()));
        let identity = self.next_identity_expiry();
        [expiry, deletion, gateway, identity]
            .into_iter()
            .flatten()
            .min()
    }
}

impl State {
    /// Subscribers of `topic` (from the per-topic count: no scan).
    pub(crate) fn subscriber_count(&self, topic: &str) -> u64 {
        self.topics.get(&topic.as_bytes().to_vec()).unwrap_or(0)
    }
}
