//! The SDK (`stint-client`) against the real broker on loopback: one token
//! per step, revoked however the step ends; job completion; retries;
//! offline verification and its refusals; a custom CA.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use stint_client::{Client, Credentials, Error, TokenError, Verifier};
use stint_tests::{TestBroker, TestCa};

async fn client_for(broker: &TestBroker) -> Client {
    Client::builder(broker.issuer())
        .credentials(Credentials::new(
            broker.client_id.clone(),
            broker.client_secret.clone(),
        ))
        .build()
        .await
        .expect("the SDK discovers the broker")
}

async fn verifier_for(broker: &TestBroker) -> Verifier {
    Verifier::builder(broker.issuer())
        .audience("demo-api")
        .build()
        .await
        .unwrap()
}

/// A token for the `read` step with one scope, for `demo-api`.
async fn read_token(client: &Client, scope: &str) -> stint_client::StepToken {
    client
        .step("read")
        .scope(scope)
        .audience("demo-api")
        .request()
        .await
        .unwrap()
}

async fn is_active(broker: &TestBroker, token: &str) -> bool {
    broker.introspect(token).await["active"] == true
}

#[tokio::test]
async fn finish_revokes_before_it_returns() {
    let broker = TestBroker::start().await;
    let client = client_for(&broker).await;
    let step = client
        .step("read")
        .job("job-1")
        .scope("read:demo/a")
        .scopes(["read:demo/b"])
        .audience("demo-api")
        .ttl(Duration::from_secs(120))
        .request()
        .await
        .unwrap();
    assert_eq!(step.job(), "job-1");
    assert_eq!(step.step(), "read");
    assert_eq!(
        step.scopes().collect::<Vec<_>>(),
        ["read:demo/a", "read:demo/b"]
    );
    assert!(
        !format!("{step:?}").contains(step.token()),
        "Debug hides the token"
    );
    let token = step.token().to_owned();
    assert!(is_active(&broker, &token).await);
    step.finish().await.unwrap();
    assert!(
        !is_active(&broker, &token).await,
        "inactive as soon as finish returned"
    );
    let records = broker.audit_records();
    assert_eq!(records.last().unwrap()["event"], "token_revoked");
}

/// A step that fails with `?` drops its guard on the way out.
async fn failing_step(client: &Client, minted: &mut Option<String>) -> Result<(), Error> {
    let step = client
        .step("read")
        .scope("read:demo/x")
        .audience("demo-api")
        .request()
        .await?;
    *minted = Some(step.token().to_owned());
    // The step's work fails: a scope the step does not allow.
    let _never = client
        .step("read")
        .scope("write:demo/x")
        .audience("demo-api")
        .request()
        .await?;
    step.finish().await
}

#[tokio::test]
async fn a_step_that_fails_returns_early_or_panics_still_revokes() {
    let broker = TestBroker::start().await;
    let client = client_for(&broker).await;

    // 1. Failed: the error propagates with `?`.
    let mut minted = None;
    let error = failing_step(&client, &mut minted).await.unwrap_err();
    assert_eq!(error.oauth_code(), Some("invalid_scope"), "{error}");
    assert!(error.is_denial() && !error.is_unavailable());
    let failed = minted.unwrap();
    client.flush().await;
    assert!(!is_active(&broker, &failed).await, "failed step: revoked");

    // 2. Returned early: the guard simply goes out of scope.
    let early = {
        let step = read_token(&client, "read:demo/y").await;
        step.token().to_owned()
    };
    client.flush().await;
    assert!(!is_active(&broker, &early).await, "early return: revoked");

    // 3. Panicked: the task unwinds and drops the guard.
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let panicking_client = client.clone();
    let task = tokio::spawn(async move {
        let step = read_token(&panicking_client, "read:demo/z").await;
        sender.send(step.token().to_owned()).unwrap();
        panic!("the step's work panicked");
    });
    assert!(task.await.unwrap_err().is_panic());
    let panicked = receiver.await.unwrap();
    client.flush().await;
    assert!(!is_active(&broker, &panicked).await, "panic: revoked");

    // 4. Dropped outside any runtime: revoked before the drop returns.
    // (The thread is waited for off this runtime, which serves the broker.)
    let step = read_token(&client, "read:demo/w").await;
    let outside = step.token().to_owned();
    tokio::task::spawn_blocking(move || std::thread::spawn(move || drop(step)).join().unwrap())
        .await
        .unwrap();
    assert!(
        !is_active(&broker, &outside).await,
        "the thread-dropped token revoked"
    );
}

