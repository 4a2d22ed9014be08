//! How many clients the poller asks for per page (`PollRequest::max_clients`): a pure state
//! machine over the replies' `more` flags and the instants the caller passes in.
//!
//! The gateway writes one frame per client of a page, and the frames of a page are written
//! one after another on the gateway's cores (~20 us of CPU each, a third of it in the
//! kernel's TCP send; BENCHMARKS.md, "Page size against the added delay"). The last client of
//! a page of N clients therefore waits ~N x 20 us for its frame after the reply arrived: at
//! 10k clients x 1 msg/s, pages of ~430 single-message clients added p99 ~25 ms. Capping the
//! clients per page bounds that delay without capping messages, so a page still carries many
//! messages when they go to few clients (fan-out: 50 messages per client per page stay one
//! frame each).
//!
//! The cap starts at `--poll-page-clients` (the **base**). A backlog (replies flagged `more`)
//! is drained at once by the schedule's follow-up polls; only when a backlog of pages cut by
//! this cap (as many clients as asked for) outlasts `grow_after` (the active poll interval)
//! are the pages too small for the poll round trip (mainnet queries take tens to hundreds of
//! ms), and then each further such reply doubles the cap, up to `max`. Pages cut by the
//! canister's other caps (messages, bytes) do not grow it: more clients would not help. A
//! reply without `more` that used at most half of the cap halves it again, never below the
//! base; one that used more keeps it (the page size keeps up with the traffic at this round
//! trip, and halving it would bring the backlog back).
//!
//! What a hostile peer gets from it: the cap only follows its own canister's replies, so a
//! canister that always answers `more` makes its own poller ask for up to `max` clients per
//! page (what every poll asked for before this cap existed) and nothing else; a canister that
//! ignores the field (older ones do) sends pages as large as its own caps allow, which the
//! gateway delivers as before.

use std::time::{Duration, Instant};

/// The cap's settings (from the gateway's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Clients per page asked for when there is no lasting backlog; 0 turns the cap off
    /// (no `max_clients` in the requests).
    pub base: u32,
    /// The largest cap the backlog rule may reach.
    pub max: u32,
    /// How long a backlog must last before the cap grows.
    pub grow_after: Duration,
}

/// The current cap and the backlog it is reacting to.
#[derive(Debug, Clone)]
pub struct PageCap {
    settings: Settings,
    cap: u32,
    /// When the current run of `more` replies began.
    backlog_since: Option<Instant>,
}

/// What [`PageCap::observe`] did to the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Unchanged.
    Kept,
    /// Doubled (a backlog outlasted `grow_after`).
    Grown,
    /// Halved (a page without `more` used at most half of it).
    Shrunk,
}

impl PageCap {
    /// A cap at its base.
    pub fn new(settings: Settings) -> PageCap {
        let settings = Settings {
            max: settings.max.max(settings.base),
            ..settings
        };
        PageCap {
            settings,
            cap: settings.base,
            backlog_since: None,
        }
    }

    /// The `max_clients` to send with the next poll (`None` when the cap is off).
    pub fn request(&self) -> Option<u32> {
        (self.settings.base > 0).then_some(self.cap)
    }

