//! Policy as code: workloads, workflows and steps, from TOML.
//!
//! ```toml
//! # Refuse the steps of workflows past their review date (default: only warn).
//! enforce_review = false
//!
//! [workloads.ci-deployer]
//! client_id = "ci-deployer"        # optional, defaults to the workload name
//! secret_sha256 = "9f86d0..."      # SHA-256 (hex) of a broker-generated secret
//! workflows = ["deploy-web"]
//!
//! [workflows.deploy-web]
//! review_by = 2027-03-31
//!
//! [workflows.deploy-web.steps.build]
//! scopes = ["read:github/acme/web", "write:registry/acme/web/*"]
//! default_ttl = "5m"               # optional, default 5m
//! max_ttl = "15m"                  # optional, default 15m, never above 1h
//! audiences = ["https://registry.example.com"]   # optional
//! targets = ["warehouse"]          # optional: declared targets it reaches
//! ```
//!
//! `[targets.NAME]` declares a system Stint makes native credentials for;
//! its keys and the scope grammar of each kind are in [`crate::target`]
//! (parsed by `target/policy_section.rs`).
//!
//! [`Policy::parse`] validates everything and reports every problem with the
//! file, line, column and key. Nothing about a policy is checked later: a
//! `Policy` value is valid by construction.

use crate::approval::{Elevation, Operator};
use crate::federation::{
    Binding, ClaimPath, DEFAULT_MAX_TOKEN_AGE, MAX_MATCHERS_PER_BINDING, Preset, TrustedIssuer,
};
use crate::glob::Glob;
use crate::ids::{self, validate_audience, validate_name};
use crate::jose::Algorithm;
use crate::scope::ScopePattern;
use crate::secret;
use crate::target::Target;
use crate::target::policy_section::{self, DeclaredTargets, RawTarget};
use crate::ttl::{DEFAULT_MAX_TTL, DEFAULT_TTL, Ttl};
use chrono::NaiveDate;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

mod review;
pub use review::{Cadence, Keep, StepReview};

/// The largest policy file accepted, in bytes.
pub const MAX_POLICY_LEN: usize = 1024 * 1024;
/// The most scope patterns one step may allow.
pub const MAX_PATTERNS_PER_STEP: usize = 64;
/// The most bytes of allowances a `policy_loaded` record lists (see
/// [`Policy::allowances`]); well inside an audit record.
const MAX_AUDITED_ALLOWANCES: usize = 256 * 1024;
/// The capability that allows administrative calls (signing key rotation).
pub const CAPABILITY_ADMIN: &str = "admin";

/// What the broker does with a workflow past its `review_by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverdueAction {
    /// Refuse its steps (`overdue = "deny"`, or `enforce_review = true`).
    Deny,
    /// Mint its standing scopes, refuse elevation.
    DenyElevation,
    /// Mint as usual; the mint's audit record says the workflow is overdue
    /// (the default).
    Warn,
}

impl OverdueAction {
    /// The policy's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::DenyElevation => "deny_elevation",
            Self::Warn => "warn",
        }
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    overdue: OverdueAction,
    workloads: BTreeMap<String, Workload>,
    by_client_id: HashMap<String, String>,
    issuers: BTreeMap<String, TrustedIssuer>,
    workflows: BTreeMap<String, Workflow>,
    operators: BTreeMap<String, PolicyOperator>,
    targets: BTreeMap<String, Target>,
    digest: String,
}

/// A person who may approve elevations: `[operators.NAME]`.
#[derive(Clone)]
pub struct PolicyOperator {
    name: String,
    groups: BTreeSet<String>,
    owns: BTreeSet<String>,
    key_sha256: Option<[u8; 32]>,
    oidc: Option<OperatorOidc>,
}

/// How an operator signs in with an OIDC ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorOidc {
    /// The trusted issuer (a name under `[issuers]`).
    pub issuer: String,
    /// The ID token's `sub`.
    pub subject: String,
    /// A claim (a list of strings) whose values are groups the operator is
    /// in, besides those the policy lists.
    pub groups_claim: Option<String>,
}

impl fmt::Debug for PolicyOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyOperator")
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("owns", &self.owns)
            .field("key_sha256", &self.key_sha256.map(|_| "<set>"))
            .field("oidc", &self.oidc)
            .finish()
    }
}

impl PolicyOperator {
    /// The operator's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The groups the policy puts them in.
    pub fn groups(&self) -> &BTreeSet<String> {
        &self.groups
    }
    /// The workloads they own (whose requests they never approve).
    pub fn owns(&self) -> &BTreeSet<String> {
        &self.owns
    }
    /// Their OIDC sign-in, if any.
    pub fn oidc(&self) -> Option<&OperatorOidc> {
        self.oidc.as_ref()
    }
    /// The operator as the approval rules see them, with `extra_groups`
    /// (from their ID token's groups claim) added to the policy's.
    pub fn as_approver(&self, extra_groups: impl IntoIterator<Item = String>) -> Operator {
        let mut groups = self.groups.clone();
        groups.extend(extra_groups);
        Operator {
            name: self.name.clone(),
            groups,
            owns: self.owns.clone(),
        }
    }
}

/// A non-human identity that asks for tokens.
#[derive(Clone)]
pub struct Workload {
    name: String,
    client_id: String,
    /// `None` for a workload that only authenticates with federated
    /// identities.
    secret_sha256: Option<[u8; 32]>,
    workflows: Vec<String>,
    admin: bool,
    /// The audiences it verifies tokens for, as a resource server.
    serves: Vec<String>,
    bindings: Vec<Binding>,
    certificate: Option<CertificateIdentity>,
}

/// The TLS client certificate identity a workload is bound to (RFC 8705
/// `tls_client_auth`): a subject alternative name, matched exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateIdentity {
    /// A URI SAN, e.g. a SPIFFE ID `spiffe://example.org/ns/ci/sa/deployer`.
    Uri(String),
    /// A DNS SAN, e.g. `deployer.ci.example.org`.
    Dns(String),
}

impl std::fmt::Display for CertificateIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uri(uri) => write!(f, "URI:{uri}"),
            Self::Dns(dns) => write!(f, "DNS:{dns}"),
        }
    }
}

/// A named sequence of steps.
#[derive(Debug, Clone)]
pub struct Workflow {
    name: String,
    review_by: NaiveDate,
    steps: BTreeMap<String, Step>,
}

/// One step of a workflow: what it may ask for and for how long.
#[derive(Debug, Clone)]
pub struct Step {
    name: String,
    workflow: String,
    scopes: Vec<ScopePattern>,
    default_ttl: Ttl,
    max_ttl: Ttl,
    audiences: Vec<String>,
    targets: Vec<String>,
    elevation: Option<StepElevation>,
    review: StepReview,
}

/// What operators may grant a step beyond its standing scopes.
#[derive(Debug, Clone)]
pub struct StepElevation {
    scopes: Vec<ScopePattern>,
    rules: Elevation,
}

impl StepElevation {
    /// The extra scope patterns.
    pub fn scopes(&self) -> &[ScopePattern] {
        &self.scopes
    }
    /// Who approves, how many, for how long.
    pub fn rules(&self) -> &Elevation {
        &self.rules
    }
}

/// The longest an approval or a request's wait may be, in seconds.
pub const MAX_ELEVATION_SECS: i64 = 24 * 3600;
/// The largest quorum.
pub const MAX_QUORUM: usize = 10;

impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workload")
            .field("name", &self.name)
            .field("client_id", &self.client_id)
            .field("workflows", &self.workflows)
            .finish_non_exhaustive()
    }
}

impl Workload {
    /// The workload's name: every token's `sub`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The client id it authenticates as: every token's `client_id`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    /// The workflows it may run.
    pub fn workflows(&self) -> &[String] {
        &self.workflows
    }
    /// Whether it has the `admin` capability: it may rotate the signing keys.
    pub fn is_admin(&self) -> bool {
        self.admin
    }
    /// The audiences it serves as a resource server (`serves`): it may
    /// follow the revocations of tokens for them.
    pub fn serves(&self) -> &[String] {
        &self.serves
    }
    /// Whether it only verifies: it runs no workflow, so it mints nothing.
    pub fn is_verify_only(&self) -> bool {
        self.workflows.is_empty() && !self.serves.is_empty()
    }
    /// Whether `other` is this workload as the policy describes it now,
    /// with the same ways to authenticate: a credential that authenticated
    /// as `self` still does as `other`.
    pub fn same_identity(&self, other: &Workload) -> bool {
        self.name == other.name
            && self.client_id == other.client_id
            && self.secret_sha256 == other.secret_sha256
            && self.certificate == other.certificate
    }
    /// Its bindings to federated identities.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }
    /// The TLS client certificate identity it may authenticate with.
    pub fn certificate(&self) -> Option<&CertificateIdentity> {
        self.certificate.as_ref()
    }
}

impl Workflow {
    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The date by which its grants must be recertified.
    pub fn review_by(&self) -> NaiveDate {
        self.review_by
    }
    /// Whether `today` is past the review date.
    pub fn is_overdue(&self, today: NaiveDate) -> bool {
        today > self.review_by
    }
    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.get(name)
    }
    /// All steps, by name.
    pub fn steps(&self) -> impl Iterator<Item = &Step> {
        self.steps.values()
    }
}

