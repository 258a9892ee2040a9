//! Federated workload identity: which OIDC issuers the policy trusts, and
//! how a workload is bound to the identities they vouch for.
//!
//! A CI system or an orchestrator already gives each job an ID token (a JWT
//! signed by the platform, naming the repository, the branch, the service
//! account...). The policy lists the issuers it trusts and, per workload,
//! the claim values that make a token that workload's. This module is the
//! pure part: the trusted issuers, the presets for well-known platforms, the
//! claim matchers, and the job id a token's claims determine. Fetching keys
//! and verifying the token happen in the server.

use crate::glob::Glob;
use crate::jose::Algorithm;
use serde_json::Value;
use std::fmt;
use std::time::Duration;
use thiserror::Error;

/// The most claim matchers one binding may have.
pub const MAX_MATCHERS_PER_BINDING: usize = 16;
/// The longest claim value read from a token, in bytes; longer values match
/// nothing.
pub const MAX_CLAIM_VALUE_LEN: usize = 1024;
/// The default maximum age of an ID token (`now - iat`).
pub const DEFAULT_MAX_TOKEN_AGE: Duration = Duration::from_secs(10 * 60);

/// Why an ID token's `exp`, `nbf` or `iat` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenTimeError {
    /// `exp` is past (beyond the leeway).
    #[error("has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("is not valid yet")]
    NotYetValid,
    /// `iat` is ahead (beyond the leeway).
    #[error("was issued in the future")]
    IssuedInTheFuture,
    /// `now - iat` is over the issuer's maximum token age (plus leeway).
    #[error("is older than this issuer's max_token_age ({max_age_secs} s)")]
    TooOld {
        /// The issuer's maximum age, in seconds.
        max_age_secs: u64,
    },
}

/// The times an ID token claims, in seconds since the epoch, as read from
/// its (verified, but still the platform's word) payload: any `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    /// `exp`.
    pub exp: i64,
    /// `nbf`, if present.
    pub nbf: Option<i64>,
    /// `iat`.
    pub iat: i64,
}

impl TokenTimes {
    /// Whether the token may be used at `now`: not expired, valid already,
    /// not issued in the future, and at most `max_age` old, each with
    /// `leeway_secs` of clock skew allowed. The claims come from outside:
    /// the arithmetic is done in `i128`, so no value of any claim, of `now`
    /// or of the limits can wrap or overflow (an `iat` of `i64::MIN` is
    /// very old, not negative-aged).
    pub fn check(
        &self,
        now: i64,
        max_age: Duration,
        leeway_secs: u32,
    ) -> Result<(), TokenTimeError> {
        let now = i128::from(now);
        let leeway = i128::from(leeway_secs);
        if i128::from(self.exp) <= now - leeway {
            return Err(TokenTimeError::Expired);
        }
        if self.nbf.is_some_and(|nbf| i128::from(nbf) > now + leeway) {
            return Err(TokenTimeError::NotYetValid);
        }
        let iat = i128::from(self.iat);
        if iat > now + leeway {
            return Err(TokenTimeError::IssuedInTheFuture);
        }
        let max_age_secs = max_age.as_secs();
        if now - iat > i128::from(max_age_secs) + leeway {
            return Err(TokenTimeError::TooOld { max_age_secs });
        }
        Ok(())
    }
}

/// A platform whose ID tokens Stint knows the shape of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// GitHub Actions (`https://token.actions.githubusercontent.com`): RS256;
    /// `sub` is `repo:ORG/REPO:ref:REF` (or `:environment:ENV`, ...), with
    /// `repository`, `repository_owner`, `ref`, `workflow`, `environment`,
    /// `event_name`, `run_id`, `run_attempt`, ...; the job is the run and its
    /// attempt.
    GithubActions,
    /// GitLab CI (`https://gitlab.com` or a self-managed instance): RS256;
    /// `sub` is `project_path:GROUP/PROJECT:ref_type:branch:ref:main`, with
    /// `project_path`, `namespace_path`, `ref`, `ref_type`, `ref_protected`,
    /// `environment`, `pipeline_id`, `job_id`, ...; the job is the CI job.
    GitlabCi,
    /// Kubernetes service account tokens (the cluster's issuer): RS256 or
    /// ES256; `sub` is `system:serviceaccount:NAMESPACE:NAME`, with
    /// `kubernetes.io/namespace`, `kubernetes.io/serviceaccount/name` and,
    /// for a pod-bound token, `kubernetes.io/pod/name` and
    /// `kubernetes.io/pod/uid`; the job is the pod.
    Kubernetes,
}

