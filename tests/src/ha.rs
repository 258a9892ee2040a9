//! Several real `stintd` replicas on one PostgreSQL store, behind one
//! issuer, for the high-availability tests.
//!
//! Replicas behind one load balancer share one issuer: [`HaCluster`] runs a
//! small TCP forwarder on the issuer's address ([`Balancer`]) whose backend
//! the test chooses, so a token minted at A names the same `iss` a verifier
//! following C expects. Each replica also answers on its own address
//! ([`Replica::url`]), which is how the tests pick the replica a request
//! reaches.

use crate::postgres::PgCluster;
use crate::{Daemon, Value, test_secret, unused_loopback_addr, workspace_binary};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The store's role and its password.
pub const ROLE: &str = "stint_store";
pub const PASSWORD: &str = "store-pw-ha-5c1e9a";

/// How the replicas of an [`HaCluster`] are started.
pub struct HaOptions {
    /// The policy file's text.
    pub policy: String,
    /// `--store-fail-closed-after`, seconds.
    pub fail_closed_after: u64,
    /// `--store-timeout`, seconds.
    pub store_timeout: u64,
    /// `--feed-keepalive`, seconds.
    pub feed_keepalive: u64,
    /// `--approval-interval`, seconds.
    pub approval_interval: u64,
    /// `--key-publish-lead`, seconds (300, as in production).
    pub key_publish_lead: u64,
}

impl Default for HaOptions {
    fn default() -> Self {
        Self {
            policy: crate::policy_with(""),
            fail_closed_after: 10,
            store_timeout: 2,
            feed_keepalive: 15,
            approval_interval: 1,
            key_publish_lead: 300,
        }
    }
}

/// One PostgreSQL, its store database, and replicas of `stintd` on it.
pub struct HaCluster {
    pub pg: PgCluster,
    pub dir: tempfile::TempDir,
    pub balancer: Balancer,
    store_url: String,
    options: HaOptions,
}

/// One `stintd` process of an [`HaCluster`], on its own address and data
/// directory.
pub struct Replica {
    pub name: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub daemon: Option<Daemon>,
    /// A client of its own: connections do not outlive a killed replica.
    pub http: reqwest::Client,
}

