//! GitHub targets: Stint asks a GitHub App for an installation token that
//! carries exactly the repositories and permissions a step's scopes name,
//! and revokes it when the step ends.
//!
//! ```toml
//! [targets.github]
//! kind = "github"
//! app_id = 123456                      # or client_id = "Iv23li...", exactly one
//! private_key_file = "/etc/stint/github-app.pem"   # PKCS#1 or PKCS#8 RSA PEM
//! token_key_file = "/etc/stint/github-tokens.key"  # 32 bytes: seals tokens until revoked
//! api_url = "https://api.github.com"   # default; GitHub Enterprise Server: https://HOST/api/v3
//! ca_file = "/etc/stint/ghes-ca.pem"   # optional: roots for api_url instead of the public ones
//! timeout_secs = 10                    # per request, 1..=60
//! ```
//!
//! Scope grammar (the first resource segment is the target's name):
//!
//! ```text
//! scope      = permission "." level ":" TARGET "/" owner "/" repository
//! permission = a GitHub App permission name, with underscores (contents, pull_requests, ...)
//! level      = "read" / "write" / "admin"   ; as that permission allows
//! ```
//!
//! e.g. `contents.write:github/acme/web`; a policy pattern may use `*` for
//! the repository (`pull_requests.read:github/acme/*`), a token never does.

use super::postgres::PlanError;
use crate::scope::{Scope, ScopePattern};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// The public GitHub API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The default time limit of one request to GitHub, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
/// The longest time limit of one request to GitHub, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 60;
/// The most repositories one installation token may name (GitHub's limit).
pub const MAX_REPOSITORIES: usize = 500;

/// How Stint names its GitHub App in the App JWT's `iss`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GithubApp {
    /// The App's numeric id.
    Id(u64),
    /// The App's client id (`Iv1.` / `Iv23...`).
    ClientId(String),
}

impl GithubApp {
    /// The App JWT's `iss`.
    pub fn issuer(&self) -> String {
        match self {
            Self::Id(id) => id.to_string(),
            Self::ClientId(id) => id.clone(),
        }
    }
}

/// A GitHub target's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubTarget {
    /// The App.
    pub app: GithubApp,
    /// Its private key (PKCS#1 or PKCS#8 RSA PEM); read at policy load.
    pub private_key_file: PathBuf,
    /// The AEAD key that seals installation tokens while they wait to be
    /// revoked.
    pub token_key_file: PathBuf,
    /// The API's base URL, without a final `/`.
    pub api_url: String,
    /// Roots for `api_url`, instead of the public ones.
    pub ca_file: Option<PathBuf>,
    /// Per request, in seconds.
    pub timeout_secs: u64,
}

/// A permission's level, in order: `write` includes `read`, `admin`
/// includes both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Read,
    Write,
    Admin,
}

impl Level {
    /// As GitHub spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    /// From GitHub's spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// What Stint asks GitHub for: one owner's installation, these
/// repositories, these permissions; never fewer than one of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubPlan {
    /// The account whose installation is used.
    pub owner: String,
    /// Repository names (without the owner), at least one.
    pub repositories: BTreeSet<String>,
    /// Permission name to level, at least one.
    pub permissions: BTreeMap<String, Level>,
}

/// Check a policy pattern about GitHub target `target_name`.
pub fn check_pattern(target_name: &str, pattern: &ScopePattern) -> Result<(), PlanError> {
    let _ = (target_name, pattern);
    Err(PlanError("github scopes are not implemented yet".into()))
}

/// Plan the installation token for a step token's `scopes` on target
/// `target_name` (all of them concrete and about it).
pub fn plan(target_name: &str, scopes: &[Scope]) -> Result<GithubPlan, PlanError> {
    let _ = (target_name, scopes);
    Err(PlanError("github scopes are not implemented yet".into()))
}

impl GithubPlan {
    /// Placeholder until the planner lands.
    pub fn effective_scopes(&self, _target: &str) -> Vec<String> {
        Vec::new()
    }
    /// Placeholder until the planner lands.
    pub fn request_body(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Placeholder until the planner lands.
    pub fn check_answer(
        &self,
        _permissions: &BTreeMap<String, String>,
        _repository_selection: &str,
        _repositories: &[String],
    ) -> Result<(), String> {
        Err("not implemented".into())
    }
}
