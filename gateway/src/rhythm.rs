//! The production rhythm of a canister, learnt from the certified timestamps of the messages
//! the poller receives, so the poll schedule can put a poll just after the next burst.
//!
//! Messages a gateway has no cue for (published by a timer, or by clients of other gateways)
//! wait for the next poll: half the poll interval on average whatever the schedule, if their
//! times are unknown. But such traffic is often periodic (a ticker, a game tick, a timer that
//! broadcasts), and every message carries the canister time at which it was queued
//! (`OutboundContent::timestamp_ns`). A **burst** is a run of messages whose timestamps follow
//! the previous message's by less than [`Settings::gap`]; when the starts of the last
//! [`INTERVALS`] + 1 bursts are evenly spaced (every interval within [`TOLERANCE_PCT`] % of their
//! median, or within `gap`), the next burst is predicted one period after the last, and the
//! poll that should first see it is due at that canister time (plus half the intervals'
//! spread, for a burst that comes a little late) plus the **lag**: the smallest
//! of the last [`LAGS`] differences between the (wall-clock) start of the poll that first saw a
//! burst and the burst's timestamp. The lag absorbs the gateway's clock offset from the
//! canister's, the time the message takes to be certified and queryable (a round locally, more
//! on mainnet) and half the query's round trip; a prediction that comes too early is caught by
//! the schedule's follow-up polls, and lags measured by them raise the estimate within
//! [`LAGS`] bursts.
//!
//! The module only predicts; [`crate::schedule`] decides, within its query budget, whether to
//! move a poll there. Timestamps come from the canister's replies, so a hostile canister can
//! move its own gateway's polls within the schedule's bounds, and nothing else: all arithmetic
//! saturates, the state is a few fixed-size rings, and predictions beyond
//! [`Settings::max_period`] are not made.

use std::collections::VecDeque;
use std::time::Duration;

/// Intervals between burst starts that must agree before a prediction is made.
pub const INTERVALS: usize = 3;
/// How far an interval may stray from the median of the last [`INTERVALS`], in percent.
pub const TOLERANCE_PCT: u64 = 10;
/// Lag observations kept (the estimate is their minimum).
pub const LAGS: usize = 4;

/// The rhythm detector's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Messages closer together than this belong to one burst.
    pub gap: Duration,
    /// Shortest period worth predicting (shorter ones are served by the regular interval).
    pub min_period: Duration,
    /// Longest period predicted.
    pub max_period: Duration,
}

/// Learns burst starts and lags; predicts when to poll next.
#[derive(Debug, Clone)]
pub struct Rhythm {
    settings: Settings,
    /// Canister timestamps (ns) of the last burst starts, oldest first.
    starts: VecDeque<u64>,
    /// Newest message timestamp seen (ns).
    newest: Option<u64>,
    /// Poll start (wall clock, ns since the epoch) minus burst start, per burst, of the poll
    /// that first saw it: upper bounds of the lag. May be negative when the gateway's clock is
    /// behind the canister's.
    lags: VecDeque<i128>,
    /// The same for the last poll before that one, when it started after the burst was
    /// queued and did not see it: lower bounds of the lag.
    misses: VecDeque<i128>,
    /// Start of the last poll that saw no new burst.
    last_quiet_start: Option<u64>,
}

impl Rhythm {
    /// A detector that has seen nothing.
    pub fn new(settings: Settings) -> Rhythm {
        Rhythm {
            settings,
            starts: VecDeque::with_capacity(INTERVALS.saturating_add(1)),
            newest: None,
            lags: VecDeque::with_capacity(LAGS),
            misses: VecDeque::with_capacity(LAGS),
            last_quiet_start: None,
        }
    }

    /// Records the timestamps (canister ns) of the messages of one poll reply, in any order;
    /// `poll_started_ns` is the wall-clock time the poll was sent.
    pub fn observe(&mut self, poll_started_ns: u64, timestamps: impl IntoIterator<Item = u64>) {
        let mut sorted: Vec<u64> = timestamps.into_iter().collect();
        sorted.sort_unstable();
        let gap = duration_ns(self.settings.gap);
        let mut first_new_burst = true;
        for ts in sorted {
            let starts_burst = match self.newest {
                None => true,
                // Older than what was seen (another client's backlog, a resumed session's
                // re-queued messages): not a new burst.
                Some(newest) if ts <= newest => false,
                Some(newest) => ts.saturating_sub(newest) >= gap,
            };
            if starts_burst {
                self.push_start(ts);
                // Only the first burst of a reply was waiting for this very poll; later ones in
                // the same reply say nothing about how soon a poll can see a burst.
                if first_new_burst {
                    let since = |start: u64| i128::from(start).saturating_sub(i128::from(ts));
                    push_bounded(&mut self.lags, since(poll_started_ns));
                    if let Some(quiet) = self.last_quiet_start.filter(|q| *q > ts) {
                        push_bounded(&mut self.misses, since(quiet));
                    }
                    first_new_burst = false;
                }
            }
            self.newest = Some(self.newest.map_or(ts, |n| n.max(ts)));
        }
        self.last_quiet_start = first_new_burst.then_some(poll_started_ns);
    }

