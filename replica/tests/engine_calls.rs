//! Engine tests with several canisters and the clock: inter-canister calls and their reject
//! paths, callbacks that trap, timers (which run through self-calls).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use std::time::Duration;

use candid::Principal;
use engine_common::*;
use ic_ws_replica::engine::{canister_id_from_index, RejectCode};

#[test]
fn a_canister_calls_another_and_gets_the_reply() {
    let mut e = engine();
    let a = install(&mut e, None);
    let b = install(&mut e, None);
    let (r,): (Result<u64, String>,) =
        update(&mut e, a, "call_put", (b, 10u64, "ten".to_string())).unwrap();
    assert_eq!(r, Ok(2), "b's put answered through a's reply callback");
    let (v,): (Option<String>,) = query(&mut e, b, "get", (10u64,)).unwrap();
    assert_eq!(v.as_deref(), Some("ten"));
    let (v,): (Option<String>,) = query(&mut e, a, "get", (10u64,)).unwrap();
    assert_eq!(
        v, None,
        "the caller's own state was not touched by the callee"
    );
    // Calls to itself work the same way.
    let (r,): (Result<u64, String>,) =
        update(&mut e, a, "call_put", (a, 11u64, "self".to_string())).unwrap();
    assert_eq!(r, Ok(2));
}

#[test]
fn reject_paths_reach_the_caller_with_their_codes() {
    let mut e = engine();
    let a = install(&mut e, None);
    let b = install(&mut e, None);
    let call = |e: &mut ic_ws_replica::engine::Engine, target: Principal, method: &str| {
        let (r,): (Result<Vec<u8>, (u32, String)>,) =
            update(e, a, "call_raw", (target, method.to_string())).unwrap();
        r.unwrap_err()
    };
    let (code, message) = call(&mut e, b, "boom");
    assert_eq!(code, RejectCode::CanisterError as u32);
    assert!(message.contains("boom"), "{message}");
    let (code, message) = call(&mut e, b, "reject_me");
    assert_eq!(
        (code, message.as_str()),
        (RejectCode::CanisterReject as u32, "rejected on purpose")
    );
    let (code, message) = call(&mut e, b, "missing");
    assert_eq!(code, RejectCode::CanisterError as u32);
    assert!(
        message.contains("has no update method 'missing'"),
        "{message}"
    );
    let (code, message) = call(&mut e, canister_id_from_index(999), "put");
    assert_eq!(code, RejectCode::DestinationInvalid as u32);
    assert!(message.contains("not found"), "{message}");
    assert_eq!(
        state(&mut e, a).counter,
        4,
        "every call_raw committed its own work"
    );
}

#[test]
fn a_trapping_callback_is_rolled_back_but_the_callee_keeps_its_change() {
    let mut e = engine();
    let a = install(&mut e, None);
    let b = install(&mut e, None);
    let before = state(&mut e, a);
    let err =
        update::<_, ()>(&mut e, a, "call_then_trap", (b, 3u64, "three".to_string())).unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0503"), "{err}");
    assert!(err.message.contains("trapping in the callback"), "{err}");
    assert_eq!(
        state(&mut e, a).counter,
        before.counter,
        "callback changes rolled back"
    );
    let (v,): (Option<String>,) = query(&mut e, b, "get", (3u64,)).unwrap();
    assert_eq!(
        v.as_deref(),
        Some("three"),
        "the callee's committed change stays"
    );
    // The caller still works (the cleanup callback freed ic-cdk's call state).
    let (r,): (Result<u64, String>,) =
        update(&mut e, a, "call_put", (b, 4u64, "four".to_string())).unwrap();
    assert_eq!(r, Ok(3));
}

#[test]
fn interval_timer_fires_through_self_calls_when_time_advances() {
    let mut e = engine();
    let id = install(&mut e, None);
    update::<_, ()>(&mut e, id, "start_interval", (1u64,)).unwrap();
    let armed = e
        .global_timer(id)
        .expect("ic-cdk-timers armed the global timer");
    assert_eq!(armed, START_NS + 1_000_000_000);
    assert_eq!(e.next_timer_ns(), Some(armed));

    e.tick();
    assert_eq!(state(&mut e, id).ticks, 0, "not due yet");
    e.advance_time(Duration::from_millis(1_500));
    e.tick();
    assert_eq!(state(&mut e, id).ticks, 1);
    e.advance_time(Duration::from_secs(1));
    e.tick();
    assert_eq!(state(&mut e, id).ticks, 2);
    assert!(
        e.global_timer(id).unwrap() > e.time_ns(),
        "re-armed for the next interval"
    );
}

#[test]
fn one_shot_timers_run_once_in_deadline_order() {
    let mut e = engine();
    let id = install(&mut e, None);
    update::<_, ()>(&mut e, id, "start_timer", (5u64, 1u64, "later".to_string())).unwrap();
    update::<_, ()>(
        &mut e,
        id,
        "start_timer",
        (2u64, 2u64, "sooner".to_string()),
    )
    .unwrap();
    e.advance_time(Duration::from_secs(3));
    e.tick();
    let (sooner,): (Option<String>,) = query(&mut e, id, "get", (1_000_002u64,)).unwrap();
    let (later,): (Option<String>,) = query(&mut e, id, "get", (1_000_001u64,)).unwrap();
    assert_eq!((sooner.as_deref(), later), (Some("sooner"), None));
    e.advance_time(Duration::from_secs(3));
    e.tick();
    let (later,): (Option<String>,) = query(&mut e, id, "get", (1_000_001u64,)).unwrap();
    assert_eq!(later.as_deref(), Some("later"));
    assert_eq!(e.global_timer(id), None, "nothing left to run");
}

#[test]
fn the_timer_executor_refuses_outside_callers() {
    let mut e = engine();
    let id = install(&mut e, None);
    let err = e
        .update(
            id,
            "<ic-cdk internal> timer_executor",
            &1u64.to_be_bytes(),
            user(),
        )
        .unwrap_err();
    assert_eq!(err.code, RejectCode::CanisterError, "{err}");
}

#[test]
fn time_is_constant_within_a_message_and_follows_the_clock() {
    let mut e = engine();
    let id = install(&mut e, None);
    let (t1,): (u64,) = query(&mut e, id, "now", ()).unwrap();
    e.advance_time(Duration::from_secs(10));
    let (t2,): (u64,) = query(&mut e, id, "now", ()).unwrap();
    assert_eq!(t2 - t1, 10_000_000_000);
    e.set_time_ns(START_NS + 42);
    let (t3,): (u64,) = query(&mut e, id, "now", ()).unwrap();
    assert_eq!(t3, START_NS + 42);
}
