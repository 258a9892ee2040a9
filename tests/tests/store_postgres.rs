//! The PostgreSQL store against a real PostgreSQL 15: the conformance
//! suite over TLS and over plain loopback, two brokers' handles on one
//! database, a newer schema, a server that stops (or never answers), a
//! wrong password, and the real `stintd` with `--store postgres://...`.
//!
//! The binary tests need `target/debug/stintd` (`cargo build -p stintd`)
//! or `$STINTD_BIN`.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::time::{Duration, Instant};
use stint_core::revocation::{JobRevocation, TokenRevocation};
use stint_core::target_credential::{CredentialState, TargetCredential};
use stint_store::{
    ApprovalSaved, AuditCommit, AuditedWrite, Change, ChangePosition, PostgresStore,
    PostgresStoreSettings, PostgresTls, Store, StoreError, StorePassword, conformance,
};
use stint_tests::postgres::{PgCluster, ledger_credential};
use stint_tests::{Daemon, eventually, policy_with, run_to_end, test_secret, workspace_binary};

const ROLE: &str = "stint_store";
const PASSWORD: &str = "store-pw-7f3a9c2e1b";

fn token(jti: &str) -> TokenRevocation {
    TokenRevocation {
        jti: jti.into(),
        sub: "w".into(),
        job: "j".into(),
        expires_at: 2_000,
        revoked_at: 1_000,
    }
}

#[tokio::test]
async fn passes_the_conformance_suite_over_tls() {
    let cluster = PgCluster::start_with_tls();
    let mut settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cluster.ca_pem().unwrap()).unwrap();
    // verify-full: the certificate is for localhost and 127.0.0.1.
    settings.host = "localhost".into();
    settings.tls = PostgresTls::Require {
        ca_file: Some(ca_file),
    };
    let store = PostgresStore::open(&settings).await.unwrap();
    conformance::run(&store).await;
    // The session really is TLS.
    let ssl: bool = cluster
        .superuser_client()
        .await
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.usename = $1",
            &[&ROLE],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the store's connections use TLS");
}

#[tokio::test]
async fn a_server_whose_certificate_the_roots_do_not_accept_is_refused() {
    let cluster = PgCluster::start_with_tls();
    let mut settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    // Mozilla's roots do not know the test CA.
    settings.host = "localhost".into();
    settings.tls = PostgresTls::Require { ca_file: None };
    let error = PostgresStore::open(&settings).await.unwrap_err();
    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
    assert!(error.to_string().contains("certificate"), "{error}");
}

#[tokio::test]
async fn passes_the_conformance_suite_over_plain_loopback() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    let store = PostgresStore::open(&settings).await.unwrap();
    conformance::run(&store).await;
}

#[tokio::test]
async fn after_the_first_migration_the_role_needs_only_its_table_privileges() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    drop(PostgresStore::open(&settings).await.unwrap());
    cluster
        .superuser_client_in("stint")
        .await
        .batch_execute(&format!("REVOKE CREATE ON SCHEMA public FROM {ROLE}"))
        .await
        .unwrap();
    let store = PostgresStore::open(&settings).await.unwrap();
    store.check().await.unwrap();
    store.revoke_token(&token("a"), None).await.unwrap();
    assert_eq!(store.live_revocations(0).await.unwrap().tokens.len(), 1);
}

