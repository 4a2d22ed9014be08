//! Per-source limits on connections: a connect-rate token bucket per source and a count of the
//! connections each source holds.
//!
//! A source is an IPv4 address, or for IPv6 the /64 network (one subscriber usually gets a
//! whole /64, so counting exact IPv6 addresses would make the limits free to evade). The
//! concurrent count also keeps a per-address limit inside the /64. IPv4-mapped IPv6 addresses
//! (a dual-stack listener) count as their IPv4 address.
//!
//! Nothing here scans all sources: the rate buckets expire a bounded number of entries per
//! call (oldest first), and a concurrent count is removed when it drops to zero.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Expired rate buckets removed per [`IpRateLimiter::allow`] call, at most. More than one, so
/// the table shrinks while new sources keep arriving.
const EXPIRE_PER_CALL: usize = 2;

/// The key of a source for rate and concurrency limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    /// An IPv4 address.
    V4(u32),
    /// An IPv6 address (the per-address count inside a /64).
    V6(u128),
    /// An IPv6 /64 network (its upper 64 bits).
    V6Net(u64),
}

impl SourceKey {
    /// The key a rate limit applies to: the IPv4 address or the IPv6 /64.
    pub fn network(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }

    /// The exact address (IPv4 or IPv6).
    pub fn address(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6(u128::from(v6)),
        }
    }
}

/// Token buckets keyed by source (IPv4 address or IPv6 /64). Owned by the accept loop (no
/// lock); every call costs O(1) amortised.
#[derive(Debug)]
pub struct IpRateLimiter {
    rate: f64,
    burst: f64,
    /// (tokens, last update) per source.
    buckets: HashMap<SourceKey, (f64, Instant)>,
    /// Sources in the order they were last checked for expiry; each key appears once.
    queue: VecDeque<SourceKey>,
}

impl IpRateLimiter {
    /// `rate` new connections per second per source (0 = unlimited), `burst` above it.
    pub fn new(rate: f64, burst: f64) -> Self {
        IpRateLimiter {
            rate,
            burst,
            buckets: HashMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// Sources remembered (buckets not yet full again).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no source is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    fn refilled(&self, (tokens, at): (f64, Instant), now: Instant) -> f64 {
        (tokens + now.saturating_duration_since(at).as_secs_f64() * self.rate).min(self.burst)
    }

    /// Drops up to [`EXPIRE_PER_CALL`] of the oldest buckets that are full again (a full
    /// bucket is the same as no bucket); a bucket still refilling goes to the back.
    fn expire(&mut self, now: Instant) {
        for _ in 0..EXPIRE_PER_CALL {
            let Some(key) = self.queue.pop_front() else {
                return;
            };
            match self.buckets.get(&key) {
                Some(&bucket) if self.refilled(bucket, now) < self.burst => {
                    self.queue.push_back(key);
                }
                _ => {
                    self.buckets.remove(&key);
                }
            }
        }
    }

    /// Whether a new connection from `ip` at `now` is allowed (takes a token if so).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.expire(now);
        let key = SourceKey::network(ip);
        let tokens = match self.buckets.get(&key) {
            Some(&bucket) => self.refilled(bucket, now),
            None => {
                self.queue.push_back(key);
                self.burst
            }
        };
        let (left, allowed) = if tokens >= 1.0 {
            (tokens - 1.0, true)
        } else {
            (tokens, false)
        };
        self.buckets.insert(key, (left, now));
        allowed
    }
}

/// Limits on the connections one source holds at once (0 = unlimited).
#[derive(Debug, Clone, Copy)]
pub struct SourceLimits {
    /// Per IPv4 or IPv6 address.
    pub per_address: usize,
    /// Per IPv6 /64.
    pub per_v6_net: usize,
}

/// What a source holds: connections being served (handshake or session) and connections
/// being refused (handshake, then a 4006 close).
#[derive(Debug, Default, Clone, Copy)]
struct Held {
    served: usize,
    refusing: usize,
}

/// The connections held per source, shared by the accept loop (which adds) and the
/// connection tasks (which remove on drop). Entries are removed at zero.
#[derive(Debug)]
pub struct SourceTable {
    limits: SourceLimits,
    /// Refusals in progress allowed per source (beyond them a refused connection is closed
    /// without a handshake).
    refusing_per_source: usize,
    held: Mutex<HashMap<SourceKey, Held>>,
}

/// Whether a connection is served or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Handshake and session.
    Served,
    /// Handshake and a 4006 close.
    Refusing,
}

