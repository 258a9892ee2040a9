//! Bad input at the OAuth endpoints: oversized, malformed and repeated
//! parameters, wrong or missing client authentication, unknown steps, bad
//! ttls, too many scopes, invalid UTF-8 and malformed tokens.
//!
//! Each must get the OAuth error JSON with the right status, never a panic,
//! and change nothing but the denial's own audit record. Secrets never reach
//! the audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use stint_core::jose::{Algorithm, SigningKey};
use stint_proto::{INTROSPECTION_PATH, REVOCATION_PATH, TOKEN_PATH};
use stint_tests::reqwest::header::{self, HeaderMap};
use stint_tests::{TestBroker, Value, basic, decode_jwt, json, test_secret};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A valid token request, as a form body (the strict parser takes `:` and
/// `/` as they are).
const BASE: &str = "grant_type=client_credentials&step=read&scope=read:demo/x&audience=demo-api";
const FORM: &str = "application/x-www-form-urlencoded";
/// A secret no workload has.
const WRONG_SECRET: &str = "wrong-secret-5c1e07d9a4";
/// Shaped like a client id, so only the broker's knowledge of its ids keeps
/// it out of the log.
const PASTED_SECRET: &str = "stint-3f9a1c7e52b04d8e9a6c";

/// One bad request: what to send and which OAuth error must come back.
struct Case {
    name: &'static str,
    /// `Authorization` header values, in order (empty: none).
    authorization: Vec<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    error: &'static str,
}

impl Case {
    /// A form body sent with demo-job's HTTP Basic credentials.
    fn form(
        name: &'static str,
        body: impl Into<Vec<u8>>,
        status: u16,
        error: &'static str,
    ) -> Self {
        Self {
            name,
            authorization: vec![demo_basic()],
            content_type: Some(FORM),
            body: body.into(),
            status,
            error,
        }
    }

    fn authorization(mut self, values: Vec<String>) -> Self {
        self.authorization = values;
        self
    }

    fn content_type(mut self, content_type: Option<&'static str>) -> Self {
        self.content_type = content_type;
        self
    }
}

/// A response, read in full.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn demo_basic() -> String {
    basic("demo-job", &test_secret("demo-job"))
}

/// `count` distinct scopes, each allowed for step `read`, `+`-separated.
fn read_scopes(count: usize) -> String {
    (0..count)
        .map(|i| format!("read:demo/s{i}"))
        .collect::<Vec<_>>()
        .join("+")
}

async fn send(
    broker: &TestBroker,
    path: &str,
    authorization: &[String],
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let mut request = broker.http.post(broker.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    for value in authorization {
        request = request.header(header::AUTHORIZATION, value.as_str());
    }
    let response = request.send().await.unwrap();
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap().to_vec(),
    }
}

async fn send_case(broker: &TestBroker, path: &str, case: &Case) -> Reply {
    send(
        broker,
        path,
        &case.authorization,
        case.content_type,
        case.body.clone(),
    )
    .await
}

/// Check that `reply` is the OAuth error `error` with `status`; returns the
/// JSON body.
fn assert_oauth_error(name: &str, reply: &Reply, status: u16, error: &str) -> Value {
    let text = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, status, "{name}: status (body: {text})");
    let body = assert_oauth_error_shape(name, reply);
    assert_eq!(body["error"], error, "{name}: error code in {body}");
    body
}

/// Check that `reply` has the shape of an OAuth error response, whatever
/// its code: a JSON body with a string `error` and a non-empty
/// `error_description`, `Cache-Control: no-store`, and a Basic challenge
/// on a 401.
fn assert_oauth_error_shape(name: &str, reply: &Reply) -> Value {
    let text = String::from_utf8_lossy(&reply.body);
    let body: Value = serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("{name}: the body is not JSON ({e}): {text}"));
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{name}: error must be a non-empty string: {body}"
    );
    let description = body["error_description"].as_str();
    assert!(
        description.is_some_and(|d| !d.is_empty()),
        "{name}: error_description must be a non-empty string: {body}"
    );
    assert_eq!(
        reply
            .headers
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "{name}: Cache-Control"
    );
    if reply.status == 401 {
        let challenge = reply
            .headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{name}: a 401 must carry WWW-Authenticate"));
        assert!(
            challenge.starts_with("Basic"),
            "{name}: WWW-Authenticate {challenge:?} must start with Basic"
        );
    }
    body
}