impl Step {
    /// The step's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The workflow it belongs to.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }
    /// The scope patterns it allows.
    pub fn scopes(&self) -> &[ScopePattern] {
        &self.scopes
    }
    /// The lifetime of a token when the request names none.
    pub fn default_ttl(&self) -> Ttl {
        self.default_ttl
    }
    /// The longest lifetime a token for this step may have.
    pub fn max_ttl(&self) -> Ttl {
        self.max_ttl
    }
    /// The audiences a token for this step may name; empty means any.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }
    /// What operators may grant beyond the standing scopes, if anything.
    pub fn elevation(&self) -> Option<&StepElevation> {
        self.elevation.as_ref()
    }
    /// The declared targets (`[targets.NAME]`) it may reach.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }
    /// What the policy tells its reviewers about this step (`cadence`,
    /// `keep`).
    pub fn review(&self) -> &StepReview {
        &self.review
    }
}

impl Policy {
    /// Parse and validate a policy. `source` names the file in messages.
    pub fn parse(source: &str, text: &str) -> Result<Self, PolicyErrors> {
        let mut errors = Errors {
            source,
            text,
            list: Vec::new(),
        };
        if text.len() > MAX_POLICY_LEN {
            errors.push(
                0..0,
                "",
                format!("the policy is larger than {MAX_POLICY_LEN} bytes"),
            );
            return Err(errors.finish());
        }
        let raw: RawPolicy = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(error) => {
                let span = error.span().unwrap_or(0..0);
                let key = key_at(text, span.start);
                errors.push(span, &key, error.message().trim().to_owned());
                return Err(errors.finish());
            }
        };
        let policy = build(raw, &mut errors);
        if errors.list.is_empty() {
            let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()));
            Ok(Policy { digest, ..policy })
        } else {
            Err(errors.finish())
        }
    }

    /// Whether steps of overdue workflows are refused.
    pub fn enforce_review(&self) -> bool {
        self.overdue == OverdueAction::Deny
    }

    /// What the broker does with a workflow past its review date.
    pub fn overdue_action(&self) -> OverdueAction {
        self.overdue
    }

    /// SHA-256 (hex) of the policy text, for audit records.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What each step allows, `workflow/step` to its scope patterns in the
    /// policy's order, as a `policy_loaded` record lists them; `None` when
    /// the list would not fit in one audit record.
    pub fn allowances(&self) -> Option<BTreeMap<String, Vec<String>>> {
        let allows = self.allowance_map();
        let size: usize = allows
            .iter()
            .map(|(step, patterns)| {
                step.len() + 8 + patterns.iter().map(|p| p.len() + 3).sum::<usize>()
            })
            .sum();
        (size <= MAX_AUDITED_ALLOWANCES).then_some(allows)
    }

    /// What each step allows, `workflow/step` to its scope patterns.
    pub fn allowance_map(&self) -> BTreeMap<String, Vec<String>> {
        self.workflows()
            .flat_map(|workflow| workflow.steps())
            .map(|step| {
                (
                    format!("{}/{}", step.workflow(), step.name()),
                    step.scopes()
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect(),
                )
            })
            .collect()
    }

    /// The patterns marked for removal (`shadow`), `workflow/step` to
    /// them, as a `policy_loaded` record lists them (steps without any
    /// left out).
    pub fn shadow_map(&self) -> BTreeMap<String, Vec<String>> {
        self.workflows()
            .flat_map(|workflow| workflow.steps())
            .filter(|step| !step.review().shadow().is_empty())
            .map(|step| {
                (
                    format!("{}/{}", step.workflow(), step.name()),
                    step.review()
                        .shadow()
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect(),
                )
            })
            .collect()
    }

    /// Each workflow's `review_by`, as a `policy_loaded` record lists them.
    pub fn review_dates(&self) -> BTreeMap<String, String> {
        self.workflows()
            .map(|w| (w.name().to_owned(), w.review_by().to_string()))
            .collect()
    }

    /// The workload named `name`.
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.get(name)
    }

    /// All workloads.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    /// The workflow named `name`.
    pub fn workflow(&self, name: &str) -> Option<&Workflow> {
        self.workflows.get(name)
    }

    /// All workflows.
    pub fn workflows(&self) -> impl Iterator<Item = &Workflow> {
        self.workflows.values()
    }

    /// Workflows past their review date on `today`.
    pub fn overdue_workflows(&self, today: NaiveDate) -> Vec<&Workflow> {
        self.workflows
            .values()
            .filter(|w| w.is_overdue(today))
            .collect()
    }

    /// One warning per workflow past its review date on `today`, saying
    /// what the broker does about it: what `stintd check-policy` and
    /// `stint policy check` print.
    pub fn review_warnings(&self, today: NaiveDate) -> Vec<String> {
        let consequence = match self.overdue {
            OverdueAction::Deny => {
                "overdue = \"deny\" (or enforce_review = true), so the broker will refuse its steps until review_by is moved forward"
            }
            OverdueAction::DenyElevation => {
                "overdue = \"deny_elevation\", so the broker will mint its standing scopes and refuse elevation until review_by is moved forward"
            }
            OverdueAction::Warn => {
                "the broker will mint, mark each mint's audit record review_overdue, and report it in stint_policy_workflow_review_overdue"
            }
        };
        self.overdue_workflows(today)
            .into_iter()
            .map(|workflow| {
                format!(
                    "workflow {:?} is past its review date ({}): {consequence}",
                    workflow.name(),
                    workflow.review_by()
                )
            })
            .collect()
    }

    /// The operator named `name`.
    pub fn operator(&self, name: &str) -> Option<&PolicyOperator> {
        self.operators.get(name)
    }

    /// All operators.
    pub fn operators(&self) -> impl Iterator<Item = &PolicyOperator> {
        self.operators.values()
    }

    /// The target named `name` (`[targets.NAME]`).
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.get(name)
    }

    /// All declared targets, by name.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }

    /// The operator whose key this is. Every operator's hash is compared,
    /// in constant time, whatever matches: timing tells nothing.
    pub fn operator_by_key(&self, presented: &str) -> Option<&PolicyOperator> {
        let mut found = None;
        for operator in self.operators.values() {
            if let Some(expected) = &operator.key_sha256
                && secret::verify(presented, expected)
            {
                found = Some(operator);
            }
        }
        found
    }

    /// The operator who signs in as `subject` at `issuer` (a policy name).
    pub fn operator_for_identity(&self, issuer: &str, subject: &str) -> Option<&PolicyOperator> {
        self.operators.values().find(|o| {
            o.oidc
                .as_ref()
                .is_some_and(|oidc| oidc.issuer == issuer && oidc.subject == subject)
        })
    }

    /// The trusted issuer whose URL is exactly `iss`.
    pub fn trusted_issuer(&self, iss: &str) -> Option<&TrustedIssuer> {
        self.issuers.values().find(|issuer| issuer.url() == iss)
    }

    /// All trusted issuers.
    pub fn trusted_issuers(&self) -> impl Iterator<Item = &TrustedIssuer> {
        self.issuers.values()
    }

    /// The workloads with a binding to `issuer` (a policy name) that the
    /// verified `claims` satisfy. More than one is a policy problem the
    /// caller must refuse, not resolve.
    pub fn workloads_for_identity(
        &self,
        issuer: &str,
        claims: &serde_json::Value,
    ) -> Vec<&Workload> {
        self.workloads
            .values()
            .filter(|w| {
                w.bindings
                    .iter()
                    .any(|b| b.issuer() == issuer && b.matches(claims))
            })
            .collect()
    }

    /// The workload with `client_id` whose certificate binding is one of
    /// `sans` (the presented certificate's subject alternative names).
    pub fn workload_for_certificate(
        &self,
        client_id: &str,
        sans: &[CertificateIdentity],
    ) -> Option<&Workload> {
        let workload = self
            .by_client_id
            .get(client_id)
            .and_then(|name| self.workloads.get(name))?;
        let bound = workload.certificate.as_ref()?;
        sans.contains(bound).then_some(workload)
    }

    /// Whether some workload has this client id.
    pub fn knows_client(&self, client_id: &str) -> bool {
        self.by_client_id.contains_key(client_id)
    }

    /// Authenticate a client by id and secret. The secret is compared in
    /// constant time, and an unknown client id costs the same work as a
    /// known one, so timing tells nothing about which ids exist.
    pub fn authenticate(&self, client_id: &str, client_secret: &str) -> Option<&Workload> {
        const NO_SUCH_HASH: [u8; 32] = [0; 32];
        let workload = self
            .by_client_id
            .get(client_id)
            .and_then(|name| self.workloads.get(name));
        let expected = workload
            .and_then(|w| w.secret_sha256.as_ref())
            .unwrap_or(&NO_SUCH_HASH);
        let secret_ok = secret::verify(client_secret, expected);
        workload.filter(|_| secret_ok)
    }

    /// Find the step a request names for `workload`: either `step` alone,
    /// if exactly one of the workload's workflows has a step of that name,
    /// or `workflow/step`.
    pub fn resolve_step(
        &self,
        workload: &Workload,
        step_ref: &str,
    ) -> Result<(&Workflow, &Step), StepLookup> {
        if let Some((workflow_name, step_name)) = step_ref.split_once('/') {
            if !workload.workflows.iter().any(|w| w == workflow_name) {
                return Err(StepLookup::NotFound);
            }
            let workflow = self
                .workflows
                .get(workflow_name)
                .ok_or(StepLookup::NotFound)?;
            let step = workflow.steps.get(step_name).ok_or(StepLookup::NotFound)?;
            return Ok((workflow, step));
        }
        let mut found = workload.workflows.iter().filter_map(|name| {
            let workflow = self.workflows.get(name)?;
            Some((workflow, workflow.steps.get(step_ref)?))
        });
        match (found.next(), found.next()) {
            (Some(hit), None) => Ok(hit),
            (Some(_), Some(_)) => Err(StepLookup::Ambiguous),
            (None, _) => Err(StepLookup::NotFound),
        }
    }
}

