//! TLS server configuration: rustls on ring, TLS 1.3 and 1.2, ALPN h2 and
//! http/1.1.
//!
//! The broker's configuration is a [`ReloadableTls`]: `SIGHUP` reads the
//! certificate, key and client CA files again, and new connections get the
//! new ones while open connections keep the configuration they shook hands
//! with, so a renewal needs no restart and drops nothing. Files that do not
//! load are refused and the configuration in force stays.

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Load a certificate chain and key (PEM) into an acceptor.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    server_config(cert, key, None).map(|loaded| TlsAcceptor::from(Arc::new(loaded.config)))
}

/// [`acceptor`] for a server that speaks HTTP/1.1 only (the console): ALPN
/// offers `http/1.1` alone, so browsers do not pick HTTP/2.
pub fn acceptor_http1(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    server_config(cert, key, None).map(|mut loaded| {
        loaded.config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(loaded.config))
    })
}

/// Serve `router` over TLS on `listener`, each connection in a task of its
/// own (its handshake within 10 s), until the returned task is aborted: a
/// small server such as `stintd --dev`'s identity provider, or a test's
/// fake. The broker's own listener is `serve`, with its limits.
pub fn serve_router(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(Ok(stream)) = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    acceptor.accept(stream),
                )
                .await
                else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    })
}

/// The server's TLS configuration, loaded from its files and loaded again
/// on [`Self::reload`].
pub struct ReloadableTls {
    cert: PathBuf,
    key: PathBuf,
    clients: Option<crate::config::ClientCertificates>,
    current: ArcSwap<ServerConfig>,
}

impl ReloadableTls {
    /// Load the files; `Ok` carries the leaf certificate's `notAfter`.
    pub fn load(
        cert: &Path,
        key: &Path,
        clients: Option<&crate::config::ClientCertificates>,
    ) -> Result<(Self, i64), String> {
        let loaded = server_config(cert, key, clients)?;
        Ok((
            Self {
                cert: cert.to_owned(),
                key: key.to_owned(),
                clients: clients.cloned(),
                current: ArcSwap::from_pointee(loaded.config),
            },
            loaded.not_after,
        ))
    }

    /// Read the files again. On success new connections use them and the
    /// leaf's `notAfter` is returned; on failure nothing changes.
    pub fn reload(&self) -> Result<i64, String> {
        let loaded = server_config(&self.cert, &self.key, self.clients.as_ref())?;
        self.current.store(Arc::new(loaded.config));
        Ok(loaded.not_after)
    }

    /// An acceptor with the configuration in force now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

/// A server configuration and its leaf certificate's expiry.
struct Loaded {
    config: ServerConfig,
    not_after: i64,
}

/// A server configuration that also verifies TLS client certificates
/// against `clients`' CA (requiring one, or accepting connections without).
fn server_config(
    cert: &Path,
    key: &Path,
    clients: Option<&crate::config::ClientCertificates>,
) -> Result<Loaded, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    let Some(leaf) = certs.first() else {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    };
    let not_after = match x509_parser::parse_x509_certificate(leaf.as_ref()) {
        Ok((_, leaf)) => leaf.validity().not_after.timestamp(),
        Err(e) => {
            return Err(format!(
                "{}: the first certificate does not parse: {e}",
                cert.display()
            ));
        }
    };
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
    Ok(Loaded { config, not_after })
}