/// The value of the counter `stint_tokens_minted_total`.
fn minted_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("stint_tokens_minted_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stint_tokens_minted_total in /metrics:\n{metrics}"))
}

/// What must stay as it is across a denial: the audit log's length and the
/// minted counter.
struct Snapshot {
    records: usize,
    minted: f64,
}

async fn snapshot(broker: &TestBroker) -> Snapshot {
    Snapshot {
        records: broker.audit_records().len(),
        minted: minted_total(&broker.metrics().await),
    }
}

/// Check that exactly one audit record was added since `before`, a denial
/// with `event`, for the request that got `reply`; returns it.
fn assert_one_denial_record(
    name: &str,
    broker: &TestBroker,
    before: &Snapshot,
    reply: &Reply,
    event: &str,
) -> Value {
    let records = broker.audit_records();
    assert_eq!(
        records.len(),
        before.records + 1,
        "{name}: the denial must add exactly one audit record"
    );
    let record = records.last().unwrap().clone();
    assert_eq!(record["event"], event, "{name}: audit event in {record}");
    assert_eq!(record["decision"], "deny", "{name}: decision in {record}");
    assert!(
        record["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{name}: the denial record needs a reason: {record}"
    );
    let request_id = reply
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    assert_eq!(
        record["request_id"].as_str(),
        request_id,
        "{name}: the record is not this request's"
    );
    record
}

/// Send `case` to the token endpoint and check the whole contract: the
/// error, one `token_denied` record and no token minted.
async fn assert_token_denied(broker: &TestBroker, case: &Case) -> Value {
    let before = snapshot(broker).await;
    let reply = send_case(broker, TOKEN_PATH, case).await;
    let body = assert_oauth_error(case.name, &reply, case.status, case.error);
    let record = assert_one_denial_record(case.name, broker, &before, &reply, "token_denied");
    assert!(
        record["jti"].is_null(),
        "{}: a denial names no token: {record}",
        case.name
    );
    assert_eq!(
        minted_total(&broker.metrics().await),
        before.minted,
        "{}: stint_tokens_minted_total changed",
        case.name
    );
    body
}

/// The audit log's text must contain none of the client secrets, nor
/// `sent`, nor the HTTP Basic encodings of the default credentials.
fn assert_no_secrets_logged(broker: &TestBroker, test: &str, sent: &[&str]) {
    let text = std::fs::read_to_string(broker.audit_path()).unwrap();
    let demo_header = demo_basic();
    let demo_encoded = demo_header.trim_start_matches("Basic ");
    let secrets = [
        test_secret("demo-job"),
        test_secret("other-job"),
        demo_encoded.to_owned(),
    ];
    for secret in secrets
        .iter()
        .map(String::as_str)
        .chain(sent.iter().copied())
    {
        assert!(
            !text.contains(secret),
            "{test}: the audit log contains the secret {secret:?}"
        );
    }
}

/// The broker is still up and still mints.
async fn assert_still_serving(broker: &TestBroker, test: &str) {
    let health = broker
        .http
        .get(broker.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "{test}: /healthz after the bad input");
    let body = broker.mint("read", "read:demo/after", &[]).await;
    assert!(
        body["access_token"].is_string(),
        "{test}: a valid mint after the bad input: {body}"
    );
}

fn token_cases() -> Vec<Case> {
    let pad = "a".repeat(70 * 1024);
    let too_many_params: String = (0..61).map(|i| format!("&p{i}=v")).collect();
    let json_body = json!({
        "grant_type": "client_credentials",
        "step": "read",
        "scope": "read:demo/x",
        "audience": "demo-api",
    })
    .to_string();
    vec![
        // Size.
        Case::form(
            "body over 64 KiB",
            format!("{BASE}&pad={pad}"),
            413,
            "invalid_request",
        ),
        Case::form(
            "more than 64 parameters",
            format!("{BASE}{too_many_params}"),
            400,
            "invalid_request",
        ),
        // Malformed forms.
        Case::form(
            "malformed percent escape",
            "grant_type=client_credentials&step=read&scope=%zz&audience=demo-api",
            400,
            "invalid_request",
        ),
        Case::form(
            "truncated percent escape",
            "grant_type=client_credentials&step=read&scope=read:demo/x%4",
            400,
            "invalid_request",
        ),
        Case::form(
            "invalid UTF-8, percent-encoded",
            "grant_type=client_credentials&step=read&scope=%FF&audience=demo-api",
            400,
            "invalid_request",
        ),
        Case::form(
            "invalid UTF-8, raw byte",
            b"grant_type=client_credentials&step=read&scope=read:demo/\xff&audience=demo-api"
                .to_vec(),
            400,
            "invalid_request",
        ),
        Case::form("JSON body", json_body, 400, "invalid_request")
            .content_type(Some("application/json")),
        Case::form("no Content-Type", BASE, 400, "invalid_request").content_type(None),
        // Repeated parameters (RFC 6749 section 3.2).
        Case::form(
            "duplicate scope",
            format!("{BASE}&scope=read:demo/y"),
            400,
            "invalid_request",
        ),
        Case::form(
            "duplicate scope, name percent-encoded",
            format!("{BASE}&sc%6Fpe=read:demo/y"),
            400,
            "invalid_request",
        ),
        Case::form(
            "duplicate grant_type",
            format!("{BASE}&grant_type=client_credentials"),
            400,
            "invalid_request",
        ),
        // Grant type.
        Case::form(
            "unknown grant type",
            "grant_type=password&step=read&scope=read:demo/x&audience=demo-api",
            400,
            "unsupported_grant_type",
        ),
        Case::form(
            "missing grant_type",
            "step=read&scope=read:demo/x&audience=demo-api",
            400,
            "invalid_request",
        ),
        // Client authentication.
        Case::form("no client authentication", BASE, 401, "invalid_client").authorization(vec![]),
        Case::form("wrong secret", BASE, 401, "invalid_client")
            .authorization(vec![basic("demo-job", WRONG_SECRET)]),
        Case::form("another workload's secret", BASE, 401, "invalid_client")
            .authorization(vec![basic("demo-job", &test_secret("other-job"))]),
        Case::form("unknown client id", BASE, 401, "invalid_client")
            .authorization(vec![basic("nobody-job", &test_secret("demo-job"))]),
        // Well-formed as an id, but a secret pasted into the wrong field:
        // an unknown id is never written to the audit log.
        Case::form(
            "a secret given as the client id",
            BASE,
            401,
            "invalid_client",
        )
        .authorization(vec![basic(PASTED_SECRET, WRONG_SECRET)]),
        Case::form("Basic credentials not base64", BASE, 401, "invalid_client")
            .authorization(vec!["Basic !!not-base64!!".to_owned()]),
        Case::form("Bearer instead of Basic", BASE, 401, "invalid_client")
            .authorization(vec!["Bearer some-token".to_owned()]),
        Case::form(
            "client_id without client_secret in the body",
            format!("{BASE}&client_id=demo-job"),
            401,
            "invalid_client",
        )
        .authorization(vec![]),
        Case::form(
            "Basic and client_secret in the body",
            format!(
                "{BASE}&client_id=demo-job&client_secret={}",
                test_secret("demo-job")
            ),
            400,
            "invalid_request",
        ),
        Case::form("two Authorization headers", BASE, 400, "invalid_request")
            .authorization(vec![demo_basic(), demo_basic()]),
        // Step.
        Case::form(
            "unknown step",
            "grant_type=client_credentials&step=deploy&scope=read:demo/x&audience=demo-api",
            400,
            "invalid_request",
        ),
        Case::form(
            "missing step",
            "grant_type=client_credentials&scope=read:demo/x&audience=demo-api",
            400,
            "invalid_request",
        ),
        // Lifetime.
        Case::form(
            "ttl with a unit",
            format!("{BASE}&ttl=5m"),
            400,
            "invalid_request",
        ),
        Case::form(
            "ttl not a number",
            format!("{BASE}&ttl=abc"),
            400,
            "invalid_request",
        ),
        Case::form("ttl zero", format!("{BASE}&ttl=0"), 400, "invalid_request"),
        Case::form(
            "ttl negative",
            format!("{BASE}&ttl=-1"),
            400,
            "invalid_request",
        ),
        // Scopes.
        Case::form(
            "33 scopes",
            format!(
                "grant_type=client_credentials&step=read&audience=demo-api&scope={}",
                read_scopes(33)
            ),
            400,
            "invalid_scope",
        ),
    ]
}

#[tokio::test]
async fn token_endpoint_refuses_bad_input() {
    let broker = TestBroker::start().await;
    let mut descriptions = std::collections::BTreeMap::new();
    for case in token_cases() {
        let body = assert_token_denied(&broker, &case).await;
        descriptions.insert(case.name, body["error_description"].clone());
    }

    // No user enumeration: an unknown client is told what a wrong secret is.
    let wrong_secret = &descriptions["wrong secret"];
    for name in ["unknown client id", "another workload's secret"] {
        assert_eq!(
            &descriptions[name], wrong_secret,
            "{name}: error_description must equal the wrong secret's"
        );
    }

    // The oversized body again, without a Content-Length: the limit must
    // hold while reading, not only on the declared length.
    let name = "body over 64 KiB, chunked";
    let before = snapshot(&broker).await;
    let reply = post_chunked(
        &broker,
        TOKEN_PATH,
        format!("{BASE}&pad=").as_bytes(),
        70 * 1024,
    )
    .await;
    assert_oauth_error(name, &reply, 413, "invalid_request");
    assert_one_denial_record(name, &broker, &before, &reply, "token_denied");
    assert_eq!(
        minted_total(&broker.metrics().await),
        before.minted,
        "{name}: stint_tokens_minted_total changed"
    );

    // Positive controls: each mints once, which also shows that the
    // counter the denials left alone does move.
    let name = "client_secret_post with the right secret";
    let before = snapshot(&broker).await;
    let body = format!(
        "{BASE}&client_id=demo-job&client_secret={}",
        test_secret("demo-job")
    );
    let reply = send(&broker, TOKEN_PATH, &[], Some(FORM), body.into_bytes()).await;
    assert_minted(name, &broker, &before, &reply).await;

    let name = "exactly 32 scopes";
    let before = snapshot(&broker).await;
    let body = format!(
        "grant_type=client_credentials&step=read&audience=demo-api&scope={}",
        read_scopes(32)
    );
    let reply = send(
        &broker,
        TOKEN_PATH,
        &[demo_basic()],
        Some(FORM),
        body.into_bytes(),
    )
    .await;
    let token = assert_minted(name, &broker, &before, &reply).await;
    assert_eq!(
        token["scope"].as_str().map(|s| s.split(' ').count()),
        Some(32),
        "{name}: the token carries every scope: {token}"
    );

    assert_still_serving(&broker, "token endpoint").await;
    assert_no_secrets_logged(&broker, "token endpoint", &[WRONG_SECRET, PASTED_SECRET]);
}

/// Check that `reply` is a minted token and that the counter moved by one.
async fn assert_minted(name: &str, broker: &TestBroker, before: &Snapshot, reply: &Reply) -> Value {
    let text = String::from_utf8_lossy(&reply.body);
    assert_eq!(reply.status, 200, "{name}: status (body: {text})");
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert!(body["access_token"].is_string(), "{name}: {body}");
    assert_eq!(
        minted_total(&broker.metrics().await),
        before.minted + 1.0,
        "{name}: stint_tokens_minted_total must count the mint"
    );
    let records = broker.audit_records();
    assert_eq!(
        records.len(),
        before.records + 1,
        "{name}: one audit record"
    );
    assert_eq!(
        records.last().unwrap()["event"],
        "token_minted",
        "{name}: audit event"
    );
    body
}

/// POST `prefix` followed by `pad_len` bytes of `a` with chunked transfer
/// encoding (no Content-Length), over a raw connection, and read the reply.
async fn post_chunked(broker: &TestBroker, path: &str, prefix: &[u8], pad_len: usize) -> Reply {
    let addr = broker.server().local_addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: {FORM}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        demo_basic()
    )
    .into_bytes();
    let mut body = prefix.to_vec();
    body.resize(prefix.len() + pad_len, b'a');
    for chunk in body.chunks(8 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer (and stop reading) before the whole body is in.
    let _ = stream.write_all(&request).await;
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    // Read until the head and a Content-Length body are complete, so that a
    // reset after the response cannot lose it.
    loop {
        if let Some(reply) = parse_response(&response) {
            return reply;
        }
        match stream.read(&mut buffer).await {
            Ok(0) => panic!(
                "the connection closed before a full response: {:?}",
                String::from_utf8_lossy(&response)
            ),
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            Err(e) => panic!(
                "reading the response failed ({e}) after {:?}",
                String::from_utf8_lossy(&response)
            ),
        }
    }
}

/// An HTTP/1.1 response with a Content-Length body, if `bytes` holds all
/// of it.
fn parse_response(bytes: &[u8]) -> Option<Reply> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            header::HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    let length: usize = headers
        .get(header::CONTENT_LENGTH)
        .expect("the error response has a Content-Length")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = bytes.get(head_end + 4..head_end + 4 + length)?.to_vec();
    Some(Reply {
        status,
        headers,
        body,
    })
}

