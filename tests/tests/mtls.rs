//! TLS client certificates (RFC 8705): `tls_client_auth` against a workload
//! bound to a SPIFFE ID or a DNS name, certificate-bound tokens, and the
//! ways it must fail; and the server certificate reloaded without a
//! restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use stint_client::{Error, TokenError, Verifier};
use stint_proto::{INTROSPECTION_PATH, TOKEN_PATH};
use stint_server::{ClientCertificates, Config, PolicySource, RunningServer, TlsFiles};
use stint_tests::{TestCa, decode_jwt, policy_with, served_certificate, tls_connect};

const SPIFFE_ID: &str = "spiffe://example.org/ns/ci/sa/deployer";

struct Broker {
    server: RunningServer,
    ca: TestCa,
    _dir: tempfile::TempDir,
}

async fn broker(required: bool) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let ca_file = dir.path().join("clients-ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        policy_with(&format!(
            "\n[workloads.spiffe-job]\nworkflows = [\"demo\"]\ncertificate = {{ uri = \"{SPIFFE_ID}\" }}\n\n\
             [workloads.host-job]\nworkflows = [\"demo\"]\ncertificate = {{ dns = \"runner-7.ci.example.org\" }}\n"
        )),
    )
    .unwrap();
    let mut config = Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.policy = PolicySource::File(policy);
    config.tls = Some(TlsFiles {
        cert: ca.cert_path.clone(),
        key: ca.key_path.clone(),
    });
    config.client_certificates = Some(ClientCertificates {
        ca: ca_file,
        required,
    });
    let server = stint_server::start(config).await.unwrap();
    Broker {
        server,
        ca,
        _dir: dir,
    }
}

async fn mint(
    broker: &Broker,
    http: &reqwest::Client,
    client_id: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let response = http
        .post(format!("{}{TOKEN_PATH}", broker.server.issuer()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("step", "read"),
            ("scope", "read:demo/a"),
            ("audience", "demo-api"),
        ])
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Introspect `token` as demo-job.
async fn introspect(broker: &Broker, token: &str) -> Value {
    broker
        .ca
        .client()
        .post(format!("{}{INTROSPECTION_PATH}", broker.server.issuer()))
        .basic_auth("demo-job", Some(stint_tests::test_secret("demo-job")))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bound_certificate_authenticates_and_binds_the_token() {
    let broker = broker(false).await;
    let metadata: Value = broker
        .ca
        .client()
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            broker.server.issuer()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["tls_client_certificate_bound_access_tokens"], true);
    assert!(
        metadata["token_endpoint_auth_methods_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "tls_client_auth")
    );
    let certificate = broker.ca.client_certificate(Some(SPIFFE_ID), None);
    let http = broker.ca.client_with(&certificate);
    let (status, body) = mint(&broker, &http, "spiffe-job").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (_, claims) = decode_jwt(&token);
    assert_eq!(claims["sub"], "spiffe-job");
    let thumbprint = stint_core::claims::confirmation_for_certificate(&certificate.der).x5t_s256;
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint.as_str());

    // Introspection reports the binding.
    let answer = introspect(&broker, &token).await;
    assert_eq!(answer["active"], true);
    assert_eq!(answer["cnf"]["x5t#S256"], thumbprint.as_str());

    // The SDK's verifier: only with the same certificate.
    let verifier = Verifier::builder(broker.server.issuer())
        .audience("demo-api")
        .ca_pem(broker.ca.ca_pem.as_bytes())
        .build()
        .await
        .unwrap();
    verifier
        .verify_with_certificate(&token, &certificate.der)
        .await
        .unwrap();
    let other = broker.ca.client_certificate(Some(SPIFFE_ID), None);
    match verifier.verify_with_certificate(&token, &other.der).await {
        Err(Error::InvalidToken(TokenError::CertificateMismatch)) => {}
        other => panic!("another certificate presented the token: {other:?}"),
    }
    match verifier.verify(&token).await {
        Err(Error::InvalidToken(TokenError::CertificateBound)) => {}
        other => panic!("a bound token verified without its certificate: {other:?}"),
    }

    // A DNS SAN binding works the same way; the audit names the identity.
    let host = broker
        .ca
        .client_certificate(None, Some("runner-7.ci.example.org"));
    let (status, body) = mint(&broker, &broker.ca.client_with(&host), "host-job")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let log = std::fs::read_to_string(
        broker
            ._dir
            .path()
            .join("data")
            .join(stint_server::AUDIT_FILE),
    )
    .unwrap();
    let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["client_certificate"], "DNS:runner-7.ci.example.org");
    assert_eq!(last["sub"], "host-job");
}

