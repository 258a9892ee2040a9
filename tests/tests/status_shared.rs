//! Status lists on a shared store: two brokers (the library, in-process)
//! on one PostgreSQL behind one issuer URL. Each serves the other's lists,
//! read from the store, and its revocations show in them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use stint_core::status_list::{INVALID, StatusList, VALID};
use stint_proto::{DevClient, REVOCATION_PATH, TOKEN_PATH};
use stint_server::{Config, PolicySource, RunningServer, StoreConfig};
use stint_store::PostgresStoreSettings;
use stint_tests::postgres::PgCluster;
use stint_tests::{decode_jwt, eventually, policy_with, test_secret};

/// What the load balancer's URL would be: every token's `iss`, and the
/// base of its status list URIs.
const ISSUER: &str = "http://stint.lb.test";
/// How long a write at one broker may take to show at the other.
const PROPAGATION: Duration = Duration::from_secs(15);

struct Broker {
    server: Option<RunningServer>,
    config: Config,
    http: reqwest::Client,
    client: (String, String),
}

impl Broker {
    async fn start(dir: &Path, name: &str, settings: &PostgresStoreSettings) -> Self {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, policy_with("")).unwrap();
        let kek = dir.join("kek");
        std::fs::write(&kek, [0x5au8; 32]).unwrap();
        let mut config = Config::dev(data, "127.0.0.1:0".parse().unwrap());
        config.policy = PolicySource::File(policy);
        config.store = StoreConfig::Postgres(settings.clone());
        config.key_encryption_key_file = Some(kek);
        config.issuer = Some(ISSUER.to_owned());
        config.key_publish_lead = Duration::ZERO;
        let mut broker = Self {
            server: None,
            config,
            http: reqwest::Client::new(),
            client: (String::new(), String::new()),
        };
        broker.run().await;
        broker
    }

    async fn run(&mut self) {
        let server = stint_server::start(self.config.clone())
            .await
            .expect("the broker starts");
        self.client = match server.dev_client_path() {
            Some(path) => {
                let dev: DevClient = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
                (dev.client_id, dev.client_secret)
            }
            None => ("demo-job".to_owned(), test_secret("demo-job")),
        };
        self.server = Some(server);
    }

    async fn restart(&mut self) {
        self.config.listen = self.server.as_ref().unwrap().local_addr();
        self.server.take().unwrap().shutdown().await;
        self.run().await;
    }

    /// `path` at this broker itself (not at the issuer's URL).
    fn url(&self, path: &str) -> String {
        let addr = self.server.as_ref().unwrap().local_addr();
        format!("http://{addr}{path}")
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .basic_auth(&self.client.0, Some(&self.client.1))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// A token for `job`: the token, its status list's path, its index.
    async fn mint(&self, job: &str) -> (String, String, u64) {
        let response = self
            .post_form(
                TOKEN_PATH,
                &[
                    ("grant_type", "client_credentials"),
                    ("step", "read"),
                    ("scope", "read:demo/a"),
                    ("audience", "demo-api"),
                    ("job", job),
                ],
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "mint failed: {body}");
        let token = body["access_token"].as_str().unwrap().to_owned();
        let reference = decode_jwt(&token).1["status"]["status_list"].clone();
        let uri = reference["uri"].as_str().unwrap();
        let path = uri
            .strip_prefix(ISSUER)
            .unwrap_or_else(|| panic!("{uri} is under the issuer"));
        (token, path.to_owned(), reference["idx"].as_u64().unwrap())
    }

    /// The status at `idx` in the list at `path` as this broker serves it.
    async fn status(&self, path: &str, idx: u64) -> u8 {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} is served");
        assert_eq!(
            response.headers()["cache-control"].to_str().unwrap(),
            "public, no-cache",
            "cached as own lists are"
        );
        assert!(response.headers().contains_key("etag"));
        let (_, claims) = decode_jwt(&response.text().await.unwrap());
        assert_eq!(claims["sub"], format!("{ISSUER}{path}"));
        StatusList::decode(1, claims["status_list"]["lst"].as_str().unwrap())
            .unwrap()
            .get(idx)
            .unwrap()
    }

    async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_minted_at_one_broker_is_served_by_the_other_and_takes_its_revocations() {
    let cluster = PgCluster::start();
    let settings = cluster
        .create_store_database("stint", "stint_store", "store-pw-5e2d8b1c")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let mut a = Broker::start(dir.path(), "a", &settings).await;
    let b = Broker::start(dir.path(), "b", &settings).await;

    // A list B found at its start-up (A's first), which A still adds to.
    let (token, path, idx) = a.mint("shared-1").await;
    eventually(PROPAGATION, "A's new entry valid at B", || async {
        (b.status(&path, idx).await == VALID).then_some(())
    })
    .await;
    assert_eq!(
        b.post_form(REVOCATION_PATH, &[("token", &token)])
            .await
            .status(),
        200
    );
    assert_eq!(b.status(&path, idx).await, INVALID, "revoked at B: at once");

    // A list A starts after B did: B reads it from the store on request.
    a.restart().await;
    let (_, later_path, kept) = a.mint("shared-2").await;
    let (_, _, revoked) = a.mint("shared-3").await;
    assert_ne!(later_path, path, "a new list for A's new run");
    eventually(PROPAGATION, "A's new list valid at B", || async {
        (b.status(&later_path, revoked).await == VALID).then_some(())
    })
    .await;
    assert_eq!(b.status(&later_path, kept).await, VALID);
    assert_eq!(
        b.post_form("/v1/jobs/shared-3/revoke", &[]).await.status(),
        200
    );
    assert_eq!(b.status(&later_path, revoked).await, INVALID);
    assert_eq!(b.status(&later_path, kept).await, VALID, "only that job's");
    // And A learns of B's revocations through the store.
    eventually(PROPAGATION, "B's revocation at A", || async {
        (a.status(&later_path, revoked).await == INVALID).then_some(())
    })
    .await;

    // An id nobody started: 404 at both.
    for broker in [&a, &b] {
        let response = broker
            .http
            .get(broker.url("/v1/status/AAAAAAAAAAAAAAAA"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
    a.shutdown().await;
    b.shutdown().await;
}
