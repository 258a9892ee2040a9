//! RFC 8693 token exchange with ID tokens from a test identity provider
//! (HTTPS on loopback, shaped like GitHub Actions and Kubernetes).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use stint_proto::{GRANT_TOKEN_EXCHANGE, TOKEN_PATH, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN};
use stint_tests::idp::TestIdp;
use stint_tests::{BrokerOptions, TestBroker, decode_jwt, policy_with};

const AUDIENCE: &str = "stint-test";

fn federated_policy(idp: &TestIdp) -> String {
    policy_with(&format!(
        r#"
[issuers.github]
url = "{issuer}"
preset = "github-actions"
audiences = ["{AUDIENCE}"]

[issuers.cluster]
url = "{cluster}"
preset = "kubernetes"
audiences = ["{AUDIENCE}"]

[issuers.gitlab]
url = "{gitlab}"
preset = "gitlab-ci"
audiences = ["{AUDIENCE}"]

[workloads.gitlab-deployer]
workflows = ["demo"]

[[workloads.gitlab-deployer.federated]]
issuer = "gitlab"
claims = {{ project_path = "acme/api", ref = "main", ref_protected = "true" }}

[workloads.web-deployer]
workflows = ["demo"]

[[workloads.web-deployer.federated]]
issuer = "github"
claims = {{ repository = "acme/web", ref = "refs/heads/main" }}

[workloads.cluster-job]
workflows = ["demo"]

[[workloads.cluster-job.federated]]
issuer = "cluster"
claims = {{ "kubernetes.io/namespace" = "ci", sub = "system:serviceaccount:ci:*" }}
"#,
        issuer = idp.issuer,
        cluster = idp.kubernetes_issuer(),
        gitlab = idp.gitlab_issuer(),
    ))
}

async fn broker_for(idp: &TestIdp) -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        policy: Some(federated_policy(idp)),
        federation_ca: Some(idp.ca_file.clone()),
        ..BrokerOptions::default()
    })
    .await
}

/// POST a token exchange with no client authentication.
async fn exchange(
    broker: &TestBroker,
    subject_token: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", TOKEN_TYPE_ID_TOKEN),
        ("step", "read"),
        ("scope", "read:demo/a"),
        ("audience", "demo-api"),
    ];
    form.extend_from_slice(extra);
    let response = broker
        .http
        .post(broker.url(TOKEN_PATH))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn assert_refused(reply: &(u16, Value), status: u16, error: &str, what: &str) {
    assert_eq!(reply.0, status, "{what}: {}", reply.1);
    assert_eq!(reply.1["error"], error, "{what}: {}", reply.1);
}

#[tokio::test]
async fn a_github_actions_token_is_exchanged_for_a_step_token() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let id_token = idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", AUDIENCE));
    let (status, body) = exchange(&broker, &id_token, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "read:demo/a");
    assert_eq!(
        body["job"], "9876543210-1",
        "the job is the run and its attempt"
    );
    let (_, claims) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "web-deployer");
    assert_eq!(claims["job"], "9876543210-1");

    let records = broker.audit_records();
    let minted = records.last().unwrap();
    assert_eq!(minted["event"], "token_minted");
    assert_eq!(minted["federated_iss"], idp.issuer.as_str());
    assert_eq!(minted["federated_sub"], "repo:acme/web:ref:refs/heads/main");

    // Naming the same job is fine; another is refused.
    let (status, _) = exchange(&broker, &id_token, &[("job", "9876543210-1")]).await;
    assert_eq!(status, 200);
    let reply = exchange(&broker, &id_token, &[("job", "some-other-job")]).await;
    assert_refused(&reply, 400, "invalid_request", "a contradicting job");
    assert_eq!(
        broker.audit_records().last().unwrap()["reason"],
        "job_contradicts_identity"
    );
}

