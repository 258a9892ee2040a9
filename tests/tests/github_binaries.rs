//! GitHub targets through the real binaries, as a new user runs them:
//! `stintd` with a GitHub target in its policy reaching the fake GitHub
//! over HTTPS on loopback, `stint exec --target github` giving its command
//! the token (as GitHub Enterprise Server's `GH_ENTERPRISE_TOKEN`: the
//! fake is not github.com) and git a credential helper, and `kill -9` of
//! the daemon
//! between a mint and its revocation.
//!
//! The binaries are the workspace's `target/debug/stintd` and `stint`
//! (build them first: `cargo build -p stintd -p stint-cli`), or
//! `$STINTD_BIN` and `$STINT_BIN`.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use stint_tests::github::{FakeGithub, Fault, Route};
use stint_tests::{Daemon, eventually, policy_with, test_secret};

use stint_tests::workspace_binary as binary;

struct Setup {
    github: FakeGithub,
    dir: tempfile::TempDir,
    listen: String,
}

async fn setup() -> Setup {
    let github = FakeGithub::start().await;
    github.install(
        "acme",
        9001,
        &["web", "api"],
        &[("contents", "write"), ("issues", "write")],
    );
    let dir = tempfile::tempdir().unwrap();
    let token_key = dir.path().join("github-tokens.key");
    std::fs::write(&token_key, format!("{}\n", "ab".repeat(32))).unwrap();
    let policy = policy_with(&format!(
        r#"
[workflows.demo.steps.push]
scopes = ["contents.write:github/acme/*"]
targets = ["github"]
default_ttl = "5m"
max_ttl = "15m"

[targets.github]
kind = "github"
app_id = {}
private_key_file = "{}"
token_key_file = "{}"
api_url = "{}"
ca_file = "{}"
timeout_secs = 5
"#,
        github.app_id,
        github.key_pkcs8_pem.display(),
        token_key.display(),
        github.api_url,
        github.ca_file.display(),
    ));
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    Setup {
        github,
        dir,
        listen: stint_tests::unused_loopback_addr().to_string(),
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

fn audit(data: &Path) -> Vec<Value> {
    stint_tests::audit_records(&data.join(stint_server::AUDIT_FILE))
}

async fn wait_file(path: &Path, timeout: Duration) -> String {
    eventually(
        timeout,
        &format!("{} to be written", path.display()),
        || async {
            std::fs::read_to_string(path)
                .ok()
                .filter(|text| !text.is_empty())
        },
    )
    .await
}

async fn github_get(github: &FakeGithub, token: &str, path: &str) -> u16 {
    let ca = std::fs::read(&github.ca_file).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
        .get(format!("{}{path}", github.api_url))
        .bearer_auth(token)
        .header("user-agent", "stint-tests")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn stint_exec_gives_gh_and_git_a_token_for_one_repository_and_revokes_it_at_exit() {
    let setup = setup().await;
    let daemon = setup.start_daemon();
    let work = setup.dir.path();
    // The command: writes what it got, asks git's credential helpers for
    // the token's host and for another host, then waits to be let go.
    let script = format!(
        r#"printf '%s' "$GH_ENTERPRISE_TOKEN" > {w}/gh_token
printf '%s|%s|%s' "$GH_HOST" "$GH_TOKEN" "$GITHUB_TOKEN" > {w}/github_token
printf 'protocol=https\nhost=%s\n\n' "$STINT_GIT_HOST" | git credential fill > {w}/ours 2>&1
printf 'protocol=https\nhost=elsewhere.example\nusername=nobody\npassword=x\n\n' | git credential fill > {w}/theirs 2>&1
printf done > {w}/ready
i=0; while [ ! -e {w}/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done"#,
        w = work.display()
    );
    let mut child = Command::new(binary("stint", "STINT_BIN"))
        .args([
            "exec",
            "--url",
            &daemon.issuer,
            "--client-id",
            "demo-job",
            "--step",
            "push",
            "--scope",
            "contents.write:github/acme/web",
            "--target",
            "github",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("STINT_CLIENT_SECRET", test_secret("demo-job"))
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GH_TOKEN")
        .env_remove("GITHUB_TOKEN")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_file(&work.join("ready"), Duration::from_secs(60)).await;
    let token = std::fs::read_to_string(work.join("gh_token")).unwrap();
    // The fake's API is not github.com: the token goes to GitHub
    // Enterprise Server's variables only, never to GH_TOKEN or
    // GITHUB_TOKEN, which tools send to github.com.
    assert!(token.starts_with("ghs_"), "GH_ENTERPRISE_TOKEN: {token}");
    let host = setup
        .github
        .api_url
        .trim_start_matches("https://")
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(work.join("github_token")).unwrap(),
        format!("{host}||")
    );
    let ours = std::fs::read_to_string(work.join("ours")).unwrap();
    assert!(ours.contains("username=x-access-token"), "{ours}");
    assert!(ours.contains(&format!("password={token}")), "{ours}");
    let theirs = std::fs::read_to_string(work.join("theirs")).unwrap();
    assert!(
        !theirs.contains(&token),
        "another host never gets the token: {theirs}"
    );

    // GitHub accepts it for the repository the step named, not another.
    assert_eq!(
        github_get(&setup.github, &token, "/repos/acme/web").await,
        200
    );
    assert_eq!(
        github_get(&setup.github, &token, "/repos/acme/api").await,
        404
    );

    std::fs::write(work.join("go"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "stint exec did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    // Revoked when the command exited (stint exec waits for the broker,
    // which revokes before it answers or right after, through its queue).
    eventually(
        Duration::from_secs(20),
        "the token to be revoked at GitHub",
        || async { (!setup.github.is_live(&token)).then_some(()) },
    )
    .await;
    assert_eq!(
        github_get(&setup.github, &token, "/repos/acme/web").await,
        401
    );
}

async fn mint(http: &reqwest::Client, daemon: &Daemon, job: &str) -> String {
    let body: Value = http
        .post(daemon.url(stint_proto::TOKEN_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[
            ("grant_type", "client_credentials"),
            ("step", "push"),
            ("scope", "contents.write:github/acme/api"),
            ("audience", "github"),
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
            ("audience", "github"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_revocation_cut_short_by_kill_9_is_finished_after_the_restart() {
    let setup = setup().await;
    // No pooled connection outlives a killed daemon.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let daemon = setup.start_daemon();

    // Killed with a token live: the next start still knows it, and revokes
    // it when its step token is revoked.
    let step = mint(&http, &daemon, "k9-1").await;
    let credential = exchange(&http, &daemon, &step).await;
    let token = credential["access_token"].as_str().unwrap().to_owned();
    daemon.kill9();
    let daemon = setup.start_daemon();
    assert!(
        setup.github.is_live(&token),
        "a restart does not revoke a live token"
    );
    let response = http
        .post(daemon.url(stint_proto::REVOCATION_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[("token", step.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(
        Duration::from_secs(20),
        "the token to be revoked after the restart",
        || async { (!setup.github.is_live(&token)).then_some(()) },
    )
    .await;

    // Killed while GitHub refuses the revocation: the queue, after the
    // restart, finishes it from the token it kept sealed.
    let step = mint(&http, &daemon, "k9-2").await;
    let credential = exchange(&http, &daemon, &step).await;
    let token = credential["access_token"].as_str().unwrap().to_owned();
    let id = credential["credential_id"].as_str().unwrap().to_owned();
    setup.github.fail_next(
        Route::RevokeToken,
        1,
        Fault::Status {
            status: 500,
            retry_after_secs: None,
            secondary: false,
        },
    );
    let response = http
        .post(daemon.url(stint_proto::REVOCATION_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[("token", step.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let data = setup.data_dir();
    eventually(
        Duration::from_secs(20),
        "a failed revocation attempt",
        || async {
            audit(&data)
                .iter()
                .any(|r| {
                    r["event"] == "target_revocation_failed" && r["target"]["credential_id"] == id
                })
                .then_some(())
        },
    )
    .await;
    daemon.kill9();
    assert!(setup.github.is_live(&token));
    // The token is kept sealed: never in the clear in the store.
    let store = std::fs::read(data.join("stint.db")).unwrap();
    assert!(
        !store.windows(token.len()).any(|w| w == token.as_bytes()),
        "the store holds the token only sealed"
    );
    let _daemon = setup.start_daemon();
    eventually(
        Duration::from_secs(60),
        "the revocation to be finished after the restart",
        || async { (!setup.github.is_live(&token)).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(20), "its record", || async {
        audit(&data)
            .iter()
            .any(|r| {
                r["event"] == "target_credential_revoked" && r["target"]["credential_id"] == id
            })
            .then_some(())
    })
    .await;
}
