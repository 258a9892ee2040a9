//! The harness for Stint's end-to-end tests.
//!
//! [`TestBroker`] starts the real broker library on an ephemeral loopback
//! port with its own data directory; [`Daemon`] runs the real `stintd`
//! binary. Both are talked to over real HTTP (and TLS, with [`TestCa`]).
//! Nothing here sleeps to wait: [`eventually`] polls with a deadline.

// Test support: a failed expectation should fail the test loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stint_core::audit::{AuditEntry, verify};
use stint_core::jose::{KeySet, UnverifiedJws, VerifyingKey};
use stint_core::{Clock, ManualClock, secret};
use stint_proto::{DevClient, JwkSet};
use stint_server::{Config, PolicySource, RunningServer};

pub mod console;
pub mod github;
pub mod ha;
pub mod idp;
pub mod oidc;
pub mod postgres;
pub mod sse;
pub mod webdriver;

pub use reqwest;
pub use serde_json::{Value, json};

/// A secret every test workload in [`policy_with`] uses, with its name
/// prefixed (`demo-job` uses `stint_test_demo-job`).
pub fn test_secret(workload: &str) -> String {
    format!("stint_test_{workload}")
}

/// A policy with the demo workflow, two workloads that run it, `demo-job`
/// and `other-job`, and the verify-only workload `demo-api` (the resource
/// server of the audience `demo-api`: verifiers follow the feed as it),
/// plus `extra` TOML appended.
pub fn policy_with(extra: &str) -> String {
    let demo = secret::hash_hex(&test_secret("demo-job"));
    let other = secret::hash_hex(&test_secret("other-job"));
    let api = secret::hash_hex(&test_secret("demo-api"));
    format!(
        r#"
[workloads.demo-job]
secret_sha256 = "{demo}"
workflows = ["demo"]

[workloads.other-job]
secret_sha256 = "{other}"
workflows = ["demo"]

[workloads.demo-api]
secret_sha256 = "{api}"
serves = ["demo-api"]

[workflows.demo]
review_by = 2099-01-01

[workflows.demo.steps.read]
scopes = ["read:demo/**"]
default_ttl = "5m"
max_ttl = "15m"

[workflows.demo.steps.write]
scopes = ["write:demo/**"]
{extra}
"#
    )
}

/// A broker started in-process by the library, on 127.0.0.1:0.
pub struct TestBroker {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    /// The client id and secret of the workload tests act as by default.
    pub client_id: String,
    pub client_secret: String,
    pub policy_path: Option<PathBuf>,
    /// What it was started with, for [`TestBroker::restart`].
    pub config: Config,
}

/// How to start a [`TestBroker`].
pub struct BrokerOptions {
    pub policy: Option<String>,
    pub signing_alg: stint_core::jose::Algorithm,
    pub limits: stint_server::Limits,
    pub federation_ca: Option<PathBuf>,
    /// The approval polling interval (1 s in tests).
    pub approval_interval: Duration,
    /// The revocation feed's keep-alive (15 s, as in production).
    pub feed_keepalive: Duration,
    /// Feed streams one client may hold (256, as in production).
    pub feed_max_streams_per_client: usize,
    pub webhook: Option<stint_server::WebhookTarget>,
    /// The data directory (a fresh temporary directory's `data` if `None`).
    pub data_dir: Option<PathBuf>,
    /// Feed streams in all (2048, as in production); tests with a small
    /// connection cap lower it.
    pub feed_max_streams: usize,
    /// How long a rotated-in key is published before it signs: 0 (at once)
    /// unless a test stages keys; production's default is 300 s.
    pub key_publish_lead: Duration,
    /// `--store-fail-closed-after` (10 s, as in production).
    pub store_fail_closed_after: Duration,
    /// Keep live tokens (as with the console).
    pub live_tokens: bool,
    /// The console's origin, for the webhook's links.
    pub console_url: Option<String>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            policy: Some(policy_with("")),
            signing_alg: stint_core::jose::Algorithm::ES256,
            limits: stint_server::Limits::default(),
            federation_ca: None,
            approval_interval: Duration::from_secs(1),
            webhook: None,
            feed_keepalive: Duration::from_secs(15),
            feed_max_streams_per_client: 256,
            data_dir: None,
            feed_max_streams: 2048,
            key_publish_lead: Duration::ZERO,
            store_fail_closed_after: Duration::from_secs(10),
            live_tokens: false,
            console_url: None,
        }
    }
}

impl TestBroker {
    /// A broker with [`policy_with("")`](policy_with).
    pub async fn start() -> Self {
        Self::start_with(BrokerOptions::default()).await
    }

