//! Engine tests of instruction counting: the engine counts the canister's own wasm operators
//! with the IC's weights and system-call charges (`engine::costs`), not the code its
//! instrumentation injects, charges loops per iteration, stops at the limit exactly, and rolls
//! back what a message that hit it did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use candid::Principal;
use engine_common::{config, controller, user};
use ic_ws_replica::engine::{Engine, EngineConfig, InstallMode, RejectCode};

/// `$stores` and `$loads` run K iterations of loops with the same cost per iteration;
/// `$stores` writes the heap twice per iteration (each store gets ~8 injected operators for
/// dirty-page tracking), `$loads` only reads it. With the IC's weights: function entry 1; per
/// iteration the loop header `local.get local.get i32.ge_u br_if` (1 + 1 + 1 + 2) and the body
/// (10 operators of weight 1 and a `br` of 2); the last header check adds 5: 17 K + 6
/// instructions, whatever the body does.
const CANISTER: &str = r#"
  (module
    (import "ic0" "msg_reply" (func $reply))
    (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
    (import "ic0" "performance_counter" (func $perf (param i32) (result i64)))
    (memory 1)
    (func $stores (param $k i32) (local $i i32)
      (block $done
        (loop $top
          (br_if $done (i32.ge_u (local.get $i) (local.get $k)))
          (i32.store (local.get $i) (local.get $i))
          (i32.store offset=8192 (i32.const 0) (local.get $i))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $top))))
    (func $loads (param $k i32) (local $i i32)
      (block $done
        (loop $top
          (br_if $done (i32.ge_u (local.get $i) (local.get $k)))
          (drop (i32.load (local.get $i)))
          (drop (i32.load offset=8192 (i32.const 0)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $top))))
    ;; Entry 1, `i32.const` 1, `call` 5, `call $reply` 5 + its overhead 500, + 17,006.
    ;; = 17,518 instructions each.
    (func (export "canister_update stores") (call $stores (i32.const 1000)) (call $reply))
    (func (export "canister_update loads") (call $loads (i32.const 1000)) (call $reply))
    ;; Replies with performance_counter(0) before and after 1,000 iterations of `$loads`.
    ;; The function's straight-line code (1,435 instructions: 12 operators, four calls of 5,
    ;; two `performance_counter` overheads of 200, `msg_reply_data_append` and `msg_reply`
    ;; overheads of 500) is charged on entry.
    (func (export "canister_update counter")
      (i64.store (i32.const 0) (call $perf (i32.const 0)))
      (call $loads (i32.const 1000))
      (i64.store (i32.const 8) (call $perf (i32.const 0)))
      (call $append (i32.const 0) (i32.const 16))
      (call $reply))
    (func (export "canister_update write")
      (i32.store (i32.const 60000) (i32.const 5)) (call $reply))
    (func (export "canister_update write_then_spin")
      (i32.store (i32.const 60000) (i32.const 7)) (loop (br 0)))
    (func (export "canister_query write_then_spin_query")
      (i32.store (i32.const 60000) (i32.const 9)) (loop (br 0)))
    (func (export "canister_query read")
      (call $append (i32.const 60000) (i32.const 4)) (call $reply))
    ;; 512 instructions: entry 1, `call` 5 + 500, `block i32.const br_if` (0 + 1 + 2; checked
    ;; on entry), then `nop nop nop` (3) after the block, a segment without a check of its own.
    (func (export "canister_update tail")
      (call $reply)
      (block (br_if 0 (i32.const 1)))
      (nop) (nop) (nop)))"#;

const STORES: u64 = 17_518;

fn engine_with(update_limit: u64, query_limit: u64) -> Engine {
    Engine::new(EngineConfig {
        update_instruction_limit: update_limit,
        install_instruction_limit: update_limit,
        query_instruction_limit: query_limit,
        ..config()
    })
}

fn install(e: &mut Engine, src: &str) -> Principal {
    let id = e.create_canister(vec![controller()]);
    let wasm = wat::parse_str(src).unwrap();
    e.install(id, &wasm, &[], InstallMode::Install, controller())
        .unwrap();
    id
}

fn read(e: &mut Engine, id: Principal) -> u32 {
    let bytes = e.query(id, "read", &[], user(), None).unwrap();
    u32::from_le_bytes(bytes.try_into().unwrap())
}

#[test]
fn the_count_is_the_canisters_own_operators_whatever_it_stores() {
    let mut e = engine_with(40_000_000_000, 5_000_000_000);
    let id = install(&mut e, CANISTER);
    e.update(id, "stores", &[], user()).unwrap();
    assert_eq!(e.last_instructions(), STORES, "store-heavy loop");
    e.update(id, "loads", &[], user()).unwrap();
    assert_eq!(
        e.last_instructions(),
        STORES,
        "store-free loop of the same operators"
    );
    e.update(id, "stores", &[], user()).unwrap();
    assert_eq!(e.last_instructions(), STORES, "repeatable");
}

#[test]
fn the_performance_counter_grows_by_exactly_the_work_done_in_between() {
    let mut e = engine_with(40_000_000_000, 5_000_000_000);
    let id = install(&mut e, CANISTER);
    let reply = e.update(id, "counter", &[], user()).unwrap();
    let before = u64::from_le_bytes(reply[..8].try_into().unwrap());
    let after = u64::from_le_bytes(reply[8..].try_into().unwrap());
    assert_eq!(before, 1_435, "the entry segment is charged on entry");
    assert_eq!(after - before, 17 * 1000 + 6, "the loop in between");
    // The message's total adds the 16 transmitted reply bytes: 50 each.
    assert_eq!(e.last_instructions(), after + 16 * 50);
}