impl Preset {
    /// The preset named in a policy.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "github-actions" => Some(Self::GithubActions),
            "gitlab-ci" => Some(Self::GitlabCi),
            "kubernetes" => Some(Self::Kubernetes),
            _ => None,
        }
    }

    /// The name used in a policy.
    pub fn name(self) -> &'static str {
        match self {
            Self::GithubActions => "github-actions",
            Self::GitlabCi => "gitlab-ci",
            Self::Kubernetes => "kubernetes",
        }
    }

    /// The algorithms the platform signs with.
    pub fn algorithms(self) -> Vec<Algorithm> {
        match self {
            Self::GithubActions | Self::GitlabCi => vec![Algorithm::RS256],
            Self::Kubernetes => vec![Algorithm::RS256, Algorithm::ES256],
        }
    }

    /// The claims whose values, joined with `-`, are the job id.
    pub fn job_claims(self) -> Vec<ClaimPath> {
        let paths: &[&str] = match self {
            Self::GithubActions => &["run_id", "run_attempt"],
            Self::GitlabCi => &["job_id"],
            Self::Kubernetes => &["kubernetes.io/pod/uid"],
        };
        paths
            .iter()
            .filter_map(|p| ClaimPath::parse(p).ok())
            .collect()
    }
}

/// A path to a claim: names separated by `/`, into nested objects
/// (`kubernetes.io/serviceaccount/name`). Claim names with a `/` cannot be
/// reached; none of the platforms above has one.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimPath {
    text: String,
}

impl ClaimPath {
    /// Parse a path: non-empty names of printable ASCII without spaces.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        if text.is_empty() || text.len() > 128 {
            return Err("a claim path is 1 to 128 characters");
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a claim path is printable ASCII without spaces");
        }
        if text.split('/').any(str::is_empty) {
            return Err("a claim path has no empty name (no leading, trailing or double '/')");
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The claim's value in `claims`, as text: a string as itself, a number
    /// or a boolean as JSON writes it (GitHub's `run_attempt` is a string,
    /// another platform's may be a number). Objects, arrays, null, missing
    /// claims and values over [`MAX_CLAIM_VALUE_LEN`] give `None`.
    pub fn lookup(&self, claims: &Value) -> Option<String> {
        let mut value = claims;
        for name in self.text.split('/') {
            value = value.as_object()?.get(name)?;
        }
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => return None,
        };
        (text.len() <= MAX_CLAIM_VALUE_LEN).then_some(text)
    }
}

impl fmt::Debug for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimPath({:?})", self.text)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An OIDC issuer the policy trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) max_token_age: Duration,
    pub(crate) job_claims: Vec<ClaimPath>,
    pub(crate) preset: Option<Preset>,
}

impl TrustedIssuer {
    /// The policy's name for it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its issuer URL: a token's `iss` must equal it exactly.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `aud` values accepted (a token is accepted if any of its
    /// audiences is one of these).
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The signature algorithms accepted from it.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The oldest token accepted (`now - iat`).
    pub fn max_token_age(&self) -> Duration {
        self.max_token_age
    }

    /// The claims that make the job id; empty if the client names the job.
    pub fn job_claims(&self) -> &[ClaimPath] {
        &self.job_claims
    }

    /// The platform preset it was declared with, if any.
    pub fn preset(&self) -> Option<Preset> {
        self.preset
    }

