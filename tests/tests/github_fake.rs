//! The fake GitHub (tests/src/github.rs) holds to GitHub's documented
//! rules: App JWTs, installation lookups, installation tokens and what they
//! reach, revocation, rate limits and faults. Each test talks to it over
//! real HTTPS with reqwest, signing App JWTs with ring from the fixtures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use stint_tests::github::{
    BAD_CREDENTIALS, FakeGithub, Fault, JWT_BAD_EXP, JWT_BAD_IAT, JWT_EXP_TOO_FAR, JWT_UNDECODABLE,
    NOT_ACCESSIBLE, PERMISSIONS_NOT_GRANTED, REPOSITORY_NOT_ACCESSIBLE, REQUIRES_AUTHENTICATION,
    Route, SECONDARY_RATE_LIMIT, sign_rs256,
};

const INSTALLATION: u64 = 777;

async fn fake() -> FakeGithub {
    let github = FakeGithub::start().await;
    github.install(
        "acme",
        INSTALLATION,
        &["web", "api", "docs"],
        &[
            ("contents", "write"),
            ("issues", "read"),
            ("pull_requests", "write"),
        ],
    );
    github
}

fn client(github: &FakeGithub) -> reqwest::Client {
    let ca = std::fs::read(&github.ca_file).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .user_agent("stint-tests")
        .build()
        .unwrap()
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .to_str()
            .unwrap()
    }

    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }

    #[track_caller]
    fn refused(&self, status: u16, message: &str) {
        assert_eq!(self.status.as_u16(), status, "{:?}", self.body);
        assert!(self.message().contains(message), "{:?}", self.body);
        assert_eq!(self.body["status"], json!(status.to_string()));
        assert!(
            self.body["documentation_url"]
                .as_str()
                .unwrap()
                .starts_with("https://docs.github.com/")
        );
    }
}

