//! TLS for client connections: rustls with the aws-lc-rs provider (feature `server`, on by
//! default). Without the feature (the fuzz harness's build of the library core) there is no
//! acceptor to make: [`Acceptor`] is uninhabited and configuring a certificate is a startup
//! error.

use crate::error::{GatewayError, Result};
use std::path::Path;

/// A TLS acceptor for client connections.
#[cfg(feature = "server")]
pub type Acceptor = tokio_rustls::TlsAcceptor;

/// No TLS in this build (feature `server` off): no value of this type exists.
#[cfg(not(feature = "server"))]
#[derive(Clone)]
pub enum Acceptor {}

/// A client connection after its TLS handshake.
#[cfg(feature = "server")]
pub type Stream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// No TLS in this build: never constructed.
#[cfg(not(feature = "server"))]
pub type Stream = tokio::net::TcpStream;

/// The server side of the TLS handshake on `tcp`.
pub async fn accept(acceptor: &Acceptor, tcp: tokio::net::TcpStream) -> std::io::Result<Stream> {
    #[cfg(feature = "server")]
    {
        acceptor.accept(tcp).await
    }
    #[cfg(not(feature = "server"))]
    {
        let _ = tcp;
        match *acceptor {}
    }
}

/// Loads a TLS certificate chain and private key (PEM files) into an acceptor.
#[cfg(feature = "server")]
pub fn acceptor(cert: &Path, key: &Path) -> Result<Acceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| GatewayError::Tls(format!("certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(GatewayError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| GatewayError::Tls(format!("private key {}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| GatewayError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| GatewayError::Tls(format!("certificate and key do not fit: {e}")))?;
    Ok(Acceptor::from(Arc::new(config)))
}

/// This build has no TLS (feature `server` off): a configured certificate is refused.
#[cfg(not(feature = "server"))]
pub fn acceptor(cert: &Path, _key: &Path) -> Result<Acceptor> {
    Err(GatewayError::Tls(format!(
        "{}: this gateway was built without TLS (feature `server`)",
        cert.display()
    )))
}
