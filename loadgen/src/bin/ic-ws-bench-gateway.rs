//! The gateway library in front of the in-memory fake canister, as a separate process, to
//! measure the gateway alone (no replica competing for the CPU): every `--tick-ms`, the fake
//! canister queues `--per-tick` messages of `--size` bytes for every open session, and the
//! gateway polls, cuts witnesses and delivers them as it would from a real canister.
//!
//! The fake canister runs on two threads of its own, both named [`FAKE_THREAD`]: one answers
//! the gateway's calls (building each poll reply's tree, hashing every leaf), the other is the
//! "app" producing messages (encoding content). They stand in for a canister on another
//! machine; `ic-ws-loadgen` reads the process's CPU per thread and reports the gateway's
//! share without theirs.
//!
//! The producer starts once sessions have stopped arriving for 2 s.
//!
//! Usage: `ic-ws-bench-gateway --tick-ms 100 --per-tick 10 --size 64 -- <gateway flags>`: every
//! session gets 10 messages every 100 ms, all at once. With `--period-ms P` (a multiple of the
//! tick), each tick serves the next slice of sessions instead, so that every session gets its
//! `--per-tick` messages once per `P`: `--tick-ms 10 --period-ms 1000 --per-tick 1` gives each
//! session one message a second, spread evenly. The gateway flags are those of
//! `ic-ws-gateway` (`--canister` is required as usual). `--like-test-app` makes the fake answer
//! floods as the test app does (signatures checked, undecodable payloads refused with a
//! certified `DecodeError`, nothing kept): what the attack benchmark's relay floods need.

use candid::Principal;
use ic_ws_gateway::canister::{CallError, CanisterApi};
use ic_ws_gateway::fake::FakeCanister;
use ic_ws_gateway::{Config, Gateway};
use ic_ws_protocol::types::{
    CloseBatch, CloseResult, MessageBatch, MessageResult, OpenBatch, OpenResult, PollRequest,
    PollResult,
};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Name of the thread that runs the fake canister (`ic-ws-loadgen` excludes its CPU time).
const FAKE_THREAD: &str = "fake-canister";

type Reply<T> = oneshot::Sender<Result<T, CallError>>;

/// A call from the gateway to the fake canister's thread.
enum Call {
    Open(Principal, OpenBatch, Reply<Vec<OpenResult>>),
    Message(Principal, MessageBatch, Reply<Vec<MessageResult>>),
    Close(Principal, CloseBatch, Reply<Vec<CloseResult>>),
    Poll(Principal, PollRequest, Reply<PollResult>),
}

/// The gateway's view of the fake canister: every call crosses to [`FAKE_THREAD`].
#[derive(Clone)]
struct Remote(mpsc::UnboundedSender<Call>);

impl Remote {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Call) -> Result<T, CallError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send(make(tx))
            .map_err(|_| CallError::Transient("the fake canister thread ended".into()))?;
        rx.await
            .map_err(|_| CallError::Transient("the fake canister dropped a call".into()))?
    }
}

impl CanisterApi for Remote {
    async fn ws_open(&self, c: Principal, b: &OpenBatch) -> Result<Vec<OpenResult>, CallError> {
        let b = b.clone();
        self.call(|tx| Call::Open(c, b, tx)).await
    }
    async fn ws_message(
        &self,
        c: Principal,
        b: &MessageBatch,
    ) -> Result<Vec<MessageResult>, CallError> {
        let b = b.clone();
        self.call(|tx| Call::Message(c, b, tx)).await
    }
    async fn ws_close(&self, c: Principal, b: &CloseBatch) -> Result<Vec<CloseResult>, CallError> {
        let b = b.clone();
        self.call(|tx| Call::Close(c, b, tx)).await
    }
    async fn ws_poll(&self, c: Principal, r: PollRequest) -> Result<PollResult, CallError> {
        self.call(|tx| Call::Poll(c, r, tx)).await
    }
}

struct Args {
    tick: Duration,
    period: Duration,
    per_tick: usize,
    size: usize,
    like_test_app: bool,
    gateway: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        tick: Duration::from_millis(100),
        period: Duration::ZERO,
        per_tick: 1,
        size: 64,
        like_test_app: false,
        gateway: vec!["ic-ws-gateway".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--tick-ms" => {
                args.tick = Duration::from_millis(
                    value("--tick-ms")?
                        .parse()
                        .map_err(|e| format!("--tick-ms: {e}"))?,
                )
            }
            "--period-ms" => {
                args.period = Duration::from_millis(
                    value("--period-ms")?
                        .parse()
                        .map_err(|e| format!("--period-ms: {e}"))?,
                )
            }
            "--per-tick" => {
                args.per_tick = value("--per-tick")?
                    .parse()
                    .map_err(|e| format!("--per-tick: {e}"))?
            }
            "--size" => {
                args.size = value("--size")?
                    .parse()
                    .map_err(|e| format!("--size: {e}"))?
            }
            "--like-test-app" => args.like_test_app = true,
            "--" => {
                args.gateway.extend(it.by_ref());
                break;
            }
            other => return Err(format!("unknown flag {other} (gateway flags go after --)")),
        }
    }
    Ok(args)
}

