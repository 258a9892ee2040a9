//! Operator-approved elevation through the real broker: approval requests
//! at the token endpoint, operators deciding under /v1/approvals, tokens
//! minted under an approval, its expiry and revocation, and the webhook.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stint_core::secret;
use stint_proto::{APPROVALS_PATH, TOKEN_PATH};
use stint_tests::idp::TestIdp;
use stint_tests::{BrokerOptions, TestBroker, decode_jwt, eventually, policy_with};

const STANDING: &str = "deploy:demo/staging";
const ELEVATED: &str = "deploy:demo/prod/web";

fn operator_key(name: &str) -> String {
    format!("stint_operator_{name}")
}

/// The demo policy plus a deploy step whose production scopes need two
/// approvals from `sre`; carol is in `sre` but owns `demo-job`; dave is in
/// `finance`.
fn elevation_policy(extra: &str) -> String {
    let key = |name: &str| secret::hash_hex(&operator_key(name));
    policy_with(&format!(
        r#"
[workflows.demo.steps.deploy]
scopes = ["{STANDING}"]

[workflows.demo.steps.deploy.elevation]
scopes = ["deploy:demo/prod/*"]
approver_groups = ["sre"]
quorum = 2
max_duration = "30m"
max_wait = "10m"
reason_required = true

[operators.alice]
groups = ["sre"]
key_sha256 = "{alice}"

[operators.bob]
groups = ["sre"]
key_sha256 = "{bob}"

[operators.carol]
groups = ["sre"]
owns = ["demo-job"]
key_sha256 = "{carol}"

[operators.dave]
groups = ["finance"]
key_sha256 = "{dave}"
{extra}
"#,
        alice = key("alice"),
        bob = key("bob"),
        carol = key("carol"),
        dave = key("dave"),
    ))
}

async fn broker() -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        policy: Some(elevation_policy("")),
        ..BrokerOptions::default()
    })
    .await
}

/// Ask for the deploy step with the elevated scope for `job`.
async fn ask(broker: &TestBroker, job: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    ask_for(broker, &format!("{STANDING} {ELEVATED}"), job, extra).await
}

/// Ask for the deploy step with `scope` for `job`.
async fn ask_for(
    broker: &TestBroker,
    scope: &str,
    job: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("step", "deploy"),
        ("scope", scope),
        ("audience", "demo-api"),
        ("job", job),
        ("reason", "hotfix for INC-42"),
    ];
    form.extend_from_slice(extra);
    let response = broker.post_form(TOKEN_PATH, &form).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Poll as a well-behaved client does: wait the interval, then ask again.
async fn poll(broker: &TestBroker, job: &str, id: &str) -> (u16, Value) {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    ask(broker, job, &[("approval_id", id)]).await
}

