//! `stintd --dev` serves the console with the dev identity provider, as the
//! README shows it: the real binary, a job asking for the demo deploy
//! step's production scope, alice and bob signing in through the dev
//! provider (authorization code, PKCE) and approving, the job minting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use stint_proto::DevClient;
use stint_tests::console::Browser;
use stint_tests::{Daemon, Value, reqwest};

const STINTD: &str = env!("CARGO_BIN_EXE_stintd");

async fn ask(daemon: &Daemon, client: &DevClient, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("step", "deploy"),
        ("scope", "deploy:demo/staging deploy:demo/prod"),
        ("audience", "demo-api"),
        ("job", "job-1"),
        ("reason", "ship the hotfix"),
    ];
    form.extend_from_slice(extra);
    let response = reqwest::Client::new()
        .post(daemon.url("/oauth2/token"))
        .basic_auth(&client.client_id, Some(&client.client_secret))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Sign in as `operator` at the dev identity provider and approve `id`.
async fn approve_as(console: &str, ca: &Path, operator: &str, id: &str) -> String {
    let browser = Browser::new(console, ca);
    let authorization = browser.start_sign_in(&format!("/approvals/{id}")).await;
    let page = browser.get(&authorization).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains(&format!("Sign in as {operator}")),
        "{}",
        page.body
    );
    let url = reqwest::Url::parse(&authorization).unwrap();
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("operator".into(), operator.into()));
    let form: Vec<(&str, &str)> = form.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let idp = format!("{}://{}", url.scheme(), url.authority());
    let back = browser
        .post_with(&format!("{idp}/authorize"), &form, &[])
        .await;
    assert_eq!(back.status, 303, "{}", back.body);
    let signed = browser.callback(&back.location().unwrap()).await;
    assert_eq!(signed.status, 200, "{}", signed.body);
    assert!(
        signed
            .body
            .contains(&format!("Signed in as <strong>{operator}</strong>"))
    );
    let page = browser.get(&format!("/approvals/{id}")).await;
    assert!(page.body.contains("ship the hotfix"), "{}", page.body);
    let csrf = page.csrf();
    let done = browser
        .post(
            &format!("/approvals/{id}/approve"),
            &[("csrf", &csrf), ("duration", "10m")],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    browser.get(&format!("/approvals/{id}")).await.body
}

#[tokio::test]
async fn the_dev_broker_serves_the_console_with_its_demo_operators() {
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
        ],
    );
    let console = daemon
        .banner_line("console:")
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    assert!(console.starts_with("http://127.0.0.1:"), "{console}");
    let ca = data.join(stint_console::dev_idp::DEV_CA_FILE);
    let client: DevClient =
        serde_json::from_slice(&std::fs::read(data.join("dev-client.json")).unwrap()).unwrap();

    let (status, body) = ask(&daemon, &client, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "authorization_pending", "{body}");
    let id = body["approval_id"].as_str().unwrap().to_owned();

    let page = approve_as(&console, &ca, "alice", &id).await;
    assert!(page.contains("Approved: 1 of 2 approvals."), "{page}");
    let page = approve_as(&console, &ca, "bob", &id).await;
    assert!(page.contains("Approved: the quorum is reached"), "{page}");

    let (status, body) = ask(&daemon, &client, &[("approval_id", &id)]).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = stint_tests::decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["elev"], id.as_str());

    // Both approvals are in the daemon's audit log, made through the
    // console by the operators the dev provider signed in.
    let records = stint_tests::audit_records(&data.join("audit.jsonl"));
    let granted: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "approval_granted")
        .collect();
    assert_eq!(granted.len(), 2);
    assert!(granted.iter().all(|r| r["via"] == "console"));
    assert_eq!(granted[1]["federated_sub"], "bob");
}

#[tokio::test]
async fn the_console_serves_tls_with_the_brokers_files_and_picks_up_a_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = stint_tests::TestCa::new(dir.path());
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        stint_tests::policy_with(
            "[issuers.corp]\nurl = \"https://127.0.0.1:9\"\naudiences = [\"stint-console\"]\n",
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let console = format!("https://localhost:{port}");
    let _daemon = Daemon::start(
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
            "--console",
            &format!("127.0.0.1:{port}"),
            "--console-url",
            &console,
            "--console-oidc-issuer",
            "corp",
        ],
    );
    let page = ca
        .client()
        .get(format!("{console}/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["strict-transport-security"],
        "max-age=31536000"
    );
    assert!(page.text().await.unwrap().contains("Sign in with corp"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let first = ca.cert_der.clone();
    assert_eq!(stint_tests::served_certificate(&ca.ca_pem, addr), first);

    // A renewal is served to new connections within the console's check
    // interval (30 s), with no restart and no signal.
    let renewed = ca.renew_server_certificate();
    assert_ne!(renewed, first);
    let pem = ca.ca_pem.clone();
    let served = stint_tests::eventually(
        std::time::Duration::from_secs(45),
        "the renewed certificate",
        || {
            let pem = pem.clone();
            let renewed = renewed.clone();
            async move {
                let served = tokio::task::spawn_blocking(move || {
                    stint_tests::served_certificate(&pem, addr)
                })
                .await
                .unwrap();
                (served == renewed).then_some(served)
            }
        },
    )
    .await;
    assert_eq!(served, renewed);
}