/// Why a step reference did not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepLookup {
    /// No workflow of the workload has that step.
    NotFound,
    /// Several do; the request must say `workflow/step`.
    Ambiguous,
}

// --- Raw, spanned form --------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    enforce_review: Option<Spanned<bool>>,
    #[serde(default)]
    overdue: Option<Spanned<String>>,
    #[serde(default)]
    workloads: BTreeMap<String, Spanned<RawWorkload>>,
    #[serde(default)]
    workflows: BTreeMap<String, Spanned<RawWorkflow>>,
    #[serde(default)]
    issuers: BTreeMap<String, Spanned<RawIssuer>>,
    #[serde(default)]
    operators: BTreeMap<String, Spanned<RawOperator>>,
    #[serde(default)]
    targets: BTreeMap<String, Spanned<RawTarget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperator {
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    owns: Vec<Spanned<String>>,
    #[serde(default)]
    key_sha256: Option<Spanned<String>>,
    #[serde(default)]
    oidc: Option<Spanned<RawOperatorOidc>>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; accepted, not used
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperatorOidc {
    issuer: Spanned<String>,
    subject: Spanned<String>,
    #[serde(default)]
    groups_claim: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    url: Spanned<String>,
    #[serde(default)]
    preset: Option<Spanned<String>>,
    audiences: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    algorithms: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    max_token_age: Option<Spanned<String>>,
    #[serde(default)]
    job_claims: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; accepted, not used
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    dns: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    issuer: Spanned<String>,
    claims: Spanned<BTreeMap<String, Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    client_id: Option<Spanned<String>>,
    #[serde(default)]
    secret_sha256: Option<Spanned<String>>,
    #[serde(default)]
    federated: Option<Vec<Spanned<RawBinding>>>,
    #[serde(default)]
    certificate: Option<Spanned<RawCertificate>>,
    #[serde(default)]
    workflows: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    capabilities: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    serves: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; accepted, not used
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    review_by: Spanned<toml::Value>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; accepted, not used
    description: Option<String>,
    #[serde(default)]
    steps: BTreeMap<String, Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    scopes: Spanned<Vec<Spanned<String>>>,
    default_ttl: Option<Spanned<String>>,
    max_ttl: Option<Spanned<String>>,
    #[serde(default)]
    audiences: Vec<Spanned<String>>,
    #[serde(default)]
    elevation: Option<Spanned<RawElevation>>,
    #[serde(default)]
    targets: Option<Spanned<Vec<Spanned<String>>>>,
    /// For reviewers (`stint policy suggest`), not for decisions.
    #[serde(default)]
    cadence: Option<Spanned<String>>,
    #[serde(default)]
    keep: Option<Spanned<Vec<Spanned<review::RawKeep>>>>,
    #[serde(default)]
    shadow: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; accepted, not used
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawElevation {
    scopes: Spanned<Vec<Spanned<String>>>,
    approver_groups: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "one")]
    quorum: usize,
    max_duration: Spanned<String>,
    max_wait: Spanned<String>,
    #[serde(default)]
    reason_required: bool,
}

fn one() -> usize {
    1
}

fn build(raw: RawPolicy, errors: &mut Errors<'_>) -> Policy {
    let issuers = build_issuers(raw.issuers, errors);
    let targets = policy_section::build_targets(raw.targets, errors);
    let mut workflows = BTreeMap::new();
    for (name, spanned) in raw.workflows {
        let span = spanned.span();
        let key = format!("workflows.{name}");
        if let Err(e) = validate_name(&name) {
            errors.push(span.clone(), &key, format!("invalid workflow name: {e}"));
        }
        let raw_workflow = spanned.into_inner();
        let review_by = parse_review_by(&raw_workflow.review_by, &key, errors);
        if raw_workflow.steps.is_empty() {
            errors.push(
                span.clone(),
                &key,
                "a workflow must have at least one step".into(),
            );
        }
        let mut steps = BTreeMap::new();
        for (step_name, raw_step) in raw_workflow.steps {
            let step_key = format!("{key}.steps.{step_name}");
            if let Err(e) = validate_name(&step_name) {
                errors.push(
                    raw_step.span(),
                    &step_key,
                    format!("invalid step name: {e}"),
                );
            }
            let step = build_step(&name, &step_name, raw_step, &step_key, &targets, errors);
            steps.insert(step_name, step);
        }
        workflows.insert(
            name.clone(),
            Workflow {
                name,
                review_by: review_by.unwrap_or(NaiveDate::MIN),
                steps,
            },
        );
    }

    let mut workloads = BTreeMap::new();
    let mut by_client_id: HashMap<String, String> = HashMap::new();
    for (name, spanned) in raw.workloads {
        let span = spanned.span();
        let key = format!("workloads.{name}");
        if let Err(e) = validate_name(&name) {
            errors.push(span.clone(), &key, format!("invalid workload name: {e}"));
        }
        let raw_workload = spanned.into_inner();
        let client_id = match raw_workload.client_id {
            Some(id) => {
                if let Err(e) = validate_name(id.get_ref()) {
                    errors.push(
                        id.span(),
                        &format!("{key}.client_id"),
                        format!("invalid client id: {e}"),
                    );
                }
                id.into_inner()
            }
            None => name.clone(),
        };
        if let Some(other) = by_client_id.insert(client_id.clone(), name.clone()) {
            errors.push(
                span.clone(),
                &format!("{key}.client_id"),
                format!("client id {client_id:?} is already used by workload {other:?}"),
            );
        }
        let secret_sha256 = raw_workload
            .secret_sha256
            .as_ref()
            .map(|secret| parse_sha256(secret, &format!("{key}.secret_sha256"), errors));
        let mut bindings = Vec::new();
        for (i, raw_binding) in raw_workload
            .federated
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let binding_key = format!("{key}.federated[{i}]");
            if let Some(binding) = build_binding(raw_binding, &issuers, &binding_key, errors) {
                bindings.push(binding);
            }
        }
        let certificate = raw_workload.certificate.and_then(|raw| {
            let cert_span = raw.span();
            let cert_key = format!("{key}.certificate");
            match raw.into_inner() {
                RawCertificate {
                    uri: Some(uri),
                    dns: None,
                } if uri.contains(':')
                    && uri.len() <= 2048
                    && uri.bytes().all(|b| b.is_ascii_graphic()) =>
                {
                    Some(CertificateIdentity::Uri(uri))
                }
                RawCertificate {
                    uri: None,
                    dns: Some(dns),
                } if !dns.is_empty()
                    && dns.len() <= 253
                    && dns
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') =>
                {
                    Some(CertificateIdentity::Dns(dns.to_ascii_lowercase()))
                }
                RawCertificate {
                    uri: Some(_),
                    dns: Some(_),
                }
                | RawCertificate {
                    uri: None,
                    dns: None,
                } => {
                    errors.push(
                        cert_span,
                        &cert_key,
                        "give exactly one of uri or dns".into(),
                    );
                    None
                }
                _ => {
                    errors.push(
                        cert_span,
                        &cert_key,
                        "a uri SAN must be an absolute URI, a dns SAN a host name".into(),
                    );
                    None
                }
            }
        });
        if secret_sha256.is_none() && bindings.is_empty() && certificate.is_none() {
            errors.push(
                span.clone(),
                &key,
                "a workload needs a secret_sha256, a [[federated]] binding or a certificate (any combination)".into(),
            );
        }
        let mut admin = false;
        for (i, capability) in raw_workload
            .capabilities
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            match capability.get_ref().as_str() {
                CAPABILITY_ADMIN if !admin => admin = true,
                CAPABILITY_ADMIN => errors.push(
                    capability.span(),
                    &format!("{key}.capabilities[{i}]"),
                    "capability \"admin\" is listed twice".into(),
                ),
                other => errors.push(
                    capability.span(),
                    &format!("{key}.capabilities[{i}]"),
                    format!("unknown capability {other:?} (the only one is \"admin\")"),
                ),
            }
        }
        let serves = build_serves(raw_workload.serves, &key, errors);
        let mut workload_flows = Vec::new();
        let (flows_span, flows) = match raw_workload.workflows {
            Some(flows) => (flows.span(), flows.into_inner()),
            None => (span.clone(), Vec::new()),
        };
        if flows.is_empty() && !admin && serves.is_empty() {
            errors.push(
                flows_span,
                &format!("{key}.workflows"),
                "a workload must run at least one workflow (or have the admin capability, or serve audiences as a verify-only workload)".into(),
            );
        }
        for (i, flow) in flows.into_iter().enumerate() {
            let flow_key = format!("{key}.workflows[{i}]");
            if !workflows.contains_key(flow.get_ref()) {
                errors.push(
                    flow.span(),
                    &flow_key,
                    format!("no workflow is named {:?}", flow.get_ref()),
                );
            } else if workload_flows.contains(flow.get_ref()) {
                errors.push(
                    flow.span(),
                    &flow_key,
                    format!("workflow {:?} is listed twice", flow.get_ref()),
                );
            } else {
                workload_flows.push(flow.into_inner());
            }
        }
        check_federation_subjects(&name, &span, &workload_flows, &workflows, &targets, errors);
        workloads.insert(
            name.clone(),
            Workload {
                name,
                client_id,
                secret_sha256,
                workflows: workload_flows,
                admin,
                serves,
                bindings,
                certificate,
            },
        );
    }

    let operators = build_operators(raw.operators, &workloads, &issuers, errors);
    check_quorums(&workflows, &workloads, &operators, errors);
    let overdue = overdue_action(raw.enforce_review, raw.overdue, errors);
    Policy {
        overdue,
        workloads,
        by_client_id,
        issuers,
        workflows,
        operators,
        targets: targets.into_built(),
        digest: String::new(),
    }
}