impl SourceTable {
    /// A table enforcing `limits`, with `refusing_per_source` refusals in progress per source.
    pub fn new(limits: SourceLimits, refusing_per_source: usize) -> Self {
        SourceTable {
            limits,
            refusing_per_source,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The keys of `ip` with their limit for served connections.
    fn limits_of(&self, ip: IpAddr) -> [(SourceKey, usize); 2] {
        let address = SourceKey::address(ip);
        let net = SourceKey::network(ip);
        // For IPv4 both keys are the address: the second entry is skipped by `distinct`.
        [
            (address, self.limits.per_address),
            (net, self.limits.per_v6_net),
        ]
    }

    /// Takes a slot of `kind` for `ip` if its source is within its limits; `false` otherwise
    /// (nothing taken).
    pub fn try_take(&self, ip: IpAddr, kind: Slot) -> bool {
        let keys = self.limits_of(ip);
        let distinct = keys[0].0 != keys[1].0;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let fits = |key: &SourceKey, limit: usize| {
            let h = held.get(key).copied().unwrap_or_default();
            match kind {
                Slot::Served => limit == 0 || h.served < limit,
                Slot::Refusing => h.refusing < self.refusing_per_source,
            }
        };
        let ok = fits(&keys[0].0, keys[0].1) && (!distinct || fits(&keys[1].0, keys[1].1));
        if !ok {
            return false;
        }
        for (i, (key, _)) in keys.iter().enumerate() {
            if i == 1 && !distinct {
                break;
            }
            let h = held.entry(*key).or_default();
            match kind {
                Slot::Served => h.served = h.served.saturating_add(1),
                Slot::Refusing => h.refusing = h.refusing.saturating_add(1),
            }
        }
        true
    }

    /// Gives back a slot taken with [`SourceTable::try_take`].
    pub fn release(&self, ip: IpAddr, kind: Slot) {
        let keys = self.limits_of(ip);
        let distinct = keys[0].0 != keys[1].0;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (i, (key, _)) in keys.iter().enumerate() {
            if i == 1 && !distinct {
                break;
            }
            if let Entry::Occupied(mut e) = held.entry(*key) {
                let h = e.get_mut();
                match kind {
                    Slot::Served => h.served = h.served.saturating_sub(1),
                    Slot::Refusing => h.refusing = h.refusing.saturating_sub(1),
                }
                if h.served == 0 && h.refusing == 0 {
                    e.remove();
                }
            }
        }
    }

    /// Sources holding connections (for tests and metrics).
    pub fn sources(&self) -> usize {
        self.held.lock().map(|h| h.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_rate_per_address() {
        let mut l = IpRateLimiter::new(2.0, 3.0);
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        let t = Instant::now();
        assert!((0..3).all(|_| l.allow(a, t)));
        assert!(!l.allow(a, t), "burst exhausted");
        assert!(l.allow(b, t), "another address is not affected");
        assert!(
            l.allow(a, t + Duration::from_millis(500)),
            "one token after 0.5 s at 2/s"
        );
        assert!(!l.allow(a, t + Duration::from_millis(600)));
        assert!(IpRateLimiter::new(0.0, 1.0).allow(a, t));
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_ipv4_is_ipv4() {
        let mut l = IpRateLimiter::new(1.0, 2.0);
        let t = Instant::now();
        assert!(l.allow(ip("2001:db8:1:2::1"), t));
        assert!(l.allow(ip("2001:db8:1:2:ffff::9"), t));
        assert!(
            !l.allow(ip("2001:db8:1:2:abcd::5"), t),
            "same /64, other address: same bucket"
        );
        assert!(l.allow(ip("2001:db8:1:3::1"), t), "another /64");
        assert!(l.allow(ip("10.0.0.1"), t));
        assert!(l.allow(ip("::ffff:10.0.0.1"), t));
        assert!(
            !l.allow(ip("10.0.0.1"), t),
            "mapped address shares the bucket"
        );
    }

    #[test]
    fn full_buckets_expire_a_few_per_call_without_a_sweep() {
        let mut l = IpRateLimiter::new(10.0, 2.0);
        let t = Instant::now();
        for i in 0..1000u32 {
            assert!(l.allow(IpAddr::from(i.to_be_bytes()), t));
        }
        assert_eq!(l.len(), 1000);
        // 1 s later every bucket is full again; each call removes at most two.
        let later = t + Duration::from_secs(1);
        let mut calls = 0;
        while l.len() > 1 {
            l.allow(ip("192.168.0.1"), later);
            calls += 1;
            assert!(calls <= 1000, "expiry makes progress");
        }
        assert!(calls >= 500, "bounded work per call: {calls} calls");
    }

    #[test]
    fn concurrent_counts_per_address_and_per_64() {
        let table = SourceTable::new(
            SourceLimits {
                per_address: 2,
                per_v6_net: 3,
            },
            1,
        );
        let a = ip("127.0.0.1");
        assert!(table.try_take(a, Slot::Served));
        assert!(table.try_take(a, Slot::Served));
        assert!(!table.try_take(a, Slot::Served), "per-address cap");
        assert!(table.try_take(ip("127.0.0.2"), Slot::Served));
        assert!(table.try_take(a, Slot::Refusing));
        assert!(!table.try_take(a, Slot::Refusing), "refusals per source");
        table.release(a, Slot::Served);
        assert!(table.try_take(a, Slot::Served), "slot given back");

        let (x, y, z) = (ip("2001:db8::1"), ip("2001:db8::2"), ip("2001:db8::3"));
        assert!(table.try_take(x, Slot::Served));
        assert!(table.try_take(x, Slot::Served));
        assert!(
            !table.try_take(x, Slot::Served),
            "per-address cap in the /64"
        );
        assert!(table.try_take(y, Slot::Served));
        assert!(!table.try_take(z, Slot::Served), "per-/64 cap");
        assert!(table.try_take(ip("2001:db8:0:1::1"), Slot::Served));
        for ip in [x, x, y] {
            table.release(ip, Slot::Served);
        }
        table.release(ip("2001:db8:0:1::1"), Slot::Served);
        for s in ["127.0.0.1", "127.0.0.1", "127.0.0.2"] {
            table.release(ip(s), Slot::Served);
        }
        table.release(a, Slot::Refusing);
        assert_eq!(table.sources(), 0, "entries removed at zero");
        let unlimited = SourceTable::new(
            SourceLimits {
                per_address: 0,
                per_v6_net: 0,
            },
            0,
        );
        assert!((0..100).all(|_| unlimited.try_take(a, Slot::Served)));
    }
}
