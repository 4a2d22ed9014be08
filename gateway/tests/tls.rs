//! TLS: the gateway serves wss:// with a rustls certificate; bad files are clear errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

fn fixture(name: &str) -> String {
    format!("{}/tests/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn clients_connect_over_tls() {
    let (cert, key) = (fixture("cert.pem"), fixture("key.pem"));
    let (gw, _fake) = start(&["--tls-cert", &cert, "--tls-key", &key]).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.local_addr())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("wss://localhost:{}/", gw.local_addr().port()),
        tls,
    )
    .await
    .unwrap();
    let frame = futures_util::StreamExt::next(&mut ws)
        .await
        .unwrap()
        .unwrap();
    let hello: ic_ws_protocol::GatewayFrame = ic_ws_protocol::decode(&frame.into_data()).unwrap();
    assert!(
        matches!(hello, ic_ws_protocol::GatewayFrame::Hello { gateway, .. } if gateway == gateway_principal())
    );

    // A plain-text client does not get through.
    let mut plain = tokio::net::TcpStream::connect(gw.local_addr())
        .await
        .unwrap();
    let res =
        tokio_tungstenite::client_async(format!("ws://{}/", gw.local_addr()), &mut plain).await;
    assert!(res.is_err());
    gw.shutdown().await;
}

#[tokio::test]
async fn unreadable_tls_files_are_clear_errors() {
    let config = ic_ws_gateway::Config::from_args([
        "gw",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--canister",
        CANISTER,
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        &fixture("key.pem"),
    ])
    .unwrap();
    let err = ic_ws_gateway::Gateway::start(
        config,
        ic_ws_gateway::fake::FakeCanister::new(),
        gateway_principal(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("TLS") && err.contains("/nonexistent/cert.pem"),
        "{err}"
    );
    // Key and certificate swapped.
    let config = ic_ws_gateway::Config::from_args([
        "gw",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--canister",
        CANISTER,
        "--tls-cert",
        &fixture("key.pem"),
        "--tls-key",
        &fixture("cert.pem"),
    ])
    .unwrap();
    let err = ic_ws_gateway::Gateway::start(
        config,
        ic_ws_gateway::fake::FakeCanister::new(),
        gateway_principal(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("TLS"), "{err}");
}
