//! TLS for PostgreSQL connections (the store's, and stint-targets' admin
//! connections): a small `MakeTlsConnect` over tokio-rustls.
//!
//! Why not tokio-postgres-rustls: it brings x509-cert, der and spki only to
//! compute the `tls-server-end-point` channel binding. This connector is a
//! few dozen lines over what the tree already has (rustls with ring,
//! tokio-rustls, x509-parser). It offers `tls-server-end-point` channel
//! binding (RFC 5929: a hash of the server's certificate), which the
//! client requires over TLS: SCRAM-SHA-256-PLUS then proves that the
//! server that checked the admin's password is the one at the other end
//! of this TLS session, and a server that asks for the password in clear
//! (or MD5) is refused. The certificate checks are rustls' own (webpki).

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Set `config`'s TLS demands: over TLS (`tls`), TLS or nothing (never a
/// fall-back to plain text) and SCRAM bound to this TLS session or nothing
/// (a server, or someone in the middle with a certificate the roots
/// accept, asking for the password in clear or as MD5 is refused); without
/// it, plain TCP.
pub fn require_tls(config: &mut tokio_postgres::Config, tls: bool) {
    use tokio_postgres::config::{ChannelBinding, SslMode};
    if tls {
        config
            .ssl_mode(SslMode::Require)
            .channel_binding(ChannelBinding::Require);
    } else {
        config
            .ssl_mode(SslMode::Disable)
            .channel_binding(ChannelBinding::Disable);
    }
}

/// Roots from `ca_pem`, or Mozilla's (webpki-roots) when `None`.
pub fn root_store(ca_pem: Option<&[u8]>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca_pem {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate =
                    certificate.map_err(|error| format!("ca_pem is not valid PEM: {error}"))?;
                roots
                    .add(certificate)
                    .map_err(|error| format!("ca_pem holds an unusable certificate: {error}"))?;
            }
            if roots.is_empty() {
                return Err("ca_pem holds no certificate".to_owned());
            }
        }
    }
    Ok(roots)
}

/// A rustls client configuration (ring) that verifies the chain against
/// `roots`, and the host name too when `check_host_name`.
pub fn client_config(roots: RootCertStore, check_host_name: bool) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("tls setup: {error}"))?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| format!("tls setup: {error}"))?;
    let config = if check_host_name {
        builder.with_webpki_verifier(webpki).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier(webpki)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// libpq's `verify-ca`: rustls' own verifier, with only its last check, the
/// host name, forgiven. rustls checks the chain (signatures, validity,
/// usage, revocation) before the name, so a `NotValidForName` error means
/// everything else passed; every other error stands, and the handshake
/// signatures are verified by rustls as always.
#[derive(Debug)]
struct ChainOnlyVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Makes a TLS connector for each connection tokio-postgres opens.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
}

impl MakeRustlsConnect {
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = rustls_pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, Self::Error> {
        Ok(RustlsConnect {
            config: Arc::clone(&self.config),
            server_name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// The connector for one connection.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            connector
                .connect(self.server_name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// A TLS session to the server.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|certificate| server_end_point(certificate.as_ref()))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's `tls-server-end-point`: the server certificate hashed with
/// its signature's hash function, SHA-256 for MD5 and SHA-1 ones; `None`
/// for a signature without a hash function (Ed25519), for which no binding
/// is defined (and PostgreSQL offers none).
pub fn server_end_point(certificate: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::oid_registry as oids;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let algorithm = &parsed.signature_algorithm.algorithm;
    let digest = if [
        oids::OID_PKCS1_SHA384WITHRSA,
        oids::OID_SIG_ECDSA_WITH_SHA384,
    ]
    .contains(algorithm)
    {
        &ring::digest::SHA384
    } else if [
        oids::OID_PKCS1_SHA512WITHRSA,
        oids::OID_SIG_ECDSA_WITH_SHA512,
    ]
    .contains(algorithm)
    {
        &ring::digest::SHA512
    } else if [
        oids::OID_PKCS1_SHA256WITHRSA,
        oids::OID_SIG_ECDSA_WITH_SHA256,
        oids::OID_PKCS1_SHA1WITHRSA,
        oids::OID_PKCS1_MD5WITHRSAENC,
    ]
    .contains(algorithm)
    {
        &ring::digest::SHA256
    } else {
        return None;
    };
    Some(ring::digest::digest(digest, certificate).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_binding_hashes_the_certificate_with_its_signature_hash() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p256 = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = p256.der().as_ref();
        assert_eq!(
            server_end_point(der).unwrap(),
            ring::digest::digest(&ring::digest::SHA256, der).as_ref()
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let p384 = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = p384.der().as_ref();
        assert_eq!(
            server_end_point(der).unwrap(),
            ring::digest::digest(&ring::digest::SHA384, der).as_ref()
        );
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let ed25519 = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(server_end_point(ed25519.der().as_ref()), None);
        assert_eq!(server_end_point(b"not a certificate"), None);
    }

    #[test]
    fn ca_pem_must_hold_a_certificate() {
        assert!(root_store(Some(b"not pem")).is_err());
        assert!(root_store(Some(b"")).is_err());
        assert!(!root_store(None).unwrap().is_empty());
    }

    #[test]
    fn both_verifiers_build() {
        let roots = root_store(None).unwrap();
        assert!(client_config(roots.clone(), true).is_ok());
        assert!(client_config(roots, false).is_ok());
    }
}
