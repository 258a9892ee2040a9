//! The `[targets.NAME]` section of a policy file and the `targets` key of a
//! step: TOML in, validated [`Target`]s out, every problem reported with
//! its key through the policy loader's errors.

use super::github::{self, GithubApp, GithubTarget};
use super::oidc::{self, OidcTarget};
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

/// One `[targets.NAME]` table as written. Every kind's keys are here;
/// keys a kind does not use are refused ([`RawTarget::foreign_keys`]).
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
    object_grants: Option<Spanned<bool>>,
    #[serde(default)]
    roles: Option<Spanned<RawRoles>>,
    // kind = "github"
    #[serde(default)]
    app_id: Option<Spanned<i64>>,
    #[serde(default)]
    client_id: Option<Spanned<String>>,
    #[serde(default)]
    private_key_file: Option<Spanned<String>>,
    #[serde(default)]
    token_key_file: Option<Spanned<String>>,
    #[serde(default)]
    api_url: Option<Spanned<String>>,
    #[serde(default)]
    timeout_secs: Option<Spanned<i64>>,
    // kind = "oidc"
    #[serde(default)]
    audience: Option<Spanned<String>>,
    #[serde(default)]
    ttl_secs: Option<Spanned<i64>>,
    #[serde(default)]
    aws_session_tags: Option<Spanned<bool>>,
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

    /// Whether `name` is a declared target of kind `oidc` that built.
    pub(crate) fn is_oidc(&self, name: &str) -> bool {
        self.built
            .get(name)
            .is_some_and(|target| matches!(target.kind(), TargetKind::Oidc(_)))
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
                raw.refuse_foreign_keys("postgres", &key, errors);
                build_postgres(&name, raw, span, &key, errors).map(TargetKind::Postgres)
            }
            Some(kind) if kind.get_ref() == "github" => {
                raw.refuse_foreign_keys("github", &key, errors);
                build_github(raw, span, &key, errors).map(TargetKind::Github)
            }
            Some(kind) if kind.get_ref() == "oidc" => {
                raw.refuse_foreign_keys("oidc", &key, errors);
                build_oidc(raw, span, &key, errors).map(TargetKind::Oidc)
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

/// The keys of each kind (besides `kind` and `description`).
const POSTGRES_KEYS: &[&str] = &[
    "host",
    "port",
    "database",
    "admin_user",
    "admin_password",
    "admin_password_file",
    "admin_password_env",
    "tls",
    "ca_file",
    "connection_limit",
    "pool_size",
    "connect_timeout_secs",
    "statement_timeout_secs",
    "object_grants",
    "roles",
];
const GITHUB_KEYS: &[&str] = &[
    "app_id",
    "client_id",
    "private_key_file",
    "token_key_file",
    "api_url",
    "ca_file",
    "timeout_secs",
];
const OIDC_KEYS: &[&str] = &["audience", "ttl_secs", "aws_session_tags"];

impl RawTarget {
    /// The keys written, with their spans.
    fn present(&self) -> Vec<(&'static str, Range<usize>)> {
        fn at<T>(
            name: &'static str,
            v: &Option<Spanned<T>>,
        ) -> Option<(&'static str, Range<usize>)> {
            v.as_ref().map(|v| (name, v.span()))
        }
        [
            at("host", &self.host),
            at("port", &self.port),
            at("database", &self.database),
            at("admin_user", &self.admin_user),
            at("admin_password", &self.admin_password),
            at("admin_password_file", &self.admin_password_file),
            at("admin_password_env", &self.admin_password_env),
            at("tls", &self.tls),
            at("ca_file", &self.ca_file),
            at("connection_limit", &self.connection_limit),
            at("pool_size", &self.pool_size),
            at("connect_timeout_secs", &self.connect_timeout_secs),
            at("statement_timeout_secs", &self.statement_timeout_secs),
            at("object_grants", &self.object_grants),
            at("roles", &self.roles),
            at("app_id", &self.app_id),
            at("client_id", &self.client_id),
            at("private_key_file", &self.private_key_file),
            at("token_key_file", &self.token_key_file),
            at("api_url", &self.api_url),
            at("timeout_secs", &self.timeout_secs),
            at("audience", &self.audience),
            at("ttl_secs", &self.ttl_secs),
            at("aws_session_tags", &self.aws_session_tags),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Refuse the keys written that `kind` does not use (another kind's).
    fn refuse_foreign_keys(&self, kind: &str, key: &str, errors: &mut Errors<'_>) {
        let allowed = match kind {
            "postgres" => POSTGRES_KEYS,
            "github" => GITHUB_KEYS,
            _ => OIDC_KEYS,
        };
        for (name, span) in self.present() {
            if !allowed.contains(&name) {
                errors.push(
                    span,
                    &format!("{key}.{name}"),
                    format!(
                        "{name} is not a setting of a {kind} target (its settings: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }
}

/// A path setting: not empty, no NUL.
fn path_of(
    value: &Option<Spanned<String>>,
    field: &str,
    what: &str,
    span: &Range<usize>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Option<PathBuf> {
    let field_key = format!("{key}.{field}");
    match value {
        None => {
            errors.push(
                span.clone(),
                &field_key,
                format!("{field} is required: {what}"),
            );
            None
        }
        Some(text) if text.get_ref().is_empty() || text.get_ref().contains('\0') => {
            errors.push(text.span(), &field_key, format!("{field} is {what}"));
            None
        }
        Some(text) => Some(PathBuf::from(text.get_ref())),
    }
}

fn build_github(
    raw: RawTarget,
    span: Range<usize>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Option<GithubTarget> {
    let before = errors.len();
    let app = match (&raw.app_id, &raw.client_id) {
        (Some(id), None) => match u64::try_from(*id.get_ref()) {
            Ok(id) if id > 0 => Some(GithubApp::Id(id)),
            _ => {
                errors.push(
                    id.span(),
                    &format!("{key}.app_id"),
                    "app_id is the App's numeric id, a positive integer".into(),
                );
                None
            }
        },
        (None, Some(client_id)) => {
            let text = client_id.get_ref();
            let ok = !text.is_empty()
                && text.len() <= 64
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
            if ok {
                Some(GithubApp::ClientId(text.clone()))
            } else {
                errors.push(
                    client_id.span(),
                    &format!("{key}.client_id"),
                    "client_id is the App's client id (Iv1.... or Iv23...): ASCII letters, digits, '.', '_' or '-', at most 64".into(),
                );
                None
            }
        }
        (Some(id), Some(_)) => {
            errors.push(
                id.span(),
                &format!("{key}.app_id"),
                "give exactly one of app_id and client_id".into(),
            );
            None
        }
        (None, None) => {
            errors.push(
                span.clone(),
                &format!("{key}.app_id"),
                "the App is required: give app_id (its numeric id) or client_id".into(),
            );
            None
        }
    };
    let private_key_file = path_of(
        &raw.private_key_file,
        "private_key_file",
        "the path of the App's private key (PKCS#1 or PKCS#8 RSA PEM)",
        &span,
        key,
        errors,
    );
    let token_key_file = path_of(
        &raw.token_key_file,
        "token_key_file",
        "the path of a file of 32 random bytes that seals installation tokens until they are revoked (head -c 32 /dev/urandom > FILE)",
        &span,
        key,
        errors,
    );
    let api_url = match &raw.api_url {
        None => github::DEFAULT_API_URL.to_owned(),
        Some(url) => {
            let text = url.get_ref().trim_end_matches('/');
            match check_api_url(text) {
                Ok(()) => text.to_owned(),
                Err(why) => {
                    errors.push(url.span(), &format!("{key}.api_url"), why);
                    String::new()
                }
            }
        }
    };
    let ca_file = raw.ca_file.as_ref().and_then(|ca| {
        path_of(
            &raw.ca_file,
            "ca_file",
            "the path of a PEM file of root certificates",
            &ca.span(),
            key,
            errors,
        )
    });
    let timeout_secs = bounded(
        &raw.timeout_secs,
        "timeout_secs",
        github::DEFAULT_TIMEOUT_SECS,
        github::MAX_TIMEOUT_SECS,
        key,
        errors,
    );
    if errors.len() != before {
        return None;
    }
    Some(GithubTarget {
        app: app?,
        private_key_file: private_key_file?,
        token_key_file: token_key_file?,
        api_url,
        ca_file,
        timeout_secs,
    })
}

/// An API base URL: `https://HOST[:PORT][/PATH]`, no query, fragment or
/// credentials; `http://` only to a loopback host.
fn check_api_url(text: &str) -> Result<(), String> {
    let rest = if let Some(rest) = text.strip_prefix("https://") {
        rest
    } else if let Some(rest) = text.strip_prefix("http://") {
        let host = rest.split(['/', ':']).next().unwrap_or("");
        let host = if rest.starts_with('[') {
            rest.split(']').next().unwrap_or("").trim_start_matches('[')
        } else {
            host
        };
        if !is_loopback(host) {
            return Err("api_url must be https:// (http:// only to a loopback host)".into());
        }
        rest
    } else {
        return Err("api_url must be https://HOST[/PATH], e.g. https://api.github.com or https://ghe.example.com/api/v3".into());
    };
    let ok = !rest.is_empty()
        && text.len() <= 256
        && rest.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'-' | b'_' | b'/' | b':' | b'[' | b']' | b'~')
        })
        && !rest.starts_with('/');
    if ok {
        Ok(())
    } else {
        Err("api_url must be https://HOST[:PORT][/PATH] (at most 256 bytes; no query, fragment or user)".into())
    }
}

fn build_oidc(
    raw: RawTarget,
    span: Range<usize>,
    key: &str,
    errors: &mut Errors<'_>,
) -> Option<OidcTarget> {
    let before = errors.len();
    let audience = match &raw.audience {
        None => {
            errors.push(
                span.clone(),
                &format!("{key}.audience"),
                "audience is required: the aud the accepting system expects (sts.amazonaws.com, api://AzureADTokenExchange, the GCP provider's URL, a Vault role's bound audience)".into(),
            );
            None
        }
        Some(aud) => match crate::ids::validate_audience(aud.get_ref()) {
            Ok(()) => Some(aud.get_ref().clone()),
            Err(e) => {
                errors.push(
                    aud.span(),
                    &format!("{key}.audience"),
                    format!("invalid audience: {e}"),
                );
                None
            }
        },
    };
    let ttl_secs = match &raw.ttl_secs {
        None => oidc::DEFAULT_TTL_SECS,
        Some(ttl) => match u64::try_from(*ttl.get_ref()) {
            Ok(n) if (oidc::MIN_TTL_SECS..=oidc::MAX_TTL_SECS).contains(&n) => n,
            _ => {
                errors.push(
                    ttl.span(),
                    &format!("{key}.ttl_secs"),
                    format!(
                        "ttl_secs is {} to {} (default {})",
                        oidc::MIN_TTL_SECS,
                        oidc::MAX_TTL_SECS,
                        oidc::DEFAULT_TTL_SECS
                    ),
                );
                oidc::DEFAULT_TTL_SECS
            }
        },
    };
    if errors.len() != before {
        return None;
    }
    Some(OidcTarget {
        audience: audience?,
        ttl_secs,
        aws_session_tags: raw.aws_session_tags.is_some_and(|v| *v.get_ref()),
    })
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
            "a literal password does not belong in the policy: use admin_password_file (a file holding it) or admin_password_env (an environment variable of the broker)".into(),
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
    if tls == PgTlsMode::Require && raw.ca_file.is_none() {
        // Without its own roots, "require" would accept any certificate any
        // public CA issued, for any name.
        let tls_span = raw.tls.as_ref().map_or(span.clone(), Spanned::span);
        errors.push(
            tls_span,
            &format!("{key}.tls"),
            "tls = \"require\" checks the server's certificate against ca_file only, and needs one: set ca_file, or use verify-full".into(),
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
    let roles = build_roles(name, raw.roles, admin_user.as_ref(), key, errors);
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
        object_grants: raw.object_grants.is_none_or(|v| *v.get_ref()),
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
    admin: Option<&PgIdent>,
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
            // A login that joined one of these would hold far more than
            // any scope says: the admin's grant options, a predefined
            // role's powers (pg_read_all_data, pg_execute_server_program),
            // everything PUBLIC has, or the usual superuser's objects.
            Ok(ident)
                if admin == Some(&ident)
                    || ident.as_str().starts_with("pg_")
                    || ["public", "postgres"].contains(&ident.as_str()) =>
            {
                errors.push(
                    span.clone(),
                    &role_key,
                    format!(
                        "{:?} cannot be a group role: not the admin, a predefined pg_ role, public or postgres; make a NOLOGIN role that holds exactly what its scopes say",
                        ident.as_str()
                    ),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::policy::Policy;
    use crate::target::TargetKind;
    use crate::target::postgres::PgTlsMode;

    const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn good() -> String {
        format!(
            r#"
[workloads.sync]
secret_sha256 = "{HASH}"
workflows = ["sync"]

[targets.warehouse]
kind = "postgres"
host = "db.internal"
database = "analytics"
admin_user = "stint_admin"
admin_password_file = "/etc/stint/warehouse.password"

[targets.warehouse.roles]
crm_reader = ["select:warehouse/crm/accounts", "select:warehouse/crm/contacts"]

[workflows.sync]
review_by = 2027-01-31

[workflows.sync.steps.load]
scopes = ["select:warehouse/crm/*", "insert:warehouse/staging/*", "read:github/acme/web"]
targets = ["warehouse"]
audiences = ["warehouse"]
"#
        )
    }

    fn errors_of(text: &str) -> Vec<String> {
        Policy::parse("p.toml", text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The errors of `good()` with `from` replaced by `to`: exactly one,
    /// with `key` and `needle` in it.
    fn refused(from: &str, to: &str, key: &str, needle: &str) {
        let text = good();
        assert!(text.contains(from), "{from}");
        let errors = errors_of(&text.replacen(from, to, 1));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains(&format!(": {key}: ")) && errors[0].contains(needle),
            "{key} / {needle}: {errors:#?}"
        );
    }

    #[test]
    fn loads_a_postgres_target_with_defaults() {
        let policy = Policy::parse("p.toml", &good()).unwrap();
        let target = policy.target("warehouse").unwrap();
        assert_eq!(target.name(), "warehouse");
        assert_eq!(target.kind().as_str(), "postgres");
        assert_eq!(policy.targets().count(), 1);
        let TargetKind::Postgres(pg) = target.kind() else {
            panic!("not a postgres target")
        };
        assert_eq!(pg.host, "db.internal");
        assert_eq!(pg.port, 5432);
        assert_eq!(pg.database.as_str(), "analytics");
        assert_eq!(pg.tls, PgTlsMode::VerifyFull);
        assert_eq!(pg.tls.as_str(), "verify-full");
        assert_eq!(
            (
                pg.connection_limit,
                pg.pool_size,
                pg.connect_timeout_secs,
                pg.statement_timeout_secs
            ),
            (2, 4, 5, 5)
        );
        assert!(pg.object_grants);
        assert_eq!(pg.roles.len(), 1);
        assert_eq!(pg.roles[0].role.as_str(), "crm_reader");
        assert_eq!(pg.roles[0].scopes.len(), 2);
        let workflow = policy.workflow("sync").unwrap();
        assert_eq!(workflow.step("load").unwrap().targets(), ["warehouse"]);
        // Every setting given.
        let full = good().replace(
            "admin_password_file = \"/etc/stint/warehouse.password\"",
            "admin_password_env = \"WAREHOUSE_ADMIN_PASSWORD\"\nport = 6432\ntls = \"require\"\nca_file = \"/etc/ca.pem\"\nconnection_limit = 100\npool_size = 32\nconnect_timeout_secs = 60\nstatement_timeout_secs = 300\nobject_grants = false\ndescription = \"the warehouse\"",
        );
        let policy = Policy::parse("p.toml", &full).unwrap();
        let TargetKind::Postgres(pg) = policy.target("warehouse").unwrap().kind() else {
            panic!("not a postgres target")
        };
        assert_eq!(pg.port, 6432);
        assert_eq!(pg.tls, PgTlsMode::Require);
        assert_eq!(
            pg.admin_password,
            crate::target::SecretSource::Env("WAREHOUSE_ADMIN_PASSWORD".into())
        );
        assert!(!pg.object_grants);
        assert_eq!(pg.connection_limit, 100);
    }

    #[test]
    fn the_example_policy_declares_a_warehouse_target() {
        let text = include_str!("../../../../deploy/policy.example.toml");
        let policy =
            Policy::parse("deploy/policy.example.toml", text).unwrap_or_else(|e| panic!("{e}"));
        let target = policy.target("warehouse").unwrap();
        let TargetKind::Postgres(pg) = target.kind() else {
            panic!("not a postgres target")
        };
        assert_eq!(pg.roles.len(), 1);
        let (_, load) = policy
            .resolve_step(policy.workload("nightly-sync").unwrap(), "load")
            .unwrap();
        assert_eq!(load.targets(), ["warehouse"]);
        // A token for the load step, planned into a login.
        let granted: Vec<crate::scope::Scope> = [
            "insert:warehouse/crm/accounts",
            "update:warehouse/crm/accounts",
            "insert:warehouse/crm/contacts",
            "update:warehouse/crm/contacts",
            "select:warehouse/crm/accounts",
        ]
        .iter()
        .map(|s| crate::scope::Scope::parse(s).unwrap())
        .collect();
        assert!(
            granted
                .iter()
                .all(|s| crate::scope::covered(load.scopes(), s))
        );
        let role = crate::target::postgres::role_name(&[1; 15]);
        let plan =
            crate::target::postgres::plan("warehouse", pg, &granted, role, 1_900_000_000).unwrap();
        assert_eq!(
            plan.privileges(),
            [
                "member of crm_writer",
                "USAGE on schema crm",
                "SELECT on crm.accounts"
            ]
        );
    }

    #[test]
    fn target_names_kinds_and_keys() {
        let errors = errors_of(&good().replace("[targets.warehouse", "[targets.Warehouse"));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("targets.Warehouse: invalid target name")),
            "{errors:#?}"
        );
        let long = format!("w{}", "a".repeat(32));
        let errors = errors_of(&good().replace("warehouse", &long));
        assert!(
            errors
                .iter()
                .any(|e| e.contains(&format!("targets.{long}: invalid target name"))),
            "{errors:#?}"
        );
        refused(
            "kind = \"postgres\"\n",
            "",
            "targets.warehouse.kind",
            "known kinds: postgres",
        );
        refused(
            "kind = \"postgres\"",
            "kind = \"mysql\"",
            "targets.warehouse.kind",
            "unknown target kind \"mysql\" (known kinds: postgres, github, oidc)",
        );
        refused(
            "host = \"db.internal\"",
            "hots = \"db.internal\"",
            "targets.warehouse.hots",
            "unknown field",
        );
        let many: String = (0..65)
            .map(|i| format!("[targets.t{i}]\nkind = \"postgres\"\nhost = \"h\"\ndatabase = \"d\"\nadmin_user = \"u\"\nadmin_password_env = \"P\"\n"))
            .collect();
        let errors = errors_of(&format!("{}{many}", good()));
        assert!(
            errors
                .iter()
                .any(|e| e.contains(": targets: a policy may declare at most 64 targets")),
            "{errors:#?}"
        );
    }

    #[test]
    fn secrets_stay_out_of_the_policy() {
        refused(
            "admin_password_file = \"/etc/stint/warehouse.password\"",
            "admin_password = \"hunter2\"\nadmin_password_file = \"/x\"",
            "targets.warehouse.admin_password",
            "use admin_password_file (a file holding it) or admin_password_env",
        );
        let errors = errors_of(&good().replace(
            "admin_password_file = \"/etc/stint/warehouse.password\"",
            "admin_password = \"hunter2\"\nadmin_password_file = \"/x\"",
        ));
        assert!(
            !errors.iter().any(|e| e.contains("hunter2")),
            "the secret is never echoed"
        );
        assert!(
            errors[0].contains("admin_password_file") && errors[0].contains("admin_password_env")
        );
        refused(
            "admin_password_file = \"/etc/stint/warehouse.password\"",
            "",
            "targets.warehouse.admin_password_file",
            "exactly one",
        );
        refused(
            "admin_password_file = \"/etc/stint/warehouse.password\"",
            "admin_password_file = \"/x\"\nadmin_password_env = \"X\"",
            "targets.warehouse.admin_password_file",
            "exactly one of admin_password_file and admin_password_env",
        );
        for bad in ["lower", "1X", "A-B", ""] {
            refused(
                "admin_password_file = \"/etc/stint/warehouse.password\"",
                &format!("admin_password_env = \"{bad}\""),
                "targets.warehouse.admin_password_env",
                "[A-Z_][A-Z0-9_]*",
            );
        }
    }

    #[test]
    fn connection_settings_are_checked() {
        refused(
            "host = \"db.internal\"\n",
            "",
            "targets.warehouse.host",
            "host is required",
        );
        refused(
            "host = \"db.internal\"",
            "host = \"db internal\"",
            "targets.warehouse.host",
            "host name",
        );
        refused(
            "database = \"analytics\"\n",
            "",
            "targets.warehouse.database",
            "database is required",
        );
        refused(
            "database = \"analytics\"",
            "database = \"an alytics\"",
            "targets.warehouse.database",
            "postgresql identifier",
        );
        refused(
            "admin_user = \"stint_admin\"",
            "admin_user = \"a\\\"b\"",
            "targets.warehouse.admin_user",
            "postgresql identifier",
        );
        refused(
            "admin_user = \"stint_admin\"\n",
            "",
            "targets.warehouse.admin_user",
            "admin_user is required",
        );
        refused(
            "kind = \"postgres\"",
            "kind = \"postgres\"\nport = 0",
            "targets.warehouse.port",
            "1 to 65535",
        );
        refused(
            "kind = \"postgres\"",
            "kind = \"postgres\"\nport = 70000",
            "targets.warehouse.port",
            "1 to 65535",
        );
        refused(
            "kind = \"postgres\"",
            "kind = \"postgres\"\ntls = \"prefer\"",
            "targets.warehouse.tls",
            "unknown tls mode",
        );
        refused(
            "kind = \"postgres\"",
            "kind = \"postgres\"\ntls = \"disable\"",
            "targets.warehouse.tls",
            "only for a loopback host",
        );
        for loopback in ["127.0.0.1", "127.1.2.3", "::1", "localhost"] {
            let text = good().replace(
                "host = \"db.internal\"",
                &format!("host = \"{loopback}\"\ntls = \"disable\""),
            );
            assert!(Policy::parse("p.toml", &text).is_ok(), "{loopback}");
        }
        refused(
            "host = \"db.internal\"",
            "host = \"localhost\"\ntls = \"disable\"\nca_file = \"/ca.pem\"",
            "targets.warehouse.ca_file",
            "no use",
        );
        refused(
            "host = \"db.internal\"",
            "host = \"db.internal\"\ntls = \"require\"",
            "targets.warehouse.tls",
            "needs one",
        );
        for (field, max) in [
            ("connection_limit", 100),
            ("pool_size", 32),
            ("connect_timeout_secs", 60),
            ("statement_timeout_secs", 300),
        ] {
            for bad in [0, max + 1, -1] {
                refused(
                    "kind = \"postgres\"",
                    &format!("kind = \"postgres\"\n{field} = {bad}"),
                    &format!("targets.warehouse.{field}"),
                    &format!("{field} is 1 to {max}"),
                );
            }
        }
    }

    #[test]
    fn group_roles_are_checked() {
        let role =
            "crm_reader = [\"select:warehouse/crm/accounts\", \"select:warehouse/crm/contacts\"]";
        let with = |line: &str| good().replace(role, line);
        let one = |line: &str, key: &str, needle: &str| {
            let errors = errors_of(&with(line));
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert!(
                errors[0].contains(&format!(": {key}: ")) && errors[0].contains(needle),
                "{errors:#?}"
            );
        };
        one(
            "stint_x = [\"select:warehouse/a/b\"]",
            "targets.warehouse.roles.stint_x",
            "reserved",
        );
        one(
            "\"a b\" = [\"select:warehouse/a/b\"]",
            "targets.warehouse.roles.a b",
            "invalid role name",
        );
        one("r = []", "targets.warehouse.roles.r", "at least one scope");
        for reserved in ["pg_read_all_data", "public", "postgres"] {
            one(
                &format!("{reserved} = [\"select:warehouse/a/b\"]"),
                &format!("targets.warehouse.roles.{reserved}"),
                "cannot be a group role",
            );
        }
        let admin_as_group = good()
            .replace("admin_user = \"stint_admin\"", "admin_user = \"wh_admin\"")
            .replace(role, "wh_admin = [\"select:warehouse/a/b\"]");
        let errors = errors_of(&admin_as_group);
        assert!(
            errors.len() == 1 && errors[0].contains("cannot be a group role"),
            "{errors:#?}"
        );
        one(
            "r = [\"select:warehouse/a/*\"]",
            "targets.warehouse.roles.r[0]",
            "no wildcards",
        );
        one(
            "r = [\"select:other/a/b\"]",
            "targets.warehouse.roles.r[0]",
            "not about this target",
        );
        one(
            "r = [\"write:warehouse/a/b\"]",
            "targets.warehouse.roles.r[0]",
            "not a postgresql privilege",
        );
        one(
            "r = [\"select:warehouse/a\"]",
            "targets.warehouse.roles.r[0]",
            "warehouse/SCHEMA/TABLE",
        );
        one(
            "r = [\"usage:warehouse/a\", \"usage:warehouse/a\"]",
            "targets.warehouse.roles.r[1]",
            "listed twice",
        );
        let scopes: Vec<String> = (0..65)
            .map(|i| format!("\"select:warehouse/a/t{i}\""))
            .collect();
        one(
            &format!("r = [{}]", scopes.join(", ")),
            "targets.warehouse.roles.r",
            "at most 64 scopes",
        );
        let roles: Vec<String> = (0..65)
            .map(|i| format!("r{i} = [\"usage:warehouse/a\"]"))
            .collect();
        one(
            &roles.join("\n"),
            "targets.warehouse.roles",
            "at most 64 roles",
        );
        assert!(
            Policy::parse(
                "p.toml",
                &with("\"Mixed.Case@x\" = [\"usage:warehouse/crm/ids\"]")
            )
            .is_ok()
        );
    }

    #[test]
    fn steps_list_the_targets_their_scopes_name() {
        let step_key = "workflows.sync.steps.load";
        refused(
            "targets = [\"warehouse\"]",
            "targets = [\"warehouse\", \"lake\"]",
            &format!("{step_key}.targets[1]"),
            "no target is named \"lake\"",
        );
        refused(
            "targets = [\"warehouse\"]",
            "targets = [\"warehouse\", \"warehouse\"]",
            &format!("{step_key}.targets[1]"),
            "listed twice",
        );
        let errors = errors_of(&good().replace("targets = [\"warehouse\"]\n", ""));
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].contains(&format!("{step_key}.scopes[0]: pattern \"select:warehouse/crm/*\" is about target \"warehouse\": add \"warehouse\" to {step_key}.targets")), "{errors:#?}");
        assert!(
            errors[1].contains(&format!("{step_key}.scopes[1]")),
            "{errors:#?}"
        );
        refused(
            "\"insert:warehouse/staging/*\"",
            "\"write:warehouse/staging/*\"",
            &format!("{step_key}.scopes[1]"),
            "not a postgresql privilege",
        );
        refused(
            "\"insert:warehouse/staging/*\"",
            "\"insert:warehouse/staging\"",
            &format!("{step_key}.scopes[1]"),
            "insert takes warehouse/SCHEMA/TABLE",
        );
        // Wildcards and a trailing /** are fine in patterns.
        let text = good().replace(
            "\"insert:warehouse/staging/*\"",
            "\"insert:warehouse/**\", \"usage:warehouse/*/*\"",
        );
        assert!(Policy::parse("p.toml", &text).is_ok());
        // A target that failed to build still counts as declared: no second error.
        let errors = errors_of(&good().replace("kind = \"postgres\"", "kind = \"mysql\""));
        assert_eq!(errors.len(), 1, "{errors:#?}");
    }

    #[test]
    fn elevation_scopes_follow_the_same_rules() {
        let text = format!(
            "{}\n[workflows.sync.steps.load.elevation]\nscopes = [\"delete:warehouse/staging/*\", \"drop:warehouse/a/b\"]\napprover_groups = [\"dba\"]\nmax_duration = \"30m\"\nmax_wait = \"1h\"\n\n[operators.alice]\ngroups = [\"dba\"]\nkey_sha256 = \"{HASH}\"\n",
            good()
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].contains(
                "workflows.sync.steps.load.elevation.scopes[1]: pattern \"drop:warehouse/a/b\""
            ),
            "{errors:#?}"
        );
        let errors = errors_of(&text.replace("targets = [\"warehouse\"]\n", "").replace(
            "\"select:warehouse/crm/*\", \"insert:warehouse/staging/*\", ",
            "",
        ));
        assert!(
            errors.iter().any(|e| e.contains(
                "elevation.scopes[0]: pattern \"delete:warehouse/staging/*\" is about target"
            )),
            "{errors:#?}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod federation_subject_tests {
    use crate::policy::Policy;

    const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn policy(workload: &str, step: &str, targets: &str) -> String {
        format!(
            r#"
[workloads.{workload}]
secret_sha256 = "{HASH}"
workflows = ["deploy"]

[targets.aws-prod]
kind = "oidc"
audience = "sts.amazonaws.com"

[workflows.deploy]
review_by = 2099-01-31

[workflows.deploy.steps.{step}]
scopes = ["read:docs/**"{targets}]
targets = [{target_list}]
"#,
            target_list = if targets.is_empty() {
                ""
            } else {
                "\"aws-prod\""
            },
        )
    }

    #[test]
    fn a_federation_subject_over_127_bytes_refuses_the_policy_naming_the_step() {
        let short = policy("deployer", "apply", ", \"federate:aws-prod\"");
        Policy::parse("p.toml", &short).unwrap();

        let long_name = "a".repeat(64);
        let long = policy(&long_name, &long_name, ", \"federate:aws-prod\"");
        let errors = Policy::parse("p.toml", &long).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let message = errors[0].to_string();
        let subject_len = crate::target::oidc::subject(&long_name, "deploy", &long_name).len();
        assert!(
            message.contains(&format!("workflows.deploy.steps.{long_name}"))
                && message.contains(&format!("{subject_len} bytes"))
                && message.contains("127"),
            "{message}"
        );
        // The same names with no oidc target listed: no federation subject.
        let unlisted = policy(&long_name, &long_name, "");
        Policy::parse("p.toml", &unlisted).unwrap();
    }
}