/// Call the approvals API as operator `name`.
async fn operator(
    broker: &TestBroker,
    name: &str,
    verb: &str,
    id: &str,
    body: Value,
) -> (u16, Value) {
    let response = broker
        .http
        .post(broker.url(&format!("{APPROVALS_PATH}/{id}/{verb}")))
        .bearer_auth(operator_key(name))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn show(broker: &TestBroker, id: &str) -> Value {
    let response = broker
        .http
        .get(broker.url(&format!("{APPROVALS_PATH}/{id}")))
        .bearer_auth(operator_key("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Make a request and return its id, checking the pending answer's shape.
async fn request(broker: &TestBroker, job: &str) -> String {
    let (status, body) = ask(broker, job, &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "authorization_pending", "{body}");
    assert_eq!(body["interval"], 1);
    assert_eq!(body["job"], job);
    assert!(body["expires_in"].as_u64().unwrap() > 590, "{body}");
    assert_eq!(
        body["approval"]["scopes"],
        json!([ELEVATED]),
        "only the elevated scope"
    );
    body["approval_id"].as_str().unwrap().to_owned()
}

async fn approve_by_two(broker: &TestBroker, id: &str, duration: &str) {
    let (status, body) = operator(broker, "alice", "approve", id, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = operator(
        broker,
        "bob",
        "approve",
        id,
        json!({ "duration": duration, "comment": "go" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "approved", "{body}");
}

fn events<'a>(records: &'a [Value], id: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter(|r| r["approval_id"] == id)
        .map(|r| r["event"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_quorum_of_two_distinct_operators_grants_a_windowed_elev_token() {
    let broker = broker().await;
    let id = request(&broker, "job-quorum").await;

    // Asking again without the id finds the same request, not a new one.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, body) = ask(&broker, "job-quorum", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "{body}"
    );
    assert_eq!(body["approval_id"], id.as_str());

    // Operators see it with its full context.
    let listed: Value = broker
        .http
        .get(broker.url(&format!("{APPROVALS_PATH}?state=pending")))
        .bearer_auth(operator_key("bob"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let request = &listed["approvals"][0];
    assert_eq!(request["id"], id.as_str());
    assert_eq!(request["workload"], "demo-job");
    assert_eq!(request["client_id"], "demo-job");
    assert_eq!(request["job"], "job-quorum");
    assert_eq!(request["step"], "demo/deploy");
    assert_eq!(request["reason"], "hotfix for INC-42");
    assert_eq!(request["duration_asked"], 1800);
    assert_eq!(request["approvals_required"], 2);

    // The owner of the workload and an operator outside the approver
    // groups are refused; nothing is counted.
    let (status, body) = operator(&broker, "carol", "approve", &id, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("own"),
        "{body}"
    );
    let (status, _) = operator(&broker, "dave", "approve", &id, json!({})).await;
    assert_eq!(status, 403);

    // The same operator approving twice counts once.
    let (status, body) = operator(&broker, "alice", "approve", &id, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "pending");
    let (status, body) = operator(&broker, "alice", "approve", &id, json!({})).await;
    assert_eq!(status, 409, "{body}");
    let shown = show(&broker, &id).await;
    assert_eq!(shown["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(shown["approvals"][0]["operator"], "alice");
    let (status, body) = poll(&broker, "job-quorum", &id).await;
    assert_eq!(
        body["error"], "authorization_pending",
        "one approval of two: {body}"
    );
    assert_eq!(status, 400);

    // Bob makes the quorum, granting less than was asked.
    let (status, body) = operator(
        &broker,
        "bob",
        "approve",
        &id,
        json!({ "duration": "10m", "comment": "INC-42 is real" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "approved");
    let until = body["approved_until"].as_i64().unwrap();

    // The job's next poll gets its token: standing and elevated scopes,
    // an elev claim, and an exp within the window.
    let (status, body) = poll(&broker, "job-quorum", &id).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["elev"], id.as_str());
    assert_eq!(claims["scope"], format!("{ELEVATED} {STANDING}"), "sorted");
    assert!(claims["exp"].as_i64().unwrap() <= until);
    let introspection = broker
        .introspect(body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(introspection["active"], true);
    assert_eq!(introspection["elev"], id.as_str());

    // Only the requesting job's step, and only the approved scopes.
    let (status, body) = ask(&broker, "job-other", &[("approval_id", &id)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, body) = ask_for(
        &broker,
        "deploy:demo/prod/db",
        "job-quorum",
        &[("approval_id", &id)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("access_denied")),
        "a scope that was not approved: {body}"
    );
    let (status, body) = ask_for(&broker, "deploy:demo/prod/db", "job-quorum", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("authorization_pending")),
        "without the id, another scope is another request: {body}"
    );
    assert_ne!(body["approval_id"], id.as_str());

    // Every step is on the record, with who and why.
    let records = broker.audit_records();
    assert_eq!(
        events(&records, &id),
        [
            "approval_requested",
            "approval_refused",
            "approval_refused",
            "approval_granted",
            "approval_refused",
            "approval_granted",
            "token_minted",
            "token_denied",
            "token_denied",
        ]
    );
    let requested = records
        .iter()
        .find(|r| r["event"] == "approval_requested")
        .unwrap();
    assert_eq!(requested["justification"], "hotfix for INC-42");
    assert_eq!(requested["sub"], "demo-job");
    assert_eq!(requested["scopes"], json!([ELEVATED]));
    let quorum = records
        .iter()
        .filter(|r| r["event"] == "approval_granted")
        .nth(1)
        .unwrap();
    assert_eq!(quorum["operator"], "bob");
    assert_eq!(quorum["comment"], "INC-42 is real");
    assert_eq!(quorum["duration"], 600);
    let refused_owner = records
        .iter()
        .find(|r| r["event"] == "approval_refused" && r["operator"] == "carol")
        .unwrap();
    assert!(refused_owner["detail"].as_str().unwrap().contains("own"));
}

#[tokio::test]
async fn polling_faster_than_the_interval_slows_the_job_down() {
    let broker = broker().await;
    let id = request(&broker, "job-eager").await;
    let (status, body) = ask(&broker, "job-eager", &[("approval_id", &id)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("slow_down")),
        "{body}"
    );
    assert_eq!(body["interval"], 6, "RFC 8628: five seconds more");
    // Still too fast for the new interval: slower again.
    let (_, body) = poll(&broker, "job-eager", &id).await;
    assert_eq!(body["error"], "slow_down", "{body}");
    assert_eq!(body["interval"], 11);
    // Polls are not decisions: nothing but the request is on the record.
    assert_eq!(events(&broker.audit_records(), &id), ["approval_requested"]);
}

#[tokio::test]
async fn operators_must_authenticate() {
    let broker = broker().await;
    let id = request(&broker, "job-auth").await;
    let url = broker.url(&format!("{APPROVALS_PATH}/{id}/approve"));
    let anonymous = broker
        .http
        .post(&url)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(
        anonymous.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let wrong = broker
        .http
        .post(&url)
        .bearer_auth("stint_not_an_operator_key")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // A workload's own secret is not an operator key.
    let workload = broker
        .http
        .post(&url)
        .bearer_auth(stint_tests::test_secret("demo-job"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(workload.status(), 401);
    let list = broker
        .http
        .get(broker.url(APPROVALS_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 401);
    assert!(
        show(&broker, &id).await["approvals"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_denial_is_final() {
    let broker = broker().await;
    let id = request(&broker, "job-deny").await;
    let (status, _) = operator(&broker, "alice", "approve", &id, json!({})).await;
    assert_eq!(status, 200);
    let (status, body) = operator(&broker, "bob", "deny", &id, json!({})).await;
    assert_eq!(status, 400, "a denial needs a comment: {body}");
    let (status, body) = operator(
        &broker,
        "bob",
        "deny",
        &id,
        json!({ "comment": "change freeze" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "denied");
    assert_eq!(body["decided_by"], "bob");
    assert_eq!(body["comment"], "change freeze");

    let (status, body) = poll(&broker, "job-deny", &id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("access_denied")),
        "{body}"
    );
    let (status, body) = operator(&broker, "alice", "approve", &id, json!({})).await;
    assert_eq!(status, 409, "nothing approves a denied request: {body}");

    let records = broker.audit_records();
    let denial = records
        .iter()
        .find(|r| r["event"] == "approval_denied")
        .unwrap();
    assert_eq!(denial["operator"], "bob");
    assert_eq!(denial["comment"], "change freeze");
    assert_eq!(denial["job"], "job-deny");
}

#[tokio::test]
async fn a_request_nobody_decides_expires() {
    let broker = broker().await;
    let id = request(&broker, "job-wait").await;
    broker.clock.advance(chrono::TimeDelta::seconds(601));
    eventually(Duration::from_secs(10), "the request expires", || async {
        events(&broker.audit_records(), &id)
            .contains(&"approval_expired")
            .then_some(())
    })
    .await;
    assert_eq!(show(&broker, &id).await["state"], "expired");
    let (status, body) = poll(&broker, "job-wait", &id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("expired_token")),
        "{body}"
    );
    let (status, _) = operator(&broker, "alice", "approve", &id, json!({})).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn an_approval_that_expires_ends_its_tokens_with_its_window() {
    let broker = broker().await;
    let id = request(&broker, "job-window").await;
    approve_by_two(&broker, &id, "2m").await;
    let (status, body) = poll(&broker, "job-window", &id).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(body["expires_in"].as_u64().unwrap() <= 120, "{body}");
    assert_eq!(broker.introspect(&token).await["active"], true);

    broker.clock.advance(chrono::TimeDelta::seconds(121));
    assert_eq!(
        broker.introspect(&token).await,
        json!({ "active": false }),
        "the token stops being active at the window's end"
    );
    let (status, body) = poll(&broker, "job-window", &id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("expired_token")),
        "{body}"
    );
    eventually(
        Duration::from_secs(10),
        "the window's end is audited",
        || async {
            events(&broker.audit_records(), &id)
                .contains(&"approval_expired")
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn revoking_an_approval_revokes_its_tokens_at_once_and_for_good() {
    let mut broker = broker().await;
    let id = request(&broker, "job-revoke").await;
    approve_by_two(&broker, &id, "20m").await;
    let (status, body) = poll(&broker, "job-revoke", &id).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    // A plain token of the same job, minted without the elevation.
    let plain = broker
        .mint("deploy", STANDING, &[("job", "job-revoke")])
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(broker.introspect(&token).await["active"], true);

    let (status, body) = operator(
        &broker,
        "carol",
        "revoke",
        &id,
        json!({ "comment": "owners may stop their own elevation" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "revoked");
    assert_eq!(broker.introspect(&token).await, json!({ "active": false }));
    assert_eq!(
        broker.introspect(&plain).await["active"],
        true,
        "the job's standing tokens are not the approval's"
    );
    let (status, body) = poll(&broker, "job-revoke", &id).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("access_denied")),
        "{body}"
    );
    let (status, _) = operator(&broker, "dave", "revoke", &id, json!({})).await;
    assert_eq!(status, 403, "outside the approver groups");

    // The revocation survives a restart.
    broker.restart().await;
    assert_eq!(broker.introspect(&token).await, json!({ "active": false }));
    assert_eq!(show(&broker, &id).await["state"], "revoked");
}

#[tokio::test]
async fn completing_the_job_ends_its_approval() {
    let broker = broker().await;
    let id = request(&broker, "job-done").await;
    approve_by_two(&broker, &id, "20m").await;
    let (status, body) = poll(&broker, "job-done", &id).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let response = broker.post_form("/v1/jobs/job-done/revoke", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(broker.introspect(&token).await, json!({ "active": false }));
    let shown = show(&broker, &id).await;
    assert_eq!(shown["state"], "ended");
    assert_eq!(shown["comment"], "the job completed");
    assert!(events(&broker.audit_records(), &id).contains(&"approval_ended"));
}

#[tokio::test]
async fn operators_sign_in_with_an_id_token_and_groups_from_a_claim() {
    let idp = TestIdp::start().await;
    let policy = elevation_policy(&format!(
        r#"
[issuers.corp]
url = "{issuer}"
audiences = ["stint-operators"]

[operators.erin]
groups = ["sre"]
key_sha256 = "{erin_key}"
oidc = {{ issuer = "corp", subject = "erin@example.com" }}

[operators.frank]
oidc = {{ issuer = "corp", subject = "frank@example.com", groups_claim = "groups" }}
"#,
        issuer = idp.issuer,
        erin_key = secret::hash_hex(&operator_key("erin")),
    ));
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(policy),
        federation_ca: Some(idp.ca_file.clone()),
        ..BrokerOptions::default()
    })
    .await;
    let id = request(&broker, "job-oidc").await;
    let now = chrono::Utc::now().timestamp();
    let id_token = |sub: &str, groups: Value| {
        idp.es256_token(&json!({
            "iss": idp.issuer,
            "sub": sub,
            "aud": "stint-operators",
            "iat": now,
            "exp": now + 300,
            "groups": groups,
        }))
    };
    let url = broker.url(&format!("{APPROVALS_PATH}/{id}/approve"));
    let call = |token: String| {
        let http = broker.http.clone();
        let url = url.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Erin: groups from the policy, signing in with an ID token.
    assert_eq!(call(id_token("erin@example.com", json!([]))).await, 200);
    let shown = show(&broker, &id).await;
    assert_eq!(shown["approvals"][0]["operator"], "erin");
    // The same person with her key is the same operator: counted once.
    let (status, body) = operator(&broker, "erin", "approve", &id, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already approved"),
        "{body}"
    );
    // Frank: groups from his ID token's claim only.
    assert_eq!(
        call(id_token("frank@example.com", json!(["finance"]))).await,
        403,
        "signed in, but the claim puts frank in no approver group"
    );
    assert_eq!(
        call(id_token("mallory@example.com", json!(["sre"]))).await,
        401,
        "nobody the policy names"
    );
    assert_eq!(
        call(id_token("frank@example.com", json!(["sre"]))).await,
        200
    );
    let shown = show(&broker, &id).await;
    assert_eq!(shown["state"], "approved");
    assert_eq!(shown["approvals"][1]["operator"], "frank");
}

#[tokio::test]
async fn the_webhook_receives_signed_events() {
    type Deliveries = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Deliveries = Arc::default();
    let receiver = {
        let received = Arc::clone(&received);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let received = Arc::clone(&received);
                    async move {
                        let signature = headers
                            .get(stint_core::webhook::SIGNATURE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        received.lock().unwrap().push((signature, body.to_vec()));
                        axum::http::StatusCode::NO_CONTENT
                    }
                },
            ),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let secret = "a-webhook-secret-of-at-least-32-bytes!!";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(elevation_policy("")),
        webhook: Some(stint_server::WebhookTarget {
            url: format!("http://{addr}/hook"),
            secret_file,
        }),
        ..BrokerOptions::default()
    })
    .await;
    let id = request(&broker, "job-hook").await;
    let (status, _) = operator(&broker, "alice", "deny", &id, json!({ "comment": "no" })).await;
    assert_eq!(status, 200);

    let events = eventually(Duration::from_secs(10), "two webhook events", || async {
        let received = received.lock().unwrap().clone();
        (received.len() >= 2).then_some(received)
    })
    .await;
    let now = chrono::Utc::now().timestamp();
    let mut kinds = Vec::new();
    for (signature, body) in &events {
        stint_core::webhook::verify(secret.as_bytes(), signature, body, now, 300)
            .expect("the event is signed with the shared secret");
        assert!(
            stint_core::webhook::verify(
                b"another-secret-of-at-least-32-bytes!!",
                signature,
                body,
                now,
                300
            )
            .is_err()
        );
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["data"]["id"], id.as_str());
        assert!(event["text"].as_str().unwrap().contains(&id), "{event}");
        kinds.push(event["type"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["approval.denied", "approval.requested"]);
    let requested: Value = serde_json::from_slice(
        &events
            .iter()
            .find(|(_, body)| String::from_utf8_lossy(body).contains("approval.requested"))
            .unwrap()
            .1,
    )
    .unwrap();
    let text = requested["text"].as_str().unwrap();
    assert!(text.contains("stint approve"), "{text}");
    assert!(text.contains("hotfix for INC-42"), "{text}");
    server.abort();
}

#[tokio::test]
async fn the_sdk_waits_for_the_quorum_and_operators_decide_through_it() {
    use stint_client::{Client, Credentials, Error, SubjectToken};
    let broker = broker().await;
    let job_client = Client::builder(broker.issuer())
        .credentials(Credentials::new(
            "demo-job",
            stint_tests::test_secret("demo-job"),
        ))
        .build()
        .await
        .unwrap();
    let as_operator = |name: &str| {
        Client::builder(broker.issuer())
            .operator(SubjectToken::Value(operator_key(name)))
            .build()
    };
    let alice = as_operator("alice").await.unwrap();
    let bob = as_operator("bob").await.unwrap();

    let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let step = {
        let seen = Arc::clone(&seen);
        job_client
            .step("deploy")
            .job("job-sdk")
            .scopes([STANDING, ELEVATED])
            .audience("demo-api")
            .reason("hotfix for INC-42")
            .elevation_duration(Duration::from_secs(900))
            .on_approval_pending(move |pending| {
                let approvals = pending.approval.as_ref().map_or(0, |a| a.approvals.len());
                seen.lock()
                    .unwrap()
                    .push((pending.approval_id.clone(), approvals));
            })
            .request()
    };
    let step = tokio::spawn(step);
    let id = eventually(
        Duration::from_secs(10),
        "the request is pending",
        || async {
            alice
                .approvals(true)
                .await
                .unwrap()
                .into_iter()
                .find(|a| a.job == "job-sdk")
                .map(|a| a.id)
        },
    )
    .await;
    assert_eq!(alice.approval(&id).await.unwrap().duration_asked, 900);
    let first = alice.approve(&id, None, Some("ok")).await.unwrap();
    assert_eq!(first.state, "pending");
    // Let the waiting step see the first approval before the quorum.
    eventually(
        Duration::from_secs(10),
        "the step sees one approval",
        || async {
            seen.lock()
                .unwrap()
                .iter()
                .any(|(_, n)| *n == 1)
                .then_some(())
        },
    )
    .await;
    let second = bob
        .approve(&id, Some(Duration::from_secs(300)), None)
        .await
        .unwrap();
    assert_eq!(second.state, "approved");
    let token = step.await.unwrap().expect("the token, once approved");
    assert!(token.expires_in() <= 300, "within the window bob granted");
    let (_, claims) = decode_jwt(token.token());
    assert_eq!(claims["elev"], id.as_str());
    token.finish().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [(id.clone(), 0), (id.clone(), 1)],
        "told once when the request was made, once when alice approved"
    );

    // Not waiting: the pending request comes back as an error.
    let pending = job_client
        .step("deploy")
        .job("job-sdk-2")
        .scopes([ELEVATED])
        .audience("demo-api")
        .reason("data repair")
        .wait_for_approval(false)
        .request()
        .await
        .unwrap_err();
    let Error::ApprovalPending(pending) = pending else {
        panic!("expected a pending approval, got {pending:?}");
    };
    assert_eq!(pending.job, "job-sdk-2");
    // Denied while the job waits: a clear denial, not a hang.
    let (told, mut waiting_now) = tokio::sync::mpsc::unbounded_channel();
    let waiting = tokio::spawn(
        job_client
            .step("deploy")
            .job("job-sdk-2")
            .scopes([ELEVATED])
            .audience("demo-api")
            .reason("data repair")
            .on_approval_pending(move |pending| {
                let _ = told.send(pending.approval_id.clone());
            })
            .request(),
    );
    let waiting_on = tokio::time::timeout(Duration::from_secs(10), waiting_now.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        waiting_on, pending.approval_id,
        "the same request, not a new one"
    );
    bob.deny(&pending.approval_id, "use the runbook")
        .await
        .unwrap();
    let denied = waiting.await.unwrap().unwrap_err();
    assert_eq!(denied.oauth_code(), Some("access_denied"), "{denied}");
    assert!(denied.is_denial());
    assert!(denied.to_string().contains("use the runbook"), "{denied}");

    // An operator's client cannot mint.
    assert!(matches!(
        alice.step("read").scope("read:demo/a").request().await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn an_approval_binds_the_audience_too() {
    let broker = broker().await;
    let id = request(&broker, "job-aud").await;
    approve_by_two(&broker, &id, "10m").await;
    // The step lists no audiences, so any is allowed; the approval is for
    // the one that was asked (demo-api), not for another.
    let scope = format!("{STANDING} {ELEVATED}");
    let response = broker
        .post_form(
            TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "deploy"),
                ("scope", &scope),
                ("audience", "https://argo.example"),
                ("job", "job-aud"),
                ("reason", "same job, other system"),
                ("approval_id", &id),
            ],
        )
        .await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, body) = poll(&broker, "job-aud", &id).await;
    assert_eq!(status, 200, "the approved audience still works: {body}");
    let (_, claims) = decode_jwt(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "demo-api");
}

#[tokio::test]
async fn a_workload_cannot_flood_operators() {
    let broker = broker().await;
    for n in 0..16 {
        request(&broker, &format!("job-open-{n}")).await;
    }
    let (status, body) = ask(&broker, "job-open-16", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(body.get("approval_id").is_none());
    let records = broker.audit_records();
    let refused = records.last().unwrap();
    assert_eq!(refused["reason"], "too_many_approval_requests", "{refused}");
    assert_eq!(refused["job"], "job-open-16");

    // Ending requests by completing their jobs does not make room without
    // bound: what the broker keeps per workload is capped too.
    for n in 0..16 {
        let response = broker
            .post_form(&format!("/v1/jobs/job-open-{n}/revoke"), &[])
            .await;
        assert_eq!(response.status(), 200);
    }
    for n in 16..64 {
        let job = format!("job-open-{n}");
        request(&broker, &job).await;
        let response = broker
            .post_form(&format!("/v1/jobs/{job}/revoke"), &[])
            .await;
        assert_eq!(response.status(), 200);
    }
    let (status, body) = ask(&broker, "job-open-64", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("64 approval requests in the last day"),
        "{body}"
    );
    // Another workload is not affected.
    let scope = format!("{STANDING} {ELEVATED}");
    let secret = stint_tests::test_secret("other-job");
    let other = broker
        .post_form_as(
            ("other-job", &secret),
            TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "deploy"),
                ("scope", &scope),
                ("audience", "demo-api"),
                ("job", "job-x"),
                ("reason", "its own"),
            ],
        )
        .await;
    let body: Value = other.json().await.unwrap();
    assert_eq!(body["error"], "authorization_pending", "{body}");
}

#[tokio::test]
async fn votes_count_only_while_their_operator_may_approve() {
    let broker = broker().await;
    let id = request(&broker, "job-reload").await;
    let (status, _) = operator(&broker, "alice", "approve", &id, json!({})).await;
    assert_eq!(status, 200);
    // The policy changes: alice now owns demo-job (carol no longer does,
    // so the quorum can still be met).
    let policy = elevation_policy("")
        .replace("owns = [\"demo-job\"]\n", "")
        .replace(
            "[operators.alice]\ngroups = [\"sre\"]\n",
            "[operators.alice]\ngroups = [\"sre\"]\nowns = [\"demo-job\"]\n",
        );
    assert!(
        policy.contains("[operators.alice]\ngroups = [\"sre\"]\nowns = [\"demo-job\"]\n"),
        "{policy}"
    );
    std::fs::write(broker.policy_path.as_ref().unwrap(), policy).unwrap();
    broker.server().reload_policy().await.unwrap();
    let (status, body) = operator(&broker, "bob", "approve", &id, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["state"], "pending",
        "alice's earlier vote no longer counts: {body}"
    );
    assert_eq!(body["approvals"].as_array().unwrap().len(), 1);
    let (status, body) = operator(&broker, "carol", "approve", &id, json!({})).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("approved")),
        "{body}"
    );
}

#[tokio::test]
async fn the_approvals_api_refuses_bad_input() {
    let broker = broker().await;
    let id = request(&broker, "job-input").await;
    let post = |path: String, body: Vec<u8>, content_type: &'static str| {
        let http = broker.http.clone();
        let url = broker.url(&path);
        async move {
            let response = http
                .post(url)
                .bearer_auth(operator_key("alice"))
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    };
    let json = "application/json";
    let approve = format!("{APPROVALS_PATH}/{id}/approve");
    assert_eq!(
        post(
            format!("{APPROVALS_PATH}/{id}/explode"),
            b"{}".to_vec(),
            json
        )
        .await,
        404
    );
    assert_eq!(
        post(approve.clone(), b"{not json".to_vec(), json).await,
        400
    );
    assert_eq!(
        post(
            approve.clone(),
            br#"{"duration":"15m","grant":"everything"}"#.to_vec(),
            json
        )
        .await,
        400,
        "unknown fields are refused"
    );
    assert_eq!(
        post(approve.clone(), br#"{"duration":"forever"}"#.to_vec(), json).await,
        400
    );
    assert_eq!(
        post(approve.clone(), b"{}".to_vec(), "text/plain").await,
        400
    );
    assert_eq!(
        post(approve.clone(), vec![b' '; 100 * 1024], json).await,
        413,
        "bodies are capped at 64 KiB"
    );
    let long = "a".repeat(65);
    assert_eq!(
        post(
            format!("{APPROVALS_PATH}/{long}/approve"),
            b"{}".to_vec(),
            json
        )
        .await,
        404
    );
    assert_eq!(
        post(
            format!("{APPROVALS_PATH}/apr-nope/approve"),
            b"{}".to_vec(),
            json
        )
        .await,
        404
    );
    // Nothing of that counted as an approval.
    assert!(
        show(&broker, &id).await["approvals"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (status, body) = operator(
        &broker,
        "alice",
        "approve",
        &id,
        json!({ "comment": "fine" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_waiting_sdk_step_gives_up_when_its_request_expires() {
    use stint_client::{Client, Credentials};
    let broker = broker().await;
    let client = Client::builder(broker.issuer())
        .credentials(Credentials::new(
            "demo-job",
            stint_tests::test_secret("demo-job"),
        ))
        .build()
        .await
        .unwrap();
    let (told, mut waiting_now) = tokio::sync::mpsc::unbounded_channel();
    let waiting = tokio::spawn(
        client
            .step("deploy")
            .job("job-sdk-late")
            .scopes([ELEVATED])
            .audience("demo-api")
            .reason("nobody is around")
            .on_approval_pending(move |pending| {
                let _ = told.send(pending.approval_id.clone());
            })
            .request(),
    );
    tokio::time::timeout(Duration::from_secs(10), waiting_now.recv())
        .await
        .unwrap()
        .unwrap();
    broker.clock.advance(chrono::TimeDelta::seconds(601));
    let error = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the wait ends with the request")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.oauth_code(), Some("expired_token"), "{error}");
    assert!(error.is_denial());
    assert!(error.to_string().contains("expired"), "{error}");
}
