//! Warnings that repeat (a canister that is down fails every poll and every relayed call):
//! the first is logged at once, the next ones at most once per [`EVERY`] with the number left
//! out since, and the first success after failures says how many there were. A stopped
//! replica used to produce dozens of identical lines a second.

use std::time::{Duration, Instant};

/// Most bytes of a peer's error text (a canister's reject message) quoted in a warning.
pub const MAX_QUOTED_BYTES: usize = 1024;

/// Shortest time between two logged warnings of one kind.
pub const EVERY: Duration = Duration::from_secs(10);

/// What to do with a failure now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it, saying that `suppressed` failures were not logged since the last line.
    Log {
        /// Failures left out since the last logged one.
        suppressed: u64,
    },
    /// Leave it out (counted).
    Suppress,
}

/// The state of one kind of repeated warning.
#[derive(Debug, Default)]
pub struct Throttle {
    last_logged: Option<Instant>,
    suppressed: u64,
    /// Failures since the last success.
    streak: u64,
}

impl Throttle {
    /// Records a failure at `now`.
    pub fn failed(&mut self, now: Instant) -> Verdict {
        self.streak = self.streak.saturating_add(1);
        let due = self
            .last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= EVERY);
        if due {
            self.last_logged = Some(now);
            let suppressed = std::mem::take(&mut self.suppressed);
            Verdict::Log { suppressed }
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            Verdict::Suppress
        }
    }

    /// Records a success; returns how many failures came before it in a row (0: none, do
    /// not log). The next failure is logged at once.
    pub fn succeeded(&mut self) -> u64 {
        self.last_logged = None;
        self.suppressed = 0;
        std::mem::take(&mut self.streak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_left_out_and_one_on_recovery() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        let mut logged = vec![];
        // A failure every 100 ms for 25 s.
        for i in 0..250u64 {
            let now = t0 + Duration::from_millis(i * 100);
            if let Verdict::Log { suppressed } = t.failed(now) {
                logged.push((i, suppressed));
            }
        }
        assert_eq!(logged, vec![(0, 0), (100, 99), (200, 99)]);
        assert_eq!(t.succeeded(), 250);
        assert_eq!(t.succeeded(), 0, "a second success has nothing to report");
        // After a success the next failure is logged at once.
        assert_eq!(
            t.failed(t0 + Duration::from_millis(25_050)),
            Verdict::Log { suppressed: 0 }
        );
    }
}
