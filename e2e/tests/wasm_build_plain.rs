//! Canister wasm is built as `cargo build` builds what ships, whatever workspace rustc wrapper
//! the tests run under: scripts/test sets one (its clippy wrapper, scripts/lint-rustc), and
//! cargo hashes a workspace wrapper into the members' symbol names: a wasm built through one
//! had the same size but other bytes. The instruction budgets must measure the shipped bytes.
//! Alone in its binary: it sets a process-wide variable.

use std::os::unix::fs::PermissionsExt;

#[test]
fn canister_builds_do_not_go_through_a_workspace_rustc_wrapper() {
    let dir = std::env::temp_dir().join(format!("ic-ws-wasm-build-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let wrapper = dir.join("refuse-rustc");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\necho 'a canister build went through the workspace rustc wrapper' >&2\nexit 1\n",
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // What cargo test's environment holds under scripts/test (a different wrapper there).
    std::env::set_var("RUSTC_WORKSPACE_WRAPPER", &wrapper);
    let built = ic_ws_replica::wasm_build::build_canister("ic-ws-replica-test-canister");
    let _ = std::fs::remove_dir_all(&dir);
    let path = built.expect("the canister builds without the wrapper");
    let wasm = std::fs::read(&path).expect("read the wasm");
    assert_eq!(&wasm[..4], b"\0asm", "{} is not wasm", path.display());
}
