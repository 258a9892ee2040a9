//! Federated ID tokens end to end through the broker's own verification
//! (a running broker, and a test identity provider on loopback HTTPS that
//! serves its discovery document and JWK set): whatever claims a trusted
//! issuer signs, a token is accepted only if its issuer, audience and
//! times are right, and identified as the one workload whose binding its
//! claims satisfy, with the job its job claims name; a token changed in
//! one character is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use std::sync::OnceLock;
use stint_core::Clock as _;
use stint_core::policy::Policy;
use stint_server::fuzzing::identify;
use stint_tests::idp::TestIdp;
use stint_tests::{BrokerOptions, TestBroker, policy_with};

const AUDIENCE: &str = "stint-fuzz";
const LEEWAY_SECS: i128 = 30;

struct World {
    runtime: tokio::runtime::Runtime,
    idp: TestIdp,
    broker: TestBroker,
    policy: Policy,
    /// The issuer URLs: GitHub-like, Kubernetes-like, GitLab-like.
    issuers: [String; 3],
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let idp = runtime.block_on(TestIdp::start());
        let issuers = [
            idp.issuer.clone(),
            idp.kubernetes_issuer(),
            idp.gitlab_issuer(),
        ];
        let text = policy_with(&format!(
            r#"
[issuers.github]
url = "{github}"
preset = "github-actions"
audiences = ["{AUDIENCE}"]

[issuers.cluster]
url = "{cluster}"
preset = "kubernetes"
audiences = ["{AUDIENCE}", "other"]
max_token_age = "1h"

[issuers.gitlab]
url = "{gitlab}"
preset = "gitlab-ci"
audiences = ["{AUDIENCE}"]

[workloads.web-deployer]
workflows = ["demo"]

[[workloads.web-deployer.federated]]
issuer = "github"
claims = {{ repository = "acme/web", ref = "refs/heads/main" }}

[workloads.any-web]
workflows = ["demo"]

[[workloads.any-web.federated]]
issuer = "github"
claims = {{ repository = "acme/web", ref = "refs/heads/*" }}

[workloads.cluster-job]
workflows = ["demo"]

[[workloads.cluster-job.federated]]
issuer = "cluster"
claims = {{ "kubernetes.io/namespace" = "ci", sub = "system:serviceaccount:ci:*" }}

[workloads.gitlab-deployer]
workflows = ["demo"]

[[workloads.gitlab-deployer.federated]]
issuer = "gitlab"
claims = {{ project_path = "acme/api", ref = "main", ref_protected = "true" }}
"#,
            github = issuers[0],
            cluster = issuers[1],
            gitlab = issuers[2],
        ));
        let policy = Policy::parse("fuzz.toml", &text).expect("the federation policy");
        let broker = runtime.block_on(TestBroker::start_with(BrokerOptions {
            policy: Some(text),
            federation_ca: Some(idp.ca_file.clone()),
            ..BrokerOptions::default()
        }));
        World {
            runtime,
            idp,
            broker,
            policy,
            issuers,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (control, fields) = stint_fuzz::fields(data);
    let Ok(mut claims) =
        serde_json::from_slice::<Value>(fields.first().copied().unwrap_or_default())
    else {
        return;
    };
    let world = world();
    let now = world.broker.clock.now().timestamp();
    let issuer_url = &world.issuers[usize::from(control & 3) % 3];
    if let Some(object) = claims.as_object_mut() {
        if control & 0x04 != 0 {
            object.insert("iss".into(), json!(issuer_url));
        }
        if control & 0x08 != 0 {
            object.insert("aud".into(), json!(AUDIENCE));
        }
        if control & 0x10 != 0 {
            object.insert("iat".into(), json!(now - 10));
            object.insert("nbf".into(), json!(now - 10));
            object.insert("exp".into(), json!(now + 300));
        }
    }
    let token = if control & 0x20 != 0 {
        world.idp.rs256_token(&claims)
    } else {
        world.idp.es256_token(&claims)
    };
    let server = world.broker.server();
    let result = world.runtime.block_on(identify(server, &token));
    let Ok(federated) = result else {
        return;
    };
    assert_eq!(federated.claims, claims);
    let iss = claims["iss"]
        .as_str()
        .expect("a verified token has its iss");
    let issuer = world
        .policy
        .trusted_issuer(iss)
        .expect("only a trusted issuer");
    assert_eq!(issuer.name(), federated.issuer);
    let number = |name: &str| claims.get(name).and_then(Value::as_i64).map(i128::from);
    let now = i128::from(now);
    let exp = number("exp").expect("exp");
    let iat = number("iat").expect("iat");
    assert!(exp > now - LEEWAY_SECS, "expired");
    assert!(
        number("nbf").is_none_or(|nbf| nbf <= now + LEEWAY_SECS),
        "not valid yet"
    );
    assert!(iat <= now + LEEWAY_SECS, "issued in the future");
    assert!(
        now - iat <= i128::from(issuer.max_token_age().as_secs()) + LEEWAY_SECS,
        "too old"
    );
    let audiences: Vec<&str> = match &claims["aud"] {
        Value::String(aud) => vec![aud.as_str()],
        Value::Array(auds) => auds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    assert!(
        audiences
            .iter()
            .any(|aud| issuer.audiences().iter().any(|a| a == aud)),
        "audience"
    );
    let bound: Vec<String> = world
        .policy
        .workloads_for_identity(issuer.name(), &claims)
        .iter()
        .map(|w| w.name().to_owned())
        .collect();
    match &federated.identity {
        Ok((workload, job)) => {
            assert_eq!(bound, [workload.clone()]);
            assert_eq!(
                job,
                &issuer.job_from_claims(&claims).expect("the job claims")
            );
        }
        Err(_) => assert!(bound.len() != 1 || issuer.job_from_claims(&claims).is_err()),
    }
    // One character changed: refused.
    let at = usize::from(control)
        .wrapping_mul(7919)
        .wrapping_add(token.len() / 3)
        % token.len();
    let mut tampered = token.clone().into_bytes();
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ASCII");
    assert!(
        world.runtime.block_on(identify(server, &tampered)).is_err(),
        "a tampered ID token was accepted (byte {at})"
    );
});
