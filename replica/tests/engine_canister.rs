//! Engine tests on one canister: calls, rollback of traps and queries, system API rules,
//! install modes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod engine_common;

use candid::Principal;
use engine_common::*;
use ic_ws_replica::engine::{InstallMode, MethodKind, RejectCode};

#[test]
fn update_and_query_round_trip_with_candid() {
    let mut e = engine();
    let id = install(&mut e, Some("hi there"));
    let (len,): (u64,) = update(&mut e, id, "put", (7u64, "seven".to_string())).unwrap();
    assert_eq!(len, 2, "init stored key 0, put added key 7");
    let (v,): (Option<String>,) = query(&mut e, id, "get", (7u64,)).unwrap();
    assert_eq!(v.as_deref(), Some("seven"));
    let (g,): (Option<String>,) = query(&mut e, id, "get", (0u64,)).unwrap();
    assert_eq!(g.as_deref(), Some("hi there"), "init received its argument");
    assert_eq!(e.certified_data(id).unwrap(), 2u64.to_be_bytes().to_vec());
    let (who,): (Principal,) = query(&mut e, id, "whoami", ()).unwrap();
    assert_eq!(who, user());
    let (now,): (u64,) = query(&mut e, id, "now", ()).unwrap();
    assert_eq!(now, START_NS);
    let logs = e.drain_logs();
    assert!(
        logs.iter().any(|(c, l)| *c == id && l == "put 7 -> len 2"),
        "debug_print collected: {logs:?}"
    );
    assert!(e.drain_logs().is_empty(), "drain empties the buffer");
}

#[test]
fn a_trap_rolls_back_heap_stable_memory_certified_data_timer_and_calls() {
    let mut e = engine();
    let id = install(&mut e, None);
    let other = install(&mut e, None);
    update::<_, (u64,)>(&mut e, id, "put", (1u64, "one".to_string())).unwrap();
    let before = snapshot(&mut e, id);
    let other_before = snapshot(&mut e, other);

    let err = update::<_, ()>(
        &mut e,
        id,
        "put_then_trap",
        (5u64, "five".to_string(), other),
    )
    .unwrap_err();
    assert_eq!(err.code, RejectCode::CanisterError);
    assert_eq!(err.error_code.as_deref(), Some("IC0503"));
    assert!(
        err.message.contains("put_then_trap: trapping on purpose"),
        "{err}"
    );
    assert!(
        !err.message.contains("wasm backtrace"),
        "root cause only: {err}"
    );

    assert_eq!(
        snapshot(&mut e, id),
        before,
        "heap, stable, certified data, heap size and timer unchanged"
    );
    let (v,): (Option<String>,) = query(&mut e, id, "get", (5u64,)).unwrap();
    assert_eq!(v, None);
    assert_eq!(
        snapshot(&mut e, other),
        other_before,
        "the call made before the trap was dropped"
    );
    // Still usable afterwards, and the heap that was rolled back grows again cleanly.
    let (len,): (u64,) = update(&mut e, id, "put", (2u64, "two".to_string())).unwrap();
    assert_eq!(len, 3);
    assert_eq!(state(&mut e, id).counter, before.state.counter + 1);
}

#[test]
fn a_query_never_changes_state_even_when_it_grows_the_heap() {
    let mut e = engine();
    let id = install(&mut e, None);
    update::<_, (u64,)>(&mut e, id, "put", (1u64, "one".to_string())).unwrap();
    let before = snapshot(&mut e, id);
    for round in 0..3 {
        let (inside,): (State,) = query(
            &mut e,
            id,
            "mutate_in_query",
            (99u64, "scratch".to_string()),
        )
        .unwrap();
        assert_eq!(
            inside.stable_len,
            before.state.stable_len + 1,
            "the query saw its own writes"
        );
        assert_eq!(inside.counter, before.state.counter + 100);
        assert!(
            inside.heap_bytes > before.heap_size,
            "the query grew the heap"
        );
        assert_eq!(
            snapshot(&mut e, id),
            before,
            "round {round}: no trace of the query"
        );
    }
    // Queries called as updates (replicated queries) are discarded too.
    let arg = candid::encode_args((99u64, "scratch".to_string())).unwrap();
    e.update(id, "mutate_in_query", &arg, user()).unwrap();
    assert_eq!(snapshot(&mut e, id), before);
    // Growing for real after rolled-back growth sees zeroed memory and keeps working.
    let (heap,): (u64,) = update(&mut e, id, "grow_heap", (3u32,)).unwrap();
    assert!(heap >= before.heap_size + 3 * 1024 * 1024);
    let (sum,): (u64,) = query(&mut e, id, "heap_checksum", ()).unwrap();
    assert_eq!(
        sum,
        0xAB * (3 * 1024 * 1024 / 4096),
        "the blob holds exactly what grow_heap wrote"
    );
}

