//! A revocation is durable, audited and announced, or none of those, on a
//! real full filesystem (a tmpfs; see `stint_tests::Tmpfs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::time::Duration;
use stint_proto::{REVOCATION_SNAPSHOT_PATH, RevocationSnapshot};
use stint_tests::{BrokerOptions, TestBroker, Tmpfs, eventually};

async fn snapshot(broker: &TestBroker) -> RevocationSnapshot {
    broker
        .http
        .get(broker.url(REVOCATION_SNAPSHOT_PATH))
        .basic_auth(&broker.client_id, Some(&broker.client_secret))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn revoke_job(broker: &TestBroker, job: &str) -> (u16, Value) {
    let response = broker
        .http
        .post(broker.url(&format!("/v1/jobs/{job}/revoke")))
        .basic_auth(&broker.client_id, Some(&broker.client_secret))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_revocation_on_a_full_disk_is_none_of_durable_audited_or_announced() {
    let tmpfs = Tmpfs::mount(8 * 1024 * 1024);
    let mut broker = TestBroker::start_with(BrokerOptions {
        data_dir: Some(tmpfs.path().join("data")),
        ..BrokerOptions::default()
    })
    .await;
    let token = broker
        .mint("read", "read:demo/a", &[("job", "full-1")])
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let records_before = broker.audit_records().len();
    let seq_before = snapshot(&broker).await.position.seq;

    // Fill the disk, then mint until the audit log can take no more (the
    // last page of the file may hold a record or two).
    let filler = tmpfs.fill();
    eventually(Duration::from_secs(10), "the audit log to fail", || async {
        let status = broker.try_mint("read", "read:demo/b", &[]).await.status();
        (status == 503).then_some(())
    })
    .await;

    let (status, body) = revoke_job(&broker, "full-1").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    // Not in force, not announced.
    assert_eq!(broker.introspect(&token).await["active"], true);
    let after = snapshot(&broker).await;
    assert_eq!(after.position.seq, seq_before, "nothing was announced");
    assert!(
        after
            .revocations
            .iter()
            .all(|r| r.job.as_deref() != Some("full-1"))
    );

    // Room again: the retry is all three, and survives a restart.
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = revoke_job(&broker, "full-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(broker.introspect(&token).await["active"], false);
    let after = snapshot(&broker).await;
    assert_eq!(after.position.seq, seq_before + 1, "announced once");
    let records = broker.audit_records();
    let revoked: Vec<_> = records[records_before..]
        .iter()
        .filter(|r| r["event"] == "job_revoked" && r["job"] == "full-1")
        .collect();
    assert_eq!(revoked.len(), 1, "audited once: {revoked:?}");
    broker.restart().await;
    assert_eq!(broker.introspect(&token).await["active"], false);
}

/// The store refusing a write after the audit log took the record: the
/// revocation is not in force, not announced, and a second record says so.
#[tokio::test]
async fn a_revocation_the_store_refuses_is_not_in_force_and_the_log_says_so() {
    let broker = TestBroker::start().await;
    let token = broker.mint("read", "read:demo/a", &[("job", "ro-1")]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let seq_before = snapshot(&broker).await.position.seq;
    // Make the store read-only under the broker: SQLite refuses writes
    // while the audit log (another file) still takes records.
    let db = broker.data_dir().join(stint_server::STORE_FILE);
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // The broker's write waits out its busy timeout (5 s), then fails.
    let (status, body) = revoke_job(&broker, "ro-1").await;
    drop(lock);
    assert_eq!(status, 503, "{body}");
    // A store locked for as long as the fail-closed bound (its busy
    // timeouts queue up on a loaded machine) also fails the broker closed,
    // which answers every token inactive: wait until it is ready again,
    // then the token is active, the revocation not in force.
    eventually(
        Duration::from_secs(20),
        "the broker ready again",
        || async {
            let ready = broker.http.get(broker.url("/readyz")).send().await.ok()?;
            (ready.status() == 200).then_some(())
        },
    )
    .await;
    assert_eq!(broker.introspect(&token).await["active"], true);
    assert_eq!(snapshot(&broker).await.position.seq, seq_before);
    let records = broker.audit_records();
    let last_two: Vec<_> = records.iter().rev().take(2).rev().collect();
    assert_eq!(last_two[0]["event"], "job_revoked");
    assert_eq!(last_two[1]["event"], "job_revocation_denied");
    assert_eq!(last_two[1]["reason"], "not_durable");
    assert_eq!(last_two[0]["request_id"], last_two[1]["request_id"]);
}

/// While a job revocation is being stored (here: held up by a locked
/// store), the job mints nothing: a token signed in that window would
/// outlive the revocation's entry and escape it.
#[tokio::test]
async fn a_job_mints_nothing_while_its_revocation_is_being_carried_out() {
    let broker = std::sync::Arc::new(TestBroker::start().await);
    broker
        .mint("read", "read:demo/a", &[("job", "race-1")])
        .await;
    let db = broker.data_dir().join(stint_server::STORE_FILE);
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let revoking = {
        let broker = std::sync::Arc::clone(&broker);
        tokio::spawn(async move { revoke_job(&broker, "race-1").await })
    };
    // Audited first: once its record is there, the store write is waiting.
    eventually(
        Duration::from_secs(4),
        "the revocation to be audited",
        || async {
            broker
                .audit_records()
                .iter()
                .any(|r| r["event"] == "job_revoked" && r["job"] == "race-1")
                .then_some(())
        },
    )
    .await;
    let response = broker
        .try_mint("read", "read:demo/b", &[("job", "race-1")])
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    drop(lock);
    assert_eq!(
        status, 400,
        "minted while the job was being revoked: {body}"
    );
    assert_eq!(body["error"], "invalid_grant");
    let (status, body) = revoking.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Another job mints as before.
    broker
        .mint("read", "read:demo/a", &[("job", "race-2")])
        .await;
}
