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

use super::{ROLE_PREFIX, SecretSource, scopes_for};
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
    /// `marker` (the broker's [`role_marker`](super::role_marker)), `GRANT
    /// CONNECT ON DATABASE`, `GRANT group TO role`
    /// for each membership, `GRANT USAGE ON SCHEMA` for every schema a grant
    /// touches, then the other object grants.
    ///
    /// `password_verifier` must be a SCRAM verifier from
    /// [`scram_sha256_verifier`] (so the plaintext password never reaches
    /// the server or its logs): anything else is refused. PostgreSQL stores
    /// a password given in that form as it is.
    pub fn create_statements(
        &self,
        password_verifier: &str,
        marker: &str,
    ) -> Result<Vec<String>, PlanError> {
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
            format!("COMMENT ON ROLE {role} IS {}", quote_literal(marker)?),
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
        .ok_or_else(|| {
            PlanError(format!(
                "expiry time {unix} is not a usable expiry time for postgresql"
            ))
        })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scope(text: &str) -> Scope {
        Scope::parse(text).unwrap()
    }
    fn ident(text: &str) -> PgIdent {
        PgIdent::parse(text).unwrap()
    }
    fn scopes(texts: &[&str]) -> Vec<Scope> {
        texts.iter().map(|t| scope(t)).collect()
    }

    fn target(roles: &[(&str, &[&str])], object_grants: bool) -> PostgresTarget {
        PostgresTarget {
            host: "127.0.0.1".into(),
            port: DEFAULT_PORT,
            database: ident("analytics"),
            admin_user: ident("stint_admin"),
            admin_password: SecretSource::Env("PW".into()),
            tls: PgTlsMode::VerifyFull,
            ca_file: None,
            connection_limit: 2,
            pool_size: 4,
            connect_timeout_secs: 5,
            statement_timeout_secs: 5,
            object_grants,
            roles: roles
                .iter()
                .map(|(role, conferred)| GroupRole {
                    role: ident(role),
                    scopes: scopes(conferred),
                })
                .collect(),
        }
    }

    fn login() -> PgIdent {
        role_name(&[7; 15])
    }

    const CRM_READER: (&str, &[&str]) = (
        "crm_reader",
        &[
            "select:warehouse/crm/accounts",
            "select:warehouse/crm/contacts",
        ],
    );

    #[test]
    fn grammar_reads_tables_schemas_and_sequences() {
        let grant = |text: &str| PgGrant::from_scope("warehouse", &scope(text));
        for privilege in TablePrivilege::ALL {
            assert_eq!(
                grant(&format!("{}:warehouse/crm/accounts", privilege.action())),
                Ok(PgGrant::Table {
                    privilege,
                    schema: ident("crm"),
                    table: ident("accounts"),
                })
            );
        }
        assert_eq!(
            grant("usage:warehouse/crm"),
            Ok(PgGrant::SchemaUsage {
                schema: ident("crm")
            })
        );
        assert_eq!(
            grant("usage:warehouse/crm/ids"),
            Ok(PgGrant::SequenceUsage {
                schema: ident("crm"),
                sequence: ident("ids"),
            })
        );
        // Case is kept: identifiers are exact.
        assert_eq!(
            grant("select:warehouse/CRM/Accounts"),
            Ok(PgGrant::Table {
                privilege: TablePrivilege::Select,
                schema: ident("CRM"),
                table: ident("Accounts"),
            })
        );
        // Round trip.
        for text in [
            "select:warehouse/crm/accounts",
            "usage:warehouse/crm",
            "usage:warehouse/crm/ids",
        ] {
            assert_eq!(grant(text).unwrap().scope_text("warehouse"), text);
        }
    }

    #[test]
    fn grammar_refuses_everything_else() {
        let refused = |text: &str, needle: &str| {
            let PlanError(why) = PgGrant::from_scope("warehouse", &scope(text)).unwrap_err();
            assert!(why.contains(needle), "{text}: {why}");
        };
        refused("read:warehouse/crm/accounts", "not a postgresql privilege");
        refused(
            "select:warehouse/crm",
            "select takes warehouse/SCHEMA/TABLE",
        );
        refused("select:warehouse", "select takes warehouse/SCHEMA/TABLE");
        refused(
            "select:warehouse/crm/accounts/id",
            "select takes warehouse/SCHEMA/TABLE",
        );
        refused("usage:warehouse", "usage takes");
        refused("usage:warehouse/a/b/c", "usage takes");
        refused("select:other/crm/accounts", "not about target");
        let long = "a".repeat(64);
        refused(&format!("select:warehouse/crm/{long}"), "longer than 63");
        assert!(
            PgGrant::from_scope(
                "warehouse",
                &scope(&format!("select:warehouse/crm/{}", &long[1..]))
            )
            .is_ok()
        );
    }

    #[test]
    fn patterns_fit_the_grammar_or_are_refused() {
        let check = |text: &str| check_pattern("warehouse", &ScopePattern::parse(text).unwrap());
        for good in [
            "select:warehouse/crm/accounts",
            "select:warehouse/crm/*",
            "select:warehouse/*/*",
            "select:warehouse/crm/**",
            "select:warehouse/**",
            "usage:warehouse/crm",
            "usage:warehouse/*",
            "usage:warehouse/crm/*",
            "usage:warehouse/**",
            "trigger:warehouse/a.b/c@d:e-f~g",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, needle) in [
            ("write:warehouse/crm/*", "not a postgresql privilege"),
            ("select:warehouse/*", "select takes"),
            ("select:warehouse/crm/accounts/**", "select takes"),
            ("select:warehouse/a/b/c", "select takes"),
            ("usage:warehouse/a/b/c", "usage takes"),
            ("usage:warehouse/a/b/**", "usage takes"),
            ("select:elsewhere/a/b", "not about target"),
        ] {
            let PlanError(why) = check(bad).unwrap_err();
            assert!(why.contains(needle), "{bad}: {why}");
        }
        let long = "a".repeat(64);
        assert!(check(&format!("select:warehouse/{long}/*")).is_err());
    }

    #[test]
    fn identifiers_are_checked_and_always_quoted() {
        assert_eq!(ident("crm").quoted(), "\"crm\"");
        assert_eq!(ident("Mixed.Case@x:y-z~").quoted(), "\"Mixed.Case@x:y-z~\"");
        // No '"' can be in a PgIdent; the quoting doubles it all the same.
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(PgIdent("a\"b".into()).quoted(), "\"a\"\"b\"");
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a\"b",
            "a;b",
            "a'b",
            "é",
            &"x".repeat(64),
        ] {
            assert!(PgIdent::parse(bad).is_err(), "{bad:?}");
        }
        assert!(PgIdent::parse(&"x".repeat(63)).is_ok());
    }

    #[test]
    fn literals_double_quotes_and_refuse_nul_and_backslash() {
        assert_eq!(quote_literal("abc").unwrap(), "'abc'");
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        assert_eq!(quote_literal("''").unwrap(), "''''''");
        assert!(quote_literal("a\0b").is_err());
        assert!(quote_literal("a\\b").is_err());
    }

    #[test]
    fn role_names_are_stint_and_24_base32_characters() {
        assert_eq!(
            role_name(&[0; 15]).as_str(),
            "stint_aaaaaaaaaaaaaaaaaaaaaaaa"
        );
        assert_eq!(
            role_name(&[0xff; 15]).as_str(),
            "stint_777777777777777777777777"
        );
        // RFC 4648 base32, lower case: 15 bytes are 24 characters, no
        // padding (python3 -c "import base64;
        // print(base64.b32encode(b'foobarfoobarfoo').decode().lower())").
        assert_eq!(
            role_name(b"foobarfoobarfoo").as_str(),
            "stint_mzxw6ytbojtg633cmfzgm33p"
        );
        let name = role_name(&[0x5a; 15]);
        assert_eq!(name.as_str().len(), 30);
        assert!(
            name.as_str()[6..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
        );
        assert_eq!(PgIdent::parse(name.as_str()).unwrap(), name);
    }

    #[test]
    fn passwords_are_32_alphanumerics() {
        let a = password(&[1; 24]);
        let b = password(&[2; 24]);
        for p in [&a, &b, &password(&[0xff; 24])] {
            assert_eq!(p.len(), PASSWORD_LEN);
            assert!(p.bytes().all(|c| c.is_ascii_alphanumeric()), "{p}");
        }
        assert_ne!(a, b);
        assert_eq!(a, password(&[1; 24]), "deterministic in its input");
    }

    #[test]
    fn scram_verifier_matches_rfc_7677() {
        use base64::engine::general_purpose::STANDARD;
        let salt: [u8; 16] = STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap()
            .try_into()
            .unwrap();
        let verifier = scram_sha256_verifier("pencil", &salt, 4096);
        // Obtained independently with Python's standard library:
        // python3 -c "import hashlib,hmac,base64; s=base64.b64decode('W22ZaJ0SNY7soEsUEjb6gQ=='); p=hashlib.pbkdf2_hmac('sha256',b'pencil',s,4096); c=hmac.new(p,b'Client Key','sha256').digest(); print('SCRAM-SHA-256\$4096:'+base64.b64encode(s).decode()+'\$'+base64.b64encode(hashlib.sha256(c).digest()).decode()+':'+base64.b64encode(hmac.new(p,b'Server Key','sha256').digest()).decode())"
        assert_eq!(
            verifier,
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        // And against RFC 7677 section 3 itself: its exchange's
        // ServerSignature is HMAC(ServerKey, AuthMessage), and its
        // ClientProof is ClientKey XOR HMAC(StoredKey, AuthMessage), with
        // SHA-256(ClientKey) = StoredKey.
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let (stored, server) = verifier
            .rsplit_once('$')
            .unwrap()
            .1
            .split_once(':')
            .unwrap();
        let (stored, server) = (
            STANDARD.decode(stored).unwrap(),
            STANDARD.decode(server).unwrap(),
        );
        let hmac = |key: &[u8], data: &str| {
            ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
                data.as_bytes(),
            )
        };
        assert_eq!(
            STANDARD.encode(hmac(&server, auth_message)),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let proof = STANDARD
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let signature = hmac(&stored, auth_message);
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(
            ring::digest::digest(&ring::digest::SHA256, &client_key).as_ref(),
            stored.as_slice()
        );
        // Zero iterations are taken as one, and say so.
        assert!(scram_sha256_verifier("x", &salt, 0).starts_with("SCRAM-SHA-256$1:"));
    }

    #[test]
    fn plans_memberships_when_the_token_carries_all_a_role_confers() {
        let t = target(&[CRM_READER], true);
        let granted = scopes(&[
            "select:warehouse/crm/accounts",
            "select:warehouse/crm/contacts",
            "insert:warehouse/staging/rows",
            "read:github/acme/web",
        ]);
        let plan = plan("warehouse", &t, &granted, login(), 1_800_000_000).unwrap();
        assert_eq!(plan.memberships, [ident("crm_reader")]);
        assert_eq!(
            plan.grants,
            [PgGrant::Table {
                privilege: TablePrivilege::Insert,
                schema: ident("staging"),
                table: ident("rows"),
            }]
        );
        assert_eq!(
            plan.privileges(),
            [
                "member of crm_reader",
                "USAGE on schema staging",
                "INSERT on staging.rows"
            ]
        );
        let effective: Vec<String> = plan
            .effective_scopes("warehouse", &t)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            effective,
            [
                "insert:warehouse/staging/rows",
                "select:warehouse/crm/accounts",
                "select:warehouse/crm/contacts",
                "usage:warehouse/staging",
            ]
        );
        let role = login();
        let r = role.quoted();
        let statements = plan
            .create_statements(
                "SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5",
                &super::super::role_marker("https://stint.example"),
            )
            .unwrap();
        assert_eq!(
            statements,
            [
                format!(
                    "CREATE ROLE {r} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 2 VALID UNTIL '2027-01-15T08:00:00Z' PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$a2V5:a2V5'"
                ),
                format!("COMMENT ON ROLE {r} IS 'stint target credential https://stint.example'"),
                format!("GRANT CONNECT ON DATABASE \"analytics\" TO {r}"),
                format!("GRANT \"crm_reader\" TO {r}"),
                format!("GRANT USAGE ON SCHEMA \"staging\" TO {r}"),
                format!("GRANT INSERT ON TABLE \"staging\".\"rows\" TO {r}"),
            ]
        );
    }

    #[test]
    fn a_role_that_confers_more_than_the_token_is_not_used() {
        let t = target(&[CRM_READER], true);
        let granted = scopes(&["select:warehouse/crm/accounts"]);
        let plan = plan("warehouse", &t, &granted, login(), 1_800_000_000).unwrap();
        assert!(plan.memberships.is_empty());
        assert_eq!(
            plan.privileges(),
            ["USAGE on schema crm", "SELECT on crm.accounts"]
        );

        let closed = target(&[CRM_READER], false);
        let PlanError(why) =
            super::plan("warehouse", &closed, &granted, login(), 1_800_000_000).unwrap_err();
        assert!(
            why.contains("scope select:warehouse/crm/accounts is not covered"),
            "{why}"
        );
        assert!(
            why.contains("role crm_reader would also confer select:warehouse/crm/contacts, which the step token does not carry"),
            "{why}"
        );
        // Covered by the role: fine without object grants, and no schema
        // usage is granted directly (the group role has what it needs).
        let both = scopes(&[
            "select:warehouse/crm/accounts",
            "select:warehouse/crm/contacts",
        ]);
        let plan = super::plan("warehouse", &closed, &both, login(), 1_800_000_000).unwrap();
        assert_eq!(plan.privileges(), ["member of crm_reader"]);
        let PlanError(why) = super::plan(
            "warehouse",
            &closed,
            &scopes(&["usage:warehouse/x"]),
            login(),
            1_800_000_000,
        )
        .unwrap_err();
        assert!(why.contains("declare a group role"), "{why}");
    }

    #[test]
    fn plan_refusals() {
        let t = target(&[], true);
        let refused = |granted: &[&str], role: PgIdent, until: i64, needle: &str| {
            let PlanError(why) = plan("warehouse", &t, &scopes(granted), role, until).unwrap_err();
            assert!(why.contains(needle), "{why}");
            assert!(why.starts_with(|c: char| c.is_ascii_lowercase()), "{why}");
        };
        refused(
            &["read:github/acme/web"],
            login(),
            1,
            "carries no scope for target warehouse",
        );
        refused(&[], login(), 1, "carries no scope for target warehouse");
        refused(
            &["write:warehouse/a/b"],
            login(),
            1,
            "not a postgresql privilege",
        );
        refused(
            &["select:warehouse/a/b"],
            ident("crm_reader"),
            1,
            "must be named stint_",
        );
        refused(
            &["select:warehouse/a/b"],
            login(),
            i64::MAX,
            "not a usable expiry",
        );
        let many: Vec<String> = (0..65)
            .map(|i| format!("select:warehouse/s/t{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        refused(&many, login(), 1, "more than 64");
        // Duplicates fold.
        let plan = plan(
            "warehouse",
            &t,
            &scopes(&[
                "select:warehouse/a/b",
                "select:warehouse/a/b",
                "usage:warehouse/a",
            ]),
            login(),
            1,
        )
        .unwrap();
        assert_eq!(plan.privileges(), ["USAGE on schema a", "SELECT on a.b"]);
    }

    #[test]
    fn statements_refuse_a_plaintext_password() {
        let t = target(&[], true);
        let plan = plan(
            "warehouse",
            &t,
            &scopes(&["select:warehouse/a/b"]),
            login(),
            1,
        )
        .unwrap();
        for bad in ["hunter2", "SCRAM-SHA-256$x' OR '1", "SCRAM-SHA-256$\\x", ""] {
            assert!(plan.create_statements(bad, "m").is_err(), "{bad}");
        }
        let verifier = scram_sha256_verifier(&password(&[3; 24]), &[4; 16], SCRAM_ITERATIONS);
        let statements = plan.create_statements(&verifier, "it's marked").unwrap();
        assert!(
            statements[1].ends_with(" IS 'it''s marked'"),
            "{}",
            statements[1]
        );
        assert!(statements[0].contains(&format!("PASSWORD '{verifier}'")));
        assert!(statements[0].contains("VALID UNTIL '1970-01-01T00:00:01Z'"));
    }

    // --- Properties ------------------------------------------------------

    /// Identifiers with every character class a careless quoter would trip
    /// on: '.', '@', ':', '-', '~', upper case, SQL keywords.
    const IDENTS: &[&str] = &["crm", "a.b", "x@y", "p:q", "s-t", "Upper", "select", "~t"];
    const ACTIONS: &[&str] = &[
        "select",
        "insert",
        "update",
        "delete",
        "truncate",
        "references",
        "trigger",
        "usage",
    ];

    fn arb_scope() -> impl Strategy<Value = Scope> {
        (
            0..ACTIONS.len(),
            0..IDENTS.len(),
            0..IDENTS.len(),
            any::<bool>(),
        )
            .prop_map(|(action, schema, object, deep)| {
                let action = ACTIONS[action];
                let (schema, object) = (IDENTS[schema], IDENTS[object]);
                let text = if action == "usage" && !deep {
                    format!("usage:wh/{schema}")
                } else {
                    format!("{action}:wh/{schema}/{object}")
                };
                Scope::parse(&text).unwrap()
            })
    }

    fn arb_target() -> impl Strategy<Value = PostgresTarget> {
        (
            proptest::collection::vec(proptest::collection::vec(arb_scope(), 0..4), 0..5),
            any::<bool>(),
        )
            .prop_map(|(roles, object_grants)| {
                let mut t = target(&[], object_grants);
                t.roles = roles
                    .into_iter()
                    .enumerate()
                    .map(|(i, scopes)| GroupRole {
                        role: ident(&format!("group.{i}@x")),
                        scopes,
                    })
                    .collect();
                t
            })
    }

    fn implied(granted: &[Scope]) -> BTreeSet<Scope> {
        let mut out: BTreeSet<Scope> = granted.iter().cloned().collect();
        for grant in granted
            .iter()
            .filter_map(|s| PgGrant::from_scope("wh", s).ok())
        {
            if !matches!(grant, PgGrant::SchemaUsage { .. }) {
                out.extend(
                    PgGrant::SchemaUsage {
                        schema: grant.schema().clone(),
                    }
                    .to_scope("wh"),
                );
            }
        }
        out
    }

    proptest! {
        #[test]
        fn plans_are_exact_and_never_widen(
            t in arb_target(),
            extra in proptest::collection::vec(arb_scope(), 0..8),
            pick in any::<u8>(),
            random in any::<[u8; 15]>(),
        ) {
            // Some roles' scopes in full, so that memberships happen.
            let mut granted = extra;
            for (i, role) in t.roles.iter().enumerate() {
                if pick & (1 << i) != 0 {
                    granted.extend(role.scopes.iter().cloned());
                }
            }
            let mut with_other = granted.clone();
            with_other.push(Scope::parse("select:other/crm/x").unwrap());
            match plan("wh", &t, &with_other, role_name(&random), 1_900_000_000) {
                Err(_) => {
                    // Refused only when there is nothing to plan, or when
                    // object grants are off.
                    prop_assert!(granted.is_empty() || !t.object_grants);
                }
                Ok(plan) => {
                    let effective: BTreeSet<Scope> =
                        plan.effective_scopes("wh", &t).into_iter().collect();
                    let bound = implied(&granted);
                    prop_assert!(effective.is_subset(&bound), "{effective:?} exceeds {bound:?}");
                    for scope in &granted {
                        prop_assert!(effective.contains(scope), "{scope} not conferred");
                    }
                    for group in &plan.memberships {
                        let role = t.roles.iter().find(|r| &r.role == group).unwrap();
                        prop_assert!(!role.scopes.is_empty());
                        prop_assert!(role.scopes.iter().all(|s| granted.contains(s)));
                    }
                    // A role the token carries in full is used.
                    for role in &t.roles {
                        if !role.scopes.is_empty() && role.scopes.iter().all(|s| granted.contains(s)) {
                            prop_assert!(plan.memberships.contains(&role.role));
                        }
                    }
                    if !t.object_grants {
                        prop_assert!(plan.grants.is_empty());
                    }
                    prop_assert!(!effective.iter().any(|s| s.as_str().contains("other")));
                    let statements = plan.create_statements(
                        &scram_sha256_verifier("pw", &[0; 16], 1),
                        "stint target credential https://stint.example",
                    ).unwrap();
                    for statement in &statements {
                        assert_identifiers_quoted(statement);
                    }
                }
            }
        }
    }

    /// Outside string literals and double-quoted identifiers, a statement
    /// has only SQL keywords and numbers: every identifier of the input
    /// (each has a lowercase letter or punctuation) is quoted.
    fn assert_identifiers_quoted(statement: &str) {
        // Literals ('...') carry no identifiers; drop them first.
        let mut outside = String::new();
        let mut in_literal = false;
        for c in statement.chars() {
            if c == '\'' {
                in_literal = !in_literal;
            } else if !in_literal {
                outside.push(c);
            }
        }
        let mut bare = String::new();
        let mut in_ident = false;
        for c in outside.chars() {
            if c == '"' {
                in_ident = !in_ident;
                bare.push(' ');
            } else if !in_ident {
                bare.push(c);
            }
        }
        assert!(!in_ident && !in_literal, "{statement}");
        for word in bare.split([' ', '.']) {
            assert!(
                word.is_empty()
                    || word
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
                "bare word {word:?} in {statement}"
            );
        }
    }
}
