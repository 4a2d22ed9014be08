//! `attack`: one hostile workload beside an honest client, in three phases (before, during,
//! after the attack), reporting what the attack costs the gateway and the honest client.
//!
//! Modes (issue 8's attack benchmark):
//! - `ping-flood`: WebSocket connections that send 125-byte pings as fast as the socket takes
//!   them and never read;
//! - `junk-flood`: sessions that send app messages of `--junk-size` junk bytes with junk
//!   signatures (the canister refuses them) as fast as they can;
//! - `signed-flood`: sessions that send validly signed messages whose `--signed-size`-byte
//!   payload is not candid (the canister answers `DecodeError`, the session stays open);
//! - `sessions`: as many sessions from one address as the gateway admits, held open;
//! - `hold`: TCP connections that send nothing (descriptors held in the handshake);
//! - `slowloris`: connections that send an HTTP upgrade request one header line per second;
//! - `big-frames`: sessions that send a frame header announcing `--big-frame-size` bytes and
//!   all of the payload but its last byte, then hold (tungstenite
//!   reserves the announced length on the header: the gateway's frame meter charges it to the
//!   memory budget first);
//! - `none`: no attack (the baseline run).
//!
//! Attackers connect from `--attack-source` (and the next `--attack-sources - 1` addresses),
//! reconnect when they are closed or refused, and count both. The honest client connects from
//! 127.0.0.1 and sends an `Echo` at `--honest-rate` per second, timing each round trip; every
//! `--probe-every-ms` a fresh honest connection opens a session (connect time). The gateway's
//! RSS is sampled every 50 ms.

use crate::client::{self, Inbound, Outbound, Session};
use crate::stats::{self, Stats};
use crate::{Common, LoadError};
use candid::Principal;
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use ic_ws_protocol::types::{OutboundBody, OutboundContent};
use ic_ws_protocol::GatewayFrame;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// The attack to run.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pings as fast as possible, never reading.
    PingFlood,
    /// App messages with junk signatures.
    JunkFlood,
    /// Validly signed messages with non-candid payloads.
    SignedFlood,
    /// Many sessions from one address.
    Sessions,
    /// TCP connections that never send anything.
    Hold,
    /// HTTP upgrade requests sent one header line per second.
    Slowloris,
    /// Frames announcing `--big-frame-size` bytes, sent but for their last byte, held.
    BigFrames,
    /// No attack.
    None,
}

impl Mode {
    fn default_attackers(self) -> usize {
        match self {
            Mode::PingFlood => 8,
            Mode::JunkFlood | Mode::SignedFlood => 40,
            Mode::Sessions | Mode::Hold | Mode::Slowloris | Mode::BigFrames => 1000,
            Mode::None => 0,
        }
    }
}

#[derive(Args, Debug)]
pub struct AttackArgs {
    #[command(flatten)]
    common: Common,
    /// The attack.
    #[arg(long, value_enum)]
    mode: Mode,
    /// The canister id (the test app: `Echo` is answered).
    #[arg(long)]
    canister: String,
    /// Concurrent attacker connections (default per mode: ping-flood 8, floods 40, others 1000).
    #[arg(long)]
    attackers: Option<usize>,
    /// First source address of the attackers.
    #[arg(long, default_value = "127.66.0.1")]
    attack_source: Ipv4Addr,
    /// Source addresses the attackers spread over (consecutive from --attack-source).
    #[arg(long, default_value_t = 1)]
    attack_sources: usize,
    /// Seconds of attack.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Seconds measured before the attack (after a 3 s warm-up).
    #[arg(long, default_value_t = 15)]
    baseline_secs: u64,
    /// Seconds measured after the attack.
    #[arg(long, default_value_t = 15)]
    after_secs: u64,
    /// Honest echoes per second.
    #[arg(long, default_value_t = 5.0)]
    honest_rate: f64,
    /// A fresh honest connection (connect + open) every this many ms.
    #[arg(long, default_value_t = 2000)]
    probe_every_ms: u64,
    /// The gateway's memory budget in MiB (reported against the RSS peak).
    #[arg(long, default_value_t = 512)]
    budget_mib: u64,
    /// Payload bytes of a junk-flood message.
    #[arg(long, default_value_t = 120 * 1024)]
    junk_size: usize,
    /// Payload bytes of a signed-flood message.
    #[arg(long, default_value_t = 60 * 1024)]
    signed_size: usize,
    /// Announced bytes of a big-frames frame (the gateway's --max-frame-size is 128 KiB).
    #[arg(long, default_value_t = 131_000)]
    big_frame_size: u64,
    /// The canister is `ic-ws-bench-gateway`'s fake (it echoes payloads starting with
    /// `echo:`) instead of the test app (candid `Echo`).
    #[arg(long)]
    fake_canister: bool,
}