#[test]
fn system_api_context_rules_are_enforced() {
    let mut e = engine();
    let id = install(&mut e, None);
    let before = snapshot(&mut e, id);

    let err = query::<_, ()>(&mut e, id, "certify_in_query", ()).unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0504"), "{err}");
    assert!(
        err.message.contains("certified_data_set") && err.message.contains("non replicated query"),
        "{err}"
    );

    let err = update::<_, ()>(&mut e, id, "reply_twice", ()).unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0504"), "{err}");
    assert!(err.message.contains("msg_reply"), "{err}");
    assert_eq!(
        snapshot(&mut e, id),
        before,
        "the counter bump before the second reply is gone"
    );

    let (replicated,): (bool,) = query(&mut e, id, "in_replicated_execution", ()).unwrap();
    assert!(!replicated);
    let bytes = e
        .update(
            id,
            "in_replicated_execution",
            &candid::encode_args(()).unwrap(),
            user(),
        )
        .unwrap();
    assert!(
        candid::decode_one::<bool>(&bytes).unwrap(),
        "a query called as an update is replicated"
    );

    let (cert,): (Option<Vec<u8>>,) = query(&mut e, id, "certificate", ()).unwrap();
    assert_eq!(cert, None);
    let bytes = e
        .query(
            id,
            "certificate",
            &candid::encode_args(()).unwrap(),
            user(),
            Some(b"cert"),
        )
        .unwrap();
    assert_eq!(
        candid::decode_one::<Option<Vec<u8>>>(&bytes)
            .unwrap()
            .as_deref(),
        Some(&b"cert"[..])
    );
}

#[test]
fn rejects_carry_the_ic_codes() {
    let mut e = engine();
    let id = install(&mut e, None);
    let err = update::<_, ()>(&mut e, id, "reject_me", ()).unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (RejectCode::CanisterReject, "rejected on purpose")
    );

    let err = update::<_, ()>(&mut e, id, "no_such_method", ()).unwrap_err();
    assert_eq!(
        (err.code, err.error_code.as_deref()),
        (RejectCode::CanisterError, Some("IC0536"))
    );
    assert!(
        err.message
            .contains("has no update method 'no_such_method'"),
        "{err}"
    );

    let err = query::<_, ()>(&mut e, id, "put", (1u64, "x".to_string())).unwrap_err();
    assert!(err.message.contains("has no query method 'put'"), "{err}");

    let err = update::<_, ()>(&mut e, id, "put", ("not a number",)).unwrap_err();
    assert_eq!(
        err.code,
        RejectCode::CanisterError,
        "candid decoding failure traps: {err}"
    );

    assert_eq!(e.method_kind(id, "put"), Some(MethodKind::Update));
    assert_eq!(e.method_kind(id, "get"), Some(MethodKind::Query));
    assert_eq!(e.method_kind(id, "nope"), None);
}

#[test]
fn inspect_message_accepts_and_refuses() {
    let mut e = engine();
    let id = install(&mut e, None);
    e.inspect_message(id, "put", &[], user()).unwrap();
    let err = e.inspect_message(id, "forbidden", &[], user()).unwrap_err();
    assert_eq!(
        (err.code, err.error_code.as_deref()),
        (RejectCode::CanisterReject, Some("IC0406"))
    );
}

