//! Issue 10 end to end with real processes: the Rust client with an ic-agent identity
//! (secp256k1, and a delegated identity as Internet Identity hands a dapp, with a plain key at
//! the root), through the gateway process, to the test app in the embedded replica. The
//! canister's `on_open` sees the principal, `client_info` and `clients_of` have it, the client
//! checked it in the certified `Opened`, and it is kept when the client resumes through
//! another gateway after the first one dies, and across an upgrade.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use candid::Principal;
use ic_agent::identity::{
    BasicIdentity, DelegatedIdentity, Delegation, Identity, Secp256k1Identity, SignedDelegation,
};
use ic_ws_client::{Client, ClientConfig, Event};
use ic_ws_e2e::canister_harness::{ClientInfo, TEST_APP_PACKAGE};
use ic_ws_e2e::process::{GatewayOptions, GatewayProcess, TestNet};

fn query<R: candid::CandidType + serde::de::DeserializeOwned>(
    net: &TestNet,
    canister: Principal,
    method: &str,
    arg: Vec<u8>,
) -> R {
    let bytes = net
        .replica
        .query(canister, method, &arg, Principal::anonymous())
        .unwrap();
    candid::decode_one(&bytes).unwrap()
}

fn info(net: &TestNet, canister: Principal, id: u64) -> ClientInfo {
    let i: Option<ClientInfo> = query(
        net,
        canister,
        "app_client_info",
        candid::encode_one(id).unwrap(),
    );
    i.unwrap()
}

