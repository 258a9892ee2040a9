//! Federation tokens end to end: the in-process broker over real TLS on
//! loopback, with an RS256 federation key from a file. A step token is
//! exchanged (RFC 8693) for a federation token for an oidc target; the
//! token, the discovery document and the JWK set are then checked by an
//! independent relying party (tests/python/verify_federation.py, on
//! joserfc) against the rules AWS, GCP, Azure, Vault / OpenBao and
//! Kubernetes document, and that relying party is shown to refuse a
//! tampered, mis-addressed or expired token. Refusals at the broker
//! (scope, target, audience, revoked step token, no key) are audited.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use stint_core::{Clock, ManualClock};
use stint_server::{Config, PolicySource, RunningServer, TlsFiles};
use stint_tests::{TestCa, audit_records, decode_jwt, policy_with, test_secret};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const JOSERFC_VERSION: &str = "1.6.5";
/// The issuer the AWS profile needs: https, no port.
const PORTLESS_ISSUER: &str = "https://stint.test";
const GCP_AUDIENCE: &str = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/stint/providers/stint";

/// Each oidc target of the policy, its audience, and the relying party's
/// profile that checks its tokens.
const TARGETS: [(&str, &str, &str); 5] = [
    ("aws-prod", "sts.amazonaws.com", "aws"),
    ("gcp", GCP_AUDIENCE, "gcp"),
    ("azure", "api://AzureADTokenExchange", "azure"),
    ("vault", "https://vault.example.com", "vault"),
    ("k8s", "kubernetes", "kubernetes"),
];

fn policy() -> String {
    let mut extra = String::new();
    let mut scopes = Vec::new();
    let mut names = Vec::new();
    for (name, audience, _) in TARGETS {
        let ttl = if name == "k8s" { 3600 } else { 300 };
        let tags = name == "aws-prod";
        extra.push_str(&format!(
            "\n[targets.{name}]\nkind = \"oidc\"\naudience = \"{audience}\"\nttl_secs = {ttl}\naws_session_tags = {tags}\n"
        ));
        scopes.push(format!("\"federate:{name}\""));
        names.push(format!("\"{name}\""));
    }
    extra.push_str(
        "\n[targets.unlisted]\nkind = \"oidc\"\naudience = \"elsewhere\"\n\n[workflows.demo.steps.other]\nscopes = [\"federate:unlisted\"]\ntargets = [\"unlisted\"]\n",
    );
    extra.push_str(&format!(
        "\n[workflows.demo.steps.deploy]\nscopes = [{}]\ntargets = [{}]\ndefault_ttl = \"5m\"\nmax_ttl = \"15m\"\n",
        scopes.join(", "),
        names.join(", ")
    ));
    policy_with(&extra)
}

struct Fixture {
    server: RunningServer,
    ca: TestCa,
    ca_file: PathBuf,
    http: reqwest::Client,
    clock: Arc<ManualClock>,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Where the broker listens (the issuer may name another host).
    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.local_addr().port())
    }

    fn audit(&self) -> Vec<Value> {
        audit_records(&self.dir.path().join("data").join(stint_server::AUDIT_FILE))
    }
}