    /// A broker on the built-in demo policy, as `stintd --dev` runs it.
    pub async fn demo() -> Self {
        Self::start_with(BrokerOptions {
            policy: None,
            ..BrokerOptions::default()
        })
        .await
    }

    pub async fn start_with(options: BrokerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policy_path = options.policy.as_ref().map(|text| {
            let path = dir.path().join("policy.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let mut config = Config::dev(data_dir, "127.0.0.1:0".parse().unwrap());
        config.signing_alg = options.signing_alg;
        config.limits = options.limits;
        config.federation_ca = options.federation_ca;
        config.approval_interval = options.approval_interval;
        config.webhook = options.webhook;
        config.feed_keepalive = options.feed_keepalive;
        config.feed_max_streams_per_client = options.feed_max_streams_per_client;
        config.feed_max_streams = options.feed_max_streams;
        config.key_publish_lead = options.key_publish_lead;
        config.store_fail_closed_after = options.store_fail_closed_after;
        config.live_tokens = options.live_tokens;
        config.console_url = options.console_url;
        if let Some(path) = &policy_path {
            config.policy = PolicySource::File(path.clone());
        }
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let server =
            stint_server::start_with_clock(config.clone(), clock.clone() as Arc<dyn Clock>)
                .await
                .expect("the broker starts");
        let (client_id, client_secret) = match server.dev_client_path() {
            Some(path) => {
                let dev: DevClient = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
                (dev.client_id, dev.client_secret)
            }
            None => ("demo-job".to_owned(), test_secret("demo-job")),
        };
        Self {
            server: Some(server),
            dir,
            http: reqwest::Client::new(),
            clock,
            client_id,
            client_secret,
            policy_path,
            config,
        }
    }

    /// Stop the broker and start it again on the same data directory,
    /// configuration, clock and address (so the issuer stays the same).
    pub async fn restart(&mut self) {
        self.restart_after(|| {}).await;
    }

    /// [`Self::restart`], running `between` while the broker is stopped.
    pub async fn restart_after(&mut self, between: impl FnOnce()) {
        self.config.listen = self.server().local_addr();
        self.stop().await;
        between();
        let server = stint_server::start_with_clock(
            self.config.clone(),
            self.clock.clone() as Arc<dyn Clock>,
        )
        .await
        .expect("the broker restarts");
        self.server = Some(server);
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn issuer(&self) -> String {
        self.server().issuer().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    pub fn audit_path(&self) -> PathBuf {
        self.data_dir().join(stint_server::AUDIT_FILE)
    }

    /// POST a form with HTTP Basic credentials of `client`.
    pub async fn post_form_as(
        &self,
        client: (&str, &str),
        path: &str,
        form: &[(&str, &str)],
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .basic_auth(client.0, Some(client.1))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// POST a form as the default client.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let client = (self.client_id.clone(), self.client_secret.clone());
        self.post_form_as((&client.0, &client.1), path, form).await
    }

    /// Ask, as `client`, for a token for `step` with `scope` (audience
    /// `demo-api`), whatever the answer.
    pub async fn try_mint_as(
        &self,
        client: (&str, &str),
        step: &str,
        scope: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("step", step),
            ("scope", scope),
            ("audience", "demo-api"),
        ];
        form.extend_from_slice(extra);
        self.post_form_as(client, stint_proto::TOKEN_PATH, &form)
            .await
    }

    /// [`Self::try_mint_as`] as the default client.
    pub async fn try_mint(
        &self,
        step: &str,
        scope: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let client = (self.client_id.clone(), self.client_secret.clone());
        self.try_mint_as((&client.0, &client.1), step, scope, extra)
            .await
    }

    /// Mint a token for `step` with `scope`; panics unless it succeeds.
    pub async fn mint(&self, step: &str, scope: &str, extra: &[(&str, &str)]) -> Value {
        let response = self.try_mint(step, scope, extra).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "mint failed: {body}");
        body
    }

    /// [`Self::try_mint`] through `http` (for instance a client bound to
    /// another source address, see [`client_from`]).
    pub async fn try_mint_with(&self, http: &reqwest::Client, scope: &str) -> reqwest::Response {
        http.post(self.url(stint_proto::TOKEN_PATH))
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", scope),
                ("audience", "demo-api"),
            ])
            .send()
            .await
            .unwrap()
    }

    /// Introspect `token` as the default client.
    pub async fn introspect(&self, token: &str) -> Value {
        let response = self
            .post_form(stint_proto::INTROSPECTION_PATH, &[("token", token)])
            .await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// The broker's published keys.
    pub async fn keys(&self) -> KeySet {
        let jwks: JwkSet = self
            .http
            .get(self.url(stint_proto::JWKS_PATH))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut keys = KeySet::new();
        for jwk in &jwks.keys {
            keys.insert(VerifyingKey::from_jwk(jwk).unwrap());
        }
        keys
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Every audit record so far, after checking the whole chain.
    pub fn audit_records(&self) -> Vec<Value> {
        audit_records(&self.audit_path())
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// Verify the chain of the audit log at `path` and return its records.
pub fn audit_records(path: &Path) -> Vec<Value> {
    let file = std::fs::File::open(path).unwrap();
    let summary = verify(BufReader::new(file)).expect("the audit chain verifies");
    let text = std::fs::read_to_string(path).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len() as u64, summary.records);
    // Every record also parses as the library's own type.
    for line in text.lines() {
        let _: AuditEntry = serde_json::from_str(line).expect("a record is an AuditEntry");
    }
    records
}

/// Decode a JWT's header and claims without verifying (tests verify
/// separately, with [`TestBroker::keys`]).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let header = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let claims = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&header).unwrap(),
        serde_json::from_slice(&claims).unwrap(),
    )
}

/// Verify a token's signature with `keys`.
pub fn verify_signature(token: &str, keys: &KeySet) -> Value {
    let payload = UnverifiedJws::parse(token)
        .unwrap()
        .verified_payload(keys)
        .expect("signature verifies");
    serde_json::from_slice(&payload).unwrap()
}

/// HTTP Basic header value.
pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// Poll `check` until it returns `Some`, or panic after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A throwaway certificate authority and a server certificate for
/// `localhost` and 127.0.0.1, written as PEM files.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The server certificate now in `cert_path`, DER.
    pub cert_der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A client certificate made by [`TestCa::client_certificate`].
pub struct ClientCertificate {
    /// Certificate and key, PEM, concatenated (what `reqwest::Identity`
    /// takes).
    pub identity_pem: String,
    /// The certificate's DER.
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Stint Test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server-key.pem");
        let mut ca = Self {
            ca_pem: ca_cert.pem(),
            cert_path,
            key_path,
            cert_der: Vec::new(),
            issuer,
        };
        ca.renew_server_certificate();
        ca
    }

    /// Write a new server certificate (and key) for `localhost` and
    /// 127.0.0.1 over the files, as a renewal does; returns its DER.
    pub fn renew_server_certificate(&mut self) -> Vec<u8> {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &self.issuer).unwrap();
        // The key first, then the certificate, each replaced by a rename:
        // a reader sees a whole file, never a half-written one.
        use std::os::unix::fs::PermissionsExt as _;
        let key_tmp = self.key_path.with_extension("tmp");
        std::fs::write(&key_tmp, leaf_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&key_tmp, &self.key_path).unwrap();
        let cert_tmp = self.cert_path.with_extension("tmp");
        std::fs::write(&cert_tmp, leaf.pem()).unwrap();
        std::fs::rename(&cert_tmp, &self.cert_path).unwrap();
        self.cert_der = leaf.der().to_vec();
        self.cert_der.clone()
    }

