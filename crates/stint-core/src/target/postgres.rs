//! PostgreSQL logins as target credentials: the scope grammar, identifier
//! and literal quoting, and the planner that turns a step token's scopes
//! into the SQL that creates a login, never widening.
//!
//! # Scope grammar
//!
//! A scope names the target as its first resource segment, then
//! PostgreSQL objects, one identifier per segment:
//!
//! ```text
//! ACTION:TARGET/SCHEMA/TABLE     ACTION in select, insert, update, delete,
//!                                truncate, references, trigger
//!                                -> GRANT <ACTION> ON TABLE "SCHEMA"."TABLE"
//! usage:TARGET/SCHEMA            -> GRANT USAGE ON SCHEMA "SCHEMA"
//! usage:TARGET/SCHEMA/SEQUENCE   -> GRANT USAGE ON SEQUENCE "SCHEMA"."SEQUENCE"
//! ```
//!
//! - Anything else (another action, another depth, a segment that is not a
//!   [`PgIdent`]) is refused: by the policy loader for a step's patterns and
//!   a role's scopes, by [`plan`] for a token's scopes.
//! - Identifiers are exact and case-sensitive: `select:wh/CRM/Accounts`
//!   is the table `"CRM"."Accounts"`, not `crm.accounts`. Every identifier
//!   is always double-quoted in SQL, so none is folded to lower case and
//!   none is read as a keyword.
//! - A table or sequence grant implies `USAGE` on its schema (without it the
//!   object cannot be named), so a plan with `select:wh/crm/accounts` also
//!   grants `usage:wh/crm`; [`PgPlan::effective_scopes`] says so.
//! - In a policy pattern, `*` stands for one schema or table segment and a
//!   trailing `/**` for the rest, as everywhere in Stint; tokens carry
//!   concrete scopes only.
//!
//! # The login
//!
//! [`plan`] takes the token's scopes for one target: a group role of the
//! target's `roles` map is used (as a membership) only when every scope it
//! confers is in the token; the scopes no membership covers become object
//! grants, or, with `object_grants = false`, the plan is refused.
//! [`PgPlan::create_statements`] then gives the SQL for one transaction; the
//! password reaches the server only as a SCRAM-SHA-256 verifier
//! ([`scram_sha256_verifier`]), so neither the server nor its logs ever see
//! the plaintext.

use super::{ROLE_MARKER, ROLE_PREFIX, SecretSource, scopes_for};
use crate::scope::{Scope, ScopePattern};
use base64::Engine as _;
use std::collections::BTreeSet;
use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;

/// The port when the policy names none.
pub const DEFAULT_PORT: u16 = 5432;
/// Concurrent connections of one login role, when the policy says nothing.
pub const DEFAULT_CONNECTION_LIMIT: u32 = 2;
/// The most a policy may set `connection_limit` to.
pub const MAX_CONNECTION_LIMIT: u32 = 100;
/// Admin connections Stint keeps, when the policy says nothing.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// The most a policy may set `pool_size` to.
pub const MAX_POOL_SIZE: usize = 32;
/// Seconds to connect, when the policy says nothing.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// The most a policy may set `connect_timeout_secs` to.
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 60;
/// Seconds one admin statement may run, when the policy says nothing.
pub const DEFAULT_STATEMENT_TIMEOUT_SECS: u64 = 5;
/// The most a policy may set `statement_timeout_secs` to.
pub const MAX_STATEMENT_TIMEOUT_SECS: u64 = 300;
/// The most group roles one target may declare.
pub const MAX_ROLES: usize = 64;
/// The most scopes one group role may confer.
pub const MAX_SCOPES_PER_ROLE: usize = 64;
/// The most object grants one plan may make.
pub const MAX_GRANTS_PER_PLAN: usize = 64;
/// The longest identifier: PostgreSQL's `NAMEDATALEN - 1`. A longer one
/// would be silently truncated by the server, so it is refused here.
pub const MAX_IDENT_LEN: usize = 63;
/// PBKDF2 iterations of the verifiers Stint makes: PostgreSQL's own default
/// (`scram_iterations`).
pub const SCRAM_ITERATIONS: u32 = 4096;
/// The salt length of the verifiers Stint makes, as PostgreSQL's own.
pub const SCRAM_SALT_LEN: usize = 16;
/// The length of [`password`]'s passwords.
pub const PASSWORD_LEN: usize = 32;

