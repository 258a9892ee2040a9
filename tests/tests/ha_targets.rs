//! Target credentials with several replicas on one PostgreSQL store: each
//! credential is owned by the replica that made it and destroyed once, by
//! its owner; a credential revoked through another replica is taken over
//! by that one; a killed replica's credentials are taken over when its
//! lease runs out. The target is a database on the same PostgreSQL the
//! store is in (roles are the cluster's either way).
//!
//! Needs `target/debug/stintd` (`cargo build -p stintd`) or `$STINTD_BIN`.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::time::{Duration, Instant};
use stint_tests::ha::{HaCluster, HaOptions, Replica};
use stint_tests::postgres::{LOAD_STEP, target_toml};
use stint_tests::{eventually, policy_with};

const ADMIN: &str = "wh_admin";
const ADMIN_PASSWORD: &str = "wh-admin-password-ha-71d2";
const DATABASE: &str = "analytics";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The policy: step `load` of workflow `demo` may reach `warehouse` (a
/// database on PostgreSQL at `port`) with `select:warehouse/crm/*`.
fn target_policy(port: u16, password_file: &std::path::Path) -> String {
    let target = target_toml("warehouse", port, DATABASE, ADMIN, password_file);
    policy_with(&format!(
        "{LOAD_STEP}{target}connection_limit = 2\npool_size = 2\nobject_grants = true\n"
    ))
}

/// Three-replica harness with the warehouse target prepared; no replica
/// started yet.
async fn cluster() -> HaCluster {
    let cluster = HaCluster::start(HaOptions::default()).await;
    cluster.pg.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    cluster.pg.create_crm_database(DATABASE).await;
    let password_file = cluster.dir.path().join("warehouse-admin.password");
    std::fs::write(&password_file, ADMIN_PASSWORD).unwrap();
    std::fs::write(
        cluster.dir.path().join("policy.toml"),
        target_policy(cluster.pg.port(), &password_file),
    )
    .unwrap();
    cluster
}

/// The harness with replicas `a` and `b` started.
async fn two_replicas() -> (HaCluster, Replica, Replica) {
    let cluster = cluster().await;
    let mut a = cluster.replica("a");
    let mut b = cluster.replica("b");
    cluster.start_replica(&mut a);
    cluster.start_replica(&mut b);
    (cluster, a, b)
}

/// A step token for `load` at `replica`, and its exchange there: the token
/// and the credential.
async fn credential_at(replica: &Replica, job: &str) -> (String, Value) {
    let response = replica
        .post_form(
            stint_proto::TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "load"),
                ("scope", "select:warehouse/crm/accounts"),
                ("audience", "warehouse"),
                ("job", job),
            ],
        )
        .await;
    let minted: Value = response.json().await.unwrap();
    let token = minted["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("mint failed: {minted}"))
        .to_owned();
    let response = replica
        .http
        .post(replica.url(stint_proto::TOKEN_PATH))
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", token.as_str()),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("audience", "warehouse"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let credential: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "the exchange failed: {credential}");
    (token, credential)
}