/// `overdue`, or the older `enforce_review` (not both).
fn overdue_action(
    enforce_review: Option<Spanned<bool>>,
    overdue: Option<Spanned<String>>,
    errors: &mut Errors<'_>,
) -> OverdueAction {
    match (enforce_review, overdue) {
        (Some(_), Some(overdue)) => {
            errors.push(
                overdue.span(),
                "overdue",
                "give overdue or enforce_review, not both (enforce_review = true is overdue = \"deny\")".into(),
            );
            OverdueAction::Deny
        }
        (Some(enforce), None) if *enforce.get_ref() => OverdueAction::Deny,
        (_, None) => OverdueAction::Warn,
        (None, Some(overdue)) => match overdue.get_ref().as_str() {
            "deny" => OverdueAction::Deny,
            "deny_elevation" => OverdueAction::DenyElevation,
            "warn" => OverdueAction::Warn,
            other => {
                errors.push(
                    overdue.span(),
                    "overdue",
                    format!("overdue {other:?} is not \"deny\", \"deny_elevation\" or \"warn\""),
                );
                OverdueAction::Deny
            }
        },
    }
}

/// Every step of `workflows` that lists an OIDC target gives `workload`
/// a federation token subject: each must fit GCP's limit
/// ([`crate::target::oidc::MAX_SUBJECT_LEN`]).
fn check_federation_subjects(
    workload: &str,
    span: &Range<usize>,
    workflows: &[String],
    built: &BTreeMap<String, Workflow>,
    targets: &policy_section::DeclaredTargets,
    errors: &mut Errors<'_>,
) {
    for workflow in workflows.iter().filter_map(|name| built.get(name)) {
        for step in workflow.steps.values() {
            let federates = step.targets.iter().any(|name| targets.is_oidc(name));
            if !federates {
                continue;
            }
            if let Err(error) =
                crate::target::oidc::check_subject(workload, &workflow.name, &step.name)
            {
                errors.push(
                    span.clone(),
                    &format!("workflows.{}.steps.{}", workflow.name, step.name),
                    format!("run by workload {workload:?}: {error}"),
                );
            }
        }
    }
}

fn build_operators(
    raw: BTreeMap<String, Spanned<RawOperator>>,
    workloads: &BTreeMap<String, Workload>,
    issuers: &BTreeMap<String, TrustedIssuer>,
    errors: &mut Errors<'_>,
) -> BTreeMap<String, PolicyOperator> {
    let mut operators = BTreeMap::new();
    let mut identities: HashMap<(String, String), String> = HashMap::new();
    for (name, spanned) in raw {
        let span = spanned.span();
        let key = format!("operators.{name}");
        if let Err(e) = validate_name(&name) {
            errors.push(span.clone(), &key, format!("invalid operator name: {e}"));
        }
        if workloads.contains_key(&name) {
            errors.push(
                span.clone(),
                &key,
                format!("{name:?} is also a workload: operators are people, name them apart"),
            );
        }
        let raw = spanned.into_inner();
        let mut groups = BTreeSet::new();
        for (i, group) in raw.groups.into_iter().enumerate() {
            if let Err(e) = validate_name(group.get_ref()) {
                errors.push(
                    group.span(),
                    &format!("{key}.groups[{i}]"),
                    format!("invalid group name: {e}"),
                );
            }
            groups.insert(group.into_inner());
        }
        let mut owns = BTreeSet::new();
        for (i, workload) in raw.owns.into_iter().enumerate() {
            if !workloads.contains_key(workload.get_ref()) {
                errors.push(
                    workload.span(),
                    &format!("{key}.owns[{i}]"),
                    format!("no workload is named {:?}", workload.get_ref()),
                );
            }
            owns.insert(workload.into_inner());
        }
        let key_sha256 = raw
            .key_sha256
            .as_ref()
            .map(|hash| parse_sha256(hash, &format!("{key}.key_sha256"), errors));
        let oidc = raw.oidc.map(|oidc| {
            let oidc = oidc.into_inner();
            let oidc_key = format!("{key}.oidc");
            match issuers.get(oidc.issuer.get_ref()) {
                None => errors.push(
                    oidc.issuer.span(),
                    &format!("{oidc_key}.issuer"),
                    format!(
                        "no issuer is named {:?} under [issuers]",
                        oidc.issuer.get_ref()
                    ),
                ),
                // An issuer whose tokens name jobs could let a job sign in
                // as a person: operators need an issuer of their own.
                Some(issuer)
                    if issuer.preset().is_some()
                        || workloads.values().any(|w| {
                            w.bindings
                                .iter()
                                .any(|b| b.issuer() == oidc.issuer.get_ref())
                        }) =>
                {
                    errors.push(
                        oidc.issuer.span(),
                        &format!("{oidc_key}.issuer"),
                        format!(
                            "issuer {:?} identifies workloads (a CI preset or a workload's [[federated]] binding): operators sign in through an issuer of their own, such as the company's IdP",
                            oidc.issuer.get_ref()
                        ),
                    );
                }
                Some(_) => {}
            }
            let subject = oidc.subject.get_ref();
            if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
                errors.push(
                    oidc.subject.span(),
                    &format!("{oidc_key}.subject"),
                    "the ID token's sub: 1 to 256 characters, no control characters".into(),
                );
            }
            let groups_claim = oidc.groups_claim.map(|claim| {
                let ok = !claim.get_ref().is_empty()
                    && claim.get_ref().len() <= 128
                    && claim.get_ref().bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    errors.push(
                        claim.span(),
                        &format!("{oidc_key}.groups_claim"),
                        "a claim name: 1 to 128 printable characters, no spaces".into(),
                    );
                }
                claim.into_inner()
            });
            let identity = (oidc.issuer.get_ref().clone(), subject.clone());
            if let Some(other) = identities.insert(identity, name.clone()) {
                errors.push(
                    oidc.subject.span(),
                    &format!("{oidc_key}.subject"),
                    format!("operator {other:?} already signs in as this subject"),
                );
            }
            OperatorOidc {
                issuer: oidc.issuer.into_inner(),
                subject: oidc.subject.into_inner(),
                groups_claim,
            }
        });
        if key_sha256.is_none() && oidc.is_none() {
            errors.push(
                span.clone(),
                &key,
                "an operator signs in with a key_sha256 (from `stintd new-operator`) or an oidc identity (or both)".into(),
            );
        }
        if groups.is_empty() && oidc.as_ref().is_none_or(|o| o.groups_claim.is_none()) {
            errors.push(
                span,
                &format!("{key}.groups"),
                "an operator needs groups, from the policy or from an oidc groups_claim".into(),
            );
        }
        operators.insert(
            name.clone(),
            PolicyOperator {
                name,
                groups,
                owns,
                key_sha256,
                oidc,
            },
        );
    }
    operators
}

/// Every elevation must be approvable: for each workload that runs its
/// workflow, enough operators who do not own that workload are in its
/// approver groups (or may be, through a groups claim).
fn check_quorums(
    workflows: &BTreeMap<String, Workflow>,
    workloads: &BTreeMap<String, Workload>,
    operators: &BTreeMap<String, PolicyOperator>,
    errors: &mut Errors<'_>,
) {
    for workflow in workflows.values() {
        for step in workflow.steps.values() {
            let Some(elevation) = &step.elevation else {
                continue;
            };
            let rules = &elevation.rules;
            for workload in workloads
                .values()
                .filter(|w| w.workflows.contains(&workflow.name))
            {
                let eligible = operators
                    .values()
                    .filter(|o| !o.owns.contains(&workload.name))
                    .filter(|o| {
                        !o.groups.is_disjoint(&rules.approver_groups)
                            || o.oidc
                                .as_ref()
                                .is_some_and(|oidc| oidc.groups_claim.is_some())
                    })
                    .count();
                if eligible < rules.quorum {
                    errors.push(
                        0..0,
                        &format!(
                            "workflows.{}.steps.{}.elevation.quorum",
                            workflow.name, step.name
                        ),
                        format!(
                            "a quorum of {} can never be met for workload {:?}: only {eligible} operator(s) who do not own it are in the approver groups",
                            rules.quorum, workload.name
                        ),
                    );
                }
            }
        }
    }
}