#[tokio::test]
async fn a_certificate_not_bound_to_the_client_is_refused() {
    let broker = broker(false).await;
    let stranger = broker
        .ca
        .client_certificate(Some("spiffe://example.org/ns/ci/sa/someone-else"), None);
    let (status, body) = mint(&broker, &broker.ca.client_with(&stranger), "spiffe-job")
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // The right certificate for another client id is no better.
    let right = broker.ca.client_certificate(Some(SPIFFE_ID), None);
    let (status, _) = mint(&broker, &broker.ca.client_with(&right), "host-job")
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_none_where_required_is_refused_at_the_handshake() {
    let broker = broker(true).await;
    let elsewhere_dir = tempfile::tempdir().unwrap();
    let elsewhere = TestCa::new(elsewhere_dir.path());
    let foreign = elsewhere.client_certificate(Some(SPIFFE_ID), None);
    // Trust the broker's CA for the server, present a foreign client cert.
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(broker.ca.ca_pem.as_bytes()).unwrap())
        .identity(reqwest::Identity::from_pem(foreign.identity_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(
        mint(&broker, &http, "spiffe-job").await.is_err(),
        "the handshake must fail for a certificate from another CA"
    );
    assert!(
        mint(&broker, &broker.ca.client(), "spiffe-job")
            .await
            .is_err(),
        "no certificate where one is required"
    );
    // With the right certificate, the same broker serves.
    let good = broker.ca.client_certificate(Some(SPIFFE_ID), None);
    let (status, _) = mint(&broker, &broker.ca.client_with(&good), "spiffe-job")
        .await
        .unwrap();
    assert_eq!(status, 200);
}

/// A certificate-bound token speaks for itself (to revoke itself) only
/// from the certificate it is bound to: a copy of it, presented without
/// that certificate or with another one, revokes nothing.
#[tokio::test]
async fn a_bound_token_revokes_itself_only_from_its_certificate() {
    let broker = broker(false).await;
    let certificate = broker.ca.client_certificate(Some(SPIFFE_ID), None);
    let holder = broker.ca.client_with(&certificate);
    let (status, body) = mint(&broker, &holder, "spiffe-job").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let revoke = |http: reqwest::Client| {
        let url = format!("{}{}", broker.server.issuer(), stint_proto::REVOCATION_PATH);
        let token = token.clone();
        async move {
            http.post(url)
                .bearer_auth(&token)
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let active = || async { introspect(&broker, &token).await["active"] == true };
    // No certificate, or another workload's certificate: refused.
    assert_eq!(revoke(broker.ca.client()).await, 403);
    let other = broker
        .ca
        .client_certificate(None, Some("runner-7.ci.example.org"));
    assert_eq!(revoke(broker.ca.client_with(&other)).await, 403);
    assert!(active().await, "still active");
    // Its own certificate: revoked.
    assert_eq!(revoke(holder.clone()).await, 200);
    assert!(!active().await);
}

/// A certificate-bound workload revokes any of its tokens the way it
/// authenticates (RFC 8705 `tls_client_auth`: its certificate and
/// `client_id`), not only a token by itself.
#[tokio::test]
async fn a_certificate_workload_revokes_its_tokens_with_its_certificate() {
    let broker = broker(false).await;
    let certificate = broker.ca.client_certificate(Some(SPIFFE_ID), None);
    let holder = broker.ca.client_with(&certificate);
    let (_, body) = mint(&broker, &holder, "spiffe-job").await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}{}", broker.server.issuer(), stint_proto::REVOCATION_PATH);
    let form = [("client_id", "spiffe-job"), ("token", token.as_str())];
    // Another workload's certificate is not this client's.
    let other = broker
        .ca
        .client_certificate(None, Some("runner-7.ci.example.org"));
    let status = broker
        .ca
        .client_with(&other)
        .post(&url)
        .form(&form)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    assert_eq!(introspect(&broker, &token).await["active"], true);
    let status = holder.post(&url).form(&form).send().await.unwrap().status();
    assert_eq!(status, 200);
    assert_eq!(introspect(&broker, &token).await["active"], false);
}

/// One HTTP/1.1 request over an open TLS connection; the status code.
fn get_status(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    path: &str,
) -> u16 {
    use std::io::{Read as _, Write as _};
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    stream.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the connection closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

/// A renewed certificate is served to new connections after a reload while
/// a connection opened before it goes on working with the old one; files
/// that do not load are refused and the certificate in force stays.
#[tokio::test]
async fn a_renewed_certificate_is_served_after_a_reload_and_open_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = TestCa::new(dir.path());
    let first = ca.cert_der.clone();
    let mut config = Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.tls = Some(TlsFiles {
        cert: ca.cert_path.clone(),
        key: ca.key_path.clone(),
    });
    let server = stint_server::start(config).await.unwrap();
    let addr = server.local_addr();

    let ca_pem = ca.ca_pem.clone();
    let (served, mut open) = tokio::task::spawn_blocking(move || {
        let mut open = tls_connect(&ca_pem, addr);
        assert_eq!(get_status(&mut open, "/healthz"), 200);
        (served_certificate(&ca_pem, addr), open)
    })
    .await
    .unwrap();
    assert_eq!(served, first);

    // Renewal: new files, then the reload SIGHUP does.
    let second = ca.renew_server_certificate();
    assert_ne!(second, first);
    // Until the reload, new connections still get the first certificate.
    let ca_pem = ca.ca_pem.clone();
    let served = tokio::task::spawn_blocking(move || served_certificate(&ca_pem, addr))
        .await
        .unwrap();
    assert_eq!(served, first);
    server.reload_tls().unwrap();
    let ca_pem = ca.ca_pem.clone();
    let (served, open_peer, status) = tokio::task::spawn_blocking(move || {
        let served = served_certificate(&ca_pem, addr);
        let status = get_status(&mut open, "/healthz");
        let open_peer = open.conn.peer_certificates().unwrap()[0].to_vec();
        (served, open_peer, status)
    })
    .await
    .unwrap();
    assert_eq!(
        served, second,
        "a new connection gets the renewed certificate"
    );
    assert_eq!(
        status, 200,
        "the connection opened before the reload still works"
    );
    assert_eq!(open_peer, first);

    // A key that does not parse: refused, the renewed certificate stays.
    std::fs::write(&ca.key_path, "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    let error = server.reload_tls().unwrap_err();
    assert!(
        error.contains(&ca.key_path.display().to_string()),
        "{error}"
    );
    // A certificate that belongs to another key: refused too.
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = TestCa::new(&other_dir);
    std::fs::copy(&other.key_path, &ca.key_path).unwrap();
    let error = server.reload_tls().unwrap_err();
    assert!(error.contains("do not form a usable pair"), "{error}");
    let ca_pem = ca.ca_pem.clone();
    let served = tokio::task::spawn_blocking(move || served_certificate(&ca_pem, addr))
        .await
        .unwrap();
    assert_eq!(served, second);

    let metrics = ca
        .client()
        .get(format!("{}/metrics", server.issuer()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &metrics,
            "stint_tls_certificate_loads_total{result=\"loaded\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "stint_tls_certificate_loads_total{result=\"refused\"}"
        ),
        Some(2.0)
    );
    let not_after = metric(
        &metrics,
        "stint_tls_certificate_not_after_timestamp_seconds",
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(not_after > now, "{not_after} is not in the future");
    server.shutdown().await;
}
