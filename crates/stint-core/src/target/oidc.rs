//! OIDC targets: systems that trust Stint as an OpenID Connect issuer
//! (AWS `AssumeRoleWithWebIdentity`, GCP Workload Identity Federation,
//! Azure federated credentials, Vault / OpenBao JWT auth, Kubernetes).
//! For them Stint signs a *federation token*: an RS256 JWT with the
//! audience the system expects and a stable subject its trust policy
//! matches exactly.
//!
//! ```toml
//! [targets.aws-prod]
//! kind = "oidc"
//! audience = "sts.amazonaws.com"   # required: the aud the system expects
//! ttl_secs = 300                   # default 300, 60..=3600; never past the step token
//! aws_session_tags = false         # add AWS session tags (workload, workflow, step, job)
//!
//! [workflows.deploy.steps.apply]
//! scopes = ["federate:aws-prod"]
//! targets = ["aws-prod"]
//! ```
//!
//! Its one scope is `federate:NAME`: what the token may do is decided by
//! the trust policy on the other side.

use super::postgres::PlanError;
use crate::scope::ScopePattern;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The one action of an OIDC target's scope.
pub const FEDERATE_ACTION: &str = "federate";
/// The default lifetime of a federation token, in seconds.
pub const DEFAULT_TTL_SECS: u64 = 300;
/// The shortest lifetime a policy may set, in seconds.
pub const MIN_TTL_SECS: u64 = 60;
/// The longest lifetime a policy may set, in seconds.
pub const MAX_TTL_SECS: u64 = 3600;

/// An OIDC target's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcTarget {
    /// The `aud` of its tokens.
    pub audience: String,
    /// Their lifetime, in seconds (cut to the step token's).
    pub ttl_secs: u64,
    /// Whether they carry AWS session tags.
    pub aws_session_tags: bool,
}

/// The one scope of OIDC target `target_name`: `federate:NAME`.
pub fn scope_of(target_name: &str) -> String {
    format!("{FEDERATE_ACTION}:{target_name}")
}

/// Check a policy pattern about OIDC target `target_name`: only
/// `federate:NAME`.
pub fn check_pattern(target_name: &str, pattern: &ScopePattern) -> Result<(), PlanError> {
    if pattern.as_str() == scope_of(target_name) {
        Ok(())
    } else {
        Err(PlanError(format!(
            "pattern {:?}: an oidc target has one scope, {:?} (what its tokens may do is decided by the trust policy of the system that accepts them)",
            pattern.as_str(),
            scope_of(target_name)
        )))
    }
}

/// The longest `sub` a federation token may carry, in bytes: GCP
/// Workload Identity Federation's limit on `google.subject` (127 bytes),
/// the smallest of the systems Stint targets. Checked at policy load.
pub const MAX_SUBJECT_LEN: usize = 127;
/// The private claim AWS reads session tags from
/// (`AssumeRoleWithWebIdentity`, IAM User Guide "Pass session tags in AWS
/// STS").
pub const AWS_TAGS_CLAIM: &str = "https://aws.amazon.com/tags";
/// AWS's limit on a session tag key, in characters.
pub const AWS_TAG_KEY_MAX: usize = 128;
/// AWS's limit on a session tag value, in characters.
pub const AWS_TAG_VALUE_MAX: usize = 256;
/// How a federation token's id begins: it tells one apart from a target
/// credential's id (`tc-...`) where both could be named.
pub const FEDERATION_TOKEN_ID_PREFIX: &str = "ft-";
/// The claims every federation token carries, for discovery's
/// `claims_supported` (the AWS tags claim is added when a target asks).
pub const CLAIMS: &[&str] = &[
    "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "workload", "workflow", "step", "job",
];

/// The subject of a federation token: stable across runs (no job id, no
/// run number), so that a trust policy can match it exactly.
pub fn subject(workload: &str, workflow: &str, step: &str) -> String {
    format!("workload:{workload}:workflow:{workflow}:step:{step}")
}

/// Check the subject of `workload` running `step` of `workflow` against
/// [`MAX_SUBJECT_LEN`]; the error gives its length.
pub fn check_subject(workload: &str, workflow: &str, step: &str) -> Result<(), PlanError> {
    let subject = subject(workload, workflow, step);
    if subject.len() <= MAX_SUBJECT_LEN {
        Ok(())
    } else {
        Err(PlanError(format!(
            "the federation token subject {subject:?} would be {} bytes, over the {MAX_SUBJECT_LEN} bytes GCP allows for google.subject: shorten the workload, workflow or step name",
            subject.len()
        )))
    }
}

