//! Writes the seed corpora in `fuzz/seeds/<target>/`: small real inputs,
//! most of them taken from a broker running in-process (a minted token,
//! its status list, the JWK set, error answers, a revocation feed
//! capture, an audit log excerpt) and the rest from the repository's
//! policies and docs and the shared fixed keys (whose ids let the fuzzer
//! reach signature checks). Deterministic where the inputs are; run again
//! after a format changes: `cargo run --example make_corpus` in `fuzz/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stint_core::jose::Algorithm;
use stint_core::status_list::StatusList;
use stint_fuzz::{CLIENT_ID, CLIENT_SECRET, NOW, join_fields, keys};
use stint_tests::TestBroker;

struct Corpus {
    root: PathBuf,
}

impl Corpus {
    fn put(&self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The ```toml blocks of a Markdown file.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start().starts_with("```")) {
            (None, true) if line.trim_start().starts_with("```toml") => {
                current = Some(String::new())
            }
            (Some(_), true) => blocks.extend(current.take()),
            (Some(block), false) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::main]
async fn main() {
    let corpus = Corpus {
        root: Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"),
    };
    let keys = keys();

    // --- A real broker: what it sends, as it sends it.
    let broker = TestBroker::start().await;
    let http = stint_tests::reqwest::Client::new();
    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", broker.client_id, broker.client_secret))
    );
    let minted = broker
        .mint("read", "read:demo/a", &[("job", "job-1")])
        .await;
    let token = minted["access_token"].as_str().unwrap().to_owned();
    let jwks = http
        .get(broker.url(stint_proto::JWKS_PATH))
        .send()
        .await
        .unwrap();
    let jwks = jwks.bytes().await.unwrap();
    let metadata = http
        .get(broker.url(stint_proto::OPENID_CONFIGURATION_PATH))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let status_uri = claims_of(&token)["status"]["status_list"]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    // The feed: open, revoke, read until the revocation event has come.
    let mut stream = http
        .get(broker.url(stint_proto::REVOCATION_STREAM_PATH))
        .header("authorization", &basic)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let revoked = broker
        .post_form(stint_proto::REVOCATION_PATH, &[("token", &token)])
        .await;
    assert_eq!(revoked.status(), 200);
    let mut feed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&feed).contains("event: revocation") || !feed.ends_with(b"\n\n")
    {
        assert!(Instant::now() < deadline, "the feed sent no revocation");
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        feed.extend_from_slice(&chunk);
    }
    drop(stream);
    let status_list = http
        .get(&status_uri)
        .header("accept", stint_core::status_list::STATUS_LIST_MEDIA_TYPE)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut errors = Vec::new();
    for (client, form) in [
        (None, vec![("grant_type", "client_credentials")]),
        (
            Some(basic.as_str()),
            vec![
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "write:prod/db"),
            ],
        ),
        (Some(basic.as_str()), vec![("grant_type", "password")]),
        (
            Some("Basic bm9wZTpub3Bl"),
            vec![("grant_type", "client_credentials")],
        ),
    ] {
        let mut request = http.post(broker.url(stint_proto::TOKEN_PATH)).form(&form);
        if let Some(client) = client {
            request = request.header("authorization", client);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        errors.push((status, response.bytes().await.unwrap().to_vec()));
    }
    let audit = std::fs::read(broker.audit_path()).unwrap();

    // --- form, token_request: request bodies as clients send them.
    let forms: Vec<String> = vec![
        "grant_type=client_credentials&step=a%2Fread&scope=read%3Ademo%2Fa+read%3Agh%2Facme%2Fweb&audience=demo-api&job=job-1&ttl=300".into(),
        "grant_type=client_credentials&step=deploy&scope=deploy%3Ak8s%2Fprod%2Fweb&audience=k8s&reason=hotfix+INC-42&duration=15m".into(),
        "grant_type=client_credentials&step=b/deploy&scope=deploy:k8s/staging/web&resource=k8s&ttl=10m".into(),
        format!("token={token}&token_type_hint=access_token"),
        format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={token}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token&step=read&scope=read%3Ademo%2Fa"),
        format!("client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}&grant_type=client_credentials&step=read"),
        "a=1&&b=%E2%9C%93&c=&d&e=+x+".into(),
    ];
    for (i, form) in forms.iter().enumerate() {
        corpus.put("form", &format!("form-{i}"), form);
        corpus.put("token_request", &format!("form-{i}"), form);
    }

    // --- scope and glob: pairs.
    for (i, (a, b)) in [
        ("read:demo/**", "read:demo/a/b"),
        ("read:gh/*/web", "read:gh/acme/web"),
        ("read:demo/a read:gh/acme/web", "read:demo/a"),
        ("deploy:k8s/staging/web", "deploy:k8s/staging/web"),
        (
            "contents.write:github/acme/web",
            "contents.write:github/acme/api",
        ),
    ]
    .iter()
    .enumerate()
    {
        corpus.put(
            "scope",
            &format!("pair-{i}"),
            join_fields(0, &[a.as_bytes(), b.as_bytes()]),
        );
    }
    for (i, (a, b)) in [
        (
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/web:ref:refs/heads/main",
        ),
        (
            "system:serviceaccount:ci:*",
            "system:serviceaccount:ci:deployer",
        ),
        ("kubernetes.io/serviceaccount/name", "nightly"),
        ("*-runner-*", "gh-runner-7"),
        ("a*b*c", "aXbYbZc"),
    ]
    .iter()
    .enumerate()
    {
        corpus.put(
            "glob",
            &format!("pair-{i}"),
            join_fields(0, &[a.as_bytes(), b.as_bytes()]),
        );
    }

    // --- target_scope: step token scope lists for the fixed postgres target.
    for (i, (control, list)) in target_scope_seeds().iter().enumerate() {
        corpus.put(
            "target_scope",
            &format!("scopes-{i}"),
            join_fields(*control, &[list.as_bytes()]),
        );
    }

    // --- github_scope: step token scope lists and policy patterns for a
    // github target named gh.
    for (i, fields) in github_scope_seeds().iter().enumerate() {
        let fields: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
        corpus.put(
            "github_scope",
            &format!("scopes-{i}"),
            join_fields(0, &fields),
        );
    }

    // --- policy: the repository's policies and every policy in the docs.
    corpus.put(
        "policy",
        "deploy-example.toml",
        std::fs::read(repo("deploy/policy.example.toml")).unwrap(),
    );
    corpus.put("policy", "fuzz.toml", stint_fuzz::POLICY);
    corpus.put("policy", "tests.toml", stint_tests::policy_with(""));
    for doc in [
        "policy",
        "federation",
        "elevation",
        "operations",
        "architecture",
    ] {
        let text = std::fs::read_to_string(repo(&format!("docs/{doc}.md"))).unwrap();
        for (i, block) in toml_blocks(&text).iter().enumerate() {
            corpus.put("policy", &format!("docs-{doc}-{i}.toml"), block);
        }
    }

    // --- jws: the genuine tokens, a minted one, and refused shapes.
    for (i, (alg, header, payload)) in stint_fuzz::genuine_jws().iter().enumerate() {
        let signed = keys.sign(*alg, header.as_bytes(), payload.as_bytes());
        // The seeds reach the signature checks: each verifies, by its kid
        // (or, without one, by its key).
        let jws = stint_core::jose::UnverifiedJws::parse(&signed).unwrap();
        let verified = if jws.header().kid.is_some() {
            jws.verified_payload(&keys.set)
        } else {
            jws.verified_payload_with(&keys.ed25519.verifying_key())
        };
        assert_eq!(verified.unwrap(), payload.as_bytes());
        corpus.put("jws", &format!("genuine-{i}"), signed);
    }
    corpus.put("jws", "minted", &token);
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    corpus.put(
        "jws",
        "alg-none",
        format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}")),
    );
    corpus.put(
        "jws",
        "hs256",
        format!("{}.{}.c2ln", b64(r#"{"alg":"HS256","kid":"k"}"#), b64("{}")),
    );
    corpus.put(
        "jws",
        "crit",
        format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"ES256","crit":["b64"]}"#),
            b64("{}")
        ),
    );

    // --- audit_log: the broker's own log (policy load, mints, revocation).
    corpus.put("audit_log", "broker", &audit);
    let first_two: Vec<&[u8]> = audit.split_inclusive(|b| *b == b'\n').take(2).collect();
    corpus.put("audit_log", "two-records", first_two.concat());

    // --- status_list: list members, chosen statuses, tokens.
    let mut list = StatusList::new(1, 64).unwrap();
    list.set(3, 1).unwrap();
    corpus.put(
        "status_list",
        "lst-1bit",
        join_fields(0x00, &[list.encode().as_bytes()]),
    );
    corpus.put(
        "status_list",
        "lst-minted",
        join_fields(
            0x00,
            &[
                claims_of(std::str::from_utf8(&status_list).unwrap())["status_list"]["lst"]
                    .as_str()
                    .unwrap()
                    .as_bytes(),
            ],
        ),
    );
    corpus.put(
        "status_list",
        "statuses-2bit",
        join_fields(0x41, &[&[0, 1, 2, 3, 1, 0, 2]]),
    );
    for (i, (header, claims)) in stint_fuzz::genuine_status_lists().iter().enumerate() {
        let signed = keys.sign(Algorithm::EdDSA, header.as_bytes(), claims.as_bytes());
        // As the status_list (control 0xd4) and status_list_poll (0x0f)
        // targets read them: valid at their times.
        let verify = stint_core::status_list::verify_list_token;
        verify(&signed, &keys.set, stint_fuzz::LIST_URI, NOW + 200, 40).unwrap();
        verify(&signed, &keys.set, stint_fuzz::LIST_URI, NOW + 50, 0).unwrap();
        corpus.put(
            "status_list",
            &format!("token-{i}"),
            join_fields(0xd4, &[signed.as_bytes()]),
        );
        corpus.put(
            "status_list",
            &format!("claims-{i}"),
            join_fields(0x94, &[claims.as_bytes()]),
        );
        corpus.put(
            "status_list_poll",
            &format!("token-{i}"),
            join_fields(0x0f, &[signed.as_bytes()]),
        );
        corpus.put(
            "status_list_poll",
            &format!("claims-{i}"),
            join_fields(0x4f, &[claims.as_bytes()]),
        );
    }
    corpus.put(
        "status_list_poll",
        "minted",
        join_fields(0x0f, &[&status_list]),
    );

    // --- webhook_signature: headers the broker signs, and variants.
    let body = br#"{"id":"evt","type":"approval.requested","text":"deploy needs approval"}"#;
    let secret = b"stint-webhook-fuzz-secret-32byte";
    let header = stint_core::webhook::sign(secret, 1_700_000_000, body);
    let t = 1_700_000_000i64.to_le_bytes();
    corpus.put(
        "webhook_signature",
        "signed",
        join_fields(60, &[header.as_bytes(), body, &t]),
    );
    let two = format!("{header},v1={}", "0".repeat(64));
    corpus.put(
        "webhook_signature",
        "two-v1",
        join_fields(0, &[two.as_bytes(), body, &t]),
    );
    corpus.put(
        "webhook_signature",
        "unknown-scheme",
        join_fields(5, &[format!("v0=abc,{header}").as_bytes(), body, &t]),
    );

    // --- jwks: the broker's set, the fixed keys, single keys.
    corpus.put("jwks", "broker", &jwks);
    let fixed = json!({"keys": [keys.ed25519.public_jwk(), &keys.es256_jwk, &keys.rsa_jwk]});
    corpus.put("jwks", "fixed", fixed.to_string());
    corpus.put(
        "jwks",
        "es256",
        serde_json::to_string(&keys.es256_jwk).unwrap(),
    );
    corpus.put("jwks", "rsa", serde_json::to_string(&keys.rsa_jwk).unwrap());
    corpus.put("jwks", "metadata", &metadata);

    // --- access_token: claims the broker mints, at times around them.
    let claims = stint_fuzz::access_token_claims(NOW).to_string();
    for (i, control) in [0x00u8, 0x09, 0x23, 0x4a].iter().enumerate() {
        corpus.put(
            "access_token",
            &format!("claims-{i}"),
            join_fields(*control, &[claims.as_bytes(), b"10", b"read", b"demo/a"]),
        );
    }
    let mut bound = stint_fuzz::access_token_claims(NOW);
    bound["cnf"] = json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"});
    bound["elev"] = json!("apr-1");
    corpus.put(
        "access_token",
        "bound",
        join_fields(0x09, &[bound.to_string().as_bytes(), b"0"]),
    );
    corpus.put(
        "access_token",
        "minted",
        join_fields(
            0x00,
            &[
                serde_json::to_string(&claims_of(&token))
                    .unwrap()
                    .as_bytes(),
                b"0",
            ],
        ),
    );

    // --- id_token_claims and federation: shapes the platforms document.
    let github = json!({
        "iss": "https://token.actions.githubusercontent.com", "aud": "https://stint.fuzz",
        "sub": "repo:acme/web:ref:refs/heads/main", "repository": "acme/web",
        "repository_owner": "acme", "ref": "refs/heads/main", "workflow": "deploy",
        "event_name": "push", "run_id": "9876543210", "run_attempt": "1",
        "iat": NOW, "nbf": NOW, "exp": NOW + 300, "jti": "6d3bd3f1",
    });
    let kubernetes = json!({
        "iss": "https://kubernetes.default.svc.cluster.local", "aud": ["stint"],
        "sub": "system:serviceaccount:ci:deployer",
        "kubernetes.io": {"namespace": "ci", "serviceaccount": {"name": "deployer", "uid": "0c6f"},
            "pod": {"name": "deployer-5d9c", "uid": "a1b2c3d4-0000-4000-8000-000000000001"}},
        "iat": NOW, "nbf": NOW, "exp": NOW + 600,
    });
    let gitlab = json!({
        "iss": "https://gitlab.com", "aud": "stint", "sub": "project_path:acme/api:ref_type:branch:ref:main",
        "project_path": "acme/api", "namespace_path": "acme", "ref": "main", "ref_type": "branch",
        "ref_protected": "true", "pipeline_id": "1234567", "job_id": "7654321", "iat": NOW, "exp": NOW + 300,
    });
    let plain = json!({"iss": "https://idp.fuzz", "aud": "stint", "sub": "gh-runner-7", "org": {"team": "infra"}, "run": 42});
    for (name, claims) in [
        ("github", &github),
        ("kubernetes", &kubernetes),
        ("gitlab", &gitlab),
        ("plain", &plain),
    ] {
        corpus.put("id_token_claims", name, claims.to_string());
    }
    // Federation: control picks the issuer (0 GitHub, 1 Kubernetes, 2
    // GitLab), sets iss (0x04), aud (0x08) and times (0x10), RS256 (0x20).
    corpus.put(
        "federation",
        "github",
        join_fields(0x3c, &[github.to_string().as_bytes()]),
    );
    corpus.put(
        "federation",
        "kubernetes-es256",
        join_fields(0x1d, &[kubernetes.to_string().as_bytes()]),
    );
    corpus.put(
        "federation",
        "gitlab",
        join_fields(0x3e, &[gitlab.to_string().as_bytes()]),
    );
    let mut other_ref = github.clone();
    other_ref["ref"] = json!("refs/heads/feature");
    corpus.put(
        "federation",
        "github-feature",
        join_fields(0x3c, &[other_ref.to_string().as_bytes()]),
    );

    // --- client_auth: Authorization headers and bodies.
    corpus.put(
        "client_auth",
        "raw-basic",
        join_fields(0, &[b"grant_type=client_credentials", basic.as_bytes()]),
    );
    corpus.put(
        "client_auth",
        "raw-bearer",
        join_fields(0, &[b"", format!("Bearer  {token} ").as_bytes()]),
    );
    corpus.put(
        "client_auth",
        "raw-two",
        join_fields(0, &[b"", b"Basic dzphYmM=", b"Basic dzphYmM="]),
    );
    corpus.put(
        "client_auth",
        "basic",
        join_fields(1, &[CLIENT_ID.as_bytes(), CLIENT_SECRET.as_bytes()]),
    );
    corpus.put(
        "client_auth",
        "basic-odd",
        join_fields(0x11, &["my client:1".as_bytes(), "hunter:2 +%".as_bytes()]),
    );
    corpus.put(
        "client_auth",
        "post",
        join_fields(2, &[CLIENT_ID.as_bytes(), CLIENT_SECRET.as_bytes()]),
    );

    // --- certificate_sans: certificates as TLS clients present them.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["runner-7.ci.example.org".to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from("spiffe://fuzz.test/ns/ci/sa/deployer").unwrap(),
    ));
    let certificate = params.self_signed(&key).unwrap();
    corpus.put("certificate_sans", "der", certificate.der());
    corpus.put(
        "certificate_sans",
        "chosen",
        join_fields(
            1,
            &[
                b"\x00spiffe://fuzz.test/ns/ci/sa/deployer",
                b"\x01Runner-7.CI.example.org",
                b"\x02ops@example.org",
            ],
        ),
    );

    // --- last_event_id: what clients send back ("EPOCH" stands for the feed's).
    for (i, id) in [
        "EPOCH.5",
        "EPOCH.100",
        "EPOCH.0099",
        "EPOCH.+7",
        "EPOCH.",
        "other.3",
        "",
    ]
    .iter()
    .enumerate()
    {
        corpus.put("last_event_id", &format!("id-{i}"), id);
    }

    // --- approval_bodies: operator bodies and duration parameters.
    for (i, (control, body, duration)) in [
        (
            0x08u8,
            r#"{"duration":"15m","comment":"ok for INC-42"}"#,
            "15m",
        ),
        (0x09, r#"{"comment":"not during the freeze"}"#, "900"),
        (0x10, "", "1h"),
        (0x03, r#"{"duration":"2h","extra":1}"#, "30s"),
        (0x18, r#"{"comment":null}"#, "0"),
    ]
    .iter()
    .enumerate()
    {
        corpus.put(
            "approval_bodies",
            &format!("body-{i}"),
            join_fields(*control, &[body.as_bytes(), duration.as_bytes()]),
        );
    }

    // --- sse: the feed as the broker sent it, and as proxies rewrite it.
    corpus.put("sse", "broker", [&[0u8][..], &feed].concat());
    let crlf = String::from_utf8_lossy(&feed).replace('\n', "\r\n");
    corpus.put("sse", "broker-crlf", [&[3u8][..], crlf.as_bytes()].concat());
    let cr = String::from_utf8_lossy(&feed).replace('\n', "\r");
    corpus.put("sse", "broker-cr", [&[5u8][..], cr.as_bytes()].concat());

    // --- error_body: what the broker answers, and what a proxy might.
    for (i, (status, body)) in errors.iter().enumerate() {
        corpus.put(
            "error_body",
            &format!("broker-{i}"),
            [&(status - 400).to_le_bytes()[..], body].concat(),
        );
    }
    let pending = json!({
        "error": "authorization_pending", "error_description": "waiting for 1 more approval",
        "approval_id": "apr-1", "job": "job-1", "interval": 5, "expires_in": 900,
    });
    corpus.put(
        "error_body",
        "pending",
        [&0u16.to_le_bytes()[..], pending.to_string().as_bytes()].concat(),
    );
    corpus.put("error_body", "unavailable", [&103u16.to_le_bytes()[..], br#"{"error":"temporarily_unavailable","error_description":"the audit log cannot be written"}"#].concat());
    corpus.put(
        "error_body",
        "proxy-html",
        [
            &102u16.to_le_bytes()[..],
            &b"<html><body>502 Bad Gateway</body></html>"[..],
        ]
        .concat(),
    );

    println!("corpus written to {}", corpus.root.display());
}

/// Seeds of `github_scope`: the scope list, then patterns.
fn github_scope_seeds() -> Vec<Vec<&'static str>> {
    vec![
        vec![
            "contents.write:gh/acme/web contents.write:gh/acme/api issues.read:gh/acme/web issues.read:gh/acme/api",
            "contents.read:gh/acme/*",
        ],
        vec![
            "contents.read:gh/acme/web metadata.read:gh/acme/api contents.read:gh/acme/api",
            "pull_requests.write:gh/acme/web",
        ],
        vec![
            "contents.write:gh/acme/web issues.read:gh/acme/api",
            "contents.read:gh/*/web",
            "contents.read:gh/acme/**",
        ],
        vec![
            "repository_projects.admin:gh/Acme/Web.site workflows.write:gh/Acme/Web.site",
            "pull-requests.read:gh/acme/*",
        ],
        vec![
            "contents.read:gh/acme/web contents.read:gh/other/web",
            "members.read:gh/acme/*",
        ],
        vec![
            "pull-requests.read:gh/acme/web organization_administration.read:gh/acme/web",
            "contents.admin:gh/acme/x",
        ],
    ]
}

/// Seeds of `target_scope`: (control byte, scope list).
fn target_scope_seeds() -> Vec<(u8, &'static str)> {
    vec![
        (0, "select:wh/crm/accounts select:wh/crm/contacts"),
        (
            0,
            "select:wh/crm/accounts insert:wh/Stage.1/rows usage:wh/Stage.1 read:github/acme/web",
        ),
        (
            1,
            "select:wh/crm/accounts select:wh/crm/contacts usage:wh/crm/ids",
        ),
        (1, "select:wh/crm/accounts"),
        (
            0,
            "usage:wh/crm usage:wh/crm/ids trigger:wh/a.b/c@d:e truncate:wh/x/y",
        ),
        (0, "write:wh/crm/accounts select:wh/crm"),
    ]
}
