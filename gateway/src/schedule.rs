//! When the poller queries its canister next: the polling policy, a pure state machine over
//! instants the caller passes in (the poller passes `Instant::now()`, the tests a fake clock).
//!
//! - **Active** (traffic seen in the last `--poll-active-window-ms`, default a minute: a poll
//!   that returned messages, or an update the gateway relayed): one poll every
//!   `--poll-active-interval-ms` (100 ms), so a message that follows a quiet moment waits at
//!   most that long.
//! - **Idle** (no traffic for the window): the interval doubles from the active one up to
//!   `--poll-max-interval-ms` (500 ms, 2 queries/s).
//! - **Woken**: after every update the gateway relays (message, open, close) completes, it
//!   polls again as soon as `--poll-min-interval-ms` (20 ms) has passed since the last reply:
//!   the answer is likely waiting.
//! - **Hinted**: a poll reply may carry the canister's `next_poll_ms` (when it expects to
//!   produce messages: its next timer, or "messages are being produced"); the next poll
//!   comes no later than that, clamped to `[--poll-min-interval-ms, --poll-max-interval-ms]`,
//!   so a hostile or broken canister can neither make the gateway spin nor stop it polling.
//!   A hint only ever brings the next poll forward. A hinted poll that finds nothing (the
//!   message is produced a little after the announced time: a timer fires in the round
//!   after its deadline) is followed by up to [`HINT_FOLLOW_UPS`] more, `--poll-min-interval-ms`
//!   apart.
//! - **Jitter**: the active interval is spread by +-`--poll-jitter-pct` (10 %), the idle one
//!   only lengthened by up to twice that (so the idle rate stays under its cap), so gateways
//!   started together do not poll a canister in lockstep.
//! - **Rhythm**: when [`crate::rhythm`] predicts the canister's next burst of periodic traffic
//!   (`Outcome::rhythm_in`), the interval is replaced by [`rhythm_step`]: the burst itself if
//!   it is at most one and a half intervals away, else the even step (within [0.75, 1.5)
//!   intervals, not jittered) that lands a whole number of polls on it. Between two bursts the
//!   polls are as many as the plain interval would make, so the query rate is unchanged, and
//!   an unpredicted message waits at most one and a half intervals. A poll on the burst that
//!   finds nothing is followed up like a hinted one.
//! - **Budget**: a token bucket (`--poll-max-rate` queries/s, default 10, bursts of
//!   [`BURST`]) bounds every poll the schedule starts, woken and hinted ones included; only
//!   the immediate follow-up of a reply flagged `more` (the rest of a backlog the canister
//!   already holds) is outside it.

use std::time::{Duration, Instant};

/// Polls the budget lets through back to back (the bucket's capacity).
pub const BURST: u32 = 5;

/// Polls `min` apart after a hinted poll that found nothing.
pub const HINT_FOLLOW_UPS: u8 = 2;

/// The policy's settings (from the gateway's flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Floor between a reply and a woken or hinted poll.
    pub min: Duration,
    /// Interval while there was traffic within `active_window`.
    pub active: Duration,
    /// Longest interval (idle), and the ceiling of a hint.
    pub max: Duration,
    /// How long after the last traffic the schedule stays active.
    pub active_window: Duration,
    /// Queries per second the budget allows on average (> 0).
    pub max_rate: u32,
    /// Jitter in percent of the interval (0..=50).
    pub jitter_pct: u8,
}

/// What a finished poll reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The reply carried messages.
    pub got_messages: bool,
    /// The canister holds more right now (poll again at once).
    pub more: bool,
    /// The canister's hint: poll again in this many milliseconds (unclamped).
    pub hint_ms: Option<u64>,
    /// When, from the end of this poll, the next burst of the canister's periodic traffic
    /// should first be visible ([`crate::rhythm`]), if it has a rhythm.
    pub rhythm_in: Option<Duration>,
}

/// Why the next poll happens when it does (for tests and debug logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The reply said `more`.
    More,
    /// The regular interval (active or idle).
    Interval,
    /// The canister's hint.
    Hint,
    /// A relayed update woke the poller.
    Wake,
    /// A hinted poll found nothing: try again shortly.
    HintFollowUp,
    /// Just after the predicted next burst of the canister's periodic traffic.
    Rhythm,
    /// The regular interval, stretched or shrunk (by at most half) so that a whole number
    /// of intervals ends at the predicted burst.
    RhythmSpaced,
}

