//! Engine tests of the instruction limit, the performance counter and large heaps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use engine_common::*;
use ic_ws_replica::engine::{Engine, EngineConfig, RejectCode};

/// Small limits keep the infinite loops short (fuel is spent at roughly 1e9 per second).
fn limited_engine() -> Engine {
    Engine::new(EngineConfig {
        update_instruction_limit: 300_000_000,
        query_instruction_limit: 100_000_000,
        ..config()
    })
}

#[test]
fn an_infinite_loop_is_stopped_and_rolled_back_and_the_canister_stays_usable() {
    let mut e = limited_engine();
    let id = install(&mut e, None);
    update::<_, (u64,)>(&mut e, id, "put", (1u64, "one".to_string())).unwrap();
    let before = snapshot(&mut e, id);

    let err = update::<_, (u64,)>(&mut e, id, "spin", ()).unwrap_err();
    assert_eq!(
        (err.code, err.error_code.as_deref()),
        (RejectCode::CanisterError, Some("IC0522")),
        "{err}"
    );
    assert!(
        err.message
            .contains("exceeded the limit of 300000000 instructions"),
        "{err}"
    );
    assert!(e.last_instructions() >= 300_000_000);
    assert_eq!(
        snapshot(&mut e, id),
        before,
        "the writes made before the loop are gone"
    );

    let err = query::<_, (u64,)>(&mut e, id, "spin_query", ()).unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0522"), "{err}");
    assert!(
        err.message.contains("100000000"),
        "queries have their own limit: {err}"
    );

    let (len,): (u64,) = update(&mut e, id, "put", (2u64, "two".to_string())).unwrap();
    assert_eq!(len, 3);
}

#[test]
fn the_performance_counter_counts_the_work_done() {
    let mut e = engine();
    let id = install(&mut e, None);
    let (b1, a1): (u64, u64) = update(&mut e, id, "instructions", (1_000u64,)).unwrap();
    let (b2, a2): (u64, u64) = update(&mut e, id, "instructions", (100_000u64,)).unwrap();
    assert!(b1 > 0 && a1 > b1, "counter runs: {b1} -> {a1}");
    let (small, large) = (a1 - b1, a2 - b2);
    assert!(
        large > 50 * small,
        "100x the iterations cost much more: {small} vs {large}"
    );
    assert!(
        e.last_instructions() >= a2,
        "the engine reports at least what the canister saw"
    );
    let (bq, aq): (u64, u64) = query(&mut e, id, "instructions_query", (100_000u64,)).unwrap();
    assert!(aq - bq > 50 * small, "queries count too");
}

#[test]
fn rollback_is_exact_on_a_large_heap() {
    let mut e = engine();
    let id = install(&mut e, None);
    let (heap,): (u64,) = update(&mut e, id, "grow_heap", (50u32,)).unwrap();
    assert!(heap >= 50 * 1024 * 1024);
    assert_eq!(e.heap_size(id), Some(heap));
    let (sum_before,): (u64,) = query(&mut e, id, "heap_checksum", ()).unwrap();
    let before = snapshot(&mut e, id);
    for _ in 0..3 {
        query::<_, (State,)>(&mut e, id, "mutate_in_query", (5u64, "x".to_string())).unwrap();
        update::<_, ()>(&mut e, id, "put_then_trap", (6u64, "y".to_string(), id)).unwrap_err();
    }
    assert_eq!(snapshot(&mut e, id), before);
    let (sum_after,): (u64,) = query(&mut e, id, "heap_checksum", ()).unwrap();
    assert_eq!(sum_after, sum_before);
}
