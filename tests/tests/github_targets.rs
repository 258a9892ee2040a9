//! GitHub targets end to end: the in-process broker asks the fake GitHub
//! (tests/src/github.rs, as strict as GitHub's documentation) for
//! installation tokens over HTTPS on loopback. A step token becomes a
//! token for exactly its repositories and permissions; every way the step
//! ends revokes it at GitHub; GitHub's refusals each become their own
//! OAuth error, audited with GitHub's message; a revocation GitHub does not
//! take is retried; a token whose creation got no answer is irrevocable,
//! in the audit and the metrics.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use serde_json::Value;
use std::time::Duration;
use stint_core::secret;
use stint_tests::github::{FakeGithub, Fault, Route};
use stint_tests::{BrokerOptions, TestBroker, eventually, policy_with};

const OPERATOR_KEY: &str = "stint_operator_olga";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const INSTALLATION: u64 = 7001;

struct Fixture {
    github: FakeGithub,
    broker: TestBroker,
    _keys: tempfile::TempDir,
}

/// The policy: step `push` of workflow `demo` may ask for contents and
/// pull requests on acme's repositories, and for contents on `nobody`'s
/// (where the App is not installed), through target `github`; target
/// `github-wrong` is the same App with another App's key.
fn github_policy(github: &FakeGithub, token_key: &std::path::Path) -> String {
    let target = |name: &str, key: &std::path::Path| {
        format!(
            r#"
[targets.{name}]
kind = "github"
client_id = "{}"
private_key_file = "{}"
token_key_file = "{}"
api_url = "{}"
ca_file = "{}"
timeout_secs = 5
"#,
            github.client_id,
            key.display(),
            token_key.display(),
            github.api_url,
            github.ca_file.display(),
        )
    };
    policy_with(&format!(
        r#"
[workflows.demo.steps.push]
scopes = ["contents.write:github/acme/*", "contents.read:github/acme/*", "pull_requests.write:github/acme/*", "contents.read:github/nobody/*", "contents.read:github-wrong/acme/*"]
targets = ["github", "github-wrong"]
default_ttl = "5m"
max_ttl = "15m"

[operators.olga]
groups = ["oncall"]
key_sha256 = "{}"
{}{}"#,
        secret::hash_hex(OPERATOR_KEY),
        target("github", &github.key_pkcs1_pem),
        target("github-wrong", &github.wrong_key_pem),
    ))
}

async fn fixture() -> Fixture {
    let github = FakeGithub::start().await;
    // The installation holds contents and issues, not pull requests.
    github.install(
        "acme",
        INSTALLATION,
        &["web", "api", "secrets"],
        &[("contents", "write"), ("issues", "write")],
    );
    let keys = tempfile::tempdir().unwrap();
    let token_key = keys.path().join("github-tokens.key");
    std::fs::write(&token_key, [0x5au8; 32]).unwrap();
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(github_policy(&github, &token_key)),
        ..BrokerOptions::default()
    })
    .await;
    Fixture {
        github,
        broker,
        _keys: keys,
    }
}