/// Bad requests to introspection and revocation; the same table for both.
fn token_parameter_cases(real_token: &str) -> Vec<Case> {
    vec![
        Case::form(
            "missing token parameter",
            "token_type_hint=access_token",
            400,
            "invalid_request",
        ),
        Case::form("empty token parameter", "token=", 400, "invalid_request"),
        Case::form(
            "duplicate token parameter",
            format!("token={real_token}&token={real_token}"),
            400,
            "invalid_request",
        ),
        Case::form(
            "no client authentication",
            format!("token={real_token}"),
            401,
            "invalid_client",
        )
        .authorization(vec![]),
        Case::form(
            "wrong secret",
            format!("token={real_token}"),
            401,
            "invalid_client",
        )
        .authorization(vec![basic("demo-job", WRONG_SECRET)]),
    ]
}

/// Token values that are not tokens at all. RFC 7009 section 2.2 and RFC
/// 7662 section 2.2: an invalid token is no error (revocation answers 200,
/// introspection `{"active": false}`).
fn malformed_tokens() -> Vec<(&'static str, String)> {
    vec![
        ("token not a JWT", "not-a-jwt".to_owned()),
        ("token of four parts", "a.b.c.d".to_owned()),
        ("token parts not base64url", "!!.??.**".to_owned()),
        (
            "token over 8 KiB",
            format!("{}.e30.sig", "a".repeat(9 * 1024)),
        ),
    ]
}