#[tokio::test]
async fn two_brokers_share_one_database() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    // Both open an empty database at once: both succeed, the schema is
    // applied once.
    let (a, b) = tokio::join!(
        PostgresStore::open(&settings),
        PostgresStore::open(&settings)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let versions: Vec<i64> = cluster
        .superuser_client_in("stint")
        .await
        .query("SELECT version FROM stint_schema", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, [stint_store::SCHEMA_VERSION]);

    // A revocation by one is seen by the other.
    a.revoke_token(&token("shared"), None).await.unwrap();
    assert_eq!(
        b.live_revocations(1_500).await.unwrap().tokens,
        [token("shared")]
    );

    // One credential per step token and target, whichever broker asks:
    // of many racing inserts, exactly one wins.
    let credential = |id: String| TargetCredential {
        upstream_id: "stint_aaaaaaaaaaaaaaaaaaaaaaaa".into(),
        state: CredentialState::Minting,
        ..ledger_credential(&id, "jti-race", 1_000)
    };
    let inserts = (0..8).map(|n| {
        let store = if n % 2 == 0 { &a } else { &b };
        let credential = credential(format!("tc-{n}"));
        async move {
            store
                .insert_target_credential(&credential, "broker-a")
                .await
                .unwrap()
        }
    });
    let won = futures_util::future::join_all(inserts).await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    assert_eq!(b.unfinished_target_credentials().await.unwrap().len(), 1);

    // Racing revocations of one job keep the first revoked_at and the
    // latest until.
    let revocations = (0..8).map(|n: i64| {
        let store = if n % 2 == 0 { &a } else { &b };
        let revocation = JobRevocation {
            sub: "w".into(),
            job: "racing".into(),
            revoked_at: 1_000,
            until: 5_000 + n,
        };
        async move { store.revoke_job(&revocation).await.unwrap() }
    });
    futures_util::future::join_all(revocations).await;
    assert_eq!(
        a.live_revocations(1_500).await.unwrap().jobs,
        [JobRevocation {
            sub: "w".into(),
            job: "racing".into(),
            revoked_at: 1_000,
            until: 5_007,
        }]
    );

    // Racing saves of one approval: one row, no error.
    let request = stint_core::approval::ApprovalRequest::new(
        "apr-race".into(),
        stint_core::approval::Requester {
            workload: "w".into(),
            client_id: "w".into(),
            job: "j".into(),
            step: "flow/step".into(),
            audience: "https://a.example".into(),
        },
        vec![stint_core::scope::Scope::parse("deploy:prod/web").unwrap()],
        None,
        None,
        stint_core::approval::Elevation {
            approver_groups: ["sre".to_owned()].into(),
            quorum: 1,
            max_duration: 600,
            max_wait: 300,
            reason_required: false,
        },
        10_000,
    )
    .unwrap();
    // Racing creations of one request: exactly one is saved.
    let saves = (0..8).map(|n| {
        let store = if n % 2 == 0 { &a } else { &b };
        let request = request.clone();
        async move { store.save_approval(&request, 0).await.unwrap() }
    });
    let outcomes = futures_util::future::join_all(saves).await;
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, ApprovalSaved::Saved { revision: 1, .. }))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ApprovalSaved::Saved { .. } | ApprovalSaved::Conflict)),
        "{outcomes:?}"
    );

    // Two operators vote at once through the two brokers, each from
    // revision 1 (as each broker read it): one vote is counted, the other
    // conflicts, and its broker must read the request again.
    let vote = |name: &str, at: i64| {
        let mut next = request.clone();
        next.approve(
            &stint_core::approval::Operator {
                name: name.into(),
                groups: ["sre".to_owned()].into(),
                owns: Default::default(),
            },
            None,
            None,
            at,
        )
        .unwrap();
        next
    };
    let (alice, bob) = (vote("alice", 10_010), vote("bob", 10_011));
    let (x, y) = tokio::join!(a.save_approval(&alice, 1), b.save_approval(&bob, 1));
    let mut outcomes = [x.unwrap(), y.unwrap()];
    outcomes.sort_by_key(|o| matches!(o, ApprovalSaved::Conflict));
    assert!(
        matches!(
            outcomes,
            [
                ApprovalSaved::Saved { revision: 2, .. },
                ApprovalSaved::Conflict
            ]
        ),
        "{outcomes:?}"
    );
    let stored = b.approval("apr-race").await.unwrap().unwrap();
    assert_eq!(stored.revision, 2);
    assert_eq!(stored.request.approvals.len(), 1, "one vote counted");
    // The same operator, again, through the other broker, from what is
    // stored now: the vote rows refuse a second vote.
    let mut again = stored.request.clone();
    again.approvals[0].at += 5;
    assert_eq!(
        a.save_approval(&again, 2).await.unwrap(),
        ApprovalSaved::AlreadyVoted
    );
    let votes: i64 = cluster
        .superuser_client_in("stint")
        .await
        .query_one(
            "SELECT count(*) FROM approval_votes WHERE approval_id = 'apr-race'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(votes, 1);
}

#[tokio::test]
async fn the_change_feed_is_gap_free_across_brokers_and_notifies() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    let a = std::sync::Arc::new(PostgresStore::open(&settings).await.unwrap());
    let b = std::sync::Arc::new(PostgresStore::open(&settings).await.unwrap());
    let start = b.change_position().await.unwrap();

    // B listens; a write through A wakes it.
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let listener = {
        let (b, wake) = (std::sync::Arc::clone(&b), std::sync::Arc::clone(&wake));
        tokio::spawn(async move { b.watch_changes(&wake).await })
    };
    // The first wake-up says it listens.
    tokio::time::timeout(Duration::from_secs(10), wake.notified())
        .await
        .expect("listening");
    a.revoke_token(&token("notified"), None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake.notified())
        .await
        .expect("a commit through A wakes B's listener");

    // Many writers on both: every sequence number once, none missing, and
    // each change as its writer described it.
    let writes = (0..40).map(|n| {
        let store = if n % 2 == 0 { &a } else { &b };
        async move {
            store
                .revoke_token(&token(&format!("t{n:02}")), None)
                .await
                .unwrap()
        }
    });
    let mut seqs = futures_util::future::join_all(writes).await;
    seqs.sort_unstable();
    let expected: Vec<u64> = (start.seq + 2..=start.seq + 41).collect();
    assert_eq!(seqs, expected, "gap-free, each once");
    let changes = b.changes_since(start.seq, 1_000).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (start.seq + 1..=start.seq + 41).collect::<Vec<_>>()
    );
    let mut jtis: Vec<String> = changes
        .iter()
        .filter_map(|c| match &c.change {
            Change::Token { revocation, .. } => Some(revocation.jti.clone()),
            _ => None,
        })
        .collect();
    jtis.sort();
    assert_eq!(jtis.len(), 41);
    assert_eq!(jtis[0], "notified");
    assert_eq!(
        a.change_position().await.unwrap(),
        ChangePosition {
            epoch: start.epoch.clone(),
            seq: start.seq + 41
        },
        "both brokers see one position"
    );

    // A listener whose session is killed returns an error (the caller
    // listens again and catches up by sequence meanwhile).
    cluster
        .superuser_client_in("stint")
        .await
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE query LIKE 'LISTEN%' OR query = 'SELECT 1'",
        )
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(15), listener)
        .await
        .expect("the listener notices its session ended")
        .unwrap();
    assert!(ended.is_err());
}

