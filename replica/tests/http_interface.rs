//! The HTTP interface's answers to requests that need no canister code: status, CORS, routing,
//! malformed and oversized bodies, expiry and `/time` reads through the real ic-agent.
#![allow(clippy::unwrap_used)]

mod common;

use candid::Principal;
use common::*;
use ic_agent::hash_tree::{Label, LookupResult};
use ic_ws_replica::ReplicaConfig;

#[tokio::test]
async fn fetch_root_key_gets_the_replicas_own_key() {
    let served = Served::new(ReplicaConfig::with_seed("root key test"));
    let agent = served.anonymous_agent().await;
    assert_eq!(agent.read_root_key(), served.replica.root_key_der());
    assert_eq!(served.replica.root_key_der().len(), 133);
    // a fixed seed reproduces the key; another seed does not
    let again = ic_ws_replica::Replica::new(ReplicaConfig::with_seed("root key test"));
    let other = ic_ws_replica::Replica::new(ReplicaConfig::with_seed("something else"));
    assert_eq!(again.root_key_der(), served.replica.root_key_der());
    assert_ne!(other.root_key_der(), served.replica.root_key_der());
    assert_eq!(
        served.replica.subnet_id(),
        Principal::self_authenticating(served.replica.root_key_der())
    );
}

#[tokio::test]
async fn time_is_certified_for_any_effective_canister_id() {
    let served = Served::new(ReplicaConfig::default());
    let agent = served.anonymous_agent().await;
    // the ICP ledger's id: the JS agent's syncTime asks with it even on a local replica
    let ledger = Principal::from_text("ryjl3-tyaaa-aaaaa-aaaba-cai").unwrap();
    let before = now_ns();
    let cert = agent
        .read_state_raw(vec![vec![Label::from("time")]], ledger)
        .await
        .unwrap();
    let LookupResult::Found(time) = cert.tree.lookup_path([b"time".as_ref()]) else {
        panic!("no /time in the certificate");
    };
    let mut value = 0u64;
    for (i, byte) in time.iter().enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
    }
    assert!(
        value + 5_000_000_000 >= before,
        "certified time {value} is stale (now {before})"
    );
}

#[tokio::test]
async fn status_is_cbor_with_the_root_key_and_cors_is_open() {
    let served = Served::new(ReplicaConfig::default());
    let client = reqwest::Client::new();
    let response = client
        .get(format!("{}/api/v2/status", served.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let body = response.bytes().await.unwrap();
    let value: serde_cbor::Value = serde_cbor::from_slice(&body).unwrap();
    let serde_cbor::Value::Map(map) = value else {
        panic!("status is not a map")
    };
    assert_eq!(
        map.get(&serde_cbor::Value::Text("root_key".into())),
        Some(&serde_cbor::Value::Bytes(served.replica.root_key_der()))
    );

    let preflight = client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v3/canister/aaaaa-aa/query", served.url()),
        )
        .header("origin", "http://localhost:8080")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("content-type"), "{allowed}");
}

#[tokio::test]
async fn malformed_oversized_expired_and_misrouted_requests_get_4xx() {
    let served = Served::new(ReplicaConfig::default());
    let canister = Principal::from_text("rrkah-fqaaa-aaaaa-aaaaq-cai").unwrap();
    let call_path = format!("/api/v4/canister/{canister}/call");

    let (status, body) = served
        .post(&call_path, b"\xde\xad\xbe\xef not cbor".to_vec())
        .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));

    let (status, _) = served.post(&call_path, vec![0u8; 3 * 1024 * 1024]).await;
    assert_eq!(status, 413);

    let expired = call_content(
        Principal::anonymous(),
        canister,
        "inc",
        vec![],
        now_ns() - 1_000_000_000,
    );
    let (status, body) = served
        .post(&call_path, envelope(&expired, None, None))
        .await;
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("expiry"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    let far = call_content(
        Principal::anonymous(),
        canister,
        "inc",
        vec![],
        now_ns() + 3_600_000_000_000,
    );
    let (status, _) = served.post(&call_path, envelope(&far, None, None)).await;
    assert_eq!(status, 400);

    // the content names another canister than the URL
    let other = Principal::from_text("ryjl3-tyaaa-aaaaa-aaaba-cai").unwrap();
    let misrouted = call_content(
        Principal::anonymous(),
        other,
        "inc",
        vec![],
        in_two_minutes(),
    );
    let (status, body) = served
        .post(&call_path, envelope(&misrouted, None, None))
        .await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("does not match"));

    // a query sent to the call endpoint
    let query = query_content(Principal::anonymous(), canister, "get", vec![]);
    let (status, _) = served.post(&call_path, envelope(&query, None, None)).await;
    assert_eq!(status, 400);

    let (status, _) = served
        .post(
            "/api/v4/canister/not-a-principal/call",
            envelope(&expired, None, None),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = served.post("/api/v9/nothing", vec![]).await;
    assert_eq!(status, 404);
}