/// Whether `id` names a federation token (see
/// [`FEDERATION_TOKEN_ID_PREFIX`]).
pub fn is_federation_token_id(id: &str) -> bool {
    id.starts_with(FEDERATION_TOKEN_ID_PREFIX)
}

/// AWS session tags, in the form `AssumeRoleWithWebIdentity` reads them
/// from the [`AWS_TAGS_CLAIM`] claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsSessionTags {
    /// Tag key -> a one-element list with its value.
    pub principal_tags: BTreeMap<String, Vec<String>>,
    /// Keys that persist through role chaining: none.
    pub transitive_tag_keys: Vec<String>,
}

/// The claims of a federation token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationClaims {
    /// The broker's issuer, exactly as discovery gives it.
    pub iss: String,
    /// [`subject`].
    pub sub: String,
    /// The target's configured audience (one string).
    pub aud: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before: the issue time.
    pub nbf: i64,
    /// Expiry: the target's lifetime, cut to the step token's `exp`.
    pub exp: i64,
    /// A fresh id ([`FEDERATION_TOKEN_ID_PREFIX`] and 128 random bits).
    pub jti: String,
    /// The workload that asked.
    pub workload: String,
    /// Its workflow.
    pub workflow: String,
    /// Its step.
    pub step: String,
    /// The job (one run of the workflow).
    pub job: String,
    /// AWS session tags, when the target sets `aws_session_tags`.
    #[serde(
        rename = "https://aws.amazon.com/tags",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub aws_tags: Option<AwsSessionTags>,
}

/// Who asks for a federation token, from its verified step token.
#[derive(Debug, Clone, Copy)]
pub struct FederationRequest<'a> {
    /// The broker's issuer.
    pub issuer: &'a str,
    /// The step token's workload (`sub`).
    pub workload: &'a str,
    /// Its workflow.
    pub workflow: &'a str,
    /// Its step.
    pub step: &'a str,
    /// Its job.
    pub job: &'a str,
    /// Its `exp`: the federation token never outlives it.
    pub step_token_exp: i64,
    /// Now, in seconds since the epoch.
    pub now: i64,
    /// The federation token's id.
    pub jti: &'a str,
}

/// Whether `value` may be an AWS session tag value: at most
/// [`AWS_TAG_VALUE_MAX`] characters of letters, digits, spaces and
/// `_ . : / = + - @` (IAM User Guide, "Tagging IAM resources": tag naming
/// rules). Names and job ids always are (their alphabets are narrower);
/// one that is not is left out of the tags, never altered.
pub fn is_valid_aws_tag_value(value: &str) -> bool {
    value.chars().count() <= AWS_TAG_VALUE_MAX
        && value.chars().all(|c| {
            c.is_alphanumeric()
                || c == ' '
                || matches!(c, '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@')
        })
}