async fn step_token(broker: &TestBroker, job: &str, scope: &str, audience: &str) -> String {
    let response = broker
        .post_form(
            stint_proto::TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "push"),
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

/// The exchange: status, `Retry-After`, body.
async fn try_exchange(
    broker: &TestBroker,
    token: &str,
    target: &str,
) -> (u16, Option<String>, Value) {
    let response = broker
        .http
        .post(broker.url(stint_proto::TOKEN_PATH))
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", token),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("audience", target),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    (
        status,
        retry_after,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn exchange(broker: &TestBroker, token: &str) -> Value {
    let (status, _, body) = try_exchange(broker, token, "github").await;
    assert_eq!(status, 200, "the exchange failed: {body}");
    body
}

/// What GitHub answers `token` for `GET path`.
async fn github_get(github: &FakeGithub, token: &str, path: &str) -> u16 {
    github_client(github)
        .get(format!("{}{path}", github.api_url))
        .bearer_auth(token)
        .header("user-agent", "stint-tests")
        .header("accept", "application/vnd.github+json")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn github_put(github: &FakeGithub, token: &str, path: &str) -> u16 {
    github_client(github)
        .put(format!("{}{path}", github.api_url))
        .bearer_auth(token)
        .header("user-agent", "stint-tests")
        .json(&serde_json::json!({ "message": "step", "content": "aGVsbG8=" }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn github_client(github: &FakeGithub) -> reqwest::Client {
    let ca = std::fs::read(&github.ca_file).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap()
}

async fn wait_revoked(github: &FakeGithub, token: &str, timeout: Duration) {
    eventually(timeout, "GitHub to have revoked the token", || async {
        (!github.is_live(token)).then_some(())
    })
    .await;
}

/// The audit record of `event` for credential `id`, once it exists.
async fn wait_record(broker: &TestBroker, event: &str, id: &str) -> Value {
    eventually(
        Duration::from_secs(20),
        &format!("a {event} record for {id}"),
        || async {
            broker
                .audit_records()
                .into_iter()
                .find(|r| r["event"] == event && r["target"]["credential_id"] == id)
        },
    )
    .await
}

#[tokio::test]
async fn a_step_gets_a_token_for_its_repository_and_permission_and_nothing_else() {
    let f = fixture().await;
    let token = step_token(
        &f.broker,
        "gh-1",
        "contents.write:github/acme/web",
        "github",
    )
    .await;
    let credential = exchange(&f.broker, &token).await;
    assert_eq!(credential["kind"], "github", "{credential}");
    assert_eq!(
        credential["issued_token_type"],
        stint_proto::TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN
    );
    assert_eq!(credential["token_type"], "N_A");
    assert_eq!(credential["scope"], "contents.write:github/acme/web");
    let github = &credential["github"];
    assert_eq!(github["installation_id"], INSTALLATION);
    assert_eq!(github["repositories"], serde_json::json!(["acme/web"]));
    assert_eq!(github["permissions"]["contents"], "write");
    assert!(github["permissions"].get("issues").is_none(), "{github}");
    assert!(credential["expires_in"].as_u64().unwrap() <= 300);
    let secret = credential["access_token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("ghs_"), "{credential}");

    // GitHub was asked for exactly that: one repository, one permission.
    let issued = f.github.tokens();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].repositories, vec!["web".to_owned()]);
    assert_eq!(issued[0].repository_selection, "selected");
    assert_eq!(
        issued[0].permissions.get("contents").map(String::as_str),
        Some("write")
    );
    assert!(!issued[0].permissions.contains_key("issues"));

    // It works for that repository and permission only.
    assert_eq!(github_get(&f.github, &secret, "/repos/acme/web").await, 200);
    assert_eq!(
        github_put(&f.github, &secret, "/repos/acme/web/contents/README.md").await / 100,
        2
    );
    assert_eq!(github_get(&f.github, &secret, "/repos/acme/api").await, 404);
    assert_eq!(
        github_put(&f.github, &secret, "/repos/acme/secrets/contents/README.md").await,
        404
    );

    // Audited with the grant and the token's hashes, never the token.
    let id = credential["credential_id"].as_str().unwrap();
    let minted = wait_record(&f.broker, "target_credential_minted", id).await;
    let grant = &minted["target"]["grant"];
    assert_eq!(grant["installation"], INSTALLATION, "{minted}");
    assert_eq!(grant["repositories"], serde_json::json!(["acme/web"]));
    assert_eq!(grant["token_sha256"], issued[0].sha256_hex);
    let hashed = base64::engine::general_purpose::STANDARD
        .encode(hex::decode(&issued[0].sha256_hex).unwrap());
    assert_eq!(grant["hashed_token"], hashed);
    assert_eq!(minted["target"]["upstream_id"], hashed);
    for record in f.broker.audit_records() {
        assert!(
            !record.to_string().contains(&secret),
            "the token is never audited"
        );
    }

    // The step ends: GitHub revokes it, and the audit says how long it
    // outlived the step.
    let response = f
        .broker
        .post_form(stint_proto::REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.status(), 200);
    wait_revoked(&f.github, &secret, Duration::from_secs(20)).await;
    let revoked = wait_record(&f.broker, "target_credential_revoked", id).await;
    assert_eq!(revoked["target"]["outcome"], "revoked", "{revoked}");
    assert_eq!(revoked["target"]["trigger"], "token");
    assert!(
        revoked["target"]["exposure_secs"].as_i64().unwrap() >= 0,
        "{revoked}"
    );
    assert_eq!(revoked["target"]["grant"]["hashed_token"], hashed);
    assert_eq!(github_get(&f.github, &secret, "/repos/acme/web").await, 401);
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
async fn revoking_the_job_or_stopping_the_workload_revokes_the_token_at_github() {
    let f = fixture().await;
    let broker = &f.broker;
    let scope = "contents.write:github/acme/api";

    let token = step_token(broker, "job-a", scope, "github").await;
    let by_job = exchange(broker, &token).await;
    let response = broker.post_form("/v1/jobs/job-a/revoke", &[]).await;
    assert_eq!(response.status(), 200);
    wait_revoked(
        &f.github,
        by_job["access_token"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let record = wait_record(
        broker,
        "target_credential_revoked",
        by_job["credential_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(record["target"]["trigger"], "job", "{record}");

    let token = step_token(broker, "job-b", scope, "github").await;
    let by_stop = exchange(broker, &token).await;
    assert_eq!(
        operator_post(broker, "/v1/workloads/demo-job/stop").await,
        200
    );
    wait_revoked(
        &f.github,
        by_stop["access_token"].as_str().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let record = wait_record(
        broker,
        "target_credential_revoked",
        by_stop["credential_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(record["target"]["trigger"], "workload", "{record}");
}

#[tokio::test]
async fn githubs_refusals_are_distinct_oauth_errors_and_nothing_is_handed_out() {
    let f = fixture().await;
    let broker = &f.broker;
    let refused = |status: u16, body: &Value, code: &str, needle: &str| {
        assert_eq!(body["error"], code, "{status} {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(needle), "{description}");
        assert!(!description.contains("ghs_"), "{description}");
    };

    // 404: the App is not installed on the owner.
    let token = step_token(broker, "r-404", "contents.read:github/nobody/x", "github").await;
    let (status, _, body) = try_exchange(broker, &token, "github").await;
    assert_eq!(status, 400);
    refused(
        status,
        &body,
        "invalid_target",
        "not installed on account \"nobody\"",
    );

    // 422: the installation does not hold the permission.
    let token = step_token(
        broker,
        "r-422",
        "pull_requests.write:github/acme/web",
        "github",
    )
    .await;
    let (status, _, body) = try_exchange(broker, &token, "github").await;
    assert_eq!(status, 400);
    refused(
        status,
        &body,
        "invalid_scope",
        "The permissions requested are not granted to this installation",
    );

    // 401: the App's JWT is signed with another App's key.
    let token = step_token(
        broker,
        "r-401",
        "contents.read:github-wrong/acme/web",
        "github-wrong",
    )
    .await;
    let (status, _, body) = try_exchange(broker, &token, "github-wrong").await;
    assert_eq!(status, 500);
    refused(
        status,
        &body,
        "server_error",
        "A JSON web token could not be decoded",
    );

    // 5xx: GitHub is down; nothing was made.
    f.github.fail_next(
        Route::CreateToken,
        1,
        Fault::Status {
            status: 503,
            retry_after_secs: None,
            secondary: false,
        },
    );
    let token = step_token(broker, "r-503", "contents.read:github/acme/web", "github").await;
    let (status, _, body) = try_exchange(broker, &token, "github").await;
    assert_eq!(status, 503);
    refused(
        status,
        &body,
        "temporarily_unavailable",
        "GitHub answered 503",
    );

    // A secondary rate limit: Retry-After is passed on, and the target is
    // closed to GitHub calls until it has passed.
    f.github.fail_next(
        Route::CreateToken,
        1,
        Fault::Status {
            status: 403,
            retry_after_secs: Some(30),
            secondary: true,
        },
    );
    let token = step_token(broker, "r-429", "contents.read:github/acme/web", "github").await;
    let (status, retry_after, body) = try_exchange(broker, &token, "github").await;
    assert_eq!(status, 503);
    refused(status, &body, "temporarily_unavailable", "rate limited");
    assert_eq!(retry_after.as_deref(), Some("30"), "{body}");
    let calls = f.github.requests().len();
    let token = step_token(broker, "r-429b", "contents.read:github/acme/web", "github").await;
    let (status, retry_after, body) = try_exchange(broker, &token, "github").await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some());
    assert_eq!(
        f.github.requests().len(),
        calls,
        "no call to GitHub while its limit holds"
    );

    // Every refusal is audited with GitHub's words; no token is live.
    let denied: Vec<Value> = broker
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "target_credential_denied")
        .collect();
    assert_eq!(denied.len(), 6, "{denied:?}");
    assert!(
        denied.iter().any(|r| r["detail"]
            .as_str()
            .unwrap_or("")
            .contains("GitHub request id")),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|r| r["target"]["request_id"].is_string()),
        "{denied:?}"
    );
    assert!(
        f.github
            .tokens()
            .iter()
            .all(|t| t.revoked || t.repositories.is_empty())
    );
    assert!(
        f.github.tokens().is_empty(),
        "nothing was handed out half-made"
    );
}

#[tokio::test]
async fn a_revocation_github_refuses_is_retried_until_it_takes() {
    let f = fixture().await;
    let token = step_token(
        &f.broker,
        "retry-1",
        "contents.read:github/acme/web",
        "github",
    )
    .await;
    let credential = exchange(&f.broker, &token).await;
    let secret = credential["access_token"].as_str().unwrap().to_owned();
    let id = credential["credential_id"].as_str().unwrap().to_owned();
    f.github.fail_next(
        Route::RevokeToken,
        2,
        Fault::Status {
            status: 502,
            retry_after_secs: None,
            secondary: false,
        },
    );
    let response = f
        .broker
        .post_form(stint_proto::REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(response.status(), 200);
    let failed = wait_record(&f.broker, "target_revocation_failed", &id).await;
    assert!(
        failed["detail"].as_str().unwrap().contains("502"),
        "{failed}"
    );
    assert!(f.github.is_live(&secret), "still live while GitHub refuses");
    // The queue retries on the broker's clock (1 s, then 2 s, with
    // jitter): move it on until GitHub takes the revocation.
    eventually(
        Duration::from_secs(30),
        "GitHub to have revoked the token",
        || async {
            f.broker.clock.advance(chrono::TimeDelta::seconds(2));
            (!f.github.is_live(&secret)).then_some(())
        },
    )
    .await;
    let revoked = wait_record(&f.broker, "target_credential_revoked", &id).await;
    assert!(
        revoked["target"]["attempts"].as_u64().unwrap() >= 3,
        "{revoked}"
    );
}

#[tokio::test]
async fn a_token_request_left_without_an_answer_is_irrevocable_and_visible() {
    let f = fixture().await;
    f.github.fail_next(Route::CreateToken, 1, Fault::Drop);
    let token = step_token(
        &f.broker,
        "drop-1",
        "contents.read:github/acme/web",
        "github",
    )
    .await;
    let (status, _, body) = try_exchange(&f.broker, &token, "github").await;
    assert_eq!(status, 503, "{body}");
    let record = eventually(Duration::from_secs(20), "an irrevocable record", || async {
        f.broker
            .audit_records()
            .into_iter()
            .find(|r| r["event"] == "target_credential_irrevocable")
    })
    .await;
    assert!(
        record["detail"]
            .as_str()
            .unwrap()
            .contains("expires it within an hour"),
        "{record}"
    );
    // The queue records the state after the audit record is written.
    let metrics = eventually(
        Duration::from_secs(20),
        "the irrevocable credential in the metrics",
        || async {
            let metrics = f.broker.metrics().await;
            metrics
                .contains("stint_target_credentials_open{state=\"irrevocable\"} 1")
                .then_some(metrics)
        },
    )
    .await;
    assert!(
        metrics.contains("stint_github_rate_limit_remaining{metered=\"app\"}"),
        "{metrics}"
    );
}
