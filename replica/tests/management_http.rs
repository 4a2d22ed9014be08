//! The management canister over HTTP, driven by ic-agent's `ManagementCanister` (ic-utils) as
//! dfx, icp-cli and PocketIC users drive it, every verification on: create, install, upgrade,
//! status (as a query and as an update), stop/start, update_settings, delete; and hostile
//! callers (non-controllers, malformed candid, wrong effective canister ids, unsupported
//! methods).
#![allow(clippy::unwrap_used)]

mod common;

use candid::{Encode, Principal};
use common::*;
use ic_agent::agent::RejectCode;
use ic_agent::{Agent, AgentError};
use ic_management_canister_types::{CanisterInstallMode, CanisterStatusType};
use ic_utils::call::AsyncCall;
use ic_utils::interfaces::ManagementCanister;
use ic_ws_replica::ReplicaConfig;

fn no_args() -> Vec<u8> {
    Encode!().unwrap()
}

/// (reject code, message, error code) of a rejected call; panics on any other error.
fn reject_of(e: AgentError) -> (RejectCode, String, Option<String>) {
    match e {
        AgentError::CertifiedReject { reject, .. }
        | AgentError::UncertifiedReject { reject, .. } => {
            (reject.reject_code, reject.reject_message, reject.error_code)
        }
        other => panic!("expected a reject, got {other:?}"),
    }
}

fn assert_reject<T: std::fmt::Debug>(
    r: Result<T, AgentError>,
    code: RejectCode,
    error_code: &str,
    needle: &str,
) {
    let (c, message, ec) = reject_of(r.expect_err("the call must be rejected"));
    assert_eq!(c, code, "{message}");
    assert_eq!(ec.as_deref(), Some(error_code), "{message}");
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
}

async fn create(agent: &Agent) -> Principal {
    let mgmt = ManagementCanister::create(agent);
    let (id,) = mgmt
        .create_canister()
        .as_provisional_create_with_amount(None)
        .call_and_wait()
        .await
        .unwrap();
    id
}