/// A federated job has no client secret: it revokes its step tokens, and
/// completes its job, by presenting its platform ID token as a bearer.
#[tokio::test]
async fn a_federated_job_revokes_with_its_id_token() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let id_token = idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", AUDIENCE));
    let mint = || async {
        let (status, body) = exchange(&broker, &id_token, &[]).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    };
    let first = mint().await;
    let response = broker
        .http
        .post(broker.url(stint_proto::REVOCATION_PATH))
        .bearer_auth(&id_token)
        .form(&[("token", first.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(broker.introspect(&first).await["active"], false);
    let record = broker.audit_records().last().unwrap().clone();
    assert_eq!(record["event"], "token_revoked");
    assert_eq!(record["sub"], "web-deployer");
    assert_eq!(record["federated_sub"], "repo:acme/web:ref:refs/heads/main");

    // The step token itself is authority enough to revoke it (it outlives
    // the platform's ID token), and only for its own job.
    let third = mint().await;
    let response = broker
        .http
        .post(broker.url(stint_proto::REVOCATION_PATH))
        .bearer_auth(&third)
        .form(&[("token", third.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(broker.introspect(&third).await["active"], false);

    let second = mint().await;
    let response = broker
        .http
        .post(broker.url("/v1/jobs/9876543210-1/revoke"))
        .bearer_auth(&id_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(broker.introspect(&second).await["active"], false);
    let reply = exchange(&broker, &id_token, &[]).await;
    assert_refused(
        &reply,
        400,
        "invalid_grant",
        "the completed job mints no more",
    );

    // An ID token naming job 9876543210-1 cannot complete another job.
    let response = broker
        .http
        .post(broker.url("/v1/jobs/9876543211-1/revoke"))
        .bearer_auth(&id_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "another job");
    assert_eq!(
        broker.audit_records().last().unwrap()["reason"],
        "not_tokens_owner"
    );

    // Someone else's ID token is no authority over these tokens.
    let other = idp.rs256_token(&idp.kubernetes_claims("ci", "deployer", AUDIENCE));
    let response = broker
        .http
        .post(broker.url(stint_proto::REVOCATION_PATH))
        .bearer_auth(&other)
        .form(&[("token", first.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "not the token's owner");
    // A bearer that is not a valid ID token is a failed authentication.
    let response = broker
        .http
        .post(broker.url(stint_proto::REVOCATION_PATH))
        .bearer_auth("not-a-token")
        .form(&[("token", first.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
}

/// A federated workload has no client secret: it introspects (RFC 7662)
/// with its platform ID token as `Authorization: Bearer`, verified exactly
/// as a token exchange verifies it (what `stint introspect
/// --subject-token-file` sends).
#[tokio::test]
async fn a_federated_workload_introspects_with_its_id_token() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let id_token = idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", AUDIENCE));
    let (status, body) = exchange(&broker, &id_token, &[]).await;
    assert_eq!(status, 200, "{body}");
    let step_token = body["access_token"].as_str().unwrap().to_owned();
    let introspect = |bearer: String, token: String| {
        let broker = &broker;
        async move {
            let response = broker
                .http
                .post(broker.url(stint_proto::INTROSPECTION_PATH))
                .bearer_auth(bearer)
                .form(&[("token", token.as_str())])
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers().contains_key("www-authenticate");
            (status, challenge, response.json::<Value>().await.unwrap())
        }
    };

    let (status, _, body) = introspect(id_token.clone(), step_token.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["sub"], "web-deployer");
    assert_eq!(body["job"], "9876543210-1");
    let (status, _, body) = introspect(id_token.clone(), "not-a-token".into()).await;
    assert_eq!((status, body), (200, json!({"active": false})));

    // Refused as authentication: an ID token for another audience, one from
    // an issuer the policy does not trust, an expired one, one bound to no
    // workload, junk, and the broker's own step token (a bearer access
    // token is not a client credential here).
    let mut expired = idp.github_claims("acme/web", "refs/heads/main", AUDIENCE);
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let stranger = TestIdp::start().await;
    for (bearer, what) in [
        (
            idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", "elsewhere")),
            "another audience",
        ),
        (
            stranger.rs256_token(&stranger.github_claims("acme/web", "refs/heads/main", AUDIENCE)),
            "an untrusted issuer",
        ),
        (idp.rs256_token(&expired), "expired"),
        (
            idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/dev", AUDIENCE)),
            "bound to no workload",
        ),
        ("not-a-token".to_owned(), "junk"),
        (step_token.clone(), "a step token"),
    ] {
        let (status, challenge, body) = introspect(bearer, step_token.clone()).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}: {body}");
        assert!(challenge, "{what}: a 401 carries WWW-Authenticate");
    }
}

/// The SDK with a subject token instead of a secret: mint, finish, complete.
#[tokio::test]
async fn the_sdk_works_with_an_id_token_and_no_secret() {
    use stint_client::{Client, SubjectToken};
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("id-token");
    std::fs::write(
        &file,
        idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", AUDIENCE)),
    )
    .unwrap();
    let client = Client::builder(broker.issuer())
        .subject_token(SubjectToken::File(file))
        .build()
        .await
        .unwrap();
    assert_eq!(client.client_id(), None);
    let step = client
        .step("read")
        .scope("read:demo/a")
        .audience("demo-api")
        .request()
        .await
        .unwrap();
    assert_eq!(step.job(), "9876543210-1");
    let token = step.token().to_owned();
    step.finish().await.unwrap();
    assert_eq!(broker.introspect(&token).await["active"], false);
    let other = client
        .step("read")
        .scope("read:demo/b")
        .audience("demo-api")
        .request()
        .await
        .unwrap();
    let other_token = other.token().to_owned();
    client.job("9876543210-1").complete().await.unwrap();
    assert_eq!(broker.introspect(&other_token).await["active"], false);
    other.finish().await.unwrap();
}

#[tokio::test]
async fn an_untrusted_issuer_is_refused_without_any_fetch() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let mut claims = idp.github_claims("acme/web", "refs/heads/main", AUDIENCE);
    claims["iss"] = json!("https://token.evil.example");
    let reply = exchange(&broker, &idp.rs256_token(&claims), &[]).await;
    assert_refused(&reply, 400, "invalid_grant", "untrusted issuer");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 0, "nothing was fetched");
    let record = broker.audit_records().last().unwrap().clone();
    assert_eq!(record["reason"], "untrusted_issuer");
    assert_eq!(record["federated_iss"], "https://token.evil.example");
}

#[tokio::test]
async fn bad_subject_tokens_are_refused() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let good = idp.github_claims("acme/web", "refs/heads/main", AUDIENCE);

    let reply = exchange(
        &broker,
        &idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", "someone-else")),
        &[],
    )
    .await;
    assert_refused(&reply, 400, "invalid_grant", "wrong audience");

    let mut expired = good.clone();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    let reply = exchange(&broker, &idp.rs256_token(&expired), &[]).await;
    assert_refused(&reply, 400, "invalid_grant", "expired");
    assert!(
        reply.1["error_description"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    let mut old = good.clone();
    old["iat"] = json!(chrono::Utc::now().timestamp() - 3600);
    let reply = exchange(&broker, &idp.rs256_token(&old), &[]).await;
    assert_refused(&reply, 400, "invalid_grant", "older than max_token_age");

    // Signed by a key the issuer does not publish (an ES256 key of another
    // IdP, for the Kubernetes issuer, which accepts ES256).
    let stranger = TestIdp::start().await;
    let claims = idp.kubernetes_claims("ci", "deployer", AUDIENCE);
    let reply = exchange(&broker, &stranger.es256_token(&claims), &[]).await;
    assert_refused(&reply, 400, "invalid_grant", "unknown key");
    assert!(
        reply.1["error_description"]
            .as_str()
            .unwrap()
            .contains("a key its issuer does not publish"),
        "{}",
        reply.1
    );

    // alg none.
    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(&serde_json::to_vec(&good).unwrap())
    );
    let reply = exchange(&broker, &none, &[]).await;
    assert_refused(&reply, 400, "invalid_grant", "alg none");

    // ES256 from an issuer whose preset allows RS256 only.
    let reply = exchange(&broker, &idp.es256_token(&good), &[]).await;
    assert_refused(
        &reply,
        400,
        "invalid_grant",
        "an algorithm the issuer may not use",
    );

    // A valid token for an identity no workload is bound to.
    let reply = exchange(
        &broker,
        &idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/dev", AUDIENCE)),
        &[],
    )
    .await;
    assert_refused(&reply, 400, "invalid_grant", "claim mismatch");
    assert_eq!(
        broker.audit_records().last().unwrap()["reason"],
        "unbound_identity"
    );

    // Client credentials are not mixed in.
    let response = broker
        .http
        .post(broker.url(TOKEN_PATH))
        .basic_auth("demo-job", Some(stint_tests::test_secret("demo-job")))
        .form(&[
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("subject_token", idp.rs256_token(&good).as_str()),
            ("subject_token_type", TOKEN_TYPE_ID_TOKEN),
            ("step", "read"),
            ("scope", "read:demo/a"),
            ("audience", "demo-api"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// Times at the ends of the i64 range are refused, and no `now - iat`
/// (or `now + leeway`) arithmetic wraps: an `iat` of `i64::MIN` once
/// wrapped to a negative age and passed the max_token_age check in a
/// release build (and panicked the handler in a debug one).
#[tokio::test]
async fn extreme_times_in_a_subject_token_are_refused_without_wrapping() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let good = idp.github_claims("acme/web", "refs/heads/main", AUDIENCE);
    let cases = [
        ("iat", json!(i64::MIN), "older than"),
        ("iat", json!(i64::MIN + 1), "older than"),
        ("iat", json!(i64::MAX), "issued in the future"),
        ("exp", json!(i64::MIN), "expired"),
        ("nbf", json!(i64::MAX), "not valid yet"),
        ("iat", json!(1.5e300), "no iat"),
        ("exp", json!(u64::MAX), "no exp"),
        ("nbf", json!(1.5e300), "nbf claim is not"),
    ];
    for (claim, value, expected) in cases {
        let mut claims = good.clone();
        claims[claim] = value.clone();
        let reply = exchange(&broker, &idp.rs256_token(&claims), &[]).await;
        let what = format!("{claim} = {value}");
        assert_refused(&reply, 400, "invalid_grant", &what);
        let description = reply.1["error_description"].as_str().unwrap();
        assert!(description.contains(expected), "{what}: {description}");
    }
    // Far-future expiry and an nbf long past are fine on their own.
    let mut claims = good.clone();
    claims["exp"] = json!(i64::MAX);
    claims["nbf"] = json!(i64::MIN);
    let (status, body) = exchange(&broker, &idp.rs256_token(&claims), &[]).await;
    assert_eq!(status, 200, "{body}");
}

/// RFC 8693 section 2.1: a token exchange may repeat `audience` and
/// `resource`; they must name one target (section 2.2.2).
#[tokio::test]
async fn an_exchange_may_repeat_its_audience_when_every_value_agrees() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let id_token = idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", AUDIENCE));
    // `exchange` already sends audience=demo-api once.
    let (status, body) = exchange(
        &broker,
        &id_token,
        &[("audience", "demo-api"), ("resource", "demo-api")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reply = exchange(&broker, &id_token, &[("audience", "other-api")]).await;
    assert_refused(&reply, 400, "invalid_target", "two audiences");
}

/// Each ID token check is counted by its outcome, and each fetch of an
/// issuer's keys by its own.
#[tokio::test]
async fn id_token_checks_and_key_fetches_are_counted() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let good = idp.github_claims("acme/web", "refs/heads/main", AUDIENCE);
    let (status, body) = exchange(&broker, &idp.rs256_token(&good), &[]).await;
    assert_eq!(status, 200, "{body}");
    let mut expired = good.clone();
    expired["exp"] = json!(chrono::Utc::now().timestamp() - 120);
    exchange(&broker, &idp.rs256_token(&expired), &[]).await;
    exchange(&broker, "not-a-jwt", &[]).await;
    let stranger = TestIdp::start().await;
    let foreign = stranger.github_claims("acme/web", "refs/heads/main", AUDIENCE);
    exchange(&broker, &stranger.rs256_token(&foreign), &[]).await;

    let metrics = broker.metrics().await;
    for expected in [
        "stint_federation_id_token_verifications_total{outcome=\"verified\"} 1\n",
        "stint_federation_id_token_verifications_total{outcome=\"invalid\"} 2\n",
        "stint_federation_id_token_verifications_total{outcome=\"untrusted_issuer\"} 1\n",
        "stint_federation_id_token_verifications_total{outcome=\"keys_unavailable\"} 0\n",
        "stint_federation_jwks_fetches_total{outcome=\"fetched\"} 1\n",
        "stint_federation_jwks_fetches_total{outcome=\"failed\"} 0\n",
    ] {
        assert!(metrics.contains(expected), "{expected} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_gitlab_ci_token_is_exchanged_with_its_job_id() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let claims = idp.gitlab_claims("acme/api", "main", AUDIENCE);
    let (status, body) = exchange(&broker, &idp.rs256_token(&claims), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["job"], "7654321", "the GitLab CI job");
    let (_, token) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], "gitlab-deployer");
    let mut unprotected = claims;
    unprotected["ref_protected"] = json!("false");
    let reply = exchange(&broker, &idp.rs256_token(&unprotected), &[]).await;
    assert_refused(&reply, 400, "invalid_grant", "an unprotected branch");
}

#[tokio::test]
async fn a_kubernetes_token_binds_by_nested_claims() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let claims = idp.kubernetes_claims("ci", "deployer", AUDIENCE);
    // The kubernetes preset accepts ES256 as well as RS256.
    let (status, body) = exchange(&broker, &idp.es256_token(&claims), &[]).await;
    assert_eq!(status, 200, "{body}");
    let (_, token) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(token["sub"], "cluster-job");
    assert_eq!(
        token["job"], "a1b2c3d4-0000-4000-8000-000000000001",
        "the pod"
    );
    let other = idp.kubernetes_claims("prod", "deployer", AUDIENCE);
    let reply = exchange(&broker, &idp.rs256_token(&other), &[]).await;
    assert_refused(&reply, 400, "invalid_grant", "another namespace");
}

/// Concurrent first requests wait for the one fetch of the issuer's keys
/// instead of being turned away by its rate limit.
#[tokio::test]
async fn concurrent_first_exchanges_share_one_fetch() {
    let idp = TestIdp::start().await;
    let broker = broker_for(&idp).await;
    let id_token = idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", AUDIENCE));
    let replies = futures_join_all(
        (0..8)
            .map(|_| exchange(&broker, &id_token, &[]))
            .collect::<Vec<_>>(),
    )
    .await;
    for (status, body) in replies {
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        2,
        "one discovery document and one JWK set"
    );
}

/// Await every future (in this task: they interleave at their awaits).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn an_issuer_that_is_down_is_temporarily_unavailable_but_cached_keys_still_work() {
    let idp = TestIdp::start().await;
    let warm = broker_for(&idp).await;
    let id_token = idp.rs256_token(&idp.github_claims("acme/web", "refs/heads/main", AUDIENCE));
    assert_eq!(exchange(&warm, &id_token, &[]).await.0, 200);
    let fetched = idp.fetches.load(Ordering::SeqCst);
    assert!(fetched >= 2, "discovery and JWKS were fetched");

    idp.down.store(true, Ordering::SeqCst);
    let (status, body) = exchange(&warm, &id_token, &[]).await;
    assert_eq!(
        status, 200,
        "cached keys are used while the issuer is down: {body}"
    );

    let cold = broker_for(&idp).await;
    let reply = exchange(&cold, &id_token, &[]).await;
    assert_refused(
        &reply,
        503,
        "temporarily_unavailable",
        "no keys, issuer down",
    );
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn an_elevation_asked_from_gitlab_ci_links_to_its_pipeline() {
    let idp = TestIdp::start().await;
    let policy = format!(
        r#"{}
[workflows.demo.steps.deploy]
scopes = ["deploy:demo/staging"]

[workflows.demo.steps.deploy.elevation]
scopes = ["deploy:demo/prod"]
approver_groups = ["sre"]
quorum = 1
max_duration = "30m"
max_wait = "10m"

[operators.alice]
groups = ["sre"]
key_sha256 = "{}"
"#,
        federated_policy(&idp),
        stint_core::secret::hash_hex("stint_operator_alice")
    );
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(policy),
        federation_ca: Some(idp.ca_file.clone()),
        ..BrokerOptions::default()
    })
    .await;
    let claims = idp.gitlab_claims("acme/api", "main", AUDIENCE);
    let subject_token = idp.rs256_token(&claims);
    let response = broker
        .http
        .post(broker.url(TOKEN_PATH))
        .form(&[
            ("grant_type", GRANT_TOKEN_EXCHANGE),
            ("subject_token", subject_token.as_str()),
            ("subject_token_type", TOKEN_TYPE_ID_TOKEN),
            ("step", "deploy"),
            ("scope", "deploy:demo/staging deploy:demo/prod"),
            ("audience", "demo-api"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "authorization_pending", "{body}");
    assert_eq!(
        body["approval"]["run_url"],
        format!("{}/acme/api/-/pipelines/1234567", idp.gitlab_issuer()),
        "{body}"
    );
    // Kept with the request: the API's view (what the console shows) has it.
    let id = body["approval_id"].as_str().unwrap();
    let view: Value = broker
        .http
        .get(broker.url(&format!("/v1/approvals/{id}")))
        .bearer_auth("stint_operator_alice")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["approval"]["run_url"], view["run_url"]);
}
