//! Engine throughput and rollback cost, measured through the public `Engine` API.
//!
//! Run: `cargo bench -p ic-ws-replica --bench engine` (release build; `-- --quick` for fewer
//! iterations). Builds the test canister through `wasm_build`, then measures:
//! - compiling a canister (cold) and installing it again (module cache hit);
//! - update calls per second (`put`: stable-map insert + certified_data_set);
//! - queries per second (`get`);
//! - the cost of a query, and of an update, on a canister whose heap holds 1 MB vs 50 MB of
//!   data: with page-level rollback they should be the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use candid::Principal;
use ic_ws_replica::engine::{Clock, Engine, EngineConfig, InstallMode};

const PACKAGE: &str = "ic-ws-replica-test-canister";

fn controller() -> Principal {
    Principal::from_slice(&[0xC0; 29])
}

fn install(engine: &mut Engine, wasm: &[u8]) -> Principal {
    let id = engine.create_canister(vec![controller()]);
    engine
        .install(
            id,
            wasm,
            &candid::encode_one(None::<String>).unwrap(),
            InstallMode::Install,
            controller(),
        )
        .expect("install");
    id
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn micros(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn time<F: FnMut(usize)>(n: usize, mut f: F) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        f(i);
    }
    start.elapsed()
}

/// Runs `f` `n` times in batches of [`BATCH`]; returns the total time and the time per call
/// of the fastest batch. On a shared machine the mean moves with other processes' load; the
/// fastest batch is what the code costs when it gets a core to itself, so it is the figure to
/// compare between builds.
fn time_batches<F: FnMut(usize)>(n: usize, mut f: F) -> (Duration, f64) {
    let mut total = Duration::ZERO;
    let mut best = f64::INFINITY;
    let mut i = 0;
    while i < n {
        let len = BATCH.min(n - i);
        let d = time(len, |j| f(i + j));
        best = best.min(micros(d, len));
        total += d;
        i += len;
    }
    (total, best)
}

/// Calls per batch of [`time_batches`].
const BATCH: usize = 100;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 300 } else { 3_000 };
    let wasm =
        ic_ws_replica::wasm_build::build_canister_wasm(PACKAGE).expect("build the test canister");
    println!("test canister: {} bytes of wasm", wasm.len());

    let config = EngineConfig {
        clock: Clock::Manual {
            now_ns: 1_767_225_600_000_000_000,
        },
        ..Default::default()
    };
    let mut engine = Engine::new(config.clone());
    let start = Instant::now();
    let id = install(&mut engine, &wasm);
    println!(
        "install, cold (instrument + compile + init): {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let start = Instant::now();
    let mut other = Engine::new(config);
    install(&mut other, &wasm);
    println!(
        "install, module cached (new engine):         {:.2} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    let user = Principal::from_slice(&[5; 29]);
    let put = |engine: &mut Engine, id: Principal, k: u64| {
        let arg = candid::encode_args((k, format!("value {k}"))).unwrap();
        engine.update(id, "put", &arg, user).expect("put");
    };
    let get = |engine: &mut Engine, id: Principal, k: u64| {
        let arg = candid::encode_args((k,)).unwrap();
        engine.query(id, "get", &arg, user, None).expect("get");
    };

    // Warm-up.
    for k in 0..100 {
        put(&mut engine, id, k);
        get(&mut engine, id, k);
    }
    let (d, best) = time_batches(n, |i| put(&mut engine, id, 1_000 + i as u64));
    println!(
        "updates (put):  {:>8.0} /s  ({:.1} us each, fastest batch {:.1} us, {} instructions each)",
        per_second(n, d),
        micros(d, n),
        best,
        engine.last_instructions()
    );
    let (d, best) = time_batches(n, |i| get(&mut engine, id, 1_000 + i as u64));
    println!(
        "queries (get):  {:>8.0} /s  ({:.1} us each, fastest batch {:.1} us, {} instructions each)",
        per_second(n, d),
        micros(d, n),
        best,
        engine.last_instructions()
    );

    // What a snapshot-per-message design would pay on a 50 MB heap: one full copy (and a
    // second one to restore).
    let heap = vec![0xABu8; 51 * 1024 * 1024];
    let copies = 20;
    let d = time(copies, |_| {
        std::hint::black_box(heap.clone());
    });
    println!(
        "reference: one full copy of a 51 MiB heap: {:.0} us",
        micros(d, copies)
    );
    drop(heap);

    // Same canister code, 1 MB vs 50 MB of heap data.
    for mib in [1u32, 50] {
        let mut engine = Engine::new(EngineConfig::default());
        let id = install(&mut engine, &wasm);
        engine
            .update(id, "grow_heap", &candid::encode_args((mib,)).unwrap(), user)
            .expect("grow_heap");
        for k in 0..100 {
            put(&mut engine, id, k);
        }
        let heap = engine.heap_size(id).unwrap_or(0);
        let dq = time(n, |i| get(&mut engine, id, (i % 100) as u64));
        let du = time(n, |i| put(&mut engine, id, 10_000 + i as u64));
        let state_arg = candid::encode_args(()).unwrap();
        let ds = time(n, |_| {
            engine
                .query(id, "state", &state_arg, user, None)
                .expect("state");
        });
        println!(
            "heap {:>3} MB ({:>3} MiB wasm heap): query get {:>6.1} us, query state {:>6.1} us, update put {:>6.1} us",
            mib,
            heap / (1024 * 1024),
            micros(dq, n),
            micros(ds, n),
            micros(du, n)
        );
    }
}
