//! Counters and latency samples shared by the load tasks, and the probes of the gateway
//! process (RSS and CPU time from /proc, its Prometheus metrics over HTTP).

use crate::LoadError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Shared counters.
#[derive(Default, Debug)]
pub struct Stats {
    /// Messages delivered to clients.
    pub delivered: AtomicU64,
    /// Messages sent by clients.
    pub sent: AtomicU64,
    /// Sequence gaps seen (should stay 0).
    pub gaps: AtomicU64,
    /// `MessageError`s received.
    pub errors: AtomicU64,
    /// Sessions that ended early.
    pub closed: AtomicU64,
    /// Canister send -> client receipt, in µs (sampled).
    delivery_us: Mutex<Vec<u64>>,
    /// Client send -> echo receipt, in µs.
    round_trip_us: Mutex<Vec<u64>>,
    /// Sample one delivery in this many for latency.
    pub sample_every: AtomicU64,
}

impl Stats {
    /// Counts `n` deliveries; returns the index of the first (for [`Stats::is_sampled`]).
    pub fn count_deliveries(&self, n: u64) -> u64 {
        self.delivered.fetch_add(n, Relaxed)
    }

    /// Whether the delivery with this index is one of the latency samples.
    pub fn is_sampled(&self, index: u64) -> bool {
        index.is_multiple_of(self.sample_every.load(Relaxed).max(1))
    }

    /// Records the latency of a sampled delivery, `age_ns` after the canister queued it.
    pub fn record_latency(&self, age_ns: u64) {
        if let Ok(mut v) = self.delivery_us.lock() {
            v.push(age_ns / 1000);
        }
    }
    /// Records an echo round trip.
    pub fn record_round_trip(&self, d: Duration) {
        if let Ok(mut v) = self.round_trip_us.lock() {
            v.push(d.as_micros() as u64);
        }
    }
    /// Forgets latency samples (after a warm-up).
    pub fn reset_samples(&self) {
        if let Ok(mut v) = self.delivery_us.lock() {
            v.clear();
        }
        if let Ok(mut v) = self.round_trip_us.lock() {
            v.clear();
        }
    }
    /// (p50, p99, max, count) of delivery latency in ms.
    pub fn delivery_percentiles(&self) -> Option<(f64, f64, f64, usize)> {
        self.delivery_us
            .lock()
            .ok()
            .and_then(|mut v| percentiles(&mut v))
    }
    /// (p50, p99, max, count) of echo round trips in ms.
    pub fn round_trip_percentiles(&self) -> Option<(f64, f64, f64, usize)> {
        self.round_trip_us
            .lock()
            .ok()
            .and_then(|mut v| percentiles(&mut v))
    }
}

fn percentiles(v: &mut [u64]) -> Option<(f64, f64, f64, usize)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Some((at(0.5), at(0.99), at(1.0), v.len()))
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, LoadError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(LoadError::io("read /proc status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| LoadError::Protocol("no VmRSS".into()))
}

/// User + system CPU time of `pid` in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, LoadError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(LoadError::io("read /proc stat"))?;
    Ok(stat_cpu_seconds(&stat).1)
}

/// User + system CPU time, in seconds, of the threads of `pid` named `name` (0 if none).
pub fn thread_cpu_seconds(pid: u32, name: &str) -> Result<f64, LoadError> {
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map_err(LoadError::io("read /proc task"))?;
    let mut total = 0.0;
    for task in tasks.flatten() {
        // A thread that ended between the listing and the read is simply not counted.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
            let (comm, cpu) = stat_cpu_seconds(&stat);
            if comm == name {
                total += cpu;
            }
        }
    }
    Ok(total)
}

/// The command name and user + system CPU seconds of a `/proc/.../stat` line.
fn stat_cpu_seconds(stat: &str) -> (&str, f64) {
    // The command name is in parentheses (and may contain spaces); after the ")" that ends
    // it, utime is the 12th field and stime the 13th, in clock ticks (100 per second).
    let (head, rest) = stat.rsplit_once(')').unwrap_or(("", ""));
    let comm = head.split_once('(').map_or("", |(_, c)| c);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (comm, (ticks(11) + ticks(12)) / 100.0)
}

/// The gateway's metrics: `name{labels} value` lines.
pub async fn scrape(admin: SocketAddr) -> Result<String, LoadError> {
    let mut s = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(LoadError::io("admin connect"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .map_err(LoadError::io("admin write"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(LoadError::io("admin read"))?;
    Ok(out)
}

/// The value of the metric line starting with `name` (exact series, labels included).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Upper bound of the bucket holding quantile `q` of histogram `name`, from cumulative
/// buckets (le="...") of two scrapes (the interval between them).
pub fn histogram_quantile(before: &str, after: &str, name: &str, q: f64) -> Option<f64> {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
            .filter_map(|l| {
                let (le, rest) = l.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, rest.trim().parse().ok()?))
            })
            .collect()
    };
    let (b0, b1) = (buckets(before), buckets(after));
    let total = b1.last()?.1 - b0.last().map_or(0.0, |x| x.1);
    if total <= 0.0 {
        return None;
    }
    for (i, (le, c1)) in b1.iter().enumerate() {
        let c0 = b0.get(i).map_or(0.0, |x| x.1);
        if c1 - c0 >= q * total {
            return Some(*le);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_samples() {
        let mut v: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let (p50, p99, max, n) = percentiles(&mut v).unwrap();
        assert_eq!((p50, p99, max, n), (51.0, 99.0, 100.0, 100));
        assert!(percentiles(&mut []).is_none());
    }

    #[test]
    fn cpu_time_and_thread_name_are_read_from_a_stat_line() {
        let line = "4242 (fake canister) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3";
        assert_eq!(stat_cpu_seconds(line), ("fake canister", 3.0));
        assert_eq!(stat_cpu_seconds("garbage").1, 0.0);
        let own = thread_cpu_seconds(std::process::id(), "no such thread name").unwrap();
        assert_eq!(own, 0.0);
    }

    #[test]
    fn metrics_are_read_from_the_exposition_text() {
        let before =
            "x_bucket{le=\"0.001\"} 10\nx_bucket{le=\"0.005\"} 10\nx_bucket{le=\"+Inf\"} 10\n\
                      calls{method=\"ws_message\"} 4\n";
        let after =
            "x_bucket{le=\"0.001\"} 60\nx_bucket{le=\"0.005\"} 108\nx_bucket{le=\"+Inf\"} 110\n\
                     calls{method=\"ws_message\"} 9\n";
        assert_eq!(metric(after, "calls{method=\"ws_message\"}"), 9.0);
        assert_eq!(metric(after, "missing"), 0.0);
        // 100 observations in the interval: 50 <= 1 ms, 98 <= 5 ms, 100 in all.
        assert_eq!(histogram_quantile(before, after, "x", 0.5), Some(0.001));
        assert_eq!(histogram_quantile(before, after, "x", 0.98), Some(0.005));
        assert_eq!(
            histogram_quantile(before, after, "x", 0.99),
            Some(f64::INFINITY)
        );
        assert_eq!(histogram_quantile(after, after, "x", 0.5), None);
    }
}