/// A target of kind `postgres`: where the server is, how Stint signs in to
/// it to create logins, and what those logins may be given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The database the logins may connect to.
    pub database: PgIdent,
    /// The role Stint signs in as to create and drop logins.
    pub admin_user: PgIdent,
    /// Where that role's password is (never the password itself).
    pub admin_password: SecretSource,
    /// TLS to the server.
    pub tls: PgTlsMode,
    /// A PEM file of root certificates for `verify-full` and `require`.
    pub ca_file: Option<PathBuf>,
    /// `CONNECTION LIMIT` of each login.
    pub connection_limit: u32,
    /// Admin connections Stint keeps open.
    pub pool_size: usize,
    /// Seconds to connect to the server.
    pub connect_timeout_secs: u64,
    /// Seconds each admin statement may run.
    pub statement_timeout_secs: u64,
    /// Whether scopes no group role covers may become table, schema and
    /// sequence grants (otherwise such a plan is refused).
    pub object_grants: bool,
    /// `NOLOGIN` group roles and the scopes each confers.
    pub roles: Vec<GroupRole>,
}

/// TLS to a PostgreSQL server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgTlsMode {
    /// No TLS (the policy allows it only for a loopback host).
    Disable,
    /// TLS, with the server's certificate checked against the roots but not
    /// its name (libpq's `require` with a root file behaves as `verify-ca`).
    Require,
    /// TLS, with the server's certificate and its name checked.
    VerifyFull,
}

impl PgTlsMode {
    /// libpq's `sslmode` spelling: `disable`, `require`, `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The mode a policy spells `text`.
    pub fn from_name(text: &str) -> Option<Self> {
        match text {
            "disable" => Some(Self::Disable),
            "require" => Some(Self::Require),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }
}

/// A `NOLOGIN` group role and the scopes the policy says it confers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRole {
    /// The role's name.
    pub role: PgIdent,
    /// What membership in it confers, as concrete scopes of the target.
    pub scopes: Vec<Scope>,
}

/// Why a plan (or an identifier, a literal, a scope) was refused. The
/// message is lowercase, says what was wrong and what to do, and becomes
/// the `error_description` of an `invalid_scope` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PlanError(pub String);

/// A validated PostgreSQL identifier: 1..=63 bytes, characters of the scope
/// segment alphabet (ASCII letters, digits, `-` `_` `.` `~` `@` `:`), not
/// `.` or `..`. Always used quoted, so it is exact and case-sensitive.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgIdent(String);

