//! ic-ws-loadgen: load scenarios against a running ic-ws-gateway (a separate process) in front
//! of the embedded replica with the test app canister (e2e/test-app), or any canister with
//! the same `app_publish` method.
//!
//! - `idle`: hold N WebSocket connections (spread over 127.0.0.0/8 source addresses) and
//!   report the gateway's RSS per connection;
//! - `fanout`: N sessions per canister subscribed to a topic, publishers calling
//!   `app_publish` on every canister: messages/s delivered, gateway CPU, latency;
//! - `inbound`: N sessions each sending one `Echo` per period: messages/s relayed, update
//!   calls per 1 000 client messages, echo round trip;
//! - `attack`: one hostile workload (ping flood, relay floods, many sessions per address,
//!   descriptor hold, slow-loris) beside an honest client: gateway RSS peak, the honest round
//!   trip and connect time before, during and after, attackers closed (see [`attack`]).
//!
//! Every scenario prints human-readable lines and one final JSON line.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod attack;
mod client;
mod stats;

use candid::Principal;
use clap::{Args, Parser, Subcommand};
use client::Session;
use stats::{metric, Stats};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Errors of the load generator.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gateway or canister answered something unexpected.
    #[error("{0}")]
    Protocol(String),
    /// An IC call failed.
    #[error("IC: {0}")]
    Agent(String),
}

impl LoadError {
    fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LoadError {
        move |source| LoadError::Io { what, source }
    }
}

#[derive(Parser, Debug)]
#[command(name = "ic-ws-loadgen", about = "Load scenarios for ic-ws-gateway")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Hold idle connections; report gateway RSS per connection.
    Idle(IdleArgs),
    /// Topic fan-out from one or more canisters.
    Fanout(FanoutArgs),
    /// Clients sending messages at a fixed rate.
    Inbound(InboundArgs),
    /// Open sessions and count what arrives (for ic-ws-bench-gateway, whose fake canister
    /// produces the messages itself).
    Receive(ReceiveArgs),
    /// One attack beside an honest client: gateway RSS, honest round trips and connects
    /// before, during and after.
    Attack(attack::AttackArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The gateway's client address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: SocketAddr,
    /// The gateway's admin address (metrics).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The gateway's process id (RSS and CPU from /proc).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 500)]
    concurrency: usize,
    /// Distinct loopback source addresses (127.10.x.y) to spread connections over.
    #[arg(long, default_value_t = 64)]
    sources: usize,
}

#[derive(Args, Debug)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to hold (repeat the flag or comma-separate for steps, e.g. 10000,50000,100000).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    connections: Vec<usize>,
    /// Seconds to hold each step before measuring.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
}

#[derive(Args, Debug)]
struct Ic {
    /// The replica (IC API) URL, for `app_publish` calls.
    #[arg(long, default_value = "http://127.0.0.1:4943")]
    replica: String,
    /// Canister ids (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    canisters: Vec<String>,
}

#[derive(Args, Debug)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    ic: Ic,
    /// Sessions per canister (all subscribed to the topic).
    #[arg(long, default_value_t = 1000)]
    clients_per_canister: usize,
    /// Payload bytes per published message.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Pause between publishes of one publisher, in ms (0 = back to back).
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Publish on a fixed period per publisher, in ms (random phase; 0 = use
    /// `--interval-ms`, a pause after each publish returns).
    #[arg(long, default_value_t = 0)]
    period_ms: u64,
    /// Concurrent publishers per canister.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// With `--period-ms`: publish with `app_publish_expect`, announcing the next publish
    /// to the gateway (the canister's poll hint), as a timer-driven canister would.
    #[arg(long)]
    hint: bool,
    /// Sample one delivery in this many for latency.
    #[arg(long, default_value_t = 1)]
    sample_every: u64,
    /// After the run, wait this many seconds with no traffic (longer than the gateway's
    /// `--poll-active-window-ms`) and then count the gateway's idle polls for `--idle-secs`
    /// (0 = skip).
    #[arg(long, default_value_t = 0)]
    idle_after_secs: u64,
    /// Seconds over which idle polls are counted.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
}

#[derive(Args, Debug)]
struct InboundArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    ic: Ic,
    /// Sessions (spread over the canisters).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Messages per second per client.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds measured (after a warm-up of 5 s).
    #[arg(long, default_value_t = 30)]
    secs: u64,
}