/// The claims of the federation token for `target` that `request` asks
/// for: pure, so the time and the id come in.
pub fn federation_claims(
    target: &OidcTarget,
    request: &FederationRequest<'_>,
) -> Result<FederationClaims, PlanError> {
    check_subject(request.workload, request.workflow, request.step)?;
    let ttl = i64::try_from(target.ttl_secs).unwrap_or(i64::MAX);
    let exp = request.now.saturating_add(ttl).min(request.step_token_exp);
    if exp <= request.now {
        return Err(PlanError(
            "the step token expires now: mint a new step token first".into(),
        ));
    }
    let aws_tags = target.aws_session_tags.then(|| AwsSessionTags {
        principal_tags: [
            ("workload", request.workload),
            ("workflow", request.workflow),
            ("step", request.step),
            ("job", request.job),
        ]
        .into_iter()
        .filter(|(_, value)| is_valid_aws_tag_value(value))
        .map(|(key, value)| (key.to_owned(), vec![value.to_owned()]))
        .collect(),
        transitive_tag_keys: Vec::new(),
    });
    Ok(FederationClaims {
        iss: request.issuer.to_owned(),
        sub: subject(request.workload, request.workflow, request.step),
        aud: target.audience.clone(),
        iat: request.now,
        nbf: request.now,
        exp,
        jti: request.jti.to_owned(),
        workload: request.workload.to_owned(),
        workflow: request.workflow.to_owned(),
        step: request.step.to_owned(),
        job: request.job.to_owned(),
        aws_tags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(ttl_secs: u64, aws_session_tags: bool) -> OidcTarget {
        OidcTarget {
            audience: "sts.amazonaws.com".into(),
            ttl_secs,
            aws_session_tags,
        }
    }

    fn request(now: i64, step_token_exp: i64) -> FederationRequest<'static> {
        FederationRequest {
            issuer: "https://stint.example.com",
            workload: "deployer",
            workflow: "deploy",
            step: "apply",
            job: "run-42.1",
            step_token_exp,
            now,
            jti: "ft-abc",
        }
    }

    #[test]
    fn claims_are_the_targets_audience_and_a_stable_subject() {
        let claims = federation_claims(&target(300, false), &request(1_000, 10_000)).unwrap();
        assert_eq!(claims.iss, "https://stint.example.com");
        assert_eq!(claims.sub, "workload:deployer:workflow:deploy:step:apply");
        assert_eq!(claims.aud, "sts.amazonaws.com");
        assert_eq!((claims.iat, claims.nbf, claims.exp), (1_000, 1_000, 1_300));
        assert_eq!(claims.job, "run-42.1");
        assert!(claims.aws_tags.is_none());
        let json = serde_json::to_value(&claims).unwrap();
        assert!(json.get(AWS_TAGS_CLAIM).is_none());
        assert!(json["exp"].is_i64() && json["iat"].is_i64() && json["aud"].is_string());
        // Another job of the same step: the same subject.
        let mut other = request(1_000, 10_000);
        other.job = "run-43";
        assert_eq!(
            federation_claims(&target(300, false), &other).unwrap().sub,
            claims.sub
        );
    }

    #[test]
    fn the_lifetime_never_passes_the_step_token() {
        let claims = federation_claims(&target(3_600, false), &request(1_000, 1_120)).unwrap();
        assert_eq!(claims.exp, 1_120);
        assert!(federation_claims(&target(300, false), &request(1_000, 1_000)).is_err());
        assert!(federation_claims(&target(300, false), &request(1_000, 900)).is_err());
    }

    #[test]
    fn aws_session_tags_in_the_documented_shape() {
        let claims = federation_claims(&target(300, true), &request(1_000, 10_000)).unwrap();
        let json = serde_json::to_value(&claims).unwrap();
        assert_eq!(
            json[AWS_TAGS_CLAIM],
            serde_json::json!({
                "principal_tags": {
                    "job": ["run-42.1"],
                    "step": ["apply"],
                    "workflow": ["deploy"],
                    "workload": ["deployer"],
                },
                "transitive_tag_keys": [],
            })
        );
        let back: FederationClaims = serde_json::from_value(json).unwrap();
        assert_eq!(back, claims);
    }

    #[test]
    fn tag_values_outside_awss_rules_are_left_out() {
        assert!(is_valid_aws_tag_value("run-42.1:a@b/c=d+e f_g"));
        assert!(!is_valid_aws_tag_value("a,b"));
        assert!(!is_valid_aws_tag_value(&"a".repeat(AWS_TAG_VALUE_MAX + 1)));
        let mut odd = request(1_000, 10_000);
        odd.job = "run#1";
        let claims = federation_claims(&target(300, true), &odd).unwrap();
        let tags = claims.aws_tags.unwrap().principal_tags;
        assert!(!tags.contains_key("job"));
        assert_eq!(tags.len(), 3);
    }

    #[test]
    fn a_subject_over_gcps_limit_is_refused_with_its_length() {
        let long = "w".repeat(64);
        assert!(check_subject("deployer", "deploy", "apply").is_ok());
        let error = check_subject(&long, &long, "apply").unwrap_err();
        assert!(error.0.contains("bytes"), "{error}");
        assert!(
            error
                .0
                .contains(&subject(&long, &long, "apply").len().to_string())
        );
        let req = FederationRequest {
            workload: &long,
            workflow: &long,
            ..request(1_000, 10_000)
        };
        assert!(federation_claims(&target(300, false), &req).is_err());
    }

    #[test]
    fn federation_token_ids_are_told_apart() {
        assert!(is_federation_token_id("ft-abc"));
        assert!(!is_federation_token_id("tc-abc"));
    }
}