fn build_issuers(
    raw: BTreeMap<String, Spanned<RawIssuer>>,
    errors: &mut Errors<'_>,
) -> BTreeMap<String, TrustedIssuer> {
    let mut issuers = BTreeMap::new();
    let mut urls: HashMap<String, String> = HashMap::new();
    for (name, spanned) in raw {
        let span = spanned.span();
        let key = format!("issuers.{name}");
        if let Err(e) = validate_name(&name) {
            errors.push(span.clone(), &key, format!("invalid issuer name: {e}"));
        }
        let raw = spanned.into_inner();
        let url = raw.url.get_ref().clone();
        if let Err(why) = validate_issuer_url(&url) {
            errors.push(raw.url.span(), &format!("{key}.url"), why.into());
        }
        if let Some(other) = urls.insert(url.clone(), name.clone()) {
            errors.push(
                raw.url.span(),
                &format!("{key}.url"),
                format!("issuer {other:?} has the same url"),
            );
        }
        let preset = raw.preset.as_ref().and_then(|preset| {
            let found = Preset::from_name(preset.get_ref());
            if found.is_none() {
                errors.push(
                    preset.span(),
                    &format!("{key}.preset"),
                    format!(
                        "unknown preset {:?} (known: github-actions, gitlab-ci, kubernetes)",
                        preset.get_ref()
                    ),
                );
            }
            found
        });
        let mut audiences = Vec::new();
        if raw.audiences.get_ref().is_empty() {
            errors.push(
                raw.audiences.span(),
                &format!("{key}.audiences"),
                "name at least one audience: the value the platform puts in its tokens' aud for this broker".into(),
            );
        }
        for (i, audience) in raw.audiences.into_inner().into_iter().enumerate() {
            if let Err(e) = validate_audience(audience.get_ref()) {
                errors.push(
                    audience.span(),
                    &format!("{key}.audiences[{i}]"),
                    format!("invalid audience: {e}"),
                );
            }
            audiences.push(audience.into_inner());
        }
        let algorithms = match raw.algorithms {
            None => preset.map_or_else(
                || vec![Algorithm::RS256, Algorithm::ES256],
                Preset::algorithms,
            ),
            Some(names) => {
                let mut algorithms = Vec::new();
                for (i, name) in names.into_iter().enumerate() {
                    match Algorithm::from_name(name.get_ref()) {
                        Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                        Some(_) => errors.push(
                            name.span(),
                            &format!("{key}.algorithms[{i}]"),
                            "listed twice".into(),
                        ),
                        None => errors.push(
                            name.span(),
                            &format!("{key}.algorithms[{i}]"),
                            format!(
                                "unsupported algorithm {:?} (RS256, ES256 and EdDSA are)",
                                name.get_ref()
                            ),
                        ),
                    }
                }
                algorithms
            }
        };
        let max_token_age = match &raw.max_token_age {
            None => DEFAULT_MAX_TOKEN_AGE,
            Some(text) => match Ttl::parse_policy(text.get_ref()) {
                Ok(ttl) => std::time::Duration::from_secs(u64::from(ttl.as_secs())),
                Err(e) => {
                    errors.push(text.span(), &format!("{key}.max_token_age"), format!("{e}"));
                    DEFAULT_MAX_TOKEN_AGE
                }
            },
        };
        let job_claims = match raw.job_claims {
            None => preset.map(Preset::job_claims).unwrap_or_default(),
            Some(paths) => paths
                .into_iter()
                .enumerate()
                .filter_map(|(i, path)| match ClaimPath::parse(path.get_ref()) {
                    Ok(path) => Some(path),
                    Err(why) => {
                        errors.push(path.span(), &format!("{key}.job_claims[{i}]"), why.into());
                        None
                    }
                })
                .collect(),
        };
        issuers.insert(
            name.clone(),
            TrustedIssuer {
                name,
                url,
                audiences,
                algorithms,
                max_token_age,
                job_claims,
                preset,
            },
        );
    }
    issuers
}

/// An OIDC issuer URL: `https`, a host, no query or fragment (a path is
/// allowed: some platforms have one).
fn validate_issuer_url(url: &str) -> Result<(), &'static str> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Err("an issuer url must start with https://");
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err("an issuer url must name a host");
    }
    if rest.contains(['?', '#', '@']) || !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an issuer url has no query, fragment, user or spaces");
    }
    if url.len() > 256 {
        return Err("an issuer url is at most 256 characters");
    }
    Ok(())
}

fn build_binding(
    raw: Spanned<RawBinding>,
    issuers: &BTreeMap<String, TrustedIssuer>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Option<Binding> {
    let span = raw.span();
    let raw = raw.into_inner();
    let issuer = raw.issuer.get_ref().clone();
    let mut ok = true;
    if !issuers.contains_key(&issuer) {
        errors.push(
            raw.issuer.span(),
            &format!("{key}.issuer"),
            format!("no issuer is named {issuer:?} under [issuers]"),
        );
        ok = false;
    }
    let claims_span = raw.claims.span();
    let claims = raw.claims.into_inner();
    if claims.is_empty() || claims.len() > MAX_MATCHERS_PER_BINDING {
        errors.push(
            claims_span.clone(),
            &format!("{key}.claims"),
            format!("a binding has 1 to {MAX_MATCHERS_PER_BINDING} claim matchers"),
        );
        ok = false;
    }
    let mut matchers = Vec::with_capacity(claims.len());
    for (path, pattern) in claims {
        let claim_key = format!("{key}.claims.{path}");
        let parsed_path = ClaimPath::parse(&path);
        let glob = Glob::parse(pattern.get_ref());
        match (parsed_path, glob) {
            (Ok(path), Ok(glob)) => matchers.push((path, glob)),
            (Err(why), _) => {
                errors.push(pattern.span(), &claim_key, why.into());
                ok = false;
            }
            (_, Err(e)) => {
                errors.push(
                    pattern.span(),
                    &claim_key,
                    format!("invalid pattern: it {e}"),
                );
                ok = false;
            }
        }
    }
    if !matchers.is_empty() && matchers.iter().all(|(_, glob)| !glob.is_exact()) {
        errors.push(
            span.clone(),
            key,
            "every matcher has a '*': pin at least one claim to an exact value (the repository, the namespace...), so the binding names one identity, not a family".into(),
        );
        ok = false;
    }
    if let Some(preset) = issuers.get(&issuer).and_then(TrustedIssuer::preset)
        && !matchers.is_empty()
        && !names_a_tenant(preset, &matchers)
    {
        let what = match preset {
            Preset::GithubActions => {
                "pin the repository: an exact repository, repository_id, repository_owner or repository_owner_id, or a sub of the form repo:ORG/REPO:... without '*' in ORG/REPO"
            }
            Preset::GitlabCi => {
                "pin the project: an exact project_path, project_id, namespace_path or namespace_id, or a sub of the form project_path:GROUP/PROJECT:... without '*' in GROUP/PROJECT"
            }
            Preset::Kubernetes => {
                "pin the namespace: an exact kubernetes.io/namespace, or a sub of the form system:serviceaccount:NAMESPACE:... without '*' in NAMESPACE"
            }
        };
        errors.push(
            span,
            key,
            format!(
                "on a shared issuer, anyone's token can match a binding that names no repository or project: {what}"
            ),
        );
        ok = false;
    }
    ok.then_some(Binding { issuer, matchers })
}

/// Whether a binding to a preset's (shared, multi-tenant) issuer pins the
/// tenant: the repository, project or namespace.
fn names_a_tenant(preset: Preset, matchers: &[(ClaimPath, Glob)]) -> bool {
    let (claims, sub_prefix): (&[&str], &str) = match preset {
        Preset::GithubActions => (
            &[
                "repository",
                "repository_id",
                "repository_owner",
                "repository_owner_id",
            ],
            "repo:",
        ),
        Preset::GitlabCi => (
            &[
                "project_path",
                "project_id",
                "namespace_path",
                "namespace_id",
            ],
            "project_path:",
        ),
        Preset::Kubernetes => (&["kubernetes.io/namespace"], "system:serviceaccount:"),
    };
    matchers.iter().any(|(path, glob)| {
        (claims.contains(&path.as_str()) && glob.is_exact())
            || (path.as_str() == "sub"
                && glob
                    .as_str()
                    .strip_prefix(sub_prefix)
                    .and_then(|rest| rest.split(':').next())
                    .is_some_and(|tenant| !tenant.is_empty() && !tenant.contains('*'))
                && glob.as_str().matches(':').count() > sub_prefix.matches(':').count())
    })
}

/// The most audiences one workload may serve.
pub const MAX_SERVED_AUDIENCES: usize = 64;

fn build_serves(
    raw: Option<Spanned<Vec<Spanned<String>>>>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Vec<String> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let key = format!("{key}.serves");
    if raw.get_ref().is_empty() {
        errors.push(
            raw.span(),
            &key,
            "serves must name at least one audience (or be left out)".into(),
        );
    }
    if raw.get_ref().len() > MAX_SERVED_AUDIENCES {
        errors.push(
            raw.span(),
            &key,
            format!("a workload may serve at most {MAX_SERVED_AUDIENCES} audiences"),
        );
    }
    let mut serves: Vec<String> = Vec::new();
    for (i, audience) in raw.into_inner().into_iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        if let Err(e) = validate_audience(audience.get_ref()) {
            errors.push(audience.span(), &item_key, format!("invalid audience: {e}"));
        } else if serves.contains(audience.get_ref()) {
            errors.push(
                audience.span(),
                &item_key,
                format!("audience {:?} is listed twice", audience.get_ref()),
            );
        } else {
            serves.push(audience.into_inner());
        }
    }
    serves
}