async fn call(
    http: &reqwest::Client,
    github: &FakeGithub,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut request = http.request(method, format!("{}{path}", github.api_url));
    request = request
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28");
    if let Some(auth) = auth {
        request = request.header("authorization", format!("Bearer {auth}"));
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn jwt_with(github: &FakeGithub, claims: Value) -> String {
    sign_rs256(
        &github.key_pkcs8_pem,
        &json!({"alg": "RS256", "typ": "JWT"}),
        &claims,
    )
}

async fn create(http: &reqwest::Client, github: &FakeGithub, body: Option<&Value>) -> Reply {
    call(
        http,
        github,
        Method::POST,
        &format!("/app/installations/{INSTALLATION}/access_tokens"),
        Some(&github.app_jwt()),
        body,
    )
    .await
}

async fn token_for(http: &reqwest::Client, github: &FakeGithub, body: Value) -> String {
    let reply = create(http, github, Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_good_app_jwt_reads_the_app_and_finds_installations() {
    let github = fake().await;
    let http = client(&github);
    let now = github.now();
    // iss as the client id, the id as a string and as a number; either key form.
    for (key, iss) in [
        (&github.key_pkcs8_pem, json!(github.client_id)),
        (&github.key_pkcs1_pem, json!(github.app_id.to_string())),
        (&github.key_pkcs8_pem, json!(github.app_id)),
    ] {
        let jwt = sign_rs256(
            key,
            &json!({"alg": "RS256", "typ": "JWT"}),
            &json!({"iat": now - 60, "exp": now + 600, "iss": iss}),
        );
        let reply = call(&http, &github, Method::GET, "/app", Some(&jwt), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["id"], json!(424242));
        assert_eq!(reply.body["client_id"], json!("Iv23liFAKEAPP0000001"));
    }
    let jwt = github.app_jwt();
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/orgs/acme/installation",
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["id"], json!(INSTALLATION));
    assert_eq!(reply.body["account"]["login"], json!("acme"));
    assert_eq!(reply.body["account"]["type"], json!("Organization"));
    assert_eq!(reply.body["app_id"], json!(424242));
    assert_eq!(reply.body["repository_selection"], json!("selected"));
    assert_eq!(
        reply.body["permissions"],
        json!({"contents": "write", "issues": "read", "metadata": "read", "pull_requests": "write"})
    );
    // Names are case-insensitive.
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/repos/ACME/Web/installation",
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(reply.body["id"], json!(INSTALLATION));
    // An organization is not a user; an owner or a repository without the App is 404.
    call(
        &http,
        &github,
        Method::GET,
        "/users/acme/installation",
        Some(&jwt),
        None,
    )
    .await
    .refused(404, "Not Found");
    call(
        &http,
        &github,
        Method::GET,
        "/orgs/other/installation",
        Some(&jwt),
        None,
    )
    .await
    .refused(404, "Not Found");
    call(
        &http,
        &github,
        Method::GET,
        "/repos/acme/secret/installation",
        Some(&jwt),
        None,
    )
    .await
    .refused(404, "Not Found");
    github.install_user("octocat", 778, &["dotfiles"], &[("contents", "read")]);
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/users/octocat/installation",
        Some(&jwt),
        None,
    )
    .await;
    assert_eq!(reply.body["account"]["type"], json!("User"));
    call(
        &http,
        &github,
        Method::GET,
        "/orgs/octocat/installation",
        Some(&jwt),
        None,
    )
    .await
    .refused(404, "Not Found");
}

#[tokio::test]
async fn app_jwts_are_checked_as_github_checks_them() {
    let github = fake().await;
    let http = client(&github);
    let now = github.now();
    let good = json!({"iat": now - 60, "exp": now + 540, "iss": github.client_id});
    let with = |key: &str, value: Value| {
        let mut claims = good.clone();
        claims[key] = value;
        claims
    };
    let without = |key: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(key);
        claims
    };
    let rs256 = json!({"alg": "RS256", "typ": "JWT"});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good).unwrap())
    );
    let hs256 = {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good).unwrap())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, github.client_id.as_bytes());
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", unsigned, JWT_UNDECODABLE),
        ("HS256", hs256, JWT_UNDECODABLE),
        (
            "ES256 header",
            sign_rs256(&github.key_pkcs8_pem, &json!({"alg": "ES256"}), &good),
            JWT_UNDECODABLE,
        ),
        (
            "wrong key",
            sign_rs256(&github.wrong_key_pem, &rs256, &good),
            JWT_UNDECODABLE,
        ),
        ("not a JWT", "not.a.jwt".into(), JWT_UNDECODABLE),
        (
            "another app",
            jwt_with(&github, with("iss", json!("999"))),
            JWT_UNDECODABLE,
        ),
        (
            "another client id",
            jwt_with(&github, with("iss", json!("Iv23liOTHERAPP000001"))),
            JWT_UNDECODABLE,
        ),
        ("no iss", jwt_with(&github, without("iss")), JWT_UNDECODABLE),
        (
            "iat float",
            jwt_with(&github, with("iat", json!((now - 60) as f64 + 0.5))),
            JWT_BAD_IAT,
        ),
        (
            "iat string",
            jwt_with(&github, with("iat", json!((now - 60).to_string()))),
            JWT_BAD_IAT,
        ),
        ("no iat", jwt_with(&github, without("iat")), JWT_BAD_IAT),
        (
            "iat in the future",
            jwt_with(&github, with("iat", json!(now + 30))),
            JWT_BAD_IAT,
        ),
        (
            "exp float",
            jwt_with(&github, with("exp", json!((now + 300) as f64 + 0.5))),
            JWT_BAD_EXP,
        ),
        (
            "exp string",
            jwt_with(&github, with("exp", json!((now + 300).to_string()))),
            JWT_BAD_EXP,
        ),
        ("no exp", jwt_with(&github, without("exp")), JWT_BAD_EXP),
        (
            "expired",
            jwt_with(&github, with("exp", json!(now - 1))),
            JWT_BAD_EXP,
        ),
        (
            "exp too far",
            jwt_with(&github, with("exp", json!(now + 660))),
            JWT_EXP_TOO_FAR,
        ),
    ];
    for (what, jwt, message) in &cases {
        for path in [
            "/app",
            &format!("/app/installations/{INSTALLATION}/access_tokens"),
        ] {
            let method = if path == "/app" {
                Method::GET
            } else {
                Method::POST
            };
            let reply = call(&http, &github, method, path, Some(jwt), None).await;
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{what}: {:?}",
                reply.body
            );
            assert_eq!(reply.message(), *message, "{what}");
        }
    }
    assert!(github.tokens().is_empty());
    // GitHub's own recipe passes: iat 60 s ago, exp 10 minutes from now.
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/app",
        Some(&jwt_with(&github, with("exp", json!(now + 600)))),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // A JWT expires: the fake's clock moves on.
    let jwt = github.app_jwt();
    github.set_clock_offset(541);
    call(&http, &github, Method::GET, "/app", Some(&jwt), None)
        .await
        .refused(401, JWT_BAD_EXP);
    github.set_clock_offset(0);
    // No credentials; an installation token where a JWT is needed.
    call(&http, &github, Method::GET, "/app", None, None)
        .await
        .refused(401, REQUIRES_AUTHENTICATION);
    let token = token_for(
        &http,
        &github,
        json!({"repositories": ["web"], "permissions": {"contents": "read"}}),
    )
    .await;
    call(&http, &github, Method::GET, "/app", Some(&token), None)
        .await
        .refused(401, JWT_UNDECODABLE);
    call(
        &http,
        &github,
        Method::POST,
        &format!("/app/installations/{INSTALLATION}/access_tokens"),
        Some(&token),
        None,
    )
    .await
    .refused(401, JWT_UNDECODABLE);
    // A JWT only as Bearer.
    let reply = http
        .get(format!("{}/app", github.api_url))
        .header("authorization", format!("token {}", github.app_jwt()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    // And an App JWT where an installation token is needed.
    call(
        &http,
        &github,
        Method::GET,
        "/installation/repositories",
        Some(&github.app_jwt()),
        None,
    )
    .await
    .refused(401, BAD_CREDENTIALS);
}

#[tokio::test]
async fn an_explicit_request_gets_exactly_that_in_githubs_shape() {
    let github = fake().await;
    let http = client(&github);
    let before = github.now();
    let reply = create(
        &http,
        &github,
        Some(&json!({"repositories": ["web", "API"], "permissions": {"contents": "read", "issues": "read"}})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let token = reply.body["token"].as_str().unwrap();
    assert!(token.starts_with("ghs_") && token.len() == 40, "{token}");
    assert!(token[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    let expires = chrono::DateTime::parse_from_rfc3339(reply.body["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!(
        (before + 3599..=before + 3601).contains(&expires),
        "{expires}"
    );
    assert_eq!(
        reply.body["permissions"],
        json!({"contents": "read", "issues": "read", "metadata": "read"})
    );
    assert_eq!(reply.body["repository_selection"], json!("selected"));
    let repositories = reply.body["repositories"].as_array().unwrap();
    let names: Vec<&str> = repositories
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "api"]);
    for repository in repositories {
        assert!(repository["id"].as_u64().is_some());
        assert_eq!(repository["owner"]["login"], json!("acme"));
        assert_eq!(
            repository["full_name"],
            json!(format!("acme/{}", repository["name"].as_str().unwrap()))
        );
    }
    // By id too.
    let id = repositories[0]["id"].as_u64().unwrap();
    let reply = create(
        &http,
        &github,
        Some(&json!({"repository_ids": [id], "permissions": {"issues": "read"}})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["repositories"][0]["name"], json!("web"));

    let issued = github.tokens();
    assert_eq!(issued.len(), 2);
    assert_eq!(issued[0].token, token);
    assert_eq!(issued[0].installation_id, INSTALLATION);
    assert_eq!(issued[0].repositories, ["web", "api"]);
    assert_eq!(issued[0].repository_selection, "selected");
    assert_eq!(issued[0].expires_at, expires);
    assert!(!issued[0].revoked);
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(issued[0].sha256_hex, hex);
    assert!(github.is_live(token));
}

#[tokio::test]
async fn leaving_out_repositories_or_permissions_grants_the_whole_installation() {
    let github = fake().await;
    let http = client(&github);
    let all_permissions = json!({"contents": "write", "issues": "read", "metadata": "read", "pull_requests": "write"});
    let all_names = |reply: &Reply| -> Vec<String> {
        reply.body["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for body in [
        None,
        Some(json!({})),
        Some(json!({"repositories": [], "permissions": {}})),
    ] {
        let reply = create(&http, &github, body.as_ref()).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{body:?}");
        assert_eq!(reply.body["permissions"], all_permissions, "{body:?}");
        assert_eq!(all_names(&reply), ["web", "api", "docs"], "{body:?}");
    }
    let reply = create(
        &http,
        &github,
        Some(&json!({"permissions": {"issues": "read"}})),
    )
    .await;
    assert_eq!(all_names(&reply), ["web", "api", "docs"]);
    let reply = create(&http, &github, Some(&json!({"repositories": ["docs"]}))).await;
    assert_eq!(reply.body["permissions"], all_permissions);
    assert_eq!(all_names(&reply), ["docs"]);
}

#[tokio::test]
async fn what_the_installation_does_not_have_is_refused() {
    let github = fake().await;
    let http = client(&github);
    let refused = |body: Value, status: u16, message: &'static str| {
        let (http, github) = (&http, &github);
        async move {
            create(http, github, Some(&body))
                .await
                .refused(status, message)
        }
    };
    refused(
        json!({"repositories": ["web", "secret"]}),
        422,
        REPOSITORY_NOT_ACCESSIBLE,
    )
    .await;
    refused(
        json!({"repository_ids": [1]}),
        422,
        REPOSITORY_NOT_ACCESSIBLE,
    )
    .await;
    refused(
        json!({"permissions": {"administration": "read"}}),
        422,
        PERMISSIONS_NOT_GRANTED,
    )
    .await;
    refused(
        json!({"permissions": {"issues": "write"}}),
        422,
        PERMISSIONS_NOT_GRANTED,
    )
    .await;
    refused(
        json!({"permissions": {"contents": "admin"}}),
        422,
        PERMISSIONS_NOT_GRANTED,
    )
    .await;
    refused(
        json!({"permissions": {"contents": "owner"}}),
        422,
        "is not a member of",
    )
    .await;
    refused(json!({"repositories": "web"}), 422, "is not an array").await;
    refused(
        json!({"permissions": ["contents"]}),
        422,
        "is not an object",
    )
    .await;
    let many: Vec<String> = (0..501).map(|_| "web".to_owned()).collect();
    refused(json!({"repositories": many}), 422, "at most 500").await;
    refused(json!(["web"]), 400, "Problems parsing JSON").await;
    refused(json!("web"), 400, "Problems parsing JSON").await;
    // Not JSON at all.
    let reply = http
        .post(format!(
            "{}/app/installations/{INSTALLATION}/access_tokens",
            github.api_url
        ))
        .bearer_auth(github.app_jwt())
        .body("{repositories: web")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    // An installation that does not exist.
    call(
        &http,
        &github,
        Method::POST,
        "/app/installations/1/access_tokens",
        Some(&github.app_jwt()),
        None,
    )
    .await
    .refused(404, "Not Found");
    assert!(github.tokens().is_empty());
}

#[tokio::test]
async fn a_revoked_or_expired_token_is_bad_credentials() {
    let github = fake().await;
    let http = client(&github);
    let token = token_for(
        &http,
        &github,
        json!({"repositories": ["web"], "permissions": {"contents": "read"}}),
    )
    .await;
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/installation/repositories",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["total_count"], json!(1));
    assert_eq!(
        reply.body["repositories"][0]["full_name"],
        json!("acme/web")
    );
    // Revoked with the `token` scheme.
    let reply = http
        .delete(format!("{}/installation/token", github.api_url))
        .header("authorization", format!("token {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NO_CONTENT);
    assert!(reply.bytes().await.unwrap().is_empty());
    assert!(!github.is_live(&token));
    assert!(github.tokens()[0].revoked);
    for (method, path) in [
        (Method::GET, "/installation/repositories"),
        (Method::GET, "/repos/acme/web"),
        (Method::DELETE, "/installation/token"),
    ] {
        call(&http, &github, method, path, Some(&token), None)
            .await
            .refused(401, BAD_CREDENTIALS);
    }
    // An unknown token.
    call(
        &http,
        &github,
        Method::GET,
        "/installation/repositories",
        Some("ghs_000000000000000000000000000000000000"),
        None,
    )
    .await
    .refused(401, BAD_CREDENTIALS);
    // Expiry: per token, and by the clock.
    let token = token_for(
        &http,
        &github,
        json!({"repositories": ["web"], "permissions": {"contents": "read"}}),
    )
    .await;
    github.expire_token(&token);
    assert!(!github.is_live(&token));
    call(
        &http,
        &github,
        Method::GET,
        "/repos/acme/web",
        Some(&token),
        None,
    )
    .await
    .refused(401, BAD_CREDENTIALS);
    let token = token_for(
        &http,
        &github,
        json!({"repositories": ["web"], "permissions": {"contents": "read"}}),
    )
    .await;
    github.set_clock_offset(3600);
    call(
        &http,
        &github,
        Method::GET,
        "/repos/acme/web",
        Some(&token),
        None,
    )
    .await
    .refused(401, BAD_CREDENTIALS);
    github.set_clock_offset(0);
    assert!(github.is_live(&token));
}

#[tokio::test]
async fn a_token_reaches_only_its_repositories_with_its_permissions() {
    let github = fake().await;
    let http = client(&github);
    let writer = token_for(
        &http,
        &github,
        json!({"repositories": ["web"], "permissions": {"contents": "write"}}),
    )
    .await;
    let reader = token_for(
        &http,
        &github,
        json!({"repositories": ["web"], "permissions": {"contents": "read"}}),
    )
    .await;
    let issues = token_for(
        &http,
        &github,
        json!({"repositories": ["web", "api"], "permissions": {"issues": "read"}}),
    )
    .await;
    let file = json!({"message": "add", "content": STANDARD.encode("hello")});
    let put = |token: &str| {
        let (http, github, file, token) = (&http, &github, &file, token.to_owned());
        async move {
            call(
                http,
                github,
                Method::PUT,
                "/repos/acme/web/contents/dir/a.txt",
                Some(&token),
                Some(file),
            )
            .await
        }
    };
    let reply = put(&reader).await;
    reply.refused(403, NOT_ACCESSIBLE);
    assert_eq!(
        reply.header("x-accepted-github-permissions"),
        "contents=write"
    );
    let reply = put(&writer).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let sha = reply.body["content"]["sha"].as_str().unwrap().to_owned();
    // Updating needs the file's sha, as GitHub's contents API does.
    put(&writer).await.refused(422, "\"sha\" wasn't supplied");
    let update = json!({"message": "edit", "content": STANDARD.encode("hello again"), "sha": sha});
    let reply = call(
        &http,
        &github,
        Method::PUT,
        "/repos/acme/web/contents/dir/a.txt",
        Some(&writer),
        Some(&update),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);

    for token in [&reader, &writer] {
        let reply = call(
            &http,
            &github,
            Method::GET,
            "/repos/acme/web/contents/dir/a.txt",
            Some(token),
            None,
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        let content = reply.body["content"].as_str().unwrap();
        assert_eq!(STANDARD.decode(content).unwrap(), b"hello again");
    }
    call(
        &http,
        &github,
        Method::GET,
        "/repos/acme/web/contents/missing",
        Some(&reader),
        None,
    )
    .await
    .refused(404, "Not Found");
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/repos/acme/web/contents/dir/a.txt",
        Some(&issues),
        None,
    )
    .await;
    reply.refused(403, NOT_ACCESSIBLE);
    assert_eq!(
        reply.header("x-accepted-github-permissions"),
        "contents=read"
    );
    // Another repository of the installation, another owner: not there.
    for path in [
        "/repos/acme/api",
        "/repos/acme/api/contents/a.txt",
        "/repos/other/web",
    ] {
        call(&http, &github, Method::GET, path, Some(&writer), None)
            .await
            .refused(404, "Not Found");
    }
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/repos/ACME/WEB",
        Some(&writer),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["full_name"], json!("acme/web"));
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/repos/acme/api",
        Some(&issues),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // Unknown endpoints are 404.
    call(
        &http,
        &github,
        Method::GET,
        "/nothing/here",
        Some(&writer),
        None,
    )
    .await
    .refused(404, "Not Found");
}

#[tokio::test]
async fn every_answer_carries_request_ids_and_rate_limits() {
    let github = fake().await;
    let http = client(&github);
    let token = token_for(
        &http,
        &github,
        json!({"repositories": ["web"], "permissions": {"contents": "read"}}),
    )
    .await;
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let reply = call(
            &http,
            &github,
            Method::GET,
            "/repos/acme/web",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(reply.header("x-ratelimit-limit"), "5000");
        assert_eq!(reply.header("x-ratelimit-resource"), "core");
        let left: u32 = reply.header("x-ratelimit-remaining").parse().unwrap();
        let used: u32 = reply.header("x-ratelimit-used").parse().unwrap();
        assert_eq!(left + used, 5000);
        let reset: i64 = reply.header("x-ratelimit-reset").parse().unwrap();
        assert!(reset > github.now());
        remaining.push(left);
    }
    assert_eq!(remaining, [4999, 4998, 4997]);
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/rate_limit",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(reply.body["resources"]["core"]["remaining"], json!(4997));
    // At 0: GitHub's primary limit.
    github.set_rate_limit_remaining(INSTALLATION, 0);
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/repos/acme/web",
        Some(&token),
        None,
    )
    .await;
    reply.refused(
        403,
        &format!("API rate limit exceeded for installation ID {INSTALLATION}."),
    );
    assert_eq!(reply.header("x-ratelimit-remaining"), "0");
    // Request ids are unique, and the log has them (and no credentials).
    let requests = github.requests();
    let mut ids: Vec<&str> = requests.iter().map(|r| r.request_id.as_str()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count);
    assert_eq!(requests.last().unwrap().status, 403);
    assert_eq!(requests.last().unwrap().path, "/repos/acme/web");
    assert!(requests.iter().all(|r| !format!("{r:?}").contains(&token)));
    // Without a User-Agent, or with a version GitHub does not have.
    let bare = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&github.ca_file).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let reply = bare
        .get(format!("{}/app", github.api_url))
        .bearer_auth(github.app_jwt())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::FORBIDDEN);
    assert!(reply.headers().contains_key("x-github-request-id"));
    let reply = http
        .get(format!("{}/app", github.api_url))
        .bearer_auth(github.app_jwt())
        .header("x-github-api-version", "2021-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    // A body over the limit.
    let reply = http
        .post(format!(
            "{}/app/installations/{INSTALLATION}/access_tokens",
            github.api_url
        ))
        .bearer_auth(github.app_jwt())
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Request heads over 16 KiB.
    let reply = http
        .get(format!("{}/app", github.api_url))
        .bearer_auth(github.app_jwt())
        .header("x-padding", "a".repeat(20 * 1024))
        .send()
        .await;
    assert!(
        reply.as_ref().map_or(true, |r| r.status()
            == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        "{reply:?}"
    );
}

/// Stint's planner and the fake agree: the planned body gets exactly the
/// planned token, which the answer check accepts; the same body without
/// repositories or permissions gets the whole installation, which it
/// refuses.
#[tokio::test]
async fn the_planners_request_passes_its_own_answer_check_and_omissions_do_not() {
    use std::collections::BTreeMap;
    use stint_core::scope::Scope;
    use stint_core::target::github::plan;
    let github = fake().await;
    let http = client(&github);
    let scopes: Vec<Scope> = [
        "contents.read:gh/acme/web",
        "contents.read:gh/acme/api",
        "issues.read:gh/acme/web",
        "issues.read:gh/acme/api",
    ]
    .iter()
    .map(|s| Scope::parse(s).unwrap())
    .collect();
    let planned = plan("gh", &scopes).unwrap();
    let check = |reply: &Reply| {
        let permissions: BTreeMap<String, String> =
            serde_json::from_value(reply.body["permissions"].clone()).unwrap();
        let repositories: Vec<String> = reply.body["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect();
        planned.check_answer(
            &permissions,
            reply.body["repository_selection"].as_str().unwrap(),
            &repositories,
        )
    };
    let body = planned.request_body();
    let reply = create(&http, &github, Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    check(&reply).unwrap();
    for left_out in ["repositories", "permissions"] {
        let mut body = body.clone();
        body.as_object_mut().unwrap().remove(left_out);
        let reply = create(&http, &github, Some(&body)).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        let why = check(&reply).unwrap_err();
        assert!(
            why.contains("not planned") || why.contains("more than the planned"),
            "{left_out}: {why}"
        );
    }
    // A plan the installation cannot give is a 422 from GitHub.
    let wider = plan(
        "gh",
        &[Scope::parse("administration.read:gh/acme/web").unwrap()],
    )
    .unwrap();
    create(&http, &github, Some(&wider.request_body()))
        .await
        .refused(422, PERMISSIONS_NOT_GRANTED);
}

#[tokio::test]
async fn faults_come_as_github_sends_them_then_stop() {
    let github = fake().await;
    let http = client(&github);
    let body = json!({"repositories": ["web"], "permissions": {"contents": "read"}});
    // Secondary limit, with Retry-After.
    github.fail_next(
        Route::CreateToken,
        1,
        Fault::Status {
            status: 429,
            retry_after_secs: Some(7),
            secondary: true,
        },
    );
    let reply = create(&http, &github, Some(&body)).await;
    reply.refused(429, SECONDARY_RATE_LIMIT);
    assert_eq!(reply.header("retry-after"), "7");
    assert!(
        reply
            .message()
            .contains(reply.header("x-github-request-id"))
    );
    // Primary limit.
    github.fail_next(
        Route::CreateToken,
        1,
        Fault::Status {
            status: 403,
            retry_after_secs: None,
            secondary: false,
        },
    );
    let reply = create(&http, &github, Some(&body)).await;
    reply.refused(
        403,
        &format!("API rate limit exceeded for installation ID {INSTALLATION}"),
    );
    assert_eq!(reply.header("x-ratelimit-remaining"), "0");
    // Server errors, twice, on any route.
    github.fail_next(
        Route::Any,
        2,
        Fault::Status {
            status: 502,
            retry_after_secs: None,
            secondary: false,
        },
    );
    create(&http, &github, Some(&body))
        .await
        .refused(502, "Bad Gateway");
    call(
        &http,
        &github,
        Method::GET,
        "/app",
        Some(&github.app_jwt()),
        None,
    )
    .await
    .refused(502, "Bad Gateway");
    assert!(github.tokens().is_empty());
    // Then it works.
    let token = token_for(&http, &github, body.clone()).await;
    // A fault on one route leaves the others alone.
    github.fail_next(
        Route::RevokeToken,
        1,
        Fault::Status {
            status: 500,
            retry_after_secs: None,
            secondary: false,
        },
    );
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/orgs/acme/installation",
        Some(&github.app_jwt()),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    call(
        &http,
        &github,
        Method::DELETE,
        "/installation/token",
        Some(&token),
        None,
    )
    .await
    .refused(500, "Server Error");
    assert!(github.is_live(&token));
    let reply = call(
        &http,
        &github,
        Method::DELETE,
        "/installation/token",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    // Delay.
    github.fail_next(
        Route::FindInstallation,
        1,
        Fault::Delay(Duration::from_millis(300)),
    );
    let started = Instant::now();
    let reply = call(
        &http,
        &github,
        Method::GET,
        "/repos/acme/web/installation",
        Some(&github.app_jwt()),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A dropped connection.
    github.fail_next(Route::CreateToken, 1, Fault::Drop);
    let error = http
        .post(format!(
            "{}/app/installations/{INSTALLATION}/access_tokens",
            github.api_url
        ))
        .bearer_auth(github.app_jwt())
        .json(&body)
        .send()
        .await
        .unwrap_err();
    assert!(!error.is_status(), "{error}");
    assert_eq!(github.requests().last().unwrap().status, 0);
    assert_eq!(github.tokens().len(), 1);
    let reply = create(&http, &github, Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}
