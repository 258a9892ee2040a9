//! The `[targets.NAME]` section of a policy file and the `targets` key of a
//! step: TOML in, validated [`Target`]s out, every problem reported with
//! its key through the policy loader's errors.

use super::postgres::{
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_CONNECTION_LIMIT, DEFAULT_POOL_SIZE, DEFAULT_PORT,
    DEFAULT_STATEMENT_TIMEOUT_SECS, GroupRole, MAX_CONNECT_TIMEOUT_SECS, MAX_CONNECTION_LIMIT,
    MAX_POOL_SIZE, MAX_ROLES, MAX_SCOPES_PER_ROLE, MAX_STATEMENT_TIMEOUT_SECS, PgGrant, PgIdent,
    PgTlsMode, PostgresTarget,
};
use super::{
    KNOWN_KINDS, MAX_TARGETS, ROLE_PREFIX, SecretSource, Target, TargetKind, validate_target_name,
};
use crate::policy::Errors;
use crate::scope::{Scope, ScopePattern};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;

/// `[targets.NAME.roles]`: role name to the scopes it confers.
type RawRoles = BTreeMap<String, Spanned<Vec<Spanned<String>>>>;

/// One `[targets.NAME]` table as written. Every kind's keys are here
/// (there is one kind today); keys another kind does not use are refused
/// by that kind's builder.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTarget {
    #[serde(default)]
    kind: Option<Spanned<String>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    port: Option<Spanned<i64>>,
    #[serde(default)]
    database: Option<Spanned<String>>,
    #[serde(default)]
    admin_user: Option<Spanned<String>>,
    /// Accepted only to be refused with a useful message.
    #[serde(default)]
    admin_password: Option<Spanned<toml::Value>>,
    #[serde(default)]
    admin_password_file: Option<Spanned<String>>,
    #[serde(default)]
    admin_password_env: Option<Spanned<String>>,
    #[serde(default)]
    tls: Option<Spanned<String>>,
    #[serde(default)]
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    connection_limit: Option<Spanned<i64>>,
    #[serde(default)]
    pool_size: Option<Spanned<i64>>,
    #[serde(default)]
    connect_timeout_secs: Option<Spanned<i64>>,
    #[serde(default)]
    statement_timeout_secs: Option<Spanned<i64>>,
    #[serde(default)]
    object_grants: Option<bool>,
    #[serde(default)]
    roles: Option<Spanned<RawRoles>>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for humans; accepted, not used
    description: Option<String>,
}

/// The targets a policy declares: every name (also of targets that failed
/// to build, so that a step naming one gets no second, misleading error)
/// and the ones that built.
pub(crate) struct DeclaredTargets {
    names: BTreeSet<String>,
    built: BTreeMap<String, Target>,
}

impl DeclaredTargets {
    pub(crate) fn into_built(self) -> BTreeMap<String, Target> {
        self.built
    }
}

pub(crate) fn build_targets(
    raw: BTreeMap<String, Spanned<RawTarget>>,
    errors: &mut Errors<'_>,
) -> DeclaredTargets {
    let mut declared = DeclaredTargets {
        names: raw.keys().cloned().collect(),
        built: BTreeMap::new(),
    };
    if raw.len() > MAX_TARGETS {
        let span = raw.values().next().map_or(0..0, Spanned::span);
        errors.push(
            span,
            "targets",
            format!("a policy may declare at most {MAX_TARGETS} targets"),
        );
    }
    for (name, spanned) in raw {
        let span = spanned.span();
        let key = format!("targets.{name}");
        let mut ok = true;
        if let Err(why) = validate_target_name(&name) {
            errors.push(span.clone(), &key, format!("invalid target name: {why}"));
            ok = false;
        }
        let raw = spanned.into_inner();
        let kind = match &raw.kind {
            None => {
                errors.push(
                    span.clone(),
                    &format!("{key}.kind"),
                    format!("kind is required (known kinds: {})", KNOWN_KINDS.join(", ")),
                );
                None
            }
            Some(kind) if kind.get_ref() == "postgres" => {
                build_postgres(&name, raw, span, &key, errors).map(TargetKind::Postgres)
            }
            Some(kind) => {
                errors.push(
                    kind.span(),
                    &format!("{key}.kind"),
                    format!(
                        "unknown target kind {:?} (known kinds: {})",
                        kind.get_ref(),
                        KNOWN_KINDS.join(", ")
                    ),
                );
                None
            }
        };
        if let (true, Some(kind)) = (ok, kind) {
            declared.built.insert(
                name.clone(),
                Target {
                    name: name.clone(),
                    kind,
                },
            );
        }
    }
    declared
}