#[test]
fn the_limit_is_exact() {
    let mut e = engine_with(STORES, STORES);
    let id = install(&mut e, CANISTER);
    e.update(id, "stores", &[], user()).unwrap();
    assert_eq!(e.last_instructions(), STORES, "exactly the limit is enough");

    let mut e = engine_with(STORES - 1, STORES);
    let id = install(&mut e, CANISTER);
    let err = e.update(id, "stores", &[], user()).unwrap_err();
    assert_eq!(
        (err.code, err.error_code.as_deref()),
        (RejectCode::CanisterError, Some("IC0522")),
        "{err}"
    );
    assert!(
        err.message
            .contains(&format!("limit of {} instructions", STORES - 1)),
        "{err}"
    );
    assert_eq!(e.last_instructions(), STORES - 1);
}

#[test]
fn an_infinite_loop_hits_the_limit_and_is_rolled_back_and_nothing_leaks() {
    let mut e = engine_with(1_000_000, 500_000);
    let id = install(&mut e, CANISTER);
    e.update(id, "write", &[], user()).unwrap();
    assert_eq!(read(&mut e, id), 5);

    let err = e.update(id, "write_then_spin", &[], user()).unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0522"), "{err}");
    assert!(err.message.contains("1000000"), "{err}");
    assert_eq!(e.last_instructions(), 1_000_000);
    assert_eq!(
        read(&mut e, id),
        5,
        "the store before the loop is rolled back"
    );

    let err = e
        .query(id, "write_then_spin_query", &[], user(), None)
        .unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0522"), "{err}");
    assert!(
        err.message.contains("500000"),
        "queries have their own limit: {err}"
    );
    assert_eq!(read(&mut e, id), 5);

    // The exhausted counter of the query and of the trapped update does not carry over.
    e.update(id, "stores", &[], user()).unwrap();
    assert_eq!(e.last_instructions(), STORES);
}

#[test]
fn the_start_function_is_counted_and_limited() {
    let mut e = engine_with(1_000_000, 1_000_000);
    // `i32.const 60000 i32.const 3 i32.store` = 3 instructions in the start function.
    let id = install(
        &mut e,
        r#"(module
          (import "ic0" "msg_reply" (func $reply))
          (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
          (memory 1)
          (func $start (i32.store (i32.const 60000) (i32.const 3)))
          (start $start)
          (func (export "canister_query read")
            (call $append (i32.const 60000) (i32.const 4)) (call $reply)))"#,
    );
    assert_eq!(read(&mut e, id), 3, "the start function ran at install");

    let spinning = e.create_canister(vec![controller()]);
    let wasm = wat::parse_str(
        r#"(module (memory 1) (func $start (loop (br 0))) (start $start)
             (func (export "canister_update f")))"#,
    )
    .unwrap();
    let err = e
        .install(spinning, &wasm, &[], InstallMode::Install, controller())
        .unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0522"), "{err}");
    assert!(
        e.module_hash(spinning).is_none(),
        "the failed install left the canister empty"
    );
}

#[test]
fn exceeding_the_limit_in_the_last_instructions_of_a_message_still_fails() {
    let mut e = engine_with(512, 512);
    let id = install(&mut e, CANISTER);
    e.update(id, "tail", &[], user()).unwrap();
    assert_eq!(e.last_instructions(), 512);

    let mut e = engine_with(511, 511);
    let id = install(&mut e, CANISTER);
    let err = e.update(id, "tail", &[], user()).unwrap_err();
    assert_eq!(
        err.error_code.as_deref(),
        Some("IC0522"),
        "the reply made before the overrun is dropped: {err}"
    );
    assert_eq!(e.last_instructions(), 511);
}

/// pre_upgrade and post_upgrade run `$loads` K times each (17 K + 6 instructions per call, plus
/// the hook's entry 1, `i32.const` 1 and `call` 5), 17,013 instructions each.
const UPGRADABLE: &str = r#"
  (module
    (memory 1)
    (func $loads (param $k i32) (local $i i32)
      (block $done
        (loop $top
          (br_if $done (i32.ge_u (local.get $i) (local.get $k)))
          (drop (i32.load (local.get $i)))
          (drop (i32.load offset=8192 (i32.const 0)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $top))))
    (func (export "canister_pre_upgrade") (call $loads (i32.const 1000)))
    (func (export "canister_post_upgrade") (call $loads (i32.const 1000)))
    (func (export "canister_update f")))"#;
const HOOK: u64 = 17_013;

#[test]
fn an_upgrade_has_one_budget_for_pre_and_post_upgrade_and_the_default_is_the_ics() {
    assert_eq!(
        EngineConfig::default().install_instruction_limit,
        300_000_000_000
    );
    let upgrade = |install_limit: u64| {
        let mut e = Engine::new(EngineConfig {
            // Far below what either hook needs: installs are not limited by it.
            update_instruction_limit: 1_000,
            install_instruction_limit: install_limit,
            ..config()
        });
        let id = install(&mut e, UPGRADABLE);
        let wasm = wat::parse_str(UPGRADABLE).unwrap();
        let r = e.install(id, &wasm, &[], InstallMode::Upgrade, controller());
        (r, e.last_instructions())
    };
    // Exactly both hooks: the upgrade succeeds and reports their sum.
    let (r, used) = upgrade(2 * HOOK);
    r.unwrap();
    assert_eq!(used, 2 * HOOK);
    // One less: each hook alone would fit, together they do not (post_upgrade fails).
    let (r, _) = upgrade(2 * HOOK - 1);
    let err = r.unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0522"), "{err}");
    assert!(
        err.message
            .contains(&format!("limit of {} instructions", 2 * HOOK - 1)),
        "the whole install_code limit is reported: {err}"
    );
}
