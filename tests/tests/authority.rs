//! Who may revoke what, and the input rules that keep a grant from meaning
//! something else to a resource server (issue 12, "Authority and input").
//!
//! The rule: revocation authority comes from the workload's own credential
//! (its client secret, its platform ID token). A step token presented as
//! `Authorization: Bearer` may revoke itself, while it is active, and
//! nothing else: not its job, not its step, not another token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use stint_proto::{REVOCATION_PATH, TOKEN_PATH};
use stint_tests::TestBroker;

async fn token(broker: &TestBroker, step: &str, scope: &str, job: &str) -> String {
    broker.mint(step, scope, &[("job", job)]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn active(broker: &TestBroker, token: &str) -> bool {
    broker.introspect(token).await["active"] == true
}

/// POST with `Authorization: Bearer`, a form body or none.
async fn post_bearer(
    broker: &TestBroker,
    bearer: &str,
    path: &str,
    form: Option<&[(&str, &str)]>,
) -> (u16, Value) {
    let mut request = broker.http.post(broker.url(path)).bearer_auth(bearer);
    if let Some(form) = form {
        request = request.form(form);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn last_record(broker: &TestBroker) -> Value {
    broker.audit_records().pop().unwrap()
}

#[tokio::test]
async fn a_step_token_cannot_revoke_its_job_or_its_step() {
    let broker = TestBroker::start().await;
    let read = token(&broker, "read", "read:demo/a", "build-1").await;
    let write = token(&broker, "write", "write:demo/a", "build-1").await;

    for path in [
        "/v1/jobs/build-1/revoke",
        "/v1/jobs/build-1/steps/write/revoke",
    ] {
        let (status, body) = post_bearer(&broker, &read, path, None).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"], "unauthorized_client", "{path}");
        let record = last_record(&broker);
        assert_eq!(record["event"], "job_revocation_denied", "{path}");
        assert_eq!(record["reason"], "not_revocation_authority", "{path}");
    }
    // The job's other step is untouched, and the job still mints.
    assert!(active(&broker, &write).await);
    assert!(active(&broker, &read).await);
    token(&broker, "write", "write:demo/b", "build-1").await;

    // Revoked, the token is refused just the same (before the fix, a
    // revoked token still spoke for its job).
    let (status, _) = post_bearer(
        &broker,
        &read,
        REVOCATION_PATH,
        Some(&[("token", read.as_str())]),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!active(&broker, &read).await);
    let (status, body) = post_bearer(&broker, &read, "/v1/jobs/build-1/revoke", None).await;
    assert_eq!(status, 403, "{body}");
    assert!(active(&broker, &write).await);

    // The workload's own credential revokes the job.
    let response = broker
        .http
        .post(broker.url("/v1/jobs/build-1/revoke"))
        .basic_auth(&broker.client_id, Some(&broker.client_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!active(&broker, &write).await);
}

#[tokio::test]
async fn a_step_token_revokes_itself_and_nothing_else() {
    let broker = TestBroker::start().await;
    let a = token(&broker, "read", "read:demo/a", "build-2").await;
    let b = token(&broker, "read", "read:demo/b", "build-2").await;

    // Token A cannot revoke token B, not even of the same job and step.
    let (status, body) =
        post_bearer(&broker, &a, REVOCATION_PATH, Some(&[("token", b.as_str())])).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "unauthorized_client");
    assert_eq!(last_record(&broker)["reason"], "not_revocation_authority");
    assert!(active(&broker, &b).await);

    // Token A revokes itself.
    let (status, _) =
        post_bearer(&broker, &a, REVOCATION_PATH, Some(&[("token", a.as_str())])).await;
    assert_eq!(status, 200);
    assert!(!active(&broker, &a).await);
    let record = last_record(&broker);
    assert_eq!(record["event"], "token_revoked");
    assert_eq!(record["client_id"], "demo-job");

    // Revoked, A may still "revoke" itself (nothing to do, RFC 7009 says
    // 200), but never B.
    let (status, _) =
        post_bearer(&broker, &a, REVOCATION_PATH, Some(&[("token", a.as_str())])).await;
    assert_eq!(status, 200);
    assert_eq!(last_record(&broker)["reason"], "already_revoked");
    let (status, _) =
        post_bearer(&broker, &a, REVOCATION_PATH, Some(&[("token", b.as_str())])).await;
    assert_eq!(status, 403);
    assert!(active(&broker, &b).await);
}

#[tokio::test]
async fn another_workloads_step_token_revokes_nothing_of_ours() {
    let broker = TestBroker::start().await;
    let ours = token(&broker, "read", "read:demo/a", "shared-id").await;
    let other = broker
        .try_mint_as(
            ("other-job", &stint_tests::test_secret("other-job")),
            "read",
            "read:demo/a",
            &[("job", "shared-id")],
        )
        .await;
    let other: Value = other.json().await.unwrap();
    let other = other["access_token"].as_str().unwrap();
    let (status, _) = post_bearer(
        &broker,
        other,
        REVOCATION_PATH,
        Some(&[("token", ours.as_str())]),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post_bearer(&broker, other, "/v1/jobs/shared-id/revoke", None).await;
    assert_eq!(status, 403);
    assert!(active(&broker, &ours).await);
}

/// RFC 7009 section 2.2: "invalid tokens do not cause an error response".
#[tokio::test]
async fn invalid_malformed_and_oversized_tokens_are_revoked_with_200() {
    let broker = TestBroker::start().await;
    let oversized = "a".repeat(64 * 1024 - 100);
    for junk in [
        "not-a-token",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
        &oversized,
    ] {
        let response = broker.post_form(REVOCATION_PATH, &[("token", junk)]).await;
        assert_eq!(
            response.status(),
            200,
            "{}",
            junk.chars().take(20).collect::<String>()
        );
    }
    // A missing token parameter is still a malformed request.
    let response = broker.post_form(REVOCATION_PATH, &[]).await;
    assert_eq!(response.status(), 400);
    // And the client must still authenticate.
    let response = broker
        .http
        .post(broker.url(REVOCATION_PATH))
        .form(&[("token", "not-a-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn scopes_with_characters_a_consumer_splits_on_are_refused_at_mint() {
    let broker = TestBroker::start().await;
    for scope in [
        "read:demo/x,write:prod/db",
        "read:demo/x+write:prod/db",
        "read:demo/a=b",
    ] {
        let response = broker.try_mint("read", scope, &[]).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{scope}: {body}");
        assert_eq!(body["error"], "invalid_scope", "{scope}");
    }
}

#[tokio::test]
async fn path_significant_job_ids_are_refused_at_mint() {
    let broker = TestBroker::start().await;
    for job in [".", ".."] {
        let response = broker
            .try_mint("read", "read:demo/a", &[("job", job)])
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 400, "{job}: {body}");
        assert_eq!(body["error"], "invalid_request", "{job}");
    }
    // A job id that is not a dot-segment is fine, and revocable by name.
    token(&broker, "read", "read:demo/a", "...").await;
    let response = broker.post_form("/v1/jobs/.../revoke", &[]).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_token_endpoint_path_is_unaffected() {
    // A sanity check that the bearer rules did not leak into minting: a
    // step token is no client credential at the token endpoint.
    let broker = TestBroker::start().await;
    let a = token(&broker, "read", "read:demo/a", "build-3").await;
    let (status, body) = post_bearer(
        &broker,
        &a,
        TOKEN_PATH,
        Some(&[
            ("grant_type", "client_credentials"),
            ("step", "read"),
            ("scope", "read:demo/a"),
        ]),
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

/// Credentials in the Authorization header are checked before the body is
/// read: a bad one gets its 401 at once, not after the body timeout.
#[tokio::test]
async fn revocation_checks_the_authorization_header_before_the_body() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let broker = TestBroker::start().await;
    let addr = broker.server().local_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {REVOCATION_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
        stint_tests::basic("demo-job", "wrong secret")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // No body is ever sent; the answer comes well before the 10 s body timeout.
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer before the body timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// A token that expired a moment ago is still accepted by verifiers with a
/// clock leeway: revoking it must put it on the feed, not answer "already
/// expired".
#[tokio::test]
async fn a_token_within_the_verifier_leeway_is_still_revoked() {
    let broker = TestBroker::start().await;
    let token = token(&broker, "read", "read:demo/a", "lee-1").await;
    // Five minutes to live, and ten seconds more.
    broker.clock.advance(chrono::TimeDelta::seconds(310));
    let response = broker
        .post_form(REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.status(), 200);
    let record = broker.audit_records().pop().unwrap();
    assert_eq!(record["event"], "token_revoked", "{record}");
    // Past the largest leeway, there is nothing left to revoke.
    broker.clock.advance(chrono::TimeDelta::seconds(600));
    let response = broker
        .post_form(REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        broker.audit_records().pop().unwrap()["reason"],
        "already_expired"
    );
}