fn build_postgres(
    name: &str,
    raw: RawTarget,
    span: Range<usize>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Option<PostgresTarget> {
    let before = errors.len();
    if let Some(literal) = &raw.admin_password {
        errors.push(
            literal.span(),
            &format!("{key}.admin_password"),
            "a password does not belong in the policy: put it in a file and name it with admin_password_file, or in the broker's environment and name the variable with admin_password_env".into(),
        );
    }
    let host = match &raw.host {
        None => {
            errors.push(
                span.clone(),
                &format!("{key}.host"),
                "host is required: the server's host name or IP address".into(),
            );
            String::new()
        }
        Some(host) => {
            let text = host.get_ref();
            let ok = !text.is_empty()
                && text.len() <= 253
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
            if !ok {
                errors.push(
                    host.span(),
                    &format!("{key}.host"),
                    "a host name or IP address: 1 to 253 ASCII letters, digits, '.', '-', '_' or ':' (no brackets, no port)".into(),
                );
            }
            text.clone()
        }
    };
    let port = match &raw.port {
        None => DEFAULT_PORT,
        Some(port) => u16::try_from(*port.get_ref())
            .ok()
            .filter(|p| *p != 0)
            .unwrap_or_else(|| {
                errors.push(
                    port.span(),
                    &format!("{key}.port"),
                    "a TCP port, 1 to 65535".into(),
                );
                DEFAULT_PORT
            }),
    };
    let database = required_ident(&raw.database, "database", &span, key, errors);
    let admin_user = required_ident(&raw.admin_user, "admin_user", &span, key, errors);
    let admin_password = match (&raw.admin_password_file, &raw.admin_password_env) {
        (Some(file), None) => {
            let text = file.get_ref();
            if text.is_empty() || text.contains('\0') {
                errors.push(
                    file.span(),
                    &format!("{key}.admin_password_file"),
                    "the path of a file holding the admin password".into(),
                );
            }
            Some(SecretSource::File(PathBuf::from(text)))
        }
        (None, Some(env)) => {
            let text = env.get_ref();
            let mut bytes = text.bytes();
            let ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
                && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && text.len() <= 128;
            if !ok {
                errors.push(
                    env.span(),
                    &format!("{key}.admin_password_env"),
                    "an environment variable name: [A-Z_][A-Z0-9_]*, at most 128 characters".into(),
                );
            }
            Some(SecretSource::Env(text.clone()))
        }
        (Some(file), Some(_)) => {
            errors.push(
                file.span(),
                &format!("{key}.admin_password_file"),
                "give exactly one of admin_password_file and admin_password_env".into(),
            );
            None
        }
        (None, None) => {
            errors.push(
                span.clone(),
                &format!("{key}.admin_password_file"),
                "the admin password is required: give admin_password_file or admin_password_env (exactly one)".into(),
            );
            None
        }
    };
    let tls = match &raw.tls {
        None => PgTlsMode::VerifyFull,
        Some(tls) => PgTlsMode::from_name(tls.get_ref()).unwrap_or_else(|| {
            errors.push(
                tls.span(),
                &format!("{key}.tls"),
                format!(
                    "unknown tls mode {:?} (known: verify-full, require, disable)",
                    tls.get_ref()
                ),
            );
            PgTlsMode::VerifyFull
        }),
    };
    if tls == PgTlsMode::Disable && !is_loopback(&host) {
        let tls_span = raw.tls.as_ref().map_or(span.clone(), Spanned::span);
        errors.push(
            tls_span,
            &format!("{key}.tls"),
            format!("tls = \"disable\" is allowed only for a loopback host (127.0.0.0/8, ::1, localhost), not {host:?}: use verify-full"),
        );
    }
    let ca_file = raw.ca_file.as_ref().map(|ca| {
        if ca.get_ref().is_empty() || ca.get_ref().contains('\0') {
            errors.push(
                ca.span(),
                &format!("{key}.ca_file"),
                "the path of a PEM file of root certificates".into(),
            );
        } else if tls == PgTlsMode::Disable {
            errors.push(
                ca.span(),
                &format!("{key}.ca_file"),
                "ca_file has no use with tls = \"disable\": remove it or turn TLS on".into(),
            );
        }
        PathBuf::from(ca.get_ref())
    });
    let connection_limit = bounded(
        &raw.connection_limit,
        "connection_limit",
        DEFAULT_CONNECTION_LIMIT.into(),
        MAX_CONNECTION_LIMIT.into(),
        key,
        errors,
    );
    let pool_size = bounded(
        &raw.pool_size,
        "pool_size",
        DEFAULT_POOL_SIZE as u64,
        MAX_POOL_SIZE as u64,
        key,
        errors,
    );
    let connect_timeout_secs = bounded(
        &raw.connect_timeout_secs,
        "connect_timeout_secs",
        DEFAULT_CONNECT_TIMEOUT_SECS,
        MAX_CONNECT_TIMEOUT_SECS,
        key,
        errors,
    );
    let statement_timeout_secs = bounded(
        &raw.statement_timeout_secs,
        "statement_timeout_secs",
        DEFAULT_STATEMENT_TIMEOUT_SECS,
        MAX_STATEMENT_TIMEOUT_SECS,
        key,
        errors,
    );
    let roles = build_roles(name, raw.roles, key, errors);
    if errors.len() != before {
        return None;
    }
    Some(PostgresTarget {
        host,
        port,
        database: database?,
        admin_user: admin_user?,
        admin_password: admin_password?,
        tls,
        ca_file,
        // Bounded above by 100 and 32: the conversions cannot fail.
        connection_limit: u32::try_from(connection_limit).ok()?,
        pool_size: usize::try_from(pool_size).ok()?,
        connect_timeout_secs,
        statement_timeout_secs,
        object_grants: raw.object_grants.unwrap_or(true),
        roles,
    })
}

fn required_ident(
    value: &Option<Spanned<String>>,
    field: &str,
    span: &Range<usize>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Option<PgIdent> {
    let field_key = format!("{key}.{field}");
    match value {
        None => {
            errors.push(span.clone(), &field_key, format!("{field} is required"));
            None
        }
        Some(text) => match PgIdent::parse(text.get_ref()) {
            Ok(ident) => Some(ident),
            Err(why) => {
                errors.push(text.span(), &field_key, why.0);
                None
            }
        },
    }
}

fn bounded(
    value: &Option<Spanned<i64>>,
    field: &str,
    default: u64,
    max: u64,
    key: &str,
    errors: &mut Errors<'_>,
) -> u64 {
    match value {
        None => default,
        Some(n) => match u64::try_from(*n.get_ref()) {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                errors.push(
                    n.span(),
                    &format!("{key}.{field}"),
                    format!("{field} is 1 to {max} (default {default})"),
                );
                default
            }
        },
    }
}

/// 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn build_roles(
    target: &str,
    raw: Option<Spanned<RawRoles>>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Vec<GroupRole> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let roles_key = format!("{key}.roles");
    if raw.get_ref().len() > MAX_ROLES {
        errors.push(
            raw.span(),
            &roles_key,
            format!("a target may declare at most {MAX_ROLES} roles"),
        );
    }
    let mut roles = Vec::new();
    for (role, scopes) in raw.into_inner() {
        let role_key = format!("{roles_key}.{role}");
        let span = scopes.span();
        let ident = match PgIdent::parse(&role) {
            Ok(ident) if ident.as_str().starts_with(ROLE_PREFIX) => {
                errors.push(
                    span.clone(),
                    &role_key,
                    format!("role names starting with {ROLE_PREFIX:?} are reserved for the logins Stint makes: rename the group role"),
                );
                None
            }
            Ok(ident) => Some(ident),
            Err(why) => {
                errors.push(span.clone(), &role_key, format!("invalid role name: {why}"));
                None
            }
        };
        let scopes = scopes.into_inner();
        if scopes.is_empty() {
            errors.push(
                span.clone(),
                &role_key,
                "a role must confer at least one scope (Stint grants a role only when the token carries everything it confers)".into(),
            );
        }
        if scopes.len() > MAX_SCOPES_PER_ROLE {
            errors.push(
                span.clone(),
                &role_key,
                format!("a role may confer at most {MAX_SCOPES_PER_ROLE} scopes"),
            );
        }
        let mut conferred: Vec<Scope> = Vec::new();
        for (i, text) in scopes.into_iter().enumerate() {
            let scope_key = format!("{role_key}[{i}]");
            let scope = match Scope::parse(text.get_ref()) {
                Ok(scope) => scope,
                Err(e) => {
                    errors.push(
                        text.span(),
                        &scope_key,
                        format!(
                            "invalid scope {:?}: {e} (a role confers concrete scopes, no wildcards)",
                            text.get_ref()
                        ),
                    );
                    continue;
                }
            };
            if scope.segments().next() != Some(target) {
                errors.push(
                    text.span(),
                    &scope_key,
                    format!(
                        "scope {:?} is not about this target: its first resource segment must be {target:?}",
                        text.get_ref()
                    ),
                );
                continue;
            }
            if let Err(why) = PgGrant::from_scope(target, &scope) {
                errors.push(text.span(), &scope_key, why.0);
                continue;
            }
            if conferred.contains(&scope) {
                errors.push(
                    text.span(),
                    &scope_key,
                    format!("scope {:?} is listed twice", text.get_ref()),
                );
                continue;
            }
            conferred.push(scope);
        }
        if let Some(role) = ident {
            roles.push(GroupRole {
                role,
                scopes: conferred,
            });
        }
    }
    roles
}