fn build_step(
    workflow: &str,
    name: &str,
    raw: Spanned<RawStep>,
    key: &str,
    declared: &DeclaredTargets,
    errors: &mut Errors<'_>,
) -> Step {
    let step_span = raw.span();
    let raw = raw.into_inner();
    let targets = policy_section::build_step_targets(raw.targets, declared, key, errors);
    let mut scopes: Vec<ScopePattern> = Vec::new();
    if raw.scopes.get_ref().is_empty() {
        errors.push(
            raw.scopes.span(),
            &format!("{key}.scopes"),
            "a step must allow at least one scope".into(),
        );
    }
    if raw.scopes.get_ref().len() > MAX_PATTERNS_PER_STEP {
        errors.push(
            raw.scopes.span(),
            &format!("{key}.scopes"),
            format!("a step may allow at most {MAX_PATTERNS_PER_STEP} scope patterns"),
        );
    }
    for (i, text) in raw.scopes.into_inner().into_iter().enumerate() {
        let pattern_key = format!("{key}.scopes[{i}]");
        match ScopePattern::parse(text.get_ref()) {
            Ok(pattern) if scopes.contains(&pattern) => {
                errors.push(
                    text.span(),
                    &pattern_key,
                    format!("pattern {:?} is listed twice", text.get_ref()),
                );
            }
            Ok(pattern) => {
                policy_section::check_step_pattern(
                    &pattern,
                    text.span(),
                    &pattern_key,
                    &targets,
                    key,
                    declared,
                    errors,
                );
                scopes.push(pattern);
            }
            Err(e) => errors.push(
                text.span(),
                &pattern_key,
                format!("invalid scope pattern {:?}: {e}", text.get_ref()),
            ),
        }
    }
    let ttl = |value: &Option<Spanned<String>>,
               field: &str,
               fallback: Ttl,
               errors: &mut Errors<'_>| match value {
        None => Some(fallback),
        Some(text) => match Ttl::parse_policy(text.get_ref()) {
            Ok(ttl) => Some(ttl),
            Err(e) => {
                errors.push(text.span(), &format!("{key}.{field}"), format!("{e}"));
                None
            }
        },
    };
    let default_ttl = ttl(&raw.default_ttl, "default_ttl", DEFAULT_TTL, errors);
    // When only default_ttl is given and it exceeds the default ceiling, the
    // ceiling follows it rather than producing a confusing error.
    let max_fallback = default_ttl.map_or(DEFAULT_MAX_TTL, |d| d.max(DEFAULT_MAX_TTL));
    let max_ttl = ttl(&raw.max_ttl, "max_ttl", max_fallback, errors);
    if let (Some(default), Some(max)) = (default_ttl, max_ttl)
        && default > max
    {
        let span = raw
            .default_ttl
            .as_ref()
            .map_or(step_span.clone(), |s| s.span());
        errors.push(
            span,
            &format!("{key}.default_ttl"),
            format!("default_ttl ({default}) is longer than max_ttl ({max})"),
        );
    }
    let mut audiences = Vec::new();
    for (i, aud) in raw.audiences.into_iter().enumerate() {
        let aud_key = format!("{key}.audiences[{i}]");
        match validate_audience(aud.get_ref()) {
            Err(e) => errors.push(aud.span(), &aud_key, format!("invalid audience: {e}")),
            Ok(()) if audiences.contains(aud.get_ref()) => {
                errors.push(
                    aud.span(),
                    &aud_key,
                    format!("audience {:?} is listed twice", aud.get_ref()),
                );
            }
            Ok(()) => audiences.push(aud.into_inner()),
        }
    }
    let review = review::build(raw.cadence, raw.keep, raw.shadow, &scopes, key, errors);
    Step {
        name: name.to_owned(),
        workflow: workflow.to_owned(),
        scopes,
        review,
        default_ttl: default_ttl.unwrap_or(DEFAULT_TTL),
        max_ttl: max_ttl.unwrap_or(DEFAULT_MAX_TTL),
        audiences,
        elevation: raw.elevation.and_then(|raw| {
            build_elevation(
                raw,
                &format!("{key}.elevation"),
                (key, &targets, declared),
                errors,
            )
        }),
        targets,
    }
}

fn build_elevation(
    raw: Spanned<RawElevation>,
    key: &str,
    (step_key, step_targets, declared): (&str, &[String], &DeclaredTargets),
    errors: &mut Errors<'_>,
) -> Option<StepElevation> {
    let span = raw.span();
    let raw = raw.into_inner();
    let mut ok = true;
    let mut scopes = Vec::new();
    if raw.scopes.get_ref().is_empty() {
        errors.push(
            raw.scopes.span(),
            &format!("{key}.scopes"),
            "name at least one scope pattern".into(),
        );
        ok = false;
    }
    for (i, pattern) in raw.scopes.into_inner().into_iter().enumerate() {
        match ScopePattern::parse(pattern.get_ref()) {
            Ok(parsed) => {
                policy_section::check_step_pattern(
                    &parsed,
                    pattern.span(),
                    &format!("{key}.scopes[{i}]"),
                    step_targets,
                    step_key,
                    declared,
                    errors,
                );
                scopes.push(parsed);
            }
            Err(e) => {
                errors.push(
                    pattern.span(),
                    &format!("{key}.scopes[{i}]"),
                    format!("invalid scope pattern: {e}"),
                );
                ok = false;
            }
        }
    }
    let mut approver_groups = std::collections::BTreeSet::new();
    if raw.approver_groups.get_ref().is_empty() {
        errors.push(
            raw.approver_groups.span(),
            &format!("{key}.approver_groups"),
            "name at least one approver group".into(),
        );
        ok = false;
    }
    for (i, group) in raw.approver_groups.into_inner().into_iter().enumerate() {
        if let Err(e) = validate_name(group.get_ref()) {
            errors.push(
                group.span(),
                &format!("{key}.approver_groups[{i}]"),
                format!("invalid group name: {e}"),
            );
            ok = false;
        }
        approver_groups.insert(group.into_inner());
    }
    if !(1..=MAX_QUORUM).contains(&raw.quorum) {
        errors.push(
            span.clone(),
            &format!("{key}.quorum"),
            format!("the quorum is 1 to {MAX_QUORUM}"),
        );
        ok = false;
    }
    let mut seconds = |text: &Spanned<String>, name: &str| -> i64 {
        match crate::ttl::parse_duration_secs(text.get_ref()).map(i64::try_from) {
            Ok(Ok(secs)) if secs <= MAX_ELEVATION_SECS => secs,
            _ => {
                errors.push(
                    text.span(),
                    &format!("{key}.{name}"),
                    "a duration like \"30m\" or \"2h\", at most 24h".into(),
                );
                ok = false;
                0
            }
        }
    };
    let max_duration = seconds(&raw.max_duration, "max_duration");
    let max_wait = seconds(&raw.max_wait, "max_wait");
    ok.then_some(StepElevation {
        scopes,
        rules: Elevation {
            approver_groups,
            quorum: raw.quorum,
            max_duration,
            max_wait,
            reason_required: raw.reason_required,
        },
    })
}

fn parse_review_by(
    value: &Spanned<toml::Value>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Option<NaiveDate> {
    let key = format!("{key}.review_by");
    let text = match value.get_ref() {
        toml::Value::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => dt.to_string(),
        toml::Value::String(s) => s.clone(),
        _ => {
            errors.push(value.span(), &key, "expected a date like 2027-03-31".into());
            return None;
        }
    };
    match NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
        Ok(date) => Some(date),
        Err(_) => {
            errors.push(
                value.span(),
                &key,
                format!("{text:?} is not a date like 2027-03-31"),
            );
            None
        }
    }
}

fn parse_sha256(value: &Spanned<String>, key: &str, errors: &mut Errors<'_>) -> [u8; 32] {
    let mut out = [0u8; 32];
    let text = value.get_ref();
    let ok = text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && hex::decode_to_slice(text, &mut out).is_ok();
    if !ok {
        errors.push(
            value.span(),
            key,
            "expected 64 lowercase hex digits: the SHA-256 of a secret made by `stintd new-client`"
                .into(),
        );
    }
    out
}

// --- Errors -------------------------------------------------------------

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file (or other source) name.
    pub file: String,
    /// 1-based line; 0 when the problem is the file as a whole.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The dotted key, e.g. `workflows.demo.steps.read.scopes[1]`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Not about a place in the file (it could not be read at all).
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a policy file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

pub(crate) struct Errors<'a> {
    source: &'a str,
    text: &'a str,
    list: Vec<PolicyError>,
}

impl Errors<'_> {
    pub(crate) fn push(&mut self, span: Range<usize>, key: &str, message: String) {
        let (line, column) = line_column(self.text, span.start);
        self.list.push(PolicyError {
            file: self.source.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message,
        });
    }

    /// How many problems are recorded so far.
    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    fn finish(mut self) -> PolicyErrors {
        self.list.sort_by_key(|e| (e.line, e.column));
        PolicyErrors(self.list)
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The dotted key at `offset`, reconstructed from the nearest table header
/// above it and the `key =` on its line; best effort, for syntax errors.
fn key_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("");
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return trimmed
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned();
    }
    let local = trimmed.split_once('=').map_or("", |(k, _)| k.trim());
    let header = text
        .get(..line_start)
        .unwrap_or("")
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (header, local) {
        (Some(h), "") => h,
        (Some(h), k) => format!("{h}.{k}"),
        (None, k) => k.to_owned(),
    }
}

/// Parse a step reference for error messages: `step` or `workflow/step`.
pub fn validate_step_ref(step_ref: &str) -> Result<(), ids::IdError> {
    match step_ref.split_once('/') {
        Some((workflow, step)) => validate_name(workflow).and_then(|()| validate_name(step)),
        None => validate_name(step_ref),
    }
}

/// A step that allows more after a policy change than before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Widening {
    /// `workflow/step`.
    pub step: String,
    /// Its patterns that no pattern it had before includes (all of them,
    /// for a new step).
    pub added: Vec<String>,
}