#[tokio::test]
async fn audit_records_and_the_changes_they_record_commit_together_or_not_at_all() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    let store = PostgresStore::open(&settings).await.unwrap();
    let start = store.change_position().await.unwrap();
    let records = vec!["{\"n\":0}".to_owned(), "{\"n\":1}".to_owned()];
    let writes = vec![
        AuditedWrite::Token(token("together"), None),
        AuditedWrite::Job(JobRevocation {
            sub: "w".into(),
            job: "j-together".into(),
            revoked_at: 1_000,
            until: 2_000,
        }),
    ];
    let committed = store
        .append_audit_with("chain-a", 0, &records, &writes)
        .await
        .unwrap();
    assert_eq!(
        committed,
        AuditCommit {
            written: 2,
            seqs: vec![start.seq + 1, start.seq + 2]
        }
    );
    assert_eq!(
        store.audit_records("chain-a", 0, 10).await.unwrap(),
        records
    );
    let changes = store.changes_since(start.seq, 10).await.unwrap();
    assert_eq!(
        changes.iter().map(|c| c.change.clone()).collect::<Vec<_>>(),
        writes.iter().map(AuditedWrite::change).collect::<Vec<_>>()
    );
    let live = store.live_revocations(1_500).await.unwrap();
    assert!(live.tokens.iter().any(|t| t.jti == "together"), "{live:?}");
    assert!(live.jobs.iter().any(|j| j.job == "j-together"), "{live:?}");

    // The same batch again (its commit's answer lost): nothing written
    // twice, no second change.
    let again = store
        .append_audit_with("chain-a", 0, &records, &writes)
        .await
        .unwrap();
    assert_eq!(
        again,
        AuditCommit {
            written: 0,
            seqs: Vec::new()
        }
    );
    // A batch one of whose positions is taken writes neither its records
    // nor its change.
    let overlapping = vec!["{\"n\":1}".to_owned(), "{\"n\":2}".to_owned()];
    let refused = store
        .append_audit_with(
            "chain-a",
            1,
            &overlapping,
            &[AuditedWrite::Token(token("never"), None)],
        )
        .await
        .unwrap();
    assert_eq!(refused.written, 0);
    assert_eq!(
        store.audit_records("chain-a", 0, 10).await.unwrap().len(),
        2
    );
    assert_eq!(
        store.change_position().await.unwrap().seq,
        start.seq + 2,
        "no change without its records"
    );
    let live = store.live_revocations(1_500).await.unwrap();
    assert!(!live.tokens.iter().any(|t| t.jti == "never"), "{live:?}");

    // Records alone (one statement, its own transaction): all or none too.
    let more = vec!["{\"n\":2}".to_owned(), "{\"n\":3}".to_owned()];
    let alone = store
        .append_audit_with("chain-a", 2, &more, &[])
        .await
        .unwrap();
    assert_eq!(
        alone,
        AuditCommit {
            written: 2,
            seqs: Vec::new()
        }
    );
    assert_eq!(
        store
            .append_audit_with("chain-a", 2, &more, &[])
            .await
            .unwrap(),
        AuditCommit::NOTHING,
        "sent again: nothing written twice"
    );
    // Position 3 is taken, 4 is free: neither is written.
    let half_taken = vec!["{\"n\":3}".to_owned(), "{\"n\":4}".to_owned()];
    assert_eq!(
        store
            .append_audit_with("chain-a", 3, &half_taken, &[])
            .await
            .unwrap(),
        AuditCommit::NOTHING
    );
    let mut all = records.clone();
    all.extend(more);
    assert_eq!(store.audit_records("chain-a", 0, 10).await.unwrap(), all);
}

