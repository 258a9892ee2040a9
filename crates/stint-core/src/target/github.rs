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
//!
//! - `owner` is a GitHub login: ASCII letters and digits, single `-`
//!   between them, at most 39 characters. A pattern's owner is always
//!   literal (one pattern, one owner's installation), and `/**` is refused.
//! - `repository` is ASCII letters, digits, `.`, `-` and `_`, at most 100
//!   characters, not `.` or `..`.
//! - `permission` is one of GitHub's *repository* permissions
//!   ([`REPOSITORY_PERMISSIONS`]), spelled with underscores as the REST API
//!   spells them. Organization and account permissions
//!   ([`ACCOUNT_PERMISSIONS`]) are refused: they are not limited by the
//!   token's repositories, so they cannot be sized to a step.
//! - `level` must be one the permission allows (`workflows` is `write`
//!   only; only `repository_projects` has `admin`). `write` includes `read`
//!   and `admin` includes both.
//!
//! # Never wider than asked
//!
//! An installation token's permissions apply to every repository it
//! names, so [`plan`] accepts only a *rectangle*: every permission asked
//! for, at the same level, for every repository asked for (levels folded
//! first: for one permission on one repository the highest level asked
//! counts). Anything else would grant a scope the step token does not
//! carry, and is refused with the scope it would add; the step then asks
//! for several credentials (one per exchanged step token) instead.
//!
//! GitHub gives `metadata: read` with any repository access, so
//! `metadata.read` is implied for every repository of a plan: asking for it
//! is allowed (and never makes a plan wider) and
//! [`GithubPlan::effective_scopes`] always lists it.
//!
//! GitHub's owner and repository names are case-insensitive; a policy
//! pattern matches case-sensitively (so a differently cased scope is simply
//! not covered). Within one plan, two spellings of one owner or one
//! repository are refused as ambiguous rather than folded.
//!
//! A plan always names at least one repository and one permission: GitHub
//! gives a token *all* of the installation's repositories when the request
//! names none, and all of its permissions when it names none.

use super::postgres::PlanError;
use crate::scope::{Scope, ScopePattern};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
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
    /// `read`.
    Read,
    /// `write` (includes `read`).
    Write,
    /// `admin` (includes `write` and `read`).
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

/// The longest GitHub login (user or organization name).
pub const MAX_OWNER_LEN: usize = 39;
/// The longest GitHub repository name.
pub const MAX_REPOSITORY_LEN: usize = 100;

/// `metadata`: GitHub grants `metadata: read` with any repository access.
pub const METADATA: &str = "metadata";

const READ: &[Level] = &[Level::Read, Level::Write];
const WRITE_ONLY: &[Level] = &[Level::Write];
const READ_WRITE_ADMIN: &[Level] = &[Level::Read, Level::Write, Level::Admin];

/// GitHub App *repository* permissions an installation access token may
/// ask for, with the levels each allows: the `permissions` object of the
/// request body of "Create an installation access token for an app"
/// (`POST /app/installations/{installation_id}/access_tokens`,
/// <https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app>),
/// whose schema is `app-permissions` in GitHub's OpenAPI description
/// (github/rest-api-description): every name with the levels its enum
/// allows. Sorted by name; a permission GitHub adds later is refused until
/// it is added here.
pub const REPOSITORY_PERMISSIONS: &[(&str, &[Level])] = &[
    ("actions", READ),
    ("administration", READ),
    ("artifact_metadata", READ),
    ("attestations", READ),
    ("checks", READ),
    ("codespaces", READ),
    ("contents", READ),
    ("dependabot_secrets", READ),
    ("deployments", READ),
    ("discussions", READ),
    ("environments", READ),
    ("issues", READ),
    ("merge_queues", READ),
    ("metadata", READ),
    ("packages", READ),
    ("pages", READ),
    ("pull_requests", READ),
    ("repository_custom_properties", READ),
    ("repository_hooks", READ),
    ("repository_projects", READ_WRITE_ADMIN),
    ("secret_scanning_alerts", READ),
    ("secrets", READ),
    ("security_events", READ),
    ("single_file", READ),
    ("statuses", READ),
    ("vulnerability_alerts", READ),
    ("workflows", WRITE_ONLY),
];

/// The organization, enterprise and user (account) permissions of the same
/// `permissions` object (same sources as [`REPOSITORY_PERMISSIONS`]). None is
/// limited by a token's repositories, so a Stint scope, which names one
/// repository, cannot carry them: they are refused with that reason.
/// `interaction_limits` is among the account permissions in the schema
/// (though its description says "on a repository"): refused, failing
/// closed.
pub const ACCOUNT_PERMISSIONS: &[&str] = &[
    "custom_properties_for_organizations",
    "email_addresses",
    "enterprise_custom_properties_for_organizations",
    "followers",
    "git_ssh_keys",
    "gpg_keys",
    "interaction_limits",
    "members",
    "organization_administration",
    "organization_announcement_banners",
    "organization_copilot_seat_management",
    "organization_custom_org_roles",
    "organization_custom_properties",
    "organization_custom_roles",
    "organization_events",
    "organization_hooks",
    "organization_packages",
    "organization_personal_access_token_requests",
    "organization_personal_access_tokens",
    "organization_plan",
    "organization_projects",
    "organization_secrets",
    "organization_self_hosted_runners",
    "organization_user_blocking",
    "profile",
    "starring",
    "team_discussions",
];

