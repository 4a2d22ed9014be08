//! Prometheus metrics: lock-free counters, gauges and fixed-bucket histograms, rendered by the
//! admin server's `/metrics` in the Prometheus text format 0.0.4 ([`Metrics::render`]) or, when
//! the scraper asks for it, in OpenMetrics 1.0 ([`Metrics::render_openmetrics`]: counter
//! families named without `_total`, `# EOF`). Every family name is unique in both (tested with
//! both formats' parsers).
//!
//! Hand-written on atomics rather than a registry crate: the set is small and fixed, and every
//! hot-path update is one relaxed atomic add.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default, Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths of the unit (so it can be an integer atomic).
    sum_micros: AtomicU64,
}

/// The delivery delay's buckets: [`SECONDS_BUCKETS`] with 1 ms steps up to 5 ms, where its
/// target lies (p99 under 5 ms), so a p99 is not only known to be "at most 5 ms".
pub const DELAY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bounds for durations in seconds (100 µs .. 30 s).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Bounds for relay waits counted in batches.
pub const WAIT_BATCH_BUCKETS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];
/// Bounds for batch sizes (entries per call).
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

impl Histogram {
    /// A histogram with these bucket upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some((_, bucket)) = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .find(|(b, _)| value <= **b)
        {
            bucket.fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Relaxed);
    }
    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
    /// Smallest bucket bound below which at least `q` (0..1) of observations fall (an upper
    /// estimate of the quantile), or `None` without observations.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let mut seen = 0;
        for (bound, b) in self.bounds.iter().zip(&self.buckets) {
            seen = b.load(Relaxed).saturating_add(seen);
            if seen as f64 >= q * total as f64 {
                return Some(*bound);
            }
        }
        Some(f64::INFINITY)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, b) in self.bounds.iter().zip(&self.buckets) {
            cumulative = b.load(Relaxed).saturating_add(cumulative);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Kinds of errors counted in `ic_ws_gateway_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A client sent a frame that is not a valid `ClientFrame` (closed 1008).
    MalformedFrame,
    /// A client frame over the size limit (closed 1009).
    FrameTooBig,
    /// A WebSocket or TLS handshake failed or timed out.
    Handshake,
    /// A socket error on a client connection.
    ClientIo,
    /// A canister call failed transiently (retried).
    CallTransient,
    /// A canister call trapped (entries isolated).
    CallTrapped,
    /// A canister call failed permanently.
    CallPermanent,
    /// A `ws_poll` failed.
    Poll,
    /// The canister rejected a client message (`MessageError` sent for errors that did not
    /// consume the sequence number; `Rejected` / `DecodeError` are certified to the client).
    MessageRejected,
    /// The canister rejected an open.
    OpenRejected,
    /// A client sent pings (or pongs) faster than `--ping-rate` allows (closed 1008).
    PingFlood,
    /// A client message not complete `--frame-timeout-ms` after its first byte (closed 1008).
    SlowFrame,
}

const ERROR_KINDS: [(ErrorKind, &str); 12] = [
    (ErrorKind::MalformedFrame, "malformed_frame"),
    (ErrorKind::FrameTooBig, "frame_too_big"),
    (ErrorKind::Handshake, "handshake"),
    (ErrorKind::ClientIo, "client_io"),
    (ErrorKind::CallTransient, "call_transient"),
    (ErrorKind::CallTrapped, "call_trapped"),
    (ErrorKind::CallPermanent, "call_permanent"),
    (ErrorKind::Poll, "poll"),
    (ErrorKind::MessageRejected, "message_rejected"),
    (ErrorKind::OpenRejected, "open_rejected"),
    (ErrorKind::PingFlood, "ping_flood"),
    (ErrorKind::SlowFrame, "slow_frame"),
];

/// Kinds of supervised workers, the `worker` label of
/// `ic_ws_gateway_worker_restarts_total`.
pub const WORKER_KINDS: [&str; 4] = ["accept", "admin", "relay", "poller"];

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `--max-connections` reached.
    MaxConnections,
    /// Per-IP connection rate exceeded.
    RateLimited,
    /// Per-IP or per-IPv6-/64 concurrent connection cap reached.
    SourceLimit,
}

/// All gateway metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Client connections held, from accept to close (handshakes and refusals included).
    pub connections: Gauge,
    /// Of those, connections being refused (handshake, then 4006).
    pub connections_refusing: Gauge,
    /// Connections accepted since start.
    pub connections_total: Counter,
    /// Connections refused because of `--max-connections`.
    pub rejected_max_connections: Counter,
    /// Connections refused by the per-IP rate limit.
    pub rejected_rate_limited: Counter,
    /// Connections refused by the per-IP or per-/64 concurrent cap.
    pub rejected_source_limit: Counter,
    /// Refused connections closed without a handshake (no room to answer them with 4006).
    pub refused_unanswered: Counter,
    /// Sessions attached (opened or resumed) through this gateway right now.
    pub sessions: Gauge,
    /// Client messages received (frames relayed to `ws_message`).
    pub messages_in: Counter,
    /// Certified messages delivered to clients.
    pub messages_out: Counter,
    /// `Messages` frames written to clients.
    pub frames_out: Counter,
    /// Update calls made, by method.
    pub calls_open: Counter,
    /// `ws_message` calls.
    pub calls_message: Counter,
    /// `ws_close` calls.
    pub calls_close: Counter,
    /// `ws_poll` queries.
    pub polls: Counter,
    /// Entries per `ws_message` call.
    pub batch_size: Histogram,
    /// `ws_poll` round trip.
    pub poll_latency: Histogram,
    /// `ws_message` round trip.
    pub message_call_latency: Histogram,
    /// From a poll reply's arrival to the frame being written to the client's socket.
    pub delivery_delay: Histogram,
    /// Time to hand every client its share of a poll page (index the tree, queue each
    /// client's deferred frame); the frames are built and written by the session tasks.
    pub page_distribution: Histogram,
    /// Messages per poll page that had any.
    pub page_size: Histogram,
    /// Clients per poll page that had any (one frame each).
    pub page_clients: Histogram,
    /// Times a poller doubled its clients-per-page cap (a backlog outlasted the poll interval).
    pub page_cap_grown: Counter,
    /// Clients closed because their send buffer overflowed (4001).
    pub buffer_overflows: Counter,
    /// Workers failed and not yet restarted.
    pub workers_down: Gauge,
    /// Session tasks that panicked (each closed only its own connection).
    pub session_panics: Counter,
    worker_restarts: [Counter; WORKER_KINDS.len()],
    /// The memory budget's ledger (bytes held for peers, things shed).
    pub memory: std::sync::Arc<crate::memory::Ledger>,
    /// Clients closed because the canister refused too many of their messages.
    pub refusal_closes: Counter,
    /// Batches a message sent with the priority of a client with nothing else queued waited
    /// in the relay before its own batch was cut (0 unless many such clients arrive at once).
    pub relay_wait_batches: Histogram,
    /// Entries the canister answered `NotProcessed` (its instruction budget per call ran out
    /// before them); each was sent again in a later call.
    pub not_processed: Counter,
    /// Update calls made to isolate the entries of a trapping call (by bisection).
    pub isolation_calls: Counter,
    /// Entries found to trap (their client's session cannot continue).
    pub trapped_entries: Counter,
    errors: [Counter; ERROR_KINDS.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: Gauge::default(),
            connections_refusing: Gauge::default(),
            connections_total: Counter::default(),
            rejected_max_connections: Counter::default(),
            rejected_rate_limited: Counter::default(),
            rejected_source_limit: Counter::default(),
            refused_unanswered: Counter::default(),
            sessions: Gauge::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            frames_out: Counter::default(),
            calls_open: Counter::default(),
            calls_message: Counter::default(),
            calls_close: Counter::default(),
            polls: Counter::default(),
            batch_size: Histogram::new(SIZE_BUCKETS),
            poll_latency: Histogram::new(SECONDS_BUCKETS),
            message_call_latency: Histogram::new(SECONDS_BUCKETS),
            delivery_delay: Histogram::new(DELAY_BUCKETS),
            page_distribution: Histogram::new(SECONDS_BUCKETS),
            page_size: Histogram::new(SIZE_BUCKETS),
            page_clients: Histogram::new(SIZE_BUCKETS),
            page_cap_grown: Counter::default(),
            buffer_overflows: Counter::default(),
            workers_down: Gauge::default(),
            session_panics: Counter::default(),
            worker_restarts: Default::default(),
            memory: Default::default(),
            refusal_closes: Counter::default(),
            relay_wait_batches: Histogram::new(WAIT_BATCH_BUCKETS),
            not_processed: Counter::default(),
            isolation_calls: Counter::default(),
            trapped_entries: Counter::default(),
            errors: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts one error of `kind`.
    pub fn error(&self, kind: ErrorKind) {
        if let Some(c) = ERROR_KINDS
            .iter()
            .position(|(k, _)| *k == kind)
            .and_then(|i| self.errors.get(i))
        {
            c.inc();
        }
    }
    /// Errors of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        ERROR_KINDS
            .iter()
            .position(|(k, _)| *k == kind)
            .and_then(|i| self.errors.get(i))
            .map_or(0, Counter::get)
    }
    /// Counts a restart of a worker of `kind` (one of [`WORKER_KINDS`]).
    pub fn worker_restarted(&self, kind: &str) {
        if let Some(c) = WORKER_KINDS
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.worker_restarts.get(i))
        {
            c.inc();
        }
    }
    /// Restarts of workers of `kind` so far.
    pub fn worker_restarts(&self, kind: &str) -> u64 {
        WORKER_KINDS
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.worker_restarts.get(i))
            .map_or(0, Counter::get)
    }
    /// Counts a refused connection.
    pub fn rejected(&self, why: Rejection) {
        match why {
            Rejection::MaxConnections => self.rejected_max_connections.inc(),
            Rejection::RateLimited => self.rejected_rate_limited.inc(),
            Rejection::SourceLimit => self.rejected_source_limit.inc(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "ic_ws_gateway_connections",
            "Client connections held, from accept to close (handshakes and refusals included).",
            self.connections.get(),
        );
        gauge(
            &mut out,
            "ic_ws_gateway_connections_refusing",
            "Connections being refused (handshake, then close 4006).",
            self.connections_refusing.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_connections_accepted_total",
            "Client connections accepted.",
            self.connections_total.get(),
        );
        let _ = writeln!(
            out,
            "# HELP ic_ws_gateway_connections_rejected_total Connections refused (closed 4006, or without a handshake when there is no room to answer), by reason.\n\
             # TYPE ic_ws_gateway_connections_rejected_total counter\n\
             ic_ws_gateway_connections_rejected_total{{reason=\"max_connections\"}} {}\n\
             ic_ws_gateway_connections_rejected_total{{reason=\"rate_limit\"}} {}\n\
             ic_ws_gateway_connections_rejected_total{{reason=\"source_limit\"}} {}",
            self.rejected_max_connections.get(),
            self.rejected_rate_limited.get(),
            self.rejected_source_limit.get()
        );
        counter(
            &mut out,
            "ic_ws_gateway_connections_refused_unanswered_total",
            "Refused connections closed without a handshake (no room to answer with 4006).",
            self.refused_unanswered.get(),
        );
        gauge(
            &mut out,
            "ic_ws_gateway_sessions",
            "Sessions attached through this gateway.",
            self.sessions.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_messages_in_total",
            "Client messages received for relay.",
            self.messages_in.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_messages_out_total",
            "Certified messages delivered to clients.",
            self.messages_out.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_frames_out_total",
            "Messages frames written to clients.",
            self.frames_out.get(),
        );
        let _ = writeln!(
            out,
            "# HELP ic_ws_gateway_update_calls_total Update calls to canisters, by method.\n\
             # TYPE ic_ws_gateway_update_calls_total counter\n\
             ic_ws_gateway_update_calls_total{{method=\"ws_open\"}} {}\n\
             ic_ws_gateway_update_calls_total{{method=\"ws_message\"}} {}\n\
             ic_ws_gateway_update_calls_total{{method=\"ws_close\"}} {}",
            self.calls_open.get(),
            self.calls_message.get(),
            self.calls_close.get()
        );
        counter(
            &mut out,
            "ic_ws_gateway_not_processed_total",
            "Entries the canister did not process (instruction budget of the call spent); sent again.",
            self.not_processed.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_isolation_calls_total",
            "Update calls made to isolate the entries of trapping calls (bisection).",
            self.isolation_calls.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_trapped_entries_total",
            "Entries found to trap the canister (isolated by bisection).",
            self.trapped_entries.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_polls_total",
            "ws_poll queries.",
            self.polls.get(),
        );
        self.batch_size.render(
            &mut out,
            "ic_ws_gateway_batch_size",
            "Client messages per ws_message call.",
        );
        self.poll_latency.render(
            &mut out,
            "ic_ws_gateway_poll_latency_seconds",
            "ws_poll round trip.",
        );
        self.message_call_latency.render(
            &mut out,
            "ic_ws_gateway_message_call_seconds",
            "ws_message round trip.",
        );
        self.delivery_delay.render(
            &mut out,
            "ic_ws_gateway_delivery_delay_seconds",
            "Delay added by the gateway: poll reply received to frame written to the client.",
        );
        self.page_distribution.render(
            &mut out,
            "ic_ws_gateway_page_distribution_seconds",
            "Time to hand every client its share of a poll page (frames are built by the session tasks).",
        );
        self.page_size.render(
            &mut out,
            "ic_ws_gateway_page_messages",
            "Messages per poll reply that had any.",
        );
        self.page_clients.render(
            &mut out,
            "ic_ws_gateway_page_clients",
            "Clients (frames) per poll reply that had any.",
        );
        counter(
            &mut out,
            "ic_ws_gateway_page_cap_grown_total",
            "Times a poller doubled its clients-per-page cap (a backlog outlasted the poll interval).",
            self.page_cap_grown.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_buffer_overflows_total",
            "Clients closed with 4001 (send buffer overflow).",
            self.buffer_overflows.get(),
        );
        gauge(
            &mut out,
            "ic_ws_gateway_workers_down",
            "Workers failed and waiting for their restart (/healthz is 503 meanwhile).",
            self.workers_down.get(),
        );
        let _ = writeln!(out, "# HELP ic_ws_gateway_worker_restarts_total Workers restarted after a panic or an error, by kind.\n# TYPE ic_ws_gateway_worker_restarts_total counter");
        for (kind, c) in WORKER_KINDS.iter().zip(&self.worker_restarts) {
            let _ = writeln!(
                out,
                "ic_ws_gateway_worker_restarts_total{{worker=\"{kind}\"}} {}",
                c.get()
            );
        }
        counter(
            &mut out,
            "ic_ws_gateway_session_panics_total",
            "Session tasks that panicked (only their own connection closed).",
            self.session_panics.get(),
        );
        counter(
            &mut out,
            "ic_ws_gateway_refusal_closes_total",
            "Clients closed (1008) because the canister refused too many of their messages.",
            self.refusal_closes.get(),
        );
        self.relay_wait_batches.render(
            &mut out,
            "ic_ws_gateway_relay_wait_batches",
            "Batches cut before the batch of a message sent with the priority of a client with nothing else queued (up to 4 KiB).",
        );
        self.memory.render(&mut out);
        let _ = writeln!(out, "# HELP ic_ws_gateway_errors_total Errors by kind.\n# TYPE ic_ws_gateway_errors_total counter");
        for ((_, name), c) in ERROR_KINDS.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "ic_ws_gateway_errors_total{{kind=\"{name}\"}} {}",
                c.get()
            );
        }
        out
    }

    /// The same metrics in the OpenMetrics 1.0 text format.
    pub fn render_openmetrics(&self) -> String {
        to_openmetrics(&self.render())
    }
}

/// Rewrites a Prometheus 0.0.4 exposition as OpenMetrics 1.0: a counter's family is named
/// without its `_total` suffix (its samples keep it), and the exposition ends with `# EOF`.
/// Everything else (gauges, histograms, help texts, samples) reads the same in both.
pub fn to_openmetrics(prometheus: &str) -> String {
    let counters: std::collections::HashSet<&str> = prometheus
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(prometheus.len().saturating_add(8));
    for line in prometheus.lines() {
        let family = |prefix: &str| {
            let rest = line.strip_prefix(prefix)?;
            let name = rest.split(' ').next()?;
            counters.contains(name).then(|| {
                let family = name.strip_suffix("_total").unwrap_or(name);
                format!(
                    "{prefix}{family}{}",
                    rest.get(name.len()..).unwrap_or_default()
                )
            })
        };
        match family("# HELP ").or_else(|| family("# TYPE ")) {
            Some(rewritten) => out.push_str(&rewritten),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_render() {
        let h = Histogram::new(SIZE_BUCKETS);
        for v in [1.0, 3.0, 3.0, 700.0, 5000.0] {
            h.observe(v);
        }
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"1\"} 1"), "{s}");
        assert!(s.contains("x_bucket{le=\"5\"} 3"), "{s}");
        assert!(s.contains("x_bucket{le=\"1000\"} 4"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 5"), "{s}");
        assert!(s.contains("x_count 5"), "{s}");
        assert_eq!(h.quantile_upper_bound(0.5), Some(5.0));
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let m = Metrics::default();
        m.error(ErrorKind::MalformedFrame);
        m.error(ErrorKind::MalformedFrame);
        m.error(ErrorKind::Poll);
        let text = m.render();
        assert!(text.contains("ic_ws_gateway_errors_total{kind=\"malformed_frame\"} 2"));
        assert!(text.contains("ic_ws_gateway_errors_total{kind=\"poll\"} 1"));
        assert!(text.contains("ic_ws_gateway_errors_total{kind=\"handshake\"} 0"));
    }

    /// Every metric the gateway exposes, with some values, parsed by both formats' parsers
    /// (`openmetrics-parser`: strict about counter suffixes, family names used twice and
    /// `# EOF`). The gauge `ic_ws_gateway_connections` beside the counter
    /// `ic_ws_gateway_connections_total` (one family name twice in OpenMetrics) failed here.
    #[test]
    fn the_exposition_parses_as_prometheus_and_as_openmetrics() {
        let m = Metrics::default();
        m.connections.inc();
        m.connections_total.inc();
        m.error(ErrorKind::Poll);
        m.poll_latency.observe(0.003);
        m.memory.shed(crate::memory::Shed::Frame);
        let text = m.render();
        let prom = openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("Prometheus 0.0.4: {e:?}\n{text}"));
        let om_text = m.render_openmetrics();
        let om = openmetrics_parser::openmetrics::parse_openmetrics(&om_text)
            .unwrap_or_else(|e| panic!("OpenMetrics: {e:?}\n{om_text}"));
        assert_eq!(prom.families.len(), om.families.len());
        let names: std::collections::HashSet<&String> = om.families.keys().collect();
        for family in [
            "ic_ws_gateway_connections",
            "ic_ws_gateway_connections_accepted",
        ] {
            assert!(
                names.contains(&family.to_string()),
                "{family} missing: {names:?}"
            );
        }
        assert!(om_text.ends_with("# EOF\n"));
        // The clash the rename removed is one the OpenMetrics parser catches.
        let clash = "# TYPE a gauge\na 1\n# TYPE a_total counter\na_total 1\n";
        assert!(
            openmetrics_parser::openmetrics::parse_openmetrics(&to_openmetrics(clash)).is_err()
        );
    }
}
