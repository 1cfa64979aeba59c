//! TLS for `https://` targets: `--ca-file FILE` adds a certificate authority that
//! the HTTP client and the WebSocket connector trust, beside the public roots
//! (a staging cluster's own CA, or a test's).
//!
//! The trusted set is process-wide, like the public roots it extends: the HTTP
//! clients and the devices' connections are made in many places, and each must
//! trust the same CAs. Adding only ever adds, so in-process runs (tests) that
//! name different CAs do not take trust away from one another. Worker processes
//! get the same `--ca-file` on their command line.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::LoadgenError;

/// A WebSocket over plain TCP or TLS.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The CAs added with `--ca-file` (DER), for both reqwest and rustls.
static EXTRA: RwLock<Vec<CertificateDer<'static>>> = RwLock::new(Vec::new());

/// Trusts the certificates in a PEM file from now on (exit 2 naming
/// `--ca-file` if it holds none).
pub fn trust_ca_file(path: &Path) -> Result<(), LoadgenError> {
    let bad =
        |why: String| LoadgenError::invalid("--ca-file", format!("{}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let mut extra = EXTRA.write().unwrap_or_else(|e| e.into_inner());
    for c in certs {
        if !extra.contains(&c) {
            extra.push(c);
        }
    }
    Ok(())
}

fn extra() -> Vec<CertificateDer<'static>> {
    EXTRA.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A reqwest client builder that trusts the added CAs (and the public roots).
pub fn http_builder() -> reqwest::ClientBuilder {
    let mut builder = reqwest::Client::builder();
    for der in extra() {
        if let Ok(cert) = reqwest::Certificate::from_der(&der) {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
}

/// The rustls client configuration for `wss://`: the public roots and the
/// added CAs (the engine's devices and the tungstenite connector alike).
pub fn client_config() -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra() {
        let _ = roots.add(der);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The connector for `wss://`.
fn connector() -> Connector {
    Connector::Rustls(client_config())
}

/// Opens a WebSocket to a `ws://` or `wss://` URL (no Nagle delay).
pub async fn connect(
    url: &str,
    config: Option<WebSocketConfig>,
) -> Result<(Ws, Response), tokio_tungstenite::tungstenite::Error> {
    let tls = url.starts_with("wss://").then(connector);
    tokio_tungstenite::connect_async_tls_with_config(url, config, true, tls).await
}