/// Tokens that parse as JWTs but that this broker did not sign, built from
/// two real tokens `a` and `b`.
fn foreign_tokens(a: &str, b: &str) -> Vec<(&'static str, String)> {
    let rng = SystemRandom::new();
    let (a_signing_input, _) = a.rsplit_once('.').unwrap();
    let (_, b_signature) = b.rsplit_once('.').unwrap();
    let (header, claims) = decode_jwt(a);
    let payload = serde_json::to_vec(&claims).unwrap();
    let (stranger, _) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
    // Under the broker's own kid, so that only the signature is wrong.
    let header_json = serde_json::to_vec(&json!({
        "alg": "ES256",
        "typ": "at+jwt",
        "kid": header["kid"],
    }))
    .unwrap();
    let alg_none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let alg_none_payload = URL_SAFE_NO_PAD.encode(&payload);
    vec![
        (
            "a real token with another token's signature",
            format!("{a_signing_input}.{b_signature}"),
        ),
        (
            "real claims signed by a stranger's key under the broker's kid",
            stranger.sign_compact(&header_json, &payload, &rng).unwrap(),
        ),
        (
            "real claims signed by a stranger's key under its own kid",
            stranger.sign_jwt("at+jwt", &claims, &rng).unwrap(),
        ),
        (
            "real claims with alg none",
            format!("{alg_none_header}.{alg_none_payload}."),
        ),
    ]
}