fn key_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("federation.pem");
    std::fs::write(
        &path,
        include_bytes!("../../crates/stint-core/testdata/rsa2048.pem"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

async fn start(with_key: bool, issuer: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy()).unwrap();
    let mut config = Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.policy = PolicySource::File(policy_path);
    config.tls = Some(TlsFiles {
        cert: ca.cert_path.clone(),
        key: ca.key_path.clone(),
    });
    config.issuer = issuer.map(str::to_owned);
    if with_key {
        config.federation_keys = vec![key_file(dir.path())];
    }
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let server = stint_server::start_with_clock(config, clock.clone() as Arc<dyn Clock>)
        .await
        .expect("the broker starts");
    let http = ca.client();
    Fixture {
        server,
        ca,
        ca_file,
        http,
        clock,
        dir,
    }
}

/// A step token of `demo-job` for step `step` with `scope`, for
/// `audience`, in job `job`; `extra` form fields too.
async fn step_token(
    f: &Fixture,
    step: &str,
    scope: &str,
    audience: &str,
    extra: &[(&str, &str)],
) -> Value {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("step", step),
        ("scope", scope),
        ("audience", audience),
        ("job", "run-1"),
    ];
    form.extend_from_slice(extra);
    let response = f
        .http
        .post(format!("{}{}", f.base(), stint_proto::TOKEN_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "mint failed: {body}");
    body
}

async fn exchange(f: &Fixture, token: &str, target: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", token),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("audience", target),
    ];
    form.extend_from_slice(extra);
    let response = f
        .http
        .post(format!("{}{}", f.base(), stint_proto::TOKEN_PATH))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn get_json(f: &Fixture, path: &str) -> Value {
    f.http
        .get(format!("{}{path}", f.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The Python that runs the relying party: `python3` with joserfc. A
/// missing one fails the test with the install command; it never skips.
fn python() -> &'static str {
    let found = Command::new("python3")
        .args(["-c", "import joserfc, cryptography"])
        .output();
    match found {
        Ok(output) if output.status.success() => "python3",
        _ => panic!(
            "the relying-party check needs python3 with joserfc: python3 -m pip install joserfc=={JOSERFC_VERSION} (.ci/run installs it)"
        ),
    }
}

/// Run the relying party on `token`; its exit status and output.
fn relying_party(
    f: &Fixture,
    issuer: &str,
    token: &str,
    audience: &str,
    subject: &str,
    profiles: &[&str],
) -> (bool, String) {
    let token_file = f.dir.path().join("token.jwt");
    std::fs::write(&token_file, token).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/verify_federation.py");
    let mut command = Command::new(python());
    command
        .arg(script)
        .args(["--base", &f.base()])
        .arg("--ca")
        .arg(&f.ca_file)
        .args(["--issuer", issuer])
        .arg("--token-file")
        .arg(&token_file)
        .args(["--audience", audience, "--subject", subject]);
    for profile in profiles {
        command.args(["--profile", profile]);
    }
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

const SUBJECT: &str = "workload:demo-job:workflow:demo:step:deploy";

// The relying party runs as a blocking child process: the broker
// serves it from another worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_clouds_rules_accept_the_federation_token_and_the_exchange_is_audited() {
    let f = start(true, Some(PORTLESS_ISSUER)).await;
    let _ = &f.ca;

    // Discovery and keys, as a relying party finds them.
    let discovery = get_json(&f, "/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], PORTLESS_ISSUER);
    let algs = discovery["id_token_signing_alg_values_supported"]
        .as_array()
        .unwrap();
    assert!(algs.contains(&Value::from("RS256")) && algs.contains(&Value::from("ES256")));
    assert_eq!(
        discovery["subject_types_supported"],
        serde_json::json!(["public"])
    );
    let claims_supported = discovery["claims_supported"].as_array().unwrap();
    for claim in ["sub", "aud", "job", "step", "workflow", "jti"] {
        assert!(claims_supported.contains(&Value::from(claim)), "{claim}");
    }
    let jwks = get_json(&f, stint_proto::JWKS_PATH).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(
        keys.len(),
        2,
        "the ES256 key and the federation key: {jwks}"
    );
    for key in keys {
        assert_eq!(key["use"], "sig", "{key}");
        assert!(key["alg"].is_string() && key["kid"].is_string(), "{key}");
    }
    let rsa = keys.iter().find(|k| k["kty"] == "RSA").unwrap();
    assert_eq!(rsa["alg"], "RS256");

    for (target, audience, profile) in TARGETS {
        let step = step_token(&f, "deploy", &format!("federate:{target}"), target, &[]).await;
        let step_jwt = step["access_token"].as_str().unwrap();
        let (_, step_claims) = decode_jwt(step_jwt);
        let (status, body) = exchange(&f, step_jwt, target, &[]).await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(body["token_type"], "N_A");
        assert_eq!(body["issued_token_type"], JWT_TYPE);
        assert_eq!(body["kind"], "oidc");
        assert_eq!(body["target"], target);
        assert_eq!(body["scope"], format!("federate:{target}"));
        assert!(body.get("postgres").is_none());
        let token = body["access_token"].as_str().unwrap();
        let (header, claims) = decode_jwt(token);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], rsa["kid"]);
        assert_eq!(claims["iss"], PORTLESS_ISSUER);
        assert_eq!(claims["sub"], SUBJECT);
        assert_eq!(claims["aud"], audience);
        assert_eq!(claims["job"], "run-1");
        assert_eq!(claims["step"], "deploy");
        assert_eq!(claims["workflow"], "demo");
        assert_eq!(claims["workload"], "demo-job");
        for time in ["iat", "nbf", "exp"] {
            assert!(claims[time].is_i64(), "{time} is an integer");
        }
        // Never past the step token (k8s asks for an hour; the step
        // token lives 5 minutes).
        assert!(claims["exp"].as_i64() <= step_claims["exp"].as_i64());
        if target == "k8s" {
            assert_eq!(claims["exp"], step_claims["exp"]);
        } else {
            assert_eq!(
                claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
                300
            );
        }
        assert_eq!(body["credential_id"], claims["jti"]);
        assert!(claims["jti"].as_str().unwrap().starts_with("ft-"));
        let federation = &body["federation"];
        assert_eq!(federation["audience"], audience);
        assert_eq!(federation["subject"], SUBJECT);
        assert_eq!(federation["expires_at"], claims["exp"]);
        assert_eq!(federation["kid"], header["kid"]);
        let tags = &claims["https://aws.amazon.com/tags"];
        if target == "aws-prod" {
            assert_eq!(tags["principal_tags"]["job"], serde_json::json!(["run-1"]));
            assert_eq!(
                tags["principal_tags"]["step"],
                serde_json::json!(["deploy"])
            );
            assert_eq!(tags["transitive_tag_keys"], serde_json::json!([]));
        } else {
            assert!(tags.is_null());
        }

        // Audited before the answer: the federation token's id, the step
        // token's, the subject, audience, expiry and key.
        let records = f.audit();
        let record = records
            .iter()
            .rev()
            .find(|r| r["event"] == "federation_token_issued")
            .expect("a federation_token_issued record");
        assert_eq!(record["decision"], "allow");
        assert_eq!(record["jti"], step_claims["jti"]);
        assert_eq!(record["target"]["name"], target);
        assert_eq!(record["target"]["credential_id"], claims["jti"]);
        assert_eq!(record["target"]["subject"], SUBJECT);
        assert_eq!(record["target"]["audience"], audience);
        assert_eq!(record["target"]["expires_at"], claims["exp"]);
        assert_eq!(record["target"]["kid"], header["kid"]);
        assert!(
            !record.to_string().contains(token),
            "the token is not in the audit log"
        );

        // The independent relying party, with this system's rules.
        let (passed, output) =
            relying_party(&f, PORTLESS_ISSUER, token, audience, SUBJECT, &[profile]);
        assert!(
            passed,
            "{target}: the {profile} rules refused the token:\n{output}"
        );
        assert!(
            output.contains("PASS discovery") && output.contains(&format!("PASS {profile}")),
            "{output}"
        );
    }

    // Asked for as an ID token: the same token, named so.
    let step = step_token(&f, "deploy", "federate:gcp", "gcp", &[]).await;
    let (status, body) = exchange(
        &f,
        step["access_token"].as_str().unwrap(),
        "gcp",
        &[("requested_token_type", ID_TOKEN_TYPE)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ID_TOKEN_TYPE);
    let good = body["access_token"].as_str().unwrap().to_owned();

    // Counted per target.
    let metrics = f
        .http
        .get(format!("{}/metrics", f.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("stint_federation_tokens_issued_total{target=\"gcp\"} 2"),
        "{metrics}"
    );

    // The relying party can refuse: a tampered payload, another audience,
    // an issuer it does not expect, an expired token.
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sub"] = Value::from("workload:demo-job:workflow:demo:step:admin");
    let forged_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let tampered = format!("{head}.{forged_payload}.{signature}");
    let forged_subject = claims["sub"].as_str().unwrap().to_owned();
    let (passed, output) = relying_party(
        &f,
        PORTLESS_ISSUER,
        &tampered,
        GCP_AUDIENCE,
        &forged_subject,
        &["gcp"],
    );
    assert!(
        !passed && output.contains("signature"),
        "a tampered token passed:\n{output}"
    );
    let (passed, output) = relying_party(
        &f,
        PORTLESS_ISSUER,
        &good,
        "sts.amazonaws.com",
        SUBJECT,
        &["gcp"],
    );
    assert!(
        !passed && output.contains("aud"),
        "a token for another audience passed:\n{output}"
    );

    // Minted an hour and a half ago (the broker's clock), so expired now
    // (the relying party's clock).
    f.clock
        .set(chrono::Utc::now() - chrono::TimeDelta::seconds(5400));
    let step = step_token(&f, "deploy", "federate:gcp", "gcp", &[]).await;
    let (status, body) = exchange(&f, step["access_token"].as_str().unwrap(), "gcp", &[]).await;
    assert_eq!(status, 200, "{body}");
    let expired = body["access_token"].as_str().unwrap();
    let (passed, output) = relying_party(
        &f,
        PORTLESS_ISSUER,
        expired,
        GCP_AUDIENCE,
        SUBJECT,
        &["gcp"],
    );
    assert!(
        !passed && output.contains("expired"),
        "an expired token passed:\n{output}"
    );
}

// The relying party runs as a blocking child process: the broker
// serves it from another worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_rules_refuse_an_issuer_with_a_port() {
    // The default issuer is the listener's address, with its port: AWS
    // IAM does not accept that, and the relying party says so.
    let f = start(true, None).await;
    let issuer = f.server.issuer().to_owned();
    let step = step_token(&f, "deploy", "federate:aws-prod", "aws-prod", &[]).await;
    let (status, body) =
        exchange(&f, step["access_token"].as_str().unwrap(), "aws-prod", &[]).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let (passed, output) =
        relying_party(&f, &issuer, token, "sts.amazonaws.com", SUBJECT, &["vault"]);
    assert!(passed, "{output}");
    let (passed, output) =
        relying_party(&f, &issuer, token, "sts.amazonaws.com", SUBJECT, &["aws"]);
    assert!(!passed && output.contains("port"), "{output}");
}

#[tokio::test]
async fn refusals_are_audited_and_sign_nothing() {
    let f = start(true, Some(PORTLESS_ISSUER)).await;
    let step = step_token(&f, "deploy", "federate:aws-prod", "aws-prod", &[]).await;
    let token = step["access_token"].as_str().unwrap();

    // Another target than the step token's audience.
    let (status, body) = exchange(&f, token, "gcp", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    // A scope the token does not carry for this target.
    let (status, body) = exchange(&f, token, "aws-prod", &[("scope", "federate:gcp")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    // A target the step does not list.
    let (status, body) = exchange(&f, token, "unlisted", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    // A PostgreSQL login from an oidc target.
    let (status, body) = exchange(
        &f,
        token,
        "aws-prod",
        &[(
            "requested_token_type",
            stint_proto::TOKEN_TYPE_POSTGRES_LOGIN,
        )],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    // A step token for an API, not for the target.
    let api = step_token(&f, "deploy", "federate:aws-prod", "demo-api", &[]).await;
    let (status, body) = exchange(&f, api["access_token"].as_str().unwrap(), "aws-prod", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );

    // A revoked step token gets nothing.
    let response = f
        .http
        .post(format!("{}{}", f.base(), stint_proto::REVOCATION_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, body) = exchange(&f, token, "aws-prod", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );

    let records = f.audit();
    let denied = records
        .iter()
        .filter(|r| r["event"] == "target_credential_denied")
        .count();
    assert_eq!(denied, 6, "every refusal is audited");
    assert!(
        !records
            .iter()
            .any(|r| r["event"] == "federation_token_issued")
    );

    // A federation token cannot be revoked: DELETE says so.
    let fresh = step_token(&f, "deploy", "federate:aws-prod", "aws-prod", &[]).await;
    let fresh = fresh["access_token"].as_str().unwrap();
    let (_, issued) = exchange(&f, fresh, "aws-prod", &[]).await;
    let id = issued["credential_id"].as_str().unwrap();
    let response = f
        .http
        .delete(format!(
            "{}{}/{id}",
            f.base(),
            stint_proto::TARGET_CREDENTIALS_PATH
        ))
        .bearer_auth(fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("cannot be revoked"),
        "{body}"
    );
}

#[tokio::test]
async fn without_a_federation_key_the_exchange_says_how_to_configure_one() {
    let f = start(false, None).await;
    let discovery = get_json(&f, "/.well-known/openid-configuration").await;
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert!(discovery.get("claims_supported").is_none());
    let jwks = get_json(&f, stint_proto::JWKS_PATH).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);

    let step = step_token(&f, "deploy", "federate:aws-prod", "aws-prod", &[]).await;
    let (status, body) =
        exchange(&f, step["access_token"].as_str().unwrap(), "aws-prod", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(
        body["error_description"].as_str().unwrap().contains(
            "no federation signing key is configured: start stintd with --federation-key FILE"
        ),
        "{body}"
    );
    let records = f.audit();
    let last = records
        .iter()
        .rev()
        .find(|r| r["event"] == "target_credential_denied")
        .unwrap();
    assert_eq!(last["aud"], "aws-prod");
}

#[tokio::test]
async fn an_unusable_key_file_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not-a-key.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    for path in [bad, missing] {
        let mut config = Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        config.federation_keys = vec![path.clone()];
        let error = stint_server::start(config)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("--federation-key"), "{error}");
        assert!(!error.contains("c2VjcmV0"), "{error}");
    }
}

#[tokio::test]
async fn a_step_token_is_never_minted_for_an_oidc_targets_audience() {
    // A system that trusts Stint as an issuer would take a step token
    // with its audience for a federation token.
    let f = start(true, None).await;
    let (name, audience, _) = TARGETS[0];
    let response = f
        .http
        .post(format!("{}{}", f.base(), stint_proto::TOKEN_PATH))
        .basic_auth("demo-job", Some(test_secret("demo-job")))
        .form(&[
            ("grant_type", "client_credentials"),
            ("step", "deploy"),
            ("scope", &format!("federate:{name}")),
            ("audience", audience),
            ("job", "run-aud"),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_target", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains(&format!("audience of oidc target \"{name}\"")),
        "{body}"
    );
}
