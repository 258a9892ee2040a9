//! Every endpoint of the broker core, over real HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use stint_core::jose::Algorithm;
use stint_proto::{
    INTROSPECTION_PATH, JWKS_PATH, METADATA_PATH, OPENID_CONFIGURATION_PATH, REVOCATION_PATH,
    TOKEN_PATH,
};
use stint_tests::{
    BrokerOptions, TestBroker, Value, decode_jwt, json, policy_with, test_secret, verify_signature,
};

const OTHER: (&str, &str) = ("other-job", "stint_test_other-job");

fn token_of(response: &Value) -> String {
    response["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn metadata_is_served_at_both_well_known_paths_and_names_the_jwks() {
    let broker = TestBroker::start().await;
    let get = |path: &str| {
        let url = broker.url(path);
        let http = broker.http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let metadata = get(METADATA_PATH).await;
    let issuer = broker.issuer();
    // The OpenID Connect document is the RFC 8414 one plus what OpenID
    // Connect Discovery 1.0 section 3 requires (validated independently in
    // tests/tests/conformance.rs).
    let mut openid = get(OPENID_CONFIGURATION_PATH).await;
    assert_eq!(openid["response_types_supported"], json!(["none"]));
    assert_eq!(
        openid["authorization_endpoint"],
        format!("{issuer}/oauth2/authorize")
    );
    assert_eq!(openid["subject_types_supported"], json!(["public"]));
    assert_eq!(
        openid["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
    let fields = openid.as_object_mut().unwrap();
    for field in [
        "authorization_endpoint",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(
            metadata.get(field).is_none(),
            "{field} is not in the RFC 8414 document"
        );
        fields.remove(field);
    }
    fields.insert("response_types_supported".into(), json!([]));
    assert_eq!(metadata, openid, "the rest is the same document");
    assert_eq!(metadata["response_types_supported"], json!([]));
    assert_eq!(metadata["issuer"], issuer);
    assert_eq!(metadata["token_endpoint"], format!("{issuer}{TOKEN_PATH}"));
    assert_eq!(
        metadata["revocation_endpoint"],
        format!("{issuer}{REVOCATION_PATH}")
    );
    assert_eq!(
        metadata["introspection_endpoint"],
        format!("{issuer}{INTROSPECTION_PATH}")
    );
    assert_eq!(
        metadata["grant_types_supported"],
        json!([
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    assert_eq!(
        metadata["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );

    let jwks_uri = metadata["jwks_uri"].as_str().unwrap();
    assert_eq!(jwks_uri, format!("{issuer}{JWKS_PATH}"));
    let jwks: Value = broker
        .http
        .get(jwks_uri)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(key.get("d").is_none(), "no private key material");
}

#[tokio::test]
async fn a_minted_token_is_an_rfc9068_jwt_with_every_claim() {
    let broker = TestBroker::start().await;
    let response = broker
        .post_form(
            TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "read:demo/b read:demo/a"),
                ("audience", "https://api.demo.example"),
                ("job", "run-42"),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "read:demo/a read:demo/b");
    assert_eq!(body["job"], "run-42");
    assert_eq!(body["step"], "read");

    let token = token_of(&body);
    let (header, _) = decode_jwt(&token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    let claims = verify_signature(&token, &broker.keys().await);
    assert!(
        broker
            .keys()
            .await
            .get(header["kid"].as_str().unwrap())
            .is_some(),
        "kid is published"
    );
    assert_eq!(claims["iss"], broker.issuer());
    assert_eq!(claims["sub"], "demo-job");
    assert_eq!(claims["aud"], "https://api.demo.example");
    assert_eq!(claims["client_id"], "demo-job");
    assert_eq!(claims["scope"], "read:demo/a read:demo/b");
    assert_eq!(claims["job"], "run-42");
    assert_eq!(claims["step"], "read");
    assert_eq!(claims["workflow"], "demo");
    let (iat, nbf, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["nbf"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(nbf, iat);
    assert_eq!(exp - iat, 300);
    assert_eq!(iat, broker.clock_now());
    assert_eq!(claims["jti"].as_str().unwrap().len(), 22);

    // Without a job, the broker assigns one and says which.
    let body = broker.mint("read", "read:demo/x", &[]).await;
    let job = body["job"].as_str().unwrap();
    assert!(job.starts_with("job-"), "{job}");
    assert_eq!(decode_jwt(&token_of(&body)).1["job"], job);
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

#[tokio::test]
async fn client_secret_post_authenticates_too() {
    let broker = TestBroker::start().await;
    let response = broker
        .http
        .post(broker.url(TOKEN_PATH))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "demo-job"),
            ("client_secret", test_secret("demo-job").as_str()),
            ("step", "read"),
            ("scope", "read:demo/x"),
            ("resource", "https://api.demo.example"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        decode_jwt(&token_of(&body)).1["aud"],
        "https://api.demo.example"
    );
}

#[tokio::test]
async fn ed25519_is_selectable() {
    let broker = TestBroker::start_with(BrokerOptions {
        signing_alg: Algorithm::EdDSA,
        ..BrokerOptions::default()
    })
    .await;
    let token = token_of(&broker.mint("read", "read:demo/x", &[]).await);
    assert_eq!(decode_jwt(&token).0["alg"], "EdDSA");
    let jwks: Value = broker
        .http
        .get(broker.url(JWKS_PATH))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert_eq!(
        verify_signature(&token, &broker.keys().await)["sub"],
        "demo-job"
    );
}

#[tokio::test]
async fn ttl_is_honoured_and_capped_at_the_steps_maximum() {
    let broker = TestBroker::start().await;
    let short = broker.mint("read", "read:demo/x", &[("ttl", "60")]).await;
    assert_eq!(short["expires_in"], 60);
    let capped = broker
        .mint("read", "read:demo/x", &[("ttl", "100000")])
        .await;
    assert_eq!(capped["expires_in"], 900);
    let claims = decode_jwt(&token_of(&capped)).1;
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );
}

async fn error_of(response: stint_tests::reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_step_outside_the_workloads_workflows_is_invalid_request() {
    let extra = r#"
[workflows.ops]
review_by = 2099-01-01
[workflows.ops.steps.deploy]
scopes = ["deploy:k8s/prod/web"]
"#;
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(policy_with(extra)),
        ..BrokerOptions::default()
    })
    .await;
    for step in ["deploy", "ops/deploy", "nonexistent"] {
        let (status, body) = error_of(
            broker
                .post_form(
                    TOKEN_PATH,
                    &[
                        ("grant_type", "client_credentials"),
                        ("step", step),
                        ("scope", "deploy:k8s/prod/web"),
                        ("audience", "k8s"),
                    ],
                )
                .await,
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "step {step}: {body}"
        );
    }
}

#[tokio::test]
async fn invalid_scope_names_the_refused_scope_and_nothing_of_the_policy() {
    let broker = TestBroker::start().await;
    let (status, body) = error_of(
        broker
            .post_form(
                TOKEN_PATH,
                &[
                    ("grant_type", "client_credentials"),
                    ("step", "read"),
                    ("scope", "read:demo/ok write:prod/db"),
                    ("audience", "a"),
                ],
            )
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_scope");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("write:prod/db"), "{description}");
    assert!(
        !description.contains("**"),
        "the allowance's patterns stay private: {description}"
    );
}

#[tokio::test]
async fn introspection_reports_active_tokens_to_authenticated_clients_only() {
    let broker = TestBroker::start().await;
    let token = token_of(&broker.mint("read", "read:demo/x", &[("job", "j1")]).await);

    let unauthenticated = broker
        .http
        .post(broker.url(INTROSPECTION_PATH))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert!(
        unauthenticated.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );

    let active = broker.introspect(&token).await;
    let claims = decode_jwt(&token).1;
    assert_eq!(active["active"], true);
    for field in [
        "scope",
        "client_id",
        "exp",
        "iat",
        "nbf",
        "sub",
        "aud",
        "iss",
        "jti",
        "job",
        "step",
    ] {
        assert_eq!(active[field], claims[field], "{field}");
    }
    assert_eq!(active["token_type"], "Bearer");

    // A resource server is a client too: another workload may introspect.
    let response = broker
        .post_form_as(OTHER, INTROSPECTION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.json::<Value>().await.unwrap()["active"], true);

    // A well-formed token this broker did not sign.
    let (foreign_key, _) =
        stint_core::jose::SigningKey::generate(Algorithm::ES256, &ring::rand::SystemRandom::new())
            .unwrap();
    let foreign = foreign_key
        .sign_jwt("at+jwt", &claims, &ring::rand::SystemRandom::new())
        .unwrap();
    assert_eq!(broker.introspect(&foreign).await, json!({"active": false}));

    // Expired: move the broker's clock past exp.
    broker.clock.advance(chrono::TimeDelta::seconds(301));
    assert_eq!(broker.introspect(&token).await, json!({"active": false}));
}

#[tokio::test]
async fn a_revoked_token_is_inactive_and_only_its_owner_may_revoke_it() {
    let broker = TestBroker::start().await;
    let token = token_of(&broker.mint("read", "read:demo/x", &[]).await);
    let control = token_of(&broker.mint("read", "read:demo/y", &[]).await);

    let (status, body) = error_of(
        broker
            .post_form_as(OTHER, REVOCATION_PATH, &[("token", &token)])
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client")),
        "{body}"
    );
    assert_eq!(
        broker.introspect(&token).await["active"],
        true,
        "a refused revocation changes nothing"
    );

    let response = broker
        .post_form(
            REVOCATION_PATH,
            &[("token", &token), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(broker.introspect(&token).await, json!({"active": false}));
    assert_eq!(broker.introspect(&control).await["active"], true);
    // Idempotent (RFC 7009).
    assert_eq!(
        broker
            .post_form(REVOCATION_PATH, &[("token", &token)])
            .await
            .status(),
        200
    );

    let metrics = broker.metrics().await;
    assert!(
        metrics.contains("stint_revocations_total{kind=\"token\"} 2"),
        "{metrics}"
    );
    let jti = decode_jwt(&token).1["jti"].clone();
    let records = broker.audit_records();
    let revoked: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "token_revoked")
        .collect();
    assert_eq!(revoked.len(), 2);
    assert!(
        revoked
            .iter()
            .all(|r| r["jti"] == jti && r["decision"] == "allow")
    );
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "token_revocation_denied")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["sub"], "other-job");
    assert_eq!(refused[0]["reason"], "not_tokens_owner");
}

#[tokio::test]
async fn revoking_a_job_revokes_every_token_of_that_job_of_that_workload() {
    let broker = TestBroker::start().await;
    let read = token_of(&broker.mint("read", "read:demo/x", &[("job", "j1")]).await);
    let write = token_of(&broker.mint("write", "write:demo/x", &[("job", "j1")]).await);
    let other_job = token_of(&broker.mint("read", "read:demo/x", &[("job", "j2")]).await);

    // Another workload "revoking j1" touches only its own j1.
    let response = broker
        .http
        .post(broker.url("/v1/jobs/j1/revoke"))
        .basic_auth(OTHER.0, Some(OTHER.1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(broker.introspect(&read).await["active"], true);

    let response = broker
        .http
        .post(broker.url("/v1/jobs/j1/revoke"))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["job"], "j1");
    assert!(body["revoked_at"].as_str().is_some());
    assert_eq!(broker.introspect(&read).await, json!({"active": false}));
    assert_eq!(broker.introspect(&write).await, json!({"active": false}));
    assert_eq!(broker.introspect(&other_job).await["active"], true);

    // A completed job mints nothing more.
    let (status, body) = error_of(
        broker
            .post_form(
                TOKEN_PATH,
                &[
                    ("grant_type", "client_credentials"),
                    ("step", "read"),
                    ("scope", "read:demo/x"),
                    ("audience", "a"),
                    ("job", "j1"),
                ],
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    let unauthenticated = broker
        .http
        .post(broker.url("/v1/jobs/j1/revoke"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let malformed = broker
        .http
        .post(broker.url("/v1/jobs/bad%20id/revoke"))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );

    let records = broker.audit_records();
    let job_revoked: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "job_revoked")
        .collect();
    assert_eq!(job_revoked.len(), 2);
    assert_eq!(job_revoked[1]["sub"], "demo-job");
    assert_eq!(job_revoked[1]["job"], "j1");
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "job_revocation_denied")
            .count(),
        2
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let broker = TestBroker::start().await;
    let health = broker
        .http
        .get(broker.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = broker.http.get(broker.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready", "checks": {"audit_log": true, "store": true}})
    );

    broker.mint("read", "read:demo/x", &[]).await;
    broker
        .post_form(
            TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "write:demo/x"),
                ("audience", "a"),
            ],
        )
        .await;
    let metrics = broker.metrics().await;
    for expected in [
        "stint_tokens_minted_total 1",
        "stint_tokens_denied_total{reason=\"scope_not_allowed\"} 1",
        "stint_policy_loads_total{result=\"loaded\"} 1",
        // Counted, not named: workflow names only reach an authorized
        // scraper (tests/tests/metrics.rs).
        "stint_policy_workflows_review_overdue 0",
        "stint_http_request_duration_seconds_count{route=\"/oauth2/token\",method=\"POST\",status=\"200\"} 1",
        "stint_http_request_duration_seconds_bucket{le=\"0.01\",route=\"/oauth2/token\",method=\"POST\",status=\"400\"}",
        "stint_audit_records_total",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn every_decision_is_in_the_hash_chained_audit_log() {
    let broker = TestBroker::start().await;
    let response = broker
        .post_form(
            TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "read:demo/x"),
                ("audience", "demo-api"),
                ("job", "run-7"),
            ],
        )
        .await;
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let token = token_of(&response.json().await.unwrap());
    broker
        .post_form(
            TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "admin:demo/x"),
                ("audience", "a"),
            ],
        )
        .await;
    broker
        .post_form(REVOCATION_PATH, &[("token", &token)])
        .await;

    let records = broker.audit_records();
    let events: Vec<&str> = records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "policy_loaded",
            "token_minted",
            "token_denied",
            "token_revoked"
        ]
    );
    assert_eq!(records[0]["policy_sha256"].as_str().map(str::len), Some(64));

    let minted = &records[1];
    let claims = decode_jwt(&token).1;
    assert_eq!(minted["decision"], "allow");
    assert_eq!(minted["sub"], "demo-job");
    assert_eq!(minted["client_id"], "demo-job");
    assert_eq!(minted["job"], "run-7");
    assert_eq!(minted["step"], "read");
    assert_eq!(minted["aud"], "demo-api");
    assert_eq!(minted["scopes"], json!(["read:demo/x"]));
    assert_eq!(minted["jti"], claims["jti"]);
    assert_eq!(minted["request_id"], request_id);
    assert!(
        minted["client_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(minted["time"].as_str().unwrap().ends_with('Z'));

    let denied = &records[2];
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reason"], "scope_not_allowed");
    assert_eq!(denied["scopes"], json!(["admin:demo/x"]));
    assert_eq!(records[3]["jti"], claims["jti"]);

    let text = std::fs::read_to_string(broker.audit_path()).unwrap();
    assert!(
        !text.contains(&test_secret("demo-job")),
        "no secret in the audit log"
    );
    assert!(!text.contains(&token), "no token in the audit log");
}

#[tokio::test]
async fn the_demo_policy_is_what_dev_mode_runs() {
    let broker = TestBroker::demo().await;
    let dev_client: Value =
        serde_json::from_slice(&std::fs::read(broker.server().dev_client_path().unwrap()).unwrap())
            .unwrap();
    assert_eq!(dev_client["issuer"], broker.issuer());
    assert_eq!(dev_client["token_endpoint"], broker.url(TOKEN_PATH));
    assert_eq!(dev_client["client_id"], "demo-job");
    assert!(
        dev_client["client_secret"]
            .as_str()
            .unwrap()
            .starts_with("stint_")
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(broker.server().dev_client_path().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    assert_eq!(
        broker.mint("read", "read:demo/docs", &[]).await["expires_in"],
        300
    );
    assert_eq!(
        broker
            .mint("write", "write:demo/docs/a", &[("ttl", "900")])
            .await["expires_in"],
        900
    );
    let (status, body) = error_of(
        broker
            .post_form(
                TOKEN_PATH,
                &[
                    ("grant_type", "client_credentials"),
                    ("step", "read"),
                    ("scope", "write:demo/x"),
                    ("audience", "a"),
                ],
            )
            .await,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

#[tokio::test]
async fn unknown_paths_get_an_oauth_style_404() {
    let broker = TestBroker::start().await;
    let response = broker.http.get(broker.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );
}

#[tokio::test]
async fn a_revocation_is_forgotten_once_its_token_would_have_expired() {
    use stint_core::revocation::PURGE_GRACE_SECS;
    let broker = TestBroker::start().await;
    let token = token_of(&broker.mint("read", "read:demo/x", &[("ttl", "60")]).await);
    assert_eq!(
        broker
            .post_form(REVOCATION_PATH, &[("token", &token)])
            .await
            .status(),
        200
    );
    assert!(
        broker
            .metrics()
            .await
            .contains("stint_revocations_in_memory 1")
    );

    assert_eq!(
        broker.server().purge_expired().await,
        0,
        "still unexpired: kept"
    );
    assert_eq!(broker.introspect(&token).await, json!({"active": false}));

    broker.clock.advance(chrono::TimeDelta::seconds(61));
    assert_eq!(broker.introspect(&token).await, json!({"active": false}));
    assert_eq!(
        broker.server().purge_expired().await,
        0,
        "just expired: kept for the grace period, in case the clock steps back"
    );
    broker
        .clock
        .advance(chrono::TimeDelta::seconds(PURGE_GRACE_SECS));
    assert_eq!(
        broker.server().purge_expired().await,
        1,
        "long expired: dropped"
    );
    assert!(
        broker
            .metrics()
            .await
            .contains("stint_revocations_in_memory 0")
    );
    // Still inactive, now because it has expired.
    assert_eq!(broker.introspect(&token).await, json!({"active": false}));
}
