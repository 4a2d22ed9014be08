//! The gateway library in front of the in-memory fake canister, as a separate process, to
//! measure the gateway alone (no replica competing for the CPU): every `--tick-ms`, the fake
//! canister queues `--per-tick` messages of `--size` bytes for every open session, and the
//! gateway polls, cuts witnesses and delivers them as it would from a real canister.
//!
//! The fake canister's own work (encoding content, hashing leaves, building the reply tree)
//! runs in this process too, so the CPU figure is an upper bound of the gateway's.
//!
//! Usage: `ic-ws-bench-gateway --tick-ms 100 --per-tick 10 --size 64 -- <gateway flags>`
//! (the gateway flags are those of `ic-ws-gateway`; `--canister` is required as usual).

use ic_ws_gateway::fake::FakeCanister;
use ic_ws_gateway::{Config, Gateway};
use std::time::Duration;

struct Args {
    tick: Duration,
    per_tick: usize,
    size: usize,
    gateway: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        tick: Duration::from_millis(100),
        per_tick: 1,
        size: 64,
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
            "--" => {
                args.gateway.extend(it.by_ref());
                break;
            }
            other => return Err(format!("unknown flag {other} (gateway flags go after --)")),
        }
    }
    Ok(args)
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
    rt.block_on(async move {
        let fake = FakeCanister::new();
        fake.state().compact_log = true;
        let ready = config.ready_file.clone();
        let gw = match Gateway::start(
            config,
            fake.clone(),
            candid::Principal::self_authenticating(b"bench gateway"),
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
        // The "app": candid of the test app's `Outbound::Bytes`, so clients decode it as usual.
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
        let producer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(args.tick);
            loop {
                tick.tick().await;
                for client in fake.clients() {
                    for _ in 0..args.per_tick {
                        fake.send(client, &payload);
                    }
                }
                // Keep the log from growing without bound: the gateway has read it.
                fake.state().log.shrink_to_fit();
            }
        });
        let _ = tokio::signal::ctrl_c().await;
        producer.abort();
        gw.shutdown().await;
        std::process::ExitCode::SUCCESS
    })
}
