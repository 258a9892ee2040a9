//! The emergency stop: an operator stops a workload, every token it holds is
//! revoked everywhere (introspection, the feed, the status list), it mints
//! nothing, across a restart, until an operator enables it again.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::time::Duration;
use stint_client::{Credentials, Error, Verifier};
use stint_core::secret;
use stint_core::status_list::{INVALID, StatusList, VALID};
use stint_tests::{BrokerOptions, TestBroker, decode_jwt, policy_with, test_secret};

const KEY: &str = "stint_operator_olga";

async fn broker() -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        policy: Some(policy_with(&format!(
            "\n[operators.olga]\ngroups = [\"oncall\"]\nkey_sha256 = \"{}\"\n",
            secret::hash_hex(KEY),
        ))),
        ..BrokerOptions::default()
    })
    .await
}

async fn call(broker: &TestBroker, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = broker
        .http
        .post(broker.url(path))
        .json(&json!({ "comment": "connector compromised" }));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn token(broker: &TestBroker, job: &str) -> String {
    broker.mint("read", "read:demo/a", &[("job", job)]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn status_of(broker: &TestBroker, token: &str) -> u8 {
    let (_, claims) = decode_jwt(token);
    let reference = &claims["status"]["status_list"];
    let list_token = broker
        .http
        .get(reference["uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, list) = decode_jwt(&list_token);
    StatusList::decode(1, list["status_list"]["lst"].as_str().unwrap())
        .unwrap()
        .get(reference["idx"].as_u64().unwrap())
        .unwrap()
}

#[tokio::test]
async fn a_stopped_workload_loses_its_tokens_and_mints_nothing_until_enabled() {
    let mut broker = broker().await;
    let first = token(&broker, "job-1").await;
    let second = token(&broker, "job-2").await;
    let other = broker
        .try_mint_as(
            ("other-job", &test_secret("other-job")),
            "read",
            "read:demo/a",
            &[],
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let verifier = Verifier::builder(broker.issuer())
        .audience("demo-api")
        .revocation_feed(
            // The resource server's own verify-only workload: it hears of
            // every workload that may mint for its audience.
            Credentials::new("demo-api", test_secret("demo-api")),
            Duration::from_secs(30),
        )
        .build()
        .await
        .unwrap();
    verifier.verify(&first).await.unwrap();

    // Only operators.
    assert_eq!(
        call(&broker, "/v1/workloads/demo-job/stop", None).await.0,
        401
    );
    assert_eq!(
        call(&broker, "/v1/workloads/no-such/stop", Some(KEY))
            .await
            .0,
        404
    );
    let (status, body) = call(&broker, "/v1/workloads/demo-job/stop", Some(KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stopped"], true);

    // Revoked everywhere, at once; the other workload untouched.
    for revoked in [&first, &second] {
        assert_eq!(broker.introspect(revoked).await, json!({ "active": false }));
        assert_eq!(status_of(&broker, revoked).await, INVALID);
    }
    assert_eq!(broker.introspect(&other).await["active"], true);
    assert_eq!(status_of(&broker, &other).await, VALID);
    stint_tests::eventually(
        Duration::from_secs(10),
        "the verifier hears of it",
        || async { matches!(verifier.verify(&first).await, Err(Error::Revoked)).then_some(()) },
    )
    .await;
    assert!(matches!(
        verifier.verify(&second).await,
        Err(Error::Revoked)
    ));
    verifier.verify(&other).await.unwrap();

    // No new tokens, across a restart too.
    let refused = broker.try_mint("read", "read:demo/a", &[]).await;
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized_client", "{body}");
    broker.restart().await;
    let refused = broker.try_mint("read", "read:demo/a", &[]).await;
    assert_eq!(refused.status(), 400, "still stopped after a restart");
    assert_eq!(broker.introspect(&first).await, json!({ "active": false }));

    // Enabled: it mints again; what it held before the stop stays revoked.
    let (status, body) = call(&broker, "/v1/workloads/demo-job/enable", Some(KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stopped"], false);
    assert_eq!(
        call(&broker, "/v1/workloads/demo-job/enable", Some(KEY))
            .await
            .0,
        409
    );
    // A token issued in the same second as the stop would count as before
    // it: move past that second.
    broker.clock.advance(chrono::TimeDelta::seconds(1));
    let fresh = token(&broker, "job-3").await;
    assert_eq!(broker.introspect(&fresh).await["active"], true);
    assert_eq!(broker.introspect(&first).await, json!({ "active": false }));

    let records = broker.audit_records();
    let stopped = records
        .iter()
        .find(|r| r["event"] == "workload_stopped")
        .unwrap();
    assert_eq!(stopped["operator"], "olga");
    assert_eq!(stopped["sub"], "demo-job");
    assert_eq!(stopped["comment"], "connector compromised");
    assert!(records.iter().any(|r| r["event"] == "workload_enabled"));
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "token_denied" && r["reason"] == "workload_stopped")
    );
}