const PHASES: [&str; 3] = ["before", "during", "after"];

/// What the honest side and the sampler record, per phase.
#[derive(Default)]
struct Record {
    phase: AtomicUsize,
    rtt_us: [Mutex<Vec<u64>>; 3],
    connect_us: [Mutex<Vec<u64>>; 3],
    connect_failed: [AtomicU64; 3],
    honest_drops: [AtomicU64; 3],
    rss_peak_kib: [AtomicU64; 3],
    connections_peak: [AtomicU64; 3],
}

impl Record {
    fn phase(&self) -> usize {
        self.phase.load(Relaxed).min(2)
    }
    fn push(list: &[Mutex<Vec<u64>>; 3], phase: usize, v: u64) {
        if let Ok(mut l) = list[phase].lock() {
            l.push(v);
        }
    }
    /// (p50, p99, max, count) in ms.
    fn percentiles(list: &[Mutex<Vec<u64>>; 3], phase: usize) -> (f64, f64, f64, usize) {
        let mut v = list[phase].lock().map(|l| l.clone()).unwrap_or_default();
        if v.is_empty() {
            return (f64::NAN, f64::NAN, f64::NAN, 0);
        }
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((v.len() - 1) as f64 * q).round() as usize;
            v.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        (at(0.5), at(0.99), at(1.0), v.len())
    }
}

/// What the attackers saw.
#[derive(Default)]
struct AttackStats {
    /// Connections (or sessions) established.
    connected: AtomicU64,
    /// Connection attempts refused or failed before being established.
    refused: AtomicU64,
    /// Established connections the gateway ended.
    closed: AtomicU64,
    /// Established connections right now.
    open_now: AtomicI64,
    /// Close codes of the ended connections (0: TCP close without a WebSocket close).
    codes: Mutex<BTreeMap<u16, u64>>,
    /// Bytes the attackers got into the gateway's socket.
    sent_bytes: AtomicU64,
}

impl AttackStats {
    fn ended(&self, code: u16) {
        self.closed.fetch_add(1, Relaxed);
        self.open_now.fetch_sub(1, Relaxed);
        if let Ok(mut c) = self.codes.lock() {
            *c.entry(code).or_default() += 1;
        }
    }
    fn established(&self) {
        self.connected.fetch_add(1, Relaxed);
        self.open_now.fetch_add(1, Relaxed);
    }
}

fn source(args: &AttackArgs, i: usize) -> IpAddr {
    let n = u32::try_from(i % args.attack_sources.max(1)).unwrap_or(0);
    IpAddr::V4(Ipv4Addr::from(
        u32::from(args.attack_source).wrapping_add(n),
    ))
}

