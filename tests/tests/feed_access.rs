//! Who reads what on the revocation feed, and verify-only workloads
//! (issue 12): a resource server follows the revocations of the audiences
//! it serves, a job those of its own workload, an admin all of them; a
//! stream whose client a reload removed is closed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::time::Duration;
use stint_core::secret;
use stint_proto::{
    INTROSPECTION_PATH, REVOCATION_SNAPSHOT_PATH, REVOCATION_STREAM_PATH, RevocationSnapshot,
};
use stint_tests::sse::SseStream;
use stint_tests::{BrokerOptions, TestBroker, policy_with, test_secret};

const WAIT: Duration = Duration::from_secs(10);

fn extra() -> String {
    let builder = secret::hash_hex(&test_secret("builder"));
    let orders = secret::hash_hex(&test_secret("orders-api"));
    let ops = secret::hash_hex(&test_secret("ops"));
    format!(
        r#"
[workloads.builder]
secret_sha256 = "{builder}"
workflows = ["build"]

[workloads.orders-api]
secret_sha256 = "{orders}"
serves = ["orders"]

[workloads.ops]
secret_sha256 = "{ops}"
capabilities = ["admin"]

[workflows.build]
review_by = 2099-01-01

[workflows.build.steps.push]
scopes = ["write:registry/**"]
audiences = ["registry"]
"#
    )
}

fn client(name: &str) -> (String, String) {
    (name.to_owned(), test_secret(name))
}

async fn start() -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        policy: Some(policy_with(&extra())),
        ..BrokerOptions::default()
    })
    .await
}