impl PgIdent {
    /// Parse an identifier.
    pub fn parse(s: &str) -> Result<Self, PlanError> {
        let shown = printable_prefix(s);
        if s.is_empty() {
            return Err(PlanError(
                "a postgresql identifier must not be empty".into(),
            ));
        }
        if s.len() > MAX_IDENT_LEN {
            return Err(PlanError(format!(
                "postgresql identifier {shown:?} is longer than {MAX_IDENT_LEN} bytes: postgresql would truncate it; use a shorter name"
            )));
        }
        if s == "." || s == ".." {
            return Err(PlanError(format!(
                "{shown:?} is not a usable postgresql identifier here"
            )));
        }
        if let Some(bad) = s.chars().find(|c| !is_ident_char(*c)) {
            return Err(PlanError(format!(
                "postgresql identifier {shown:?} contains {bad:?}: use only ASCII letters, digits, '-', '_', '.', '~', '@' and ':'"
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The identifier as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Double-quoted, any `"` doubled (none can occur, but quote correctly
    /// anyway): always the exact, case-sensitive name, never a keyword.
    pub fn quoted(&self) -> String {
        quote_ident(&self.0)
    }
}

impl fmt::Display for PgIdent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn quote_ident(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '@' | ':')
}

/// A string literal for SQL: single quotes, any `'` doubled. NUL (which
/// PostgreSQL cannot store in text) and backslash are refused, so the
/// literal means the same whatever `standard_conforming_strings` is (it is
/// on by default since PostgreSQL 9.1, and no backslash ever reaches it).
pub fn quote_literal(s: &str) -> Result<String, PlanError> {
    if s.contains('\0') {
        return Err(PlanError(
            "a sql string literal must not contain a NUL character".into(),
        ));
    }
    if s.contains('\\') {
        return Err(PlanError(
            "a sql string literal must not contain a backslash".into(),
        ));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// A table privilege, as a scope's action names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TablePrivilege {
    /// `SELECT`.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `TRUNCATE`.
    Truncate,
    /// `REFERENCES`.
    References,
    /// `TRIGGER`.
    Trigger,
}

impl TablePrivilege {
    /// Every table privilege.
    pub const ALL: [Self; 7] = [
        Self::Select,
        Self::Insert,
        Self::Update,
        Self::Delete,
        Self::Truncate,
        Self::References,
        Self::Trigger,
    ];

    /// The scope action, e.g. `select`.
    pub fn action(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Truncate => "truncate",
            Self::References => "references",
            Self::Trigger => "trigger",
        }
    }

    /// The SQL keyword, e.g. `SELECT`.
    pub fn sql(self) -> &'static str {
        match self {
            Self::Select => "SELECT",
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Truncate => "TRUNCATE",
            Self::References => "REFERENCES",
            Self::Trigger => "TRIGGER",
        }
    }

    /// The privilege a scope action names.
    pub fn from_action(action: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.action() == action)
    }
}

/// The scope action for schema and sequence `USAGE`.
pub const USAGE_ACTION: &str = "usage";

const KNOWN_ACTIONS: &str =
    "select, insert, update, delete, truncate, references, trigger or usage";

/// One privilege on one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PgGrant {
    /// A table privilege.
    Table {
        /// Which.
        privilege: TablePrivilege,
        /// The table's schema.
        schema: PgIdent,
        /// The table.
        table: PgIdent,
    },
    /// `USAGE` on a schema.
    SchemaUsage {
        /// The schema.
        schema: PgIdent,
    },
    /// `USAGE` on a sequence.
    SequenceUsage {
        /// The sequence's schema.
        schema: PgIdent,
        /// The sequence.
        sequence: PgIdent,
    },
}

impl PgGrant {
    /// Read a concrete scope of `target_name` by the grammar in the module
    /// documentation.
    pub fn from_scope(target_name: &str, scope: &Scope) -> Result<Self, PlanError> {
        let mut segments = scope.segments();
        if segments.next() != Some(target_name) {
            return Err(PlanError(format!(
                "scope {:?} is not about target {target_name:?}",
                scope.as_str()
            )));
        }
        let rest: Vec<&str> = segments.collect();
        let action = scope.action();
        let grant = match (action, rest.as_slice()) {
            (USAGE_ACTION, [schema]) => Self::SchemaUsage {
                schema: ident_in(scope, schema)?,
            },
            (USAGE_ACTION, [schema, sequence]) => Self::SequenceUsage {
                schema: ident_in(scope, schema)?,
                sequence: ident_in(scope, sequence)?,
            },
            (USAGE_ACTION, _) => {
                return Err(PlanError(format!(
                    "scope {:?} does not fit the postgres grammar: usage takes {target_name}/SCHEMA or {target_name}/SCHEMA/SEQUENCE",
                    scope.as_str()
                )));
            }
            (action, rest) => match TablePrivilege::from_action(action) {
                None => {
                    return Err(PlanError(format!(
                        "scope {:?} has action {action:?}, which is not a postgresql privilege here: use {KNOWN_ACTIONS}",
                        scope.as_str()
                    )));
                }
                Some(privilege) => match rest {
                    [schema, table] => Self::Table {
                        privilege,
                        schema: ident_in(scope, schema)?,
                        table: ident_in(scope, table)?,
                    },
                    _ => {
                        return Err(PlanError(format!(
                            "scope {:?} does not fit the postgres grammar: {action} takes {target_name}/SCHEMA/TABLE",
                            scope.as_str()
                        )));
                    }
                },
            },
        };
        Ok(grant)
    }

    /// The grant as a scope's text for `target_name`.
    pub fn scope_text(&self, target_name: &str) -> String {
        match self {
            Self::Table {
                privilege,
                schema,
                table,
            } => format!("{}:{target_name}/{schema}/{table}", privilege.action()),
            Self::SchemaUsage { schema } => format!("{USAGE_ACTION}:{target_name}/{schema}"),
            Self::SequenceUsage { schema, sequence } => {
                format!("{USAGE_ACTION}:{target_name}/{schema}/{sequence}")
            }
        }
    }

    /// The grant as a scope of `target_name`; `None` only if the text is not
    /// a scope (a target name that is not a scope segment).
    pub fn to_scope(&self, target_name: &str) -> Option<Scope> {
        Scope::parse(&self.scope_text(target_name)).ok()
    }

    /// The schema the object is in (or is).
    pub fn schema(&self) -> &PgIdent {
        match self {
            Self::Table { schema, .. }
            | Self::SchemaUsage { schema }
            | Self::SequenceUsage { schema, .. } => schema,
        }
    }

    fn sql(&self, role: &str) -> String {
        match self {
            Self::Table {
                privilege,
                schema,
                table,
            } => format!(
                "GRANT {} ON TABLE {}.{} TO {role}",
                privilege.sql(),
                schema.quoted(),
                table.quoted()
            ),
            Self::SchemaUsage { schema } => {
                format!("GRANT USAGE ON SCHEMA {} TO {role}", schema.quoted())
            }
            Self::SequenceUsage { schema, sequence } => format!(
                "GRANT USAGE ON SEQUENCE {}.{} TO {role}",
                schema.quoted(),
                sequence.quoted()
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Table {
                privilege,
                schema,
                table,
            } => format!("{} on {schema}.{table}", privilege.sql()),
            Self::SchemaUsage { schema } => format!("USAGE on schema {schema}"),
            Self::SequenceUsage { schema, sequence } => {
                format!("USAGE on sequence {schema}.{sequence}")
            }
        }
    }
}

fn ident_in(scope: &Scope, segment: &str) -> Result<PgIdent, PlanError> {
    PgIdent::parse(segment)
        .map_err(|PlanError(why)| PlanError(format!("scope {:?}: {why}", scope.as_str())))
}

/// Check a policy pattern whose first segment is `target_name` against the
/// grammar: a known action, literal segments that are identifiers, and a
/// depth that some concrete scope of the grammar can have (`*` is one
/// segment, a trailing `/**` one or more).
pub fn check_pattern(target_name: &str, pattern: &ScopePattern) -> Result<(), PlanError> {
    let text = pattern.as_str();
    let (action, resource) = text
        .split_once(':')
        .ok_or_else(|| PlanError(format!("pattern {text:?} has no action")))?;
    let mut segments: Vec<&str> = resource.split('/').collect();
    if segments.first() != Some(&target_name) {
        return Err(PlanError(format!(
            "pattern {text:?} is not about target {target_name:?}"
        )));
    }
    segments.remove(0);
    let any_depth = segments.last() == Some(&"**");
    if any_depth {
        segments.pop();
    }
    for segment in &segments {
        if *segment != "*" {
            PgIdent::parse(segment)
                .map_err(|PlanError(why)| PlanError(format!("pattern {text:?}: {why}")))?;
        }
    }
    let depth = segments.len();
    let (fits, shape) = if action == USAGE_ACTION {
        (
            if any_depth {
                depth <= 1
            } else {
                depth == 1 || depth == 2
            },
            format!("usage takes {target_name}/SCHEMA or {target_name}/SCHEMA/SEQUENCE"),
        )
    } else if TablePrivilege::from_action(action).is_some() {
        (
            if any_depth { depth <= 1 } else { depth == 2 },
            format!("{action} takes {target_name}/SCHEMA/TABLE"),
        )
    } else {
        return Err(PlanError(format!(
            "pattern {text:?} has action {action:?}, which is not a postgresql privilege: use {KNOWN_ACTIONS}"
        )));
    };
    if fits {
        Ok(())
    } else {
        Err(PlanError(format!(
            "pattern {text:?} does not fit the postgres grammar: {shape}"
        )))
    }
}

/// What a login will be: its name, lifetime and privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgPlan {
    /// The login role (`stint_...`).
    pub role: PgIdent,
    /// `VALID UNTIL`, in Unix seconds: the step token's `exp`.
    pub valid_until: i64,
    /// `CONNECTION LIMIT`.
    pub connection_limit: u32,
    /// The database it may connect to.
    pub database: PgIdent,
    /// Group roles it is made a member of, sorted.
    pub memberships: Vec<PgIdent>,
    /// Object grants, sorted.
    pub grants: Vec<PgGrant>,
}

impl PgPlan {
    /// The statements that create the login, in order, for one transaction:
    /// `CREATE ROLE` (`LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE
    /// NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT n VALID UNTIL
    /// '<RFC 3339 UTC>' PASSWORD '<verifier>'`), `COMMENT ON ROLE ... IS`
    /// [`ROLE_MARKER`], `GRANT CONNECT ON DATABASE`, `GRANT group TO role`
    /// for each membership, `GRANT USAGE ON SCHEMA` for every schema a grant
    /// touches, then the other object grants.
    ///
    /// `password_verifier` must be a SCRAM verifier from
    /// [`scram_sha256_verifier`] (so the plaintext password never reaches
    /// the server or its logs): anything else is refused. PostgreSQL stores
    /// a password given in that form as it is.
    pub fn create_statements(&self, password_verifier: &str) -> Result<Vec<String>, PlanError> {
        let looks_like_verifier = password_verifier.starts_with("SCRAM-SHA-256$")
            && password_verifier.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'$' | b':' | b'-')
            });
        if !looks_like_verifier {
            return Err(PlanError(
                "the login's password must be given as a SCRAM-SHA-256 verifier (scram_sha256_verifier), never in plain text".into(),
            ));
        }
        let role = self.role.quoted();
        let limit = i32::try_from(self.connection_limit)
            .map_err(|_| PlanError("the connection limit is too large for postgresql".into()))?;
        let until = quote_literal(&rfc3339(self.valid_until)?)?;
        let verifier = quote_literal(password_verifier)?;
        let mut statements = vec![
            format!(
                "CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT {limit} VALID UNTIL {until} PASSWORD {verifier}"
            ),
            format!("COMMENT ON ROLE {role} IS {}", quote_literal(ROLE_MARKER)?),
            format!(
                "GRANT CONNECT ON DATABASE {} TO {role}",
                self.database.quoted()
            ),
        ];
        for group in &self.memberships {
            statements.push(format!("GRANT {} TO {role}", group.quoted()));
        }
        for schema in self.schemas() {
            statements.push(PgGrant::SchemaUsage { schema }.sql(&role));
        }
        for grant in &self.grants {
            if !matches!(grant, PgGrant::SchemaUsage { .. }) {
                statements.push(grant.sql(&role));
            }
        }
        Ok(statements)
    }

    /// What the plan confers, as scopes of the target (memberships
    /// expanded through the target's roles map): the effective privileges.
    /// For the audit and for the property test.
    ///
    /// It includes `usage:TARGET/SCHEMA` for the schema of every object
    /// grant, which [`create_statements`](Self::create_statements) grants
    /// because a table or sequence cannot be named without it. USAGE on a
    /// schema confers no access to the tables in it by itself: each table
    /// still needs its own privilege (PostgreSQL checks both). What it does
    /// make reachable is what `PUBLIC` already has in that schema (by
    /// default, EXECUTE on its functions): operators keep `PUBLIC` out of
    /// schemas Stint hands out, as they would for any role.
    pub fn effective_scopes(&self, target_name: &str, target: &PostgresTarget) -> Vec<Scope> {
        let mut scopes = BTreeSet::new();
        for membership in &self.memberships {
            for group in target.roles.iter().filter(|g| &g.role == membership) {
                scopes.extend(group.scopes.iter().cloned());
            }
        }
        for grant in &self.grants {
            scopes.extend(grant.to_scope(target_name));
        }
        for schema in self.schemas() {
            scopes.extend(PgGrant::SchemaUsage { schema }.to_scope(target_name));
        }
        scopes.into_iter().collect()
    }

    /// Human-readable privileges for the audit log, in the order the
    /// statements grant them, e.g. `["member of crm_reader", "USAGE on
    /// schema crm", "SELECT on crm.accounts"]`.
    pub fn privileges(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .memberships
            .iter()
            .map(|group| format!("member of {group}"))
            .collect();
        for schema in self.schemas() {
            out.push(PgGrant::SchemaUsage { schema }.describe());
        }
        for grant in &self.grants {
            if !matches!(grant, PgGrant::SchemaUsage { .. }) {
                out.push(grant.describe());
            }
        }
        out
    }

    /// Every schema an object grant touches, sorted.
    fn schemas(&self) -> BTreeSet<PgIdent> {
        self.grants.iter().map(|g| g.schema().clone()).collect()
    }
}

