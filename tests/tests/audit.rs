//! The audit log against the broker: a key rotation that cannot be audited
//! does not happen (on a real full filesystem), a moved or deleted log
//! fails closed, a clean stop leaves the log signed, and unauthenticated
//! text cannot split a record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use stint_core::audit::Verifier;
use stint_core::secret;
use stint_proto::{GRANT_TOKEN_EXCHANGE, KEY_ROTATION_PATH, TOKEN_PATH, TOKEN_TYPE_ID_TOKEN};
use stint_tests::idp::TestIdp;
use stint_tests::{BrokerOptions, TestBroker, Tmpfs, decode_jwt, policy_with, test_secret};

fn admin_policy() -> String {
    policy_with(&format!(
        "\n[workloads.key-admin]\nsecret_sha256 = \"{}\"\ncapabilities = [\"admin\"]\n",
        secret::hash_hex(&test_secret("key-admin"))
    ))
}

/// Put the broker's audit log on `fs` (a symlink from the data directory),
/// so that only the log, not the store, runs out of space.
async fn audit_log_on(broker: &mut TestBroker, fs: &Tmpfs) {
    let on_fs = fs.path().join("audit.jsonl");
    let audit_path = broker.audit_path();
    broker
        .restart_after(|| {
            std::fs::copy(&audit_path, &on_fs).unwrap();
            std::fs::remove_file(&audit_path).unwrap();
            std::os::unix::fs::symlink(&on_fs, &audit_path).unwrap();
        })
        .await;
}

