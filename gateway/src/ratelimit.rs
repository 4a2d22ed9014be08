//! Per-IP connection-rate limit: a token bucket per source address (rate per second, burst).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Addresses remembered before full buckets are swept.
const SWEEP_AT: usize = 65_536;

/// Token buckets keyed by IP address.
#[derive(Debug)]
pub struct IpRateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl IpRateLimiter {
    /// `rate` new connections per second per address (0 = unlimited), `burst` above it.
    pub fn new(rate: f64, burst: f64) -> Self {
        IpRateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a new connection from `ip` at `now` is allowed (takes a token if so).
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_AT {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((self.burst, now));
        let refilled = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.rate)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            true
        } else {
            *tokens = refilled;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_address() {
        let l = IpRateLimiter::new(2.0, 3.0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
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
}
