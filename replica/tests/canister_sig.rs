//! Logging in "with Internet Identity": the identity-provider test canister
//! (`replica/test-idp`) signs delegations with canister signatures, an unmodified ic-agent
//! `DelegatedIdentity` uses them, and the replica verifies them as the IC does
//! (`ic_ws_protocol::canister_sig`). Also: the attacks the IC refuses (tampered signature,
//! another user's seed, expired delegation, targets), the IdP's bounds, and the instruction
//! cost of `canister_sig::verify` inside a canister (a budget test; figures in BENCHMARKS.md).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use candid::{CandidType, Decode, Deserialize, Encode, Principal};
use common::*;
use ic_agent::identity::{DelegatedIdentity, Identity};
use ic_agent::AgentError;
use ic_transport_types::{Delegation, SignedDelegation};
use ic_ws_replica::ReplicaConfig;
use serde_bytes::ByteBuf;

/// Instructions `canister_sig::verify` may take inside a canister (one BLS verification, no
/// subnet delegation). Measured: see BENCHMARKS.md.
const VERIFY_BUDGET: u64 = 600_000_000;

fn idp_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        ic_ws_replica::wasm_build::build_canister_wasm("ic-ws-replica-test-idp")
            .expect("build the IdP test canister")
    })
}

#[derive(CandidType, Deserialize, Debug)]
struct Prepared {
    user_key: ByteBuf,
    expiration: u64,
}

#[derive(CandidType, Deserialize, Debug, Clone)]
struct IdpDelegation {
    pubkey: ByteBuf,
    expiration: u64,
    targets: Option<Vec<Principal>>,
}

#[derive(CandidType, Deserialize, Debug, Clone)]
struct IdpSignedDelegation {
    delegation: IdpDelegation,
    signature: ByteBuf,
}

#[derive(CandidType, Deserialize, Debug)]
enum GetDelegationResponse {
    #[serde(rename = "signed_delegation")]
    SignedDelegation(IdpSignedDelegation),
    #[serde(rename = "no_such_delegation")]
    NoSuchDelegation,
}

#[derive(CandidType, Deserialize, Debug)]
struct VerifyReport {
    result: Result<(), String>,
    instructions: u64,
}

struct Login {
    user_key: Vec<u8>,
    signed: SignedDelegation,
}

/// The II flow: the user (logged in to the IdP with `device`) prepares a delegation to
/// `session`'s key, then fetches it with a query.
async fn login(
    served: &Served,
    idp: Principal,
    device: u8,
    session: &dyn Identity,
    max_ttl: Option<u64>,
    targets: Option<Vec<Principal>>,
) -> Login {
    let agent = served.agent(ed25519_identity(device)).await;
    let session_key = ByteBuf::from(session.public_key().unwrap());
    let reply = agent
        .update(&idp, "prepare_delegation")
        .with_arg(Encode!(&session_key, &max_ttl, &targets).unwrap())
        .call_and_wait()
        .await
        .unwrap();
    let prepared = Decode!(&reply, Result<Prepared, String>).unwrap().unwrap();
    let reply = agent
        .query(&idp, "get_delegation")
        .with_arg(Encode!(&session_key, &prepared.expiration, &targets).unwrap())
        .call()
        .await
        .unwrap();
    let GetDelegationResponse::SignedDelegation(signed) =
        Decode!(&reply, GetDelegationResponse).unwrap()
    else {
        panic!("no delegation after prepare");
    };
    assert_eq!(signed.delegation.expiration, prepared.expiration);
    Login {
        user_key: prepared.user_key.into_vec(),
        signed: SignedDelegation {
            delegation: Delegation {
                pubkey: signed.delegation.pubkey.into_vec(),
                expiration: signed.delegation.expiration,
                targets: signed.delegation.targets,
                permissions: None,
            },
            signature: signed.signature.into_vec(),
        },
    }
}

async fn whoami(agent: &ic_agent::Agent, canister: Principal) -> Result<Principal, AgentError> {
    let reply = agent
        .update(&canister, "whoami")
        .with_arg(Encode!().unwrap())
        .call_and_wait()
        .await?;
    Ok(Decode!(&reply, Principal).unwrap())
}

fn setup(seed: &str) -> (Served, Principal, Principal) {
    let served = Served::new(ReplicaConfig::with_seed(seed));
    let idp = served
        .replica
        .create_and_install(idp_wasm(), &Encode!().unwrap())
        .unwrap();
    let probe = served.install_probe();
    (served, idp, probe)
}