/// A `finish` whose future is dropped before it completes (a timeout, a
/// `select!`) still revokes: the guard goes with the token.
#[tokio::test]
async fn a_cancelled_finish_still_revokes() {
    let broker = TestBroker::start().await;
    let client = client_for(&broker).await;
    let step = read_token(&client, "read:demo/c").await;
    let token = step.token().to_owned();
    // Poll `finish` once, then drop it.
    let cancelled = tokio::select! {
        biased;
        _ = step.finish() => false,
        () = std::future::ready(()) => true,
    };
    assert!(cancelled, "the finish was cut short");
    client.flush().await;
    assert!(!is_active(&broker, &token).await);
}

#[tokio::test]
async fn completing_a_job_revokes_all_its_tokens() {
    let broker = TestBroker::start().await;
    let client = client_for(&broker).await;
    let job = client.job("deploy-7");
    assert_eq!(job.id(), "deploy-7");
    let read = job
        .step("read")
        .scope("read:demo/a")
        .audience("demo-api")
        .request()
        .await
        .unwrap();
    let write = job
        .step("write")
        .scope("write:demo/a")
        .audience("demo-api")
        .request()
        .await
        .unwrap();
    let other = client
        .job("deploy-8")
        .step("read")
        .scope("read:demo/a")
        .audience("demo-api")
        .request()
        .await
        .unwrap();
    let tokens = [read.token().to_owned(), write.token().to_owned()];
    job.clone().complete().await.unwrap();
    for token in &tokens {
        assert!(!is_active(&broker, token).await);
    }
    assert!(
        is_active(&broker, other.token()).await,
        "another job is untouched"
    );
    // The completed job gets no new token.
    let refused = job
        .step("read")
        .scope("read:demo/a")
        .audience("demo-api")
        .request()
        .await
        .unwrap_err();
    assert!(refused.is_denial(), "{refused}");
    // The guards' own revocations of already-revoked tokens are harmless.
    read.finish().await.unwrap();
    drop(write);
    other.finish().await.unwrap();
    client.flush().await;
}

#[tokio::test]
async fn wrong_credentials_and_an_unreachable_broker_are_told_apart() {
    let broker = TestBroker::start().await;
    let client = Client::builder(broker.issuer())
        .credentials(Credentials::new("demo-job", "not-the-secret"))
        .build()
        .await
        .unwrap();
    let error = client
        .step("read")
        .scope("read:demo/a")
        .audience("demo-api")
        .request()
        .await
        .unwrap_err();
    assert_eq!(error.oauth_code(), Some("invalid_client"));
    assert!(error.is_denial());
    assert!(!error.to_string().contains("not-the-secret"));

    // Nothing listens here.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let error = Client::builder(format!("http://{addr}"))
        .credentials(Credentials::new("a", "b"))
        .build()
        .await
        .unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");

    // Plain HTTP is for a loopback dev broker only.
    let error = Client::builder("http://stint.example.com")
        .credentials(Credentials::new("a", "b"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error:?}");
}

/// A broker stand-in whose revocation endpoint fails twice with 503 before
/// it acknowledges: `finish` must retry, not give up or report success early.
#[tokio::test]
async fn finish_retries_through_503s() {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let attempts = Arc::new(AtomicUsize::new(0));
    let metadata = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth2/token"),
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "revocation_endpoint": format!("{issuer}/oauth2/revoke"),
        "introspection_endpoint": format!("{issuer}/oauth2/introspect"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "access_token_signing_alg_values_supported": ["ES256"],
    });
    let counter = Arc::clone(&attempts);
    let app = axum::Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(move || async move { axum::Json(metadata) }),
        )
        .route(
            "/oauth2/token",
            post(|| async {
                axum::Json(serde_json::json!({
                    "access_token": "t.o.k", "token_type": "Bearer", "expires_in": 60,
                    "scope": "read:demo/a", "job": "j", "step": "read",
                }))
            }),
        )
        .route(
            "/oauth2/revoke",
            post(move || async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({"error": "temporarily_unavailable"})),
                    )
                } else {
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(serde_json::json!({})),
                    )
                }
            }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder(&issuer)
        .credentials(Credentials::new("a", "b"))
        .build()
        .await
        .unwrap();
    let step = client.step("read").request().await.unwrap();
    step.finish().await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "two 503s, then the 200");
    server.abort();
}

