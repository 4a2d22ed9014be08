//! The `ic-ws-gateway` binary as a process: ready file, SIGTERM behaviour, identity reuse,
//! configuration errors, an unreachable canister. No canister is contacted.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ic-ws-gw-bin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spawn(dir: &Path) -> Child {
    spawn_with(dir, &[])
}

fn spawn_with(dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ic-ws-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--network",
            "http://127.0.0.1:9",
        ])
        .args(["--canister", CANISTER, "--log", "warn"])
        .args(extra)
        .arg("--identity-file")
        .arg(dir.join("identity.pem"))
        .arg("--ready-file")
        .arg(dir.join("ready.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn ready(dir: &Path) -> serde_json::Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("ready.json")) {
            if let Ok(v) = serde_json::from_str(&text) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "gateway not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "gateway did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sigterm_closes_clients_with_1012_and_exits_cleanly_with_a_stable_principal() {
    let d = dir("term");
    let mut child = spawn(&d);
    let info = ready(&d);
    let addr = info["listen"].as_str().unwrap().parse().unwrap();
    let principal = info["principal"].as_str().unwrap().to_string();
    let mut ws = connect_from(addr, None).await;
    assert_eq!(hello(&mut ws).await.to_text(), principal);
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(closed(&mut ws).await.0, 1012);
    assert!(wait_exit(&mut child).success());
    // Restarted with the same identity file: same principal.
    std::fs::remove_file(d.join("ready.json")).unwrap();
    let mut again = spawn(&d);
    assert_eq!(ready(&d)["principal"].as_str().unwrap(), principal);
    assert!(Command::new("kill")
        .args(["-TERM", &again.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(wait_exit(&mut again).success());
    let _ = std::fs::remove_dir_all(&d);
}

/// A canister that cannot be reached (nothing listens at the network URL) fails every open:
/// each client is told (close 4005), and the log says so once, not once per call.
#[tokio::test]
async fn an_unreachable_canister_is_logged_once_not_once_per_call() {
    let d = dir("unreachable");
    let mut child = spawn_with(&d, &["--retry-attempts", "1"]);
    let info = ready(&d);
    let addr = info["listen"].as_str().unwrap().parse().unwrap();
    let opens = 20;
    for _ in 0..opens {
        let mut ws = connect_from(addr, None).await;
        let gateway = hello(&mut ws).await;
        send_frame(&mut ws, &open_request_through(gateway, b"", None)).await;
        let (code, reason) = closed(&mut ws).await;
        assert_eq!(code, 4005, "{reason}");
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(wait_exit(&mut child).success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let lines = stderr
        .lines()
        .filter(|l| l.contains("ws_open failed"))
        .count();
    assert_eq!(lines, 1, "{opens} failed opens logged as:\n{stderr}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn configuration_errors_exit_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_ic-ws-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--canister",
            CANISTER,
            "--fetch-root-key",
            "--admin-listen",
            "off",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("configuration error") && err.contains("mainnet"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_ic-ws-gateway"))
        .args(["--listen", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}