/// The polling schedule of one canister's poller.
#[derive(Debug)]
pub struct Schedule {
    settings: Settings,
    /// Last traffic (messages polled or an update relayed).
    last_traffic: Instant,
    /// The idle back-off's current interval.
    backoff: Duration,
    /// When the last reply came (woken polls keep `min` after it).
    last_reply: Instant,
    /// Budget tokens, in thousandths of a poll (integer arithmetic, no drift).
    tokens_milli: u64,
    /// When the tokens were last refilled.
    refilled: Instant,
    /// The next poll and why.
    next: (Instant, Reason),
    /// Jitter state (xorshift64*, never 0).
    rng: u64,
    /// Follow-ups left after the current hinted poll.
    follow_ups: u8,
}

const MILLI: u64 = 1000;

impl Schedule {
    /// A schedule whose first poll is due at `now` (a poller starts because a client came:
    /// that counts as traffic). `seed` feeds the jitter (any value).
    pub fn new(settings: Settings, now: Instant, seed: u64) -> Schedule {
        let settings = Settings {
            max_rate: settings.max_rate.max(1),
            jitter_pct: settings.jitter_pct.min(50),
            max: settings.max.max(settings.min),
            active: settings
                .active
                .clamp(settings.min, settings.max.max(settings.min)),
            ..settings
        };
        Schedule {
            settings,
            last_traffic: now,
            backoff: settings.active,
            last_reply: now,
            tokens_milli: u64::from(BURST).saturating_mul(MILLI),
            refilled: now,
            next: (now, Reason::Interval),
            rng: seed | 1,
            follow_ups: 0,
        }
    }

    /// The instant the next poll is due, and why.
    pub fn next(&self) -> (Instant, Reason) {
        self.next
    }

    /// Records that a poll starts at `now` (spends one budget token unless it follows `more`).
    pub fn poll_started(&mut self, now: Instant) {
        self.refill(now);
        if self.next.1 != Reason::More {
            self.tokens_milli = self.tokens_milli.saturating_sub(MILLI);
        }
    }

    /// Records a finished poll at `now` and schedules the next one.
    pub fn poll_finished(&mut self, now: Instant, outcome: Outcome) -> (Instant, Reason) {
        self.last_reply = now;
        self.follow_ups = match self.next.1 {
            Reason::Hint | Reason::Rhythm => HINT_FOLLOW_UPS,
            Reason::HintFollowUp => self.follow_ups.saturating_sub(1),
            _ => 0,
        };
        if outcome.got_messages || outcome.hint_ms.is_some() {
            self.follow_ups = 0;
        }
        if outcome.got_messages {
            self.last_traffic = now;
        }
        if outcome.more {
            self.next = (now, Reason::More);
            return self.next;
        }
        let active = now.saturating_duration_since(self.last_traffic) < self.settings.active_window;
        let interval = if active {
            self.backoff = self.settings.active;
            self.settings.active
        } else {
            let i = self.backoff;
            self.backoff = self
                .backoff
                .saturating_mul(2)
                .clamp(self.settings.active, self.settings.max);
            i
        };
        let mut next = match outcome.rhythm_in {
            Some(d) => {
                let (step, on_target) = rhythm_step(d, interval, self.settings.min);
                let reason = if on_target {
                    Reason::Rhythm
                } else {
                    Reason::RhythmSpaced
                };
                (now.checked_add(step).unwrap_or(now), reason)
            }
            None => {
                let mut spread = self.jitter(interval);
                if !active {
                    // Idle: jitter only lengthens the interval, so the idle rate stays at or
                    // under 1 / --poll-max-interval-ms (2 queries/s by default).
                    spread = interval.saturating_add(interval.abs_diff(spread));
                }
                (now.checked_add(spread).unwrap_or(now), Reason::Interval)
            }
        };
        if self.follow_ups > 0 {
            let at = now.checked_add(self.settings.min).unwrap_or(now);
            if at < next.0 {
                next = (at, Reason::HintFollowUp);
            }
        }
        if let Some(ms) = outcome.hint_ms {
            let hint = Duration::from_millis(ms).clamp(self.settings.min, self.settings.max);
            let at = now.checked_add(hint).unwrap_or(now);
            if at < next.0 {
                next = (at, Reason::Hint);
            }
        }
        self.next = (self.budgeted(next.0), next.1);
        self.next
    }

