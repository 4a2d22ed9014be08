//! The chat example deployed and upgraded the way dfx / icp-cli users do it: through the
//! management canister over the replica's HTTP interface (ic-agent's `ManagementCanister`),
//! with ws clients connected through a real gateway process during the upgrade. Nothing is
//! lost: every client keeps its session and receives every message exactly once, in order.
//! Then stop / status / start / delete, and a non-controller's upgrade refused mid-stream.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ic_agent::agent::RejectCode;
use ic_agent::identity::BasicIdentity;
use ic_agent::{Agent, AgentError, Identity};
use ic_management_canister_types::{CanisterInstallMode, CanisterStatusType};
use ic_utils::call::AsyncCall;
use ic_utils::interfaces::ManagementCanister;
use ic_ws_client::Client;
use ic_ws_e2e::chat::{config, join, numbered, read_until, ChatIn, Observed, CHAT, WAIT};
use ic_ws_e2e::process::{canister_wasm, GatewayOptions, GatewayProcess, TestNet};

fn no_args() -> Vec<u8> {
    candid::encode_args(()).unwrap()
}

/// The chat wasm gzipped (as dfx and icp-cli ship it): the plain module is close to the 2 MiB
/// ingress limit.
fn chat_wasm_gz() -> Vec<u8> {
    let wasm = canister_wasm(CHAT).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&wasm).unwrap();
    gz.finish().unwrap()
}

async fn agent(net: &TestNet, identity: BasicIdentity) -> Agent {
    let agent = Agent::builder()
        .with_url(net.url.clone())
        .with_identity(identity)
        .build()
        .unwrap();
    agent.fetch_root_key().await.unwrap();
    agent
}

/// Stages of the upgrade the talkers follow: a third of the messages before it starts, a
/// third while it runs (sent without waiting for it), the rest once it is done.
#[derive(Default)]
struct Stage {
    started: AtomicBool,
    done: AtomicBool,
}

