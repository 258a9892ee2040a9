//! Signing key rotation: published before it signs, the old key kept until
//! its tokens have expired, and a verifier that cached the old key set
//! following along.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;
use stint_client::{Client, Credentials, Error, Verifier};
use stint_core::clock::Clock as _;
use stint_core::secret;
use stint_core::ttl::MAX_TOKEN_TTL;
use stint_tests::{BrokerOptions, TestBroker, decode_jwt, policy_with, test_secret};

fn admin_policy() -> String {
    policy_with(&format!(
        "\n[workloads.key-admin]\nsecret_sha256 = \"{}\"\ncapabilities = [\"admin\"]\n",
        secret::hash_hex(&test_secret("key-admin"))
    ))
}

async fn client_as(broker: &TestBroker, workload: &str) -> Client {
    Client::builder(broker.issuer())
        .credentials(Credentials::new(workload, test_secret(workload)))
        .build()
        .await
        .unwrap()
}

async fn published_kids(broker: &TestBroker) -> Vec<String> {
    let jwks: serde_json::Value = broker
        .http
        .get(broker.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

fn kid_of(token: &str) -> String {
    decode_jwt(token).0["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_rotated_key_is_published_first_and_unpublished_last() {
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(admin_policy()),
        key_publish_lead: Duration::from_secs(300),
        ..BrokerOptions::default()
    })
    .await;
    let job = client_as(&broker, "demo-job").await;
    let verifier = Verifier::builder(broker.issuer())
        .audience("demo-api")
        .min_refresh_interval(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let mint = || async {
        job.step("read")
            .scope("read:demo/a")
            .audience("demo-api")
            .request()
            .await
            .unwrap()
    };
    let before = mint().await;
    let old_kid = kid_of(before.token());
    assert_eq!(
        published_kids(&broker).await,
        std::slice::from_ref(&old_kid)
    );
    verifier.verify(before.token()).await.unwrap();

    // Only an admin may rotate.
    let refused = job.rotate_keys().await.unwrap_err();
    match &refused {
        Error::OAuth { status, code, .. } => {
            assert_eq!((*status, code.as_str()), (403, "unauthorized_client"));
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    assert_eq!(
        published_kids(&broker).await,
        std::slice::from_ref(&old_kid)
    );

    let admin = client_as(&broker, "key-admin").await;
    let rotation = admin.rotate_keys().await.unwrap();
    assert_eq!(rotation.retired_kid, old_kid);
    assert_ne!(rotation.kid, old_kid);
    let mut both = vec![old_kid.clone(), rotation.kid.clone()];
    both.sort();
    assert_eq!(published_kids(&broker).await, both, "both keys published");
    let jwks = broker
        .http
        .get(broker.url(stint_proto::JWKS_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(
        jwks.headers()["cache-control"],
        "public, max-age=300",
        "no verifier caches the set for longer than the new key waits"
    );
    let rotated_at = chrono::DateTime::parse_from_rfc3339(&rotation.signs_from).unwrap()
        - chrono::TimeDelta::seconds(300);
    assert!((rotated_at.timestamp() - broker.clock.now().timestamp()).abs() <= 1);

    // Old tokens still verify, offline from the cached set and at the broker.
    verifier.verify(before.token()).await.unwrap();
    assert_eq!(broker.introspect(before.token()).await["active"], true);
    // Published, not yet signing: a token minted now still has the old key.
    let staged = mint().await;
    assert_eq!(
        kid_of(staged.token()),
        old_kid,
        "the new key waits for the lead"
    );
    broker.clock.advance(chrono::TimeDelta::seconds(300));
    assert_eq!(broker.server().activate_due_keys().await, None);
    assert_eq!(broker.server().signing_kid(), old_kid);
    broker.clock.advance(chrono::TimeDelta::seconds(1));
    assert_eq!(
        broker.server().activate_due_keys().await,
        Some(rotation.kid.clone()),
        "due after the lead"
    );
    staged.detach();

    // New tokens carry the new key, which the JWK set has held since the
    // rotation. (The test's clock is 300 s ahead of the offline verifier's
    // now, so the signature is checked against the set directly.)
    let after = mint().await;
    assert_eq!(kid_of(after.token()), rotation.kid);
    stint_tests::verify_signature(after.token(), &broker.keys().await);
    assert_eq!(broker.introspect(after.token()).await["active"], true);

    let records = broker.audit_records();
    let rotated = records
        .iter()
        .find(|r| r["event"] == "keys_rotated")
        .expect("the rotation is audited");
    assert_eq!(rotated["sub"], "key-admin");
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "key_rotation_denied" && r["reason"] == "not_admin")
    );

    // Until every token the old key signed has expired, it stays.
    broker.server().purge_expired().await;
    assert_eq!(published_kids(&broker).await, both);
    broker.clock.advance(chrono::TimeDelta::seconds(
        i64::from(MAX_TOKEN_TTL.as_secs()) + 61,
    ));
    broker.server().purge_expired().await;
    assert_eq!(
        published_kids(&broker).await,
        std::slice::from_ref(&rotation.kid),
        "the old key is gone once its tokens have expired"
    );
    assert_eq!(
        broker.server().published_kids(),
        std::slice::from_ref(&rotation.kid)
    );
    before.detach();
    after.detach();
}

/// A rotation survives a restart: the new key keeps signing, the old one
/// keeps verifying.
#[tokio::test]
async fn a_rotation_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, admin_policy()).unwrap();
    let config = || {
        let mut config =
            stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        config.policy = stint_server::PolicySource::File(policy.clone());
        // Signing at once: the staged case is the test above.
        config.key_publish_lead = Duration::ZERO;
        config
    };
    let server = stint_server::start(config()).await.unwrap();
    let admin = Client::builder(server.issuer())
        .credentials(Credentials::new("key-admin", test_secret("key-admin")))
        .build()
        .await
        .unwrap();
    let rotation = admin.rotate_keys().await.unwrap();
    server.shutdown().await;

    let server = stint_server::start(config()).await.unwrap();
    let mut kids = server.published_kids();
    kids.sort();
    let mut expected = vec![rotation.kid.clone(), rotation.retired_kid.clone()];
    expected.sort();
    assert_eq!(kids, expected);
    let job = Client::builder(server.issuer())
        .credentials(Credentials::new("demo-job", test_secret("demo-job")))
        .build()
        .await
        .unwrap();
    let token = job
        .step("read")
        .scope("read:demo/a")
        .audience("demo-api")
        .request()
        .await
        .unwrap();
    assert_eq!(kid_of(token.token()), rotation.kid, "the new key signs");
    token.finish().await.unwrap();
    server.shutdown().await;
}
