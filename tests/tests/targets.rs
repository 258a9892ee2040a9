//! Target credentials end to end: the in-process broker and a real
//! PostgreSQL 15 cluster. A step token is exchanged for a login role; the
//! login works exactly as far as its scopes; every way its token ends
//! (revocation by token, job, step, workload stop, expiry) destroys the
//! role, also when PostgreSQL is down for a while or the broker restarts;
//! refusals leave nothing upstream.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::time::{Duration, Instant};
use stint_core::secret;
use stint_tests::postgres::{LOAD_STEP, PgCluster, sqlstate, target_toml};
use stint_tests::{BrokerOptions, TestBroker, eventually, policy_with};

const ADMIN: &str = "wh_admin";
const ADMIN_PASSWORD: &str = "wh-admin-password-3b8c";
const DATABASE: &str = "analytics";
const OPERATOR_KEY: &str = "stint_operator_olga";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A cluster with the admin and a database with schema `crm`: `accounts`
/// (granted by the step's scopes) and `secrets` (never granted).
struct Fixture {
    cluster: PgCluster,
    broker: TestBroker,
    /// Holds the admin password file.
    _secrets: tempfile::TempDir,
}

async fn prepare_database(cluster: &PgCluster, superuser_admin: bool) {
    cluster
        .create_admin(ADMIN, ADMIN_PASSWORD, superuser_admin)
        .await;
    let owner = cluster.create_crm_database(DATABASE).await;
    if !superuser_admin {
        for statement in stint_tests::postgres::admin_grants(
            ADMIN,
            DATABASE,
            "crm",
            &["accounts", "secrets"],
            "SELECT",
        ) {
            owner.batch_execute(&statement).await.unwrap();
        }
    }
}

/// The policy: step `load` of workflow `demo` may reach `warehouse` with
/// `select:warehouse/crm/*`; `archive` is declared (same server) but no
/// step lists it; the operator olga may stop workloads.
fn target_policy(port: u16, password_file: &std::path::Path) -> String {
    let target = |name: &str| {
        format!(
            "{}connection_limit = 2\npool_size = 2\nobject_grants = true\n",
            target_toml(name, port, DATABASE, ADMIN, password_file)
        )
    };
    policy_with(&format!(
        r#"{LOAD_STEP}
[operators.olga]
groups = ["oncall"]
key_sha256 = "{}"
{}{}"#,
        secret::hash_hex(OPERATOR_KEY),
        target("warehouse"),
        target("archive"),
    ))
}

async fn fixture_with(superuser_admin: bool) -> Fixture {
    let cluster = PgCluster::start();
    prepare_database(&cluster, superuser_admin).await;
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("warehouse-admin.password");
    std::fs::write(&password_file, ADMIN_PASSWORD).unwrap();
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(target_policy(cluster.port(), &password_file)),
        ..BrokerOptions::default()
    })
    .await;
    Fixture {
        cluster,
        broker,
        _secrets: secrets,
    }
}

async fn fixture() -> Fixture {
    fixture_with(true).await
}

/// A step token for `load` with `scope`, in job `job`, for the target
/// `warehouse` (its audience).
async fn step_token(broker: &TestBroker, job: &str, scope: &str) -> String {
    step_token_for(broker, job, scope, "warehouse").await
}

async fn step_token_for(broker: &TestBroker, job: &str, scope: &str, audience: &str) -> String {
    let response = broker
        .post_form(
            stint_proto::TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "load"),
                ("scope", scope),
                ("audience", audience),
                ("job", job),
            ],
        )
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "mint failed: {body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The exchange, as a job without client credentials sends it.
async fn exchange_with(broker: &TestBroker, form: &[(&str, &str)]) -> (u16, Value) {
    let response = broker
        .http
        .post(broker.url(stint_proto::TOKEN_PATH))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn try_exchange(broker: &TestBroker, token: &str, target: &str) -> (u16, Value) {
    exchange_with(
        broker,
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("audience", target),
        ],
    )
    .await
}

async fn exchange(broker: &TestBroker, token: &str) -> Value {
    let (status, body) = try_exchange(broker, token, "warehouse").await;
    assert_eq!(status, 200, "the exchange failed: {body}");
    body
}

/// Revoke a step token as its workload (RFC 7009).
async fn revoke_token(broker: &TestBroker, token: &str) {
    let response = broker
        .post_form(stint_proto::REVOCATION_PATH, &[("token", token)])
        .await;
    assert_eq!(response.status(), 200);
}