#[tokio::test]
async fn the_verifier_accepts_good_tokens_and_checks_scopes() {
    let broker = TestBroker::start().await;
    let client = client_for(&broker).await;
    let verifier = verifier_for(&broker).await;
    let step = client
        .step("write")
        .job("j-1")
        .scopes(["write:demo/reports/q3", "write:demo/cache"])
        .audience("demo-api")
        .request()
        .await
        .unwrap();
    let verified = verifier.verify(step.token()).await.unwrap();
    assert_eq!(verified.subject(), "demo-job");
    assert_eq!(verified.job(), "j-1");
    assert_eq!(verified.step(), "write");
    assert!(verified.allows("write", "demo/reports/q3"));
    assert!(verified.allows("write", "demo/cache"));
    assert!(!verified.allows("write", "demo/reports"));
    assert!(!verified.allows("write", "demo/reports/q3/x"));
    assert!(!verified.allows("read", "demo/cache"));
    step.finish().await.unwrap();
}

#[tokio::test]
async fn the_verifier_rejects_each_bad_token_with_its_own_error() {
    let broker = TestBroker::start().await;
    let client = client_for(&broker).await;
    let verifier = verifier_for(&broker).await;
    let mint = |audience: &'static str| {
        let client = client.clone();
        async move {
            client
                .step("read")
                .scope("read:demo/a")
                .audience(audience)
                .ttl(Duration::from_secs(60))
                .request()
                .await
                .unwrap()
        }
    };
    let rejected = |result: Result<stint_client::VerifiedToken, Error>| match result {
        Err(Error::InvalidToken(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    };

    // Another audience.
    let elsewhere = mint("other-api").await;
    assert_eq!(
        rejected(verifier.verify(elsewhere.token()).await),
        TokenError::WrongAudience
    );

    // Tampered: the payload changed, the signature kept.
    let good = mint("demo-api").await;
    let mut parts: Vec<String> = good.token().split('.').map(str::to_owned).collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["scope"] = "read:demo/a write:demo/a".into();
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    assert_eq!(
        rejected(verifier.verify(&parts.join(".")).await),
        TokenError::BadSignature
    );

    // alg none, and HS256 keyed with the broker's public JWK.
    let header = |alg: &str, kid: &str| {
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{kid}"}}"#))
    };
    let (good_header, _) = stint_tests::decode_jwt(good.token());
    let kid = good_header["kid"].as_str().unwrap();
    let none = format!("{}.{}.", header("none", kid), parts[1]);
    assert_eq!(rejected(verifier.verify(&none).await), TokenError::AlgNone);
    let jwks = broker
        .http
        .get(broker.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    let public = jwks.bytes().await.unwrap();
    let input = format!("{}.{}", header("HS256", kid), parts[1]);
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
        input.as_bytes(),
    );
    let hs256 = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
    assert_eq!(
        rejected(verifier.verify(&hs256).await),
        TokenError::UnsupportedAlgorithm("HS256".into())
    );

    // Expired: minted by a broker whose clock is ten minutes behind.
    broker.clock.advance(chrono::TimeDelta::minutes(-10));
    let old = mint("demo-api").await;
    assert_eq!(
        rejected(verifier.verify(old.token()).await),
        TokenError::Expired
    );
    // Not yet valid: minted ten minutes ahead.
    broker.clock.advance(chrono::TimeDelta::minutes(20));
    let future = mint("demo-api").await;
    assert_eq!(
        rejected(verifier.verify(future.token()).await),
        TokenError::NotYetValid
    );
    broker.clock.advance(chrono::TimeDelta::minutes(-10));

    // Signed by another broker: its key is unknown here, and its issuer too.
    let stranger = TestBroker::start().await;
    let foreign = read_token(&client_for(&stranger).await, "read:demo/a").await;
    assert_eq!(
        rejected(verifier.verify(foreign.token()).await),
        TokenError::UnknownKey
    );
    assert!(matches!(
        rejected(verifier.verify("not.a-token").await),
        TokenError::Malformed(_)
    ));
    // Revoked while their brokers still run (not at the runtime's end).
    for step in [elsewhere, good, old, future, foreign] {
        step.finish().await.unwrap();
    }
}

#[tokio::test]
async fn unknown_key_refreshes_are_rate_limited() {
    let broker = TestBroker::start().await;
    let stranger = TestBroker::start().await;
    let foreign = read_token(&client_for(&stranger).await, "read:demo/a").await;
    let jwks_fetches = |metrics: String| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("stint_http_request_duration_seconds_count")
                    && l.contains("route=\"/.well-known/jwks.json\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    let verifier = Verifier::builder(broker.issuer())
        .audience("demo-api")
        .min_refresh_interval(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    assert_eq!(jwks_fetches(broker.metrics().await), 1, "fetched at build");
    // Within the interval of that fetch, an unknown kid fetches nothing.
    assert!(verifier.verify(foreign.token()).await.is_err());
    assert_eq!(jwks_fetches(broker.metrics().await), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..20 {
        assert!(verifier.verify(foreign.token()).await.is_err());
    }
    assert_eq!(
        jwks_fetches(broker.metrics().await),
        2,
        "twenty unknown kids cost one refresh"
    );
    foreign.finish().await.unwrap();
}

#[tokio::test]
async fn verify_active_asks_the_broker() {
    let broker = TestBroker::start().await;
    let client = client_for(&broker).await;
    let verifier = Verifier::builder(broker.issuer())
        .audience("demo-api")
        .introspection(
            Credentials::new(broker.client_id.clone(), broker.client_secret.clone()),
            Duration::ZERO,
        )
        .build()
        .await
        .unwrap();
    let step = read_token(&client, "read:demo/a").await;
    let token = step.token().to_owned();
    assert!(verifier.verify_active(&token).await.is_ok());
    step.finish().await.unwrap();
    assert!(
        verifier.verify(&token).await.is_ok(),
        "offline, a revoked token still verifies"
    );
    assert!(matches!(
        verifier.verify_active(&token).await,
        Err(Error::Inactive)
    ));
}

#[tokio::test]
async fn a_custom_ca_is_trusted_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let mut config =
        stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.tls = Some(stint_server::TlsFiles {
        cert: ca.cert_path.clone(),
        key: ca.key_path.clone(),
    });
    let server = stint_server::start(config).await.unwrap();
    let issuer = server.issuer().to_owned();
    assert!(issuer.starts_with("https://"));
    let dev: stint_proto::DevClient =
        serde_json::from_slice(&std::fs::read(server.dev_client_path().unwrap()).unwrap()).unwrap();
    let credentials = Credentials::new(dev.client_id, dev.client_secret);

    let untrusted = Client::builder(&issuer)
        .credentials(credentials.clone())
        .build()
        .await
        .unwrap_err();
    // A configuration error, not an outage: a retry will not help.
    assert!(
        matches!(untrusted, Error::UntrustedCertificate { .. }),
        "{untrusted:?}"
    );
    assert!(!untrusted.is_unavailable() && !untrusted.is_denial());
    let untrusted_keys = Verifier::builder(&issuer)
        .audience("demo-api")
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(untrusted_keys, Error::UntrustedCertificate { .. }),
        "{untrusted_keys:?}"
    );

    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let client = Client::builder(&issuer)
        .credentials(credentials)
        .ca_file(&ca_file)
        .only_custom_roots()
        .build()
        .await
        .unwrap();
    let step = read_token(&client, "read:demo/a").await;
    let verifier = Verifier::builder(&issuer)
        .audience("demo-api")
        .ca_pem(ca.ca_pem.as_bytes())
        .build()
        .await
        .unwrap();
    assert!(verifier.verify(step.token()).await.is_ok());
    step.finish().await.unwrap();
    server.shutdown().await;
}
