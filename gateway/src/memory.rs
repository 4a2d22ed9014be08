//! The gateway-wide memory budget: one ledger of every buffer a peer can grow.
//!
//! Every byte a client or canister makes the gateway hold is charged here while it is held, by
//! category: decoded client frames a session holds before the relay takes them (`held`), the
//! per-canister relay queues and the messages in flight to the canister (`relay`), clients'
//! send buffers (`outbox`), messages polled for clients that are not attached (`orphans`), and
//! the WebSocket frames clients are sending, from the moment a frame header announces its
//! length (tungstenite reserves that much at once) until the message is complete (`frames`,
//! metered by `crate::inbound`).
//! A [`Charge`] gives its bytes back when dropped, so the ledger cannot drift from the buffers.
//!
//! Shedding is ordered so the cheapest hoarding and new work go first: incoming messages over
//! 16 KiB are refused (4006) past half of the budget ([`Ledger::admits_big_messages`]), new
//! connections and opens once [`Ledger::admits_new_work`] says the ledger is past its
//! high-water mark (3/4 of the budget); a client message that would take the ledger past the whole budget closes its
//! sender with 4006. Per-client shares (`--max-inflight-per-client`,
//! `--max-inflight-bytes-per-client`, `--send-buffer-bytes`) keep any one client far below
//! the budget; the budget bounds the sum.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// What a charged buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// A decoded client frame waiting for its client's share and a relay slot.
    Held,
    /// Client messages queued for the canister or in flight to it.
    Relay,
    /// Frames queued in clients' send buffers.
    Outbox,
    /// Polled messages for clients that are not attached (yet).
    Orphans,
    /// WebSocket frames being received (announced by their header, not yet a whole message).
    Frames,
}

const CATEGORIES: [(Category, &str); 5] = [
    (Category::Held, "held"),
    (Category::Relay, "relay"),
    (Category::Outbox, "outbox"),
    (Category::Orphans, "orphans"),
    (Category::Frames, "frames"),
];

fn index(category: Category) -> usize {
    match category {
        Category::Held => 0,
        Category::Relay => 1,
        Category::Outbox => 2,
        Category::Orphans => 3,
        Category::Frames => 4,
    }
}

/// What was shed because of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// A new connection refused (4006).
    Connection,
    /// An open refused (4006).
    Open,
    /// A client message that did not fit: its sender closed (4006).
    Message,
    /// A frame for a client that is behind: the client closed (4006).
    Outbox,
    /// An orphan message dropped.
    Orphan,
    /// A frame whose announced length did not fit: its sender closed (4006).
    Frame,
}

const SHEDS: [(Shed, &str); 6] = [
    (Shed::Connection, "connection"),
    (Shed::Open, "open"),
    (Shed::Message, "message"),
    (Shed::Outbox, "outbox"),
    (Shed::Orphan, "orphan"),
    (Shed::Frame, "frame"),
];

/// The shared ledger: bytes in use per category against one budget.
#[derive(Debug)]
pub struct Ledger {
    budget: AtomicUsize,
    total: AtomicUsize,
    used: [AtomicUsize; CATEGORIES.len()],
    shed: [AtomicU64; SHEDS.len()],
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new(usize::MAX)
    }
}

impl Ledger {
    /// A ledger with `budget` bytes.
    pub fn new(budget: usize) -> Self {
        Ledger {
            budget: AtomicUsize::new(budget),
            total: AtomicUsize::new(0),
            used: Default::default(),
            shed: Default::default(),
        }
    }

    /// Sets the budget (at startup, from the configuration).
    pub fn set_budget(&self, budget: usize) {
        self.budget.store(budget, Relaxed);
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.budget.load(Relaxed)
    }