async fn role_exists(cluster: &PgCluster, role: &str) -> bool {
    cluster.stint_roles().await.iter().any(|r| r == role)
}

async fn wait_role_gone(cluster: &PgCluster, role: &str, timeout: Duration) {
    eventually(timeout, &format!("role {role} to be dropped"), || async {
        (!role_exists(cluster, role).await).then_some(())
    })
    .await;
}

/// The audit record of `event` for credential `id`, once it exists.
async fn wait_record(broker: &TestBroker, event: &str, upstream_id: &str) -> Value {
    eventually(
        Duration::from_secs(20),
        &format!("a {event} record for {upstream_id}"),
        || async {
            broker
                .audit_records()
                .into_iter()
                .find(|r| r["event"] == event && r["target"]["upstream_id"] == upstream_id)
        },
    )
    .await
}

fn login_of(credential: &Value) -> (String, String) {
    (
        credential["postgres"]["user"].as_str().unwrap().to_owned(),
        credential["access_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_exchanged_login_reads_what_its_scopes_name_and_nothing_else() {
    let f = fixture().await;
    let token = step_token(&f.broker, "happy-1", "select:warehouse/crm/accounts").await;
    let credential = exchange(&f.broker, &token).await;
    assert_eq!(credential["token_type"], "N_A");
    assert_eq!(credential["target"], "warehouse");
    assert_eq!(credential["kind"], "postgres");
    assert_eq!(credential["scope"], "select:warehouse/crm/accounts");
    assert_eq!(credential["postgres"]["database"], DATABASE);
    assert_eq!(credential["postgres"]["port"], f.cluster.port());
    assert_eq!(credential["postgres"]["sslmode"], "disable");
    let (role, password) = login_of(&credential);
    assert!(role.starts_with("stint_") && role.len() == 30, "{role}");
    assert!(
        role[6..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
        "{role}"
    );

    let (session, _ended) = f
        .cluster
        .connect_as(&role, &password, DATABASE)
        .await
        .expect("the login signs in with the exchanged password");
    let row = session
        .query_one("SELECT name FROM crm.accounts WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "acme");
    let refused = session
        .query_one("SELECT value FROM crm.secrets", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501");
    let refused = session
        .execute("INSERT INTO crm.accounts VALUES (2, 'x')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501");

    let records = f.broker.audit_records();
    let minted = records
        .iter()
        .find(|r| r["event"] == "target_credential_minted")
        .expect("the mint is audited");
    assert_eq!(minted["target"]["upstream_id"], role.as_str());
    assert_eq!(minted["target"]["name"], "warehouse");
    assert_eq!(minted["target"]["kind"], "postgres");
    assert_eq!(minted["target"]["outcome"], "created");
    assert_eq!(
        minted["target"]["credential_id"],
        credential["credential_id"]
    );
    let audit = std::fs::read_to_string(f.broker.audit_path()).unwrap();
    assert!(
        !audit.contains(&password),
        "the password is in the audit log"
    );
}

#[tokio::test]
async fn revoking_the_step_token_cuts_the_open_session_and_drops_the_role() {
    let f = fixture().await;
    let token = step_token(&f.broker, "cut-1", "select:warehouse/crm/accounts").await;
    let (role, password) = login_of(&exchange(&f.broker, &token).await);
    let (session, ended) = f
        .cluster
        .connect_as(&role, &password, DATABASE)
        .await
        .unwrap();
    session.simple_query("SELECT 1").await.unwrap();

    revoke_token(&f.broker, &token).await;
    let ended = tokio::time::timeout(Duration::from_secs(20), ended)
        .await
        .expect("the open session is terminated")
        .unwrap();
    assert_eq!(sqlstate(&ended.unwrap_err()), "57P01");
    assert!(session.simple_query("SELECT 1").await.is_err());
    wait_role_gone(&f.cluster, &role, Duration::from_secs(20)).await;
    let refused = f.cluster.connect_as(&role, &password, DATABASE).await;
    assert!(refused.is_err(), "a new login is refused");

    let revoked = wait_record(&f.broker, "target_credential_revoked", &role).await;
    assert_eq!(revoked["target"]["trigger"], "token", "{revoked}");
    assert_eq!(revoked["target"]["outcome"], "revoked", "{revoked}");
    assert!(
        revoked["target"]["terminated"].as_u64().unwrap() >= 1,
        "{revoked}"
    );
}

/// Operator calls (workload stop).
async fn operator_post(broker: &TestBroker, path: &str) -> u16 {
    broker
        .http
        .post(broker.url(path))
        .bearer_auth(OPERATOR_KEY)
        .json(&serde_json::json!({ "comment": "test" }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn revoking_the_job_the_step_or_stopping_the_workload_drops_the_role() {
    let f = fixture().await;
    let broker = &f.broker;
    let scope = "select:warehouse/crm/accounts";

    // By job.
    let token = step_token(broker, "job-a", scope).await;
    let (by_job, _) = login_of(&exchange(broker, &token).await);
    let response = broker.post_form("/v1/jobs/job-a/revoke", &[]).await;
    assert_eq!(response.status(), 200);
    wait_role_gone(&f.cluster, &by_job, Duration::from_secs(20)).await;
    let record = wait_record(broker, "target_credential_revoked", &by_job).await;
    assert_eq!(record["target"]["trigger"], "job", "{record}");

    // By step.
    let token = step_token(broker, "job-b", scope).await;
    let (by_step, _) = login_of(&exchange(broker, &token).await);
    let response = broker
        .post_form("/v1/jobs/job-b/steps/load/revoke", &[])
        .await;
    assert_eq!(response.status(), 200);
    wait_role_gone(&f.cluster, &by_step, Duration::from_secs(20)).await;
    let record = wait_record(broker, "target_credential_revoked", &by_step).await;
    assert_eq!(record["target"]["trigger"], "step", "{record}");

    // By workload stop.
    let token = step_token(broker, "job-c", scope).await;
    let (by_stop, _) = login_of(&exchange(broker, &token).await);
    assert_eq!(
        operator_post(broker, "/v1/workloads/demo-job/stop").await,
        200
    );
    wait_role_gone(&f.cluster, &by_stop, Duration::from_secs(20)).await;
    let record = wait_record(broker, "target_credential_revoked", &by_stop).await;
    assert_eq!(record["target"]["trigger"], "workload", "{record}");
    assert!(f.cluster.stint_roles().await.is_empty());
}

#[tokio::test]
async fn the_role_is_dropped_when_its_step_token_expires() {
    let f = fixture().await;
    let token = step_token(&f.broker, "exp-1", "select:warehouse/crm/accounts").await;
    let credential = exchange(&f.broker, &token).await;
    let (role, password) = login_of(&credential);
    let (session, ended) = f
        .cluster
        .connect_as(&role, &password, DATABASE)
        .await
        .unwrap();
    session.simple_query("SELECT 1").await.unwrap();
    let exp = stint_tests::decode_jwt(&token).1["exp"].as_i64().unwrap();
    assert_eq!(credential["postgres"]["expires_at"], exp);

    f.broker
        .clock
        .advance(chrono::TimeDelta::seconds(exp - f.broker.clock_now() + 1));
    wait_role_gone(&f.cluster, &role, Duration::from_secs(20)).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the open session is cut at expiry")
        .unwrap();
    assert_eq!(sqlstate(&ended.unwrap_err()), "57P01");
    let record = wait_record(&f.broker, "target_credential_revoked", &role).await;
    assert_eq!(record["target"]["trigger"], "expired", "{record}");
    assert_eq!(record["target"]["outcome"], "revoked", "{record}");
}

trait ClockNow {
    fn clock_now(&self) -> i64;
}

impl ClockNow for TestBroker {
    fn clock_now(&self) -> i64 {
        use stint_core::Clock as _;
        self.clock.now().timestamp()
    }
}

/// The denied records so far.
fn denied(broker: &TestBroker) -> Vec<Value> {
    broker
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "target_credential_denied")
        .collect()
}

/// Expect a refusal with `error`, a new denied record with `reason`, and
/// no role made.
async fn expect_refused(
    f: &Fixture,
    form: &[(&str, &str)],
    status: u16,
    error: &str,
    reason: &str,
) {
    let before = denied(&f.broker).len();
    let (got, body) = exchange_with(&f.broker, form).await;
    assert_eq!(got, status, "{form:?}: {body}");
    assert_eq!(body["error"], error, "{form:?}: {body}");
    let records = denied(&f.broker);
    assert_eq!(records.len(), before + 1, "{form:?}: one denied record");
    let record = records.last().unwrap();
    assert_eq!(record["reason"], reason, "{form:?}: {record}");
    assert!(
        f.cluster.stint_roles().await.is_empty(),
        "{form:?}: a role was made"
    );
}

fn exchange_form<'a>(token: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
    ];
    form.extend_from_slice(extra);
    form
}

#[tokio::test]
async fn bad_exchanges_are_refused_audited_and_make_nothing_upstream() {
    let f = fixture().await;
    let broker = &f.broker;
    let token = step_token(broker, "bad-1", "select:warehouse/crm/accounts").await;
    let roles_before = f.cluster.stint_roles().await;
    assert!(roles_before.is_empty());

    expect_refused(
        &f,
        &exchange_form(&token, &[("audience", "nowhere")]),
        400,
        "invalid_target",
        "unknown_target",
    )
    .await;
    // A step token minted for another audience (an API it was sent to):
    // whoever holds it there cannot turn it into a login.
    let for_an_api = step_token_for(
        &f.broker,
        "bad-api",
        "select:warehouse/crm/accounts",
        "demo-api",
    )
    .await;
    expect_refused(
        &f,
        &exchange_form(&for_an_api, &[("audience", "warehouse")]),
        400,
        "invalid_target",
        "target_not_allowed",
    )
    .await;
    let record = denied(&f.broker).pop().unwrap();
    assert!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not target warehouse")),
        "{record}"
    );
    // Declared, on the same server, but the step does not list it (the
    // policy loader refuses a step scope naming an unlisted target, so the
    // token cannot carry one either).
    expect_refused(
        &f,
        &exchange_form(&token, &[("audience", "archive")]),
        400,
        "invalid_target",
        "target_not_allowed",
    )
    .await;
    expect_refused(
        &f,
        &exchange_form(
            &token,
            &[
                ("audience", "warehouse"),
                ("scope", "select:warehouse/crm/secrets"),
            ],
        ),
        400,
        "invalid_scope",
        "scope_not_allowed",
    )
    .await;
    for name in ["Ware;house", "\"; drop role x", "warehouse\""] {
        expect_refused(
            &f,
            &exchange_form(&token, &[("audience", name)]),
            400,
            "invalid_target",
            "malformed_audience",
        )
        .await;
    }
    expect_refused(
        &f,
        &exchange_form(&token, &[("resource", "urn:stint:target:wh;x")]),
        400,
        "invalid_target",
        "malformed_audience",
    )
    .await;
    for form in [
        exchange_form(&token, &[]),
        exchange_form(&token, &[("audience", "")]),
    ] {
        expect_refused(&f, &form, 400, "invalid_target", "missing_audience").await;
    }
    expect_refused(
        &f,
        &exchange_form(&token, &[("resource", "https://warehouse")]),
        400,
        "invalid_target",
        "malformed_audience",
    )
    .await;
    // A quote in an identifier: the pattern select:warehouse/crm/* would
    // match it, but the scope alphabet refuses it at the token's mint, and
    // as the exchange's scope parameter.
    let response = broker
        .try_mint("load", "select:warehouse/crm/a\"b", &[("job", "bad-3")])
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_scope", "{body}");
    expect_refused(
        &f,
        &exchange_form(
            &token,
            &[
                ("audience", "warehouse"),
                ("scope", "select:warehouse/crm/a\"b"),
            ],
        ),
        400,
        "invalid_scope",
        "malformed_scope",
    )
    .await;

    // The token still exchanges once, and only once.
    let credential = exchange(broker, &token).await;
    let (role, _) = login_of(&credential);
    let before = denied(broker).len();
    let (status, body) = try_exchange(broker, &token, "warehouse").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let records = denied(broker);
    assert_eq!(records.len(), before + 1);
    assert_eq!(records.last().unwrap()["reason"], "already_exchanged");
    assert_eq!(f.cluster.stint_roles().await, vec![role.clone()]);

    // Revoked, then expired, step tokens.
    revoke_token(broker, &token).await;
    wait_role_gone(&f.cluster, &role, Duration::from_secs(20)).await;
    let revoked = step_token(broker, "bad-4", "select:warehouse/crm/accounts").await;
    revoke_token(broker, &revoked).await;
    expect_refused(
        &f,
        &exchange_form(&revoked, &[("audience", "warehouse")]),
        400,
        "invalid_grant",
        "inactive_subject_token",
    )
    .await;
    let expiring = step_token(broker, "bad-5", "select:warehouse/crm/accounts").await;
    f.broker.clock.advance(chrono::TimeDelta::minutes(16));
    expect_refused(
        &f,
        &exchange_form(&expiring, &[("audience", "warehouse")]),
        400,
        "invalid_grant",
        "inactive_subject_token",
    )
    .await;
    // Nothing of this reached SQL: the server's log has no statement with
    // the injected text.
    assert!(!f.cluster.log().contains("drop role x"));
}

#[tokio::test]
async fn postgres_down_at_mint_is_a_prompt_503_and_leaves_nothing_behind() {
    let mut f = fixture().await;
    f.cluster.stop();
    let token = step_token(&f.broker, "down-1", "select:warehouse/crm/accounts").await;
    let started = Instant::now();
    let (status, body) = try_exchange(&f.broker, &token, "warehouse").await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    let record = denied(&f.broker).pop().unwrap();
    assert_eq!(record["reason"], "target_unavailable", "{record}");
    // Stint's own tokens are not held up.
    let started = Instant::now();
    step_token(&f.broker, "down-2", "select:warehouse/crm/accounts").await;
    assert!(started.elapsed() < Duration::from_secs(5));

    f.cluster.start_again();
    // The record made before the call is destroyed through the queue
    // (retried on the broker's clock, which the test moves).
    let closed = eventually(
        Duration::from_secs(60),
        "the failed mint's record to be closed",
        || async {
            f.broker.clock.advance(chrono::TimeDelta::seconds(1));
            f.broker.audit_records().into_iter().find(|r| {
                r["event"] == "target_credential_revoked"
                    && r["target"]["trigger"] == "failed_mint"
                    && r["target"]["outcome"] != "queued"
            })
        },
    )
    .await;
    assert_eq!(closed["target"]["outcome"], "already_gone", "{closed}");
    assert!(f.cluster.stint_roles().await.is_empty());
}

#[tokio::test]
async fn postgres_down_at_revoke_is_retried_until_the_role_is_gone() {
    let mut f = fixture().await;
    let token = step_token(&f.broker, "rdown-1", "select:warehouse/crm/accounts").await;
    let (role, _) = login_of(&exchange(&f.broker, &token).await);
    f.cluster.stop();
    revoke_token(&f.broker, &token).await;
    let failed = wait_record(&f.broker, "target_revocation_failed", &role).await;
    assert_eq!(failed["target"]["outcome"], "failed", "{failed}");
    assert_eq!(failed["target"]["trigger"], "token", "{failed}");

    f.cluster.start_again();
    // The backoff runs on the broker's clock: move it a second a poll.
    let revoked = eventually(
        Duration::from_secs(60),
        "the revocation to be completed",
        || async {
            f.broker.clock.advance(chrono::TimeDelta::seconds(1));
            f.broker.audit_records().into_iter().find(|r| {
                r["event"] == "target_credential_revoked" && r["target"]["upstream_id"] == role
            })
        },
    )
    .await;
    assert_eq!(revoked["target"]["outcome"], "revoked", "{revoked}");
    assert!(!role_exists(&f.cluster, &role).await);
}

#[tokio::test]
async fn a_restarted_broker_still_revokes_and_reconciles_roles_it_does_not_know() {
    let mut f = fixture().await;
    let token = step_token(&f.broker, "rs-1", "select:warehouse/crm/accounts").await;
    let (role, password) = login_of(&exchange(&f.broker, &token).await);

    // A role this broker made (its mark) but no record knows.
    let orphan = "stint_abcdefghijklmnopqrstuv23";
    let marker = format!("{} {}", stint_tests::postgres::MARKER, f.broker.issuer());
    let superuser = f.cluster.superuser_client().await;
    superuser
        .batch_execute(&format!(
            "CREATE ROLE \"{orphan}\" LOGIN; COMMENT ON ROLE \"{orphan}\" IS '{marker}'"
        ))
        .await
        .unwrap();
    // And one with the mark of another broker: not ours, left alone.
    let foreign = "stint_zzzzzzzzzzzzzzzzzzzzzzzz";
    superuser
        .batch_execute(&format!(
            "CREATE ROLE \"{foreign}\" LOGIN; COMMENT ON ROLE \"{foreign}\" IS '{} https://other.example'",
            stint_tests::postgres::MARKER
        ))
        .await
        .unwrap();

    f.broker.restart().await;
    wait_role_gone(&f.cluster, orphan, Duration::from_secs(20)).await;
    let reconciled = wait_record(&f.broker, "target_credential_reconciled", orphan).await;
    assert_eq!(
        reconciled["target"]["trigger"], "reconciler",
        "{reconciled}"
    );
    assert_eq!(reconciled["target"]["outcome"], "revoked", "{reconciled}");

    // The live credential was loaded from the store: it still works...
    let (session, _) = f
        .cluster
        .connect_as(&role, &password, DATABASE)
        .await
        .expect("the credential survives the broker's restart");
    session
        .query_one("SELECT name FROM crm.accounts", &[])
        .await
        .unwrap();
    drop(session);
    // ...and is still revoked with its token.
    revoke_token(&f.broker, &token).await;
    wait_role_gone(&f.cluster, &role, Duration::from_secs(20)).await;
    assert_eq!(f.cluster.stint_roles().await, vec![foreign.to_owned()]);
}

#[tokio::test]
async fn a_non_superuser_admin_mints_and_revokes() {
    let f = fixture_with(false).await;
    let token = step_token(&f.broker, "least-1", "select:warehouse/crm/accounts").await;
    let (role, password) = login_of(&exchange(&f.broker, &token).await);
    let (session, ended) = f
        .cluster
        .connect_as(&role, &password, DATABASE)
        .await
        .unwrap();
    let row = session
        .query_one("SELECT name FROM crm.accounts", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "acme");
    let refused = session
        .query_one("SELECT value FROM crm.secrets", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501");
    revoke_token(&f.broker, &token).await;
    let ended = tokio::time::timeout(Duration::from_secs(20), ended)
        .await
        .expect("the session is cut")
        .unwrap();
    assert_eq!(sqlstate(&ended.unwrap_err()), "57P01");
    wait_role_gone(&f.cluster, &role, Duration::from_secs(20)).await;
    let record = wait_record(&f.broker, "target_credential_revoked", &role).await;
    assert_eq!(record["target"]["outcome"], "revoked", "{record}");
}

async fn accounts_acl(cluster: &PgCluster) -> Option<String> {
    cluster
        .superuser_client_in(DATABASE)
        .await
        .query_one(
            "SELECT relacl::text FROM pg_class WHERE oid = 'crm.accounts'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// How many cycles the churn test runs (`STINT_TARGET_CYCLES`, default
/// 1000).
fn cycles() -> usize {
    std::env::var("STINT_TARGET_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[tokio::test]
async fn many_mint_and_revoke_cycles_leave_no_role_and_the_acl_unchanged() {
    let f = fixture().await;
    // A table never granted has a NULL ACL (the owner's defaults); the first
    // GRANT writes those defaults out. Write them out first (the owner
    // granting itself what it has), so that the texts compare.
    f.cluster
        .superuser_client_in(DATABASE)
        .await
        .batch_execute("GRANT ALL ON crm.accounts TO postgres")
        .await
        .unwrap();
    let acl_before = accounts_acl(&f.cluster).await;
    assert_eq!(acl_before.as_deref(), Some("{postgres=arwdDxt/postgres}"));
    let cycles = cycles();
    let started = Instant::now();
    // Paced under the client's rate limit (a mint and an exchange per
    // cycle count against its 100 requests a second).
    let mut pace = tokio::time::interval(Duration::from_millis(25));
    for n in 0..cycles {
        pace.tick().await;
        let token = step_token(
            &f.broker,
            &format!("churn-{n}"),
            "select:warehouse/crm/accounts",
        )
        .await;
        let credential = exchange(&f.broker, &token).await;
        let id = credential["credential_id"].as_str().unwrap();
        if n % 2 == 0 {
            let response = f
                .broker
                .http
                .delete(f.broker.url(&format!("/v1/target-credentials/{id}")))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 204);
        } else {
            revoke_token(&f.broker, &token).await;
        }
        // No waiting for the role to go: the next mint's GRANT on the
        // table overlaps this login's DROP OWNED on it, as in production.
    }
    let mint_time = started.elapsed();
    eventually(
        Duration::from_secs(120),
        "every role of the churn to be dropped",
        || async { f.cluster.stint_roles().await.is_empty().then_some(()) },
    )
    .await;
    eprintln!(
        "{cycles} cycles: minted and revoked in {mint_time:?}, all dropped after {:?}",
        started.elapsed()
    );
    assert_eq!(accounts_acl(&f.cluster).await, acl_before);
    let records = f.broker.audit_records();
    let revoked = records
        .iter()
        .filter(|r| {
            r["event"] == "target_credential_revoked" && r["target"]["outcome"] == "revoked"
        })
        .count();
    assert_eq!(revoked, cycles);
}

/// Exchanges at once on one table: each GRANT rewrites the table's ACL, and
/// PostgreSQL refuses the second of two concurrent rewrites ("tuple
/// concurrently updated") unless they are serialized, as Stint's catalog
/// lock does. Every exchange must succeed, and every login work.
#[tokio::test]
async fn concurrent_exchanges_on_one_table_all_succeed() {
    let f = fixture().await;
    let mut tokens = Vec::new();
    for n in 0..12 {
        tokens.push(
            step_token(
                &f.broker,
                &format!("together-{n}"),
                "select:warehouse/crm/accounts",
            )
            .await,
        );
    }
    let exchanges = tokens
        .iter()
        .map(|token| try_exchange(&f.broker, token, "warehouse"));
    let answers = futures_util::future::join_all(exchanges).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "a concurrent exchange failed: {body}");
    }
    for (_, credential) in &answers {
        let (user, password) = login_of(credential);
        let (client, _connection) = f
            .cluster
            .connect_as(&user, &password, DATABASE)
            .await
            .unwrap();
        let rows = client
            .query("SELECT name FROM crm.accounts", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }
    // And revoked at once, while new ones are made.
    let more: Vec<String> = {
        let mut more = Vec::new();
        for n in 0..6 {
            more.push(
                step_token(
                    &f.broker,
                    &format!("after-{n}"),
                    "select:warehouse/crm/accounts",
                )
                .await,
            );
        }
        more
    };
    let revocations = tokens.iter().map(|token| revoke_token(&f.broker, token));
    let (_, fresh) = tokio::join!(
        futures_util::future::join_all(revocations),
        futures_util::future::join_all(more.iter().map(|token| try_exchange(
            &f.broker,
            token,
            "warehouse"
        )))
    );
    for (status, body) in &fresh {
        assert_eq!(
            *status, 200,
            "an exchange during revocations failed: {body}"
        );
    }
    for (_, credential) in &answers {
        wait_role_gone(
            &f.cluster,
            credential["postgres"]["user"].as_str().unwrap(),
            Duration::from_secs(30),
        )
        .await;
    }
    for token in &more {
        revoke_token(&f.broker, token).await;
    }
    eventually(
        Duration::from_secs(30),
        "every login to be dropped",
        || async { f.cluster.stint_roles().await.is_empty().then_some(()) },
    )
    .await;
    // Each at its first attempt: destructions and mints do not trip over
    // each other.
    let failed: Vec<Value> = f
        .broker
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "target_revocation_failed")
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

/// A credential that cannot be destroyed (someone else granted its role a
/// privilege, which a non-superuser admin's DROP OWNED does not revoke, so
/// DROP ROLE fails every time) is retried with backoff, then marked
/// irrevocable: audited, counted with its age. Once the stray grant is
/// gone, the reconciler destroys it at the next start and closes its
/// record.
#[tokio::test]
async fn a_credential_that_cannot_be_destroyed_becomes_irrevocable_then_is_reconciled() {
    let mut f = fixture_with(false).await;
    let token = step_token(&f.broker, "stuck-1", "select:warehouse/crm/accounts").await;
    let (role, _) = login_of(&exchange(&f.broker, &token).await);
    let owner = f.cluster.superuser_client_in(DATABASE).await;
    owner
        .batch_execute(&format!("GRANT SELECT ON crm.secrets TO \"{role}\""))
        .await
        .unwrap();
    revoke_token(&f.broker, &token).await;
    // Every attempt fails; the backoff runs on the broker's clock, moved
    // past the longest delay at each poll.
    let irrevocable = eventually(
        Duration::from_secs(120),
        "the credential to be given up on",
        || async {
            f.broker.clock.advance(chrono::TimeDelta::seconds(301));
            f.broker.audit_records().into_iter().find(|r| {
                r["event"] == "target_credential_irrevocable" && r["target"]["upstream_id"] == role
            })
        },
    )
    .await;
    assert_eq!(irrevocable["decision"], "deny", "{irrevocable}");
    assert_eq!(irrevocable["target"]["attempts"], 20, "{irrevocable}");
    assert_eq!(irrevocable["target"]["trigger"], "token", "{irrevocable}");
    assert!(
        irrevocable["detail"]
            .as_str()
            .is_some_and(|d| d.contains("2BP01")),
        "{irrevocable}"
    );
    let failures = f
        .broker
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "target_revocation_failed" && r["target"]["upstream_id"] == role)
        .count();
    assert_eq!(failures, 19);
    // It cannot log in any more (NOLOGIN was committed first).
    assert!(role_exists(&f.cluster, &role).await);
    let login: bool = owner
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!login);
    let metrics = eventually(Duration::from_secs(10), "the census", || async {
        let metrics = f.broker.metrics().await;
        metrics
            .contains("stint_target_credentials_open{state=\"irrevocable\"} 1")
            .then_some(metrics)
    })
    .await;
    let age: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stint_target_credential_irrevocable_oldest_age_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age >= 19.0 * 300.0, "age {age}");
    assert!(metrics.contains("stint_target_credentials_total{event=\"irrevocable\"} 1"));

    // Someone removes the stray grant; the reconciler (at start) finishes.
    owner
        .batch_execute(&format!("REVOKE SELECT ON crm.secrets FROM \"{role}\""))
        .await
        .unwrap();
    f.broker.restart().await;
    wait_role_gone(&f.cluster, &role, Duration::from_secs(20)).await;
    wait_record(&f.broker, "target_credential_reconciled", &role).await;
    let metrics = eventually(Duration::from_secs(10), "the census", || async {
        let metrics = f.broker.metrics().await;
        metrics
            .contains("stint_target_credentials_open{state=\"irrevocable\"} 0")
            .then_some(metrics)
    })
    .await;
    assert!(metrics.contains("stint_target_credential_irrevocable_oldest_age_seconds 0"));
}

/// A broker stopped between making a login and answering leaves its record
/// `minting` (it is stored before the upstream call): the next start
/// destroys the login, whose secret nobody received.
#[tokio::test]
async fn a_mint_interrupted_before_its_answer_is_destroyed_at_the_next_start() {
    let mut f = fixture().await;
    let token = step_token(&f.broker, "cut-1", "select:warehouse/crm/accounts").await;
    let (role, _) = login_of(&exchange(&f.broker, &token).await);
    let store = f.broker.data_dir().join("stint.db");
    f.broker
        .restart_after(|| {
            // What the store holds when the broker dies after the upstream
            // call and before it records the credential live.
            let db = rusqlite::Connection::open(&store).unwrap();
            let changed = db
                .execute(
                    "UPDATE target_credentials SET state = 'minting' WHERE upstream_id = ?1",
                    [&role],
                )
                .unwrap();
            assert_eq!(changed, 1);
        })
        .await;
    wait_role_gone(&f.cluster, &role, Duration::from_secs(20)).await;
    let revoked = wait_record(&f.broker, "target_credential_revoked", &role).await;
    assert_eq!(
        revoked["target"]["trigger"], "interrupted_mint",
        "{revoked}"
    );
}

/// A login that can create objects (here PostgreSQL 14's default: PUBLIC
/// may CREATE in `public`) must not leave behind a view or a SECURITY
/// DEFINER function that outlives it with someone else's rights: its
/// destruction drops what it owns (found by a security review, where the
/// objects were handed to the admin and then read the admin's tables and
/// ran SQL as the admin for anyone). And no role it let act as itself
/// keeps that power.
#[tokio::test]
async fn what_a_login_made_dies_with_it_and_gives_no_one_its_rights() {
    let f = fixture_with(false).await;
    let owner = f.cluster.superuser_client_in(DATABASE).await;
    owner
        .batch_execute(
            "GRANT CREATE ON SCHEMA public TO PUBLIC;
             CREATE ROLE accomplice LOGIN PASSWORD 'accomplice-pw';",
        )
        .await
        .unwrap();
    let token = step_token(&f.broker, "evil-1", "select:warehouse/crm/accounts").await;
    let (role, password) = login_of(&exchange(&f.broker, &token).await);
    let (session, _session_ended) = f
        .cluster
        .connect_as(&role, &password, DATABASE)
        .await
        .unwrap();
    session
        .batch_execute(
            "CREATE VIEW public.leak AS SELECT name FROM crm.accounts;
             GRANT SELECT ON public.leak TO PUBLIC;
             CREATE FUNCTION public.esc() RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS $$
               BEGIN EXECUTE 'CREATE ROLE pwned LOGIN'; RETURN current_user; END $$;",
        )
        .await
        .unwrap();
    drop(session);
    // A member of the login could SET ROLE to it from its own session,
    // which NOLOGIN does not stop. (PostgreSQL 15.18 no longer lets a role
    // grant membership in itself, so someone else grants it here.)
    owner
        .batch_execute(&format!("GRANT \"{role}\" TO accomplice"))
        .await
        .unwrap();
    revoke_token(&f.broker, &token).await;
    wait_role_gone(&f.cluster, &role, Duration::from_secs(20)).await;

    let left: i64 = owner
        .query_one(
            "SELECT (SELECT count(*) FROM pg_views WHERE viewname = 'leak')
                  + (SELECT count(*) FROM pg_proc WHERE proname = 'esc')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the login's view and function are dropped with it");
    let pwned: i64 = owner
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = 'pwned'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pwned, 0);
    let accomplice_memberships: i64 = owner
        .query_one(
            "SELECT count(*) FROM pg_auth_members a JOIN pg_roles m ON m.oid = a.member WHERE m.rolname = 'accomplice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(accomplice_memberships, 0);
}