/// The "app": every `tick`, queues `per_tick` messages for every open session. A tick that
/// could not be kept is skipped, not made up for in a burst.
fn run_producer(fake: &FakeCanister, args: &Args) {
    // The candid of the test app's `Outbound::Bytes`, so clients decode it as usual.
    #[derive(candid::CandidType)]
    enum Outbound {
        #[allow(dead_code)]
        Echo(String),
        #[allow(dead_code)]
        Text(String),
        Bytes(serde_bytes::ByteBuf),
    }
    let payload = candid::encode_one(Outbound::Bytes(serde_bytes::ByteBuf::from(vec![
        9u8;
        args.size
    ])))
    .unwrap_or_default();
    // Start once sessions have stopped arriving for 2 s (the load generator has opened them
    // all): messages queued while thousands of sessions are still opening would pile up, and
    // the latency figures would then measure that backlog instead of the steady state.
    let (mut seen, mut since) = (0, std::time::Instant::now());
    loop {
        let open = fake.clients().len();
        if open != seen {
            (seen, since) = (open, std::time::Instant::now());
        } else if open > 0 && since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Each tick serves the next slice of sessions (round robin) so that every session gets
    // `per_tick` messages once per `period`: traffic spread over time, as from many
    // independent senders, rather than one burst per period.
    let period = args.period.max(args.tick);
    let ticks_per_period = (period.as_nanos() / args.tick.as_nanos().max(1)).max(1) as usize;
    let mut cursor = 0;
    let mut next = std::time::Instant::now();
    loop {
        let clients = fake.clients();
        if !clients.is_empty() {
            let slice = clients.len().div_ceil(ticks_per_period);
            let chosen: Vec<_> = (0..slice)
                .map(|i| clients[(cursor + i) % clients.len()])
                .collect();
            cursor = (cursor + slice) % clients.len();
            fake.send_to(&chosen, &payload, args.per_tick);
        }
        // Keep the log from growing without bound: the gateway has read it.
        fake.state().log.shrink_to_fit();
        next += args.tick;
        let now = std::time::Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// Answers the gateway's calls on the current (dedicated) thread until every [`Remote`] is
/// dropped.
fn serve_calls(fake: &FakeCanister, mut calls: mpsc::UnboundedReceiver<Call>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("ic-ws-bench-gateway: cannot start the fake canister's runtime");
        return;
    };
    rt.block_on(async move {
        while let Some(call) = calls.recv().await {
            // Replies go to a gateway that may have stopped waiting: nothing to do then.
            match call {
                Call::Open(c, b, tx) => drop(tx.send(fake.ws_open(c, &b).await)),
                Call::Message(c, b, tx) => drop(tx.send(fake.ws_message(c, &b).await)),
                Call::Close(c, b, tx) => drop(tx.send(fake.ws_close(c, &b).await)),
                Call::Poll(c, r, tx) => drop(tx.send(fake.ws_poll(c, r).await)),
            }
        }
    });
}

fn main() -> std::process::ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ic-ws-bench-gateway: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = match Config::from_args(&args.gateway) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ic-ws-bench-gateway: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("ic-ws-bench-gateway: cannot start the runtime");
        return std::process::ExitCode::FAILURE;
    };
    let (calls_tx, calls_rx) = mpsc::unbounded_channel();
    let fake = FakeCanister::new();
    fake.state().compact_log = true;
    fake.state().app_like = args.like_test_app;
    let spawn = |f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(FAKE_THREAD.into())
            .spawn(f)
    };
    let (server_fake, producer_fake) = (fake.clone(), fake);
    let producer_args = Args {
        gateway: Vec::new(),
        ..args
    };
    let threads = spawn(Box::new(move || serve_calls(&server_fake, calls_rx))).and_then(|t| {
        // The producer loops for the life of the process (it ends with it).
        spawn(Box::new(move || {
            run_producer(&producer_fake, &producer_args)
        }))
        .map(|_| t)
    });
    let server = match threads {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ic-ws-bench-gateway: cannot start the fake canister's threads: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        let ready = config.ready_file.clone();
        let gw = match Gateway::start(
            config,
            Remote(calls_tx),
            Principal::self_authenticating(b"bench gateway"),
        )
        .await
        {
            Ok(g) => g,
            Err(e) => {
                eprintln!("ic-ws-bench-gateway: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        if let Some(path) = ready {
            if let Err(e) = ic_ws_gateway::write_ready_file(&path, &gw) {
                eprintln!("ic-ws-bench-gateway: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
        let _ = tokio::signal::ctrl_c().await;
        gw.shutdown().await;
        std::process::ExitCode::SUCCESS
    });
    // The gateway (and with it every `Remote`) is gone: the fake canister's call loop ends.
    drop(rt);
    let _ = server.join();
    code
}