fn honest_source() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// Runs the attack scenario.
pub async fn run(args: AttackArgs) -> Result<(), LoadError> {
    let c = &args.common;
    let pid = c
        .gateway_pid
        .ok_or_else(|| LoadError::Protocol("--gateway-pid is required".into()))?;
    let canister = Principal::from_text(args.canister.trim())
        .map_err(|e| LoadError::Protocol(format!("canister: {e}")))?;
    let record = Arc::new(Record::default());
    let attack = Arc::new(AttackStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut background = Vec::new();
    background.push(tokio::spawn(sample(
        pid,
        c.admin,
        record.clone(),
        stop_rx.clone(),
    )));
    let honest = Session::open_from(c.gateway, honest_source(), canister).await?;
    background.push(tokio::spawn(honest_echo(
        honest,
        c.gateway,
        canister,
        args.fake_canister,
        Duration::from_secs_f64(1.0 / args.honest_rate.max(0.01)),
        record.clone(),
        stop_rx.clone(),
    )));
    background.push(tokio::spawn(probe_connects(
        c.gateway,
        canister,
        Duration::from_millis(args.probe_every_ms.max(100)),
        record.clone(),
        stop_rx.clone(),
    )));
    tokio::time::sleep(Duration::from_secs(3)).await;
    for l in record.rtt_us.iter().chain(&record.connect_us) {
        if let Ok(mut l) = l.lock() {
            l.clear();
        }
    }
    let rss_before = stats::rss_kib(pid)?;
    println!(
        "attack {:?}: baseline {} s, attack {} s, after {} s; gateway RSS {rss_before} KiB",
        args.mode, args.baseline_secs, args.secs, args.after_secs
    );
    tokio::time::sleep(Duration::from_secs(args.baseline_secs)).await;

    record.phase.store(1, Relaxed);
    let (attack_stop_tx, attack_stop_rx) = watch::channel(false);
    let n = args.attackers.unwrap_or(args.mode.default_attackers());
    // The attackers run on a runtime of their own (one thread): their CPU work (signing 60 KB
    // messages, writing floods) must compete with the honest client for the CPU as another
    // process would, through the OS scheduler, not hold up the honest client's tasks on a
    // shared tokio worker (which measured the load generator, not the gateway).
    let attack_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("attackers")
        .enable_all()
        .build()
        .map_err(LoadError::io("attackers' runtime"))?;
    let mut attackers = Vec::new();
    for i in 0..n {
        let (attack, stop) = (attack.clone(), attack_stop_rx.clone());
        let src = source(&args, i);
        let gateway = c.gateway;
        let rt = attack_rt.handle();
        attackers.push(match args.mode {
            Mode::PingFlood => rt.spawn(ping_flood(gateway, src, attack, stop)),
            Mode::JunkFlood => rt.spawn(relay_flood(
                gateway,
                src,
                canister,
                vec![0xab; args.junk_size],
                false,
                attack,
                stop,
            )),
            Mode::SignedFlood => rt.spawn(relay_flood(
                gateway,
                src,
                canister,
                vec![0xff; args.signed_size],
                true,
                attack,
                stop,
            )),
            Mode::Sessions => rt.spawn(hold_session(gateway, src, canister, attack, stop)),
            Mode::Hold => rt.spawn(tcp_attacker(gateway, src, false, attack, stop)),
            Mode::Slowloris => rt.spawn(tcp_attacker(gateway, src, true, attack, stop)),
            Mode::BigFrames => rt.spawn(big_frames(
                gateway,
                src,
                canister,
                args.big_frame_size,
                attack,
                stop,
            )),
            Mode::None => break,
        });
        // Connect in waves so the first attackers are flooding while the rest connect.
        if i % 50 == 49 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let open_at_end = attack.open_now.load(Relaxed);
    record.phase.store(2, Relaxed);
    attack_stop_tx.send_replace(true);
    for a in attackers {
        let _ = a.await;
    }
    attack_rt.shutdown_background();
    tokio::time::sleep(Duration::from_secs(args.after_secs)).await;
    stop_tx.send_replace(true);
    for b in background {
        let _ = b.await;
    }
    report(&args, &record, &attack, rss_before, open_at_end);
    Ok(())
}

fn report(
    args: &AttackArgs,
    record: &Record,
    attack: &AttackStats,
    rss_before: u64,
    open_at_end: i64,
) {
    let budget_kib = args.budget_mib * 1024;
    let rss_peak: Vec<u64> = record
        .rss_peak_kib
        .iter()
        .map(|a| a.load(Relaxed))
        .collect();
    let peak = rss_peak.iter().copied().max().unwrap_or(0);
    let rtt: Vec<_> = (0..3)
        .map(|p| Record::percentiles(&record.rtt_us, p))
        .collect();
    let conn: Vec<_> = (0..3)
        .map(|p| Record::percentiles(&record.connect_us, p))
        .collect();
    let failed: Vec<u64> = record
        .connect_failed
        .iter()
        .map(|a| a.load(Relaxed))
        .collect();
    let drops: Vec<u64> = record
        .honest_drops
        .iter()
        .map(|a| a.load(Relaxed))
        .collect();
    let conns: Vec<u64> = record
        .connections_peak
        .iter()
        .map(|a| a.load(Relaxed))
        .collect();
    let codes = attack.codes.lock().map(|c| c.clone()).unwrap_or_default();
    let codes_text: Vec<String> = codes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let (connected, refused, closed) = (
        attack.connected.load(Relaxed),
        attack.refused.load(Relaxed),
        attack.closed.load(Relaxed),
    );
    println!(
        "gateway RSS peak {peak} KiB (before {} / during {} / after {} KiB; started at {rss_before} KiB); budget {budget_kib} KiB: {}",
        rss_peak[0],
        rss_peak[1],
        rss_peak[2],
        if peak <= budget_kib { "within" } else { "EXCEEDED" }
    );
    for (p, name) in PHASES.iter().enumerate() {
        println!(
            "{name:>6}: honest round trip p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} echoes, {} session drops); honest connect+open p50 {:.1} ms, max {:.1} ms ({} ok, {} failed); gateway connections peak {}",
            rtt[p].0, rtt[p].1, rtt[p].2, rtt[p].3, drops[p], conn[p].0, conn[p].2, conn[p].3, failed[p], conns[p]
        );
    }
    let ratio = rtt[1].1 / rtt[0].1;
    println!(
        "attackers: {connected} connections established, {refused} refused before that, {closed} closed by the gateway (close codes {{{}}}), {open_at_end} still open when the attack stopped; {} KiB sent into the gateway; honest p99 during/before = {ratio:.2}",
        codes_text.join(", "),
        attack.sent_bytes.load(Relaxed) / 1024
    );
    let phase_json = |p: usize| {
        format!(
            "{{\"rtt_ms\":{{\"p50\":{:.2},\"p99\":{:.2},\"max\":{:.2},\"n\":{}}},\"connect_ms\":{{\"p50\":{:.2},\"max\":{:.2},\"ok\":{},\"failed\":{}}},\"honest_drops\":{},\"rss_peak_kib\":{},\"connections_peak\":{}}}",
            rtt[p].0, rtt[p].1, rtt[p].2, rtt[p].3, conn[p].0, conn[p].2, conn[p].3, failed[p], drops[p], rss_peak[p], conns[p]
        )
    };
    let codes_json: Vec<String> = codes.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    println!(
        "{{\"scenario\":\"attack\",\"mode\":\"{:?}\",\"attackers\":{},\"secs\":{},\"budget_kib\":{budget_kib},\"rss_before_kib\":{rss_before},\"rss_peak_kib\":{peak},\"before\":{},\"during\":{},\"after\":{},\"p99_ratio\":{ratio:.2},\"attack\":{{\"connected\":{connected},\"refused\":{refused},\"closed\":{closed},\"open_at_end\":{open_at_end},\"close_codes\":{{{}}},\"sent_kib\":{}}}}}",
        args.mode,
        args.attackers.unwrap_or(args.mode.default_attackers()),
        args.secs,
        phase_json(0),
        phase_json(1),
        phase_json(2),
        codes_json.join(","),
        attack.sent_bytes.load(Relaxed) / 1024
    );
}

/// Resolves once `stop` is set (the watch guard is dropped inside, so the future is `Send`).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Samples the gateway's RSS (every 50 ms) and connection gauge (every second).
async fn sample(
    pid: u32,
    admin: Option<SocketAddr>,
    record: Arc<Record>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let p = record.phase();
        if let Ok(rss) = stats::rss_kib(pid) {
            record.rss_peak_kib[p].fetch_max(rss, Relaxed);
        }
        n += 1;
        if let (Some(a), true) = (admin, n.is_multiple_of(20)) {
            if let Ok(text) = stats::scrape(a).await {
                let v = stats::metric(&text, "ic_ws_gateway_connections");
                record.connections_peak[p].fetch_max(v as u64, Relaxed);
            }
        }
    }
}

impl Session {
    /// Connects from `source` and opens a session.
    pub async fn open_from(
        gateway: SocketAddr,
        source: IpAddr,
        canister: Principal,
    ) -> Result<Session, LoadError> {
        let (ws, principal) = client::connect(gateway, Some(source)).await?;
        Session::open(ws, principal, canister).await
    }
}

/// The honest client: an `Echo` every `period`, round trips recorded per phase; reconnects
/// (counting a drop) if its session ends.
async fn honest_echo(
    mut session: Session,
    gateway: SocketAddr,
    canister: Principal,
    fake: bool,
    period: Duration,
    record: Arc<Record>,
    mut stop: watch::Receiver<bool>,
) {
    let stats = Stats::default();
    let mut tick = tokio::time::interval(period);
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut n = 0u64;
    loop {
        let failed = tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {
                n += 1;
                let text = format!("honest-{n}");
                pending.insert(text.clone(), Instant::now());
                let sent = if fake {
                    session.send_payload(format!("echo:{text}").into_bytes()).await
                } else {
                    session.send_app(&Inbound::Echo(text)).await
                };
                sent.is_err()
            }
            f = client::next_frame(&mut session.ws) => match f {
                Ok(frame) => {
                    for text in echoes(&frame) {
                        if let Some(at) = pending.remove(&text) {
                            Record::push(&record.rtt_us, record.phase(), at.elapsed().as_micros() as u64);
                        }
                    }
                    session.on_frame(frame, &stats, false).await.is_err()
                }
                Err(_) => true,
            }
        };
        if failed {
            record.honest_drops[record.phase()].fetch_add(1, Relaxed);
            pending.clear();
            loop {
                if *stop.borrow() {
                    return;
                }
                match Session::open_from(gateway, honest_source(), canister).await {
                    Ok(s) => {
                        session = s;
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    }
}

/// The echoed texts in a frame: candid `Outbound::Echo` (the test app) or a raw UTF-8
/// payload (the fake canister's echo).
fn echoes(frame: &GatewayFrame) -> Vec<String> {
    let GatewayFrame::Messages { messages, .. } = frame else {
        return Vec::new();
    };
    messages
        .iter()
        .filter_map(|m| ic_ws_protocol::decode::<OutboundContent>(&m.content).ok())
        .filter_map(|c| match c.body {
            OutboundBody::App { payload, .. } => match candid::decode_one::<Outbound>(&payload) {
                Ok(Outbound::Echo(text)) => Some(text),
                Ok(_) => None,
                Err(_) => String::from_utf8(payload).ok(),
            },
            _ => None,
        })
        .collect()
}

/// A fresh honest connection and session every `every`: connect + open time per phase.
async fn probe_connects(
    gateway: SocketAddr,
    canister: Principal,
    every: Duration,
    record: Arc<Record>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let p = record.phase();
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            Session::open_from(gateway, honest_source(), canister),
        )
        .await;
        match r {
            Ok(Ok(s)) => {
                Record::push(&record.connect_us, p, started.elapsed().as_micros() as u64);
                drop(s);
            }
            _ => {
                record.connect_failed[p].fetch_add(1, Relaxed);
            }
        }
    }
}

/// The close code of a WebSocket message, if it is a close.
fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(c)) => Some(u16::from(c.code)),
        Message::Close(None) => Some(1005),
        _ => None,
    }
}