/// The steps of `after` that allow what they did not in `before` (both as
/// [`Policy::allowance_map`] gives them). A pattern is new unless one of
/// the step's earlier patterns includes it on its own: a union of narrower
/// patterns that happens to cover it still counts, erring towards telling.
pub fn widenings(
    before: &BTreeMap<String, Vec<String>>,
    after: &BTreeMap<String, Vec<String>>,
) -> Vec<Widening> {
    let parse = |patterns: &[String]| -> Vec<ScopePattern> {
        patterns
            .iter()
            .filter_map(|p| ScopePattern::parse(p).ok())
            .collect()
    };
    after
        .iter()
        .filter_map(|(step, patterns)| {
            let earlier = before.get(step).map(|p| parse(p)).unwrap_or_default();
            let added: Vec<String> = patterns
                .iter()
                .filter(|text| {
                    ScopePattern::parse(text)
                        .map_or(true, |p| !earlier.iter().any(|e| e.includes(&p)))
                })
                .cloned()
                .collect();
            (!added.is_empty()).then(|| Widening {
                step: step.clone(),
                added,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const HASH: &str =
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; // SHA-256("abc")

    fn good() -> String {
        format!(
            r#"
enforce_review = true

[workloads.demo-job]
secret_sha256 = "{HASH}"
workflows = ["demo", "other"]

[workloads.second]
client_id = "second-client"
secret_sha256 = "{HASH}"
workflows = ["other"]

[workflows.demo]
review_by = 2027-01-31

[workflows.demo.steps.read]
scopes = ["read:demo/**"]

[workflows.demo.steps.write]
scopes = ["write:demo/**", "write:other/x"]
default_ttl = "2m"
max_ttl = "10m"
audiences = ["https://demo.example"]

[workflows.other]
review_by = "2020-01-01"

[workflows.other.steps.write]
scopes = ["write:other/*"]
"#
        )
    }

    #[test]
    fn loads_a_good_policy() {
        let policy = Policy::parse("p.toml", &good()).unwrap();
        assert!(policy.enforce_review());
        assert_eq!(policy.digest().len(), 64);
        let demo = policy.workload("demo-job").unwrap();
        assert_eq!(demo.client_id(), "demo-job");
        assert_eq!(
            policy.workload("second").unwrap().client_id(),
            "second-client"
        );
        let (_, read) = policy.resolve_step(demo, "read").unwrap();
        assert_eq!(read.default_ttl(), DEFAULT_TTL);
        assert_eq!(read.max_ttl(), DEFAULT_MAX_TTL);
        let (_, write) = policy.resolve_step(demo, "demo/write").unwrap();
        assert_eq!(write.default_ttl().as_secs(), 120);
        assert_eq!(write.max_ttl().as_secs(), 600);
        assert_eq!(write.audiences(), ["https://demo.example"]);
        assert_eq!(
            policy.resolve_step(demo, "write").unwrap_err(),
            StepLookup::Ambiguous
        );
        assert_eq!(
            policy.resolve_step(demo, "nope").unwrap_err(),
            StepLookup::NotFound
        );
        let second = policy.workload("second").unwrap();
        assert_eq!(
            policy.resolve_step(second, "read").unwrap_err(),
            StepLookup::NotFound
        );
        assert_eq!(
            policy.resolve_step(second, "demo/read").unwrap_err(),
            StepLookup::NotFound
        );
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let overdue: Vec<_> = policy
            .overdue_workflows(today)
            .iter()
            .map(|w| w.name().to_owned())
            .collect();
        assert_eq!(overdue, ["other"]);
    }

    #[test]
    fn authenticates_by_client_id_and_secret() {
        let policy = Policy::parse("p.toml", &good()).unwrap();
        assert_eq!(
            policy.authenticate("demo-job", "abc").map(Workload::name),
            Some("demo-job")
        );
        assert_eq!(
            policy
                .authenticate("second-client", "abc")
                .map(Workload::name),
            Some("second")
        );
        assert!(
            policy.authenticate("second", "abc").is_none(),
            "the workload name is not its client id"
        );
        assert!(policy.authenticate("demo-job", "abd").is_none());
        assert!(policy.authenticate("nobody", "abc").is_none());
    }

    #[test]
    fn verify_only_workloads_serve_audiences_and_run_no_workflow() {
        let with = |serves: &str| {
            format!(
                "{}\n[workloads.orders-api]\nsecret_sha256 = \"{HASH}\"\n{serves}\n",
                good()
            )
        };
        let policy =
            Policy::parse("p.toml", &with("serves = [\"https://orders.example\"]")).unwrap();
        let orders = policy.workload("orders-api").unwrap();
        assert!(orders.is_verify_only());
        assert_eq!(orders.serves(), ["https://orders.example"]);
        for (serves, message) in [
            ("", "must run at least one workflow"),
            ("serves = []", "serves must name at least one audience"),
            ("serves = [\"a b\"]", "invalid audience"),
            ("serves = [\"x\", \"x\"]", "is listed twice"),
        ] {
            let errors = errors_of(&with(serves));
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("workloads.orders-api") && e.contains(message)),
                "{serves:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn patterns_with_characters_a_consumer_splits_on_are_refused() {
        for pattern in [
            "read:demo/x,write:prod/**",
            "read:demo/a+b",
            "read:demo/k=v/*",
        ] {
            let text = good().replace("\"read:demo/**\"", &format!("{pattern:?}"));
            let errors = errors_of(&text);
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("invalid scope pattern") && e.contains("not allowed")),
                "{pattern}: {errors:?}"
            );
        }
    }

    fn errors_of(text: &str) -> Vec<String> {
        Policy::parse("p.toml", text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn federated() -> String {
        format!(
            r#"{}
[issuers.github]
url = "https://token.actions.githubusercontent.com"
preset = "github-actions"
audiences = ["https://stint.example.com"]

[issuers.cluster]
url = "https://kubernetes.default.svc.cluster.local"
preset = "kubernetes"
audiences = ["stint"]
max_token_age = "5m"

[workloads.web-deployer]
workflows = ["demo"]

[[workloads.web-deployer.federated]]
issuer = "github"
claims = {{ repository = "acme/web", ref = "refs/heads/main", sub = "repo:acme/web:*" }}

[workloads.cluster-job]
workflows = ["demo"]
secret_sha256 = "{HASH}"

[[workloads.cluster-job.federated]]
issuer = "cluster"
claims = {{ "kubernetes.io/namespace" = "ci", sub = "system:serviceaccount:ci:*" }}
"#,
            good()
        )
    }

    #[test]
    fn federated_workloads_bind_to_trusted_issuers() {
        let policy = Policy::parse("p.toml", &federated()).unwrap();
        let github = policy
            .trusted_issuer("https://token.actions.githubusercontent.com")
            .unwrap();
        assert_eq!(github.name(), "github");
        assert_eq!(github.algorithms(), [Algorithm::RS256]);
        assert_eq!(github.max_token_age(), DEFAULT_MAX_TOKEN_AGE);
        assert_eq!(
            github
                .job_claims()
                .iter()
                .map(ClaimPath::as_str)
                .collect::<Vec<_>>(),
            ["run_id", "run_attempt"]
        );
        assert!(policy.trusted_issuer("https://evil.example").is_none());
        let claims = serde_json::json!({
            "sub": "repo:acme/web:ref:refs/heads/main",
            "repository": "acme/web",
            "ref": "refs/heads/main",
        });
        let bound = policy.workloads_for_identity("github", &claims);
        assert_eq!(bound.len(), 1);
        assert_eq!(bound[0].name(), "web-deployer");
        assert!(policy.workloads_for_identity("cluster", &claims).is_empty());
        // A federated-only workload has no secret to authenticate with.
        assert!(policy.authenticate("web-deployer", "").is_none());
        assert!(policy.authenticate("cluster-job", "abc").is_some());
    }

    #[test]
    fn federation_mistakes_are_reported() {
        let text = federated()
            .replace(r#"preset = "kubernetes""#, r#"preset = "kubernetes-ish""#)
            .replace(
                r#"url = "https://token.actions.githubusercontent.com""#,
                r#"url = "http://token.actions.githubusercontent.com""#,
            )
            .replace(
                r#"issuer = "cluster""#,
                r#"issuer = "clusterr""#,
            )
            .replace(
                r#"claims = { repository = "acme/web", ref = "refs/heads/main", sub = "repo:acme/web:*" }"#,
                r#"claims = { sub = "repo:acme/*" }"#,
            );
        let errors = errors_of(&text).join("\n");
        assert!(
            errors.contains("issuers.cluster.preset: unknown preset \"kubernetes-ish\""),
            "{errors}"
        );
        assert!(
            errors.contains("issuers.github.url: an issuer url must start with https://"),
            "{errors}"
        );
        assert!(
            errors.contains(
                "workloads.cluster-job.federated[0].issuer: no issuer is named \"clusterr\""
            ),
            "{errors}"
        );
        assert!(
            errors.contains("workloads.web-deployer.federated[0]: every matcher has a '*'"),
            "{errors}"
        );

        // A binding to a shared issuer that names no repository.
        let loose = federated().replace(
            r#"claims = { repository = "acme/web", ref = "refs/heads/main", sub = "repo:acme/web:*" }"#,
            r#"claims = { workflow = "deploy", environment = "production" }"#,
        );
        let errors = errors_of(&loose).join("\n");
        assert!(
            errors.contains("workloads.web-deployer.federated[0]: on a shared issuer"),
            "{errors}"
        );
        let by_sub = federated().replace(
            r#"claims = { repository = "acme/web", ref = "refs/heads/main", sub = "repo:acme/web:*" }"#,
            r#"claims = { environment = "production", sub = "repo:acme/web:environment:production" }"#,
        );
        assert!(
            Policy::parse("p.toml", &by_sub).is_ok(),
            "sub pins the repository"
        );
        let wild_sub = federated().replace(
            r#"claims = { repository = "acme/web", ref = "refs/heads/main", sub = "repo:acme/web:*" }"#,
            r#"claims = { environment = "production", sub = "repo:acme/*:environment:production" }"#,
        );
        assert!(
            Policy::parse("p.toml", &wild_sub).is_err(),
            "a '*' in ORG/REPO"
        );

        let orphan = good().replace(
            &format!(
                "[workloads.second]\nclient_id = \"second-client\"\nsecret_sha256 = \"{HASH}\"\n"
            ),
            "[workloads.second]\nclient_id = \"second-client\"\n",
        );
        let errors = errors_of(&orphan).join("\n");
        assert!(errors.contains("workloads.second: a workload needs a secret_sha256, a [[federated]] binding or a certificate"), "{errors}");
    }

    #[test]
    fn a_step_may_declare_an_elevation() {
        let text = good().replace(
            r#"audiences = ["https://demo.example"]"#,
            "audiences = [\"https://demo.example\"]\n\n[workflows.demo.steps.write.elevation]\nscopes = [\"admin:demo/**\"]\napprover_groups = [\"sre\"]\nquorum = 2\nmax_duration = \"30m\"\nmax_wait = \"15m\"\nreason_required = true\n",
        );
        let short = errors_of(&text).join("\n");
        assert!(
            short.contains("workflows.demo.steps.write.elevation.quorum: a quorum of 2 can never be met for workload \"demo-job\": only 0 operator(s)"),
            "{short}"
        );
        let operators = format!(
            "\n[operators.alice]\ngroups = [\"sre\"]\nkey_sha256 = \"{HASH}\"\n\n[operators.bob]\ngroups = [\"sre\"]\nowns = [\"demo-job\"]\nkey_sha256 = \"{HASH}\"\n"
        );
        let owner_only = errors_of(&format!("{text}{operators}")).join("\n");
        assert!(
            owner_only.contains("only 1 operator(s) who do not own it"),
            "an owner does not count towards the quorum: {owner_only}"
        );
        let text = format!(
            "{text}{}\n[operators.carol]\ngroups = [\"sre\", \"dba\"]\nkey_sha256 = \"{HASH}\"\n",
            operators.replace("owns = [\"demo-job\"]\n", "owns = [\"second\"]\n")
        );
        let policy = Policy::parse("p.toml", &text).unwrap();
        assert_eq!(policy.operators().count(), 3);
        assert!(policy.operator("bob").unwrap().owns().contains("second"));
        let step = policy.workflow("demo").unwrap().step("write").unwrap();
        let elevation = step.elevation().unwrap();
        assert_eq!(elevation.scopes().len(), 1);
        assert_eq!(elevation.rules().quorum, 2);
        assert_eq!(elevation.rules().max_duration, 1800);
        assert_eq!(elevation.rules().max_wait, 900);
        assert!(elevation.rules().reason_required);
        assert!(
            policy
                .workflow("demo")
                .unwrap()
                .step("read")
                .unwrap()
                .elevation()
                .is_none()
        );

        let bad = text
            .replace("quorum = 2", "quorum = 0")
            .replace(r#"max_wait = "15m""#, r#"max_wait = "2d""#)
            .replace(r#"approver_groups = ["sre"]"#, "approver_groups = []");
        let errors = errors_of(&bad).join("\n");
        assert!(
            errors.contains("workflows.demo.steps.write.elevation.quorum: the quorum is 1 to 10"),
            "{errors}"
        );
        assert!(
            errors.contains("workflows.demo.steps.write.elevation.max_wait"),
            "{errors}"
        );
        assert!(
            errors.contains(
                "workflows.demo.steps.write.elevation.approver_groups: name at least one"
            ),
            "{errors}"
        );
    }

    #[test]
    fn operators_sign_in_with_a_key_or_an_oidc_identity() {
        let base = good();
        let bad = format!(
            "{base}\n[operators.demo-job]\ngroups = [\"sre\"]\nkey_sha256 = \"{HASH}\"\n\n[operators.nobody]\ngroups = [\"sre\"]\n\n[operators.loner]\nkey_sha256 = \"{HASH}\"\nowns = [\"ghost\"]\n\n[operators.sso]\ngroups = [\"sre\"]\noidc = {{ issuer = \"corp\", subject = \"u1\" }}\n"
        );
        let errors = errors_of(&bad).join("\n");
        for expected in [
            "operators.demo-job: \"demo-job\" is also a workload",
            "operators.nobody: an operator signs in with a key_sha256",
            "operators.loner.groups: an operator needs groups",
            "operators.loner.owns[0]: no workload is named \"ghost\"",
            "operators.sso.oidc.issuer: no issuer is named \"corp\"",
        ] {
            assert!(
                errors.contains(expected),
                "missing {expected:?} in:\n{errors}"
            );
        }

        let good = format!(
            "{base}\n[issuers.corp]\nurl = \"https://login.example.com\"\naudiences = [\"stint\"]\n\n[operators.alice]\ngroups = [\"sre\"]\nkey_sha256 = \"{}\"\n\n[operators.sso]\noidc = {{ issuer = \"corp\", subject = \"u1\", groups_claim = \"groups\" }}\n",
            secret::hash_hex("stint_alice")
        );
        let policy = Policy::parse("p.toml", &good).unwrap();
        let shared = format!(
            "{good}\n[workloads.ci]\nworkflows = [\"demo\"]\n\n[[workloads.ci.federated]]\nissuer = \"corp\"\nclaims = {{ sub = \"u1\" }}\n"
        );
        let errors = errors_of(&shared).join("\n");
        assert!(
            errors.contains("operators.sso.oidc.issuer: issuer \"corp\" identifies workloads"),
            "a workload's issuer does not sign in operators: {errors}"
        );
        assert_eq!(
            policy.operator_by_key("stint_alice").unwrap().name(),
            "alice"
        );
        assert!(policy.operator_by_key("stint_mallory").is_none());
        assert_eq!(
            policy.operator_for_identity("corp", "u1").unwrap().name(),
            "sso"
        );
        assert!(policy.operator_for_identity("corp", "u2").is_none());
        let approver = policy
            .operator("sso")
            .unwrap()
            .as_approver(["sre".to_owned()]);
        assert!(approver.groups.contains("sre"));
        assert!(
            !format!("{:?}", policy.operator("alice").unwrap())
                .contains(&secret::hash_hex("stint_alice"))
        );
    }

    #[test]
    fn reports_file_line_and_key_for_each_problem() {
        let text = good()
            .replace(
                r#"scopes = ["read:demo/**"]"#,
                r#"scopes = ["read:demo/**/x"]"#,
            )
            .replace(r#"max_ttl = "10m""#, r#"max_ttl = "1m""#)
            .replace(r#"workflows = ["other"]"#, r#"workflows = ["missing"]"#);
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with(
                "p.toml:11:14: workloads.second.workflows[0]: no workflow is named \"missing\""
            ),
            "{errors:#?}"
        );
        assert!(
            errors[1].starts_with(
                "p.toml:17:11: workflows.demo.steps.read.scopes[0]: invalid scope pattern"
            ),
            "{errors:#?}"
        );
        assert!(errors[2].starts_with("p.toml:21:15: workflows.demo.steps.write.default_ttl: default_ttl (2m) is longer than max_ttl (1m)"), "{errors:#?}");
    }

    #[test]
    fn reports_syntax_and_unknown_keys_with_their_table() {
        let text = good().replace(r#"default_ttl = "2m""#, r#"default_tl = "2m""#);
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(
                "p.toml:21:1: workflows.demo.steps.write.default_tl: unknown field `default_tl`"
            ),
            "{errors:#?}"
        );

        let errors = errors_of("[workloads.x\nsecret_sha256 = 1");
        assert!(errors[0].starts_with("p.toml:1:"), "{errors:#?}");
    }

    #[test]
    fn refuses_bad_values() {
        let bad_hash = good().replacen(HASH, "ABC", 1);
        assert!(
            errors_of(&bad_hash)[0]
                .contains("workloads.demo-job.secret_sha256: expected 64 lowercase hex digits")
        );

        let too_long = good().replace(r#"max_ttl = "10m""#, r#"max_ttl = "2h""#);
        assert!(errors_of(&too_long)[0].contains("max_ttl: a token lifetime may be at most 1h"));

        let bad_date = good().replace("review_by = 2027-01-31", "review_by = 2027-02-30");
        assert!(!errors_of(&bad_date).is_empty());

        let bad_date = good().replace("review_by = 2027-01-31", "review_by = 12");
        assert!(errors_of(&bad_date)[0].contains("workflows.demo.review_by: expected a date"));

        let dup_client = good().replace(
            r#"client_id = "second-client""#,
            r#"client_id = "demo-job""#,
        );
        assert!(errors_of(&dup_client)[0].contains("is already used by workload"));

        let bad_aud = good().replace("https://demo.example", "has space");
        assert!(errors_of(&bad_aud)[0].contains("audiences[0]: invalid audience"));

        let no_steps = format!(
            "[workloads.a]\nsecret_sha256 = \"{HASH}\"\nworkflows = [\"w\"]\n[workflows.w]\nreview_by = 2027-01-01\n"
        );
        assert!(
            errors_of(&no_steps)[0].contains("workflows.w: a workflow must have at least one step")
        );
    }

    #[test]
    fn default_ttl_above_the_default_ceiling_raises_the_ceiling() {
        let text = good().replace(
            r#"scopes = ["read:demo/**"]"#,
            "scopes = [\"read:demo/**\"]\ndefault_ttl = \"30m\"",
        );
        let policy = Policy::parse("p.toml", &text).unwrap();
        let demo = policy.workload("demo-job").unwrap();
        let (_, read) = policy.resolve_step(demo, "read").unwrap();
        assert_eq!(read.max_ttl().as_secs(), 1800);
    }

    #[test]
    fn refuses_oversized_policies() {
        let huge = format!("# {}", "x".repeat(MAX_POLICY_LEN));
        assert!(errors_of(&huge)[0].contains("larger than"));
    }
}