fn rfc3339(unix: i64) -> Result<String, PlanError> {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .ok_or_else(|| PlanError(format!("{unix} is not a usable expiry time")))
}

/// Turn the step token's scopes into a plan, or refuse. Only scopes naming
/// `target_name` count. Never widens: a group role is used only if every
/// scope it confers is in `granted`; whatever no membership covers becomes
/// an object grant (if `object_grants`) or a refusal.
pub fn plan(
    target_name: &str,
    target: &PostgresTarget,
    granted: &[Scope],
    role: PgIdent,
    valid_until: i64,
) -> Result<PgPlan, PlanError> {
    if !role.as_str().starts_with(ROLE_PREFIX) {
        return Err(PlanError(format!(
            "a login role Stint makes must be named {ROLE_PREFIX}...: use role_name"
        )));
    }
    rfc3339(valid_until)?;
    let mine = scopes_for(target_name, granted);
    if mine.is_empty() {
        return Err(PlanError(format!(
            "the step token carries no scope for target {target_name}: request a scope naming {target_name}, such as select:{target_name}/SCHEMA/TABLE"
        )));
    }
    let mut wanted = BTreeSet::new();
    for scope in mine {
        wanted.insert(PgGrant::from_scope(target_name, scope)?);
    }
    let mut memberships = BTreeSet::new();
    let mut covered = BTreeSet::new();
    for group in &target.roles {
        // A role whose scopes cannot be read, or that confers nothing the
        // policy knows of, is never used: fail closed.
        let Some(conferred) = role_grants(target_name, group) else {
            continue;
        };
        if conferred.iter().all(|g| wanted.contains(g)) {
            memberships.insert(group.role.clone());
            covered.extend(conferred);
        }
    }
    let uncovered: Vec<PgGrant> = wanted.difference(&covered).cloned().collect();
    if !target.object_grants
        && let Some(first) = uncovered.first()
    {
        return Err(PlanError(not_covered(
            target_name,
            target,
            &wanted,
            first,
            uncovered.len() - 1,
        )));
    }
    if uncovered.len() > MAX_GRANTS_PER_PLAN {
        return Err(PlanError(format!(
            "the step token's scopes for target {target_name} need {} object grants, more than {MAX_GRANTS_PER_PLAN}: request fewer scopes, or declare group roles that cover them",
            uncovered.len()
        )));
    }
    Ok(PgPlan {
        role,
        valid_until,
        connection_limit: target.connection_limit,
        database: target.database.clone(),
        memberships: memberships.into_iter().collect(),
        grants: uncovered,
    })
}