/// Reads (discarding) until the gateway's close; its code, or 1006 without one.
async fn read_close<S>(rx: &mut S, within: Duration) -> u16
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let read = async {
        while let Some(Ok(m)) = rx.next().await {
            if let Some(code) = close_code(&m) {
                return code;
            }
        }
        1006
    };
    tokio::time::timeout(within, read).await.unwrap_or(1006)
}

/// Pauses after a refused attempt (the gateway's connect rate limit answers fast).
const RETRY: Duration = Duration::from_millis(100);

async fn ping_flood(
    gateway: SocketAddr,
    src: IpAddr,
    attack: Arc<AttackStats>,
    mut stop: watch::Receiver<bool>,
) {
    let ping = Message::Ping(vec![0x70; 125].into());
    while !*stop.borrow() {
        let mut ws = match client::connect(gateway, Some(src)).await {
            Ok((ws, _)) => ws,
            Err(_) => {
                attack.refused.fetch_add(1, Relaxed);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        attack.established();
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
                    attack.open_now.fetch_sub(1, Relaxed);
                    return;
                }
                r = ws.send(ping.clone()) => {
                    if r.is_err() {
                        break;
                    }
                    attack.sent_bytes.fetch_add(131, Relaxed);
                }
            }
        }
        // Closed by the gateway: now read what it sent (its pongs, then the close).
        attack.ended(read_close(&mut ws, Duration::from_secs(2)).await);
    }
}