    /// The page of the CI run these claims come from, for the people who
    /// approve its requests: for GitHub Actions
    /// `https://github.com/OWNER/REPO/actions/runs/RUN_ID/attempts/ATTEMPT`
    /// (GitHub Enterprise Server: its host, from an issuer
    /// `https://HOST/_services/token`), for GitLab CI
    /// `ISSUER/PROJECT_PATH/-/pipelines/PIPELINE_ID`. `None` for other
    /// issuers, or when a claim is missing or not what the platform puts
    /// there (each part is checked before it goes into the URL).
    pub fn run_url(&self, claims: &Value) -> Option<String> {
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let digits = |value: &str| {
            (1..=20).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit())
        };
        let path_part = |value: &str| {
            !value.is_empty()
                && value.len() <= 100
                && value != "."
                && value != ".."
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        match self.preset? {
            Preset::GithubActions => {
                let base = if self.url == "https://token.actions.githubusercontent.com" {
                    "https://github.com".to_owned()
                } else {
                    self.url.strip_suffix("/_services/token")?.to_owned()
                };
                let (owner, repo) = text("repository")?.split_once('/')?;
                let run = text("run_id").filter(|r| digits(r))?;
                let attempt = text("run_attempt").filter(|a| digits(a))?;
                (path_part(owner) && path_part(repo))
                    .then(|| format!("{base}/{owner}/{repo}/actions/runs/{run}/attempts/{attempt}"))
            }
            Preset::GitlabCi => {
                let project = text("project_path")?;
                let pipeline = text("pipeline_id").filter(|p| digits(p))?;
                (project.len() <= 255 && project.split('/').all(path_part)).then(|| {
                    format!(
                        "{}/{project}/-/pipelines/{pipeline}",
                        self.url.trim_end_matches('/')
                    )
                })
            }
            Preset::Kubernetes => None,
        }
    }

    /// The job id these claims determine: the job claims' values joined
    /// with `-`, or `None` if the issuer has no job claims. A job claim
    /// that is missing is an error, naming it.
    pub fn job_from_claims(&self, claims: &Value) -> Result<Option<String>, String> {
        if self.job_claims.is_empty() {
            return Ok(None);
        }
        let mut parts = Vec::with_capacity(self.job_claims.len());
        for path in &self.job_claims {
            let value = path
                .lookup(claims)
                .ok_or_else(|| format!("the token has no {path} claim, which names the job"))?;
            parts.push(value);
        }
        Ok(Some(parts.join("-")))
    }
}

/// A workload's binding to identities from one trusted issuer: every
/// matcher must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub(crate) issuer: String,
    pub(crate) matchers: Vec<(ClaimPath, Glob)>,
}

impl Binding {
    /// The trusted issuer's policy name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The claim matchers.
    pub fn matchers(&self) -> &[(ClaimPath, Glob)] {
        &self.matchers
    }