#[tokio::test]
async fn introspection_and_revocation_refuse_malformed_tokens() {
    let broker = TestBroker::start().await;
    let real_a = broker.mint("read", "read:demo/a", &[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let real_b = broker.mint("read", "read:demo/b", &[]).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    for case in token_parameter_cases(&real_a) {
        let name = format!("introspection, {}", case.name);
        let before = broker.audit_records().len();
        let reply = send_case(&broker, INTROSPECTION_PATH, &case).await;
        if case.name.starts_with("token ") {
            // RFC 7662 section 2.2: an unusable token is inactive, not an
            // error (tests/tests/conformance.rs).
            let body: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(
                (reply.status, body),
                (200, json!({"active": false})),
                "{name}"
            );
        } else {
            assert_oauth_error(&name, &reply, case.status, case.error);
        }
        assert_eq!(
            broker.audit_records().len(),
            before,
            "{name}: introspection is a read and must not be audited"
        );

        let name = format!("revocation, {}", case.name);
        let before = snapshot(&broker).await;
        let reply = send_case(&broker, REVOCATION_PATH, &case).await;
        assert_oauth_error(&name, &reply, case.status, case.error);
        assert_one_denial_record(&name, &broker, &before, &reply, "token_revocation_denied");
    }

    for (name, token) in malformed_tokens() {
        let name = format!("revocation, {name}");
        let before = snapshot(&broker).await;
        let reply = send(
            &broker,
            REVOCATION_PATH,
            &[demo_basic()],
            Some(FORM),
            format!("token={token}").into_bytes(),
        )
        .await;
        assert_eq!(reply.status, 200, "{name}");
        let record =
            assert_one_denial_record(&name, &broker, &before, &reply, "token_revocation_denied");
        assert_eq!(record["reason"], "malformed_token", "{name}");
    }

    // Controls: well-formed JWTs this broker did not sign are inactive, and
    // revoking them is not an error (RFC 7009 section 2.2).
    for (name, token) in foreign_tokens(&real_a, &real_b) {
        let reply = send(
            &broker,
            INTROSPECTION_PATH,
            &[demo_basic()],
            Some(FORM),
            format!("token={token}").into_bytes(),
        )
        .await;
        let text = String::from_utf8_lossy(&reply.body);
        assert_eq!(reply.status, 200, "introspection, {name}: status ({text})");
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({"active": false}),
            "introspection, {name}: must be exactly inactive"
        );

        let reply = send(
            &broker,
            REVOCATION_PATH,
            &[demo_basic()],
            Some(FORM),
            format!("token={token}").into_bytes(),
        )
        .await;
        let text = String::from_utf8_lossy(&reply.body);
        assert_eq!(reply.status, 200, "revocation, {name}: status ({text})");
        let record = broker.audit_records().pop().unwrap();
        assert_ne!(
            record["event"], "token_revoked",
            "revocation, {name}: nothing was revoked: {record}"
        );
    }

    // Nothing above revoked the real tokens the bad requests named.
    for (name, token) in [("token a", &real_a), ("token b", &real_b)] {
        let body = broker.introspect(token).await;
        assert_eq!(
            body["active"], true,
            "{name} must still be active after the bad requests: {body}"
        );
    }

    assert_still_serving(&broker, "introspection and revocation").await;
    assert_no_secrets_logged(&broker, "introspection and revocation", &[WRONG_SECRET]);
}

/// A xorshift64 generator: deterministic, so a failure replays exactly.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: usize) -> usize {
        // The bound is small; the remainder's bias does not matter here.
        usize::try_from(self.next() % bound as u64).unwrap()
    }

    /// Up to about 255 bytes of form-like noise. A `raw` body mixes
    /// printable characters, the form's delimiters, `%` and bytes
    /// 0x80-0xFF, so it mostly trips the form parser; a clean one has only
    /// ASCII, valid escapes and parameter names, so it gets past the parser
    /// to the checks behind it. Neither can spell an allowed scope (none
    /// contains `read:demo/`), so no body is a valid request.
    fn form_bytes(&mut self, raw: bool) -> Vec<u8> {
        const PRINTABLE: &[u8] = b"abcdefghijklmnopqrstuvwxyzSTEPXYZ019:/*-_.~ ";
        const DELIMITERS: &[u8] = b"&=+";
        const HEX: &[u8] = b"0123456789abcdefABCDEF";
        const WORDS: &[&str] = &[
            "&scope=",
            "&step=",
            "&ttl=",
            "&grant_type=",
            "&audience=",
            "&job=",
            "&client_id=",
            "write:demo/",
            "read:other/",
            "client_credentials",
            "read",
            "demo-api",
        ];
        let len = self.below(256);
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            match (raw, self.below(10)) {
                (_, 0..=4) => out.push(PRINTABLE[self.below(PRINTABLE.len())]),
                (_, 5 | 6) => out.push(DELIMITERS[self.below(DELIMITERS.len())]),
                (true, 7) => out.push(b'%'),
                (true, 8) => out.push(HEX[self.below(HEX.len())]),
                (true, _) => out.push(0x80 + u8::try_from(self.below(0x80)).unwrap()),
                (false, 7 | 8) => {
                    // An escape of a printable ASCII byte.
                    let byte = 0x20 + self.below(0x5f);
                    out.extend_from_slice(format!("%{byte:02X}").as_bytes());
                }
                (false, _) => out.extend_from_slice(WORDS[self.below(WORDS.len())].as_bytes()),
            }
        }
        out
    }
}