struct Delegated {
    root_key: Vec<u8>,
    user_key: Vec<u8>,
    signature: Vec<u8>,
    excluded_user_key: Vec<u8>,
    excluded_signature: Vec<u8>,
}

/// A canister signature whose certificate is signed by a subnet key under a delegation from
/// the root key (as every certificate of a mainnet application subnet is), built here with test
/// BLS keys since the embedded replica is a single root subnet.
fn delegated_signature() -> Delegated {
    use ic_certification::{fork, labeled, leaf, Certificate, HashTree};
    use sha2::{Digest, Sha256};
    let bls = |seed: u8| {
        let mut bytes = [seed; 32];
        bytes[0] = 0;
        ic_verify_bls_signature::PrivateKey::deserialize(&bytes).unwrap()
    };
    let der = |key: &ic_verify_bls_signature::PrivateKey| {
        let mut der = served_bls_prefix();
        der.extend_from_slice(&key.public_key().serialize());
        der
    };
    let sign = |key: &ic_verify_bls_signature::PrivateKey,
                tree: HashTree,
                delegation: Option<ic_certification::Delegation>| {
        let mut msg = b"\x0Dic-state-root".to_vec();
        msg.extend_from_slice(&tree.digest());
        serde_cbor::to_vec(&Certificate {
            signature: key.sign(&msg).serialize().to_vec(),
            tree,
            delegation,
        })
        .unwrap()
    };
    let (root, subnet) = (bls(11), bls(12));
    let subnet_id = vec![7; 29];
    let lo = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    let hi = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 1, 1]);
    let dtree = labeled(
        b"subnet".to_vec(),
        labeled(
            subnet_id.clone(),
            fork(
                labeled(
                    b"canister_ranges".to_vec(),
                    leaf(serde_cbor::to_vec(&vec![(lo, hi)]).unwrap()),
                ),
                labeled(b"public_key".to_vec(), leaf(der(&subnet))),
            ),
        ),
    );
    let delegation = ic_certification::Delegation {
        subnet_id,
        certificate: sign(&root, dtree, None),
    };
    let make = |canister: Principal| {
        let seed = [5u8; 32];
        let sha = |b: &[u8]| Sha256::digest(b).to_vec();
        let tree = labeled(
            b"sig".to_vec(),
            labeled(sha(&seed), labeled(sha(b"message"), leaf(Vec::<u8>::new()))),
        );
        let cert_tree = fork(
            labeled(
                b"canister".to_vec(),
                labeled(
                    canister.as_slice().to_vec(),
                    labeled(b"certified_data".to_vec(), leaf(tree.digest().to_vec())),
                ),
            ),
            labeled(b"time".to_vec(), leaf(vec![1])),
        );
        #[derive(serde::Serialize)]
        struct Sig {
            #[serde(with = "serde_bytes")]
            certificate: Vec<u8>,
            tree: HashTree,
        }
        let certificate = sign(&subnet, cert_tree, Some(delegation.clone()));
        (
            ic_ws_protocol::canister_sig::public_key_der(&canister, &seed),
            serde_cbor::to_vec(&Sig { certificate, tree }).unwrap(),
        )
    };
    let (user_key, signature) = make(Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 5, 1, 1]));
    let (excluded_user_key, excluded_signature) =
        make(Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 10, 1, 1]));
    Delegated {
        root_key: der(&root),
        user_key,
        signature,
        excluded_user_key,
        excluded_signature,
    }
}

fn served_bls_prefix() -> Vec<u8> {
    // The IC's DER prefix of a BLS12-381 G2 key: the replica's root key minus its 96 key bytes.
    let der = ic_ws_replica::Replica::new(ReplicaConfig::with_seed("prefix")).root_key_der();
    der[..der.len() - 96].to_vec()
}

/// The signature with one bit of its certificate's BLS signature flipped (everything else,
/// tree and certified data, intact: only the pairing can tell).
fn tamper_bls(signature: &[u8]) -> Vec<u8> {
    #[derive(serde::Serialize, Deserialize)]
    struct Sig {
        #[serde(with = "serde_bytes")]
        certificate: Vec<u8>,
        tree: ic_certification::HashTree,
    }
    let mut sig: Sig = serde_cbor::from_slice(signature).unwrap();
    let mut cert: ic_certification::Certificate = serde_cbor::from_slice(&sig.certificate).unwrap();
    cert.signature[10] ^= 1;
    sig.certificate = serde_cbor::to_vec(&cert).unwrap();
    serde_cbor::to_vec(&sig).unwrap()
}