    /// Whether a token's verified claims satisfy every matcher.
    pub fn matches(&self, claims: &Value) -> bool {
        self.matchers.iter().all(|(path, glob)| {
            path.lookup(claims)
                .is_some_and(|value| glob.matches(&value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn github_claims() -> Value {
        // The shape GitHub documents for an Actions ID token.
        json!({
            "iss": "https://token.actions.githubusercontent.com",
            "aud": "https://stint.example.com",
            "sub": "repo:acme/web:ref:refs/heads/main",
            "repository": "acme/web",
            "repository_owner": "acme",
            "ref": "refs/heads/main",
            "workflow": "deploy",
            "event_name": "push",
            "run_id": "9876543210",
            "run_attempt": "2",
            "runner_environment": "github-hosted",
        })
    }

    fn kubernetes_claims() -> Value {
        json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "aud": ["stint"],
            "sub": "system:serviceaccount:ci:deployer",
            "kubernetes.io": {
                "namespace": "ci",
                "serviceaccount": {"name": "deployer", "uid": "5d1c..."},
                "pod": {"name": "deployer-7f9c", "uid": "a1b2c3d4-0000-4000-8000-000000000001"},
            },
        })
    }

    fn binding(issuer: &str, matchers: &[(&str, &str)]) -> Binding {
        Binding {
            issuer: issuer.into(),
            matchers: matchers
                .iter()
                .map(|(p, g)| (ClaimPath::parse(p).unwrap(), Glob::parse(g).unwrap()))
                .collect(),
        }
    }

    #[test]
    fn claim_paths_reach_nested_values_and_nothing_else() {
        let claims = kubernetes_claims();
        let path = |p: &str| ClaimPath::parse(p).unwrap();
        assert_eq!(
            path("kubernetes.io/serviceaccount/name").lookup(&claims),
            Some("deployer".into())
        );
        assert_eq!(path("kubernetes.io").lookup(&claims), None, "an object");
        assert_eq!(path("aud").lookup(&claims), None, "an array");
        assert_eq!(path("nope").lookup(&claims), None);
        assert_eq!(
            path("n").lookup(&json!({"n": 42, "b": true})),
            Some("42".into())
        );
        assert_eq!(path("b").lookup(&json!({"b": true})), Some("true".into()));
        let long = json!({"x": "a".repeat(MAX_CLAIM_VALUE_LEN + 1)});
        assert_eq!(path("x").lookup(&long), None);
        assert!(ClaimPath::parse("a//b").is_err());
        assert!(ClaimPath::parse("/a").is_err());
        assert!(ClaimPath::parse("a b").is_err());
    }

    #[test]
    fn bindings_need_every_matcher() {
        let claims = github_claims();
        assert!(
            binding(
                "gh",
                &[("repository", "acme/web"), ("ref", "refs/heads/main")]
            )
            .matches(&claims)
        );
        assert!(binding("gh", &[("sub", "repo:acme/web:*")]).matches(&claims));
        assert!(
            !binding(
                "gh",
                &[("repository", "acme/web"), ("ref", "refs/heads/dev")]
            )
            .matches(&claims)
        );
        assert!(
            !binding("gh", &[("environment", "*")]).matches(&claims),
            "a missing claim"
        );
        let k8s = kubernetes_claims();
        assert!(
            binding(
                "k8s",
                &[
                    ("sub", "system:serviceaccount:ci:deployer"),
                    ("kubernetes.io/namespace", "ci")
                ]
            )
            .matches(&k8s)
        );
    }

    #[test]
    fn token_times_never_wrap() {
        let now = 1_795_000_000;
        let age = Duration::from_secs(600);
        let at = |exp, nbf, iat| TokenTimes { exp, nbf, iat }.check(now, age, 30);
        assert_eq!(at(now + 300, Some(now), now), Ok(()));
        assert_eq!(at(now + 300, None, now - 630), Ok(()), "at the limit");
        assert_eq!(
            at(now + 300, None, now - 631),
            Err(TokenTimeError::TooOld { max_age_secs: 600 })
        );
        // The ends of the range: before the fix, `now - i64::MIN` wrapped
        // to a negative age and was accepted (in release builds).
        for iat in [i64::MIN, i64::MIN + 1, -now] {
            assert_eq!(
                at(i64::MAX, None, iat),
                Err(TokenTimeError::TooOld { max_age_secs: 600 }),
                "iat {iat}"
            );
        }
        assert_eq!(
            at(i64::MAX, None, i64::MAX),
            Err(TokenTimeError::IssuedInTheFuture)
        );
        assert_eq!(at(i64::MIN, None, now), Err(TokenTimeError::Expired));
        assert_eq!(at(now - 30, None, now), Err(TokenTimeError::Expired));
        assert_eq!(
            at(now + 300, Some(i64::MAX), now),
            Err(TokenTimeError::NotYetValid)
        );
        assert_eq!(at(i64::MAX, Some(i64::MIN), now), Ok(()));
        // Extreme clocks and limits too.
        let times = TokenTimes {
            exp: i64::MAX,
            nbf: None,
            iat: i64::MIN,
        };
        assert_eq!(times.check(i64::MIN, Duration::MAX, u32::MAX), Ok(()));
        assert!(times.check(i64::MAX, Duration::ZERO, 0).is_err());
    }

    #[test]
    fn run_urls_are_built_from_checked_claims() {
        let issuer = |preset: Preset, url: &str| TrustedIssuer {
            name: "x".into(),
            url: url.into(),
            audiences: vec!["a".into()],
            algorithms: preset.algorithms(),
            max_token_age: DEFAULT_MAX_TOKEN_AGE,
            job_claims: preset.job_claims(),
            preset: Some(preset),
        };
        let github = issuer(
            Preset::GithubActions,
            "https://token.actions.githubusercontent.com",
        );
        let claims = json!({"repository": "acme/web", "run_id": "9876543210", "run_attempt": "2"});
        assert_eq!(
            github.run_url(&claims).as_deref(),
            Some("https://github.com/acme/web/actions/runs/9876543210/attempts/2")
        );
        let enterprise = issuer(
            Preset::GithubActions,
            "https://ghe.example.com/_services/token",
        );
        assert_eq!(
            enterprise.run_url(&claims).as_deref(),
            Some("https://ghe.example.com/acme/web/actions/runs/9876543210/attempts/2")
        );
        // Not a GitHub issuer URL it knows: no guess.
        let other = issuer(Preset::GithubActions, "https://127.0.0.1:8443");
        assert_eq!(other.run_url(&claims), None);
        for bad in [
            json!({"repository": "acme/../x", "run_id": "1", "run_attempt": "1"}),
            json!({"repository": "acme/web\"><script>", "run_id": "1", "run_attempt": "1"}),
            json!({"repository": "acme/web", "run_id": "1x", "run_attempt": "1"}),
            json!({"repository": "acme/web", "run_id": "1"}),
            json!({"repository": "acme", "run_id": "1", "run_attempt": "1"}),
        ] {
            assert_eq!(github.run_url(&bad), None, "{bad}");
        }
        let gitlab = issuer(Preset::GitlabCi, "https://gitlab.example.com");
        assert_eq!(
            gitlab
                .run_url(&json!({"project_path": "group/sub/app", "pipeline_id": "1234567"}))
                .as_deref(),
            Some("https://gitlab.example.com/group/sub/app/-/pipelines/1234567")
        );
        assert_eq!(
            gitlab.run_url(&json!({"project_path": "group/../../x", "pipeline_id": "1"})),
            None
        );
        assert_eq!(
            issuer(Preset::Kubernetes, "https://k8s").run_url(&kubernetes_claims()),
            None
        );
    }

    #[test]
    fn presets_name_the_job() {
        let issuer = |preset: Preset| TrustedIssuer {
            name: "x".into(),
            url: "https://x".into(),
            audiences: vec!["a".into()],
            algorithms: preset.algorithms(),
            max_token_age: DEFAULT_MAX_TOKEN_AGE,
            job_claims: preset.job_claims(),
            preset: Some(preset),
        };
        assert_eq!(
            issuer(Preset::GithubActions).job_from_claims(&github_claims()),
            Ok(Some("9876543210-2".into()))
        );
        assert_eq!(
            issuer(Preset::Kubernetes).job_from_claims(&kubernetes_claims()),
            Ok(Some("a1b2c3d4-0000-4000-8000-000000000001".into()))
        );
        let no_run = json!({"sub": "x"});
        assert!(
            issuer(Preset::GithubActions)
                .job_from_claims(&no_run)
                .unwrap_err()
                .contains("run_id")
        );
        assert_eq!(
            issuer(Preset::GitlabCi).job_from_claims(&json!({"job_id": "4711"})),
            Ok(Some("4711".into()))
        );
        for preset in [Preset::GithubActions, Preset::GitlabCi, Preset::Kubernetes] {
            assert_eq!(Preset::from_name(preset.name()), Some(preset));
        }
    }
}