#[derive(Args, Debug)]
struct ReceiveArgs {
    #[command(flatten)]
    common: Common,
    /// The canister id the gateway serves.
    #[arg(long)]
    canister: String,
    /// Sessions.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Seconds measured (after a warm-up of 5 s: `ic-ws-bench-gateway` starts producing 2 s
    /// after the last session opened).
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Sample one delivery in this many for latency.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.scenario {
            Scenario::Idle(a) => idle(a).await,
            Scenario::Fanout(a) => fanout(a).await,
            Scenario::Inbound(a) => inbound(a).await,
            Scenario::Receive(a) => receive(a).await,
            Scenario::Attack(a) => attack::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ic-ws-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn idle(args: IdleArgs) -> Result<(), LoadError> {
    let c = &args.common;
    let pid = c
        .gateway_pid
        .ok_or_else(|| LoadError::Protocol("--gateway-pid is required".into()))?;
    let base = stats::rss_kib(pid)?;
    println!("gateway RSS before: {base} KiB");
    let mut held: Vec<client::Ws> = Vec::new();
    let mut results = Vec::new();
    for &target in &args.connections {
        let started = Instant::now();
        let sem = Arc::new(Semaphore::new(c.concurrency));
        let mut tasks = Vec::new();
        for i in held.len()..target {
            let sem = sem.clone();
            let (gateway, source) = (c.gateway, client::source_ip(i % c.sources.max(1)));
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await;
                client::connect(gateway, Some(source))
                    .await
                    .map(|(ws, _)| ws)
            }));
        }
        let mut failed = 0;
        let mut first_error = None;
        for t in tasks {
            match t.await {
                Ok(Ok(ws)) => held.push(ws),
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        let rss = stats::rss_kib(pid)?;
        let per = (rss.saturating_sub(base)) as f64 * 1024.0 / held.len().max(1) as f64;
        let gauge = match c.admin {
            Some(a) => metric(&stats::scrape(a).await?, "ic_ws_gateway_connections"),
            None => f64::NAN,
        };
        println!(
            "idle: {} connections held ({failed} failed{}), gateway reports {gauge}, opened in {:.1} s; gateway RSS {rss} KiB = {:.0} bytes per connection above the {base} KiB baseline",
            held.len(),
            first_error.map(|e| format!(", first error: {e}")).unwrap_or_default(),
            took.as_secs_f64(),
            per
        );
        results.push(format!(
            "{{\"connections\":{},\"failed\":{failed},\"rss_kib\":{rss},\"base_kib\":{base},\"bytes_per_connection\":{per:.0}}}",
            held.len()
        ));
    }
    println!(
        "{{\"scenario\":\"idle\",\"steps\":[{}]}}",
        results.join(",")
    );
    Ok(())
}

async fn agent(replica: &str) -> Result<ic_agent::Agent, LoadError> {
    let agent = ic_agent::Agent::builder()
        .with_url(replica)
        .with_max_concurrent_requests(256)
        .build()
        .map_err(|e| LoadError::Agent(e.to_string()))?;
    agent
        .fetch_root_key()
        .await
        .map_err(|e| LoadError::Agent(e.to_string()))?;
    Ok(agent)
}

fn canisters(ic: &Ic) -> Result<Vec<Principal>, LoadError> {
    ic.canisters
        .iter()
        .map(|c| {
            Principal::from_text(c.trim())
                .map_err(|e| LoadError::Protocol(format!("canister {c}: {e}")))
        })
        .collect()
}

/// Opens `per_canister` sessions on each canister; `then` runs on each (e.g. subscribe).
async fn open_sessions(
    c: &Common,
    canisters: &[Principal],
    per_canister: usize,
) -> Result<Vec<Session>, LoadError> {
    let started = Instant::now();
    let rss_before = c.gateway_pid.and_then(|p| stats::rss_kib(p).ok());
    let sem = Arc::new(Semaphore::new(c.concurrency));
    let mut tasks = Vec::new();
    let mut i = 0;
    for &canister in canisters {
        for _ in 0..per_canister {
            let sem = sem.clone();
            let (gateway, source) = (c.gateway, client::source_ip(i % c.sources.max(1)));
            i += 1;
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await;
                let (ws, principal) = client::connect(gateway, Some(source)).await?;
                Session::open(ws, principal, canister).await
            }));
        }
    }
    let mut sessions = Vec::new();
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => sessions.push(s),
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    println!(
        "opened {} of {} sessions in {:.1} s{}",
        sessions.len(),
        canisters.len() * per_canister,
        started.elapsed().as_secs_f64(),
        first_error
            .map(|e| format!(" (first error: {e})"))
            .unwrap_or_default()
    );
    if let (Some(before), Some(pid)) = (rss_before, c.gateway_pid) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = stats::rss_kib(pid)?;
        println!(
            "gateway RSS {before} KiB -> {after} KiB with {} sessions open: {:.0} bytes per session (connection + session)",
            sessions.len(),
            after.saturating_sub(before) as f64 * 1024.0 / sessions.len().max(1) as f64
        );
    }
    Ok(sessions)
}