/// A step's `targets`: each declared, none twice.
pub(crate) fn build_step_targets(
    raw: Option<Spanned<Vec<Spanned<String>>>>,
    declared: &DeclaredTargets,
    key: &str,
    errors: &mut Errors<'_>,
) -> Vec<String> {
    let mut targets: Vec<String> = Vec::new();
    let Some(raw) = raw else {
        return targets;
    };
    for (i, name) in raw.into_inner().into_iter().enumerate() {
        let item_key = format!("{key}.targets[{i}]");
        if !declared.names.contains(name.get_ref()) {
            errors.push(
                name.span(),
                &item_key,
                format!(
                    "no target is named {:?}: declare it under [targets.{}]",
                    name.get_ref(),
                    name.get_ref()
                ),
            );
        } else if targets.contains(name.get_ref()) {
            errors.push(
                name.span(),
                &item_key,
                format!("target {:?} is listed twice", name.get_ref()),
            );
        } else {
            targets.push(name.into_inner());
        }
    }
    targets
}

/// A step's (or its elevation's) pattern that names a declared target as
/// its first resource segment: the step must list the target, and the
/// pattern must fit the target's grammar.
pub(crate) fn check_step_pattern(
    pattern: &ScopePattern,
    span: Range<usize>,
    pattern_key: &str,
    step_targets: &[String],
    step_key: &str,
    declared: &DeclaredTargets,
    errors: &mut Errors<'_>,
) {
    let first = pattern
        .as_str()
        .split_once(':')
        .and_then(|(_, resource)| resource.split('/').next())
        .unwrap_or("");
    if !declared.names.contains(first) {
        return;
    }
    if !step_targets.iter().any(|t| t == first) {
        errors.push(
            span.clone(),
            pattern_key,
            format!(
                "pattern {:?} is about target {first:?}: add {first:?} to {step_key}.targets",
                pattern.as_str()
            ),
        );
    }
    if let Some(target) = declared.built.get(first)
        && let Err(why) = target.check_pattern(pattern)
    {
        errors.push(span, pattern_key, why.0);
    }
}