    /// A client certificate from this CA with a URI SAN and/or a DNS SAN.
    pub fn client_certificate(&self, uri: Option<&str>, dns: Option<&str>) -> ClientCertificate {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "stint test client");
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        if let Some(dns) = dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into().unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        ClientCertificate {
            identity_pem: format!("{}{}", certificate.pem(), key.serialize_pem()),
            der: certificate.der().to_vec(),
        }
    }

    /// An HTTP client that trusts only this CA and presents `certificate`.
    pub fn client_with(&self, certificate: &ClientCertificate) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(certificate.identity_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    /// An HTTP client that trusts only this CA.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }
}

/// A loopback HTTPS listener for a fake upstream (an identity provider,
/// GitHub): a test CA in a temporary directory (its certificate written to
/// `ca_file`, for the broker to trust), a server certificate from it, and
/// the listener with its `https://127.0.0.1:PORT` URL.
pub struct TlsListener {
    /// Holds the CA and server files; keep it as long as the server.
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    pub url: String,
    pub listener: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    /// Bind one, the CA certificate written as `ca_name` in its directory.
    pub async fn bind(ca_name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path());
        let ca_file = dir.path().join(ca_name);
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        let acceptor = stint_server::tls::acceptor(&ca.cert_path, &ca.key_path).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        Self {
            dir,
            ca_file,
            url,
            listener,
            acceptor,
        }
    }
}