    fn push_start(&mut self, ts: u64) {
        if self.starts.len() > INTERVALS {
            self.starts.pop_front();
        }
        self.starts.push_back(ts);
    }

    /// The period, if the last [`INTERVALS`] intervals between burst starts agree.
    pub fn period(&self) -> Option<u64> {
        self.period_and_spread().map(|(period, _)| period)
    }

    /// The median of the last intervals and their spread (largest minus smallest), if they
    /// agree.
    fn period_and_spread(&self) -> Option<(u64, u64)> {
        if self.starts.len() <= INTERVALS {
            return None;
        }
        let mut intervals: Vec<u64> = self
            .starts
            .iter()
            .zip(self.starts.iter().skip(1))
            .map(|(a, b)| b.saturating_sub(*a))
            .collect();
        intervals.sort_unstable();
        let median = *intervals.get(intervals.len() / 2)?;
        let tolerance = (median / 100)
            .saturating_mul(TOLERANCE_PCT)
            .max(duration_ns(self.settings.gap));
        let agree = intervals.iter().all(|i| i.abs_diff(median) <= tolerance);
        let in_range = median >= duration_ns(self.settings.min_period)
            && median <= duration_ns(self.settings.max_period);
        let spread = intervals
            .last()
            .zip(intervals.first())
            .map_or(0, |(max, min)| max.saturating_sub(*min));
        (agree && in_range).then_some((median, spread))
    }

    /// How long from `now_ns` (wall clock) the next poll should start to be the first to see
    /// the predicted burst; `None` without a confident rhythm, or when the predicted moment
    /// has passed (the burst is late: the regular schedule takes over until the rhythm is
    /// re-established).
    pub fn predict(&self, now_ns: u64) -> Option<Duration> {
        let (period, spread) = self.period_and_spread()?;
        let last = *self.starts.back()?;
        let lag = self.lag()?;
        // Half the observed spread of the period later, so a burst that comes a little late
        // (as often as early) is still seen by the first poll.
        let due = i128::from(last)
            .saturating_add(i128::from(period))
            .saturating_add(i128::from(spread / 2))
            .saturating_add(lag);
        let from_now = due.saturating_sub(i128::from(now_ns));
        if from_now < 0 {
            return None;
        }
        let from_now = u64::try_from(from_now).ok()?;
        (from_now <= duration_ns(self.settings.max_period)).then(|| Duration::from_nanos(from_now))
    }
}

impl Rhythm {
    /// The lag to plan with: the smallest recent upper bound, or, while the largest recent
    /// lower bound (a poll that was too early; without one, [`PROBE_STEP_NS`] below the upper
    /// bound) is more than [`PROBE_RESOLUTION_NS`] below it, the middle of the two. A poll
    /// placed there either sees the burst (a new, lower upper bound) or not (a new, higher
    /// lower bound; the schedule's follow-up sees the burst): a bisection that settles within
    /// a few bursts on the smallest lag that works, at the cost of a few early polls.
    fn lag(&self) -> Option<i128> {
        let hi = *self.lags.iter().min()?;
        let lo = self
            .misses
            .iter()
            .max()
            .copied()
            .unwrap_or_else(|| hi.saturating_sub(PROBE_STEP_NS));
        if lo < hi.saturating_sub(PROBE_RESOLUTION_NS) {
            Some(lo.saturating_add(hi.saturating_sub(lo) / 2))
        } else {
            Some(hi)
        }
    }
}

/// How close the lag's bounds must come before the schedule stops probing between them.
pub const PROBE_RESOLUTION_NS: i128 = 2_000_000;
/// Without a lower bound yet, how far below the upper bound the lag is probed (twice the
/// step of each probe: the bisection starts at half of it).
pub const PROBE_STEP_NS: i128 = 40_000_000;

