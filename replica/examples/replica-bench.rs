//! Load generator for the replica: updates/s and queries/s through the HTTP interface with the
//! real ic-agent (verification on), sequential and with N concurrent callers, and through the
//! Rust API for comparison.
//!
//! ```text
//! cargo run --release -p ic-ws-replica --example replica-bench -- [--seconds 5] [--concurrency 16]
//! ```
//!
//! Uses the replica's test canister (`ic-ws-replica-test-canister`, built on first run).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candid::{Encode, Principal};
use ic_agent::identity::BasicIdentity;
use ic_agent::Agent;
use ic_ws_replica::{Replica, ReplicaConfig};

/// The test canister's `put` (stable map insert + certified data) and `get` query.
const UPDATE_METHOD: &str = "put";
const QUERY_METHOD: &str = "get";

fn update_arg() -> Vec<u8> {
    Encode!(&1u64, &"bench".to_string()).unwrap()
}

fn query_arg() -> Vec<u8> {
    Encode!(&1u64).unwrap()
}

struct Options {
    seconds: u64,
    concurrency: usize,
}

fn parse_options() -> Options {
    let mut options = Options {
        seconds: 5,
        concurrency: 16,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), value) {
            ("--seconds", Some(v)) => options.seconds = v,
            ("--concurrency", Some(v)) => options.concurrency = v as usize,
            (other, _) => {
                eprintln!(
                    "usage: replica-bench [--seconds N] [--concurrency N] (unknown: {other})"
                );
                std::process::exit(2);
            }
        }
        i += 2;
    }
    options
}

async fn agent(url: &str, seed: u8) -> Agent {
    let agent = Agent::builder()
        .with_url(url)
        .with_identity(BasicIdentity::from_raw_key(&[seed; 32]))
        .with_max_concurrent_requests(256)
        .build()
        .unwrap();
    agent.fetch_root_key().await.unwrap();
    agent
}

#[derive(Clone, Copy)]
enum Kind {
    Update,
    Query,
}

/// Runs `callers` loops for `duration`; returns completed calls per second.
async fn http_rate(
    url: &str,
    canister: Principal,
    kind: Kind,
    callers: usize,
    duration: Duration,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let agent = agent(url, caller as u8 + 1).await;
        // warm-up: subnet keys fetched, connection open
        agent
            .query(&canister, QUERY_METHOD)
            .with_arg(query_arg())
            .call()
            .await
            .unwrap();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match kind {
                    Kind::Update => {
                        agent
                            .update(&canister, UPDATE_METHOD)
                            .with_arg(update_arg())
                            .call_and_wait()
                            .await
                            .unwrap();
                    }
                    Kind::Query => {
                        agent
                            .query(&canister, QUERY_METHOD)
                            .with_arg(query_arg())
                            .call()
                            .await
                            .unwrap();
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn api_rate(replica: &Replica, canister: Principal, kind: Kind, duration: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        match kind {
            Kind::Update => replica
                .update(
                    canister,
                    UPDATE_METHOD,
                    &update_arg(),
                    Principal::anonymous(),
                )
                .map(drop),
            Kind::Query => replica
                .query(canister, QUERY_METHOD, &query_arg(), Principal::anonymous())
                .map(drop),
        }
        .unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let options = parse_options();
    let duration = Duration::from_secs(options.seconds);
    let wasm =
        ic_ws_replica::wasm_build::build_canister_wasm("ic-ws-replica-test-canister").unwrap();
    let replica = Replica::new(ReplicaConfig::with_seed("bench"));
    let canister = replica
        .create_and_install(&wasm, &Encode!().unwrap())
        .unwrap();
    let server = replica.serve("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = server.url();
    println!(
        "replica-bench: {}s per figure, {} concurrent callers, {} cores, canister methods {UPDATE_METHOD}/{QUERY_METHOD}",
        options.seconds,
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let signatures_before = replica.signatures_made();
    let rows = [
        ("HTTP updates/s, sequential", Kind::Update, 1),
        (
            "HTTP updates/s, concurrent",
            Kind::Update,
            options.concurrency,
        ),
        ("HTTP queries/s, sequential", Kind::Query, 1),
        (
            "HTTP queries/s, concurrent",
            Kind::Query,
            options.concurrency,
        ),
    ];
    for (label, kind, callers) in rows {
        let rate = http_rate(&url, canister, kind, callers, duration).await;
        println!("{label:<32} {rate:>9.0}");
    }
    println!(
        "BLS signatures during the HTTP runs: {}",
        replica.signatures_made() - signatures_before
    );
    let api = replica.clone();
    let (updates, queries) = tokio::task::spawn_blocking(move || {
        (
            api_rate(&api, canister, Kind::Update, duration),
            api_rate(&api, canister, Kind::Query, duration),
        )
    })
    .await
    .unwrap();
    println!("{:<32} {updates:>9.0}", "Rust API updates/s");
    println!("{:<32} {queries:>9.0}", "Rust API queries/s");
    println!(
        "instructions of the last query: {}",
        replica.last_instructions()
    );
}