/// Target credentials have one owner: a broker whose lease ran out loses
/// its unfinished ones to the brokers that claim, each to exactly one of
/// them however they race; a live broker's are left to it.
#[tokio::test]
async fn target_credentials_of_a_broker_whose_lease_ran_out_are_claimed_once() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    let a = PostgresStore::open(&settings).await.unwrap();
    let b = PostgresStore::open(&settings).await.unwrap();
    let now = 10_000;
    // The gone broker said it was alive until 9_000, the live one until
    // 20_000.
    assert!(
        a.claim_target_credentials("gone", 9_000, 8_000, false)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.claim_target_credentials("live", 20_000, now, false)
            .await
            .unwrap()
            .is_empty()
    );
    for n in 0..40 {
        let owner = if n % 4 == 0 { "live" } else { "gone" };
        let credential = ledger_credential(&format!("c{n:02}"), &format!("j{n:02}"), 1_000 + n);
        assert!(
            a.insert_target_credential(&credential, owner)
                .await
                .unwrap()
        );
    }
    // Mints of the gone broker: one begun just now (it may be under way:
    // left alone), one abandoned long ago (taken, to be destroyed).
    let mut young = ledger_credential("young", "j-young", now - 10);
    young.state = CredentialState::Minting;
    assert!(a.insert_target_credential(&young, "gone").await.unwrap());
    let mut abandoned = ledger_credential("abandoned", "j-abandoned", now - 200);
    abandoned.state = CredentialState::Minting;
    assert!(
        a.insert_target_credential(&abandoned, "gone")
            .await
            .unwrap()
    );
    let mut finished = ledger_credential("done", "j-done", 900);
    assert!(a.insert_target_credential(&finished, "gone").await.unwrap());
    finished.state = CredentialState::Revoked;
    finished.finished_at = Some(950);
    assert!(a.update_target_credential(&finished, "gone").await.unwrap());

    // Two brokers claim at once, again and again.
    let mut by_a = Vec::new();
    let mut by_b = Vec::new();
    for _ in 0..5 {
        let (from_a, from_b) = tokio::join!(
            a.claim_target_credentials("broker-a", now + 30, now, false),
            b.claim_target_credentials("broker-b", now + 30, now, false),
        );
        by_a.extend(from_a.unwrap().into_iter().map(|c| c.id));
        by_b.extend(from_b.unwrap().into_iter().map(|c| c.id));
    }
    let mut all: Vec<String> = by_a.iter().chain(&by_b).cloned().collect();
    all.sort();
    let expected: Vec<String> = std::iter::once("abandoned".to_owned())
        .chain((0..40).filter(|n| n % 4 != 0).map(|n| format!("c{n:02}")))
        .collect();
    assert_eq!(
        all, expected,
        "each of the gone broker's once, none of the live one's, nothing finished"
    );
    for id in &by_a {
        assert!(a.owns_target_credential("broker-a", id).await.unwrap());
        assert!(!b.owns_target_credential("broker-b", id).await.unwrap());
    }

    // A credential revoked through broker B is B's from then on.
    let id = by_a.first().or(by_b.first()).unwrap().clone();
    let taken = b
        .take_target_credential("broker-b", &id, &id.replacen('c', "j", 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.id, id);
    assert!(b.owns_target_credential("broker-b", &id).await.unwrap());
    assert!(!a.owns_target_credential("broker-a", &id).await.unwrap());
    assert!(
        b.take_target_credential("broker-b", "done", "j-done")
            .await
            .unwrap()
            .is_none(),
        "a finished one is nobody's to take"
    );
    assert!(
        b.take_target_credential("broker-b", &id, "another-token")
            .await
            .unwrap()
            .is_none(),
        "only with the token it was made from"
    );
    assert!(
        b.take_target_credential("broker-b", "young", "j-young")
            .await
            .unwrap()
            .is_none(),
        "a credential being made is not taken"
    );
    // An update by a broker that no longer owns it writes nothing.
    let mut stale = taken.clone();
    stale.state = CredentialState::Revoked;
    assert!(
        !a.update_target_credential(&stale, "broker-a")
            .await
            .unwrap()
    );
    assert!(b.owns_target_credential("broker-b", &id).await.unwrap());
    assert!(
        b.take_target_credential("broker-b", "nope", "j-nope")
            .await
            .unwrap()
            .is_none()
    );

    // Once the live broker's lease runs out too, its credentials go.
    let later = 20_001;
    let claimed = a
        .claim_target_credentials("broker-a", later + 30, later, false)
        .await
        .unwrap();
    // broker-b has not renewed either: its are A's too; A's own are not
    // returned again.
    let mut claimed: Vec<String> = claimed.into_iter().map(|c| c.id).collect();
    claimed.sort();
    let mut expected: Vec<String> = (0..40)
        .filter(|n| n % 4 == 0)
        .map(|n| format!("c{n:02}"))
        .chain(by_b.iter().cloned())
        .chain(std::iter::once(id.clone()))
        // Long abandoned by now.
        .chain(std::iter::once("young".to_owned()))
        .collect();
    expected.sort();
    expected.dedup();
    expected.retain(|c| !by_a.contains(c) || *c == id);
    assert_eq!(claimed, expected);
    // After a claim whose answer it lost, a broker asks for its own too.
    let mut own: Vec<String> = a
        .claim_target_credentials("broker-a", later + 30, later, true)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    own.sort();
    let mut all_of_a: Vec<String> = by_a.iter().cloned().chain(claimed).collect();
    all_of_a.sort();
    all_of_a.dedup();
    assert_eq!(own, all_of_a);
}

async fn schema_version(cluster: &PgCluster) -> i64 {
    cluster
        .superuser_client_in("stint")
        .await
        .query_one("SELECT version FROM stint_schema", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_schema_8_database_is_migrated_once() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    drop(PostgresStore::open(&settings).await.unwrap());
    // What schema 8 had: no change feed, no votes, no revisions.
    cluster
        .superuser_client_in("stint")
        .await
        .batch_execute(
            "DROP TABLE stint_changes; DROP TABLE stint_change_head; DROP TABLE approval_votes;
             DROP TABLE audit_records; DROP TABLE stint_brokers;
             ALTER TABLE target_credentials DROP COLUMN owner;
             ALTER TABLE approvals DROP COLUMN revision;
             ALTER TABLE signing_keys DROP COLUMN activated_at;
             INSERT INTO signing_keys (kid, alg, pkcs8, created_at) VALUES ('k8', 'ES256', '\\x01', 800);
             UPDATE stint_schema SET version = 8;",
        )
        .await
        .unwrap();
    let (x, y) = tokio::join!(
        PostgresStore::open(&settings),
        PostgresStore::open(&settings)
    );
    let (x, _y) = (x.unwrap(), y.unwrap());
    x.revoke_token(&token("migrated"), None).await.unwrap();
    assert_eq!(x.change_position().await.unwrap().seq, 1);
    assert_eq!(schema_version(&cluster).await, stint_store::SCHEMA_VERSION);
    let keys = x.signing_keys().await.unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| (k.kid.as_str(), k.activated_at))
            .collect::<Vec<_>>(),
        [("k8", Some(800))],
        "a key of schema 8 signed from its creation"
    );
}