impl HaCluster {
    /// Start PostgreSQL, create the store database, and start the balancer
    /// (no replica yet).
    pub async fn start(options: HaOptions) -> Self {
        let pg = PgCluster::start();
        pg.create_store_database("stint", ROLE, PASSWORD).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), &options.policy).unwrap();
        std::fs::write(dir.path().join("store.password"), format!("{PASSWORD}\n")).unwrap();
        // Every replica gets the same key-encryption key.
        std::fs::write(dir.path().join("kek"), [0x5au8; 32]).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        for secret in ["store.password", "kek"] {
            std::fs::set_permissions(
                dir.path().join(secret),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        let store_url = format!(
            "postgres://{ROLE}@127.0.0.1:{}/stint?sslmode=disable",
            pg.port()
        );
        let balancer = Balancer::start().await;
        Self {
            pg,
            dir,
            balancer,
            store_url,
            options,
        }
    }

    /// The issuer every replica puts in its tokens: the balancer's URL.
    pub fn issuer(&self) -> String {
        self.balancer.url()
    }

    /// A new replica `name` (not started).
    pub fn replica(&self, name: &str) -> Replica {
        let data_dir = self.dir.path().join(format!("data-{name}"));
        Replica {
            name: name.to_owned(),
            listen: unused_loopback_addr(),
            data_dir,
            daemon: None,
            http: http_client(),
        }
    }

    /// The command that starts `replica`.
    pub fn command(&self, replica: &Replica) -> Command {
        let mut command = Command::new(workspace_binary("stintd", "STINTD_BIN"));
        let o = &self.options;
        command
            .arg("--dev")
            .arg("--listen")
            .arg(replica.listen.to_string())
            .arg("--issuer")
            .arg(self.issuer())
            .arg("--store")
            .arg(&self.store_url)
            .arg("--store-fail-closed-after")
            .arg(o.fail_closed_after.to_string())
            .arg("--store-timeout")
            .arg(o.store_timeout.to_string())
            .arg("--feed-keepalive")
            .arg(o.feed_keepalive.to_string())
            .arg("--approval-interval")
            .arg(o.approval_interval.to_string())
            .arg("--key-publish-lead")
            .arg(o.key_publish_lead.to_string())
            .arg("--data-dir")
            .arg(&replica.data_dir)
            .arg("--policy")
            .arg(self.dir.path().join("policy.toml"))
            .env(
                "STINTD_STORE_PASSWORD_FILE",
                self.dir.path().join("store.password"),
            )
            .env(
                "STINTD_KEY_ENCRYPTION_KEY_FILE",
                self.dir.path().join("kek"),
            )
            .env_remove("STINTD_STORE_PASSWORD")
            .env_remove("STINTD_STORE")
            .env_remove("STINTD_ISSUER");
        command
    }

    /// Start (or start again) `replica` and wait for its banner.
    pub fn start_replica(&self, replica: &mut Replica) {
        assert!(replica.daemon.is_none(), "{} already runs", replica.name);
        // The port was free when it was picked; tests running in parallel
        // may take it before the replica binds it: pick another.
        let mut attempts = 0;
        let daemon = loop {
            match Daemon::try_start_command(&mut self.command(replica)) {
                Ok(daemon) => break daemon,
                Err(why) if why.contains("Address already in use") && attempts < 5 => {
                    attempts += 1;
                    replica.listen = unused_loopback_addr();
                }
                Err(why) => panic!("{} did not start: {why}", replica.name),
            }
        };
        assert_eq!(daemon.issuer, self.issuer(), "the shared issuer");
        replica.daemon = Some(daemon);
        replica.http = http_client();
    }

    /// Three replicas, `a`, `b` and `c`, started one after the other; the
    /// balancer sends to `a`.
    pub fn start_three(&self) -> [Replica; 3] {
        let mut replicas = [self.replica("a"), self.replica("b"), self.replica("c")];
        for replica in &mut replicas {
            self.start_replica(replica);
        }
        self.balancer.send_to(replicas[0].listen);
        replicas
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The demo workload's credentials.
pub fn demo_job() -> (String, String) {
    ("demo-job".to_owned(), test_secret("demo-job"))
}

impl Replica {
    /// `path` on this replica's own address.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }

    /// SIGKILL the process (it may be started again).
    pub fn kill9(&mut self) {
        self.daemon.take().unwrap().kill9();
    }

    /// POST a form as `demo-job`.
    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let (id, secret) = demo_job();
        self.http
            .post(self.url(path))
            .basic_auth(id, Some(secret))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// Ask for a `read` token for `job`, whatever the answer.
    pub async fn try_mint(&self, job: &str) -> Result<reqwest::Response, reqwest::Error> {
        let (id, secret) = demo_job();
        self.http
            .post(self.url(stint_proto::TOKEN_PATH))
            .basic_auth(id, Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "read:demo/x"),
                ("audience", "demo-api"),
                ("job", job),
            ])
            .send()
            .await
    }

    /// Mint a `read` token for `job`; panics unless it is minted.
    pub async fn mint(&self, job: &str) -> String {
        let response = self.try_mint(job).await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "mint at {} failed: {body}", self.name);
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// Is `token` active at this replica's introspection endpoint?
    pub async fn active(&self, token: &str) -> bool {
        let response = self
            .post_form(stint_proto::INTROSPECTION_PATH, &[("token", token)])
            .await;
        assert_eq!(response.status(), 200, "introspection at {}", self.name);
        let body: Value = response.json().await.unwrap();
        body["active"]
            .as_bool()
            .unwrap_or_else(|| panic!("introspection at {}: {body}", self.name))
    }

    /// Revoke `token` (RFC 7009) here; returns the HTTP status.
    pub async fn revoke_token(&self, token: &str) -> u16 {
        self.post_form(stint_proto::REVOCATION_PATH, &[("token", token)])
            .await
            .status()
            .as_u16()
    }

    /// Revoke job `job` here; returns the HTTP status.
    pub async fn revoke_job(&self, job: &str) -> u16 {
        self.post_form(&format!("/v1/jobs/{job}/revoke"), &[])
            .await
            .status()
            .as_u16()
    }

    /// `/readyz`'s status, or `None` if nothing answered.
    pub async fn ready(&self) -> Option<u16> {
        let response = self.http.get(self.url("/readyz")).send().await.ok()?;
        Some(response.status().as_u16())
    }
}

/// A TCP forwarder on a loopback port: every connection it accepts goes to
/// the backend chosen last ([`Self::send_to`]), as a load balancer in front
/// of the replicas does. Stopped on drop.
pub struct Balancer {
    addr: SocketAddr,
    backend: Arc<Mutex<Option<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let chosen = Arc::clone(&backend);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = *chosen.lock().unwrap();
                tokio::spawn(async move {
                    let Some(target) = target else { return };
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Self {
            addr,
            backend,
            task,
        }
    }

    /// New connections go to `backend` (open ones stay where they are).
    pub fn send_to(&self, backend: SocketAddr) {
        *self.backend.lock().unwrap() = Some(backend);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
