//! TLS server configuration: rustls on ring, TLS 1.3 and 1.2, ALPN h2 and
//! http/1.1.

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Load a certificate chain and key (PEM) into an acceptor.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    acceptor_with_clients(cert, key, None)
}

/// An acceptor that also verifies TLS client certificates against `clients`'
/// CA (requiring one, or accepting connections without).
pub fn acceptor_with_clients(
    cert: &Path,
    key: &Path,
    clients: Option<&crate::config::ClientCertificates>,
) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    if let Ok(metadata) = std::fs::metadata(key)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %key.display(), "the TLS key file is readable by group or others; chmod 600 it");
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(clients) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(&clients.ca)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    format!(
                        "cannot read client CA certificates from {}: {e}",
                        clients.ca.display()
                    )
                })?;
            for ca in cas {
                roots.add(ca).map_err(|e| {
                    format!("{}: unusable CA certificate: {e}", clients.ca.display())
                })?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no CA certificate", clients.ca.display()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if clients.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| format!("cannot verify client certificates: {e}"))?,
            )
        }
    };
    let mut config = builder
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("the certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