async fn rotate(broker: &TestBroker) -> (u16, Value) {
    let response = broker
        .post_form_as(
            ("key-admin", &test_secret("key-admin")),
            KEY_ROTATION_PATH,
            &[],
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn signing_kid(broker: &TestBroker) -> String {
    let token = broker.mint("read", "read:demo/a", &[]).await;
    decode_jwt(token["access_token"].as_str().unwrap()).0["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn events(records: &[Value], event: &str) -> Vec<Value> {
    records
        .iter()
        .filter(|r| r["event"] == event)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_key_rotation_that_cannot_be_audited_does_not_happen_and_a_retry_rotates_once() {
    let fs = Tmpfs::mount(256 * 1024);
    let mut broker = TestBroker::start_with(BrokerOptions {
        policy: Some(admin_policy()),
        ..BrokerOptions::default()
    })
    .await;
    audit_log_on(&mut broker, &fs).await;
    let old_kid = signing_kid(&broker).await;

    // Fill the filesystem, then use up what is left of the log's last page
    // with the smallest records a client can cause (refused credentials),
    // until even those cannot be written.
    let filler = fs.fill();
    let mut refused = false;
    for _ in 0..10_000 {
        let response = broker
            .post_form_as(
                ("demo-job", "wrong"),
                TOKEN_PATH,
                &[("grant_type", "client_credentials")],
            )
            .await;
        if response.status() == 503 {
            refused = true;
            break;
        }
        assert_eq!(response.status(), 401);
    }
    assert!(refused, "the audit log never filled up");

    let (status, body) = rotate(&broker).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert_eq!(
        broker.keys().await.len(),
        1,
        "the new key was not published"
    );

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        signing_kid(&broker).await,
        old_kid,
        "the old key still signs"
    );
    let (status, body) = rotate(&broker).await;
    assert_eq!(status, 200, "{body}");
    let new_kid = body["kid"].as_str().unwrap().to_owned();
    assert_eq!(body["retired_kid"], old_kid.as_str());
    let keys = broker.keys().await;
    assert_eq!(keys.len(), 2, "the old key and one new key: one rotation");
    assert_eq!(signing_kid(&broker).await, new_kid);

    // The log names exactly that rotation, sealed by the old key.
    let records = broker.audit_records();
    let rotated = events(&records, "keys_rotated");
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert_eq!(rotated[0]["kid"], new_kid.as_str());
    let at = records
        .iter()
        .position(|r| r["event"] == "keys_rotated")
        .unwrap();
    assert_eq!(records[at + 1]["event"], "audit_checkpoint");
    assert_eq!(records[at + 1]["checkpoint"]["kid"], old_kid.as_str());

    // And it survives a restart: the new key signs, the old is retired.
    broker.restart().await;
    assert_eq!(signing_kid(&broker).await, new_kid);
    assert_eq!(broker.keys().await.len(), 2);
}

#[tokio::test]
async fn a_moved_or_deleted_audit_log_fails_closed() {
    let broker = TestBroker::start().await;
    broker.mint("read", "read:demo/a", &[]).await;
    let moved = broker.data_dir().join("moved-away.jsonl");
    std::fs::rename(broker.audit_path(), &moved).unwrap();

    let response = broker.try_mint("read", "read:demo/a", &[]).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    let ready = broker.http.get(broker.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["checks"]["audit_log"],
        false
    );

    // Back where it was: the broker recovers, and the chain is whole.
    std::fs::rename(&moved, broker.audit_path()).unwrap();
    broker.mint("read", "read:demo/a", &[]).await;
    assert_eq!(events(&broker.audit_records(), "token_minted").len(), 2);

    std::fs::remove_file(broker.audit_path()).unwrap();
    assert_eq!(
        broker.try_mint("read", "read:demo/a", &[]).await.status(),
        503
    );
    assert!(
        !broker.audit_path().exists(),
        "no new log appears behind the operator's back"
    );
}

#[tokio::test]
async fn a_clean_stop_leaves_the_log_signed() {
    let mut broker = TestBroker::start().await;
    for job in ["a", "b", "c"] {
        broker.mint("read", "read:demo/a", &[("job", job)]).await;
    }
    let keys = broker.keys().await;
    let kid = signing_kid(&broker).await;
    let audit_path = broker.audit_path();
    let mut log = Vec::new();
    broker
        .restart_after(|| log = std::fs::read(&audit_path).unwrap())
        .await;

    let records: Vec<Value> = log
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let last = records.last().unwrap();
    assert_eq!(last["event"], "audit_checkpoint");
    assert_eq!(last["checkpoint"]["kid"], kid.as_str());
    assert_eq!(last["checkpoint"]["alg"], "ES256");
    assert_eq!(last["checkpoint"]["records"], records.len() - 1);
    assert_eq!(last["checkpoint"]["opened_at"], 0);
    let mut verifier = Verifier::new(keys);
    verifier.file(&log[..]).unwrap();
    let report = verifier.report();
    assert_eq!(report.verified_checkpoints, 1);
    assert_eq!(report.unsigned, 0, "nothing follows the last checkpoint");

    // The next run's first checkpoint says where the run began.
    broker.mint("read", "read:demo/a", &[]).await;
    broker.stop().await;
    let records = stint_tests::audit_records(&broker.audit_path());
    let checkpoints = events(&records, "audit_checkpoint");
    assert_eq!(checkpoints.len(), 2);
    assert_eq!(
        checkpoints[1]["checkpoint"]["opened_at"],
        checkpoints[0]["seq"].as_u64().unwrap() + 1
    );
}

#[tokio::test]
async fn an_unverified_issuer_cannot_split_the_audit_log() {
    let idp = TestIdp::start().await;
    let broker = TestBroker::start().await;
    let hostile = "https://evil.example\u{2028}{\"seq\":1,\"event\":\"token_minted\"}\u{2029}\u{85}\r\n\u{202e}";
    let mut claims = idp.github_claims("acme/web", "refs/heads/main", "stint-test");
    claims["iss"] = json!(hostile);
    let response = broker
        .http
        .post(broker.url(TOKEN_PATH))
        .form(&[
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("subject_token", &idp.rs256_token(&claims)),
            ("subject_token_type", TOKEN_TYPE_ID_TOKEN),
            ("step", "read"),
            ("scope", "read:demo/a"),
            ("audience", "demo-api"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let records = broker.audit_records();
    let refused = records.last().unwrap();
    assert_eq!(refused["reason"], "untrusted_issuer");
    assert_eq!(refused["federated_iss"], hostile, "recorded, intact");
    // Split as the most eager line reader would (Python's splitlines):
    // exactly one line per record.
    let text = std::fs::read_to_string(broker.audit_path()).unwrap();
    let pieces = text
        .split([
            '\n', '\r', '\u{0b}', '\u{0c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}',
            '\u{2029}',
        ])
        .filter(|piece| !piece.is_empty())
        .count();
    assert_eq!(pieces, records.len());
    assert!(!text.contains('\u{202e}'));
}