/// The levels a repository permission allows, or `None` for a name that is
/// not one.
pub fn permission_levels(name: &str) -> Option<&'static [Level]> {
    REPOSITORY_PERMISSIONS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, levels)| *levels)
}

fn canonical_permission(name: &str) -> Option<&'static str> {
    REPOSITORY_PERMISSIONS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(known, _)| *known)
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn levels_text(levels: &[Level]) -> String {
    let names: Vec<&str> = levels.iter().map(|l| l.as_str()).collect();
    match names.as_slice() {
        [one] => format!("{one} only"),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => "nothing".into(),
    }
}

/// Check a GitHub login (user or organization name): ASCII letters and
/// digits with single `-` between them, at most [`MAX_OWNER_LEN`].
pub fn validate_owner(owner: &str) -> Result<(), String> {
    let shown = printable_prefix(owner);
    let chars_ok = !owner.is_empty()
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !chars_ok
        || owner.starts_with('-')
        || owner.ends_with('-')
        || owner.contains("--")
        || owner.len() > MAX_OWNER_LEN
    {
        return Err(format!(
            "{shown:?} is not a github account name: use ASCII letters, digits and single '-' between them, at most {MAX_OWNER_LEN} characters"
        ));
    }
    Ok(())
}

/// Check a GitHub repository name: ASCII letters, digits, `.`, `-` and
/// `_`, at most [`MAX_REPOSITORY_LEN`], not `.` or `..`.
pub fn validate_repository(repository: &str) -> Result<(), String> {
    let shown = printable_prefix(repository);
    let chars_ok = !repository.is_empty()
        && repository
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !chars_ok || repository == "." || repository == ".." || repository.len() > MAX_REPOSITORY_LEN
    {
        return Err(format!(
            "{shown:?} is not a github repository name: use ASCII letters, digits, '.', '-' and '_', at most {MAX_REPOSITORY_LEN} characters, not '.' or '..'"
        ));
    }
    Ok(())
}

/// Read a scope's action `PERMISSION.LEVEL`.
fn parse_action(action: &str) -> Result<(&'static str, Level), String> {
    let Some((name, level_text)) = action.rsplit_once('.') else {
        return Err(format!(
            "action {action:?} is not PERMISSION.LEVEL: a github scope's action names a github app permission and a level, such as contents.read or pull_requests.write"
        ));
    };
    let permission = match canonical_permission(name) {
        Some(permission) => permission,
        None => return Err(unknown_permission(name)),
    };
    let Some(level) = Level::from_name(level_text) else {
        return Err(format!(
            "{level_text:?} is not a github permission level: use read, write or admin (as {permission} allows: {})",
            levels_text(permission_levels(permission).unwrap_or_default())
        ));
    };
    let allowed = permission_levels(permission).unwrap_or_default();
    if !allowed.contains(&level) {
        return Err(format!(
            "github permission {permission} has no level {level}: it allows {}",
            levels_text(allowed)
        ));
    }
    Ok((permission, level))
}

