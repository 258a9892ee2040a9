//! The real `stintd` binary: durability across `kill -9`, signals, TLS,
//! refusing unsafe configurations, and failing closed on a real write error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use stint_proto::{DevClient, INTROSPECTION_PATH, REVOCATION_PATH, TOKEN_PATH};
use stint_tests::reqwest::Client;
use stint_tests::{Daemon, TestCa, Value, eventually, json, policy_with, run_to_end, test_secret};

const STINTD: &str = env!("CARGO_BIN_EXE_stintd");

fn dev_daemon(data_dir: &Path) -> Daemon {
    dev_daemon_on(data_dir, "127.0.0.1:0")
}

fn dev_daemon_on(data_dir: &Path, listen: &str) -> Daemon {
    Daemon::start(
        Path::new(STINTD),
        &[
            "--dev",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            listen,
        ],
    )
}

fn dev_credentials(data_dir: &Path) -> (String, String) {
    let client: DevClient =
        serde_json::from_slice(&std::fs::read(data_dir.join("dev-client.json")).unwrap()).unwrap();
    (client.client_id, client.client_secret)
}

async fn post(
    http: &Client,
    daemon: &Daemon,
    creds: &(String, String),
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let response = http
        .post(daemon.url(path))
        .basic_auth(&creds.0, Some(&creds.1))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn mint(http: &Client, daemon: &Daemon, creds: &(String, String), job: &str) -> String {
    let (status, body) = post(
        http,
        daemon,
        creds,
        TOKEN_PATH,
        &[
            ("grant_type", "client_credentials"),
            ("step", "read"),
            ("scope", "read:demo/docs"),
            ("audience", "demo-api"),
            ("job", job),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The status (0 VALID, 1 INVALID) each token's status list gives it.
async fn status_of(http: &Client, tokens: &[&str]) -> Vec<u8> {
    let mut statuses = Vec::new();
    for token in tokens {
        let (_, claims) = stint_tests::decode_jwt(token);
        let reference = &claims["status"]["status_list"];
        let response = http
            .get(reference["uri"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let (_, list) = stint_tests::decode_jwt(&response.text().await.unwrap());
        let list = stint_core::status_list::StatusList::decode(
            u8::try_from(list["status_list"]["bits"].as_u64().unwrap()).unwrap(),
            list["status_list"]["lst"].as_str().unwrap(),
        )
        .unwrap();
        statuses.push(list.get(reference["idx"].as_u64().unwrap()).unwrap());
    }
    statuses
}

async fn active(http: &Client, daemon: &Daemon, creds: &(String, String), token: &str) -> bool {
    let (status, body) = post(http, daemon, creds, INTROSPECTION_PATH, &[("token", token)]).await;
    assert_eq!(status, 200);
    body["active"].as_bool().unwrap()
}

#[tokio::test]
async fn an_acknowledged_revocation_survives_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = Client::new();
    // The same address before and after the crash, so the same issuer: a
    // token is only ever judged against the issuer that minted it.
    let listen = stint_tests::unused_loopback_addr().to_string();
    let daemon = dev_daemon_on(&data, &listen);
    let creds = dev_credentials(&data);

    let revoked = mint(&http, &daemon, &creds, "job-a").await;
    let in_revoked_job = mint(&http, &daemon, &creds, "job-b").await;
    let untouched = mint(&http, &daemon, &creds, "job-c").await;
    // Status list entries are written every second: let one write pass
    // (the crash below skips the write a clean stop makes).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (status, _) = post(
        &http,
        &daemon,
        &creds,
        REVOCATION_PATH,
        &[("token", &revoked)],
    )
    .await;
    assert_eq!(status, 200);
    let response = http
        .post(daemon.url("/v1/jobs/job-b/revoke"))
        .basic_auth(&creds.0, Some(&creds.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Right after the acknowledgements: no graceful anything.
    let issuer = daemon.issuer.clone();
    daemon.kill9();

    let daemon = dev_daemon_on(&data, &listen);
    assert_eq!(daemon.issuer, issuer);
    // A new client: the old one's pooled connections died with the process.
    let http = Client::new();
    let creds_after = dev_credentials(&data);
    assert_eq!(
        creds_after, creds,
        "the dev client keeps its secret across restarts"
    );
    assert!(
        !active(&http, &daemon, &creds, &revoked).await,
        "a revoked token stays revoked"
    );
    assert!(
        !active(&http, &daemon, &creds, &in_revoked_job).await,
        "a revoked job stays revoked"
    );
    assert!(
        active(&http, &daemon, &creds, &untouched).await,
        "the signing key survived: an unrevoked token from before the restart is still active"
    );
    let (status, body) = post(
        &http,
        &daemon,
        &creds,
        TOKEN_PATH,
        &[
            ("grant_type", "client_credentials"),
            ("step", "read"),
            ("scope", "read:demo/docs"),
            ("audience", "demo-api"),
            ("job", "job-b"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // The status lists of the crashed run survive with the right statuses:
    // revoked before the crash, INVALID; live, VALID.
    let statuses = status_of(&http, &[&revoked, &in_revoked_job, &untouched]).await;
    assert_eq!(statuses, [1, 1, 0], "revoked, in a revoked job, untouched");

    // The audit log is intact across the crash.
    let records = stint_tests::audit_records(&data.join("audit.jsonl"));
    assert!(records.iter().any(|r| r["event"] == "token_revoked"));
    assert!(records.iter().any(|r| r["event"] == "job_revoked"));
}

#[tokio::test]
async fn the_data_directory_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _daemon = dev_daemon(&data);
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data.clone()), 0o700);
    for file in ["stint.db", "stint.db-wal", "audit.jsonl", "dev-client.json"] {
        assert_eq!(mode(data.join(file)), 0o600, "{file}");
    }
}

#[test]
fn plain_http_is_refused_off_loopback_and_outside_dev_mode() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (status, _, stderr) = run_to_end(
        Command::new(STINTD).args(["--dev", "--data-dir", data, "--listen", "0.0.0.0:0"]),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refusing to serve plain HTTP on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("loopback"), "{stderr}");

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_with("")).unwrap();
    let (status, _, stderr) = run_to_end(
        Command::new(STINTD).args([
            "--policy",
            policy.to_str().unwrap(),
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert and --tls-key"), "{stderr}");
    assert!(
        !Path::new(data).exists(),
        "nothing is created before the configuration is accepted"
    );
}

#[tokio::test]
async fn with_tls_it_serves_https_and_only_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_with("")).unwrap();
    let daemon = Daemon::start(
        Path::new(STINTD),
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            ca.cert_path.to_str().unwrap(),
            "--tls-key",
            ca.key_path.to_str().unwrap(),
        ],
    );
    assert!(
        daemon.issuer.starts_with("https://127.0.0.1:"),
        "{}",
        daemon.issuer
    );
    let https = ca.client();
    let metadata: Value = https
        .get(daemon.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["issuer"], daemon.issuer);
    let creds = ("demo-job".to_owned(), test_secret("demo-job"));
    let token = mint(&https, &daemon, &creds, "tls-job").await;
    assert!(active(&https, &daemon, &creds, &token).await);

    // Plain HTTP on the TLS port gets no answer.
    let plain = daemon.url("/healthz").replace("https://", "http://");
    assert!(Client::new().get(plain).send().await.is_err());
    // And a client that does not trust the CA cannot connect.
    assert!(
        Client::new()
            .get(daemon.url("/healthz"))
            .send()
            .await
            .is_err()
    );
}

/// A certificate renewal is picked up on `SIGHUP`, as `systemctl reload`
/// sends it: no restart.
#[tokio::test]
async fn sighup_serves_a_renewed_tls_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = TestCa::new(dir.path());
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_with("")).unwrap();
    let daemon = Daemon::start(
        Path::new(STINTD),
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            ca.cert_path.to_str().unwrap(),
            "--tls-key",
            ca.key_path.to_str().unwrap(),
        ],
    );
    let addr: std::net::SocketAddr = daemon
        .issuer
        .strip_prefix("https://")
        .unwrap()
        .parse()
        .unwrap();
    let first = ca.cert_der.clone();
    assert_eq!(stint_tests::served_certificate(&ca.ca_pem, addr), first);
    let second = ca.renew_server_certificate();
    daemon.signal("HUP");
    let ca_pem = ca.ca_pem.clone();
    eventually(Duration::from_secs(10), "the renewed certificate", || {
        let ca_pem = ca_pem.clone();
        let second = second.clone();
        async move {
            let served =
                tokio::task::spawn_blocking(move || stint_tests::served_certificate(&ca_pem, addr))
                    .await
                    .unwrap();
            (served == second).then_some(())
        }
    })
    .await;
    assert!(
        daemon.stderr().contains("TLS certificate and key loaded"),
        "{}",
        daemon.stderr()
    );
}

#[tokio::test]
async fn sighup_reloads_the_policy_and_refuses_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_with("")).unwrap();
    let daemon = Daemon::start(
        Path::new(STINTD),
        &[
            "--dev",
            "--policy",
            policy.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let http = Client::new();
    let creds = ("demo-job".to_owned(), test_secret("demo-job"));
    let deploy = [
        ("grant_type", "client_credentials"),
        ("step", "deploy"),
        ("scope", "deploy:k8s/staging/web"),
        ("audience", "k8s"),
    ];
    assert_eq!(
        post(&http, &daemon, &creds, TOKEN_PATH, &deploy).await.0,
        400
    );

    std::fs::write(
        &policy,
        policy_with("[workflows.demo.steps.deploy]\nscopes = [\"deploy:k8s/staging/*\"]\n"),
    )
    .unwrap();
    daemon.signal("HUP");
    eventually(Duration::from_secs(30), "the reloaded policy to allow the deploy step", || {
        let (http, daemon, creds) = (&http, &daemon, &creds);
        async move { (post(http, daemon, creds, TOKEN_PATH, &deploy).await.0 == 200).then_some(()) }
    })
    .await;

    std::fs::write(&policy, "this is not toml ]]").unwrap();
    daemon.signal("HUP");
    eventually(Duration::from_secs(30), "the refusal to be logged", || {
        let refused = daemon.stderr().contains("policy refused");
        async move { refused.then_some(()) }
    })
    .await;
    assert_eq!(
        post(&http, &daemon, &creds, TOKEN_PATH, &deploy).await.0,
        200,
        "the previous policy stays"
    );
}

/// Give the daemon a file size limit (`ulimit -f`: 512 KiB, room for the
/// store's first writes; with SIGXFSZ ignored so a
/// write past it fails with EFBIG instead of killing the process): after
/// some mints the audit log cannot grow, and minting must fail closed.
#[tokio::test]
async fn minting_fails_closed_when_the_audit_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start_command(
        Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 1024; exec \"$0\" \"$@\"")
            .arg(STINTD)
            .args([
                "--dev",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                // It mints as fast as it can until the disk is "full":
                // not the rate limits' test.
                "--token-rate-per-client",
                "1000000",
                "--token-burst-per-client",
                "1000000",
                "--token-rate-per-source",
                "1000000",
                "--token-burst-per-source",
                "1000000",
            ]),
    );
    let http = Client::new();
    let creds = dev_credentials(&data);
    let form = [
        ("grant_type", "client_credentials"),
        ("step", "read"),
        ("scope", "read:demo/docs"),
        ("audience", "demo-api"),
    ];
    let mut minted = 0;
    let refusal = loop {
        let (status, body) = post(&http, &daemon, &creds, TOKEN_PATH, &form).await;
        match status {
            200 => minted += 1,
            503 => break body,
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(minted < 5_000, "the file size limit never took effect");
    };
    assert!(minted > 0);
    assert_eq!(
        refusal,
        json!({
            "error": "temporarily_unavailable",
            "error_description": "the decision could not be recorded in the audit log; retry later",
        })
    );
    // A readiness probe writes a small record when the last write failed:
    // it may fit in what the mint's record left, and the log is then
    // healthy again until the next mint's record does not fit. A few
    // rounds use the room up, and then the probe fails too.
    let mut ready = http.get(daemon.url("/readyz")).send().await.unwrap();
    for _ in 0..100 {
        if ready.status() == 503 {
            break;
        }
        let (status, _) = post(&http, &daemon, &creds, TOKEN_PATH, &form).await;
        assert_eq!(status, 503, "no room for a mint's record");
        ready = http.get(daemon.url("/readyz")).send().await.unwrap();
    }
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["checks"]["audit_log"],
        false
    );
    // Still refusing, not degrading to unaudited tokens.
    assert_eq!(post(&http, &daemon, &creds, TOKEN_PATH, &form).await.0, 503);

    drop(daemon);
    // Every token that was handed out is in the log, and the chain is whole:
    // the failed writes left no partial record.
    let records = stint_tests::audit_records(&data.join("audit.jsonl"));
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "token_minted")
            .count(),
        minted
    );
}