/// `app_publish(topic, size)`, or `app_publish_expect(topic, size, next_in_ms)` with a hint.
async fn publish(
    agent: &ic_agent::Agent,
    canister: Principal,
    topic: &str,
    size: u32,
    hint_ms: Option<u64>,
) -> Result<u64, LoadError> {
    let (method, arg) = match hint_ms {
        Some(ms) => ("app_publish_expect", candid::encode_args((topic, size, ms))),
        None => ("app_publish", candid::encode_args((topic, size))),
    };
    let arg = arg.map_err(|e| LoadError::Protocol(e.to_string()))?;
    let reply = agent
        .update(&canister, method)
        .with_arg(arg)
        .call_and_wait()
        .await
        .map_err(|e| LoadError::Agent(e.to_string()))?;
    let r: Result<(u64, u64, u64), String> =
        candid::decode_one(&reply).map_err(|e| LoadError::Protocol(e.to_string()))?;
    r.map(|(delivered, _, _)| delivered)
        .map_err(LoadError::Agent)
}

struct Probe {
    admin: Option<SocketAddr>,
    pid: Option<u32>,
}

impl Probe {
    async fn take(&self) -> (String, f64, Instant) {
        let text = match self.admin {
            Some(a) => stats::scrape(a).await.unwrap_or_default(),
            None => String::new(),
        };
        let cpu = self
            .pid
            .and_then(|p| stats::cpu_seconds(p).ok())
            .unwrap_or(f64::NAN);
        (text, cpu, Instant::now())
    }

    /// CPU seconds of the gateway process's threads named `name` (`ic-ws-bench-gateway` runs
    /// its fake canister on a thread named `fake-canister`).
    fn thread_cpu(&self, name: &str) -> f64 {
        self.pid
            .and_then(|p| stats::thread_cpu_seconds(p, name).ok())
            .unwrap_or(0.0)
    }
}