    /// Bytes in use, all categories.
    pub fn total(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// Bytes in use in `category`.
    pub fn used(&self, category: Category) -> usize {
        self.slot(category).load(Relaxed)
    }

    /// Whether new connections and opens are still taken: the ledger is below 3/4 of the
    /// budget, which leaves the last quarter to the sessions that already exist.
    pub fn admits_new_work(&self) -> bool {
        let budget = self.budget();
        self.total() <= budget.saturating_sub(budget / 4)
    }

    /// Whether incoming messages over 16 KiB (`crate::inbound::SMALL_MESSAGE`) are still taken:
    /// the ledger is below half the budget. Big half-sent frames are the cheapest way to hold
    /// gateway memory, so they stop first, while new connections and opens still get in (up
    /// to 3/4) and existing sessions' small messages have the rest.
    pub fn admits_big_messages(&self) -> bool {
        self.total() <= self.budget() / 2
    }

    /// The counter of `category`.
    fn slot(&self, category: Category) -> &AtomicUsize {
        #[allow(
            clippy::indexing_slicing,
            reason = "`index` maps every category into the array's bounds"
        )]
        &self.used[index(category)]
    }

    /// Charges `bytes` to `category` if the total stays within the budget.
    pub fn try_charge(self: &Arc<Self>, category: Category, bytes: usize) -> Option<Charge> {
        let budget = self.budget();
        self.total
            .fetch_update(Relaxed, Relaxed, |t| {
                t.checked_add(bytes).filter(|n| *n <= budget)
            })
            .ok()?;
        self.slot(category).fetch_add(bytes, Relaxed);
        Some(Charge {
            ledger: self.clone(),
            category,
            bytes,
        })
    }

    /// Charges `bytes` to `category` even past the budget (for buffers already bounded per
    /// peer that must take one item to make progress, e.g. an empty send buffer).
    pub fn charge(self: &Arc<Self>, category: Category, bytes: usize) -> Charge {
        self.total.fetch_add(bytes, Relaxed);
        self.slot(category).fetch_add(bytes, Relaxed);
        Charge {
            ledger: self.clone(),
            category,
            bytes,
        }
    }

    /// Counts one thing shed.
    pub fn shed(&self, what: Shed) {
        if let Some(c) = SHEDS
            .iter()
            .position(|(s, _)| *s == what)
            .and_then(|i| self.shed.get(i))
        {
            c.fetch_add(1, Relaxed);
        }
    }

    /// How many of `what` were shed.
    pub fn shed_count(&self, what: Shed) -> u64 {
        SHEDS
            .iter()
            .position(|(s, _)| *s == what)
            .and_then(|i| self.shed.get(i))
            .map_or(0, |c| c.load(Relaxed))
    }

    fn release(&self, category: Category, bytes: usize) {
        self.total.fetch_sub(bytes, Relaxed);
        self.slot(category).fetch_sub(bytes, Relaxed);
    }

    /// Appends the ledger's metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP ic_ws_gateway_memory_budget_bytes The gateway-wide memory budget (--memory-budget-bytes).\n\
             # TYPE ic_ws_gateway_memory_budget_bytes gauge\n\
             ic_ws_gateway_memory_budget_bytes {}\n\
             # HELP ic_ws_gateway_memory_bytes Bytes held for peers, by buffer.\n\
             # TYPE ic_ws_gateway_memory_bytes gauge",
            self.budget()
        );
        for (c, name) in CATEGORIES {
            let _ = writeln!(
                out,
                "ic_ws_gateway_memory_bytes{{buffer=\"{name}\"}} {}",
                self.used(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ic_ws_gateway_shed_total Work shed because of the memory budget (4006), by kind.\n\
             # TYPE ic_ws_gateway_shed_total counter"
        );
        for (s, name) in SHEDS {
            let _ = writeln!(
                out,
                "ic_ws_gateway_shed_total{{kind=\"{name}\"}} {}",
                self.shed_count(s)
            );
        }
    }
}

/// Bytes charged to the ledger, given back on drop.
#[derive(Debug)]
pub struct Charge {
    ledger: Arc<Ledger>,
    category: Category,
    bytes: usize,
}

impl Charge {
    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `bytes` to the charge if the ledger's total stays within the budget; `false` (and
    /// nothing changes) otherwise.
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        let budget = self.ledger.budget();
        let grown = self.ledger.total.fetch_update(Relaxed, Relaxed, |t| {
            t.checked_add(bytes).filter(|n| *n <= budget)
        });
        if grown.is_err() {
            return false;
        }
        self.ledger.slot(self.category).fetch_add(bytes, Relaxed);
        self.bytes = self.bytes.saturating_add(bytes);
        true
    }

    /// Takes over `other`'s bytes (same category: the ledger's totals do not change).
    pub fn absorb(&mut self, mut other: Charge) {
        other.move_to(self.category);
        self.bytes = self.bytes.saturating_add(other.bytes);
        other.bytes = 0;
    }

    /// Moves the charge to another category (e.g. a held frame taken by the relay).
    pub fn move_to(&mut self, category: Category) {
        if category != self.category {
            self.ledger
                .slot(self.category)
                .fetch_sub(self.bytes, Relaxed);
            self.ledger.slot(category).fetch_add(self.bytes, Relaxed);
            self.category = category;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.ledger.release(self.category, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_by_the_budget_and_given_back_on_drop() {
        let ledger = Arc::new(Ledger::new(1000));
        let a = ledger.try_charge(Category::Relay, 600).unwrap();
        assert!(ledger.admits_new_work());
        let mut b = ledger.try_charge(Category::Held, 300).unwrap();
        assert!(!ledger.admits_new_work(), "900 > 3/4 of 1000");
        assert!(ledger.try_charge(Category::Relay, 101).is_none());
        b.move_to(Category::Relay);
        assert_eq!(ledger.used(Category::Relay), 900);
        assert_eq!(ledger.used(Category::Held), 0);
        let forced = ledger.charge(Category::Outbox, 500);
        assert_eq!(ledger.total(), 1400);
        drop((a, b, forced));
        assert_eq!(ledger.total(), 0);
        assert_eq!(ledger.used(Category::Relay), 0);
        ledger.shed(Shed::Open);
        let mut text = String::new();
        ledger.render(&mut text);
        assert!(
            text.contains("ic_ws_gateway_memory_budget_bytes 1000"),
            "{text}"
        );
        assert!(
            text.contains("ic_ws_gateway_shed_total{kind=\"open\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ic_ws_gateway_memory_bytes{buffer=\"relay\"} 0"),
            "{text}"
        );
    }
}
