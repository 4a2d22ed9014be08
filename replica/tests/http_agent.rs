//! The unmodified ic-agent 0.49 against the replica's HTTP interface, every verification on:
//! certified updates (sync and polled), node-signed queries, data certificates, and the
//! attacks the IC refuses (forged signatures, expired or replayed requests, stale certificates,
//! foreign request ids, delegation targets).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use candid::{Encode, Principal};
use common::*;
use ic_agent::agent::{CallResponse, RejectCode};
use ic_agent::hash_tree::{Label, LookupResult};
use ic_agent::identity::{DelegatedIdentity, Identity, Prime256v1Identity, Secp256k1Identity};
use ic_agent::{AgentError, Certificate};
use ic_transport_types::{Delegation, EnvelopeContent, SignedDelegation};
use ic_ws_replica::ReplicaConfig;

fn no_args() -> Vec<u8> {
    Encode!().unwrap()
}

/// A canister id inside the subnet's range that was never created.
fn unknown_canister() -> Principal {
    Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0x03, 0xe7, 1, 1])
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_update_returns_a_certified_reply() {
    let served = Served::new(ReplicaConfig::with_seed("sync update"));
    let canister = served.install_probe();
    let agent = served.agent(ed25519_identity(1)).await;

    // v4 call answered 200 with a certificate: no polling
    let response = agent
        .update(&canister, "inc")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
    let CallResponse::Response((reply, certificate)) = response else {
        panic!("expected a synchronous certified reply, got a request id to poll");
    };
    assert_eq!(counter(&reply), 1);
    agent.verify(&certificate, canister).unwrap();

    let reply = agent
        .update(&canister, "inc")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(counter(&reply), 2);
    assert_eq!(
        served.replica.certified_data(canister).unwrap(),
        2u64.to_le_bytes().to_vec()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_rounds_answer_202_and_the_agent_polls_read_state() {
    let config = ReplicaConfig {
        round_delay: Duration::from_millis(400),
        sync_call_timeout: Duration::from_millis(50),
        ..ReplicaConfig::with_seed("slow rounds")
    };
    let served = Served::new(config);
    let canister = served.install_probe();
    let agent = served.agent(ed25519_identity(2)).await;

    let start = Instant::now();
    let response = agent
        .update(&canister, "inc")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
    let CallResponse::Poll(request_id) = response else {
        panic!("a 400 ms round cannot finish within a 50 ms wait: expected 202");
    };
    let (reply, certificate) = agent.wait(&request_id, canister).await.unwrap();
    assert_eq!(counter(&reply), 1);
    agent.verify(&certificate, canister).unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "the round delay was not applied"
    );

    let reply = agent
        .update(&canister, "inc")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(counter(&reply), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_are_node_signed_and_see_the_caller() {
    let served = Served::new(ReplicaConfig::with_seed("queries"));
    let canister = served.install_probe();
    let identity = ed25519_identity(3);
    let me = identity.sender().unwrap();
    let agent = served.agent(identity).await; // verify_query_signatures is on by default

    let reply = agent
        .query(&canister, "whoami")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
    assert_eq!(candid::decode_one::<Principal>(&reply).unwrap(), me);
    agent
        .update(&canister, "inc")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap();
    let reply = agent
        .query(&canister, "get")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
    assert_eq!(counter(&reply), 1);

    // the raw response: one signature, by the node published in the state tree
    let content = query_content(Principal::anonymous(), canister, "get", no_args());
    let (status, body) = served
        .post(
            &format!("/api/v3/canister/{canister}/query"),
            envelope(&content, None, None),
        )
        .await;
    assert_eq!(status, 200);
    let response: ic_transport_types::QueryResponse = serde_cbor::from_slice(&body).unwrap();
    assert_eq!(response.signatures().len(), 1);
    let signature = &response.signatures()[0];
    assert_eq!(signature.identity, served.replica.node_id());
    let node_key = agent
        .read_state_raw(
            vec![vec![
                Label::from("subnet"),
                Label::from_bytes(served.replica.subnet_id().as_slice()),
                Label::from("node"),
                Label::from_bytes(signature.identity.as_slice()),
                Label::from("public_key"),
            ]],
            canister,
        )
        .await
        .unwrap();
    let subnet_id = served.replica.subnet_id();
    let path = [
        b"subnet".as_ref(),
        subnet_id.as_slice(),
        b"node",
        signature.identity.as_slice(),
        b"public_key",
    ];
    let LookupResult::Found(der) = node_key.tree.lookup_path(path) else {
        panic!("node key not certified");
    };
    let key = ic_ed25519::PublicKey::deserialize_rfc8410_der(der).unwrap();
    let signable = response.signable(content.to_request_id(), signature.timestamp);
    key.verify_signature(&signable, &signature.signature)
        .unwrap();
    let mut forged = signable.clone();
    forged[20] ^= 1;
    assert!(key.verify_signature(&forged, &signature.signature).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn data_certificate_seen_by_a_query_verifies_against_the_root_key() {
    let served = Served::new(ReplicaConfig::with_seed("data certificate"));
    let canister = served.install_probe();
    let agent = served.anonymous_agent().await;
    for _ in 0..3 {
        agent
            .update(&canister, "inc")
            .with_arg(no_args())
            .call_and_wait()
            .await
            .unwrap();
    }
    let bytes = agent
        .query(&canister, "data_certificate")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
    assert!(!bytes.is_empty(), "queries must see a data certificate");
    let certificate: Certificate = serde_cbor::from_slice(&bytes).unwrap();
    agent.verify(&certificate, canister).unwrap();
    let path = [b"canister".as_ref(), canister.as_slice(), b"certified_data"];
    assert_eq!(
        certificate.tree.lookup_path(path),
        LookupResult::Found(&3u64.to_le_bytes()[..])
    );

    // a certificate claiming another certified value does not verify
    let forged_bytes = {
        let mut forged = bytes.clone();
        let at = forged
            .windows(8)
            .position(|w| w == 3u64.to_le_bytes())
            .unwrap();
        forged[at] = 9;
        forged
    };
    let forged: Certificate = serde_cbor::from_slice(&forged_bytes).unwrap();
    assert!(agent.verify(&forged, canister).is_err());

    // the Rust API hands out the same kind of certificate
    let direct: Certificate =
        serde_cbor::from_slice(&served.replica.data_certificate(canister).unwrap()).unwrap();
    agent.verify(&direct, canister).unwrap();
    // and a certificate from another replica's key is refused by this agent
    let other = ic_ws_replica::Replica::new(ReplicaConfig::with_seed("another root"));
    let foreign: Certificate = serde_cbor::from_slice(&other.state_certificate(&[])).unwrap();
    assert!(agent.verify(&foreign, canister).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_certificates_and_signatures_are_rejected_by_the_agent() {
    // The replica's clock is two minutes behind; the agent accepts at most 30 s old answers.
    let two_minutes_ago = now_ns() - 120_000_000_000;
    let served = Served::new(ReplicaConfig::with_seed("stale").manual_clock(two_minutes_ago));
    let canister = served.install_probe();
    let agent = ic_agent::Agent::builder()
        .with_url(served.url())
        .with_ingress_expiry(Duration::from_secs(30))
        .build()
        .unwrap();
    agent.fetch_root_key().await.unwrap();

    let err = agent
        .update(&canister, "inc")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::CertificateOutdated(_)), "{err:?}");
    let err = agent
        .query(&canister, "get")
        .with_arg(no_args())
        .call()
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::CertificateOutdated(_)), "{err:?}");

    // the same requests pass once the replica's clock is current
    served.replica.set_time_ns(now_ns());
    let reply = agent
        .update(&canister, "inc")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(
        counter(&reply),
        2,
        "the first (stale-certified) update did execute"
    );
    agent
        .query(&canister, "get")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_sender_signatures_are_refused_and_change_nothing() {
    let served = Served::new(ReplicaConfig::with_seed("forgery"));
    let canister = served.install_probe();
    let victim = ed25519_identity(10);
    let mallory = ed25519_identity(11);
    let victim_principal = victim.sender().unwrap();
    let path = format!("/api/v4/canister/{canister}/call");

    let content = call_content(
        victim_principal,
        canister,
        "inc",
        no_args(),
        in_two_minutes(),
    );
    // mallory's signature presented with the victim's public key
    let mallory_sig = mallory.sign(&content).unwrap().signature.unwrap();
    let body = envelope(
        &content,
        Some(victim.public_key().unwrap()),
        Some(mallory_sig),
    );
    let (status, reason) = served.post(&path, body).await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&reason).contains("Invalid signature"),
        "{}",
        String::from_utf8_lossy(&reason)
    );

    // the victim's real signature over a different request
    let other = call_content(
        victim_principal,
        canister,
        "boom",
        no_args(),
        in_two_minutes(),
    );
    let victim_sig_for_other = victim.sign(&other).unwrap().signature.unwrap();
    let body = envelope(
        &content,
        Some(victim.public_key().unwrap()),
        Some(victim_sig_for_other),
    );
    assert_eq!(served.post(&path, body).await.0, 400);

    // mallory's own key cannot claim to be the victim
    let body = signed(&content, &mallory);
    assert_eq!(served.post(&path, body).await.0, 400);

    assert_eq!(
        served.replica.certified_data(canister).unwrap(),
        Vec::<u8>::new(),
        "nothing executed"
    );
    // and the genuine request goes through
    let (status, _) = served.post(&path, signed(&content, &victim)).await;
    assert_eq!(status, 200);
    assert_eq!(
        served.replica.certified_data(canister).unwrap(),
        1u64.to_le_bytes().to_vec()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_ingress_is_refused() {
    let served = Served::new(ReplicaConfig::with_seed("expiry"));
    let canister = served.install_probe();
    let agent = served.anonymous_agent().await;
    let past = std::time::SystemTime::now() - Duration::from_secs(10);
    for err in [
        agent
            .update(&canister, "inc")
            .with_arg(no_args())
            .expire_at(past)
            .call_and_wait()
            .await
            .unwrap_err(),
        agent
            .query(&canister, "get")
            .with_arg(no_args())
            .expire_at(past)
            .call()
            .await
            .unwrap_err(),
    ] {
        let AgentError::HttpError(payload) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(payload.status, 400);
        assert!(String::from_utf8_lossy(&payload.content).contains("expiry"));
    }
    assert_eq!(
        served.replica.certified_data(canister).unwrap(),
        Vec::<u8>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_call_executes_once() {
    let served = Served::new(ReplicaConfig::with_seed("replay"));
    let canister = served.install_probe();
    let identity = ed25519_identity(20);
    let content = call_content(
        identity.sender().unwrap(),
        canister,
        "inc",
        no_args(),
        in_two_minutes(),
    );
    let body = signed(&content, &identity);
    for version in ["v4", "v3", "v2"] {
        let (status, _) = served
            .post(
                &format!("/api/{version}/canister/{canister}/call"),
                body.clone(),
            )
            .await;
        assert!(status == 200 || status == 202, "{version}: {status}");
    }
    assert_eq!(
        served.replica.certified_data(canister).unwrap(),
        1u64.to_le_bytes().to_vec()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_status_is_only_readable_by_its_sender() {
    let served = Served::new(ReplicaConfig::with_seed("read_state auth"));
    let canister = served.install_probe();
    let alice = ed25519_identity(30);
    let content = call_content(
        alice.sender().unwrap(),
        canister,
        "inc",
        no_args(),
        in_two_minutes(),
    );
    let request_id = content.to_request_id();
    assert_eq!(
        served
            .post(
                &format!("/api/v4/canister/{canister}/call"),
                signed(&content, &alice)
            )
            .await
            .0,
        200
    );

    let paths = vec![vec![
        Label::from("request_status"),
        Label::from_bytes(request_id.as_slice()),
    ]];
    let alice_agent = served.agent(alice).await;
    let cert = alice_agent
        .read_state_raw(paths.clone(), canister)
        .await
        .unwrap();
    let status =
        cert.tree
            .lookup_path([b"request_status".as_ref(), request_id.as_slice(), b"status"]);
    assert_eq!(status, LookupResult::Found(b"replied".as_ref()));

    let bob_agent = served.agent(ed25519_identity(31)).await;
    let err = bob_agent.read_state_raw(paths, canister).await.unwrap_err();
    let AgentError::HttpError(payload) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(payload.status, 403);

    // an id never seen looks up as Absent, so agents keep polling
    let unknown = [7u8; 32];
    let paths = vec![vec![
        Label::from("request_status"),
        Label::from_bytes(&unknown),
    ]];
    let cert = bob_agent.read_state_raw(paths, canister).await.unwrap();
    let status = cert
        .tree
        .lookup_path([b"request_status".as_ref(), &unknown[..], b"status"]);
    assert_eq!(status, LookupResult::Absent);
}

#[tokio::test(flavor = "multi_thread")]
async fn ecdsa_and_delegated_senders_are_authenticated() {
    let served = Served::new(ReplicaConfig::with_seed("key types"));
    let canister = served.install_probe();
    let whoami = |agent: ic_agent::Agent| async move {
        let reply = agent
            .update(&canister, "inc")
            .with_arg(no_args())
            .call_and_wait()
            .await?;
        assert!(counter(&reply) > 0);
        let reply = agent
            .query(&canister, "whoami")
            .with_arg(no_args())
            .call()
            .await?;
        Ok::<Principal, AgentError>(candid::decode_one(&reply).unwrap())
    };

    let k256_identity =
        Secp256k1Identity::from_private_key(k256::SecretKey::from_slice(&[5u8; 32]).unwrap());
    let expected = k256_identity.sender().unwrap();
    assert_eq!(
        whoami(served.agent(k256_identity).await).await.unwrap(),
        expected
    );

    let p256_identity =
        Prime256v1Identity::from_private_key(p256::SecretKey::from_slice(&[6u8; 32]).unwrap());
    let expected = p256_identity.sender().unwrap();
    assert_eq!(
        whoami(served.agent(p256_identity).await).await.unwrap(),
        expected
    );

    // a delegation from a root key to a session key, restricted to this canister
    let delegated = |targets: Vec<Principal>, expiration: u64| {
        let root = ed25519_identity(40);
        let session = ed25519_identity(41);
        let delegation = Delegation {
            pubkey: session.public_key().unwrap(),
            expiration,
            targets: Some(targets),
            permissions: None,
        };
        let signature = root
            .sign_delegation(&delegation)
            .unwrap()
            .signature
            .unwrap();
        DelegatedIdentity::new_unchecked(
            root.public_key().unwrap(),
            Box::new(session),
            vec![SignedDelegation {
                delegation,
                signature,
            }],
        )
    };
    let root_principal = ed25519_identity(40).sender().unwrap();
    let allowed = delegated(vec![canister], now_ns() + 600_000_000_000);
    assert_eq!(
        whoami(served.agent(allowed).await).await.unwrap(),
        root_principal
    );

    let elsewhere = delegated(vec![unknown_canister()], now_ns() + 600_000_000_000);
    let err = whoami(served.agent(elsewhere).await).await.unwrap_err();
    let AgentError::HttpError(payload) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(payload.status, 400);
    assert!(String::from_utf8_lossy(&payload.content).contains("targets"));

    let expired = delegated(vec![canister], now_ns() - 1);
    let err = whoami(served.agent(expired).await).await.unwrap_err();
    assert!(
        matches!(&err, AgentError::HttpError(p) if p.status == 400),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn canister_metadata_is_certified_through_read_state() {
    let served = Served::new(ReplicaConfig::with_seed("metadata"));
    let canister = served.install_probe();
    let agent = served.anonymous_agent().await;
    let hash = agent
        .read_state_canister_module_hash(canister)
        .await
        .unwrap();
    use sha2::Digest;
    assert_eq!(hash, sha2::Sha256::digest(probe_wasm()).to_vec());
    let controllers = agent
        .read_state_canister_controllers(canister)
        .await
        .unwrap();
    assert_eq!(controllers, vec![Principal::anonymous()]);

    // canister paths must name the effective canister
    let other = unknown_canister();
    let err = agent
        .read_state_raw(
            vec![vec![
                Label::from("canister"),
                Label::from_bytes(other.as_slice()),
                Label::from("module_hash"),
            ]],
            canister,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::HttpError(p) if p.status == 400),
        "{err:?}"
    );
}

/// `module` with a custom section `name` holding `data` appended (wasm allows custom sections
/// anywhere).
fn with_custom_section(mut module: Vec<u8>, name: &str, data: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(data);
    module.push(0);
    leb(body.len(), &mut module);
    module.extend(body);
    module
}

#[tokio::test(flavor = "multi_thread")]
async fn canister_metadata_sections_are_served_public_to_anyone_private_to_controllers() {
    let served = Served::new(ReplicaConfig::with_seed("metadata sections"));
    let did = b"service : { get : () -> (nat64) query }".to_vec();
    let wasm = with_custom_section(probe_wasm(), "icp:public candid:service", &did);
    let wasm = with_custom_section(wasm, "icp:private secret", b"for controllers");
    let canister = served.replica.create_and_install(&wasm, &[]).unwrap();
    // The controller (anonymous, as create_and_install sets it) reads both, certified.
    let controller = served.anonymous_agent().await;
    assert_eq!(
        controller
            .read_state_canister_metadata(canister, "candid:service")
            .await
            .unwrap(),
        did
    );
    assert_eq!(
        controller
            .read_state_canister_metadata(canister, "secret")
            .await
            .unwrap(),
        b"for controllers".to_vec()
    );
    // Anyone reads the public one; the private one is refused to a stranger.
    let stranger = served.agent(ed25519_identity(7)).await;
    assert_eq!(
        stranger
            .read_state_canister_metadata(canister, "candid:service")
            .await
            .unwrap(),
        did
    );
    let err = stranger
        .read_state_canister_metadata(canister, "secret")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::HttpError(p) if p.status == 403),
        "{err:?}"
    );
    // Nor through a wider path that would carry the whole metadata subtree.
    for path in [
        vec![
            Label::from("canister"),
            Label::from_bytes(canister.as_slice()),
        ],
        vec![
            Label::from("canister"),
            Label::from_bytes(canister.as_slice()),
            Label::from("metadata"),
        ],
    ] {
        let err = stranger
            .read_state_raw(vec![path.clone()], canister)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AgentError::HttpError(p) if p.status == 403),
            "{path:?}: {err:?}"
        );
        controller
            .read_state_raw(vec![path], canister)
            .await
            .unwrap();
    }
    // A name the module does not declare is absent.
    assert!(controller
        .read_state_canister_metadata(canister, "candid:args")
        .await
        .is_err());
    // An upgrade to a module without sections takes them away.
    served
        .replica
        .upgrade(canister, &probe_wasm(), &[])
        .unwrap();
    assert!(stranger
        .read_state_canister_metadata(canister, "candid:service")
        .await
        .is_err());
    // A module declaring a name twice is not installed.
    let twice = with_custom_section(
        with_custom_section(probe_wasm(), "icp:public x", b"1"),
        "icp:private x",
        b"2",
    );
    let err = served.replica.create_and_install(&twice, &[]).unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_answered_while_another_client_keeps_being_served() {
    let served = Served::new(ReplicaConfig::with_seed("errors"));
    let canister = served.install_probe();

    // a well-behaved client running the whole time
    let busy_agent = served.agent(ed25519_identity(50)).await;
    let busy = tokio::spawn(async move {
        let mut last = 0;
        for _ in 0..40 {
            last = counter(
                &busy_agent
                    .update(&canister, "inc")
                    .with_arg(no_args())
                    .call_and_wait()
                    .await
                    .unwrap(),
            );
            busy_agent
                .query(&canister, "get")
                .with_arg(no_args())
                .call()
                .await
                .unwrap();
        }
        last
    });

    let agent = served.anonymous_agent().await;
    for _ in 0..5 {
        let err = agent
            .update(&unknown_canister(), "inc")
            .with_arg(no_args())
            .call_and_wait()
            .await
            .unwrap_err();
        let AgentError::UncertifiedReject { reject, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(reject.reject_code, RejectCode::DestinationInvalid);
        assert_eq!(reject.error_code.as_deref(), Some("IC0301"));

        let err = agent
            .query(&unknown_canister(), "get")
            .with_arg(no_args())
            .call()
            .await
            .unwrap_err();
        let AgentError::UncertifiedReject { reject, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(reject.error_code.as_deref(), Some("IC0301"));

        let err = agent
            .query(&canister, "nope")
            .with_arg(no_args())
            .call()
            .await
            .unwrap_err();
        let AgentError::UncertifiedReject { reject, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(reject.reject_code, RejectCode::DestinationInvalid);
        assert_eq!(reject.error_code.as_deref(), Some("IC0302"));

        let err = agent
            .update(&canister, "nope")
            .with_arg(no_args())
            .call_and_wait()
            .await
            .unwrap_err();
        let AgentError::CertifiedReject { reject, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(reject.error_code.as_deref(), Some("IC0302"));

        let err = agent
            .update(&canister, "boom")
            .with_arg(no_args())
            .call_and_wait()
            .await
            .unwrap_err();
        let AgentError::CertifiedReject { reject, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(reject.reject_code, RejectCode::CanisterError);
        assert!(
            reject.reject_message.contains("probe trapped on purpose"),
            "{}",
            reject.reject_message
        );

        let path = format!("/api/v3/canister/{canister}/query");
        assert_eq!(
            served.post(&path, b"\xa1\x67content\xf6".to_vec()).await.0,
            400
        );
        assert_eq!(served.post(&path, vec![0x9f; 100_000]).await.0, 400);
        assert_eq!(
            served.post(&path, vec![0x41; 2 * 1024 * 1024 + 1]).await.0,
            413
        );
    }
    assert_eq!(busy.await.unwrap(), 40);
    let reply = agent
        .query(&canister, "get")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
    assert_eq!(
        counter(&reply),
        40,
        "only the well-behaved client's updates executed"
    );
}

#[test]
fn rust_api_calls_and_time() {
    let replica = ic_ws_replica::Replica::new(
        ReplicaConfig::with_seed("rust api").manual_clock(1_700_000_000_000_000_000),
    );
    let canister = replica.create_and_install(&probe_wasm(), &[]).unwrap();
    let caller = Principal::from_slice(&[9; 29]);
    let reply = replica.update(canister, "inc", &no_args(), caller).unwrap();
    assert_eq!(counter(&reply), 1);
    let reply = replica
        .query(canister, "whoami", &no_args(), caller)
        .unwrap();
    assert_eq!(candid::decode_one::<Principal>(&reply).unwrap(), caller);
    assert!(replica.last_instructions() > 0);

    // the data certificate a query sees carries the replica's time and the certified counter
    let cert_bytes = replica
        .query(canister, "data_certificate", &no_args(), caller)
        .unwrap();
    let cert: Certificate = serde_cbor::from_slice(&cert_bytes).unwrap();
    assert_eq!(
        cert.tree
            .lookup_path([b"canister".as_ref(), canister.as_slice(), b"certified_data"]),
        LookupResult::Found(&1u64.to_le_bytes()[..])
    );
    assert_eq!(replica.time_ns(), 1_700_000_000_000_000_000);
    replica.advance_time(Duration::from_secs(2));
    assert_eq!(replica.time_ns(), 1_700_000_002_000_000_000);
    let cert: Certificate = serde_cbor::from_slice(&replica.state_certificate(&[])).unwrap();
    let LookupResult::Found(time) = cert.tree.lookup_path([b"time".as_ref()]) else {
        panic!()
    };
    let mut decoded = 0u64;
    for (i, b) in time.iter().enumerate() {
        decoded |= u64::from(b & 0x7f) << (7 * i);
    }
    assert_eq!(decoded, 1_700_000_002_000_000_000);

    // a trap is a reject with the IC's code, and rolls back
    let reject = replica
        .update(canister, "boom", &no_args(), caller)
        .unwrap_err();
    assert_eq!(reject.code, ic_ws_replica::RejectCode::CanisterError);
    assert_eq!(
        replica.certified_data(canister).unwrap(),
        1u64.to_le_bytes().to_vec()
    );

    // queries never change state and reuse the signed state
    let before = replica.signatures_made();
    for _ in 0..20 {
        replica.query(canister, "get", &no_args(), caller).unwrap();
    }
    assert!(
        replica.signatures_made() <= before + 1,
        "queries must not re-sign every time"
    );

    // upgrades keep the canister (the probe has no stable state, so the counter restarts)
    replica.upgrade(canister, &probe_wasm(), &[]).unwrap();
    assert!(replica.module_hash(canister).is_some());
    assert!(!replica.canister_exists(unknown_canister()));
    let reject = replica
        .query(unknown_canister(), "get", &no_args(), caller)
        .unwrap_err();
    assert_eq!(reject.error_code.as_deref(), Some("IC0301"));
}

#[tokio::test(flavor = "multi_thread")]
async fn inspect_message_and_empty_canisters_refuse_before_execution() {
    let served = Served::new(ReplicaConfig::with_seed("inspect"));
    let canister = served.install_probe();
    let agent = served.anonymous_agent().await;

    let err = agent
        .update(&canister, "refused")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap_err();
    let AgentError::UncertifiedReject { reject, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(reject.reject_code, RejectCode::CanisterReject);
    assert!(reject.error_code.is_some());
    // v2: 200 with the reject map instead of 202
    let content = call_content(
        Principal::anonymous(),
        canister,
        "refused",
        no_args(),
        in_two_minutes(),
    );
    let (status, body) = served
        .post(
            &format!("/api/v2/canister/{canister}/call"),
            envelope(&content, None, None),
        )
        .await;
    assert_eq!(status, 200);
    let reject: ic_transport_types::RejectResponse = serde_cbor::from_slice(&body).unwrap();
    assert_eq!(reject.reject_code, RejectCode::CanisterReject);
    // inspect_message is not run for queries, and accepted updates execute
    assert_eq!(
        counter(
            &agent
                .update(&canister, "inc")
                .with_arg(no_args())
                .call_and_wait()
                .await
                .unwrap()
        ),
        1
    );

    let empty = served.replica.create_canister(vec![Principal::anonymous()]);
    let err = agent
        .update(&empty, "inc")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::UncertifiedReject { .. }),
        "{err:?}"
    );
    let err = agent
        .query(&empty, "get")
        .with_arg(no_args())
        .call()
        .await
        .unwrap_err();
    let AgentError::UncertifiedReject { reject, .. } = &err else {
        panic!("{err:?}")
    };
    assert_ne!(
        reject.error_code.as_deref(),
        Some("IC0302"),
        "an empty canister is not a missing method"
    );
    // the empty canister has no module hash in the state tree
    let err = agent
        .read_state_canister_module_hash(empty)
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::LookupPathAbsent(_)), "{err:?}");
}

/// The same checks with a real ic-cdk canister (stable structures, candid, inspect_message).
#[tokio::test(flavor = "multi_thread")]
async fn ic_cdk_test_canister_through_the_agent() {
    let served = Served::new(ReplicaConfig::with_seed("ic-cdk canister"));
    let canister = served.install_test_canister();
    let identity = ed25519_identity(60);
    let me = identity.sender().unwrap();
    let agent = served.agent(identity).await;

    let reply = agent
        .update(&canister, "put")
        .with_arg(Encode!(&1u64, &"one".to_string()).unwrap())
        .call_and_wait()
        .await
        .unwrap();
    let len = candid::decode_one::<u64>(&reply).unwrap();
    let reply = agent
        .query(&canister, "get")
        .with_arg(Encode!(&1u64).unwrap())
        .call()
        .await
        .unwrap();
    assert_eq!(
        candid::decode_one::<Option<String>>(&reply)
            .unwrap()
            .as_deref(),
        Some("one")
    );
    let reply = agent
        .query(&canister, "whoami")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
    assert_eq!(candid::decode_one::<Principal>(&reply).unwrap(), me);

    let reply = agent
        .query(&canister, "certificate")
        .with_arg(no_args())
        .call()
        .await
        .unwrap();
    let bytes = candid::decode_one::<Option<Vec<u8>>>(&reply)
        .unwrap()
        .expect("a query sees a data certificate");
    let certificate: Certificate = serde_cbor::from_slice(&bytes).unwrap();
    agent.verify(&certificate, canister).unwrap();
    let path = [b"canister".as_ref(), canister.as_slice(), b"certified_data"];
    assert_eq!(
        certificate.tree.lookup_path(path),
        LookupResult::Found(&len.to_be_bytes()[..])
    );

    let err = agent
        .update(&canister, "forbidden")
        .with_arg(no_args())
        .call_and_wait()
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::UncertifiedReject { .. }),
        "{err:?}"
    );
}

/// With the real clock, background rounds fire canister timers without anyone calling tick
/// (what the CLI and the demo rely on).
#[tokio::test(flavor = "multi_thread")]
async fn timers_fire_in_background_rounds_with_the_real_clock() {
    #[derive(candid::CandidType, candid::Deserialize)]
    struct State {
        ticks: u64,
    }
    let served = Served::new(ReplicaConfig::with_seed("timers"));
    let canister = served.install_test_canister();
    let agent = served.anonymous_agent().await;
    agent
        .update(&canister, "start_interval")
        .with_arg(Encode!(&1u64).unwrap())
        .call_and_wait()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = agent
            .query(&canister, "state")
            .with_arg(no_args())
            .call()
            .await
            .unwrap();
        let state = candid::decode_one::<State>(&reply).unwrap();
        if state.ticks >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a 1 s interval timer fired {} times in 10 s",
            state.ticks
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Request statuses are kept while a replay could still pass the expiry check, then pruned;
/// a replayed envelope never executes twice, before or after pruning.
#[tokio::test(flavor = "multi_thread")]
async fn replays_stay_refused_after_request_statuses_are_pruned() {
    let start = now_ns();
    let served = Served::new(ReplicaConfig::with_seed("pruning").manual_clock(start));
    let canister = served.install_probe();
    let alice = ed25519_identity(70);
    let minutes = |m: u64| m * 60_000_000_000;
    let call_path = format!("/api/v4/canister/{canister}/call");
    let status_of = |rid: ic_agent::RequestId, expiry: u64| {
        let content = EnvelopeContent::ReadState {
            ingress_expiry: expiry,
            sender: alice.sender().unwrap(),
            paths: vec![vec![
                Label::from("request_status"),
                Label::from_bytes(rid.as_slice()),
            ]],
        };
        signed(&content, &alice)
    };

    let first = call_content(
        alice.sender().unwrap(),
        canister,
        "inc",
        no_args(),
        start + minutes(2),
    );
    let body = signed(&first, &alice);
    assert_eq!(served.post(&call_path, body.clone()).await.0, 200);
    assert_eq!(
        served.post(&call_path, body.clone()).await.0,
        200,
        "a replay within expiry is answered from history"
    );
    assert_eq!(
        served.replica.certified_data(canister).unwrap(),
        1u64.to_le_bytes().to_vec()
    );

    // four minutes later the first request has expired: replaying it is refused outright
    served
        .replica
        .advance_time(Duration::from_nanos(minutes(4)));
    let (status, reason) = served.post(&call_path, body).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&reason));
    // a new request prunes the old status; it then looks up as Absent
    let second = call_content(
        alice.sender().unwrap(),
        canister,
        "inc",
        no_args(),
        start + minutes(6),
    );
    assert_eq!(
        served.post(&call_path, signed(&second, &alice)).await.0,
        200
    );
    let read_path = format!("/api/v3/canister/{canister}/read_state");
    let (status, body) = served
        .post(
            &read_path,
            status_of(first.to_request_id(), start + minutes(6)),
        )
        .await;
    assert_eq!(status, 200);
    let response: ic_transport_types::ReadStateResponse = serde_cbor::from_slice(&body).unwrap();
    let cert: Certificate = serde_cbor::from_slice(&response.certificate).unwrap();
    let old = cert.tree.lookup_path([
        b"request_status".as_ref(),
        first.to_request_id().as_slice(),
        b"status",
    ]);
    assert_eq!(old, LookupResult::Absent);
    assert_eq!(
        served.replica.certified_data(canister).unwrap(),
        2u64.to_le_bytes().to_vec()
    );
}