    /// Records a reply that arrived at `now`: its `more` flag and how many distinct clients it
    /// carried.
    pub fn observe(&mut self, now: Instant, more: bool, clients: usize) -> Change {
        if self.settings.base == 0 {
            return Change::Kept;
        }
        let full = usize::try_from(self.cap).is_ok_and(|cap| clients >= cap);
        if more && !full {
            // Cut by the canister's other caps (messages, bytes): more clients per page would
            // not drain it faster.
            self.backlog_since = None;
            return Change::Kept;
        }
        if more {
            let since = *self.backlog_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.settings.grow_after
                && self.cap < self.settings.max
            {
                self.cap = self.cap.saturating_mul(2).min(self.settings.max);
                return Change::Grown;
            }
            return Change::Kept;
        }
        self.backlog_since = None;
        let half = usize::try_from(self.cap / 2).unwrap_or(usize::MAX);
        if clients <= half && self.cap > self.settings.base {
            self.cap = (self.cap / 2).max(self.settings.base);
            return Change::Shrunk;
        }
        Change::Kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn settings() -> Settings {
        Settings {
            base: 64,
            max: 4096,
            grow_after: 100 * MS,
        }
    }

    #[test]
    fn a_backlog_drained_within_the_interval_keeps_the_base() {
        let mut cap = PageCap::new(settings());
        let t0 = Instant::now();
        // 1,000 single-message clients queued, drained by 16 follow-ups ~2 ms apart.
        for i in 0..15 {
            assert_eq!(cap.observe(t0 + i * 2 * MS, true, 64), Change::Kept);
            assert_eq!(cap.request(), Some(64));
        }
        assert_eq!(cap.observe(t0 + 32 * MS, false, 40), Change::Kept);
        assert_eq!(cap.request(), Some(64));
        // The next backlog is timed from its own start, not the previous one's.
        assert_eq!(cap.observe(t0 + 150 * MS, true, 64), Change::Kept);
        assert_eq!(cap.request(), Some(64));
    }

    #[test]
    fn a_lasting_backlog_doubles_the_cap_per_reply_up_to_max_then_it_halves_back() {
        let mut cap = PageCap::new(settings());
        let t0 = Instant::now();
        // Mainnet-like: 150 ms per poll, always `more`, every page as many clients as asked.
        assert_eq!(cap.observe(t0, true, 64), Change::Kept);
        let mut expected = 64;
        for i in 1..=8u32 {
            let asked = cap.request().unwrap() as usize;
            let change = cap.observe(t0 + i * 150 * MS, true, asked);
            if expected < 4096 {
                assert_eq!(change, Change::Grown);
                expected *= 2;
            } else {
                assert_eq!(change, Change::Kept);
            }
            assert_eq!(cap.request(), Some(expected));
        }
        assert_eq!(expected, 4096);
        // A page that used more than half: kept (it keeps up at this size).
        assert_eq!(cap.observe(t0 + 2 * 1000 * MS, false, 2049), Change::Kept);
        assert_eq!(cap.request(), Some(4096));
        // Quiet pages halve it back to the base, no further.
        let mut t = t0 + 3000 * MS;
        for want in [2048, 1024, 512, 256, 128, 64, 64] {
            cap.observe(t, false, 1);
            assert_eq!(cap.request(), Some(want));
            t += 100 * MS;
        }
    }

    #[test]
    fn a_backlog_cut_by_the_message_cap_does_not_grow_it() {
        let mut cap = PageCap::new(settings());
        let t0 = Instant::now();
        // Fan-out: 500-message pages of 10 clients each, `more` for a whole second.
        for i in 0..100 {
            assert_eq!(cap.observe(t0 + i * 10 * MS, true, 10), Change::Kept);
        }
        assert_eq!(cap.request(), Some(64));
        // A full page after that starts its own backlog clock.
        assert_eq!(cap.observe(t0 + 1000 * MS, true, 64), Change::Kept);
        assert_eq!(cap.observe(t0 + 1050 * MS, true, 64), Change::Kept);
        assert_eq!(cap.observe(t0 + 1100 * MS, true, 64), Change::Grown);
    }

    #[test]
    fn base_zero_sends_no_cap() {
        let mut cap = PageCap::new(Settings {
            base: 0,
            ..settings()
        });
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(cap.observe(t0 + i * 500 * MS, true, 500), Change::Kept);
        }
        assert_eq!(cap.request(), None);
    }

    #[test]
    fn a_max_below_the_base_is_the_base() {
        let mut cap = PageCap::new(Settings {
            base: 100,
            max: 10,
            grow_after: Duration::ZERO,
        });
        let t0 = Instant::now();
        assert_eq!(cap.observe(t0, true, 100), Change::Kept);
        assert_eq!(cap.request(), Some(100));
    }

    proptest! {
        /// Whatever the replies and their timing (a hostile canister chooses both), the cap
        /// stays within [base, max], grows only on `more`, shrinks only without it, and one
        /// reply changes it by at most a factor of two.
        #[test]
        fn the_cap_stays_within_its_bounds(
            base in 1u32..5_000,
            extra in 0u32..100_000,
            grow_ms in 0u64..1_000,
            replies in proptest::collection::vec((0u64..2_000, any::<bool>(), 0usize..200_000), 0..200),
        ) {
            let max = base.saturating_add(extra);
            let mut cap = PageCap::new(Settings { base, max, grow_after: Duration::from_millis(grow_ms) });
            let mut t = Instant::now();
            for (gap, more, clients) in replies {
                t += Duration::from_millis(gap);
                let before = cap.request().unwrap();
                let change = cap.observe(t, more, clients);
                let after = cap.request().unwrap();
                prop_assert!((base..=max).contains(&after));
                match change {
                    Change::Kept => prop_assert_eq!(before, after),
                    Change::Grown => prop_assert!(more && clients >= before as usize && after > before && after <= before.saturating_mul(2)),
                    Change::Shrunk => prop_assert!(!more && after < before && after >= before / 2),
                }
            }
        }
    }
}
