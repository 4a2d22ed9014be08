//! The `ic-ws-replica` binary as scripts use it: one JSON startup line, canisters installed
//! with candid arguments, served until SIGTERM, configuration errors reported with exit 1.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use candid::{Encode, Principal};
use common::*;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ic-ws-replica"))
}

#[tokio::test(flavor = "multi_thread")]
async fn json_startup_line_then_serves_until_sigterm() {
    let dir = std::env::temp_dir().join(format!("ic-ws-replica-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("probe.wasm");
    std::fs::write(&wasm, probe_wasm()).unwrap();

    let mut child = binary()
        .args(["--port", "0", "--json", "--seed", "cli test"])
        .arg("--install")
        .arg(format!("first={}", wasm.display()))
        .arg("--install")
        .arg(format!(
            "second={}:(\"ignored by the probe\", 5 : nat64)",
            wasm.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let startup: serde_json::Value = serde_json::from_str(&line).unwrap();

    let url = startup["url"].as_str().unwrap();
    let root_key = hex::decode(startup["root_key"].as_str().unwrap()).unwrap();
    let first = Principal::from_text(startup["canisters"]["first"].as_str().unwrap()).unwrap();
    let second = Principal::from_text(startup["canisters"]["second"].as_str().unwrap()).unwrap();
    assert_ne!(first, second);
    assert_eq!(
        root_key,
        ic_ws_replica::Replica::new(ic_ws_replica::ReplicaConfig::with_seed("cli test"))
            .root_key_der(),
        "--seed makes the root key reproducible"
    );

    let agent = ic_agent::Agent::builder().with_url(url).build().unwrap();
    agent.fetch_root_key().await.unwrap();
    assert_eq!(agent.read_root_key(), root_key);
    let reply = agent
        .update(&second, "inc")
        .with_arg(Encode!().unwrap())
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(counter(&reply), 1);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn configuration_errors_exit_with_a_message() {
    let output = binary()
        .args(["--port", "0", "--install", "x=/nonexistent/canister.wasm"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/canister.wasm"), "{stderr}");

    let output = binary()
        .args(["--port", "0", "--install", "no-equals-sign"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

/// `ic-ws-replica upgrade` against a running replica process: the canisters of `--install`
/// (controlled by the anonymous principal) are upgraded through the management canister over
/// HTTP; errors (unknown canister, bad id, a non-controller) exit 1 with the replica's reason.
#[tokio::test(flavor = "multi_thread")]
async fn upgrade_subcommand_upgrades_a_running_replica() {
    let dir = std::env::temp_dir().join(format!("ic-ws-replica-cli-up-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("probe.wasm");
    std::fs::write(&wasm, probe_wasm()).unwrap();
    let mut child = binary()
        .args(["--port", "0", "--json", "--seed", "cli upgrade"])
        .arg("--install")
        .arg(format!("probe={}", wasm.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let startup: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = startup["url"].as_str().unwrap().to_string();
    let probe = Principal::from_text(startup["canisters"]["probe"].as_str().unwrap()).unwrap();
    let agent = ic_agent::Agent::builder().with_url(&url).build().unwrap();
    agent.fetch_root_key().await.unwrap();
    let inc = || async {
        counter(
            &agent
                .update(&probe, "inc")
                .with_arg(Encode!().unwrap())
                .call_and_wait()
                .await
                .unwrap(),
        )
    };
    assert_eq!(inc().await, 1);
    let installed = agent.read_state_canister_module_hash(probe).await.unwrap();

    let output = binary()
        .args(["upgrade", "--url", &url])
        .arg(format!("{probe}={}", wasm.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(&probe.to_text()));
    // Upgraded: the module was sent gzipped (another hash) and the heap counter restarted.
    let upgraded = agent.read_state_canister_module_hash(probe).await.unwrap();
    assert_ne!(upgraded, installed);
    assert_eq!(inc().await, 1);

    // Errors exit 1 with the replica's reason.
    let unknown = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0x03, 0xe7, 1, 1]);
    for (target, needle) in [
        (format!("{unknown}={}", wasm.display()), "IC0301"),
        (format!("not-an-id={}", wasm.display()), "not a canister id"),
        (format!("{probe}=/nonexistent.wasm"), "/nonexistent.wasm"),
    ] {
        let output = binary()
            .args(["upgrade", "--url", &url, &target])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{target}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{target}: {stderr}");
    }
    // A non-controller identity is refused (IC0512) and nothing changes.
    let pem = dir.join("stranger.pem");
    std::fs::write(
        &pem,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIAcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let output = binary()
        .args(["upgrade", "--url", &url, "--identity-pem"])
        .arg(&pem)
        .arg(format!("{probe}={}", wasm.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("IC0512"), "{stderr}");
    assert_eq!(inc().await, 2);

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