async fn connect(config: ClientConfig) -> Client {
    tokio::time::timeout(Duration::from_secs(60), Client::connect(config))
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

fn config(
    urls: &[String],
    canister: Principal,
    net: &TestNet,
    identity: Arc<dyn Identity>,
) -> ClientConfig {
    let mut c = ClientConfig::new(urls[0].clone(), canister)
        .with_root_key(net.root_key_der.clone())
        .with_open_args(candid::encode_one("identity e2e".to_string()).unwrap())
        .with_identity(identity);
    for u in &urls[1..] {
        c = c.with_fallback_gateway(u.clone());
    }
    c.backoff.initial = Duration::from_millis(50);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_identities_reach_on_open_and_survive_gateway_switch_and_upgrade() {
    let net = TestNet::start().unwrap();
    let canister = net
        .install(TEST_APP_PACKAGE, &candid::encode_args(()).unwrap())
        .unwrap();
    let mut gw1 = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let gw2 = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();

    // A secp256k1 identity and a delegated one (root Ed25519 key -> "dapp session" key).
    let k1: Arc<dyn Identity> = Arc::new(Secp256k1Identity::from_private_key(
        k256::SecretKey::from_slice(&[3; 32]).unwrap(),
    ));
    let root = BasicIdentity::from_raw_key(&[4; 32]);
    let dapp = BasicIdentity::from_raw_key(&[5; 32]);
    let delegation = Delegation {
        pubkey: dapp.public_key().unwrap(),
        expiration: net.replica.time_ns() + 3_600_000_000_000,
        targets: Some(vec![canister]),
        permissions: None,
    };
    let signature = root
        .sign_delegation(&delegation)
        .unwrap()
        .signature
        .unwrap();
    let delegated: Arc<dyn Identity> = Arc::new(DelegatedIdentity::new_unchecked(
        root.public_key().unwrap(),
        Box::new(dapp),
        vec![SignedDelegation {
            delegation,
            signature,
        }],
    ));

    let urls = vec![gw1.url(), gw2.url()];
    let mut alice = connect(config(&urls, canister, &net, k1.clone())).await;
    let bob = connect(config(&urls[1..], canister, &net, delegated.clone())).await;
    let (pa, pb) = (k1.sender().unwrap(), delegated.sender().unwrap());
    assert_eq!(alice.principal(), Some(pa));
    assert_eq!(bob.principal(), Some(pb));
    let (ida, idb) = (alice.client_id().unwrap(), bob.client_id().unwrap());
    let seen: Vec<(u64, Option<Principal>)> = query(
        &net,
        canister,
        "app_open_identities",
        candid::encode_args(()).unwrap(),
    );
    assert!(seen.contains(&(ida, Some(pa))), "{seen:?}");
    assert!(seen.contains(&(idb, Some(pb))), "{seen:?}");
    assert_eq!(info(&net, canister, ida).principal, Some(pa));
    let of_b: Vec<u64> = query(
        &net,
        canister,
        "app_clients_of",
        candid::encode_one(pb).unwrap(),
    );
    assert_eq!(of_b, vec![idb]);

    // Alice's gateway dies: she resumes through gateway 2; the resumed Opened (checked by her
    // client) and the canister keep her principal.
    let first_gateway = info(&net, canister, ida).gateway;
    gw1.kill();
    let resumed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match alice.next_event().await {
                Some(Event::Opened { resumed: true, .. }) => return true,
                Some(Event::Failed(e)) => panic!("alice failed: {e}"),
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(resumed);
    assert_eq!(alice.client_id(), Some(ida));
    assert_eq!(info(&net, canister, ida).principal, Some(pa));
    assert_ne!(info(&net, canister, ida).gateway, first_gateway);

    // Upgrade: both principals kept.
    net.upgrade(
        canister,
        TEST_APP_PACKAGE,
        &candid::encode_args((None::<bool>,)).unwrap(),
    )
    .unwrap();
    assert_eq!(info(&net, canister, ida).principal, Some(pa));
    assert_eq!(info(&net, canister, idb).principal, Some(pb));
    let of_a: Vec<u64> = query(
        &net,
        canister,
        "app_clients_of",
        candid::encode_one(pa).unwrap(),
    );
    assert_eq!(of_a, vec![ida]);
}

/// Connect latency (connect + certified `Opened`) with and without an identity, through one
/// gateway to the embedded replica: printed for BENCHMARKS.md, not asserted (wall clock).
///
/// `cargo test --workspace --locked --test gateway_identity connect_latency -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints wall-clock figures"]
async fn connect_latency_with_and_without_identity() {
    let net = TestNet::start().unwrap();
    let canister = net
        .install(TEST_APP_PACKAGE, &candid::encode_args(()).unwrap())
        .unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let urls = [gw.url()];
    let ed: Arc<dyn Identity> = Arc::new(BasicIdentity::from_raw_key(&[7; 32]));
    let k1: Arc<dyn Identity> = Arc::new(Secp256k1Identity::from_private_key(
        k256::SecretKey::from_slice(&[8; 32]).unwrap(),
    ));
    let mut anon = Vec::new();
    let mut with_ed = Vec::new();
    let mut with_k1 = Vec::new();
    for _ in 0..9 {
        for (samples, identity) in [
            (&mut anon, None),
            (&mut with_ed, Some(ed.clone())),
            (&mut with_k1, Some(k1.clone())),
        ] {
            let mut c = ClientConfig::new(urls[0].clone(), canister)
                .with_root_key(net.root_key_der.clone())
                .with_open_args(candid::encode_one("latency".to_string()).unwrap());
            c.identity = identity;
            let t = std::time::Instant::now();
            let client = connect(c).await;
            samples.push(t.elapsed());
            drop(client);
        }
    }
    for (name, s) in [
        ("anonymous", &mut anon),
        ("Ed25519 identity", &mut with_ed),
        ("secp256k1 identity", &mut with_k1),
    ] {
        s.sort();
        println!(
            "connect + certified Opened, {name}: median {:?}, min {:?}, max {:?} (9 samples)",
            s[4], s[0], s[8]
        );
    }
}

/// A tampering gateway moves Bob's identity proof into Alice's open (both through it): the
/// canister refuses that open (the open's signature covers the proof) and binds nothing; Alice's
/// client takes the refusal as uncertified, retries, and gets her own principal; nobody ever
/// holds a session bound to Bob's principal but Bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_swapping_proofs_between_clients_gets_nothing() {
    use ic_ws_e2e::tamper::{OutcomeAttack, TamperProxy};
    let net = TestNet::start().unwrap();
    let canister = net
        .install(TEST_APP_PACKAGE, &candid::encode_args(()).unwrap())
        .unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();
    let proxy = TamperProxy::start(&gw.url()).await.unwrap();
    let urls = [proxy.url().to_string()];
    let alice_id: Arc<dyn Identity> = Arc::new(BasicIdentity::from_raw_key(&[21; 32]));
    let bob_id: Arc<dyn Identity> = Arc::new(Secp256k1Identity::from_private_key(
        k256::SecretKey::from_slice(&[22; 32]).unwrap(),
    ));
    let bob = connect(config(&urls, canister, &net, bob_id.clone())).await;
    proxy.arm_next(OutcomeAttack::SwapIdentity);
    let alice = connect(config(&urls, canister, &net, alice_id.clone())).await;
    assert_eq!(
        proxy.outcomes_fired(),
        vec![(OutcomeAttack::SwapIdentity, None)],
        "the swap was carried out"
    );
    let (pa, pb) = (alice_id.sender().unwrap(), bob_id.sender().unwrap());
    assert_eq!(alice.principal(), Some(pa));
    let seen: Vec<(u64, Option<Principal>)> = query(
        &net,
        canister,
        "app_open_identities",
        candid::encode_args(()).unwrap(),
    );
    assert_eq!(
        seen,
        vec![
            (bob.client_id().unwrap(), Some(pb)),
            (alice.client_id().unwrap(), Some(pa))
        ],
        "on_open ran once per client, each with its own principal"
    );
    let of_b: Vec<u64> = query(
        &net,
        canister,
        "app_clients_of",
        candid::encode_one(pb).unwrap(),
    );
    assert_eq!(of_b, vec![bob.client_id().unwrap()]);
}

/// What the test identity provider's `prepare_delegation` returns (replica/test-idp).
#[derive(candid::CandidType, serde::Deserialize)]
struct Prepared {
    user_key: serde_bytes::ByteBuf,
    expiration: u64,
}

#[derive(candid::CandidType, serde::Deserialize)]
struct IdpDelegation {
    pubkey: serde_bytes::ByteBuf,
    expiration: u64,
    targets: Option<Vec<Principal>>,
}

#[derive(candid::CandidType, serde::Deserialize)]
enum GetDelegationResponse {
    #[serde(rename = "signed_delegation")]
    SignedDelegation {
        delegation: IdpDelegation,
        signature: serde_bytes::ByteBuf,
    },
    #[serde(rename = "no_such_delegation")]
    NoSuchDelegation,
}

/// Issue 10: an Internet Identity-style login used by the Rust client. Over HTTP with ic-agent
/// (as II's client does), a device identity asks the test identity provider to sign a
/// delegation from the user's canister-signature key to a dapp session key; the client gets
/// the resulting ic-agent `DelegatedIdentity`, extends it to its ws session key and opens
/// through the gateway. The app verifies the canister signature (certificate, witness, BLS)
/// under this network's root key and `on_open` sees the user's principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_idp_login_opens_with_the_users_principal() {
    use ic_ws_e2e::canister_harness::WsConfig;
    let net = TestNet::start().unwrap();
    let canister = net
        .install(TEST_APP_PACKAGE, &candid::encode_args(()).unwrap())
        .unwrap();
    let configured = net
        .replica
        .update(
            canister,
            "app_configure",
            &candid::encode_one(WsConfig {
                ic_root_key: Some(net.root_key_der.clone()),
                ..WsConfig::default()
            })
            .unwrap(),
            Principal::anonymous(),
        )
        .unwrap();
    candid::decode_one::<Result<(), String>>(&configured)
        .unwrap()
        .unwrap();
    let idp = net
        .install("ic-ws-replica-test-idp", &candid::encode_args(()).unwrap())
        .unwrap();
    let gw = GatewayProcess::start(GatewayOptions::new(&net, &[canister])).unwrap();

    let agent = ic_agent::Agent::builder()
        .with_url(&net.url)
        .with_identity(BasicIdentity::from_raw_key(&[31; 32]))
        .build()
        .unwrap();
    agent.fetch_root_key().await.unwrap();
    let session = BasicIdentity::from_raw_key(&[32; 32]);
    let session_key = serde_bytes::ByteBuf::from(session.public_key().unwrap());
    let targets = Some(vec![canister]);
    let reply = agent
        .update(&idp, "prepare_delegation")
        .with_arg(
            candid::encode_args((&session_key, Some(3_600_000_000_000u64), &targets)).unwrap(),
        )
        .call_and_wait()
        .await
        .unwrap();
    let prepared: Result<Prepared, String> = candid::decode_one(&reply).unwrap();
    let prepared = prepared.unwrap();
    let reply = agent
        .query(&idp, "get_delegation")
        .with_arg(candid::encode_args((&session_key, prepared.expiration, &targets)).unwrap())
        .call()
        .await
        .unwrap();
    let GetDelegationResponse::SignedDelegation {
        delegation,
        signature,
    } = candid::decode_one(&reply).unwrap()
    else {
        panic!("no delegation after prepare_delegation");
    };
    let user: Arc<dyn Identity> = Arc::new(DelegatedIdentity::new_unchecked(
        prepared.user_key.to_vec(),
        Box::new(session),
        vec![SignedDelegation {
            delegation: Delegation {
                pubkey: delegation.pubkey.into_vec(),
                expiration: delegation.expiration,
                targets: delegation.targets,
                permissions: None,
            },
            signature: signature.into_vec(),
        }],
    ));
    let principal = Principal::self_authenticating(&prepared.user_key);
    assert_eq!(user.sender().unwrap(), principal);

    let client = connect(config(&[gw.url()], canister, &net, user)).await;
    assert_eq!(
        client.principal(),
        Some(principal),
        "checked in the certified Opened"
    );
    let id = client.client_id().unwrap();
    let seen: Vec<(u64, Option<Principal>)> = query(
        &net,
        canister,
        "app_open_identities",
        candid::encode_args(()).unwrap(),
    );
    assert_eq!(seen, vec![(id, Some(principal))], "on_open saw the II user");
    assert_eq!(info(&net, canister, id).principal, Some(principal));
}