fn unknown_permission(name: &str) -> String {
    let shown = printable_prefix(name);
    let underscored = name.replace('-', "_");
    if ACCOUNT_PERMISSIONS.contains(&name) {
        return format!(
            "github permission {shown} is an organization or account permission: it is not limited by the token's repositories, so it cannot be sized to a step; stint github scopes take repository permissions only"
        );
    }
    if underscored != name
        && (canonical_permission(&underscored).is_some()
            || ACCOUNT_PERMISSIONS.contains(&underscored.as_str()))
    {
        return format!(
            "{shown:?} is not a github permission name: github spells them with underscores; did you mean {underscored}?"
        );
    }
    format!(
        "{shown:?} is not a github app repository permission: use one of {}",
        REPOSITORY_PERMISSIONS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// One concrete GitHub scope, read by the grammar of the module
/// documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubScope {
    /// The permission, as GitHub spells it.
    pub permission: &'static str,
    /// Its level.
    pub level: Level,
    /// The owner (user or organization), as written.
    pub owner: String,
    /// The repository name, as written.
    pub repository: String,
}

impl GithubScope {
    /// Read a concrete scope of `target_name`.
    pub fn from_scope(target_name: &str, scope: &Scope) -> Result<Self, PlanError> {
        let text = scope.as_str();
        let in_scope = |why: String| PlanError(format!("scope {text:?}: {why}"));
        let segments: Vec<&str> = scope.segments().collect();
        let (owner, repository) = match segments.as_slice() {
            [first, ..] if *first != target_name => {
                return Err(PlanError(format!(
                    "scope {text:?} is not about target {target_name:?}"
                )));
            }
            [_, owner, repository] => (*owner, *repository),
            _ => {
                return Err(in_scope(format!(
                    "a github scope is PERMISSION.LEVEL:{target_name}/OWNER/REPOSITORY"
                )));
            }
        };
        let (permission, level) = parse_action(scope.action()).map_err(in_scope)?;
        validate_owner(owner).map_err(in_scope)?;
        validate_repository(repository).map_err(in_scope)?;
        Ok(Self {
            permission,
            level,
            owner: owner.to_owned(),
            repository: repository.to_owned(),
        })
    }

    /// The scope's text for `target_name`.
    pub fn scope_text(&self, target_name: &str) -> String {
        scope_text(
            target_name,
            &self.owner,
            &self.repository,
            self.permission,
            self.level,
        )
    }
}

fn scope_text(
    target_name: &str,
    owner: &str,
    repository: &str,
    permission: &str,
    level: Level,
) -> String {
    format!("{permission}.{level}:{target_name}/{owner}/{repository}")
}

/// Check a policy pattern about GitHub target `target_name`: the grammar of
/// the module documentation, with `*` allowed for the repository only (a
/// literal owner; no `/**`).
pub fn check_pattern(target_name: &str, pattern: &ScopePattern) -> Result<(), PlanError> {
    let text = pattern.as_str();
    let in_pattern = |why: String| PlanError(format!("pattern {text:?}: {why}"));
    let (action, resource) = text
        .split_once(':')
        .ok_or_else(|| PlanError(format!("pattern {text:?} has no action")))?;
    let segments: Vec<&str> = resource.split('/').collect();
    let (owner, repository) = match segments.as_slice() {
        [first, ..] if *first != target_name => {
            return Err(PlanError(format!(
                "pattern {text:?} is not about target {target_name:?}"
            )));
        }
        [.., "**"] => {
            return Err(in_pattern(format!(
                "a github pattern has no '/**': use PERMISSION.LEVEL:{target_name}/OWNER/REPOSITORY or PERMISSION.LEVEL:{target_name}/OWNER/*"
            )));
        }
        [_, owner, repository] => (*owner, *repository),
        _ => {
            return Err(in_pattern(format!(
                "a github pattern is PERMISSION.LEVEL:{target_name}/OWNER/REPOSITORY, with '*' allowed for the repository"
            )));
        }
    };
    parse_action(action).map_err(in_pattern)?;
    if owner == "*" {
        return Err(in_pattern(
            "the owner must be literal: one github installation token covers one owner, so write one pattern per owner".into(),
        ));
    }
    validate_owner(owner).map_err(in_pattern)?;
    if repository != "*" {
        validate_repository(repository).map_err(in_pattern)?;
    }
    Ok(())
}

/// Plan the installation token for a step token's `scopes` on target
/// `target_name` (all of them concrete and about it; a scope about another
/// target is refused). Refused unless the scopes name one owner, at most
/// [`MAX_REPOSITORIES`] repositories and form a rectangle (see the module
/// documentation): the plan never grants a scope that is not asked for.
pub fn plan(target_name: &str, scopes: &[Scope]) -> Result<GithubPlan, PlanError> {
    if scopes.is_empty() {
        return Err(PlanError(format!(
            "the step token carries no scope for target {target_name}: request a scope naming it, such as contents.read:{target_name}/OWNER/REPOSITORY"
        )));
    }
    let mut owner: Option<String> = None;
    // Lowercased repository name -> its one spelling.
    let mut spellings: BTreeMap<String, String> = BTreeMap::new();
    // (lowercased repository, permission) -> the highest level asked.
    let mut asked: BTreeMap<(String, &'static str), Level> = BTreeMap::new();
    for scope in scopes {
        let parsed = GithubScope::from_scope(target_name, scope)?;
        match &owner {
            None => owner = Some(parsed.owner.clone()),
            Some(first) if *first == parsed.owner => {}
            Some(first) if first.eq_ignore_ascii_case(&parsed.owner) => {
                return Err(PlanError(format!(
                    "the scopes spell one github owner two ways ({first:?} and {:?}): github names are case-insensitive; spell it the same way in every scope",
                    parsed.owner
                )));
            }
            Some(first) => {
                return Err(PlanError(format!(
                    "the scopes name two github owners ({first:?} and {:?}): a github installation token covers one owner's installation: ask for one credential per owner",
                    parsed.owner
                )));
            }
        }
        let key = parsed.repository.to_ascii_lowercase();
        match spellings.get(&key) {
            Some(first) if *first != parsed.repository => {
                return Err(PlanError(format!(
                    "the scopes spell one github repository two ways ({first:?} and {:?}): github names are case-insensitive; spell it the same way in every scope",
                    parsed.repository
                )));
            }
            Some(_) => {}
            None => {
                if spellings.len() == MAX_REPOSITORIES {
                    return Err(PlanError(format!(
                        "the scopes name more than {MAX_REPOSITORIES} github repositories, more than one installation token may: split the step's request"
                    )));
                }
                spellings.insert(key.clone(), parsed.repository.clone());
            }
        }
        let level = asked
            .entry((key, parsed.permission))
            .or_insert(parsed.level);
        *level = (*level).max(parsed.level);
    }
    // Non-empty scopes each parsed: one owner was seen.
    let owner = owner.unwrap_or_default();
    let mut permissions: BTreeMap<&'static str, Level> = BTreeMap::new();
    for ((_, permission), level) in &asked {
        let top = permissions.entry(permission).or_insert(*level);
        *top = (*top).max(*level);
    }
    for (key, repository) in &spellings {
        for (permission, level) in &permissions {
            let got = asked.get(&(key.clone(), *permission)).copied();
            let implied = (*permission == METADATA).then_some(Level::Read);
            let covered = got.max(implied);
            if covered < Some(*level) {
                let added = scope_text(target_name, &owner, repository, permission, *level);
                return Err(PlanError(format!(
                    "one github installation token gives every permission to every repository it names, so these scopes would also grant {added}, which the step token does not carry: ask for the same permissions on every repository, or split the step's request (exchange one step token per set of repositories)"
                )));
            }
        }
    }
    Ok(GithubPlan {
        owner,
        repositories: spellings.into_values().collect(),
        permissions: permissions
            .into_iter()
            .map(|(name, level)| (name.to_owned(), level))
            .collect(),
    })
}

impl GithubPlan {
    /// What the token will carry, as scopes of `target_name`, sorted: one
    /// scope per repository and permission at the planned level (a level
    /// includes the ones below it), plus `metadata.read` for every
    /// repository when the plan does not ask for `metadata` (GitHub grants
    /// it with any repository access). For the audit and the tests.
    pub fn effective_scopes(&self, target_name: &str) -> Vec<String> {
        let mut scopes = BTreeSet::new();
        for repository in &self.repositories {
            for (permission, level) in &self.permissions {
                scopes.insert(scope_text(
                    target_name,
                    &self.owner,
                    repository,
                    permission,
                    *level,
                ));
            }
            if !self.permissions.contains_key(METADATA) {
                scopes.insert(scope_text(
                    target_name,
                    &self.owner,
                    repository,
                    METADATA,
                    Level::Read,
                ));
            }
        }
        scopes.into_iter().collect()
    }

    /// The JSON body of `POST /app/installations/{id}/access_tokens`,
    /// exactly: `{"repositories": [names], "permissions": {name: level}}`.
    pub fn request_body(&self) -> serde_json::Value {
        let permissions: serde_json::Map<String, serde_json::Value> = self
            .permissions
            .iter()
            .map(|(name, level)| (name.clone(), serde_json::Value::from(level.as_str())))
            .collect();
        serde_json::json!({
            "repositories": self.repositories.iter().collect::<Vec<_>>(),
            "permissions": permissions,
        })
    }

    /// Check GitHub's answer (`permissions`, `repository_selection`, and the
    /// `name` of each of `repositories`) against the plan: exactly the
    /// planned repositories (compared case-insensitively) and permissions,
    /// `repository_selection` `"selected"`, and nothing more than planned
    /// but `metadata: read`. Less than planned is refused too: the job would
    /// fail in a confusing way. The message says what differs; the token
    /// is then revoked, never handed out.
    pub fn check_answer(
        &self,
        permissions: &BTreeMap<String, String>,
        repository_selection: &str,
        repositories: &[String],
    ) -> Result<(), String> {
        if repository_selection != "selected" {
            return Err(format!(
                "github answered repository_selection {:?}, not \"selected\": the token is not limited to the planned repositories",
                printable_prefix(repository_selection)
            ));
        }
        for (name, level_text) in permissions {
            let shown = printable_prefix(name);
            let Some(level) = Level::from_name(level_text) else {
                return Err(format!(
                    "github answered permission {shown} at level {:?}, which is not read, write or admin",
                    printable_prefix(level_text)
                ));
            };
            match self.permissions.get(name.as_str()) {
                Some(planned) if level > *planned => {
                    return Err(format!(
                        "github granted {shown}: {level}, more than the planned {planned}"
                    ));
                }
                Some(planned) if level < *planned => {
                    return Err(format!(
                        "github granted {shown}: {level}, less than the planned {planned}: check the app's permissions on the installation"
                    ));
                }
                Some(_) => {}
                None if name == METADATA && level == Level::Read => {}
                None => {
                    return Err(format!(
                        "github granted {shown}: {level}, which was not planned"
                    ));
                }
            }
        }
        if let Some((name, level)) = self
            .permissions
            .iter()
            .find(|(name, _)| !permissions.contains_key(*name))
        {
            return Err(format!(
                "github did not grant the planned {name}: {level}: check the app's permissions on the installation"
            ));
        }
        let planned: BTreeSet<String> = self
            .repositories
            .iter()
            .map(|r| r.to_ascii_lowercase())
            .collect();
        let answered: BTreeSet<String> = repositories
            .iter()
            .map(|r| r.to_ascii_lowercase())
            .collect();
        if let Some(extra) = answered.difference(&planned).next() {
            return Err(format!(
                "github granted repository {:?}, which was not planned",
                printable_prefix(extra)
            ));
        }
        if let Some(missing) = self
            .repositories
            .iter()
            .find(|r| !answered.contains(&r.to_ascii_lowercase()))
        {
            return Err(format!(
                "github did not grant the planned repository {}/{missing}: check that the installation covers it",
                self.owner
            ));
        }
        Ok(())
    }
}

/// At most 64 characters of `text` from an answer, visible ASCII only
/// (others as `?`): it reaches errors, logs and the audit.
fn printable_prefix(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scopes(texts: &[&str]) -> Vec<Scope> {
        texts.iter().map(|t| Scope::parse(t).unwrap()).collect()
    }

    fn planned(texts: &[&str]) -> GithubPlan {
        plan("gh", &scopes(texts)).unwrap()
    }

    fn refused(texts: &[&str], needle: &str) {
        let PlanError(why) = plan("gh", &scopes(texts)).unwrap_err();
        assert!(why.contains(needle), "{texts:?}: {why}");
    }

    fn pattern_refused(text: &str, needle: &str) {
        let PlanError(why) = check_pattern("gh", &ScopePattern::parse(text).unwrap()).unwrap_err();
        assert!(why.contains(needle), "{text}: {why}");
    }

    fn pattern_ok(text: &str) {
        check_pattern("gh", &ScopePattern::parse(text).unwrap()).unwrap();
    }

    fn answer(plan: &GithubPlan) -> (BTreeMap<String, String>, Vec<String>) {
        let mut permissions: BTreeMap<String, String> = plan
            .permissions
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
            .collect();
        permissions
            .entry(METADATA.into())
            .or_insert_with(|| "read".into());
        (permissions, plan.repositories.iter().cloned().collect())
    }

    #[test]
    fn the_permission_table_is_sorted_and_disjoint() {
        assert!(REPOSITORY_PERMISSIONS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(ACCOUNT_PERMISSIONS.windows(2).all(|w| w[0] < w[1]));
        for (name, levels) in REPOSITORY_PERMISSIONS {
            assert!(!ACCOUNT_PERMISSIONS.contains(name), "{name}");
            assert!(!levels.is_empty(), "{name}");
        }
    }

    #[test]
    fn reads_the_grammar() {
        let scope = Scope::parse("contents.write:gh/acme/web.site_2-x").unwrap();
        assert_eq!(
            GithubScope::from_scope("gh", &scope).unwrap(),
            GithubScope {
                permission: "contents",
                level: Level::Write,
                owner: "acme".into(),
                repository: "web.site_2-x".into(),
            }
        );
        assert_eq!(
            GithubScope::from_scope("gh", &scope)
                .unwrap()
                .scope_text("gh"),
            scope.as_str()
        );
        let p = planned(&["repository_projects.admin:gh/a-b/r"]);
        assert_eq!(p.permissions["repository_projects"], Level::Admin);
        planned(&["workflows.write:gh/acme/web"]);
        planned(&["metadata.read:gh/acme/web"]);
    }

    #[test]
    fn refuses_what_is_not_the_grammar() {
        refused(&["contents.read:other/acme/web"], "not about target \"gh\"");
        refused(
            &["contents.read:gh/acme"],
            "PERMISSION.LEVEL:gh/OWNER/REPOSITORY",
        );
        refused(
            &["contents.read:gh/acme/web/x"],
            "PERMISSION.LEVEL:gh/OWNER/REPOSITORY",
        );
        refused(&["read:gh/acme/web"], "is not PERMISSION.LEVEL");
        refused(
            &["contents.rw:gh/acme/web"],
            "\"rw\" is not a github permission level",
        );
        refused(
            &["contents.admin:gh/acme/web"],
            "contents has no level admin: it allows read or write",
        );
        refused(
            &["workflows.read:gh/acme/web"],
            "workflows has no level read: it allows write only",
        );
        refused(
            &["pull-requests.read:gh/acme/web"],
            "did you mean pull_requests?",
        );
        refused(
            &["organization-administration.read:gh/acme/web"],
            "did you mean organization_administration?",
        );
        refused(
            &["code.read:gh/acme/web"],
            "not a github app repository permission: use one of actions,",
        );
        for org in [
            "organization_administration",
            "members",
            "organization_secrets",
            "organization_projects",
        ] {
            refused(
                &[&format!("{org}.read:gh/acme/web")],
                "is an organization or account permission: it is not limited by the token's repositories, so it cannot be sized to a step",
            );
        }
        // Owners.
        refused(
            &["contents.read:gh/-acme/web"],
            "is not a github account name",
        );
        refused(
            &["contents.read:gh/acme-/web"],
            "is not a github account name",
        );
        refused(
            &["contents.read:gh/ac--me/web"],
            "is not a github account name",
        );
        refused(
            &["contents.read:gh/ac_me/web"],
            "is not a github account name",
        );
        refused(
            &["contents.read:gh/ac.me/web"],
            "is not a github account name",
        );
        refused(
            &[&format!("contents.read:gh/{}/web", "a".repeat(40))],
            "at most 39",
        );
        planned(&[&format!("contents.read:gh/{}/web", "a".repeat(39))]);
        planned(&["contents.read:gh/a-b-c/web"]);
        // Repositories.
        refused(
            &["contents.read:gh/acme/a~b"],
            "is not a github repository name",
        );
        refused(
            &["contents.read:gh/acme/a@b"],
            "is not a github repository name",
        );
        refused(
            &["contents.read:gh/acme/a:b"],
            "is not a github repository name",
        );
        refused(
            &[&format!("contents.read:gh/acme/{}", "r".repeat(101))],
            "at most 100",
        );
        planned(&[&format!("contents.read:gh/acme/{}", "r".repeat(100))]);
        planned(&["contents.read:gh/acme/.github"]);
    }

    #[test]
    fn patterns_allow_a_star_for_the_repository_only() {
        pattern_ok("contents.read:gh/acme/*");
        pattern_ok("pull_requests.write:gh/acme/web");
        pattern_refused("contents.read:gh/*/web", "the owner must be literal");
        pattern_refused("contents.read:gh/*/*", "the owner must be literal");
        pattern_refused("contents.read:gh/acme/**", "no '/**'");
        pattern_refused("contents.read:gh/**", "no '/**'");
        pattern_refused(
            "contents.read:gh/acme",
            "PERMISSION.LEVEL:gh/OWNER/REPOSITORY",
        );
        pattern_refused(
            "contents.read:gh/acme/*/x",
            "PERMISSION.LEVEL:gh/OWNER/REPOSITORY",
        );
        pattern_refused("contents.read:other/acme/web", "not about target");
        pattern_refused("contents.admin:gh/acme/*", "has no level admin");
        pattern_refused(
            "pull-requests.read:gh/acme/*",
            "did you mean pull_requests?",
        );
        pattern_refused(
            "members.read:gh/acme/*",
            "organization or account permission",
        );
        pattern_refused("contents.read:gh/ac_me/*", "not a github account name");
        pattern_refused("contents.read:gh/acme/a~b", "not a github repository name");
        pattern_refused("read:gh/acme/*", "is not PERMISSION.LEVEL");
    }

    #[test]
    fn plans_a_rectangle() {
        let p = planned(&[
            "contents.write:gh/acme/web",
            "contents.write:gh/acme/api",
            "issues.read:gh/acme/web",
            "issues.read:gh/acme/api",
        ]);
        assert_eq!(p.owner, "acme");
        assert_eq!(
            p.repositories,
            BTreeSet::from(["api".to_owned(), "web".to_owned()])
        );
        assert_eq!(
            p.permissions,
            BTreeMap::from([
                ("contents".to_owned(), Level::Write),
                ("issues".to_owned(), Level::Read)
            ])
        );
        assert_eq!(
            p.request_body(),
            serde_json::json!({
                "repositories": ["api", "web"],
                "permissions": {"contents": "write", "issues": "read"},
            })
        );
        assert_eq!(
            p.effective_scopes("gh"),
            vec![
                "contents.write:gh/acme/api",
                "contents.write:gh/acme/web",
                "issues.read:gh/acme/api",
                "issues.read:gh/acme/web",
                "metadata.read:gh/acme/api",
                "metadata.read:gh/acme/web",
            ]
        );
    }

    #[test]
    fn folds_levels_to_the_highest_asked() {
        let p = planned(&[
            "contents.read:gh/acme/web",
            "contents.write:gh/acme/web",
            "contents.write:gh/acme/api",
        ]);
        assert_eq!(p.permissions["contents"], Level::Write);
        // The same scope twice is one.
        planned(&["contents.read:gh/acme/web", "contents.read:gh/acme/web"]);
    }

    #[test]
    fn never_widens() {
        refused(
            &["contents.write:gh/acme/web", "issues.read:gh/acme/api"],
            "would also grant contents.write:gh/acme/api, which the step token does not carry",
        );
        refused(
            &["contents.write:gh/acme/web", "issues.read:gh/acme/api"],
            "split the step's request",
        );
        refused(
            &["contents.write:gh/acme/web", "contents.read:gh/acme/api"],
            "would also grant contents.write:gh/acme/api",
        );
        refused(
            &[
                "contents.read:gh/acme/web",
                "contents.read:gh/acme/api",
                "issues.read:gh/acme/web",
            ],
            "would also grant issues.read:gh/acme/api",
        );
        refused(
            &[
                "metadata.write:gh/acme/web",
                "contents.read:gh/acme/api",
                "contents.read:gh/acme/web",
            ],
            "would also grant metadata.write:gh/acme/api",
        );
        // metadata.read comes with any repository access: never a widening.
        let p = planned(&[
            "contents.read:gh/acme/web",
            "contents.read:gh/acme/api",
            "metadata.read:gh/acme/web",
        ]);
        assert_eq!(p.permissions["metadata"], Level::Read);
        assert_eq!(
            p.effective_scopes("gh"),
            vec![
                "contents.read:gh/acme/api",
                "contents.read:gh/acme/web",
                "metadata.read:gh/acme/api",
                "metadata.read:gh/acme/web",
            ]
        );
        // But a repository named only by metadata.read still gets the
        // other permissions: refused.
        refused(
            &["contents.read:gh/acme/web", "metadata.read:gh/acme/api"],
            "would also grant contents.read:gh/acme/api",
        );
    }

    #[test]
    fn one_owner_and_one_spelling() {
        refused(
            &["contents.read:gh/acme/web", "contents.read:gh/other/web"],
            "a github installation token covers one owner's installation: ask for one credential per owner",
        );
        refused(
            &["contents.read:gh/acme/web", "contents.read:gh/Acme/web"],
            "spell one github owner two ways",
        );
        refused(
            &["contents.read:gh/acme/web", "issues.read:gh/acme/Web"],
            "spell one github repository two ways",
        );
        // One spelling, kept as written.
        let p = planned(&["contents.read:gh/Acme/Web"]);
        assert_eq!(p.owner, "Acme");
        assert!(p.repositories.contains("Web"));
    }

    #[test]
    fn never_an_empty_plan_and_at_most_500_repositories() {
        refused(&[], "carries no scope for target gh");
        let texts: Vec<String> = (0..=MAX_REPOSITORIES)
            .map(|i| format!("contents.read:gh/acme/r{i}"))
            .collect();
        let all: Vec<&str> = texts.iter().map(String::as_str).collect();
        refused(&all, "more than 500 github repositories");
        let p = planned(&all[..MAX_REPOSITORIES]);
        assert_eq!(p.repositories.len(), MAX_REPOSITORIES);
    }

    #[test]
    fn check_answer_accepts_exactly_the_plan() {
        let p = planned(&["contents.write:gh/acme/Web", "contents.write:gh/acme/api"]);
        let (permissions, repositories) = answer(&p);
        p.check_answer(&permissions, "selected", &repositories)
            .unwrap();
        // Names are case-insensitive.
        p.check_answer(&permissions, "selected", &["web".into(), "API".into()])
            .unwrap();
        // Without metadata too.
        let mut without = permissions.clone();
        without.remove(METADATA);
        p.check_answer(&without, "selected", &repositories).unwrap();

        let check = |permissions: &BTreeMap<String, String>,
                     selection: &str,
                     repositories: &[String],
                     needle: &str| {
            let why = p
                .check_answer(permissions, selection, repositories)
                .unwrap_err();
            assert!(why.contains(needle), "{why}");
        };
        check(
            &permissions,
            "all",
            &repositories,
            "repository_selection \"all\", not \"selected\"",
        );
        let mut more = permissions.clone();
        more.insert("issues".into(), "read".into());
        check(
            &more,
            "selected",
            &repositories,
            "github granted issues: read, which was not planned",
        );
        let mut higher = permissions.clone();
        higher.insert("contents".into(), "admin".into());
        check(
            &higher,
            "selected",
            &repositories,
            "github granted contents: admin, more than the planned write",
        );
        let mut lower = permissions.clone();
        lower.insert("contents".into(), "read".into());
        check(
            &lower,
            "selected",
            &repositories,
            "less than the planned write",
        );
        let mut odd = permissions.clone();
        odd.insert("contents".into(), "owner".into());
        check(
            &odd,
            "selected",
            &repositories,
            "at level \"owner\", which is not read, write or admin",
        );
        let mut metadata_write = permissions.clone();
        metadata_write.insert(METADATA.into(), "write".into());
        check(
            &metadata_write,
            "selected",
            &repositories,
            "github granted metadata: write, which was not planned",
        );
        let mut missing = permissions.clone();
        missing.remove("contents");
        check(
            &missing,
            "selected",
            &repositories,
            "github did not grant the planned contents: write",
        );
        let mut extra_repo = repositories.clone();
        extra_repo.push("secrets".into());
        check(
            &permissions,
            "selected",
            &extra_repo,
            "github granted repository \"secrets\", which was not planned",
        );
        check(
            &permissions,
            "selected",
            &["api".into()],
            "github did not grant the planned repository acme/Web",
        );
    }

    const OWNERS: &[&str] = &["acme", "Acme", "other"];
    const REPOS: &[&str] = &["web", "api", "docs", "Web"];
    const PERMS: &[&str] = &[
        "contents",
        "issues",
        "metadata",
        "workflows",
        "repository_projects",
    ];

    fn arb_scope() -> impl Strategy<Value = String> {
        (
            prop::sample::select(OWNERS),
            prop::sample::select(REPOS),
            prop::sample::select(PERMS),
            prop::sample::select(&["read", "write", "admin"][..]),
        )
            .prop_map(|(o, r, p, l)| format!("{p}.{l}:gh/{o}/{r}"))
    }

    /// Mostly rectangles (so plans succeed often), with some noise.
    fn arb_request() -> impl Strategy<Value = Vec<String>> {
        (
            prop::sample::subsequence(&["web", "api", "docs"][..], 1..=3),
            prop::sample::subsequence(
                &[
                    ("contents", "write"),
                    ("issues", "read"),
                    ("metadata", "read"),
                    ("workflows", "write"),
                    ("repository_projects", "admin"),
                    ("contents", "read"),
                ][..],
                1..=4,
            ),
            proptest::collection::vec(arb_scope(), 0..3),
            any::<bool>(),
        )
            .prop_map(|(repos, perms, noise, keep_noise)| {
                let mut out: Vec<String> = repos
                    .iter()
                    .flat_map(|r| {
                        perms
                            .iter()
                            .map(move |(p, l)| format!("{p}.{l}:gh/acme/{r}"))
                    })
                    .collect();
                if keep_noise {
                    out.extend(noise);
                }
                out
            })
    }

    fn below(level: Level) -> impl Iterator<Item = Level> {
        [Level::Read, Level::Write, Level::Admin]
            .into_iter()
            .filter(move |l| *l <= level)
    }

    proptest! {
        #[test]
        fn plans_never_widen(texts in arb_request()) {
            let Ok(granted) = texts.iter().map(|t| Scope::parse(t)).collect::<Result<Vec<_>, _>>() else {
                return Ok(());
            };
            let Ok(p) = plan("gh", &granted) else { return Ok(()) };
            prop_assert!(!p.repositories.is_empty() && !p.permissions.is_empty());
            // What was asked, levels included below, plus metadata.read.
            let mut asked: BTreeSet<(String, String, Level)> = BTreeSet::new();
            for scope in &granted {
                let s = GithubScope::from_scope("gh", scope).unwrap();
                prop_assert_eq!(&s.owner, &p.owner);
                for l in below(s.level) {
                    asked.insert((s.repository.clone(), s.permission.to_owned(), l));
                }
                asked.insert((s.repository.clone(), METADATA.to_owned(), Level::Read));
            }
            // What the token grants: the product.
            let mut product = BTreeSet::new();
            let mut top = BTreeSet::new();
            for r in &p.repositories {
                for (name, level) in &p.permissions {
                    top.insert(scope_text("gh", &p.owner, r, name, *level));
                    for l in below(*level) {
                        product.insert((r.clone(), name.clone(), l));
                    }
                }
                product.insert((r.clone(), METADATA.to_owned(), Level::Read));
                if !p.permissions.contains_key(METADATA) {
                    top.insert(scope_text("gh", &p.owner, r, METADATA, Level::Read));
                }
            }
            prop_assert!(product.is_subset(&asked), "{product:?} exceeds {asked:?}");
            // Nothing asked is dropped either.
            prop_assert!(asked.is_subset(&product), "{asked:?} not all in {product:?}");
            let effective: BTreeSet<String> = p.effective_scopes("gh").into_iter().collect();
            prop_assert_eq!(effective, top);

            // The plan's own answer passes; any widening is refused.
            let (permissions, repositories) = answer(&p);
            prop_assert!(p.check_answer(&permissions, "selected", &repositories).is_ok());
            prop_assert!(p.check_answer(&permissions, "all", &repositories).is_err());
            let mut extra = repositories.clone();
            extra.push("unplanned".into());
            prop_assert!(p.check_answer(&permissions, "selected", &extra).is_err());
            for (name, _) in REPOSITORY_PERMISSIONS {
                for level in ["read", "write", "admin"] {
                    let mut wider = permissions.clone();
                    let before = wider.insert((*name).to_owned(), level.to_owned());
                    let widened = match before.as_deref().and_then(Level::from_name) {
                        None => !(*name == METADATA && level == "read"),
                        Some(old) => Level::from_name(level).unwrap() > old,
                    };
                    if widened {
                        prop_assert!(p.check_answer(&wider, "selected", &repositories).is_err(), "{wider:?}");
                    }
                }
            }
        }

        #[test]
        fn random_scopes_never_panic_and_never_widen(texts in proptest::collection::vec(arb_scope(), 1..8)) {
            let granted: Vec<Scope> = texts.iter().map(|t| Scope::parse(t).unwrap()).collect();
            if let Ok(p) = plan("gh", &granted) {
                let asked: BTreeSet<String> = granted
                    .iter()
                    .flat_map(|scope| {
                        let s = GithubScope::from_scope("gh", scope).unwrap();
                        below(s.level)
                            .map(|l| scope_text("gh", &s.owner, &s.repository, s.permission, l))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                for scope in p.effective_scopes("gh") {
                    prop_assert!(asked.contains(&scope) || scope.starts_with("metadata.read:"), "{scope} not in {asked:?}");
                }
            }
        }
    }
}