/// A TLS connection to `addr` that trusts only the CA `ca_pem` (HTTP/1.1 by
/// ALPN), handshake done. Blocking.
pub fn tls_connect(
    ca_pem: &str,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// The certificate a new TLS connection to `addr` is served, DER. Blocking.
pub fn served_certificate(ca_pem: &str, addr: SocketAddr) -> Vec<u8> {
    let stream = tls_connect(ca_pem, addr);
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

/// A workspace binary (`stintd`, `stint`): `$VAR`, or beside the running
/// test's own directory (`target/debug/deps/..`). Build it first:
/// `cargo build -p stintd -p stint-cli`.
pub fn workspace_binary(name: &str, var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (cargo build -p stintd -p stint-cli) or set {var}",
        path.display()
    );
    path
}

/// The real `stintd` binary, started with `args`, stopped on drop.
pub struct Daemon {
    pub child: Child,
    /// The URL from the banner's first line.
    pub issuer: String,
    /// Everything the daemon printed on stderr, collected in the background.
    stderr: Arc<std::sync::Mutex<String>>,
    /// What it printed on stdout after the banner's first line.
    stdout: Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Start `binary` with `args` and wait (at most 60 s) for its banner.
    pub fn start(binary: &Path, args: &[&str]) -> Self {
        Self::start_command(Command::new(binary).args(args))
    }

    /// Start a prepared command (for wrappers such as `sh -c 'ulimit ...'`).
    pub fn start_command(command: &mut Command) -> Self {
        Self::try_start_command(command).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Daemon::start_command`], returning why it did not start (with
    /// everything it wrote on stderr) instead of panicking.
    pub fn try_start_command(command: &mut Command) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stintd starts");
        let stderr = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let err = child.stderr.take().unwrap();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("stintd listening on ") {
                        let issuer = rest.split_whitespace().next().unwrap().to_owned();
                        // Keep draining stdout so the daemon never blocks on
                        // it, keeping the rest of the banner.
                        let stdout = Arc::new(std::sync::Mutex::new(String::new()));
                        let kept = Arc::clone(&stdout);
                        std::thread::spawn(move || {
                            while let Ok(line) = rx.recv() {
                                let mut all = kept.lock().unwrap();
                                if all.len() < 64 * 1024 {
                                    all.push_str(&line);
                                    all.push('\n');
                                }
                            }
                        });
                        return Ok(Self {
                            child,
                            issuer,
                            stderr,
                            stdout,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().unwrap();
                    // Everything it wrote, its last words included.
                    let _ = stderr_reader.join();
                    let stderr = stderr.lock().unwrap().clone();
                    return Err(format!(
                        "stintd did not start ({status}); stderr:\n{stderr}"
                    ));
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The rest of the line of the banner that starts with `prefix`,
    /// waiting for it (at most 10 s).
    pub fn banner_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self
                .stdout
                .lock()
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
            {
                return line.trim().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no banner line {prefix:?} in:\n{}",
                self.stdout.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// Send a signal with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM (a clean stop), and wait at most `timeout` for the process
    /// to exit; its exit status.
    pub fn stop(mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "stintd did not stop in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a command to completion with a deadline; returns (status, stdout, stderr).
pub fn run_to_end(
    command: &mut Command,
    timeout: Duration,
) -> (std::process::ExitStatus, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            return (
                status,
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP client whose connections come from `source` (on Linux every
/// 127.0.0.0/8 address is on `lo`, so tests can play several sources), that
/// opens a new connection for every request: each request also shows that
/// a new connection from that source is accepted. Every request has 10 s.
pub fn client_from(source: std::net::IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A TCP connection to `addr` from `source` (see [`client_from`]).
pub async fn connect_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// An address nothing listens on (bound, then released).
pub fn unused_loopback_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A small tmpfs mounted for one test: a real filesystem that fills up.
/// Mounting needs root (CI runs as root); anywhere else the test fails,
/// saying so, rather than pass without having run.
pub struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `bytes` on a new temporary directory.
    pub fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(&path)
            .output()
            .expect("run mount(8)");
        assert!(
            output.status.success(),
            "this test needs a real full filesystem: it mounts a tmpfs, which needs root (CI runs as root); mount said: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Self { path, _dir: dir }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fill the filesystem with a file of zeros until a write fails with
    /// ENOSPC. Returns the file, to delete to make room again.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        // Bounded: 4 GiB at most, far more than any test mounts.
        for _ in 0..1_000_000 {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(error) if error.raw_os_error() == Some(28) => {
                    // Byte by byte into the last page, too (a page at most).
                    for _ in 0..4096 {
                        if file.write_all(&[0]).is_err() {
                            break;
                        }
                    }
                    return filler;
                }
                Err(error) => panic!("filling the tmpfs: {error}"),
            }
        }
        panic!("the tmpfs never filled up")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