async fn wait_flag(flag: &AtomicBool) {
    let deadline = Instant::now() + WAIT;
    while !flag.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upgrade stage was not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn talk(
    client: &Client,
    name: &str,
    n: usize,
    sent: Arc<AtomicUsize>,
    stage: Arc<Stage>,
) -> tokio::task::JoinHandle<()> {
    let sender = client.sender();
    let name = name.to_string();
    tokio::spawn(async move {
        for (i, text) in numbered(&format!("{name}-"), n).into_iter().enumerate() {
            if i == n / 3 {
                wait_flag(&stage.started).await;
            }
            if i == 2 * n / 3 {
                wait_flag(&stage.done).await;
            }
            sender.send(&ChatIn::Say { text }).await.unwrap();
            sent.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}

fn listen(
    mut client: Client,
    names: Vec<String>,
    n: usize,
) -> tokio::task::JoinHandle<(Client, Observed)> {
    tokio::spawn(async move {
        let mut seen = Observed::default();
        let r = read_until(&mut client, &mut seen, |o| {
            names.iter().all(|x| o.texts_from(x).len() >= n)
        })
        .await;
        if let Err(e) = r {
            panic!("{e}");
        }
        (client, seen)
    })
}

fn reject_of(e: AgentError) -> (RejectCode, String, Option<String>) {
    match e {
        AgentError::CertifiedReject { reject, .. }
        | AgentError::UncertifiedReject { reject, .. } => {
            (reject.reject_code, reject.reject_message, reject.error_code)
        }
        other => panic!("expected a reject, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_deployed_and_upgraded_over_http_with_clients_connected() {
    const N: usize = 30;
    let net = TestNet::start().unwrap();
    let owner_identity = BasicIdentity::from_raw_key(&[11; 32]);
    let owner_principal = owner_identity.sender().unwrap();
    let owner = agent(&net, owner_identity).await;
    let stranger = agent(&net, BasicIdentity::from_raw_key(&[12; 32])).await;
    let mgmt = ManagementCanister::create(&owner);
    let wasm = chat_wasm_gz();

    // Deploy: create (the caller controls it) and install, all over HTTP.
    let (canister,) = mgmt
        .create_canister()
        .as_provisional_create_with_amount(None)
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(
        net.replica.controllers(canister).unwrap(),
        vec![owner_principal]
    );
    mgmt.install_code(&canister, &wasm)
        .with_raw_arg(no_args())
        .call_and_wait()
        .await
        .unwrap();
    let installed_hash = net.replica.module_hash(canister).unwrap();

    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let names: Vec<String> = ["ann", "ben", "cat"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut clients = Vec::new();
    for name in &names {
        clients.push(
            join(config(&gw.url(), canister, &net.root_key_der, name))
                .await
                .unwrap(),
        );
    }
    let sent = Arc::new(AtomicUsize::new(0));
    let stage = Arc::new(Stage::default());
    let (mut talkers, mut listeners, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (c, name) in clients.into_iter().zip(&names) {
        ids.push(c.client_id());
        talkers.push(talk(&c, name, N, sent.clone(), stage.clone()));
        listeners.push(listen(c, names.clone(), N));
    }

    // A third of the way in: a non-controller's upgrade is refused, then the owner upgrades
    // while everybody keeps talking.
    let deadline = Instant::now() + WAIT;
    while sent.load(Ordering::SeqCst) < names.len() * (N / 3) {
        assert!(Instant::now() < deadline, "clients did not start talking");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = ManagementCanister::create(&stranger)
        .install_code(&canister, &wasm)
        .with_mode(CanisterInstallMode::Upgrade(None))
        .with_raw_arg(no_args())
        .call_and_wait()
        .await
        .unwrap_err();
    let (code, message, error_code) = reject_of(refused);
    assert_eq!(code, RejectCode::CanisterError, "{message}");
    assert_eq!(error_code.as_deref(), Some("IC0512"), "{message}");
    let (before,) = mgmt.canister_status(&canister).call().await.unwrap();
    stage.started.store(true, Ordering::SeqCst);
    let upgrade_started = Instant::now();
    mgmt.install_code(&canister, &wasm)
        .with_mode(CanisterInstallMode::Upgrade(None))
        .with_raw_arg(no_args())
        .call_and_wait()
        .await
        .unwrap();
    let (after,) = mgmt.canister_status(&canister).call().await.unwrap();
    assert!(after.version > before.version, "{before:?} -> {after:?}");
    assert_eq!(after.module_hash, Some(installed_hash.to_vec()));
    stage.done.store(true, Ordering::SeqCst);
    println!(
        "upgrade over HTTP (install_code, {} KiB gzipped): {:?}",
        wasm.len() / 1024,
        upgrade_started.elapsed()
    );

    for t in talkers {
        t.await.unwrap();
    }
    for (l, id) in listeners.into_iter().zip(ids) {
        let (client, seen) = l.await.unwrap();
        for name in &names {
            assert_eq!(
                seen.texts_from(name),
                numbered(&format!("{name}-"), N),
                "{seen:?}"
            );
        }
        assert_eq!(client.client_id(), id, "same session after the upgrade");
    }

    // Stop: status says so and calls are refused; start; stop and delete.
    mgmt.stop_canister(&canister).call_and_wait().await.unwrap();
    let (status,) = mgmt.canister_status(&canister).call().await.unwrap();
    assert_eq!(status.status, CanisterStatusType::Stopped);
    let e = owner
        .update(&canister, "ws_poll")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap_err();
    assert_eq!(reject_of(e).2.as_deref(), Some("IC0508"));
    mgmt.start_canister(&canister)
        .call_and_wait()
        .await
        .unwrap();
    let (status,) = mgmt.canister_status(&canister).call().await.unwrap();
    assert_eq!(status.status, CanisterStatusType::Running);
    mgmt.stop_canister(&canister).call_and_wait().await.unwrap();
    mgmt.delete_canister(&canister)
        .call_and_wait()
        .await
        .unwrap();
    assert!(!net.replica.canister_exists(canister));
    let e = mgmt.canister_status(&canister).call().await.unwrap_err();
    assert_eq!(reject_of(e).2.as_deref(), Some("IC0301"));
    drop(gw);
}