#[tokio::test]
async fn a_schema_9_database_gains_target_credential_owners() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    let store = PostgresStore::open(&settings).await.unwrap();
    let old = ledger_credential("before", "j-before", 1_000);
    assert!(store.insert_target_credential(&old, "x").await.unwrap());
    drop(store);
    // What schema 9 had: no owners, no leases.
    cluster
        .superuser_client_in("stint")
        .await
        .batch_execute(
            "DROP TABLE stint_brokers; ALTER TABLE target_credentials DROP COLUMN owner;
             UPDATE stint_schema SET version = 9;",
        )
        .await
        .unwrap();
    let store = PostgresStore::open(&settings).await.unwrap();
    assert_eq!(schema_version(&cluster).await, stint_store::SCHEMA_VERSION);
    // A credential of schema 9 has no owner: the first broker to claim
    // takes it.
    let claimed = store
        .claim_target_credentials("first", 2_030, 2_000, false)
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["before"]
    );
    assert!(
        store
            .owns_target_credential("first", "before")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    drop(PostgresStore::open(&settings).await.unwrap());
    cluster
        .superuser_client_in("stint")
        .await
        .batch_execute("UPDATE stint_schema SET version = 99")
        .await
        .unwrap();
    let error = PostgresStore::open(&settings)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("schema version 99"), "{error}");
    assert!(
        error.contains(&format!("({})", stint_store::SCHEMA_VERSION)),
        "{error}"
    );
    assert!(error.contains("upgrade stintd"), "{error}");
}

/// `operation` fails with `StoreError::Backend` within `limit`.
async fn fails_quickly<T: std::fmt::Debug>(
    limit: Duration,
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> StoreError {
    let started = Instant::now();
    let result = tokio::time::timeout(limit * 3, operation)
        .await
        .expect("the store operation hung");
    let error = result.unwrap_err();
    assert!(
        started.elapsed() <= limit + Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    error
}

#[tokio::test]
async fn a_stopped_server_fails_operations_in_time_and_the_pool_reconnects() {
    let mut cluster = PgCluster::start();
    let settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    let store = PostgresStore::open(&settings).await.unwrap();
    store.revoke_token(&token("before"), None).await.unwrap();

    cluster.stop();
    let error = fails_quickly(settings.timeout, store.revoke_token(&token("during"), None)).await;
    assert!(!format!("{error} {error:?}").contains(PASSWORD));
    fails_quickly(settings.timeout, store.check()).await;
    fails_quickly(settings.timeout, store.live_revocations(0)).await;

    cluster.start_again();
    eventually(
        Duration::from_secs(20),
        "the store to work again",
        || async { store.check().await.ok() },
    )
    .await;
    store.revoke_token(&token("after"), None).await.unwrap();
    let mut jtis: Vec<String> = store
        .live_revocations(0)
        .await
        .unwrap()
        .tokens
        .into_iter()
        .map(|t| t.jti)
        .collect();
    jtis.sort();
    assert_eq!(jtis, ["after", "before"]);
}

#[tokio::test]
async fn a_server_that_never_answers_fails_in_time() {
    // Accepts connections and says nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            connections.push(connection);
        }
    });
    let settings = PostgresStoreSettings {
        host: "127.0.0.1".into(),
        port,
        user: ROLE.into(),
        password: StorePassword::new(PASSWORD.into()),
        database: "stint".into(),
        tls: PostgresTls::Disable,
        pool_size: 2,
        timeout: Duration::from_secs(1),
    };
    let started = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(10), PostgresStore::open(&settings))
        .await
        .expect("opening hung")
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let text = error.to_string();
    assert!(text.contains("did not answer"), "{text}");
    assert!(!format!("{text} {error:?}").contains(PASSWORD));
    held.abort();
}

