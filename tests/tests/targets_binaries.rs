//! Target credentials through the real binaries, as a new user runs them:
//! `stintd` with a PostgreSQL target in its policy, `stint exec --target`
//! running `psql` with the login in its environment, and `kill -9` of the
//! daemon with a credential live, and in the middle of a revocation.
//!
//! The binaries are the workspace's `target/debug/stintd` and `stint`
//! (build them first: `cargo build -p stintd -p stint-cli`), or
//! `$STINTD_BIN` and `$STINT_BIN`.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use stint_tests::postgres::{LOAD_STEP, PgCluster, target_toml};
use stint_tests::{Daemon, eventually, policy_with, run_to_end, test_secret};

const ADMIN: &str = "wh_admin";
const ADMIN_PASSWORD: &str = "wh-admin-password-9d2e";
const DATABASE: &str = "analytics";

use stint_tests::workspace_binary as binary;

struct Setup {
    cluster: PgCluster,
    dir: tempfile::TempDir,
    listen: String,
}

async fn setup() -> Setup {
    let cluster = PgCluster::start();
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    cluster.create_crm_database(DATABASE).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("warehouse.password");
    std::fs::write(&password_file, ADMIN_PASSWORD).unwrap();
    let policy = policy_with(&format!(
        "{LOAD_STEP}{}",
        target_toml("warehouse", cluster.port(), DATABASE, ADMIN, &password_file)
    ));
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let listen = stint_tests::unused_loopback_addr().to_string();
    Setup {
        cluster,
        dir,
        listen,
    }
}

impl Setup {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_daemon(&self) -> Daemon {
        let policy = self.dir.path().join("policy.toml");
        let data = self.data_dir();
        Daemon::start(
            &binary("stintd", "STINTD_BIN"),
            &[
                "--dev",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                &self.listen,
                "--policy",
                policy.to_str().unwrap(),
            ],
        )
    }
}

async fn wait_no_roles(cluster: &PgCluster, timeout: Duration, what: &str) {
    eventually(timeout, what, || async {
        cluster.stint_roles().await.is_empty().then_some(())
    })
    .await;
}

fn stint_exec(daemon: &Daemon, sql: &str) -> (std::process::ExitStatus, String, String) {
    run_to_end(
        Command::new(binary("stint", "STINT_BIN"))
            .args([
                "exec",
                "--url",
                &daemon.issuer,
                "--client-id",
                "demo-job",
                "--step",
                "load",
                "--scope",
                "select:warehouse/crm/accounts",
                // No --audience: with --target the token is minted for the
                // target (the step lists no audiences).
                "--target",
                "warehouse",
                "--",
                "psql",
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-c",
                sql,
            ])
            .env("STINT_CLIENT_SECRET", test_secret("demo-job"))
            .env_remove("PGPASSWORD")
            .env_remove("PGUSER"),
        Duration::from_secs(60),
    )
}

#[tokio::test]
async fn stint_exec_runs_psql_with_its_own_login_and_leaves_nothing_behind() {
    let setup = setup().await;
    let daemon = setup.start_daemon();

    let (status, stdout, stderr) = stint_exec(&daemon, "select name from crm.accounts");
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "acme", "{stderr}");
    wait_no_roles(
        &setup.cluster,
        Duration::from_secs(20),
        "the login to be dropped after stint exec returns",
    )
    .await;

    let (status, stdout, stderr) = stint_exec(&daemon, "select value from crm.secrets");
    assert!(!status.success(), "{stdout}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    wait_no_roles(
        &setup.cluster,
        Duration::from_secs(20),
        "the login to be dropped after a failed command",
    )
    .await;
}

async fn mint(http: &reqwest::Client, daemon: &Daemon, job: &str) -> String {
    let body: Value = http
        .post(daemon.url(stint_proto::TOKEN_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[
            ("grant_type", "client_credentials"),
            ("step", "load"),
            ("scope", "select:warehouse/crm/accounts"),
            ("audience", "warehouse"),
            ("job", job),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("mint failed: {body}"))
        .to_owned()
}

async fn exchange(http: &reqwest::Client, daemon: &Daemon, token: &str) -> Value {
    let response = http
        .post(daemon.url(stint_proto::TOKEN_PATH))
        .form(&[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", "warehouse"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn revoke(http: &reqwest::Client, daemon: &Daemon, token: &str) {
    let response = http
        .post(daemon.url(stint_proto::REVOCATION_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn audit(data: &Path) -> Vec<Value> {
    stint_tests::audit_records(&data.join(stint_server::AUDIT_FILE))
}

#[tokio::test]
async fn a_credential_survives_kill_9_and_a_revocation_interrupted_by_kill_9_is_finished() {
    let mut setup = setup().await;
    let http = reqwest::Client::new();

    // Killed with a credential live: the next start still knows it.
    let daemon = setup.start_daemon();
    let token = mint(&http, &daemon, "k9-1").await;
    let credential = exchange(&http, &daemon, &token).await;
    let role = credential["postgres"]["user"].as_str().unwrap().to_owned();
    daemon.kill9();
    assert_eq!(setup.cluster.stint_roles().await, vec![role.clone()]);
    let daemon = setup.start_daemon();
    assert_eq!(
        setup.cluster.stint_roles().await,
        vec![role.clone()],
        "a live credential is not destroyed by a restart"
    );
    revoke(&http, &daemon, &token).await;
    wait_no_roles(
        &setup.cluster,
        Duration::from_secs(20),
        "the role to be dropped after the restart",
    )
    .await;

    // Killed while PostgreSQL is down and the revocation is queued.
    let token = mint(&http, &daemon, "k9-2").await;
    let credential = exchange(&http, &daemon, &token).await;
    let role = credential["postgres"]["user"].as_str().unwrap().to_owned();
    setup.cluster.stop();
    revoke(&http, &daemon, &token).await;
    let data = setup.data_dir();
    eventually(
        Duration::from_secs(20),
        "a failed revocation attempt",
        || async {
            audit(&data)
                .iter()
                .any(|r| {
                    r["event"] == "target_revocation_failed" && r["target"]["upstream_id"] == role
                })
                .then_some(())
        },
    )
    .await;
    daemon.kill9();
    setup.cluster.start_again();
    assert_eq!(setup.cluster.stint_roles().await, vec![role.clone()]);
    let _daemon = setup.start_daemon();
    wait_no_roles(
        &setup.cluster,
        Duration::from_secs(60),
        "the interrupted revocation to be finished after the restart",
    )
    .await;
}