async fn revoke_job(broker: &TestBroker, as_: &str, job: &str) {
    let (id, secret) = client(as_);
    let response = broker
        .http
        .post(broker.url(&format!("/v1/jobs/{job}/revoke")))
        .basic_auth(id, Some(secret))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn snapshot(broker: &TestBroker, as_: &str) -> RevocationSnapshot {
    let (id, secret) = client(as_);
    broker
        .http
        .get(broker.url(REVOCATION_SNAPSHOT_PATH))
        .basic_auth(id, Some(secret))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn snapshot_jobs(broker: &TestBroker, as_: &str) -> Vec<String> {
    let mut jobs: Vec<String> = snapshot(broker, as_)
        .await
        .revocations
        .iter()
        .filter_map(|r| r.job.clone())
        .collect();
    jobs.sort();
    jobs
}

#[tokio::test]
async fn each_reader_sees_the_revocations_it_has_a_reason_to_know() {
    let broker = start().await;
    revoke_job(&broker, "demo-job", "d-1").await;
    revoke_job(&broker, "builder", "b-1").await;
    revoke_job(&broker, "other-job", "o-1").await;
    // A token revocation (by jti only) reaches everyone.
    let token = broker.mint("read", "read:demo/a", &[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = broker
        .post_form(stint_proto::REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.status(), 200);

    assert_eq!(snapshot_jobs(&broker, "ops").await, ["b-1", "d-1", "o-1"]);
    // demo-job and other-job have steps without audiences: they may mint
    // for "orders". builder mints only for "registry".
    assert_eq!(snapshot_jobs(&broker, "orders-api").await, ["d-1", "o-1"]);
    assert_eq!(snapshot_jobs(&broker, "demo-job").await, ["d-1"]);
    assert_eq!(snapshot_jobs(&broker, "builder").await, ["b-1"]);

    assert!(
        snapshot(&broker, "builder")
            .await
            .revocations
            .iter()
            .any(|r| r.jti.is_some()),
        "token revocations name no workload and reach every reader"
    );

    // The stream filters the same way, backlog and live alike.
    let (id, secret) = client("builder");
    let mut stream = SseStream::new(
        SseStream::open(
            &broker.http,
            &broker.url(REVOCATION_STREAM_PATH),
            (&id, &secret),
            None,
        )
        .await,
    );
    assert_eq!(stream.next_event(WAIT).await.unwrap().event, "ready");
    revoke_job(&broker, "demo-job", "d-2").await;
    revoke_job(&broker, "builder", "b-2").await;
    let event = stream.next_event(WAIT).await.unwrap();
    let event: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(event["job"], "b-2", "d-2 is not builder's to see: {event}");
}

#[tokio::test]
async fn a_verify_only_workload_verifies_and_mints_nothing() {
    let broker = start().await;
    let (id, secret) = client("orders-api");
    let response = broker
        .try_mint_as((&id, &secret), "read", "read:demo/a", &[])
        .await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client");
    let record = broker.audit_records().pop().unwrap();
    assert_eq!(record["reason"], "verify_only");

    // It introspects.
    let token = broker.mint("read", "read:demo/a", &[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer: Value = broker
        .post_form_as((&id, &secret), INTROSPECTION_PATH, &[("token", &token)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["active"], true);
}

#[tokio::test]
async fn a_stream_whose_client_a_reload_removed_is_closed() {
    let broker = start().await;
    let (id, secret) = client("orders-api");
    let mut removed = SseStream::new(
        SseStream::open(
            &broker.http,
            &broker.url(REVOCATION_STREAM_PATH),
            (&id, &secret),
            None,
        )
        .await,
    );
    let mut kept = SseStream::new(
        SseStream::open(
            &broker.http,
            &broker.url(REVOCATION_STREAM_PATH),
            (&broker.client_id, &broker.client_secret),
            None,
        )
        .await,
    );
    assert_eq!(removed.next_event(WAIT).await.unwrap().event, "ready");
    assert_eq!(kept.next_event(WAIT).await.unwrap().event, "ready");

    // The same policy without orders-api.
    let without = policy_with(&extra()).replace("[workloads.orders-api]", "[workloads.gone]");
    let without = without.replacen(
        &format!(
            "secret_sha256 = \"{}\"\nserves",
            secret::hash_hex(&test_secret("orders-api"))
        ),
        &format!(
            "secret_sha256 = \"{}\"\nserves",
            secret::hash_hex("another secret")
        ),
        1,
    );
    std::fs::write(broker.policy_path.as_ref().unwrap(), without).unwrap();
    broker.server().reload_policy().await.unwrap();

    assert_eq!(removed.next_event(WAIT).await, None, "closed at the reload");
    // A client the reload kept goes on receiving.
    revoke_job(&broker, "demo-job", "k-1").await;
    let event = kept.next_event(WAIT).await.unwrap();
    assert_eq!(event.event, "revocation");
    // And the removed one cannot come back.
    let response = SseStream::open(
        &broker.http,
        &broker.url(REVOCATION_STREAM_PATH),
        (&id, &secret),
        None,
    )
    .await;
    assert_eq!(response.status(), 401);
}

/// A reader that names the audience it verifies (the SDK's verifier does)
/// is refused unless it hears of every revocation that can touch a token
/// for it: it then falls back to the status lists instead of missing
/// revocations without knowing.
#[tokio::test]
async fn a_reader_naming_its_audience_must_hear_every_revocation_for_it() {
    let broker = start().await;
    let status = |path: String, who: &'static str| {
        let broker = &broker;
        async move {
            let (id, secret) = client(who);
            broker
                .http
                .get(broker.url(&path))
                .basic_auth(id, Some(secret))
                .header("accept", "text/event-stream")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for path in [REVOCATION_SNAPSHOT_PATH, REVOCATION_STREAM_PATH] {
        let with = |aud: &str| format!("{path}?audience={aud}");
        assert_eq!(status(with("orders"), "orders-api").await, 200, "{path}");
        assert_eq!(status(with("registry"), "orders-api").await, 403, "{path}");
        // demo-job and other-job may mint for any audience: builder, which
        // sees only itself, does not cover its own audience either.
        assert_eq!(status(with("registry"), "builder").await, 403, "{path}");
        assert_eq!(status(with("registry"), "ops").await, 200, "{path}");
        assert_eq!(status(path.to_owned(), "builder").await, 200, "{path}");
        assert_eq!(
            status(format!("{path}?other=1"), "ops").await,
            400,
            "{path}"
        );
        assert_eq!(
            status(format!("{path}?audience=a&audience=a"), "ops").await,
            400,
            "{path}"
        );
    }
}