fn push_bounded(ring: &mut VecDeque<i128>, value: i128) {
    if ring.len() >= LAGS {
        ring.pop_front();
    }
    ring.push_back(value);
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn settings() -> Settings {
        Settings {
            gap: Duration::from_millis(20),
            min_period: Duration::from_millis(200),
            max_period: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_periodic_burst_is_predicted_after_four_bursts() {
        let mut r = Rhythm::new(settings());
        // Bursts of 100 messages with one timestamp every 530 ms, each first seen by a poll
        // 40 ms after it was queued.
        for k in 0..4u64 {
            let ts = 1_000 * MS + k * 530 * MS;
            assert_eq!(
                r.predict(ts + 41 * MS),
                None,
                "burst {k}: too early to tell"
            );
            r.observe(ts + 40 * MS, std::iter::repeat_n(ts, 100));
        }
        assert_eq!(r.period(), Some(530 * MS));
        // Last burst at 1000 + 3*530 = 2590 ms; next at 3120 ms; seen 40 ms after, never
        // known to be missed: the lag is probed half a step lower, 20 ms -> poll at 3140 ms.
        assert_eq!(
            r.predict(2_700 * MS),
            Some(Duration::from_millis(3_140 - 2_700))
        );
        // Past the predicted moment: no prediction (the burst is late).
        assert_eq!(r.predict(3_141 * MS), None);
        // That poll came too early (nothing at 3140 ms); the follow-up 20 ms later saw the
        // burst: the lag lies in (20, 40] ms and the next poll bisects it.
        r.observe(3_140 * MS, []);
        r.observe(3_160 * MS, [3_120 * MS]);
        assert_eq!(r.lag(), Some(i128::from(30 * MS)));
        // 30 works: (20, 30]; 25 too early: (25, 30]; 27 works: (25, 27], settled at 27.
        r.observe(3_650 * MS + 30 * MS, [3_650 * MS]);
        assert_eq!(r.lag(), Some(i128::from(25 * MS)));
        r.observe(4_180 * MS + 25 * MS, []);
        r.observe(4_180 * MS + 45 * MS, [4_180 * MS]);
        assert_eq!(r.lag(), Some(i128::from(27 * MS) + 500_000));
        r.observe(4_710 * MS + 27 * MS, [4_710 * MS]);
        assert_eq!(r.lag(), Some(i128::from(27 * MS)));
    }

    #[test]
    fn the_lag_is_the_smallest_recent_one_and_rises_after_misses() {
        let mut r = Rhythm::new(settings());
        let lags = [90, 30, 60, 70, 80, 80, 80, 80];
        for (k, lag) in lags.iter().enumerate() {
            let ts = 10_000 * MS + k as u64 * 1_000 * MS;
            r.observe(ts + lag * MS, [ts]);
            let expected = lags[k.saturating_sub(LAGS - 1)..=k].iter().min().unwrap();
            assert_eq!(
                r.lags.iter().min().copied(),
                Some(i128::from(*expected * MS)),
                "after burst {k}"
            );
        }
    }

    #[test]
    fn irregular_or_continuous_traffic_is_not_predicted() {
        // Steady traffic: timestamps 5 ms apart never open a new burst after the first.
        let mut r = Rhythm::new(settings());
        for k in 0..1_000u64 {
            r.observe(k * 5 * MS + 3 * MS, [k * 5 * MS]);
        }
        assert_eq!(r.period(), None);
        // Bursts at irregular intervals.
        let mut r = Rhythm::new(settings());
        for ts in [0, 500, 1_300, 1_700, 2_900, 3_200] {
            r.observe(ts * MS + MS, [ts * MS]);
        }
        assert_eq!(r.period(), None);
        assert_eq!(r.predict(3_300 * MS), None);
        // A period shorter than min_period.
        let mut r = Rhythm::new(settings());
        for k in 0..10u64 {
            r.observe(k * 100 * MS + MS, [k * 100 * MS]);
        }
        assert_eq!(r.period(), None);
    }

    #[test]
    fn only_the_first_burst_of_a_reply_gives_a_lag() {
        let mut r = Rhythm::new(settings());
        // One reply holding three bursts (a slow poll): lag measured against the oldest only.
        r.observe(1_100 * MS, [1_000 * MS, 700 * MS, 400 * MS]);
        assert_eq!(r.lags.len(), 1);
        assert_eq!(r.lags[0], i128::from(700 * MS));
        assert_eq!(r.starts.len(), 3);
        // Older messages than the newest seen do not start bursts.
        r.observe(1_200 * MS, [900 * MS]);
        assert_eq!(r.starts.len(), 3);
    }

    proptest! {
        /// Whatever timestamps a (hostile) canister sends: no panic, bounded state, and a
        /// prediction is never further away than max_period.
        #[test]
        fn any_timestamps_keep_the_state_bounded(
            replies in proptest::collection::vec(
                (any::<u64>(), proptest::collection::vec(any::<u64>(), 0..20)), 0..50),
            now in any::<u64>(),
        ) {
            let mut r = Rhythm::new(settings());
            for (started, ts) in replies {
                r.observe(started, ts);
                prop_assert!(r.starts.len() <= INTERVALS + 1);
                prop_assert!(r.lags.len() <= LAGS);
                if let Some(d) = r.predict(now) {
                    prop_assert!(d <= settings().max_period);
                }
            }
        }
    }
}
