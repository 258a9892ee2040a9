//! What the SDK sends, checked against a stand-in broker that records the
//! requests: the credential a federated client introspects with, and how a
//! TLS failure that retrying will not fix is reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::http::HeaderMap;
use axum::routing::{get, post};
use std::sync::{Arc, Mutex};
use stint_client::{Client, Credentials, Error, SubjectToken};

/// What the stand-in's introspection endpoint was sent.
#[derive(Debug, Default, Clone)]
struct Seen {
    authorization: Vec<Option<String>>,
    bodies: Vec<String>,
}

/// A stand-in broker on loopback: metadata, and an introspection endpoint
/// that answers active and records the request.
async fn stand_in() -> (String, Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
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
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = Arc::clone(&seen);
    let app = axum::Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(move || async move { axum::Json(metadata) }),
        )
        .route(
            "/oauth2/introspect",
            post(move |headers: HeaderMap, body: String| async move {
                let mut seen = record.lock().unwrap();
                seen.authorization.push(
                    headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                seen.bodies.push(body);
                axum::Json(serde_json::json!({"active": true, "sub": "web-deployer"}))
            }),
        );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (issuer, seen, server)
}

/// A federated client introspects with its platform ID token as the bearer
/// credential (the token it asks about in the form), read again at each
/// call from a file, so a rotated token is the one sent.
#[tokio::test]
async fn a_federated_client_introspects_with_its_id_token() {
    let (issuer, seen, server) = stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("id-token");
    std::fs::write(&file, "platform.id.token-1\n").unwrap();
    let client = Client::builder(&issuer)
        .subject_token(SubjectToken::File(file.clone()))
        .build()
        .await
        .unwrap();
    let answer = client.introspect("the.step.token").await.unwrap();
    assert!(answer.active);
    std::fs::write(&file, "platform.id.token-2").unwrap();
    client.introspect("the.step.token").await.unwrap();

    let by_value = Client::builder(&issuer)
        .subject_token(SubjectToken::Value("platform.id.token-3".into()))
        .build()
        .await
        .unwrap();
    by_value.introspect("the.step.token").await.unwrap();

    let with_secret = Client::builder(&issuer)
        .credentials(Credentials::new("demo-job", "s3cret"))
        .build()
        .await
        .unwrap();
    with_secret.introspect("the.step.token").await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.authorization,
        [
            Some("Bearer platform.id.token-1".to_owned()),
            Some("Bearer platform.id.token-2".to_owned()),
            Some("Bearer platform.id.token-3".to_owned()),
            Some(stint_tests::basic("demo-job", "s3cret")),
        ]
    );
    for body in &seen.bodies {
        assert_eq!(body, "token=the.step.token", "only the token, in the form");
    }
    server.abort();
}

/// An `https://` issuer whose server speaks plain HTTP: the handshake can
/// never succeed, so it is a protocol error, not an unreachable broker.
#[tokio::test]
async fn https_to_a_plain_http_server_is_not_unavailability() {
    let (issuer, _seen, server) = stand_in().await;
    let https = issuer.replacen("http://", "https://", 1);
    let error = Client::builder(&https)
        .credentials(Credentials::new("demo-job", "s3cret"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Protocol { .. }), "{error:?}");
    assert!(!error.is_unavailable(), "{error}");
    assert!(error.to_string().contains("TLS"), "{error}");
    server.abort();
}