fn assert_refused(err: &AgentError, needle: &str) {
    let AgentError::HttpError(payload) = err else {
        panic!("expected the replica to refuse the request (HTTP 400), got {err:?}");
    };
    let text = String::from_utf8_lossy(&payload.content);
    assert_eq!(payload.status, 400, "{text}");
    assert!(text.contains(needle), "{needle:?} not in {text:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canister_signature_delegation_authenticates_its_principal() {
    let (served, idp, probe) = setup("idp login");
    let root_key = served.replica.root_key_der();
    for targets in [None, Some(vec![probe, idp])] {
        let session = ed25519_identity(2);
        let login = login(&served, idp, 1, &session, None, targets.clone()).await;
        let user = Principal::self_authenticating(&login.user_key);
        // ic-agent's own canister-signature verifier accepts what the IdP issued.
        let identity = DelegatedIdentity::new_with_root_key(
            login.user_key.clone(),
            Box::new(session),
            vec![login.signed.clone()],
            &root_key,
        )
        .unwrap();
        let agent = served.agent(identity).await;
        assert_eq!(whoami(&agent, probe).await.unwrap(), user, "{targets:?}");
        assert_eq!(whoami(&agent, idp).await.unwrap(), user);
        // A query too (another HTTP endpoint, same authentication).
        let reply = agent
            .query(&probe, "whoami")
            .with_arg(Encode!().unwrap())
            .call()
            .await
            .unwrap();
        assert_eq!(Decode!(&reply, Principal).unwrap(), user);
    }
    // The principal is per user (seed), stable across logins, and not the device's.
    let again = login(&served, idp, 1, &ed25519_identity(3), None, None).await;
    let other = login(&served, idp, 4, &ed25519_identity(3), None, None).await;
    assert_eq!(
        ic_ws_protocol::canister_sig::signing_canister(&again.user_key)
            .unwrap()
            .0,
        idp
    );
    assert_ne!(again.user_key, other.user_key);
    assert_ne!(
        Principal::self_authenticating(&again.user_key),
        ed25519_identity(1).sender().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_foreign_expired_and_untargeted_delegations_are_refused() {
    let (served, idp, probe) = setup("idp attacks");
    let session = || ed25519_identity(2);
    let agent_for = |user_key: Vec<u8>, signed: SignedDelegation| {
        let served = &served;
        async move {
            served
                .agent(DelegatedIdentity::new_unchecked(
                    user_key,
                    Box::new(session()),
                    vec![signed],
                ))
                .await
        }
    };
    let login = login(&served, idp, 1, &session(), None, Some(vec![idp])).await;

    // Targets: the delegation names the IdP only.
    let agent = agent_for(login.user_key.clone(), login.signed.clone()).await;
    assert!(whoami(&agent, idp).await.is_ok());
    assert_refused(&whoami(&agent, probe).await.unwrap_err(), "targets");

    // A tampered canister signature: one bit of the certificate's BLS signature, or of the
    // witness tree.
    let mut signed = login.signed.clone();
    signed.signature = tamper_bls(&signed.signature);
    let agent = agent_for(login.user_key.clone(), signed).await;
    assert_refused(&whoami(&agent, idp).await.unwrap_err(), "BLS");
    let mut signed = login.signed.clone();
    let at = signed.signature.len() - 20;
    signed.signature[at] ^= 1;
    let agent = agent_for(login.user_key.clone(), signed).await;
    assert_refused(
        &whoami(&agent, idp).await.unwrap_err(),
        "Invalid delegation",
    );

    // Another user's key (another seed of the same IdP) with this user's signature.
    let mallory = super_login_key(&served, idp).await;
    let agent = agent_for(mallory, login.signed.clone()).await;
    assert_refused(
        &whoami(&agent, idp).await.unwrap_err(),
        "Invalid delegation",
    );

    // A delegation whose expiry the IdP did not sign.
    let mut signed = login.signed.clone();
    signed.delegation.expiration += 1;
    let agent = agent_for(login.user_key.clone(), signed).await;
    assert_refused(
        &whoami(&agent, idp).await.unwrap_err(),
        "Invalid delegation",
    );

    // An expired delegation (validly signed, 1 ns of life).
    let expired = login_expired(&served, idp).await;
    let agent = agent_for(expired.user_key, expired.signed).await;
    assert_refused(&whoami(&agent, idp).await.unwrap_err(), "expired");
}

async fn super_login_key(served: &Served, idp: Principal) -> Vec<u8> {
    login(served, idp, 9, &ed25519_identity(2), None, None)
        .await
        .user_key
}

async fn login_expired(served: &Served, idp: Principal) -> Login {
    login(served, idp, 1, &ed25519_identity(2), Some(1), None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_signature_map_is_bounded_per_user() {
    let (served, idp, _) = setup("idp bounds");
    let user = ed25519_identity(1).sender().unwrap();
    let prepare = |caller: Principal, key: u32| {
        let arg = Encode!(
            &ByteBuf::from(key.to_be_bytes().to_vec()),
            &None::<u64>,
            &None::<Vec<Principal>>
        )
        .unwrap();
        let reply = served
            .replica
            .update(idp, "prepare_delegation", &arg, caller)
            .unwrap();
        Decode!(&reply, Result<Prepared, String>).unwrap()
    };
    for key in 0..8 {
        prepare(user, key).unwrap();
    }
    let err = prepare(user, 8).unwrap_err();
    assert!(err.contains("prepared delegations"), "{err}");
    // Others are not affected by one user's flood.
    prepare(Principal::self_authenticating([7u8; 32]), 0).unwrap();
    let err = prepare(Principal::anonymous(), 0).unwrap_err();
    assert!(err.contains("anonymous"), "{err}");
    let count = served
        .replica
        .query(idp, "signature_count", &Encode!().unwrap(), user)
        .unwrap();
    assert_eq!(Decode!(&count, u64).unwrap(), 9);
}

/// The cost of `canister_sig::verify` inside a canister (deterministic instruction count), on
/// a real Internet-Identity-style signature from the IdP, and what garbage costs.
#[tokio::test(flavor = "multi_thread")]
async fn canister_signature_verification_fits_its_instruction_budget() {
    let (served, idp, _) = setup("idp verify cost");
    let session = ed25519_identity(2);
    let login = login(&served, idp, 1, &session, None, None).await;
    let root_key = served.replica.root_key_der();
    let message = login.signed.delegation.signable();
    let verify = |root: &[u8], key: &[u8], msg: &[u8], sig: &[u8]| {
        let arg = Encode!(
            &ByteBuf::from(root.to_vec()),
            &ByteBuf::from(key.to_vec()),
            &ByteBuf::from(msg.to_vec()),
            &ByteBuf::from(sig.to_vec())
        )
        .unwrap();
        let reply = served
            .replica
            .query(idp, "verify_canister_sig", &arg, Principal::anonymous())
            .unwrap();
        Decode!(&reply, VerifyReport).unwrap()
    };
    let ok = verify(
        &root_key,
        &login.user_key,
        &message,
        &login.signed.signature,
    );
    assert_eq!(ok.result, Ok(()));
    let raw = verify(
        &root_key[37..],
        &login.user_key,
        &message,
        &login.signed.signature,
    );
    assert_eq!(raw.result, Ok(()));
    let bad = tamper_bls(&login.signed.signature);
    let tampered = verify(&root_key, &login.user_key, &message, &bad);
    assert!(
        tampered.result.as_ref().is_err_and(|e| e.contains("BLS")),
        "{:?}",
        tampered.result
    );
    // The worst case: everything valid but the pairing fails (another IC's root key).
    let other_root =
        ic_ws_replica::Replica::new(ReplicaConfig::with_seed("another IC")).root_key_der();
    let wrong_root = verify(
        &other_root,
        &login.user_key,
        &message,
        &login.signed.signature,
    );
    assert!(
        wrong_root.result.as_ref().is_err_and(|e| e.contains("BLS")),
        "{:?}",
        wrong_root.result
    );
    let other_msg = verify(
        &root_key,
        &login.user_key,
        b"other",
        &login.signed.signature,
    );
    assert!(other_msg.result.is_err());
    let garbage = verify(&root_key, &login.user_key, &message, &[0x81; 16 * 1024]);
    assert!(garbage.result.is_err());
    let delegated = delegated_signature();
    let via_subnet = verify(
        &delegated.root_key,
        &delegated.user_key,
        b"message",
        &delegated.signature,
    );
    assert_eq!(via_subnet.result, Ok(()));
    let excluded = verify(
        &delegated.root_key,
        &delegated.excluded_user_key,
        b"message",
        &delegated.excluded_signature,
    );
    assert!(
        excluded
            .result
            .as_ref()
            .is_err_and(|e| e.contains("canister ranges")),
        "{:?}",
        excluded.result
    );
    let arg = Encode!(
        &ByteBuf::from(delegated.root_key.clone()),
        &ByteBuf::from(delegated.user_key.clone()),
        &ByteBuf::from(b"message".to_vec()),
        &ByteBuf::from(delegated.signature.clone())
    )
    .unwrap();
    let reply = served
        .replica
        .query(
            idp,
            "verify_canister_sig_cached",
            &arg,
            Principal::anonymous(),
        )
        .unwrap();
    let (first, cached) = Decode!(&reply, VerifyReport, VerifyReport).unwrap();
    assert_eq!((&first.result, &cached.result), (&Ok(()), &Ok(())));
    println!(
        "canister_sig::verify instructions with a subnet delegation (mainnet's shape): valid {}, canister outside the ranges {}, signature {} bytes; with a DelegationCache: first {}, then {}",
        via_subnet.instructions,
        excluded.instructions,
        delegated.signature.len(),
        first.instructions,
        cached.instructions
    );
    // The cache saves the delegation's pairing: one pairing left.
    assert!(
        cached.instructions <= VERIFY_BUDGET,
        "{}",
        cached.instructions
    );
    assert!(cached.instructions < first.instructions * 6 / 10);
    assert!(
        via_subnet.instructions <= 2 * VERIFY_BUDGET,
        "{}",
        via_subnet.instructions
    );
    println!(
        "canister_sig::verify instructions: valid {} (raw root key {}), wrong root key {}, flipped BLS bit {}, other message {}, 16 KiB garbage {}, signature {} bytes",
        ok.instructions,
        raw.instructions,
        wrong_root.instructions,
        tampered.instructions,
        other_msg.instructions,
        garbage.instructions,
        login.signed.signature.len()
    );
    assert!(ok.instructions <= VERIFY_BUDGET, "{}", ok.instructions);
    assert!(tampered.instructions <= VERIFY_BUDGET);
    assert!(wrong_root.instructions <= VERIFY_BUDGET);
    // Refusals before the pairing are cheap.
    assert!(other_msg.instructions < ok.instructions / 10);
    assert!(garbage.instructions < ok.instructions / 10);
}

/// Many callers at once: the map holds at most 1,000 live signatures; expired ones are pruned
/// (64 per call at most) when a new one is prepared.
#[test]
fn the_signature_map_is_bounded_overall_and_pruned() {
    let start = now_ns();
    let replica = ic_ws_replica::Replica::new(
        ReplicaConfig::with_seed("idp global bound").manual_clock(start),
    );
    let idp = replica
        .create_and_install(idp_wasm(), &Encode!().unwrap())
        .unwrap();
    let prepare = |caller: u32, key: u32| {
        let arg = Encode!(
            &ByteBuf::from(key.to_be_bytes().to_vec()),
            &None::<u64>,
            &None::<Vec<Principal>>
        )
        .unwrap();
        let caller = Principal::self_authenticating(caller.to_be_bytes());
        let reply = replica
            .update(idp, "prepare_delegation", &arg, caller)
            .unwrap();
        Decode!(&reply, Result<Prepared, String>).unwrap()
    };
    let count = || {
        let reply = replica
            .query(
                idp,
                "signature_count",
                &Encode!().unwrap(),
                Principal::anonymous(),
            )
            .unwrap();
        Decode!(&reply, u64).unwrap()
    };
    for caller in 0..125 {
        for key in 0..8 {
            prepare(caller, key).unwrap();
        }
    }
    assert_eq!(count(), 1_000);
    let err = prepare(1_000, 0).unwrap_err();
    assert!(err.contains("too many"), "{err}");
    assert_eq!(count(), 1_000);
    // A minute later the oldest are pruned, a bounded number per call.
    replica.set_time_ns(start + 61_000_000_000);
    prepare(1_000, 0).unwrap();
    assert_eq!(count(), 1_000 - 64 + 1);
}
