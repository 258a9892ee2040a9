//! The real `stintd` binary logs one structured line per request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;
use stint_proto::{DevClient, TOKEN_PATH};
use stint_tests::reqwest;
use stint_tests::{Daemon, Value, eventually};

const STINTD: &str = env!("CARGO_BIN_EXE_stintd");

/// The request lines (JSON) the daemon has logged so far.
fn request_lines(daemon: &Daemon) -> Vec<Value> {
    daemon
        .stderr()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "stint::request")
        .collect()
}

#[tokio::test]
async fn every_request_is_logged_once_with_its_client_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(
        Path::new(STINTD),
        &[
            "--dev",
            "--log-json",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let client: DevClient =
        serde_json::from_slice(&std::fs::read(data.join("dev-client.json")).unwrap()).unwrap();
    let http = reqwest::Client::new();
    let mint = |id: &str, secret: String| {
        http.post(daemon.url(TOKEN_PATH))
            .basic_auth(id, Some(secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "read:demo/logged"),
                ("audience", "demo-api"),
            ])
            .send()
    };
    let minted = mint(&client.client_id, client.client_secret.clone())
        .await
        .unwrap();
    assert_eq!(minted.status(), 200);
    let minted_id = minted.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let token = minted.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = mint(&client.client_id, "a-wrong-secret-0123456789".into())
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refused_id = refused.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // An id the policy does not know may be a secret pasted in the wrong
    // field: never written.
    let unknown = mint("stint_pasted-secret-9876543210", "x".into())
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown_id = unknown.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let health = http.get(daemon.url("/healthz")).send().await.unwrap();
    let health_id = health.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let lines = eventually(Duration::from_secs(10), "the request lines", || {
        let lines = request_lines(&daemon);
        async move { (lines.len() >= 4).then_some(lines) }
    })
    .await;
    let line = |id: &str| {
        let found: Vec<_> = lines
            .iter()
            .filter(|l| l["fields"]["request_id"] == id)
            .collect();
        assert_eq!(found.len(), 1, "one line for request {id}: {lines:#?}");
        found[0]["fields"].clone()
    };
    let minted = line(&minted_id);
    assert_eq!(minted["message"], "request");
    assert_eq!(minted["method"], "POST");
    assert_eq!(minted["route"], TOKEN_PATH);
    assert_eq!(minted["status"], 200);
    assert_eq!(minted["client_id"], client.client_id.as_str());
    assert_eq!(minted["peer"], "127.0.0.1");
    assert!(minted["latency_ms"].as_f64().unwrap() >= 0.0, "{minted}");
    // A known client id with a wrong secret is named, as in the audit log.
    let refused = line(&refused_id);
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["client_id"], client.client_id.as_str());
    let unknown = line(&unknown_id);
    assert_eq!(unknown["status"], 401);
    assert!(unknown.get("client_id").is_none(), "{unknown}");
    let health = line(&health_id);
    assert_eq!(health["route"], "/healthz");
    assert_eq!(health["method"], "GET");
    let all = daemon.stderr();
    for secret in [
        client.client_secret.as_str(),
        "a-wrong-secret-0123456789",
        "stint_pasted-secret-9876543210",
        token.as_str(),
    ] {
        assert!(!all.contains(secret), "a credential in the log:\n{all}");
    }
    let (_, signature) = token.rsplit_once('.').unwrap();
    assert!(!all.contains(signature));
}