fn role_grants(target_name: &str, group: &GroupRole) -> Option<BTreeSet<PgGrant>> {
    let grants = group
        .scopes
        .iter()
        .map(|s| PgGrant::from_scope(target_name, s).ok())
        .collect::<Option<BTreeSet<_>>>()?;
    (!grants.is_empty()).then_some(grants)
}

fn not_covered(
    target_name: &str,
    target: &PostgresTarget,
    wanted: &BTreeSet<PgGrant>,
    first: &PgGrant,
    more: usize,
) -> String {
    let mut message = format!(
        "scope {} is not covered by any group role of target {target_name}, and the target has object_grants = false",
        first.scope_text(target_name)
    );
    if more > 0 {
        message.push_str(&format!(" ({more} more scope(s) likewise)"));
    }
    let hints: Vec<String> = target
        .roles
        .iter()
        .filter_map(|group| {
            let conferred = role_grants(target_name, group)?;
            if !conferred.contains(first) {
                return None;
            }
            let extra: Vec<String> = conferred
                .difference(wanted)
                .map(|g| g.scope_text(target_name))
                .collect();
            Some(format!(
                "role {} would also confer {}, which the step token does not carry",
                group.role,
                extra.join(", ")
            ))
        })
        .collect();
    if hints.is_empty() {
        message.push_str(": declare a group role that confers exactly it, or allow object_grants");
    } else {
        message.push_str(": ");
        message.push_str(&hints.join("; "));
    }
    message
}