#[test]
fn upgrade_keeps_stable_memory_and_runs_the_hooks() {
    let mut e = engine();
    let id = install(&mut e, None);
    update::<_, (u64,)>(&mut e, id, "put", (1u64, "one".to_string())).unwrap();
    update::<_, ()>(&mut e, id, "start_interval", (60u64,)).unwrap();
    assert!(e.global_timer(id).is_some());
    let certified = e.certified_data(id).unwrap();
    let hash = e.module_hash(id).unwrap();

    let arg = candid::encode_one(Some("upgraded".to_string())).unwrap();
    e.install(id, wasm(), &arg, InstallMode::Upgrade, controller())
        .unwrap();
    let s = state(&mut e, id);
    assert_eq!(
        (s.upgrades, s.pre_upgrades),
        (1, 1),
        "pre_upgrade and post_upgrade ran once"
    );
    assert_eq!(s.counter, 0, "the heap starts afresh");
    assert_eq!(s.stable_len, 2, "stable memory survived");
    let (v,): (Option<String>,) = query(&mut e, id, "get", (1u64,)).unwrap();
    assert_eq!(v.as_deref(), Some("one"));
    let (g,): (Option<String>,) = query(&mut e, id, "get", (0u64,)).unwrap();
    assert_eq!(
        g.as_deref(),
        Some("upgraded"),
        "post_upgrade received its argument"
    );
    assert_eq!(
        e.certified_data(id).unwrap(),
        certified,
        "certified data survives an upgrade"
    );
    assert_eq!(
        e.global_timer(id),
        None,
        "the global timer is disarmed by an upgrade"
    );
    assert_eq!(e.module_hash(id).unwrap(), hash);

    // A failing post_upgrade leaves everything as it was, pre_upgrade included.
    update::<_, (u64,)>(&mut e, id, "put", (2u64, "two".to_string())).unwrap();
    let before = snapshot(&mut e, id);
    let arg = candid::encode_one(Some("trap".to_string())).unwrap();
    let err = e
        .install(id, wasm(), &arg, InstallMode::Upgrade, controller())
        .unwrap_err();
    assert!(err.message.contains("post_upgrade asked to trap"), "{err}");
    assert_eq!(snapshot(&mut e, id), before);
}

#[test]
fn reinstall_and_install_errors() {
    let mut e = engine();
    let id = install(&mut e, None);
    update::<_, (u64,)>(&mut e, id, "put", (1u64, "one".to_string())).unwrap();

    let err = e.install(
        id,
        wasm(),
        &candid::encode_one(None::<String>).unwrap(),
        InstallMode::Install,
        controller(),
    );
    assert_eq!(err.unwrap_err().error_code.as_deref(), Some("IC0538"));
    let err = e
        .install(id, wasm(), &[], InstallMode::Reinstall, user())
        .unwrap_err();
    assert_eq!(
        err.error_code.as_deref(),
        Some("IC0512"),
        "only controllers install"
    );
    let err = e
        .install(
            id,
            b"\0asm\x01\0\0\0garbage",
            &[],
            InstallMode::Reinstall,
            controller(),
        )
        .unwrap_err();
    assert_eq!(err.error_code.as_deref(), Some("IC0505"), "{err}");
    assert_eq!(
        state(&mut e, id).stable_len,
        2,
        "failed installs changed nothing"
    );

    e.install(
        id,
        wasm(),
        &candid::encode_one(Some("again".to_string())).unwrap(),
        InstallMode::Reinstall,
        controller(),
    )
    .unwrap();
    let s = state(&mut e, id);
    assert_eq!(
        (s.stable_len, s.counter),
        (1, 0),
        "reinstall wipes stable memory and heap"
    );
    assert_eq!(e.certified_data(id).unwrap(), Vec::<u8>::new());
}

#[test]
fn gzipped_wasm_installs_and_hashes_as_given() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(wasm()).unwrap();
    let gz = gz.finish().unwrap();
    let mut e = engine();
    let id = e.create_canister(vec![controller()]);
    e.install(
        id,
        &gz,
        &candid::encode_one(None::<String>).unwrap(),
        InstallMode::Install,
        controller(),
    )
    .unwrap();
    use sha2::Digest;
    let expected: [u8; 32] = sha2::Sha256::digest(&gz).into();
    assert_eq!(e.module_hash(id), Some(expected));
    let (v,): (Option<String>,) = query(&mut e, id, "get", (0u64,)).unwrap();
    assert_eq!(v.as_deref(), Some("hello"));
}

#[test]
fn raw_rand_from_the_management_canister() {
    let mut e = engine();
    let id = install(&mut e, None);
    let (a,): (Result<Vec<u8>, String>,) = update(&mut e, id, "rand", ()).unwrap();
    let (b,): (Result<Vec<u8>, String>,) = update(&mut e, id, "rand", ()).unwrap();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    let (r,): (Result<Vec<u8>, (u32, String)>,) = update(
        &mut e,
        id,
        "call_raw",
        (
            Principal::management_canister(),
            "canister_status".to_string(),
        ),
    )
    .unwrap();
    let (code, message) = r.unwrap_err();
    assert_eq!(code, 4);
    assert!(message.contains("not supported"), "{message}");
}
