//! The `stint` binary against a real broker on loopback: every command,
//! the exit codes, and `stint exec` revoking its token on each way out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use tokio::process::Command;

struct Broker {
    server: Option<stint_server::RunningServer>,
    dir: tempfile::TempDir,
    credentials: PathBuf,
}

impl Broker {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config =
            stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        let server = stint_server::start(config).await.unwrap();
        let credentials = server.dev_client_path().unwrap().to_owned();
        Self {
            server: Some(server),
            dir,
            credentials,
        }
    }

    fn issuer(&self) -> String {
        self.server.as_ref().unwrap().issuer().to_owned()
    }

    /// `stint ARGS...` with only the credentials file for configuration.
    fn stint(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stint"));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let Some((subcommand, rest)) = args.split_first() else {
            return command;
        };
        command.arg(subcommand);
        if matches!(*subcommand, "token" | "exec" | "revoke" | "introspect") {
            // Before the arguments: anything after `exec ... --` is the
            // command's.
            command.arg("--credentials").arg(&self.credentials);
        }
        command.args(rest);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.stint(args).output().await.unwrap()
    }

    /// `stint introspect --json`: its answer, which its status must agree
    /// with (0 active, 3 not).
    async fn is_active(&self, token: &str) -> bool {
        let output = self.run(&["introspect", "--json", token]).await;
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
        let active = answer["active"] == true;
        assert_exit(
            &output,
            if active { 0 } else { 3 },
            "introspect: the status says active or not",
        );
        active
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}\nstdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// Wait for the child to write its token to `path`.
async fn token_written_to(path: &Path) -> String {
    for _ in 0..500 {
        if let Ok(token) = std::fs::read_to_string(path)
            && token.ends_with('\n')
        {
            return token.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the command never wrote its token to {}", path.display());
}

const READ: [&str; 6] = [
    "--step",
    "read",
    "--scope",
    "read:demo/a",
    "--audience",
    "demo-api",
];

fn exec_args<'a>(extra: &[&'a str], script: &'a str) -> Vec<&'a str> {
    let mut args = vec!["exec"];
    args.extend_from_slice(&READ);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn token_introspect_verify_and_revoke() {
    let broker = Broker::start().await;
    let mut args = vec!["token"];
    args.extend_from_slice(&READ);
    args.extend_from_slice(&["--job", "j-1", "--ttl", "2m", "--json"]);
    let output = broker.run(&args).await;
    assert_success(&output, "token --json");
    let response: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(response["token_type"], "Bearer");
    assert_eq!(response["expires_in"], 120);
    assert_eq!(response["scope"], "read:demo/a");
    assert_eq!(response["job"], "j-1");
    let token = response["access_token"].as_str().unwrap().to_owned();
    assert!(
        broker.is_active(&token).await,
        "`stint token` hands the token over: it is not revoked when stint exits"
    );

    let output = broker.run(&["introspect", &token]).await;
    assert_success(&output, "introspect");
    assert!(
        text(&output.stdout).starts_with("active\n"),
        "{}",
        text(&output.stdout)
    );
    assert!(text(&output.stdout).contains("job: j-1"));

    let issuer = broker.issuer();
    let output = broker
        .run(&["verify", "--url", &issuer, "--audience", "demo-api", &token])
        .await;
    assert_success(&output, "verify");
    assert!(text(&output.stdout).starts_with("valid"));
    let output = broker
        .run(&[
            "verify",
            "--url",
            &issuer,
            "--audience",
            "other-api",
            &token,
        ])
        .await;
    assert_exit(&output, 3, "verify for another audience is a rejection");
    assert!(
        text(&output.stderr).contains("another audience"),
        "{}",
        text(&output.stderr)
    );

    let output = broker.run(&["revoke", &token]).await;
    assert_success(&output, "revoke");
    assert!(!broker.is_active(&token).await);
    let output = broker.run(&["introspect", &token]).await;
    assert!(text(&output.stdout).starts_with("inactive"));
    assert_exit(&output, 3, "introspect of a revoked token");

    // A job: two tokens, one revocation.
    let mut first = vec!["token"];
    first.extend_from_slice(&READ);
    first.extend_from_slice(&["--job", "j-2"]);
    let a = text(&broker.run(&first).await.stdout).trim().to_owned();
    let b = text(&broker.run(&first).await.stdout).trim().to_owned();
    let output = broker.run(&["revoke", "--job", "j-2", "--json"]).await;
    assert_success(&output, "revoke --job");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["job"], "j-2");
    assert!(!broker.is_active(&a).await && !broker.is_active(&b).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_revokes_when_the_command_succeeds_fails_or_is_killed() {
    let broker = Broker::start().await;
    let out = broker.file("token");
    let out_arg = out.display().to_string();

    // Success: exit 0, and the command saw the token.
    let script = format!("echo \"$STINT_TOKEN\" > {out_arg}");
    let output = broker.run(&exec_args(&[], &script)).await;
    assert_success(&output, "exec success");
    let token = token_written_to(&out).await;
    assert!(token.starts_with("ey"), "{token}");
    assert!(!broker.is_active(&token).await, "revoked after success");

    // Failure: the command's status comes back.
    std::fs::remove_file(&out).unwrap();
    let script = format!("echo \"$STINT_TOKEN\" > {out_arg}; exit 7");
    let output = broker.run(&exec_args(&[], &script)).await;
    assert_exit(&output, 7, "exec failure");
    let token = token_written_to(&out).await;
    assert!(!broker.is_active(&token).await, "revoked after failure");

    // Killed by a signal: 128 + 9.
    std::fs::remove_file(&out).unwrap();
    let script = format!("echo \"$STINT_TOKEN\" > {out_arg}; kill -9 $$");
    let output = broker.run(&exec_args(&[], &script)).await;
    assert_exit(&output, 137, "exec killed");
    let token = token_written_to(&out).await;
    assert!(!broker.is_active(&token).await, "revoked after the kill");

    // The workload's secret stays with stint: the command gets the token
    // and nothing that could mint another.
    std::fs::remove_file(&out).unwrap();
    let script = format!(
        "test -z \"$STINT_CLIENT_SECRET\" && test -n \"$STINT_TOKEN\" && echo \"$STINT_TOKEN\" > {out_arg}"
    );
    let output = broker
        .stint(&exec_args(&[], &script))
        .env("STINT_CLIENT_SECRET", "the-workloads-long-lived-secret")
        .output()
        .await
        .unwrap();
    assert_success(&output, "exec without the secret in the child");
    let token = token_written_to(&out).await;
    assert!(!broker.is_active(&token).await);

    // Another variable name.
    std::fs::remove_file(&out).unwrap();
    let script = format!("test -z \"$STINT_TOKEN\" && echo \"$DEPLOY_TOKEN\" > {out_arg}");
    let output = broker
        .run(&exec_args(&["--env-var", "DEPLOY_TOKEN"], &script))
        .await;
    assert_success(&output, "exec --env-var");
    let token = token_written_to(&out).await;
    assert!(!broker.is_active(&token).await);

    // A command that does not exist: 127, and the token still revoked.
    let mut args = vec!["exec"];
    args.extend_from_slice(&READ);
    args.extend_from_slice(&["--", "/nonexistent/cmd"]);
    let output = broker.run(&args).await;
    assert_exit(&output, 127, "exec of a missing command");
    let log = std::fs::read_to_string(broker.dir.path().join("data").join("audit.jsonl")).unwrap();
    let last: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "token_revoked", "{last}");
}

/// `stint` itself asked to stop: the signal goes to the command, `stint`
/// waits for it, revokes, and exits with its status.
#[tokio::test(flavor = "multi_thread")]
async fn exec_forwards_signals_then_revokes() {
    let broker = Broker::start().await;
    for (signal, name) in [
        (rustix::process::Signal::TERM, "TERM"),
        (rustix::process::Signal::INT, "INT"),
        (rustix::process::Signal::HUP, "HUP"),
    ] {
        let out = broker.file(&format!("token-{name}"));
        let script = format!(
            "trap 'exit 42' {name}; echo \"$STINT_TOKEN\" > {}; while :; do sleep 0.05; done",
            out.display()
        );
        let mut child = broker.stint(&exec_args(&[], &script)).spawn().unwrap();
        let token = token_written_to(&out).await;
        assert!(
            broker.is_active(&token).await,
            "active while the command runs"
        );
        let pid =
            rustix::process::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("stint exits after the command does")
            .unwrap();
        assert_eq!(
            status.code(),
            Some(42),
            "SIG{name}: the command's own status"
        );
        assert!(!broker.is_active(&token).await, "SIG{name}: revoked");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_tell_usage_denial_and_unavailability_apart() {
    let broker = Broker::start().await;
    // Usage: no --step.
    let output = broker.run(&["token", "--scope", "read:demo/a"]).await;
    assert_exit(&output, 2, "usage");
    // Denied: a scope the step does not allow.
    let output = broker
        .run(&["token", "--step", "read", "--scope", "write:demo/a"])
        .await;
    assert_exit(&output, 3, "denied");
    assert!(
        text(&output.stderr).contains("invalid_scope"),
        "{}",
        text(&output.stderr)
    );
    // Unavailable: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let output = Command::new(env!("CARGO_BIN_EXE_stint"))
        .env_clear()
        .env("STINT_URL", &url)
        .env("STINT_CLIENT_ID", "demo-job")
        .env("STINT_CLIENT_SECRET", "irrelevant-secret-value")
        .args(["token", "--step", "read", "--scope", "read:demo/a"])
        .output()
        .await
        .unwrap();
    assert_exit(&output, 4, "unavailable");
    assert!(!text(&output.stderr).contains("irrelevant-secret-value"));
    // No credentials at all.
    let output = Command::new(env!("CARGO_BIN_EXE_stint"))
        .env_clear()
        .env("STINT_URL", &url)
        .args(["token", "--step", "read", "--scope", "read:demo/a"])
        .output()
        .await
        .unwrap();
    assert_exit(&output, 2, "no credentials");
    assert!(text(&output.stderr).contains("STINT_CLIENT_SECRET"));
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_check_and_audit_verify() {
    let broker = Broker::start().await;
    let good = broker.file("good.toml");
    std::fs::write(
        &good,
        "[workloads.w]\nsecret_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nworkflows = [\"f\"]\n\n[workflows.f]\nreview_by = 2020-01-01\n\n[workflows.f.steps.s]\nscopes = [\"read:x/**\"]\n",
    )
    .unwrap();
    // Valid, but past its review date: refused.
    let output = broker
        .run(&["policy", "check", good.to_str().unwrap()])
        .await;
    assert_exit(&output, 1, "past its review date");
    assert!(
        text(&output.stderr).contains("1 workflow is past its review date"),
        "{}",
        text(&output.stderr)
    );
    // Due soon: a warning, and a pass.
    let soon = (stint_core::chrono::Utc::now().date_naive() + stint_core::chrono::Days::new(3))
        .format("%Y-%m-%d")
        .to_string();
    std::fs::write(
        &good,
        format!("[workloads.w]\nsecret_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nworkflows = [\"f\"]\n\n[workflows.f]\nreview_by = {soon}\n\n[workflows.f.steps.s]\nscopes = [\"read:x/**\"]\n"),
    )
    .unwrap();
    let output = broker
        .run(&["policy", "check", good.to_str().unwrap()])
        .await;
    assert_success(&output, "policy check");
    assert!(text(&output.stdout).contains("ok (1 workloads, 1 workflows)"));
    assert!(
        text(&output.stderr).contains("due for review in 3 days"),
        "{}",
        text(&output.stderr)
    );
    let output = broker
        .run(&[
            "policy",
            "check",
            "--warn-days",
            "2",
            good.to_str().unwrap(),
        ])
        .await;
    assert_success(&output, "policy check");
    assert!(!text(&output.stderr).contains("due for review"));

    let bad = broker.file("bad.toml");
    std::fs::write(
        &bad,
        "[workflows.f]\nreview_by = 2099-01-01\n[workflows.f.steps.s]\nscopes = [\"read:*\"]\n",
    )
    .unwrap();
    let output = broker
        .run(&["policy", "check", bad.to_str().unwrap()])
        .await;
    assert_exit(&output, 1, "invalid policy");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("bad.toml:4"), "file and line: {stderr}");

    // Make a few records, then verify and tamper.
    let mut args = vec!["token"];
    args.extend_from_slice(&READ);
    assert_success(&broker.run(&args).await, "token");
    let log = broker.dir.path().join("data").join("audit.jsonl");
    let output = broker
        .run(&["audit", "verify", log.to_str().unwrap()])
        .await;
    assert_success(&output, "audit verify");
    assert!(text(&output.stdout).contains("chain intact"));
    let original = std::fs::read_to_string(&log).unwrap();
    let tampered = original.replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1);
    assert_ne!(tampered, original);
    let copy = broker.file("tampered.jsonl");
    std::fs::write(&copy, tampered).unwrap();
    let output = broker
        .run(&["audit", "verify", copy.to_str().unwrap()])
        .await;
    assert_exit(&output, 1, "tampered log");
    assert!(
        text(&output.stderr).contains("chain broken: line"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_needs_an_admin() {
    let dir = tempfile::tempdir().unwrap();
    let admin_secret = "a-test-admin-secret-0123456789abcdef";
    let policy = format!(
        "[workloads.key-admin]\nsecret_sha256 = \"{}\"\ncapabilities = [\"admin\"]\n\n\
         [workloads.job]\nsecret_sha256 = \"{}\"\nworkflows = [\"f\"]\n\n\
         [workflows.f]\nreview_by = 2099-01-01\n\n[workflows.f.steps.s]\nscopes = [\"read:x/**\"]\n",
        stint_core::secret::hash_hex(admin_secret),
        stint_core::secret::hash_hex("a-test-job-secret-0123456789abcdef"),
    );
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let mut config =
        stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.policy = stint_server::PolicySource::File(path);
    let server = stint_server::start(config).await.unwrap();
    let rotate = |id: &str, secret: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stint"));
        command
            .env_clear()
            .env("STINT_URL", server.issuer())
            .env("STINT_CLIENT_ID", id)
            .env("STINT_CLIENT_SECRET", secret)
            .args(["keys", "rotate", "--json"]);
        command
    };
    let output = rotate("job", "a-test-job-secret-0123456789abcdef")
        .output()
        .await
        .unwrap();
    assert_exit(&output, 3, "a workload without the admin capability");
    assert!(
        text(&output.stderr).contains("admin capability"),
        "{}",
        text(&output.stderr)
    );
    let before = server.published_kids();
    let output = rotate("key-admin", admin_secret).output().await.unwrap();
    assert_success(&output, "keys rotate");
    let rotation: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rotation["retired_kid"], before[0]);
    assert_eq!(server.published_kids().len(), 2);
    server.shutdown().await;
}

/// A CI job with no secret at all: `stint exec --subject-token-file` mints
/// through token exchange, and revokes with the same ID token.
#[tokio::test(flavor = "multi_thread")]
async fn exec_with_a_platform_id_token_and_no_secret() {
    use stint_tests::idp::TestIdp;
    let idp = TestIdp::start().await;
    let policy = stint_tests::policy_with(&format!(
        "\n[issuers.github]\nurl = \"{}\"\npreset = \"github-actions\"\naudiences = [\"stint-test\"]\n\n\
         [workloads.web-deployer]\nworkflows = [\"demo\"]\n\n\
         [[workloads.web-deployer.federated]]\nissuer = \"github\"\n\
         claims = {{ repository = \"acme/web\", ref = \"refs/heads/main\" }}\n",
        idp.issuer
    ));
    let broker = stint_tests::TestBroker::start_with(stint_tests::BrokerOptions {
        policy: Some(policy),
        federation_ca: Some(idp.ca_file.clone()),
        ..stint_tests::BrokerOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let id_token_file = dir.path().join("id-token");
    std::fs::write(
        &id_token_file,
        idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", "stint-test")),
    )
    .unwrap();
    let out = dir.path().join("token");
    let script = format!("echo \"$STINT_TOKEN\" > {}", out.display());
    let output = Command::new(env!("CARGO_BIN_EXE_stint"))
        .env_clear()
        .env("STINT_URL", broker.issuer())
        .env("STINT_SUBJECT_TOKEN_FILE", &id_token_file)
        .args(exec_args(&[], &script))
        .output()
        .await
        .unwrap();
    assert_success(&output, "exec with a subject token");
    let token = token_written_to(&out).await;
    assert_eq!(
        broker.introspect(&token).await["active"],
        false,
        "revoked on exit, with the ID token as the credential"
    );
    let (_, claims) = stint_tests::decode_jwt(&token);
    assert_eq!(claims["sub"], "web-deployer");
    assert_eq!(claims["job"], "9876543210-1");

    // The token itself in STINT_SUBJECT_TOKEN (GitLab's id_tokens style);
    // the command never sees it.
    std::fs::remove_file(&out).unwrap();
    let script = format!(
        "test -z \"$STINT_SUBJECT_TOKEN\" && echo \"$STINT_TOKEN\" > {}",
        out.display()
    );
    let output = Command::new(env!("CARGO_BIN_EXE_stint"))
        .env_clear()
        .env("STINT_URL", broker.issuer())
        .env(
            "STINT_SUBJECT_TOKEN",
            std::fs::read_to_string(&id_token_file).unwrap(),
        )
        .args(exec_args(&[], &script))
        .output()
        .await
        .unwrap();
    assert_success(&output, "exec with STINT_SUBJECT_TOKEN");
    let token = token_written_to(&out).await;
    assert_eq!(broker.introspect(&token).await["active"], false);
}

/// A policy whose deploy step's production scope needs one approval from
/// `sre` (alice), and an operator key for her.
fn elevation_broker_options() -> stint_tests::BrokerOptions {
    let alice = stint_core::secret::hash_hex("stint_operator_alice");
    let policy = stint_tests::policy_with(&format!(
        "\n[workflows.demo.steps.deploy]\nscopes = [\"deploy:demo/staging\"]\n\n\
         [workflows.demo.steps.deploy.elevation]\nscopes = [\"deploy:demo/prod/*\"]\n\
         approver_groups = [\"sre\"]\nmax_duration = \"30m\"\nmax_wait = \"10m\"\n\n\
         [operators.alice]\ngroups = [\"sre\"]\nkey_sha256 = \"{alice}\"\n"
    ));
    stint_tests::BrokerOptions {
        policy: Some(policy),
        ..stint_tests::BrokerOptions::default()
    }
}

/// `stint ARGS...` as workload demo-job.
fn stint_as_job(broker: &stint_tests::TestBroker, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stint"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("STINT_URL", broker.issuer())
        .env("STINT_CLIENT_ID", "demo-job")
        .env("STINT_CLIENT_SECRET", stint_tests::test_secret("demo-job"))
        .args(args);
    command
}

/// `stint ARGS...` as operator alice.
async fn stint_as_alice(broker: &stint_tests::TestBroker, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stint"))
        .env_clear()
        .env("STINT_URL", broker.issuer())
        .env("STINT_OPERATOR_KEY", "stint_operator_alice")
        .args(args)
        .output()
        .await
        .unwrap()
}

/// Wait for the pending request of `job`, as an operator lists it.
async fn pending_request_of(broker: &stint_tests::TestBroker, job: &str) -> String {
    for _ in 0..250 {
        let output = stint_as_alice(broker, &["approvals", "--pending", "--json"]).await;
        assert_success(&output, "approvals --pending");
        let list: Value = serde_json::from_slice(&output.stdout).unwrap();
        if let Some(found) = list.as_array().unwrap().iter().find(|a| a["job"] == job) {
            return found["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    panic!("no pending approval request for {job}");
}

fn deploy_exec<'a>(job: &'a str, extra: &[&'a str], script: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "exec",
        "--step",
        "deploy",
        "--scope",
        "deploy:demo/staging",
        "--scope",
        "deploy:demo/prod/web",
        "--audience",
        "demo-api",
        "--job",
        job,
        "--reason",
        "hotfix for INC-42",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    args
}

#[tokio::test]
async fn exec_waits_for_an_operator_and_approvals_commands_decide() {
    let broker = stint_tests::TestBroker::start_with(elevation_broker_options()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("token");
    let script = format!("echo \"$STINT_TOKEN\" > {}", out.display());

    // A waiting exec, approved from another shell.
    let waiting = stint_as_job(&broker, &deploy_exec("job-cli", &[], &script))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = pending_request_of(&broker, "job-cli").await;
    let shown = stint_as_alice(&broker, &["approvals", "show", &id]).await;
    assert_success(&shown, "approvals show");
    let shown = text(&shown.stdout);
    assert!(shown.contains("pending"), "{shown}");
    assert!(shown.contains("reason: hotfix for INC-42"), "{shown}");
    assert!(shown.contains("scopes: deploy:demo/prod/web"), "{shown}");
    let approved = stint_as_alice(
        &broker,
        &["approve", &id, "--duration", "10m", "--comment", "go"],
    )
    .await;
    assert_success(&approved, "approve");
    assert!(text(&approved.stdout).contains("approved"));
    let output = waiting.wait_with_output().await.unwrap();
    assert_success(&output, "exec after the approval");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("stint approve {id}")),
        "exec says what the operators must do: {stderr}"
    );
    let token = token_written_to(&out).await;
    let (_, claims) = stint_tests::decode_jwt(&token);
    assert_eq!(claims["elev"], id.as_str());
    assert_eq!(
        broker.introspect(&token).await["active"],
        false,
        "revoked on exit"
    );
    let revoked = stint_as_alice(&broker, &["approvals", "revoke", &id, "--comment", "done"]).await;
    assert_success(&revoked, "approvals revoke");
    assert!(text(&revoked.stdout).contains("revoked"));

    // --no-wait: the request is made, and stint says so and exits 5.
    let output = stint_as_job(&broker, &deploy_exec("job-cli-2", &["--no-wait"], "true"))
        .output()
        .await
        .unwrap();
    assert_exit(&output, 5, "exec --no-wait");
    assert!(text(&output.stderr).contains("stint approve apr-"));

    // A denial ends the wait with exit 3 and the operator's reason.
    let waiting = stint_as_job(&broker, &deploy_exec("job-cli-3", &[], "true"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = pending_request_of(&broker, "job-cli-3").await;
    let denied = stint_as_alice(&broker, &["deny", &id, "--comment", "change freeze"]).await;
    assert_success(&denied, "deny");
    let output = waiting.wait_with_output().await.unwrap();
    assert_exit(&output, 3, "exec after a denial");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("denied"), "{stderr}");
    assert!(stderr.contains("change freeze"), "{stderr}");

    // Listing without --pending shows every request kept.
    let all = stint_as_alice(&broker, &["approvals"]).await;
    assert_success(&all, "approvals");
    let all = text(&all.stdout);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(all.contains("revoked") && all.contains("denied") && all.contains("pending"));
    // Without operator credentials: a usage error, not a crash.
    let output = Command::new(env!("CARGO_BIN_EXE_stint"))
        .env_clear()
        .env("STINT_URL", broker.issuer())
        .args(["approvals"])
        .output()
        .await
        .unwrap();
    assert_exit(&output, 2, "no operator credentials");
}

#[tokio::test]
async fn workloads_stop_and_enable_and_step_revocation() {
    let broker = stint_tests::TestBroker::start_with(elevation_broker_options()).await;
    let read = [
        "token",
        "--step",
        "read",
        "--scope",
        "read:demo/a",
        "--audience",
        "demo-api",
        "--job",
        "job-w",
    ];
    let output = stint_as_job(&broker, &read).output().await.unwrap();
    assert_success(&output, "token before the stop");
    let held = text(&output.stdout).trim().to_owned();

    // One step of the job.
    let output = stint_as_job(&broker, &["revoke", "--job", "job-w", "--step", "read"])
        .output()
        .await
        .unwrap();
    assert_success(&output, "revoke --step");
    assert!(text(&output.stdout).contains("step read of job job-w revoked"));
    assert_eq!(broker.introspect(&held).await["active"], false);

    // The emergency stop.
    let stopped = stint_as_alice(
        &broker,
        &["workloads", "stop", "demo-job", "--comment", "leak"],
    )
    .await;
    assert_success(&stopped, "workloads stop");
    let read_other_job = [
        "token",
        "--step",
        "read",
        "--scope",
        "read:demo/a",
        "--audience",
        "demo-api",
    ];
    let output = stint_as_job(&broker, &read_other_job)
        .output()
        .await
        .unwrap();
    assert_exit(&output, 3, "a stopped workload is denied");
    let enabled = stint_as_alice(&broker, &["workloads", "enable", "demo-job"]).await;
    assert_success(&enabled, "workloads enable");
    broker
        .clock
        .advance(stint_core::chrono::TimeDelta::seconds(1));
    let output = stint_as_job(&broker, &read_other_job)
        .output()
        .await
        .unwrap();
    assert_success(&output, "token after enable");
}

/// Standard output (or error) to a pipe whose reader has already gone, as
/// `stint ... | true` leaves it by the time `stint` writes.
fn closed_pipe() -> std::process::Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer.into()
}

/// Run `command` with its standard output closed (tokio's `output()` would
/// replace it with a pipe of its own).
async fn run_into_closed_stdout(mut command: Command) -> Output {
    command
        .stdout(closed_pipe())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap()
}

/// Run `command` with its standard error closed.
async fn run_into_closed_stderr(mut command: Command) -> Output {
    command
        .stdout(std::process::Stdio::piped())
        .stderr(closed_pipe())
        .spawn()
        .unwrap()
        .wait_with_output()
        .await
        .unwrap()
}

/// `stint ... | head`: a reader that went away is no error and no panic;
/// `stint` exits quietly with 141, as a tool that SIGPIPE ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_standard_output_ends_stint_quietly() {
    let broker = Broker::start().await;
    let mut args = vec!["token"];
    args.extend_from_slice(&READ);
    let token = text(&broker.run(&args).await.stdout).trim().to_owned();
    let issuer = broker.issuer();
    let policy = broker.file("policy.toml");
    std::fs::write(
        &policy,
        "[workloads.w]\nsecret_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nworkflows = [\"f\"]\n\n[workflows.f]\nreview_by = 2099-01-01\n\n[workflows.f.steps.s]\nscopes = [\"read:x/**\"]\n",
    )
    .unwrap();
    let policy = policy.display().to_string();
    let commands: [&[&str]; 6] = [
        &["verify", "--url", &issuer, "--audience", "demo-api", &token],
        &["verify", "--url", &issuer, "--json", &token],
        &["introspect", &token],
        &["introspect", "--json", &token],
        &["policy", "check", &policy],
        &["--help"],
    ];
    for args in commands {
        let output = run_into_closed_stdout(broker.stint(args)).await;
        assert_exit(&output, 141, &format!("stint {args:?} | true"));
        assert!(
            output.stderr.is_empty(),
            "stint {args:?} | true says nothing: {}",
            text(&output.stderr)
        );
    }
    // The token was still introspected (and is still active): the answer,
    // not the action, is what was lost.
    assert!(broker.is_active(&token).await);
}

/// `stint token | true`: no one received the token, so it is revoked
/// rather than left valid until it expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_no_one_received_is_revoked() {
    let broker = Broker::start().await;
    let mut args = vec!["token"];
    args.extend_from_slice(&READ);
    args.extend_from_slice(&["--job", "j-pipe"]);
    let output = run_into_closed_stdout(broker.stint(&args)).await;
    assert_exit(&output, 141, "stint token | true");
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));
    let log = std::fs::read_to_string(broker.dir.path().join("data").join("audit.jsonl")).unwrap();
    let records: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let minted = records
        .iter()
        .find(|r| r["event"] == "token_minted" && r["job"] == "j-pipe")
        .expect("the token was minted");
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "token_revoked" && r["jti"] == minted["jti"]),
        "the token no one received is revoked: {log}"
    );
}

/// A closed standard error does not turn a failure into a panic: the
/// status still says what happened.
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_standard_error_keeps_the_exit_status() {
    let broker = Broker::start().await;
    let output = run_into_closed_stderr(broker.stint(&[
        "token",
        "--step",
        "read",
        "--scope",
        "write:demo/a",
    ]))
    .await;
    assert_exit(&output, 3, "denied, with nowhere to say so");
    let output = run_into_closed_stderr(broker.stint(&["token", "--scope", "read:demo/a"])).await;
    assert_exit(&output, 2, "a usage error, with nowhere to say so");
}

/// A broker whose certificate no trusted CA issued is a configuration
/// error (exit 1, with the remedy), not an unavailable broker (4, which
/// invites a retry).
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_broker_certificate_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = stint_tests::TestCa::new(dir.path());
    let mut config =
        stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.tls = Some(stint_server::TlsFiles {
        cert: ca.cert_path.clone(),
        key: ca.key_path.clone(),
    });
    let server = stint_server::start(config).await.unwrap();
    let credentials = server.dev_client_path().unwrap().to_owned();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let stint = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stint"));
        command.env_clear().args(args);
        command
    };
    let credentials = credentials.to_str().unwrap();
    let mint = [
        "token",
        "--credentials",
        credentials,
        "--step",
        "read",
        "--scope",
        "read:demo/a",
        "--audience",
        "demo-api",
    ];
    let output = stint(&mint).output().await.unwrap();
    assert_exit(
        &output,
        1,
        "token from a broker with an untrusted certificate",
    );
    let stderr = text(&output.stderr);
    assert!(stderr.contains("certificate is not trusted"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "{stderr}");

    // With its CA, the same broker works; verify and introspect say the same.
    let output = stint(&mint)
        .env("STINT_CA_FILE", &ca_file)
        .output()
        .await
        .unwrap();
    assert_success(&output, "token with --ca-file");
    let token = text(&output.stdout).trim().to_owned();
    let output = stint(&["introspect", "--credentials", credentials, &token])
        .output()
        .await
        .unwrap();
    assert_exit(&output, 1, "introspect without the CA");
    assert!(text(&output.stderr).contains("--ca-file"));
    let output = stint(&["verify", "--url", server.issuer(), &token])
        .output()
        .await
        .unwrap();
    assert_exit(&output, 1, "verify without the CA");
    assert!(text(&output.stderr).contains("--ca-file"));
    let output = stint(&["introspect", "--credentials", credentials, &token])
        .env("STINT_CA_FILE", &ca_file)
        .output()
        .await
        .unwrap();
    assert_success(&output, "introspect with the CA");
    server.shutdown().await;
}
