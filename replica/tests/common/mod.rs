//! Shared helpers of the replica's integration tests: a served replica with the test canister,
//! agents, raw envelopes.
#![allow(dead_code, clippy::unwrap_used)]

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use candid::Principal;
use ic_agent::identity::{AnonymousIdentity, BasicIdentity, Identity};
use ic_agent::Agent;
use ic_transport_types::{Envelope, EnvelopeContent};
use ic_ws_replica::{Replica, ReplicaConfig, ServerHandle};

/// The hand-written "probe" canister (tests/common/probe.wat): `inc` (update, certifies the
/// counter), `get`, `whoami`, `data_certificate` (queries), `boom` (traps), `refused` (an
/// update its `canister_inspect_message` refuses).
pub fn probe_wasm() -> Vec<u8> {
    wat::parse_str(include_str!("probe.wat")).expect("probe.wat parses")
}

/// Decodes the probe's candid nat64 counter.
pub fn counter(reply: &[u8]) -> u64 {
    candid::decode_one(reply).unwrap()
}

/// The test canister's wasm, built once per test process.
pub fn test_wasm() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        ic_ws_replica::wasm_build::build_canister_wasm("ic-ws-replica-test-canister")
            .expect("build the test canister")
    })
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A replica serving HTTP on a free loopback port.
pub struct Served {
    pub replica: Replica,
    pub server: ServerHandle,
}

impl Served {
    pub fn new(config: ReplicaConfig) -> Self {
        let replica = Replica::new(config);
        let server = replica.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        Served { replica, server }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Installs the Rust test canister (ic-cdk; init greeting left to its default).
    pub fn install_test_canister(&self) -> Principal {
        self.replica
            .create_and_install(test_wasm(), &candid::encode_one(None::<String>).unwrap())
            .unwrap()
    }

    /// Installs the probe canister.
    pub fn install_probe(&self) -> Principal {
        self.replica.create_and_install(&probe_wasm(), &[]).unwrap()
    }

    /// An ic-agent with every verification on, root key fetched from `/api/v2/status`.
    pub async fn agent(&self, identity: impl Identity + 'static) -> Agent {
        let agent = Agent::builder()
            .with_url(self.url())
            .with_identity(identity)
            .build()
            .unwrap();
        agent.fetch_root_key().await.unwrap();
        agent
    }

    pub async fn anonymous_agent(&self) -> Agent {
        self.agent(AnonymousIdentity).await
    }

    pub async fn post(&self, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.url()))
            .header("content-type", "application/cbor")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    }
}

pub fn ed25519_identity(seed: u8) -> BasicIdentity {
    BasicIdentity::from_raw_key(&[seed; 32])
}

/// Serializes an envelope exactly as agents do (self-describing CBOR).
pub fn envelope(
    content: &EnvelopeContent,
    pubkey: Option<Vec<u8>>,
    sig: Option<Vec<u8>>,
) -> Vec<u8> {
    Envelope {
        content: Cow::Borrowed(content),
        sender_pubkey: pubkey,
        sender_sig: sig,
        sender_delegation: None,
    }
    .encode_bytes()
}

/// A correctly signed envelope from an ic-agent identity.
pub fn signed(content: &EnvelopeContent, identity: &dyn Identity) -> Vec<u8> {
    let signature = identity.sign(content).unwrap();
    Envelope {
        content: Cow::Borrowed(content),
        sender_pubkey: signature.public_key,
        sender_sig: signature.signature,
        sender_delegation: signature.delegations,
    }
    .encode_bytes()
}

pub fn call_content(
    sender: Principal,
    canister: Principal,
    method: &str,
    arg: Vec<u8>,
    expiry: u64,
) -> EnvelopeContent {
    EnvelopeContent::Call {
        nonce: Some(now_ns().to_be_bytes().to_vec()),
        ingress_expiry: expiry,
        sender,
        canister_id: canister,
        method_name: method.into(),
        arg,
        sender_info: None,
    }
}

pub fn query_content(
    sender: Principal,
    canister: Principal,
    method: &str,
    arg: Vec<u8>,
) -> EnvelopeContent {
    EnvelopeContent::Query {
        ingress_expiry: now_ns() + Duration::from_secs(120).as_nanos() as u64,
        sender,
        canister_id: canister,
        method_name: method.into(),
        arg,
        nonce: None,
        sender_info: None,
    }
}

pub fn in_two_minutes() -> u64 {
    now_ns() + Duration::from_secs(120).as_nanos() as u64
}