#[tokio::test]
async fn the_password_is_in_no_error() {
    let cluster = PgCluster::start();
    let mut settings = cluster.create_store_database("stint", ROLE, PASSWORD).await;
    let wrong = "wrong-password-5d8e1c";
    settings.password = StorePassword::new(wrong.into());
    assert!(!format!("{settings:?}").contains(wrong));
    let error = PostgresStore::open(&settings).await.unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(wrong), "{text}");

    // Nor the right one, in a refusal of the server's.
    settings.password = StorePassword::new(PASSWORD.into());
    let store = PostgresStore::open(&settings).await.unwrap();
    store
        .insert_signing_key(&stint_store::StoredKey {
            kid: "k".into(),
            alg: "ES256".into(),
            pkcs8: vec![1],
            created_at: 1,
            activated_at: Some(1),
            retired_at: None,
        })
        .await
        .unwrap();
    let error = store
        .insert_signing_key(&stint_store::StoredKey {
            kid: "k".into(),
            alg: "ES256".into(),
            pkcs8: vec![1],
            created_at: 1,
            activated_at: Some(1),
            retired_at: None,
        })
        .await
        .unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(text.contains("23505"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(!format!("{store:?}").contains(PASSWORD));
}

// The real binary.

fn stintd() -> std::path::PathBuf {
    workspace_binary("stintd", "STINTD_BIN")
}

/// What `stintd --store postgres://...` on the test's database needs: a
/// directory with the policy, the store's password and a key-encryption
/// key in files.
struct OnPostgres {
    dir: tempfile::TempDir,
    url: String,
}

impl OnPostgres {
    /// The database `stint` (made now) on `cluster`.
    async fn new(cluster: &PgCluster) -> Self {
        cluster.create_store_database("stint", ROLE, PASSWORD).await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), policy_with("")).unwrap();
        std::fs::write(dir.path().join("store.password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::write(dir.path().join("kek"), [0x42u8; 32]).unwrap();
        let url = format!(
            "postgres://{ROLE}@127.0.0.1:{}/stint?sslmode=disable",
            cluster.port()
        );
        Self { dir, url }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `stintd --store URL`, its secrets from the files.
    fn stintd(&self) -> std::process::Command {
        let mut command = std::process::Command::new(stintd());
        command
            .args(["--store", &self.url])
            .env("STINTD_STORE_PASSWORD_FILE", self.path("store.password"))
            .env("STINTD_KEY_ENCRYPTION_KEY_FILE", self.path("kek"))
            .env_remove("STINTD_STORE_PASSWORD");
        command
    }

    /// A `--dev` broker on `listen`, its data directory `data` (under the
    /// test directory), with the test's policy.
    fn broker(&self, listen: &str, data: &str) -> std::process::Command {
        let mut command = self.stintd();
        command
            .args(["--dev", "--listen", listen])
            .arg("--data-dir")
            .arg(self.path(data))
            .arg("--policy")
            .arg(self.path("policy.toml"));
        command
    }
}

/// With the audit log in PostgreSQL, a revocation and its record are one
/// transaction: a revocation the store refuses leaves no record that it
/// happened (nor one that it failed: there is nothing to correct), and
/// the caller is told it did not happen.
#[tokio::test]
async fn a_revocation_and_its_audit_record_commit_together_or_not_at_all() {
    let cluster = PgCluster::start();
    let setup = OnPostgres::new(&cluster).await;
    let listen = stint_tests::unused_loopback_addr().to_string();
    let daemon = Daemon::start_command(&mut setup.broker(&listen, "data"));
    let http = reqwest::Client::new();
    let token = mint(&http, &daemon, "doomed").await;
    // The store refuses this one job's revocation (a constraint trigger
    // stands in for any failure of the write after the record).
    cluster
        .superuser_client_in("stint")
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'refused for the test'; END $$;
             CREATE TRIGGER refuse_doomed BEFORE INSERT ON revoked_jobs
             FOR EACH ROW WHEN (NEW.job = 'doomed') EXECUTE FUNCTION refuse_doomed();",
        )
        .await
        .unwrap();
    let revoke = || {
        http.post(daemon.url("/v1/jobs/doomed/revoke"))
            .basic_auth("demo-job", Some(test_secret("demo-job")))
            .send()
    };
    let response = revoke().await.unwrap();
    assert_eq!(response.status(), 503, "{}", response.text().await.unwrap());
    let records = cluster.audit_lines().await;
    assert!(
        !records.iter().any(|r| r["event"] == "job_revoked"),
        "no record of a revocation that did not happen: {records:?}"
    );
    assert!(active(&http, &daemon, &token).await, "not in force");

    // Once the store takes it, the revocation and one record of it.
    cluster
        .superuser_client_in("stint")
        .await
        .batch_execute("DROP TRIGGER refuse_doomed ON revoked_jobs")
        .await
        .unwrap();
    let response = eventually(Duration::from_secs(10), "the revocation", || async {
        let response = revoke().await.ok()?;
        (response.status() == 200).then_some(response)
    })
    .await;
    drop(response);
    assert!(!active(&http, &daemon, &token).await);
    let records = cluster.audit_lines().await;
    let revoked: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "job_revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    let changes: i64 = cluster
        .superuser_client_in("stint")
        .await
        .query_one(
            "SELECT count(*) FROM stint_changes WHERE body LIKE '%\"doomed\"%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        changes, 1,
        "one change, from the transaction that held its record"
    );
    assert!(daemon.stop(Duration::from_secs(20)).success());
    let (status, stdout, stderr) =
        run_to_end(setup.stintd().arg("verify-audit"), Duration::from_secs(30));
    assert!(status.success(), "{stdout}\n{stderr}");

    // The chain, exported to a file, verifies as a file, and holds what the
    // store holds; a second export never overwrites it.
    let export = tempfile::tempdir().unwrap();
    let dir = export.path().join("chains");
    let (status, stdout, stderr) = run_to_end(
        setup.stintd().arg("export-audit").arg(&dir),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{stdout}");
    let exported = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(
        exported.lines().count(),
        cluster.audit_lines().await.len(),
        "{stdout}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (status, stdout, stderr) = run_to_end(
        setup.stintd().arg("verify-audit").arg(&files[0]),
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    let (status, _, stderr) = run_to_end(
        setup.stintd().arg("export-audit").arg(&dir),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("cannot create"), "{stderr}");
}

async fn mint(http: &reqwest::Client, daemon: &Daemon, job: &str) -> String {
    let body: Value = http
        .post(daemon.url(stint_proto::TOKEN_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[
            ("grant_type", "client_credentials"),
            ("step", "read"),
            ("scope", "read:demo/x"),
            ("audience", "demo-api"),
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

async fn active(http: &reqwest::Client, daemon: &Daemon, token: &str) -> bool {
    let body: Value = http
        .post(daemon.url(stint_proto::INTROSPECTION_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["active"]
        .as_bool()
        .unwrap_or_else(|| panic!("introspection: {body}"))
}

#[tokio::test]
async fn stintd_keeps_its_revocations_in_postgresql_across_a_restart() {
    let cluster = PgCluster::start();
    let setup = OnPostgres::new(&cluster).await;
    let data = setup.path("data");
    let listen = stint_tests::unused_loopback_addr().to_string();
    let start = || Daemon::start_command(&mut setup.broker(&listen, "data"));
    let http = reqwest::Client::new();

    let daemon = start();
    let token = mint(&http, &daemon, "pg-job").await;
    assert!(active(&http, &daemon, &token).await);
    let response = http
        .post(daemon.url("/v1/jobs/pg-job/revoke"))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert!(!active(&http, &daemon, &token).await);
    // Nothing of the store is in the data directory.
    assert!(!data.join(stint_server::STORE_FILE).exists());
    daemon.kill9();

    let daemon = start();
    // A new client: the old one's connections went with the old daemon.
    let http = reqwest::Client::new();
    assert!(
        !active(&http, &daemon, &token).await,
        "the revocation survives a restart"
    );
    let jobs: i64 = cluster
        .superuser_client_in("stint")
        .await
        .query_one(
            "SELECT count(*) FROM revoked_jobs WHERE job = 'pg-job'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 1);
    assert!(!daemon.stderr().contains(PASSWORD));
    // A clean stop signs its chain's head.
    assert!(daemon.stop(Duration::from_secs(20)).success());

    // The audit log is in the database, one chain per process: the
    // killed one's records (acknowledged, so committed) are all there.
    assert!(
        !data.join(stint_server::AUDIT_FILE).exists(),
        "no audit file on the broker's disk"
    );
    let db = cluster.superuser_client_in("stint").await;
    let chains: Vec<(String, i64)> = db
        .query(
            "SELECT chain, count(*) FROM audit_records GROUP BY chain ORDER BY chain",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(chains.len(), 2, "{chains:?}");
    let first: Vec<String> = db
        .query(
            "SELECT line FROM audit_records WHERE chain = $1 ORDER BY n",
            &[&chains[0].0],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let events: Vec<String> = first
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["event"].to_string())
        .collect();
    for event in ["\"token_minted\"", "\"job_revoked\""] {
        assert!(events.iter().any(|e| e == event), "{event} in {events:?}");
    }
    let verify = |extra: &[&str]| {
        stint_tests::run_to_end(
            setup.stintd().arg("verify-audit").args(extra),
            Duration::from_secs(30),
        )
    };
    let (status, stdout, stderr) = verify(&[]);
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 audit chains verified"), "{stdout}");
    assert!(stdout.contains("intact"), "{stdout}");
    println!("{stdout}");
    let second = stdout
        .lines()
        .find(|line| line.starts_with(&format!("chain {}:", chains[1].0)))
        .unwrap();
    assert!(
        second.contains("checkpoints: 1 verified")
            && second.contains("; 0 records after the last verified checkpoint"),
        "the cleanly stopped broker's chain ends with a checkpoint the store's key verifies: {second}"
    );

    // A record edited in the database breaks its chain, and says which.
    db.execute(
        "UPDATE audit_records SET line = replace(line, 'pg-job', 'pg-jab') WHERE chain = $1",
        &[&chains[0].0],
    )
    .await
    .unwrap();
    let (status, stdout, _) = verify(&[]);
    assert!(!status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("chain {}: BROKEN", chains[0].0)),
        "{stdout}"
    );
}

/// PostgreSQL stopped under a running stintd: within the bound it fails
/// closed (no mint, the token inactive, the feed stream ended, /readyz
/// 503), and once PostgreSQL is back it heals by itself with what was
/// acknowledged before still in force.
#[tokio::test]
async fn stintd_fails_closed_while_postgresql_is_down_and_heals_after() {
    let mut cluster = PgCluster::start();
    let setup = OnPostgres::new(&cluster).await;
    // The dev policy (its demo client), not the test's.
    let daemon = Daemon::start_command(
        setup
            .stintd()
            .args(["--dev", "--listen", "127.0.0.1:0"])
            .args(["--store-fail-closed-after", "1", "--store-timeout", "1"])
            .arg("--data-dir")
            .arg(setup.path("data")),
    );
    let creds = {
        let dev: stint_proto::DevClient =
            serde_json::from_slice(&std::fs::read(setup.path("data/dev-client.json")).unwrap())
                .unwrap();
        (dev.client_id, dev.client_secret)
    };
    let http = reqwest::Client::new();
    let try_mint = |job: &'static str| {
        http.post(daemon.url(stint_proto::TOKEN_PATH))
            .basic_auth(&creds.0, Some(&creds.1))
            .form(&[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "read:demo/docs"),
                ("audience", "demo-api"),
                ("job", job),
            ])
            .send()
    };
    let is_active = |token: String| {
        let request = http
            .post(daemon.url(stint_proto::INTROSPECTION_PATH))
            .basic_auth(&creds.0, Some(&creds.1))
            .form(&[("token", token)])
            .send();
        async move {
            let body: Value = request.await.unwrap().json().await.unwrap();
            body["active"].as_bool().unwrap()
        }
    };
    let minted: Value = try_mint("before").await.unwrap().json().await.unwrap();
    let token = minted["access_token"].as_str().unwrap().to_owned();
    let revoked: Value = try_mint("revoked").await.unwrap().json().await.unwrap();
    let revoked = revoked["access_token"].as_str().unwrap().to_owned();
    let response = http
        .post(daemon.url("/v1/jobs/revoked/revoke"))
        .basic_auth(&creds.0, Some(&creds.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(is_active(token.clone()).await);
    let mut stream = stint_tests::sse::SseStream::new(
        stint_tests::sse::SseStream::open(
            &http,
            &daemon.url(stint_proto::REVOCATION_STREAM_PATH),
            (&creds.0, &creds.1),
            None,
        )
        .await,
    );
    assert_eq!(
        stream
            .next_event(Duration::from_secs(5))
            .await
            .unwrap()
            .event,
        "ready"
    );

    cluster.stop();
    let stopped = Instant::now();
    // The feed stream ends (a keep-alive comment may come first).
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while stream.next(Duration::from_secs(10)).await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the feed stream ended");
    let status = try_mint("during").await.unwrap().status().as_u16();
    assert_eq!(status, 503);
    assert!(!is_active(token.clone()).await, "no token is vouched for");
    let ready = http.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let failed_closed_in = stopped.elapsed();
    assert!(
        failed_closed_in < Duration::from_secs(10),
        "{failed_closed_in:?}"
    );

    cluster.start_again();
    eventually(Duration::from_secs(30), "stintd heals", || async {
        let response = try_mint("after").await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    assert!(is_active(token).await, "active again");
    assert!(
        !is_active(revoked).await,
        "the revocation made before is in force"
    );
    assert!(
        daemon.stderr().contains("failing closed"),
        "{}",
        daemon.stderr()
    );
    assert!(daemon.stderr().contains("the store answers again"));
}

#[tokio::test]
async fn stintd_refuses_a_password_on_its_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "cli-visible-pw-4e1d";
    let (status, stdout, stderr) = run_to_end(
        std::process::Command::new(stintd())
            .args([
                "--dev",
                "--store",
                &format!("postgres://stint:{secret}@127.0.0.1:5432/stint?sslmode=disable"),
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("STINTD_STORE")
            .env_remove("STINTD_STORE_PASSWORD")
            .env_remove("STINTD_STORE_PASSWORD_FILE"),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("password"), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
    assert!(!dir.path().join(stint_server::STORE_FILE).exists());
}

/// Two brokers on one database vouch for each other's audit chains: a
/// chain deleted after the other recorded its head is found by
/// verify-audit.
#[tokio::test]
async fn a_deleted_audit_chain_is_found_by_the_chains_that_vouched_for_it() {
    let cluster = PgCluster::start();
    let setup = OnPostgres::new(&cluster).await;
    let start = |name: &str| {
        Daemon::start_command(
            setup
                .broker("127.0.0.1:0", name)
                .args(["--audit-checkpoint-interval", "1"]),
        )
    };
    let a = start("a");
    let b = start("b");
    let db = cluster.superuser_client_in("stint").await;
    // Each records the other's head within a checkpoint interval or two.
    stint_tests::eventually(Duration::from_secs(15), "both chains vouch", || async {
        let vouching: i64 = db
            .query_one(
                "SELECT count(DISTINCT chain) FROM audit_records WHERE line LIKE '%\"event\":\"audit_peers\"%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (vouching == 2).then_some(())
    })
    .await;
    let stopped = b.stop(Duration::from_secs(20));
    assert!(stopped.success());
    drop(a);
    let verify =
        || stint_tests::run_to_end(setup.stintd().arg("verify-audit"), Duration::from_secs(30));
    let (status, stdout, stderr) = verify();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 audit chains verified"), "{stdout}");
    assert!(
        !stdout.contains("vouched for: 0 found"),
        "each chain vouched for the other: {stdout}"
    );

    // The second chain deleted whole: what is left verifies on its own,
    // but the first chain vouched for it.
    let chains: Vec<String> = db
        .query(
            "SELECT DISTINCT chain FROM audit_records ORDER BY chain",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(chains.len(), 2);
    db.execute("DELETE FROM audit_records WHERE chain = $1", &[&chains[1]])
        .await
        .unwrap();
    let (status, stdout, _) = verify();
    assert!(!status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "chain {}: vouched for chain {}@",
            chains[0], chains[1]
        )),
        "{stdout}"
    );
}
