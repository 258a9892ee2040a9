//! A test OpenID Connect identity provider: HTTPS on loopback with a test
//! CA, serving a discovery document and a JWK set, minting ID tokens shaped
//! like GitHub Actions' and Kubernetes'.

use crate::TlsListener;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use stint_core::jose::{Algorithm, SigningKey};
use stint_proto::{Jwk, JwkKey, JwkSet};

/// The RSA test key (see crates/stint-core/testdata/README.md).
const RSA_KEY: &[u8] = include_bytes!("../../crates/stint-core/testdata/rsa2048.der");
pub const RSA_KID: &str = "idp-rsa-1";

/// A running identity provider.
pub struct TestIdp {
    /// Its issuer URL: `https://127.0.0.1:PORT`.
    pub issuer: String,
    /// The CA its certificate chains to, as a PEM file.
    pub ca_file: PathBuf,
    /// Requests it has served (discovery and JWKS).
    pub fetches: Arc<AtomicUsize>,
    /// While set, it answers 503 to everything.
    pub down: Arc<AtomicBool>,
    es256: SigningKey,
    rsa: ring::rsa::KeyPair,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIdp {
    pub async fn start() -> Self {
        let TlsListener {
            dir,
            ca_file,
            url: issuer,
            listener,
            acceptor,
        } = TlsListener::bind("idp-ca.pem").await;
        let rng = SystemRandom::new();
        let (es256, _) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
        let rsa = ring::rsa::KeyPair::from_der(RSA_KEY).unwrap();
        let components = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public());
        let jwks = JwkSet {
            keys: vec![
                es256.public_jwk().clone(),
                Jwk {
                    key: JwkKey::Rsa {
                        n: URL_SAFE_NO_PAD.encode(&components.n),
                        e: URL_SAFE_NO_PAD.encode(&components.e),
                    },
                    kid: Some(RSA_KID.into()),
                    alg: Some("RS256".into()),
                    key_use: Some("sig".into()),
                },
            ],
        };
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks"),
        });
        let cluster_discovery = json!({
            "issuer": format!("{issuer}/k8s"),
            "jwks_uri": format!("{issuer}/jwks"),
        });
        let gitlab_discovery = json!({
            "issuer": format!("{issuer}/gitlab"),
            "jwks_uri": format!("{issuer}/jwks"),
        });
        let serve = |body: Value, fetches: Arc<AtomicUsize>, down: Arc<AtomicBool>| {
            move || {
                let (body, fetches, down) = (body.clone(), fetches.clone(), down.clone());
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    if down.load(Ordering::SeqCst) {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(json!({})),
                        )
                    } else {
                        (axum::http::StatusCode::OK, axum::Json(body))
                    }
                }
            }
        };
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(serve(discovery, fetches.clone(), down.clone())),
            )
            .route(
                "/k8s/.well-known/openid-configuration",
                get(serve(cluster_discovery, fetches.clone(), down.clone())),
            )
            .route(
                "/gitlab/.well-known/openid-configuration",
                get(serve(gitlab_discovery, fetches.clone(), down.clone())),
            )
            .route(
                "/jwks",
                get(serve(
                    serde_json::to_value(&jwks).unwrap(),
                    fetches.clone(),
                    down.clone(),
                )),
            );
        let task = stint_server::tls::serve_router(listener, acceptor, router);
        Self {
            issuer,
            ca_file,
            fetches,
            down,
            es256,
            rsa,
            task,
            _dir: dir,
        }
    }

    /// An ES256 ID token with these claims.
    pub fn es256_token(&self, claims: &Value) -> String {
        self.es256
            .sign_jwt("JWT", claims, &SystemRandom::new())
            .unwrap()
    }

    /// An RS256 ID token with these claims.
    pub fn rs256_token(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": RSA_KID});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        );
        let mut signature = vec![0; self.rsa.public().modulus_len()];
        self.rsa
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature))
    }

    /// Claims shaped like a GitHub Actions ID token for `repository` on
    /// `git_ref`, issued now, for `audience`.
    pub fn github_claims(&self, repository: &str, git_ref: &str, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": format!("repo:{repository}:ref:{git_ref}"),
            "repository": repository,
            "repository_owner": repository.split('/').next().unwrap(),
            "ref": git_ref,
            "workflow": "deploy",
            "event_name": "push",
            "run_id": "9876543210",
            "run_attempt": "1",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": "6d3bd3f1-6f84-4cc5-9e49-1f2d1b0e9a01",
        })
    }

    /// The third issuer it serves, standing for a GitLab instance.
    pub fn gitlab_issuer(&self) -> String {
        format!("{}/gitlab", self.issuer)
    }

    /// Claims shaped like a GitLab CI ID token (`id_tokens:`) for `project`
    /// on branch `branch`, from [`Self::gitlab_issuer`].
    pub fn gitlab_claims(&self, project: &str, branch: &str, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.gitlab_issuer(),
            "aud": audience,
            "sub": format!("project_path:{project}:ref_type:branch:ref:{branch}"),
            "project_path": project,
            "namespace_path": project.split('/').next().unwrap(),
            "ref": branch,
            "ref_type": "branch",
            "ref_protected": "true",
            "pipeline_id": "1234567",
            "pipeline_source": "push",
            "job_id": "7654321",
            "user_login": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        })
    }

    /// The second issuer it serves, at a path, standing for a Kubernetes
    /// cluster (same keys).
    pub fn kubernetes_issuer(&self) -> String {
        format!("{}/k8s", self.issuer)
    }

    /// Claims shaped like a pod-bound Kubernetes service account token,
    /// from [`Self::kubernetes_issuer`].
    pub fn kubernetes_claims(&self, namespace: &str, account: &str, audience: &str) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.kubernetes_issuer(),
            "aud": [audience],
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": account, "uid": "0c6f0b6a-1111-4000-8000-000000000002"},
                "pod": {"name": format!("{account}-5d9c"), "uid": "a1b2c3d4-0000-4000-8000-000000000001"},
            },
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        })
    }
}