async fn inc(agent: &Agent, canister: Principal) -> Result<u64, AgentError> {
    agent
        .update(&canister, "inc")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .map(|r| counter(&r))
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_through_the_management_canister() {
    let served = Served::new(ReplicaConfig::with_seed("management lifecycle"));
    let owner_identity = ed25519_identity(1);
    let owner_principal = ic_agent::Identity::sender(&owner_identity).unwrap();
    let owner = served.agent(owner_identity).await;
    let stranger_identity = ed25519_identity(2);
    let stranger_principal = ic_agent::Identity::sender(&stranger_identity).unwrap();
    let stranger = served.agent(stranger_identity).await;
    let mgmt = ManagementCanister::create(&owner);
    let hostile = ManagementCanister::create(&stranger);

    // Create: the caller is the only controller; empty, running.
    let canister = create(&owner).await;
    assert!(served.replica.canister_exists(canister));
    let (status,) = mgmt.canister_status(&canister).call().await.unwrap();
    assert_eq!(status.status, CanisterStatusType::Running);
    assert_eq!(status.settings.controllers, vec![owner_principal]);
    assert_eq!(status.module_hash, None);
    // The certified state tree publishes the controllers (what dfx reads).
    assert_eq!(
        owner
            .read_state_canister_controllers(canister)
            .await
            .unwrap(),
        vec![owner_principal]
    );

    // Install; calls work; a second install is refused (IC0538).
    let wasm = probe_wasm();
    mgmt.install_code(&canister, &wasm)
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(inc(&owner, canister).await.unwrap(), 1);
    let hash = served.replica.module_hash(canister).unwrap();
    let (status,) = mgmt.canister_status(&canister).call().await.unwrap();
    assert_eq!(status.module_hash, Some(hash.to_vec()));
    assert_reject(
        mgmt.install_code(&canister, &wasm).call_and_wait().await,
        RejectCode::CanisterError,
        "IC0538",
        "already installed",
    );

    // A non-controller can neither install, upgrade, stop, delete, read the status nor
    // change the settings (IC0512), as a query or an update.
    for mode in [
        CanisterInstallMode::Install,
        CanisterInstallMode::Reinstall,
        CanisterInstallMode::Upgrade(None),
    ] {
        assert_reject(
            hostile
                .install_code(&canister, &wasm)
                .with_mode(mode)
                .call_and_wait()
                .await,
            RejectCode::CanisterError,
            "IC0512",
            "Only controllers",
        );
    }
    assert_reject(
        hostile.stop_canister(&canister).call_and_wait().await,
        RejectCode::CanisterError,
        "IC0512",
        "stop_canister",
    );
    assert_reject(
        hostile.delete_canister(&canister).call_and_wait().await,
        RejectCode::CanisterError,
        "IC0512",
        "delete_canister",
    );
    assert_reject(
        hostile.canister_status(&canister).call().await,
        RejectCode::CanisterError,
        "IC0512",
        "canister_status",
    );
    assert_reject(
        hostile.canister_status(&canister).as_update().call().await,
        RejectCode::CanisterError,
        "IC0512",
        "canister_status",
    );
    assert_reject(
        hostile
            .update_settings(&canister)
            .with_controller(stranger_principal)
            .call_and_wait()
            .await,
        RejectCode::CanisterError,
        "IC0512",
        "update_settings",
    );
    assert_eq!(inc(&owner, canister).await.unwrap(), 2, "nothing changed");

    // Upgrade by the controller: same module, the canister keeps running (the probe keeps
    // its counter in the heap, so an upgrade resets it; reinstall too).
    mgmt.install_code(&canister, &wasm)
        .with_mode(CanisterInstallMode::Upgrade(None))
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(inc(&owner, canister).await.unwrap(), 1);
    let (status,) = mgmt
        .canister_status(&canister)
        .as_update()
        .call()
        .await
        .unwrap();
    assert!(status.version >= 2, "{}", status.version);

    // update_settings: the stranger becomes a controller and may read the status.
    mgmt.update_settings(&canister)
        .with_controller(owner_principal)
        .with_controller(stranger_principal)
        .call_and_wait()
        .await
        .unwrap();
    let (status,) = hostile.canister_status(&canister).call().await.unwrap();
    let mut expected = vec![owner_principal, stranger_principal];
    expected.sort();
    assert_eq!(status.settings.controllers, expected);

    // Delete needs a stopped canister (IC0510); a stopped canister refuses calls and
    // queries (IC0508); start brings it back.
    assert_reject(
        mgmt.delete_canister(&canister).call_and_wait().await,
        RejectCode::CanisterError,
        "IC0510",
        "must be stopped",
    );
    mgmt.stop_canister(&canister).call_and_wait().await.unwrap();
    let (status,) = mgmt.canister_status(&canister).call().await.unwrap();
    assert_eq!(status.status, CanisterStatusType::Stopped);
    assert_reject(
        inc(&owner, canister).await,
        RejectCode::CanisterError,
        "IC0508",
        "is stopped",
    );
    assert_reject(
        owner
            .query(&canister, "get")
            .with_arg(no_args())
            .call()
            .await,
        RejectCode::CanisterError,
        "IC0508",
        "is stopped",
    );
    mgmt.start_canister(&canister)
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(inc(&owner, canister).await.unwrap(), 2);

    mgmt.stop_canister(&canister).call_and_wait().await.unwrap();
    mgmt.delete_canister(&canister)
        .call_and_wait()
        .await
        .unwrap();
    assert!(!served.replica.canister_exists(canister));
    assert_reject(
        mgmt.canister_status(&canister).call().await,
        RejectCode::DestinationInvalid,
        "IC0301",
        "not found",
    );
    assert_reject(
        inc(&owner, canister).await,
        RejectCode::DestinationInvalid,
        "IC0301",
        "not found",
    );
    // The deleted canister's ids are gone from the certified state.
    assert!(owner
        .read_state_canister_module_hash(canister)
        .await
        .is_err());

    // Ids are never reused; anonymous callers may create, as on a local network.
    let anonymous = served.anonymous_agent().await;
    let second = create(&anonymous).await;
    assert_ne!(second, canister);
    assert_eq!(
        served.replica.controllers(second).unwrap(),
        vec![Principal::anonymous()]
    );
    // Explicit controllers (provisional create), and the plain create_canister method with
    // the specification's argument (ic-utils sends a bare settings record for it, which reads
    // as "no settings": the caller becomes the controller).
    let (third,) = ManagementCanister::create(&anonymous)
        .create_canister()
        .as_provisional_create_with_amount(Some(1_000_000))
        .with_controller(owner_principal)
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(
        served.replica.controllers(third).unwrap(),
        vec![owner_principal]
    );
    let arg = Encode!(&ic_management_canister_types::CreateCanisterArgs {
        settings: Some(ic_management_canister_types::CanisterSettings {
            controllers: Some(vec![stranger_principal, owner_principal]),
            ..Default::default()
        }),
        sender_canister_version: None,
    })
    .unwrap();
    let reply = owner
        .update(&Principal::management_canister(), "create_canister")
        .with_effective_canister_id(third)
        .with_arg(arg)
        .call_and_wait()
        .await
        .unwrap();
    let fourth = candid::decode_one::<ic_management_canister_types::CanisterIdRecord>(&reply)
        .unwrap()
        .canister_id;
    assert_eq!(served.replica.controllers(fourth).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_unsupported_management_calls_are_rejected_clearly() {
    let served = Served::new(ReplicaConfig::with_seed("management hostile"));
    let agent = served.agent(ed25519_identity(3)).await;
    let canister = create(&agent).await;
    let other = create(&agent).await;
    let aaaaa = Principal::management_canister();

    // Candid that does not decode as the method's argument: IC0408, naming the method.
    for (method, arg) in [
        ("install_code", vec![1, 2, 3]),
        ("install_code", Encode!(&"text").unwrap()),
        ("stop_canister", Encode!(&42u64).unwrap()),
    ] {
        assert_reject(
            agent
                .update(&aaaaa, method)
                .with_effective_canister_id(canister)
                .with_arg(arg)
                .call_and_wait()
                .await,
            RejectCode::CanisterReject,
            "IC0408",
            method,
        );
    }
    assert_reject(
        agent
            .query(&aaaaa, "canister_status")
            .with_effective_canister_id(canister)
            .with_arg(vec![0xff])
            .call()
            .await,
        RejectCode::CanisterReject,
        "IC0408",
        "canister_status",
    );

    // The effective canister id must be the argument's canister_id (HTTP 400).
    let arg = Encode!(&ic_management_canister_types::CanisterIdRecord {
        canister_id: canister
    })
    .unwrap();
    let e = agent
        .update(&aaaaa, "stop_canister")
        .with_effective_canister_id(other)
        .with_arg(arg)
        .call_and_wait()
        .await
        .unwrap_err();
    match e {
        AgentError::HttpError(payload) => {
            assert_eq!(payload.status, 400);
            let text = String::from_utf8_lossy(&payload.content);
            assert!(
                text.contains("does not match effective canister id"),
                "{text}"
            );
        }
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    assert_eq!(
        served.replica.controllers(canister).map(|c| c.len()),
        Some(1)
    );

    // Unsupported methods are named; canister-only methods say so.
    assert_reject(
        ManagementCanister::create(&agent)
            .take_canister_snapshot(&ic_management_canister_types::TakeCanisterSnapshotArgs {
                canister_id: canister,
                replace_snapshot: None,
                uninstall_code: None,
                sender_canister_version: None,
            })
            .call_and_wait()
            .await,
        RejectCode::CanisterReject,
        "IC0407",
        "take_canister_snapshot",
    );
    assert_reject(
        ManagementCanister::create(&agent)
            .raw_rand()
            .call_and_wait()
            .await,
        RejectCode::CanisterReject,
        "IC0407",
        "only be called by canisters",
    );

    // More than 10 controllers, a specified id: refused, nothing created.
    let mgmt = ManagementCanister::create(&agent);
    let mut builder = mgmt
        .create_canister()
        .as_provisional_create_with_amount(None);
    for i in 0..11u8 {
        builder = builder.with_controller(Principal::from_slice(&[i; 29]));
    }
    assert_reject(
        builder.call_and_wait().await,
        RejectCode::CanisterReject,
        "IC0408",
        "at most 10",
    );
    assert_reject(
        ManagementCanister::create(&agent)
            .create_canister()
            .as_provisional_create_with_specified_id(Principal::from_slice(&[
                0, 0, 0, 0, 0, 0, 0x10, 0, 1, 1,
            ]))
            .call_and_wait()
            .await,
        RejectCode::CanisterReject,
        "IC0408",
        "specified_id",
    );
    // Invalid wasm: IC0505, the canister stays empty.
    assert_reject(
        ManagementCanister::create(&agent)
            .install_code(&canister, b"not wasm")
            .call_and_wait()
            .await,
        RejectCode::CanisterError,
        "IC0505",
        "not valid",
    );
    assert_eq!(served.replica.module_hash(canister), None);
}

async fn upload(
    m: &ManagementCanister<'_>,
    canister: Principal,
    chunk: Vec<u8>,
) -> Result<(ic_management_canister_types::ChunkHash,), AgentError> {
    let args = ic_management_canister_types::UploadChunkArgs {
        canister_id: canister,
        chunk,
    };
    m.upload_chunk(&canister, &args).call_and_wait().await
}

/// The wasm chunk store, as icp-cli uses it for every install (and ic-utils for large modules):
/// upload_chunk, stored_chunks, install_chunked_code (the module assembled from the chunks in
/// the order given, checked against its hash), clear_chunk_store; and what hostile or
/// mistaken callers get: a stranger, a chunk over 1 MiB, a full store, a missing chunk, a
/// wrong module hash, each refused with the reason and nothing installed.
#[tokio::test(flavor = "multi_thread")]
async fn chunked_install_through_the_chunk_store() {
    use ic_management_canister_types::ChunkHash;
    use sha2::{Digest, Sha256};
    let served = Served::new(ReplicaConfig::with_seed("management chunks"));
    let owner = served.agent(ed25519_identity(1)).await;
    let stranger = served.agent(ed25519_identity(2)).await;
    let mgmt = ManagementCanister::create(&owner);
    let canister = create(&owner).await;
    // The probe module in two chunks, uploaded out of order; installed in the right order.
    let wasm = probe_wasm();
    let (a, b) = wasm.split_at(wasm.len() / 2);
    let (hb,) = upload(&mgmt, canister, b.to_vec()).await.unwrap();
    let (ha,) = upload(&mgmt, canister, a.to_vec()).await.unwrap();
    assert_eq!(ha.hash, Sha256::digest(a).to_vec());
    let (stored,) = mgmt.stored_chunks(&canister).call_and_wait().await.unwrap();
    assert_eq!(stored.len(), 2);
    let module_hash = Sha256::digest(&wasm).to_vec();
    // Wrong order: the assembled module's hash differs; nothing is installed.
    let wrong_order = mgmt
        .install_chunked_code(&canister, &module_hash)
        .with_chunk_hashes(vec![hb.clone(), ha.clone()])
        .build()
        .unwrap()
        .call_and_wait()
        .await;
    assert_reject(wrong_order, RejectCode::CanisterReject, "IC0408", "hash");
    assert!(served.replica.module_hash(canister).is_none());
    // A chunk that was never uploaded.
    let missing = mgmt
        .install_chunked_code(&canister, &module_hash)
        .with_chunk_hashes(vec![ha.clone(), ChunkHash { hash: vec![9; 32] }])
        .build()
        .unwrap()
        .call_and_wait()
        .await;
    assert_reject(
        missing,
        RejectCode::CanisterReject,
        "IC0408",
        "not in the chunk store",
    );
    // A stranger can neither upload nor install.
    let hostile = ManagementCanister::create(&stranger);
    assert_reject(
        upload(&hostile, canister, vec![1, 2, 3]).await,
        RejectCode::CanisterError,
        "IC0512",
        "controllers",
    );
    let stolen = hostile
        .install_chunked_code(&canister, &module_hash)
        .with_chunk_hashes(vec![ha.clone(), hb.clone()])
        .build()
        .unwrap()
        .call_and_wait()
        .await;
    assert_reject(stolen, RejectCode::CanisterError, "IC0512", "controllers");
    // The right order installs it; the canister runs.
    mgmt.install_chunked_code(&canister, &module_hash)
        .with_chunk_hashes(vec![ha, hb])
        .build()
        .unwrap()
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(inc(&owner, canister).await.unwrap(), 1);
    assert_eq!(
        served.replica.module_hash(canister).unwrap().to_vec(),
        module_hash
    );

    // Bounds: a chunk over 1 MiB; a store of 100 chunks takes no 101st (the same chunk again
    // is no new entry); clearing empties it.
    assert_reject(
        upload(&mgmt, canister, vec![0; 1024 * 1024 + 1]).await,
        RejectCode::CanisterReject,
        "IC0408",
        "exceeds",
    );
    mgmt.clear_chunk_store(&canister)
        .call_and_wait()
        .await
        .unwrap();
    for i in 0..100u32 {
        upload(&mgmt, canister, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    upload(&mgmt, canister, 0u32.to_be_bytes().to_vec())
        .await
        .unwrap();
    assert_reject(
        upload(&mgmt, canister, 100u32.to_be_bytes().to_vec()).await,
        RejectCode::CanisterReject,
        "IC0408",
        "full",
    );
    mgmt.clear_chunk_store(&canister)
        .call_and_wait()
        .await
        .unwrap();
    let (stored,) = mgmt.stored_chunks(&canister).call_and_wait().await.unwrap();
    assert!(stored.is_empty());
}