    /// Records that an update the gateway relayed completed at `now` (traffic; its answer is
    /// likely waiting): brings the next poll forward to `min` after the last reply, within the
    /// budget. Returns the (possibly unchanged) next poll.
    pub fn woken(&mut self, now: Instant) -> (Instant, Reason) {
        self.last_traffic = now;
        self.backoff = self.settings.active;
        if self.next.1 == Reason::More {
            return self.next;
        }
        let floor = self
            .last_reply
            .checked_add(self.settings.min)
            .unwrap_or(now)
            .max(now);
        let at = self.budgeted(floor);
        if at < self.next.0 {
            self.next = (at, Reason::Wake);
        }
        self.next
    }

    /// `at`, or later if the budget has no token by then.
    fn budgeted(&mut self, at: Instant) -> Instant {
        let mut tokens = self.tokens_milli;
        let since = at.saturating_duration_since(self.refilled);
        tokens = tokens
            .saturating_add(self.milli_tokens_in(since))
            .min(u64::from(BURST).saturating_mul(MILLI));
        if tokens >= MILLI {
            return at;
        }
        // Time for the missing thousandths at max_rate polls/s: missing / rate ms.
        let missing = MILLI.saturating_sub(tokens);
        let wait_us = missing
            .saturating_mul(MILLI)
            .div_ceil(u64::from(self.settings.max_rate));
        at.checked_add(Duration::from_micros(wait_us)).unwrap_or(at)
    }

    fn refill(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.refilled);
        let add = self.milli_tokens_in(since);
        if add > 0 {
            self.tokens_milli = self
                .tokens_milli
                .saturating_add(add)
                .min(u64::from(BURST).saturating_mul(MILLI));
            // Keep the remainder: advance by the time the added tokens took.
            let used_us = add
                .saturating_mul(MILLI)
                .checked_div(u64::from(self.settings.max_rate))
                .unwrap_or(0);
            self.refilled = self
                .refilled
                .checked_add(Duration::from_micros(used_us))
                .unwrap_or(now)
                .min(now);
        }
    }

    /// Thousandths of a token earned in `d` at `max_rate` tokens/s.
    fn milli_tokens_in(&self, d: Duration) -> u64 {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        us.saturating_mul(u64::from(self.settings.max_rate)) / MILLI
    }

    /// `interval` spread by +-jitter_pct.
    fn jitter(&mut self, interval: Duration) -> Duration {
        let pct = u64::from(self.settings.jitter_pct);
        if pct == 0 {
            return interval;
        }
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        // Uniform in [0, 2 * pct] per mille steps, then shifted to [-pct, +pct] percent.
        let span = pct.saturating_mul(20).saturating_add(1);
        let step = r.checked_rem(span).unwrap_or(0); // 0..=20*pct, in tenths of a percent
        let us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        let base = us.saturating_mul(1000u64.saturating_sub(pct.saturating_mul(10)));
        let spread = us.saturating_mul(step);
        Duration::from_micros(base.saturating_add(spread) / 1000)
    }
}