async fn big_frames(
    gateway: SocketAddr,
    src: IpAddr,
    canister: Principal,
    size: u64,
    attack: Arc<AttackStats>,
    mut stop: watch::Receiver<bool>,
) {
    // A masked binary frame header announcing `size` bytes (RFC 6455: 127, then 8 bytes).
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.resize(
        frame
            .len()
            .saturating_add(usize::try_from(size).unwrap_or(0).saturating_sub(1)),
        0x5a,
    );
    while !*stop.borrow() {
        // A real session first: before an open the gateway refuses any frame over
        // --max-open-frame-size (1009) without reserving it.
        let mut ws = match Session::open_from(gateway, src, canister).await {
            Ok(s) => s.into_parts().0,
            Err(_) => {
                attack.refused.fetch_add(1, Relaxed);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        attack.established();
        // Under the WebSocket layer: tungstenite (the client side) has nothing buffered.
        let sent = ws.get_mut().write_all(&frame).await.is_ok();
        if sent {
            attack.sent_bytes.fetch_add(frame.len() as u64, Relaxed);
        }
        tokio::select! {
            _ = stopped(&mut stop) => {
                attack.open_now.fetch_sub(1, Relaxed);
                return;
            }
            code = read_close(&mut ws, Duration::MAX) => attack.ended(code),
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn relay_flood(
    gateway: SocketAddr,
    src: IpAddr,
    canister: Principal,
    payload: Vec<u8>,
    signed: bool,
    attack: Arc<AttackStats>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let session = match Session::open_from(gateway, src, canister).await {
            Ok(s) => s,
            Err(_) => {
                attack.refused.fetch_add(1, Relaxed);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        attack.established();
        let (ws, mut signer) = session.into_parts();
        let (mut tx, mut rx) = ws.split();
        // The reader drains what the gateway sends (message errors, the close).
        let mut reader = tokio::spawn(async move { read_close(&mut rx, Duration::MAX).await });
        let code = loop {
            let frame = match signer.app_frame(payload.clone(), signed) {
                Ok(f) => f,
                Err(_) => break 0,
            };
            let size = frame.len() as u64;
            tokio::select! {
                _ = stopped(&mut stop) => {
                    reader.abort();
                    attack.open_now.fetch_sub(1, Relaxed);
                    return;
                }
                code = &mut reader => break code.unwrap_or(1006),
                r = tx.send(Message::Binary(frame.into())) => {
                    if r.is_err() {
                        break tokio::time::timeout(Duration::from_secs(2), &mut reader)
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or(1006);
                    }
                    attack.sent_bytes.fetch_add(size, Relaxed);
                }
            }
        };
        reader.abort();
        attack.ended(code);
    }
}

async fn hold_session(
    gateway: SocketAddr,
    src: IpAddr,
    canister: Principal,
    attack: Arc<AttackStats>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let mut session = match Session::open_from(gateway, src, canister).await {
            Ok(s) => s,
            Err(_) => {
                attack.refused.fetch_add(1, Relaxed);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        attack.established();
        tokio::select! {
            _ = stopped(&mut stop) => {
                attack.open_now.fetch_sub(1, Relaxed);
                return;
            }
            code = read_close(&mut session.ws, Duration::MAX) => attack.ended(code),
        }
    }
}

/// `hold`: connect and send nothing; `slowloris`: send an upgrade request one header line per
/// second. Either way, wait for the gateway to close the socket, then connect again.
async fn tcp_attacker(
    gateway: SocketAddr,
    src: IpAddr,
    slow: bool,
    attack: Arc<AttackStats>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let connected = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(src, 0))?;
            socket.connect(gateway).await
        };
        let mut tcp = match connected.await {
            Ok(t) => t,
            Err(_) => {
                attack.refused.fetch_add(1, Relaxed);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        attack.established();
        let mut buf = [0u8; 256];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut line = 0u64;
        let ended = loop {
            tokio::select! {
                _ = stopped(&mut stop) => break false,
                r = tcp.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break true,
                    // A refusal answers the handshake; wait for the socket to close.
                    Ok(_) => {}
                },
                _ = tick.tick(), if slow => {
                    let text = if line == 0 {
                        format!("GET / HTTP/1.1\r\nHost: {gateway}\r\n")
                    } else {
                        format!("X-Slow-{line}: 1\r\n")
                    };
                    line += 1;
                    if tcp.write_all(text.as_bytes()).await.is_err() {
                        break true;
                    }
                    attack.sent_bytes.fetch_add(text.len() as u64, Relaxed);
                }
            }
        };
        if !ended {
            attack.open_now.fetch_sub(1, Relaxed);
            return;
        }
        attack.ended(0);
        tokio::time::sleep(RETRY).await;
    }
}