#[test]
fn new_client_prints_a_secret_whose_hash_is_the_policy_line() {
    let (status, stdout, stderr) = run_to_end(
        Command::new(STINTD).args(["new-client", "ci-web"]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    let secret = stdout.trim();
    assert!(
        secret.starts_with("stint_") && secret.len() > 40,
        "{stdout}"
    );
    let hash = stint_core::secret::hash_hex(secret);
    assert!(
        stderr.contains(&format!("secret_sha256 = \"{hash}\"")),
        "{stderr}"
    );
    assert!(
        !stderr.contains(secret),
        "the secret is printed once, on stdout only"
    );
}

#[test]
fn check_policy_validates_like_the_broker() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/policy.example.toml"
    );
    let (status, stdout, stderr) = run_to_end(
        Command::new(STINTD).args(["check-policy", example]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains(": ok (2 workloads, 2 workflows)"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        policy_with("").replace("max_ttl = \"15m\"", "max_ttl = \"3h\""),
    )
    .unwrap();
    let (status, _, stderr) = run_to_end(
        Command::new(STINTD).args(["check-policy", bad.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("workflows.demo.steps.read.max_ttl: a token lifetime may be at most 1h"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.toml:20:11"), "{stderr}");
}

#[tokio::test]
async fn verify_audit_accepts_an_intact_log_and_names_the_first_broken_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = dev_daemon(&data);
    let creds = dev_credentials(&data);
    let http = Client::new();
    for job in ["a", "b", "c"] {
        mint(&http, &daemon, &creds, job).await;
    }
    drop(daemon);
    let log = data.join("audit.jsonl");
    let (status, stdout, stderr) = run_to_end(
        Command::new(STINTD).args(["verify-audit", log.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains(": 4 records, chain intact, head "),
        "{stdout}"
    );
    // The broker was killed before it signed anything: asked to check
    // against its keys, verify-audit says nothing vouches for the records,
    // unless told how many unsigned records to accept.
    let data_arg = data.to_str().unwrap();
    let (status, _, stderr) = run_to_end(
        Command::new(STINTD).args([
            "verify-audit",
            "--data-dir",
            data_arg,
            log.to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("no checkpoint verifies"), "{stderr}");
    let (status, _, stderr) = run_to_end(
        Command::new(STINTD).args([
            "verify-audit",
            "--data-dir",
            data_arg,
            "--max-unsigned",
            "4",
            log.to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");

    // Rewrite the second mint's job: the record after it no longer links.
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"job\":\"b\"", "\"job\":\"z\"", 1)).unwrap();
    let (status, _, stderr) = run_to_end(
        Command::new(STINTD).args(["verify-audit", log.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("chain broken: line 4 (record 3): prev does not match"),
        "{stderr}"
    );
}

/// SIGTERM, and wait (at most 30 s) for a clean exit.
fn stop_cleanly(mut daemon: Daemon) {
    daemon.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            assert!(status.success(), "{status}: {}", daemon.stderr());
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stintd did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// DATA_DIR/audit*.jsonl.
fn audit_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("audit") && name.ends_with(".jsonl")
        })
        .collect();
    files.sort();
    files
}

fn verify_audit(args: &[&str], files: &[PathBuf]) -> (bool, String, String) {
    let (status, stdout, stderr) = run_to_end(
        Command::new(STINTD)
            .arg("verify-audit")
            .args(args)
            .args(files),
        Duration::from_secs(30),
    );
    (status.success(), stdout, stderr)
}

/// Rewrite `path`'s lines from `from` on, as someone who can write the file
/// and knows the chain's rules would: each `prev` (and a checkpoint's
/// `head`) recomputed, so the chain is whole again.
fn rechain(path: &Path, from: usize, edit: impl FnOnce(&mut Value)) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    let mut record: Value = serde_json::from_slice(&lines[from]).unwrap();
    edit(&mut record);
    lines[from] = serde_json::to_vec(&record).unwrap();
    for i in from + 1..lines.len() {
        let mut record: Value = serde_json::from_slice(&lines[i]).unwrap();
        let head = stint_core::audit::Chain::after(&lines[i - 1])
            .unwrap()
            .head();
        record["prev"] = json!(head);
        if record.get("checkpoint").is_some() {
            record["checkpoint"]["head"] = json!(head);
        }
        lines[i] = serde_json::to_vec(&record).unwrap();
    }
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
    std::fs::write(path, out).unwrap();
}

#[tokio::test]
async fn verify_audit_checks_checkpoints_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(
        Path::new(STINTD),
        &[
            "--dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--audit-rotate-size",
            "4K",
        ],
    );
    let creds = dev_credentials(&data);
    let http = Client::new();
    for job in 0..30 {
        mint(&http, &daemon, &creds, &format!("job-{job}")).await;
    }
    let jwks = http
        .get(daemon.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, &jwks).unwrap();
    stop_cleanly(daemon);

    let mut files = audit_files(&data);
    assert!(files.len() >= 3, "{files:?}");
    files.reverse(); // any order will do
    let (ok, stdout, stderr) = verify_audit(&[], &files);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("{} files (", files.len())),
        "{stdout}"
    );
    assert!(stdout.contains("chain intact"), "{stdout}");
    assert!(stdout.contains("stint.db (1 keys)"), "{stdout}");
    assert!(
        stdout.contains("0 records follow it"),
        "a clean stop leaves nothing unsigned: {stdout}"
    );
    let verified = |stdout: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with("checkpoints: "))
            .unwrap();
        line["checkpoints: ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Every rotated file ends with a checkpoint, and so does the stop.
    assert!(verified(&stdout) >= files.len() as u64, "{stdout}");

    // The JWK set, kept elsewhere, is a trust anchor of its own.
    let (ok, stdout, stderr) = verify_audit(&["--jwks", jwks_file.to_str().unwrap()], &files);
    assert!(ok, "{stderr}");
    assert!(verified(&stdout) >= files.len() as u64, "{stdout}");
    assert!(!stdout.contains("stint.db"), "{stdout}");
    // A key the log was not signed with vouches for nothing.
    let (other, _) = stint_core::jose::SigningKey::generate(
        stint_core::jose::Algorithm::ES256,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let other_file = dir.path().join("other.json");
    std::fs::write(
        &other_file,
        serde_json::to_vec(&stint_proto::JwkSet {
            keys: vec![other.public_jwk().clone()],
        })
        .unwrap(),
    )
    .unwrap();
    // Checkpoints that no key given verifies: a re-signed log, refused.
    let (ok, stdout, stderr) = verify_audit(&["--jwks", other_file.to_str().unwrap()], &files);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("checkpoints: 0 verified"), "{stdout}");
    assert!(stderr.contains("signed by keys not given"), "{stderr}");

    // Someone who can write the live file appends a well-chained forgery:
    // the chain is whole, but nothing signed the new record.
    let live = data.join("audit.jsonl");
    let text = std::fs::read_to_string(&live).unwrap();
    let mut chain =
        stint_core::audit::Chain::after(text.lines().last().unwrap().as_bytes()).unwrap();
    let mut forged = stint_core::audit::AuditEntry::new(
        "2026-11-23T10:00:00.000Z".into(),
        stint_core::audit::EventKind::TokenMinted,
        stint_core::audit::Decision::Allow,
    );
    forged.sub = Some("demo-job".into());
    let mut appended = text.into_bytes();
    chain.append(&forged.encode().unwrap(), &mut appended);
    std::fs::write(&live, &appended).unwrap();
    let (ok, stdout, stderr) = verify_audit(&[], &files);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 records follow it"), "{stdout}");
    let (ok, _, stderr) = verify_audit(&["--max-unsigned", "0"], &files);
    assert!(!ok);
    assert!(stderr.contains("more than --max-unsigned 0"), "{stderr}");

    // Edit a record a checkpoint covers and recompute every hash after it:
    // the chain is whole again, the checkpoint's signature is not.
    let lines: Vec<Value> = std::fs::read_to_string(&live)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let minted = lines
        .iter()
        .position(|r| r["event"] == "token_minted")
        .unwrap();
    rechain(&live, minted, |record| {
        record["scopes"] = json!(["admin:prod/all"])
    });
    let (ok, _, stderr) = verify_audit(&[], &files);
    assert!(!ok);
    assert!(
        stderr.contains("audit.jsonl: chain broken: line")
            && stderr.contains("the checkpoint's signature does not verify"),
        "{stderr}"
    );
}

#[tokio::test]
async fn verify_audit_reports_records_a_killed_broker_never_signed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = Client::new();
    let daemon = dev_daemon(&data);
    let creds = dev_credentials(&data);
    mint(&http, &daemon, &creds, "before-crash").await;
    daemon.kill9();
    let daemon = dev_daemon(&data);
    mint(&http, &daemon, &creds, "after-crash").await;
    stop_cleanly(daemon);

    let (ok, stdout, stderr) = verify_audit(&[], &audit_files(&data));
    assert!(ok, "{stderr}");
    // The first run's policy_loaded and its mint were never signed by it.
    assert!(
        stdout.contains("2 records were written by a broker run that stopped without signing them"),
        "{stdout}"
    );
    assert!(stdout.contains("0 records follow it"), "{stdout}");
}

/// `--key-encryption-key-file` through the real binary: the store file
/// holds no private key in the clear, a restart with the same key signs
/// with the same key, one without it refuses to start, and verify-audit
/// reads the sealed keys with it.
#[tokio::test]
async fn signing_keys_are_sealed_in_the_store_under_the_key_encryption_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [0x5au8; 32]).unwrap();
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();
    let start = |with_kek: bool| {
        let mut command = Command::new(STINTD);
        command.args([
            "--dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        if with_kek {
            command.env("STINTD_KEY_ENCRYPTION_KEY_FILE", &kek);
        }
        command
    };
    let daemon = Daemon::start_command(&mut start(true));
    let creds = dev_credentials(&data);
    let http = Client::new();
    let token = mint(&http, &daemon, &creds, "sealed").await;
    let kid = |token: &str| {
        let (header, _) = stint_tests::decode_jwt(token);
        header["kid"].as_str().unwrap().to_owned()
    };
    let first_kid = kid(&token);
    stop_cleanly(daemon);

    // No PKCS#8 key in the clear in the store's files; without the key
    // there is one (so the check can tell).
    assert!(!holds_clear_p256_key(&data));
    let clear = dir.path().join("clear");
    stop_cleanly(dev_daemon(&clear));
    assert!(holds_clear_p256_key(&clear));

    let daemon = Daemon::start_command(&mut start(true));
    assert_eq!(kid(&mint(&http, &daemon, &creds, "again").await), first_kid);
    stop_cleanly(daemon);

    let (status, _, stderr) = run_to_end(&mut start(false), Duration::from_secs(30));
    assert!(!status.success());
    assert!(stderr.contains("--key-encryption-key-file"), "{stderr}");

    let files = audit_files(&data);
    let data_arg = data.to_str().unwrap();
    let (ok, _, stderr) = verify_audit(&["--data-dir", data_arg], &files);
    assert!(!ok);
    assert!(
        stderr.contains("sealed under a key-encryption key"),
        "{stderr}"
    );
    let kek_arg = kek.to_str().unwrap();
    let (ok, stdout, stderr) = verify_audit(
        &["--data-dir", data_arg, "--key-encryption-key-file", kek_arg],
        &files,
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("stint.db (1 keys)"), "{stdout}");
}

/// Whether DATA_DIR/stint.db* holds a P-256 private key in the clear (its
/// PKCS#8 begins with these bytes).
fn holds_clear_p256_key(data: &Path) -> bool {
    let prefix: &[u8] = &[0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13, 0x06, 0x07];
    std::fs::read_dir(data)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("stint.db")
        })
        .any(|path| {
            std::fs::read(path)
                .unwrap()
                .windows(prefix.len())
                .any(|w| w == prefix)
        })
}

/// Behind a TLS-terminating proxy: plain HTTP with an https issuer, the
/// client named by the trusted proxy's X-Forwarded-For (in the audit), a
/// forwarding header from anyone else refused, and the flag's
/// preconditions enforced.
#[tokio::test]
async fn behind_a_tls_terminating_proxy_the_forwarded_client_is_believed_from_trusted_proxies_only()
{
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, policy_with("")).unwrap();
    let creds = ("demo-job".to_owned(), test_secret("demo-job"));
    let start = |data: &str, trusted: &str| {
        let listen = stint_tests::unused_loopback_addr();
        let daemon = Daemon::start(
            Path::new(STINTD),
            &[
                "--policy",
                policy.to_str().unwrap(),
                "--data-dir",
                dir.path().join(data).to_str().unwrap(),
                "--listen",
                &listen.to_string(),
                "--issuer",
                "https://stint.example.com",
                "--tls-terminated-by-proxy",
                "--trusted-proxy",
                trusted,
            ],
        );
        (daemon, format!("http://{listen}"))
    };
    let mint_via = |base: String, forwarded: Option<&'static str>| {
        let creds = creds.clone();
        async move {
            let mut request = Client::new()
                .post(format!("{base}{TOKEN_PATH}"))
                .basic_auth(&creds.0, Some(&creds.1))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("step", "read"),
                    ("scope", "read:demo/docs"),
                    ("audience", "demo-api"),
                    ("job", "proxied"),
                ]);
            if let Some(forwarded) = forwarded {
                request = request.header("x-forwarded-for", forwarded);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    // This test's connections come from loopback: the trusted proxy.
    let (daemon, base) = start("trusted", "127.0.0.0/8");
    let (status, body) = mint_via(base.clone(), Some("198.51.100.1, 203.0.113.7")).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = stint_tests::decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["iss"], "https://stint.example.com");
    let (status, body) = mint_via(base, Some("not an address")).await;
    assert_eq!(status, 400, "{body}");
    stop_cleanly(daemon);
    let records = stint_tests::audit_records(&dir.path().join("trusted/audit.jsonl"));
    let minted = records
        .iter()
        .find(|r| r["event"] == "token_minted")
        .unwrap();
    assert_eq!(
        minted["client_addr"], "203.0.113.7:0",
        "the right-most hop the proxy vouches for"
    );

    // Behind a TLS-terminating proxy, only the proxies may connect at all:
    // anyone else would be sending secrets in the clear.
    let (daemon, base) = start("exclusive", "10.0.0.0/8");
    assert!(
        Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "a connection from outside the trusted proxies is closed"
    );
    drop(daemon);

    // With TLS (here: dev mode on loopback) and another proxy trusted,
    // loopback is served, but its forwarding header is refused; without
    // one it is its own client.
    let listen = stint_tests::unused_loopback_addr();
    let daemon = Daemon::start(
        Path::new(STINTD),
        &[
            "--dev",
            "--data-dir",
            dir.path().join("untrusted").to_str().unwrap(),
            "--listen",
            &listen.to_string(),
            "--trusted-proxy",
            "10.0.0.0/8",
        ],
    );
    let base = format!("http://{listen}");
    let dev = dev_credentials(&dir.path().join("untrusted"));
    let request = |forwarded: Option<&'static str>| {
        let mut request = Client::new()
            .post(format!("{base}{TOKEN_PATH}"))
            .basic_auth(&dev.0, Some(&dev.1))
            .form(&[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "read:demo/docs"),
                ("audience", "demo-api"),
            ]);
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        request.send()
    };
    let response = request(Some("203.0.113.7")).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("trusted proxies"),
        "{body}"
    );
    assert_eq!(request(None).await.unwrap().status().as_u16(), 200);
    drop(daemon);

    // The flag's preconditions.
    for (args, expected) in [
        (
            vec![
                "--tls-terminated-by-proxy",
                "--issuer",
                "https://stint.example.com",
            ],
            "needs --trusted-proxy",
        ),
        (
            vec!["--tls-terminated-by-proxy", "--trusted-proxy", "10.0.0.0/8"],
            "needs --issuer https://",
        ),
        (
            vec!["--trusted-proxy", "10.0.0.1/8"],
            "did you mean 10.0.0.0/8",
        ),
        (
            vec!["--trusted-proxy", "0.0.0.0/0"],
            "any client could then choose its own address",
        ),
    ] {
        let (status, _, stderr) = run_to_end(
            Command::new(STINTD)
                .args([
                    "--policy",
                    policy.to_str().unwrap(),
                    "--listen",
                    "0.0.0.0:0",
                ])
                .args(["--data-dir", dir.path().join("refused").to_str().unwrap()])
                .args(&args),
            Duration::from_secs(30),
        );
        assert!(!status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