/// The next poll's delay when the predicted burst is `d` away and the interval is `interval`:
/// `d` itself if it is at most one and a half intervals (the poll lands on the burst), else
/// `d / k` for the whole number `k` of polls that keeps each step within [0.75, 1.5) intervals
/// (`k` = floor(d / interval), one more if that leaves steps above 1.5 intervals). So the
/// polls between two bursts of period `P` number floor(P / interval) (at most one more when
/// the remainder is between half and a whole interval): the query rate stays at that of the
/// plain interval while the last poll lands on the burst. Never below `min`. Returns the delay
/// and whether it lands on the burst.
pub fn rhythm_step(d: Duration, interval: Duration, min: Duration) -> (Duration, bool) {
    if d <= min {
        return (min, true);
    }
    let interval_ns = interval.as_nanos().max(1);
    let d_ns = d.as_nanos();
    let mut k = d_ns.checked_div(interval_ns).unwrap_or(1).max(1);
    // d / k > 1.5 intervals  <=>  2 d > 3 k interval
    if d_ns.saturating_mul(2) > k.saturating_mul(3).saturating_mul(interval_ns) {
        k = k.saturating_add(1);
    }
    if k <= 1 {
        return (d, true);
    }
    let step_ns = d_ns.checked_div(k).unwrap_or(d_ns);
    let step = Duration::from_nanos(u64::try_from(step_ns).unwrap_or(u64::MAX));
    (step.max(min), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings() -> Settings {
        Settings {
            min: ms(20),
            active: ms(100),
            max: ms(500),
            active_window: ms(60_000),
            max_rate: 10,
            jitter_pct: 0,
        }
    }

    /// The default settings with 10 % jitter, starting at `t0`.
    fn jittered(t0: Instant, seed: u64) -> Schedule {
        Schedule::new(
            Settings {
                jitter_pct: 10,
                ..settings()
            },
            t0,
            seed,
        )
    }

    /// Drives a schedule on a fake clock: polls whenever due, the canister answering `reply`
    /// (given the poll's time offset in ms), each poll taking `took`; returns the poll offsets.
    fn drive(
        s: &mut Schedule,
        t0: Instant,
        until_ms: u64,
        took: Duration,
        mut reply: impl FnMut(u64) -> Outcome,
    ) -> Vec<u64> {
        let mut polls = vec![];
        loop {
            let (at, _) = s.next();
            let off = at.duration_since(t0).as_millis() as u64;
            if off >= until_ms {
                return polls;
            }
            polls.push(off);
            s.poll_started(at);
            s.poll_finished(at + took, reply(off));
        }
    }

    #[test]
    fn active_for_the_window_then_backs_off_to_the_idle_rate() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(), t0, 1);
        // Traffic in the first second, then silence.
        let polls = drive(&mut s, t0, 70_000, Duration::ZERO, |off| Outcome {
            got_messages: off < 1_000,
            ..Outcome::default()
        });
        // Every 100 ms while the last traffic is under a minute old.
        let active: Vec<_> = polls.iter().take_while(|&&p| p <= 60_900).collect();
        assert!(active.windows(2).all(|w| w[1] - w[0] == 100), "{active:?}");
        // Then doubling to 500 ms.
        let after: Vec<_> = polls
            .iter()
            .skip(active.len() - 1)
            .take(6)
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect();
        assert_eq!(after, vec![100, 200, 400, 500, 500]);
        // Idle for a minute: at most 2 queries/s.
        let last_minute = polls.iter().filter(|&&p| p >= 62_000).count();
        assert!(last_minute <= 2 * 8 + 1, "{last_minute} polls in 8 s");
    }

    #[test]
    fn traffic_resets_the_back_off_and_bursts_after_silence_wait_at_most_the_active_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(
            Settings {
                active_window: ms(1_000),
                ..settings()
            },
            t0,
            1,
        );
        // Messages produced at 0 and then at 5 000 ms (after the schedule went idle): the
        // second waits for the idle interval...
        let polls = drive(&mut s, t0, 5_600, Duration::ZERO, |off| Outcome {
            got_messages: off == 0 || (5_000..5_500).contains(&off),
            ..Outcome::default()
        });
        let first_after = polls.iter().find(|&&p| p >= 5_000).unwrap();
        assert!(*first_after - 5_000 <= 500, "{polls:?}");
        // ...and the schedule is active again at once.
        let next: Vec<_> = polls.iter().filter(|&&p| p > *first_after).collect();
        assert!(next.windows(2).all(|w| w[1] - w[0] == 100), "{next:?}");
    }

    #[test]
    fn a_relayed_update_wakes_the_poller_after_the_floor_within_the_budget() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(), t0, 1);
        s.poll_started(t0);
        s.poll_finished(t0, Outcome::default());
        assert_eq!(s.next(), (t0 + ms(100), Reason::Interval));
        // An update completes 5 ms after the reply: poll at the 20 ms floor.
        assert_eq!(s.woken(t0 + ms(5)), (t0 + ms(20), Reason::Wake));
        // One completing after the floor: at once.
        let mut s = Schedule::new(settings(), t0, 1);
        s.poll_started(t0);
        s.poll_finished(t0, Outcome::default());
        assert_eq!(s.woken(t0 + ms(30)), (t0 + ms(30), Reason::Wake));
        // A wake never postpones a due poll, nor overrides `more`.
        let mut s = Schedule::new(settings(), t0, 1);
        s.poll_started(t0);
        s.poll_finished(
            t0,
            Outcome {
                more: true,
                ..Outcome::default()
            },
        );
        assert_eq!(s.woken(t0 + ms(1)), (t0, Reason::More));
    }

    #[test]
    fn wakes_and_hints_never_exceed_the_query_budget() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(), t0, 1);
        // An update completes every millisecond for 10 s, and every reply hints 0 ms.
        let mut polls = vec![];
        let mut now = t0;
        let end = t0 + ms(10_000);
        while now < end {
            s.woken(now);
            let (at, _) = s.next();
            if at <= now {
                polls.push(now);
                s.poll_started(now);
                s.poll_finished(
                    now,
                    Outcome {
                        hint_ms: Some(0),
                        got_messages: true,
                        more: false,
                        rhythm_in: None,
                    },
                );
            }
            now += ms(1);
        }
        // 10/s for 10 s plus the initial burst.
        assert!(polls.len() <= 100 + BURST as usize, "{} polls", polls.len());
        assert!(
            polls.len() >= 95,
            "{} polls: the budget is used",
            polls.len()
        );
        assert!(
            polls.windows(2).all(|w| w[1] - w[0] >= ms(20)),
            "the floor holds"
        );
    }

    #[test]
    fn hints_are_clamped_and_only_bring_the_poll_forward() {
        let t0 = Instant::now();
        let hinted = |hint: u64, idle: bool| {
            let mut s = Schedule::new(
                Settings {
                    active_window: ms(if idle { 0 } else { 60_000 }),
                    ..settings()
                },
                t0,
                1,
            );
            s.poll_started(t0);
            s.poll_finished(
                t0,
                Outcome {
                    hint_ms: Some(hint),
                    ..Outcome::default()
                },
            )
        };
        assert_eq!(hinted(40, false), (t0 + ms(40), Reason::Hint));
        // Below the floor: the floor (no spinning).
        assert_eq!(hinted(0, false), (t0 + ms(20), Reason::Hint));
        // Later than the regular interval: the regular interval.
        assert_eq!(hinted(300, false), (t0 + ms(100), Reason::Interval));
        assert_eq!(hinted(u64::MAX, false), (t0 + ms(100), Reason::Interval));
        // Idle: a hint at the next timer deadline beats the back-off.
        let mut s = Schedule::new(
            Settings {
                active_window: ms(0),
                ..settings()
            },
            t0,
            1,
        );
        let mut now = t0;
        for _ in 0..5 {
            s.poll_started(now);
            let (next, _) = s.poll_finished(now, Outcome::default());
            now = next;
        }
        assert_eq!(s.next().0 - now, Duration::ZERO);
        s.poll_started(now);
        assert_eq!(
            s.poll_finished(
                now,
                Outcome {
                    hint_ms: Some(260),
                    ..Outcome::default()
                }
            ),
            (now + ms(260), Reason::Hint)
        );
        assert_eq!(hinted(u64::MAX, true), (t0 + ms(100), Reason::Interval));
    }

    #[test]
    fn an_empty_hinted_poll_is_followed_up_twice_at_the_floor() {
        let t0 = Instant::now();
        let slow = Settings {
            active: ms(500),
            ..settings()
        };
        let mut s = Schedule::new(slow, t0, 1);
        s.poll_started(t0);
        let hinted = Outcome {
            hint_ms: Some(200),
            ..Outcome::default()
        };
        assert_eq!(s.poll_finished(t0, hinted), (t0 + ms(200), Reason::Hint));
        let mut now = t0 + ms(200);
        let mut seen = vec![];
        for _ in 0..4 {
            s.poll_started(now);
            let (next, why) = s.poll_finished(now, Outcome::default());
            seen.push(((next - now).as_millis(), why));
            now = next;
        }
        assert_eq!(
            seen,
            vec![
                (20, Reason::HintFollowUp),
                (20, Reason::HintFollowUp),
                (500, Reason::Interval),
                (500, Reason::Interval)
            ]
        );
        // A follow-up that finds the messages ends them.
        s.poll_started(now);
        s.poll_finished(now, hinted);
        now += ms(200);
        s.poll_started(now);
        assert_eq!(
            s.poll_finished(now, Outcome::default()).1,
            Reason::HintFollowUp
        );
        now += ms(20);
        s.poll_started(now);
        let got = Outcome {
            got_messages: true,
            ..Outcome::default()
        };
        assert_eq!(s.poll_finished(now, got).1, Reason::Interval);
    }

    #[test]
    fn more_polls_at_once_outside_the_budget() {
        let t0 = Instant::now();
        let mut s = Schedule::new(settings(), t0, 1);
        for i in 0..50u64 {
            let now = t0 + ms(i);
            assert_eq!(
                s.next(),
                (
                    now,
                    if i == 0 {
                        Reason::Interval
                    } else {
                        Reason::More
                    }
                )
            );
            s.poll_started(now);
            s.poll_finished(
                now + ms(1),
                Outcome {
                    more: true,
                    got_messages: true,
                    hint_ms: None,
                    rhythm_in: None,
                },
            );
        }
        // The backlog did not spend the budget: 5 woken polls in a row still go at the floor.
        s.poll_started(t0 + ms(50));
        let mut reply = t0 + ms(50);
        s.poll_finished(reply, Outcome::default());
        for _ in 0..5 {
            let (at, why) = s.woken(reply);
            assert_eq!((at, why), (reply + ms(20), Reason::Wake));
            s.poll_started(at);
            s.poll_finished(at, Outcome::default());
            reply = at;
        }
        // The next one waits for a token.
        assert!(s.woken(reply).0 > reply + ms(20));
    }

    #[test]
    fn jitter_spreads_intervals_within_bounds_and_differs_by_seed() {
        let t0 = Instant::now();
        let gaps = |seed: u64| {
            let mut s = jittered(t0, seed);
            let polls = drive(&mut s, t0, 20_000, Duration::ZERO, |_| Outcome {
                got_messages: true,
                ..Outcome::default()
            });
            polls.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        };
        let a = gaps(7);
        assert!(a.iter().all(|g| (90..=110).contains(g)), "{a:?}");
        assert!(
            a.iter().min() < Some(&95) && a.iter().max() > Some(&105),
            "{a:?}"
        );
        let mean = a.iter().sum::<u64>() as f64 / a.len() as f64;
        assert!((mean - 100.0).abs() < 3.0, "mean {mean}");
        assert_ne!(a, gaps(8));
    }

    #[test]
    fn idle_jitter_only_lengthens_so_the_idle_rate_stays_under_the_cap() {
        let t0 = Instant::now();
        let mut s = jittered(t0, 3);
        // No traffic ever: after the active window, polls back off to the idle interval.
        let polls = drive(&mut s, t0, 200_000, Duration::ZERO, |_| Outcome::default());
        let idle: Vec<u64> = polls
            .windows(2)
            .filter(|w| w[0] > 65_000)
            .map(|w| w[1] - w[0])
            .collect();
        assert!(idle.iter().all(|g| (500..=550).contains(g)), "{idle:?}");
        let rate = idle.len() as f64 * 1000.0 / idle.iter().sum::<u64>() as f64;
        assert!(rate <= 2.0 && rate > 1.8, "idle rate {rate}/s");
    }

    #[test]
    fn hostile_settings_and_clock_values_do_not_panic() {
        let t0 = Instant::now();
        let mut s = Schedule::new(
            Settings {
                min: ms(0),
                active: Duration::MAX,
                max: Duration::MAX,
                active_window: Duration::MAX,
                max_rate: u32::MAX,
                jitter_pct: 255,
            },
            t0,
            0,
        );
        s.poll_started(t0);
        s.poll_finished(
            t0,
            Outcome {
                hint_ms: Some(u64::MAX),
                ..Outcome::default()
            },
        );
        s.woken(t0);
        // Going back in time is harmless.
        s.poll_finished(t0, Outcome::default());
    }

    #[test]
    fn rhythm_steps_land_on_the_burst_within_half_an_interval_either_way() {
        let (i, min) = (ms(100), ms(20));
        assert_eq!(rhythm_step(ms(5), i, min), (min, true));
        assert_eq!(rhythm_step(ms(60), i, min), (ms(60), true));
        assert_eq!(rhythm_step(ms(149), i, min), (ms(149), true));
        assert_eq!(rhythm_step(ms(160), i, min), (ms(80), false));
        assert_eq!(rhythm_step(ms(530), i, min), (ms(106), false));
        assert_eq!(rhythm_step(ms(590), i, min), (ms(118), false));
        for d in (21..5_000).step_by(7) {
            let (step, on_target) = rhythm_step(ms(d), i, min);
            assert!(step >= min && step <= ms(d), "{d}: {step:?}");
            if !on_target {
                assert!(step >= ms(75) && step < ms(150), "{d}: {step:?}");
                // A whole number of steps reaches the burst.
                let k = ms(d).as_nanos() / step.as_nanos();
                assert!(ms(d).as_nanos() - k * step.as_nanos() < k, "{d}: {step:?}");
            }
        }
    }

    /// A canister that publishes a burst every `period_ms` (messages visible to polls that
    /// start `lag_ms` after they were queued); the gateway polls on a fake clock with and
    /// without the rhythm detector. Returns (mean wait from burst to the first poll that
    /// sees it over the last 20 bursts, polls per second).
    fn periodic_traffic(period_ms: u64, jitter_ms: u64, lag_ms: u64, rhythm: bool) -> (f64, f64) {
        use crate::rhythm::{Rhythm, Settings as RhythmSettings};
        let t0 = Instant::now();
        let mut s = jittered(t0, 7);
        let mut r = Rhythm::new(RhythmSettings {
            gap: ms(20),
            min_period: ms(200),
            max_period: ms(60_000),
        });
        let wall0: u64 = 1_700_000_000_000_000_000;
        let mut bursts = vec![];
        let mut t = 137;
        for k in 0..60u64 {
            // Deterministic +-jitter.
            t += period_ms + (k * 7919) % (2 * jitter_ms + 1) - jitter_ms;
            bursts.push(t);
        }
        let end = *bursts.last().unwrap();
        let mut seen = 0usize;
        let mut waits = vec![];
        let mut polls = 0u64;
        loop {
            let (at, _) = s.next();
            let off = at.duration_since(t0).as_millis() as u64;
            if off > end + 200 {
                break;
            }
            polls += 1;
            s.poll_started(at);
            let mut timestamps = vec![];
            while seen < bursts.len() && bursts[seen] + lag_ms <= off {
                waits.push(off - bursts[seen]);
                timestamps.push(wall0 + bursts[seen] * 1_000_000);
                seen += 1;
            }
            let got = !timestamps.is_empty();
            let done = at + ms(2);
            if rhythm {
                r.observe(wall0 + off * 1_000_000, timestamps);
            }
            let rhythm_in = if rhythm {
                r.predict(wall0 + (off + 2) * 1_000_000)
            } else {
                None
            };
            s.poll_finished(
                done,
                Outcome {
                    got_messages: got,
                    rhythm_in,
                    ..Outcome::default()
                },
            );
        }
        let last: Vec<u64> = waits.iter().rev().take(20).copied().collect();
        let mean = last.iter().sum::<u64>() as f64 / last.len() as f64;
        (mean, polls as f64 * 1000.0 / end as f64)
    }

    #[test]
    fn periodic_bursts_are_caught_just_after_they_come_at_the_same_query_rate() {
        for (period, jitter) in [(530, 3), (1_000, 0), (5_000, 20), (250, 2)] {
            let (blind, blind_rate) = periodic_traffic(period, jitter, 3, false);
            let (aligned, aligned_rate) = periodic_traffic(period, jitter, 3, true);
            // Lag 3 ms, plus the production jitter either way, plus the bisection's
            // occasional early poll (then the follow-up's 20 ms) averaged over 20 bursts.
            assert!(
                aligned <= 3.0 + 2.0 * jitter as f64 + 5.0,
                "period {period}: aligned wait {aligned} ms (blind {blind} ms)"
            );
            assert!(blind > 20.0, "period {period}: blind wait {blind} ms");
            assert!(
                aligned_rate <= 10.5 && aligned_rate <= blind_rate + 0.5,
                "period {period}: {aligned_rate} polls/s aligned vs {blind_rate} blind"
            );
        }
    }
}