/// A login role's name: `stint_` followed by 24 lowercase base32
/// characters (`a-z`, `2-7`, RFC 4648's alphabet) of `random`'s 120 bits.
pub fn role_name(random: &[u8; 15]) -> PgIdent {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut name = String::with_capacity(ROLE_PREFIX.len() + 24);
    name.push_str(ROLE_PREFIX);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in random {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            // Masked to five bits: always an index of the 32-byte alphabet.
            let index = ((buffer >> bits) & 31) as usize;
            name.push(char::from(ALPHABET[index]));
        }
        buffer &= (1 << bits) - 1;
    }
    // 15 bytes are exactly 24 characters; all are identifier characters
    // and the name is 30 bytes long, so it is a valid identifier.
    PgIdent(name)
}

/// A login password: [`PASSWORD_LEN`] (32) characters of `[A-Za-z0-9]`, so
/// nothing needs quoting anywhere (libpq's environment, connection URLs,
/// shells).
///
/// The 24 random bytes (192 bits) key HMAC-SHA256, whose output blocks
/// (`HMAC(random, "stint login password" || counter)`) are read a byte at a
/// time; a byte below 248 (= 4 * 62) picks `ALPHANUMERIC[byte % 62]`, a byte
/// of 248 or more is dropped. Rejection keeps every character uniform (no
/// modulo bias), and the stream never runs out, so the password always has
/// 32 characters (about 190 bits; two blocks almost always suffice).
pub fn password(random: &[u8; 24]) -> String {
    const ALPHANUMERIC: &[u8; 62] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, random);
    let mut out = String::with_capacity(PASSWORD_LEN);
    for counter in 0..=u32::MAX {
        let mut context = ring::hmac::Context::with_key(&key);
        context.update(b"stint login password");
        context.update(&counter.to_be_bytes());
        for &byte in context.sign().as_ref() {
            if out.len() == PASSWORD_LEN {
                return out;
            }
            if byte < 248 {
                // byte % 62 < 62: always an index of the alphabet.
                out.push(char::from(ALPHANUMERIC[usize::from(byte % 62)]));
            }
        }
        if out.len() == PASSWORD_LEN {
            break;
        }
    }
    out
}

/// A SCRAM-SHA-256 verifier (RFC 5802, RFC 7677) in PostgreSQL's format:
/// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`
/// (standard base64 with padding), where SaltedPassword =
/// PBKDF2-HMAC-SHA256(password, salt, iterations), ClientKey =
/// HMAC(SaltedPassword, "Client Key"), StoredKey = SHA-256(ClientKey) and
/// ServerKey = HMAC(SaltedPassword, "Server Key").
///
/// PostgreSQL SASLprep's the password first; for [`password`]'s ASCII
/// alphanumerics SASLprep is the identity, so none is done here (do not
/// pass other passwords). Use [`SCRAM_ITERATIONS`] and a fresh random
/// 16-byte salt. An `iterations` of 0 is taken as 1 (and written as 1).
pub fn scram_sha256_verifier(password: &str, salt: &[u8; 16], iterations: u32) -> String {
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
    let client_key = ring::hmac::sign(&key, b"Client Key");
    let stored_key = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
    let server_key = ring::hmac::sign(&key, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key.as_ref()),
        b64.encode(server_key.as_ref())
    )
}

fn printable_prefix(text: &str) -> String {
    text.chars().take(64).collect()
}
