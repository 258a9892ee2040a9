//! Target credentials: the systems a policy declares under
//! `[targets.NAME]`, for which Stint turns a step token into the native
//! credential the system accepts.
//!
//! Pure: the model, the scope grammar of each kind and its planner (grant
//! -> upstream request). The I/O that carries a plan out (connecting to
//! PostgreSQL, the retry queue, the reconciler) lives in its own crate.
//!
//! ```toml
//! [targets.warehouse]
//! kind = "postgres"
//! host = "127.0.0.1"          # required
//! port = 5432                 # default 5432
//! database = "analytics"      # required
//! admin_user = "stint_admin"  # required
//! admin_password_file = "/etc/stint/warehouse.password"   # or admin_password_env, exactly one
//! tls = "verify-full"         # default; "require"; "disable" only for a loopback host
//! ca_file = "/etc/stint/db-ca.pem"
//! connection_limit = 2        # per login, 1..=100
//! pool_size = 4               # admin connections, 1..=32
//! connect_timeout_secs = 5    # 1..=60
//! statement_timeout_secs = 5  # 1..=300
//! object_grants = true        # scopes may become table/schema/sequence grants
//!
//! [targets.warehouse.roles]   # NOLOGIN group roles and the scopes each confers
//! crm_reader = ["select:warehouse/crm/accounts", "select:warehouse/crm/contacts"]
//!
//! [workflows.sync.steps.load]
//! scopes = ["select:warehouse/crm/*", "insert:warehouse/staging/*"]
//! targets = ["warehouse"]
//! ```
//!
//! A target's scopes name it as their first resource segment; the grammar
//! of the rest is the kind's ([`postgres`] for PostgreSQL, [`github`] for
//! GitHub App installation tokens, [`oidc`] for federation tokens that
//! clouds and secrets managers accept).

pub mod github;
pub mod oidc;
pub(crate) mod policy_section;
pub mod postgres;

use crate::scope::{Scope, ScopePattern};
use postgres::{PlanError, PostgresTarget};
use std::path::PathBuf;

/// The prefix of every login role Stint creates. Group roles in a policy
/// may not use it.
pub const ROLE_PREFIX: &str = "stint_";
/// How the comment Stint puts on every login role it creates begins; the
/// comment goes on with the broker's issuer ([`role_marker`]).
pub const ROLE_MARKER: &str = "stint target credential";

/// The comment on every login role the broker `issuer` creates: how its
/// reconciler tells its own roles from others', including another
/// broker's on the same server.
pub fn role_marker(issuer: &str) -> String {
    format!("{ROLE_MARKER} {issuer}")
}
/// The most targets one policy may declare.
pub const MAX_TARGETS: usize = 64;
/// The longest target name, in bytes.
pub const MAX_TARGET_NAME_LEN: usize = 32;
/// The kinds of target Stint knows, as a policy spells them.
pub const KNOWN_KINDS: &[&str] = &["postgres", "github", "oidc"];

/// A declared target: its name (the first resource segment of its scopes)
/// and what kind of system it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    name: String,
    kind: TargetKind,
}

impl Target {
    /// A target named `name` (checked as the policy checks it).
    pub fn new(name: &str, kind: TargetKind) -> Result<Self, PlanError> {
        validate_target_name(name).map_err(PlanError)?;
        Ok(Self {
            name: name.to_owned(),
            kind,
        })
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it is and how Stint reaches it.
    pub fn kind(&self) -> &TargetKind {
        &self.kind
    }

    /// Check a policy pattern about this target against its kind's grammar.
    pub fn check_pattern(&self, pattern: &ScopePattern) -> Result<(), PlanError> {
        match &self.kind {
            TargetKind::Postgres(_) => postgres::check_pattern(&self.name, pattern),
            TargetKind::Github(_) => github::check_pattern(&self.name, pattern),
            TargetKind::Oidc(_) => oidc::check_pattern(&self.name, pattern),
        }
    }
}

/// The kind of a target, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// A PostgreSQL server: Stint makes logins.
    Postgres(PostgresTarget),
    /// A GitHub App's installations: Stint asks for installation tokens.
    Github(github::GithubTarget),
    /// A system that trusts Stint as an OIDC issuer: Stint signs
    /// federation tokens for it.
    Oidc(oidc::OidcTarget),
}

impl TargetKind {
    /// The kind as a policy spells it: `postgres`, `github` or `oidc`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Github(_) => "github",
            Self::Oidc(_) => "oidc",
        }
    }
}

/// Where a secret Stint needs is kept: never the secret itself, so this is
/// safe to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file whose contents (less a final newline) are the secret.
    File(PathBuf),
    /// An environment variable of the broker.
    Env(String),
}

/// Scopes of `granted` whose first resource segment is `target`.
pub fn scopes_for<'a>(target: &str, granted: &'a [Scope]) -> Vec<&'a Scope> {
    granted
        .iter()
        .filter(|scope| scope.segments().next() == Some(target))
        .collect()
}

/// Check a target name: a lowercase ASCII letter, then lowercase letters,
/// digits and `-`, at most [`MAX_TARGET_NAME_LEN`] bytes.
pub fn validate_target_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !first_ok || !rest_ok || name.len() > MAX_TARGET_NAME_LEN {
        return Err(format!(
            "a target name is a lowercase ASCII letter followed by lowercase letters, digits and '-', at most {MAX_TARGET_NAME_LEN} bytes"
        ));
    }
    Ok(())
}