/// `DELETE /v1/target-credentials/{id}` at `replica` with the step token:
/// 204.
async fn delete_credential(replica: &Replica, id: &str, token: &str) {
    let response = replica
        .http
        .delete(replica.url(&format!("/v1/target-credentials/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{}", response.text().await.unwrap());
}

fn role_of(credential: &Value) -> String {
    credential["postgres"]["user"].as_str().unwrap().to_owned()
}

async fn role_exists(cluster: &HaCluster, role: &str) -> bool {
    cluster.pg.stint_roles().await.iter().any(|r| r == role)
}

/// Every chain's records of `event` for the upstream role `role`.
async fn records(cluster: &HaCluster, event: &str, role: &str) -> Vec<Value> {
    cluster
        .pg
        .audit_lines()
        .await
        .into_iter()
        .filter(|r| r["event"] == event && r["target"]["upstream_id"] == role)
        .collect()
}

async fn wait_role_gone(cluster: &HaCluster, role: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    eventually(timeout, &format!("role {role} to be dropped"), || async {
        (!role_exists(cluster, role).await).then_some(())
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn a_credential_revoked_through_another_replica_is_destroyed_once() {
    let (cluster, a, b) = two_replicas().await;
    let (token, credential) = credential_at(&a, "ha-delete").await;
    let role = role_of(&credential);
    let id = credential["credential_id"].as_str().unwrap();
    assert!(role_exists(&cluster, &role).await);

    // Revoked through B: B takes it over from A and destroys it.
    delete_credential(&b, id, &token).await;
    wait_role_gone(&cluster, &role, Duration::from_secs(20)).await;

    // Then its step token, through A, which still knew the credential: A
    // finds it is no longer its own and leaves it alone.
    assert_eq!(a.revoke_token(&token).await, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let records_of = records(&cluster, "target_credential_revoked", &role).await;
    let outcomes: Vec<&Value> = records_of.iter().map(|r| &r["target"]["outcome"]).collect();
    // The operator's request (queued, at B), then its destruction.
    assert_eq!(
        outcomes,
        ["queued", "revoked"],
        "destroyed once: {records_of:?}"
    );
    let failed = records(&cluster, "target_revocation_failed", &role).await;
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn a_killed_replicas_credentials_are_taken_over_and_destroyed_once() {
    let cluster = cluster().await;
    let mut a = cluster.replica("a");
    let mut b = cluster.replica("b");
    let mut c = cluster.replica("c");
    cluster.start_replica(&mut a);
    cluster.start_replica(&mut b);
    cluster.start_replica(&mut c);
    let (token, credential) = credential_at(&a, "ha-kill").await;
    let role = role_of(&credential);
    // A second one that nobody revokes: taken over, it stays live.
    let (_, kept) = credential_at(&a, "ha-kept").await;
    let kept_role = role_of(&kept);
    a.kill9();

    // Revoked through B while its owner is gone: in force at once (the
    // token is refused everywhere, through the change feed), destroyed upstream once A's lease has
    // run out and B or C has taken the credential over.
    assert_eq!(b.revoke_token(&token).await, 200);
    eventually(
        Duration::from_secs(2),
        "the revocation in force at C",
        || async { (!c.active(&token).await).then_some(()) },
    )
    .await;
    let took = wait_role_gone(&cluster, &role, Duration::from_secs(90)).await;
    eprintln!("the killed replica's revoked credential was destroyed after {took:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let revoked: Vec<Value> = records(&cluster, "target_credential_revoked", &role)
        .await
        .into_iter()
        .filter(|r| r["target"]["outcome"] == "revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "destroyed once: {revoked:?}");
    assert!(
        role_exists(&cluster, &kept_role).await,
        "a live credential taken over is left live"
    );
    let owners: Vec<String> = cluster
        .pg
        .superuser_client_in("stint")
        .await
        .query(
            "SELECT coalesce(owner, '') FROM target_credentials WHERE upstream_id = $1",
            &[&kept_role],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(owners.len(), 1);
    let a_chain: Vec<String> = cluster
        .pg
        .superuser_client_in("stint")
        .await
        .query(
            "SELECT DISTINCT chain FROM audit_records WHERE line LIKE $1",
            &[&format!("%\"upstream_id\":\"{kept_role}\"%")],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(a_chain.len(), 1, "minted in one chain: {a_chain:?}");
    assert_ne!(
        owners[0], a_chain[0],
        "owned by a live replica now, not by the killed one"
    );
}

/// A credential another replica has taken over (as a claim or a
/// revocation through it would) and that its first owner still remembers:
/// revoked through the first owner, it is destroyed, not dropped as
/// "no longer mine".
#[tokio::test]
async fn a_credential_taken_over_is_still_revoked_through_its_former_owner() {
    let (cluster, a, _b) = two_replicas().await;
    let (token, credential) = credential_at(&a, "ha-former").await;
    let role = role_of(&credential);
    let id = credential["credential_id"].as_str().unwrap();
    let db = cluster.pg.superuser_client_in("stint").await;
    // B (the lease that is not A's) owns it now.
    let moved = db
        .execute(
            "UPDATE target_credentials SET owner =
               (SELECT id FROM stint_brokers WHERE id <> target_credentials.owner LIMIT 1)
             WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(moved, 1);
    delete_credential(&a, id, &token).await;
    wait_role_gone(&cluster, &role, Duration::from_secs(20)).await;
    let revoked: Vec<Value> = records(&cluster, "target_credential_revoked", &role)
        .await
        .into_iter()
        .filter(|r| r["target"]["outcome"] == "revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
}