#[tokio::test]
async fn random_form_bodies_are_refused_with_oauth_errors() {
    const BODIES: usize = 200;
    let broker = TestBroker::start().await;
    let before = snapshot(&broker).await;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for i in 0..BODIES {
        let noise = rng.form_bytes(i % 2 == 0);
        // Noise alone, noise as the scope of an otherwise valid request,
        // and noise after a valid request that lacks its scope.
        let body = match i % 3 {
            0 => noise,
            1 => [
                b"grant_type=client_credentials&step=read&audience=demo-api&scope=".as_slice(),
                &noise,
            ]
            .concat(),
            _ => [
                b"grant_type=client_credentials&step=read&audience=demo-api&".as_slice(),
                &noise,
            ]
            .concat(),
        };
        let name = format!("random body {i} ({:?})", String::from_utf8_lossy(&body));
        let reply = send(&broker, TOKEN_PATH, &[demo_basic()], Some(FORM), body).await;
        let text = String::from_utf8_lossy(&reply.body);
        assert!(
            (400..500).contains(&reply.status),
            "{name}: status {} must be 4xx ({text})",
            reply.status
        );
        assert_oauth_error_shape(&name, &reply);
    }
    let records = broker.audit_records();
    assert_eq!(
        records.len(),
        before.records + BODIES,
        "random bodies: one audit record each"
    );
    for record in &records[before.records..] {
        assert_eq!(record["event"], "token_denied", "random bodies: {record}");
        assert_eq!(record["decision"], "deny", "random bodies: {record}");
        assert!(record["reason"].is_string(), "random bodies: {record}");
    }
    assert_eq!(
        minted_total(&broker.metrics().await),
        before.minted,
        "random bodies: stint_tokens_minted_total changed"
    );
    assert_still_serving(&broker, "random bodies").await;
    assert_no_secrets_logged(&broker, "random bodies", &[]);
}