async fn fanout(args: FanoutArgs) -> Result<(), LoadError> {
    let c = &args.common;
    let canisters = canisters(&args.ic)?;
    let agent = agent(&args.ic.replica).await?;
    let topic = "bench";
    let sessions = open_sessions(c, &canisters, args.clients_per_canister).await?;
    let stats = Arc::new(Stats::default());
    stats
        .sample_every
        .store(args.sample_every, std::sync::atomic::Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::new();
    for mut s in sessions {
        s.send_app(&client::Inbound::Subscribe(topic.into()))
            .await?;
        receivers.push(tokio::spawn(s.run_receiver(stats.clone(), stop_rx.clone())));
    }
    // Wait until every subscription is in (a 1-byte publish reports its subscriber count).
    let deadline = Instant::now() + Duration::from_secs(120);
    for &canister in &canisters {
        loop {
            let n = publish(&agent, canister, topic, 1, None).await?;
            if n as usize >= args.clients_per_canister || Instant::now() > deadline {
                println!("canister {canister}: {n} subscribers");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stats.reset_samples();
    let probe = Probe {
        admin: c.admin,
        pid: c.gateway_pid,
    };
    let d0 = stats.delivered.load(std::sync::atomic::Ordering::Relaxed);
    let (m0, cpu0, t0) = probe.take().await;
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(args.secs);
    let mut publishers = Vec::new();
    for &canister in &canisters {
        for _ in 0..args.publishers {
            let (agent, published) = (agent.clone(), published.clone());
            let (size, interval) = (args.size, Duration::from_millis(args.interval_ms));
            let period = Duration::from_millis(args.period_ms);
            let hint = (args.hint && args.period_ms > 0).then_some(args.period_ms);
            publishers.push(tokio::spawn(async move {
                let mut ticker = (!period.is_zero()).then(|| {
                    let phase = period.mul_f64(rand::random::<f64>());
                    let mut t =
                        tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                while Instant::now() < until {
                    if let Some(t) = ticker.as_mut() {
                        t.tick().await;
                        if Instant::now() >= until {
                            break;
                        }
                    }
                    match publish(&agent, canister, topic, size, hint).await {
                        Ok(n) => {
                            published.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => eprintln!("publish to {canister}: {e}"),
                    }
                    if ticker.is_none() && !interval.is_zero() {
                        tokio::time::sleep(interval).await;
                    }
                }
            }));
        }
    }
    for p in publishers {
        let _ = p.await;
    }
    // Drain: until everything published has arrived or nothing moves for 3 s.
    let expected = published.load(std::sync::atomic::Ordering::Relaxed);
    let mut last = (
        stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
        Instant::now(),
    );
    loop {
        let now = stats.delivered.load(std::sync::atomic::Ordering::Relaxed);
        if now - d0 >= expected || last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (m1, cpu1, t1) = probe.take().await;
    let delivered = stats.delivered.load(std::sync::atomic::Ordering::Relaxed) - d0;
    let wall = (last.1.max(t0) - t0)
        .as_secs_f64()
        .max(t1.duration_since(t0).as_secs_f64().min(args.secs as f64));
    let rate = delivered as f64 / wall;
    let cpu = (cpu1 - cpu0) / t1.duration_since(t0).as_secs_f64();
    let (p50, p99, max, n) =
        stats
            .delivery_percentiles()
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN, 0));
    let gw_p50 = stats::histogram_quantile(&m0, &m1, "ic_ws_gateway_delivery_delay_seconds", 0.5)
        .map_or(f64::NAN, |s| s * 1000.0);
    let gw_p99 = stats::histogram_quantile(&m0, &m1, "ic_ws_gateway_delivery_delay_seconds", 0.99)
        .map_or(f64::NAN, |s| s * 1000.0);
    let polls = metric(&m1, "ic_ws_gateway_polls_total") - metric(&m0, "ic_ws_gateway_polls_total");
    let polled_secs = t1.duration_since(t0).as_secs_f64();
    let qps = polls / polled_secs / canisters.len() as f64;
    let gaps = stats.gaps.load(std::sync::atomic::Ordering::Relaxed);
    let closed = stats.closed.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "fanout: {} canisters x {} clients, {} B payloads: {delivered} of {expected} published messages delivered in {wall:.1} s = {rate:.0} msg/s; gateway CPU {cpu:.2} cores; {polls} polls in {polled_secs:.1} s = {qps:.2} queries/s per canister",
        canisters.len(),
        args.clients_per_canister,
        args.size
    );
    let idle_qps = if args.idle_after_secs > 0 {
        tokio::time::sleep(Duration::from_secs(args.idle_after_secs)).await;
        let (i0, _, it0) = probe.take().await;
        tokio::time::sleep(Duration::from_secs(args.idle_secs.max(1))).await;
        let (i1, _, it1) = probe.take().await;
        let n = metric(&i1, "ic_ws_gateway_polls_total") - metric(&i0, "ic_ws_gateway_polls_total");
        let q = n / it1.duration_since(it0).as_secs_f64() / canisters.len() as f64;
        println!(
            "idle: {n} polls in {:.1} s after {} s without traffic = {q:.2} queries/s per canister",
            it1.duration_since(it0).as_secs_f64(),
            args.idle_after_secs
        );
        q
    } else {
        f64::NAN
    };
    println!(
        "latency canister send -> client receipt (ms, {n} samples): p50 {p50:.1}, p99 {p99:.1}, max {max:.1}; gateway-added delay (bucket upper bounds): p50 <= {gw_p50} ms, p99 <= {gw_p99} ms; gaps {gaps}, sessions lost {closed}"
    );
    println!(
        "{{\"scenario\":\"fanout\",\"canisters\":{},\"clients_per_canister\":{},\"size\":{},\"published\":{expected},\"delivered\":{delivered},\"seconds\":{wall:.2},\"msgs_per_s\":{rate:.0},\"gateway_cpu_cores\":{cpu:.2},\"latency_ms\":{{\"p50\":{p50:.2},\"p99\":{p99:.2},\"max\":{max:.2}}},\"gateway_delay_ms\":{{\"p50_le\":{gw_p50},\"p99_le\":{gw_p99}}},\"queries_per_s_per_canister\":{qps:.2},\"idle_queries_per_s_per_canister\":{idle_qps:.2},\"gaps\":{gaps},\"lost_sessions\":{closed}}}",
        canisters.len(),
        args.clients_per_canister,
        args.size
    );
    stop_tx.send_replace(true);
    for r in receivers {
        let _ = r.await;
    }
    Ok(())
}

async fn inbound(args: InboundArgs) -> Result<(), LoadError> {
    let c = &args.common;
    let canisters = canisters(&args.ic)?;
    let per = args.clients.div_ceil(canisters.len().max(1));
    let sessions = open_sessions(c, &canisters, per).await?;
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.001));
    let mut tasks = Vec::new();
    for s in sessions {
        tasks.push(tokio::spawn(s.run_echo(
            period,
            stats.clone(),
            stop_rx.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stats.reset_samples();
    let probe = Probe {
        admin: c.admin,
        pid: c.gateway_pid,
    };
    let (m0, cpu0, t0) = probe.take().await;
    let s0 = stats.sent.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let (m1, cpu1, t1) = probe.take().await;
    let sent = stats.sent.load(std::sync::atomic::Ordering::Relaxed) - s0;
    let dt = t1.duration_since(t0).as_secs_f64();
    let relayed = metric(&m1, "ic_ws_gateway_messages_in_total")
        - metric(&m0, "ic_ws_gateway_messages_in_total");
    let calls = metric(
        &m1,
        "ic_ws_gateway_update_calls_total{method=\"ws_message\"}",
    ) - metric(
        &m0,
        "ic_ws_gateway_update_calls_total{method=\"ws_message\"}",
    );
    let per_1000 = if relayed > 0.0 {
        calls * 1000.0 / relayed
    } else {
        f64::NAN
    };
    let cpu = (cpu1 - cpu0) / dt;
    let (p50, p99, max, n) =
        stats
            .round_trip_percentiles()
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN, 0));
    let errors = stats.errors.load(std::sync::atomic::Ordering::Relaxed);
    let closed = stats.closed.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "inbound: {} clients x {}/s: sent {sent} in {dt:.1} s ({:.0}/s); gateway relayed {relayed} ({:.0}/s) with {calls} ws_message calls = {per_1000:.1} calls per 1000 messages; gateway CPU {cpu:.2} cores",
        args.clients,
        args.rate,
        sent as f64 / dt,
        relayed / dt
    );
    println!("echo round trip (ms, {n} samples): p50 {p50:.1}, p99 {p99:.1}, max {max:.1}; errors {errors}, sessions lost {closed}");
    println!(
        "{{\"scenario\":\"inbound\",\"clients\":{},\"rate\":{},\"sent\":{sent},\"relayed\":{relayed},\"seconds\":{dt:.2},\"ws_message_calls\":{calls},\"calls_per_1000\":{per_1000:.2},\"gateway_cpu_cores\":{cpu:.2},\"echo_ms\":{{\"p50\":{p50:.2},\"p99\":{p99:.2},\"max\":{max:.2}}},\"errors\":{errors},\"lost_sessions\":{closed}}}",
        args.clients, args.rate
    );
    stop_tx.send_replace(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Thread name of `ic-ws-bench-gateway`'s fake canister.
const FAKE_THREAD: &str = "fake-canister";

async fn receive(args: ReceiveArgs) -> Result<(), LoadError> {
    let c = &args.common;
    let canister = Principal::from_text(args.canister.trim())
        .map_err(|e| LoadError::Protocol(format!("canister: {e}")))?;
    let sessions = open_sessions(c, &[canister], args.clients).await?;
    let stats = Arc::new(Stats::default());
    stats
        .sample_every
        .store(args.sample_every, std::sync::atomic::Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::new();
    for s in sessions {
        receivers.push(tokio::spawn(s.run_receiver(stats.clone(), stop_rx.clone())));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    stats.reset_samples();
    let probe = Probe {
        admin: c.admin,
        pid: c.gateway_pid,
    };
    let d0 = stats.delivered.load(std::sync::atomic::Ordering::Relaxed);
    let fake0 = probe.thread_cpu(FAKE_THREAD);
    let own0 = stats::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let (m0, cpu0, t0) = probe.take().await;
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let (m1, cpu1, t1) = probe.take().await;
    let fake1 = probe.thread_cpu(FAKE_THREAD);
    let own1 = stats::cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let delivered = stats.delivered.load(std::sync::atomic::Ordering::Relaxed) - d0;
    let dt = t1.duration_since(t0).as_secs_f64();
    let rate = delivered as f64 / dt;
    let fake_cpu = (fake1 - fake0) / dt;
    let own_cpu = (own1 - own0) / dt;
    let cpu = (cpu1 - cpu0) / dt - fake_cpu;
    let frames = stats::metric(&m1, "ic_ws_gateway_frames_out_total")
        - stats::metric(&m0, "ic_ws_gateway_frames_out_total");
    let (p50, p99, max, n) =
        stats
            .delivery_percentiles()
            .unwrap_or((f64::NAN, f64::NAN, f64::NAN, 0));
    let gw_p50 = stats::histogram_quantile(&m0, &m1, "ic_ws_gateway_delivery_delay_seconds", 0.5)
        .map_or(f64::NAN, |s| s * 1000.0);
    let gw_p99 = stats::histogram_quantile(&m0, &m1, "ic_ws_gateway_delivery_delay_seconds", 0.99)
        .map_or(f64::NAN, |s| s * 1000.0);
    let gaps = stats.gaps.load(std::sync::atomic::Ordering::Relaxed);
    let closed = stats.closed.load(std::sync::atomic::Ordering::Relaxed);
    let delta = |name: &str| stats::metric(&m1, name) - stats::metric(&m0, name);
    let pages = delta("ic_ws_gateway_page_messages_count");
    let polls_per_s = delta("ic_ws_gateway_polls_total") / dt;
    let page_messages = delta("ic_ws_gateway_page_messages_sum") / pages;
    let page_clients = delta("ic_ws_gateway_page_clients_sum") / pages;
    let cap_grown = delta("ic_ws_gateway_page_cap_grown_total");
    println!("receive: {} clients: {delivered} messages in {dt:.1} s = {rate:.0} msg/s in {:.0} frames/s; gateway CPU {cpu:.2} cores (without the fake canister's threads, which used {fake_cpu:.2}); load generator CPU {own_cpu:.2} cores", args.clients, frames / dt);
    println!(
        "latency fake-canister send -> client receipt (ms, {n} samples): p50 {p50:.1}, p99 {p99:.1}, max {max:.1}; gateway-added delay: p50 <= {gw_p50} ms, p99 <= {gw_p99} ms; gaps {gaps}, sessions lost {closed}"
    );
    println!(
        "polls: {polls_per_s:.0}/s; pages with messages: {page_messages:.1} messages to {page_clients:.1} clients on average; page cap grown {cap_grown} times"
    );
    println!(
        "{{\"scenario\":\"receive\",\"clients\":{},\"delivered\":{delivered},\"seconds\":{dt:.2},\"msgs_per_s\":{rate:.0},\"frames_per_s\":{:.0},\"gateway_cpu_cores\":{cpu:.2},\"fake_canister_cpu_cores\":{fake_cpu:.2},\"loadgen_cpu_cores\":{own_cpu:.2},\"latency_ms\":{{\"p50\":{p50:.2},\"p99\":{p99:.2},\"max\":{max:.2}}},\"gateway_delay_ms\":{{\"p50_le\":{gw_p50},\"p99_le\":{gw_p99}}},\"gaps\":{gaps},\"lost_sessions\":{closed},\"polls_per_s\":{polls_per_s:.1},\"page_messages\":{page_messages:.1},\"page_clients\":{page_clients:.1},\"page_cap_grown\":{cap_grown}}}",
        args.clients, frames / dt
    );
    stop_tx.send_replace(true);
    for r in receivers {
        let _ = r.await;
    }
    Ok(())
}
