//! A federated workload (no client secret, only its platform's ID token)
//! introspects tokens with that ID token as the bearer credential:
//! `POST /oauth2/introspect` with `Authorization: Bearer <ID token>` and
//! the form body `token=...`, through the SDK's `Client::introspect`.
//!
//! Needs the broker side of that contract (introspection accepting a
//! federated workload's ID token); the SDK side is pinned by
//! `sdk_wire.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use stint_client::{Client, SubjectToken};
use stint_tests::idp::TestIdp;
use stint_tests::{BrokerOptions, TestBroker, policy_with};

const AUDIENCE: &str = "stint-test";

async fn federated_broker(idp: &TestIdp) -> TestBroker {
    let policy = policy_with(&format!(
        "\n[issuers.github]\nurl = \"{}\"\npreset = \"github-actions\"\naudiences = [\"{AUDIENCE}\"]\n\n\
         [workloads.web-deployer]\nworkflows = [\"demo\"]\n\n\
         [[workloads.web-deployer.federated]]\nissuer = \"github\"\n\
         claims = {{ repository = \"acme/web\", ref = \"refs/heads/main\" }}\n",
        idp.issuer
    ));
    TestBroker::start_with(BrokerOptions {
        policy: Some(policy),
        federation_ca: Some(idp.ca_file.clone()),
        ..BrokerOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_federated_client_introspects_with_its_platform_id_token() {
    let idp = TestIdp::start().await;
    let broker = federated_broker(&idp).await;
    let id_token = idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", AUDIENCE));
    let client = Client::builder(broker.issuer())
        .subject_token(SubjectToken::Value(id_token))
        .build()
        .await
        .unwrap();
    let step = client
        .step("read")
        .scope("read:demo/a")
        .audience("demo-api")
        .request()
        .await
        .unwrap();
    let token = step.token().to_owned();

    let answer = client.introspect(&token).await.unwrap();
    assert!(answer.active, "{answer:?}");
    assert_eq!(answer.sub.as_deref(), Some("web-deployer"));
    assert_eq!(answer.job.as_deref(), Some("9876543210-1"));

    step.finish().await.unwrap();
    let answer = client.introspect(&token).await.unwrap();
    assert!(!answer.active, "revoked: {answer:?}");

    // An ID token the policy binds to no workload is no credential.
    let stranger = idp.rs256_token(&idp.github_claims("evil/fork", "refs/heads/main", AUDIENCE));
    let outsider = Client::builder(broker.issuer())
        .subject_token(SubjectToken::Value(stranger))
        .build()
        .await
        .unwrap();
    let refused = outsider.introspect(&token).await.unwrap_err();
    assert!(refused.is_denial(), "{refused:?}");
}
