//! The targets of a policy as [`TargetClient`]s: each kind's pure planner
//! (in `stint_core::target`) joined to its upstream client. PostgreSQL
//! today.

use crate::postgres::{Password, PostgresSettings, PostgresUpstream, TlsMode, UpstreamError};
use crate::queue::{Destroyed, Planned, TargetClient, UpstreamFailure};
use async_trait::async_trait;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;
use stint_core::scope::Scope;
use stint_core::target::postgres::{self as plan, PgTlsMode, PostgresTarget};
use stint_core::target::{SecretSource, Target, TargetKind};
use stint_proto::PostgresLogin;

/// The longest admin password file read, in bytes.
const MAX_SECRET_FILE_LEN: u64 = 4096;
/// The longest CA file read, in bytes.
const MAX_CA_FILE_LEN: u64 = 1024 * 1024;
/// PBKDF2 iterations of the SCRAM verifier (PostgreSQL's own default).
const SCRAM_ITERATIONS: u32 = 4096;

/// A PostgreSQL target ready to make logins.
pub struct PostgresClient {
    target: PostgresTarget,
    upstream: PostgresUpstream,
    marker: String,
}

/// Build the client of a declared target (reads its admin password and CA
/// file; connects on first use).
pub fn connect(marker: &str, target: &Target) -> Result<Arc<dyn TargetClient>, String> {
    let pg = match target.kind() {
        TargetKind::Postgres(pg) => pg,
        TargetKind::Github(_) | TargetKind::Oidc(_) => {
            return Err(format!(
                "{} targets are not supported yet",
                target.kind().as_str()
            ));
        }
    };
    let password = read_secret(&pg.admin_password)?;
    let ca_pem = match &pg.ca_file {
        Some(path) => Some(read_bounded(path, MAX_CA_FILE_LEN)?),
        None => None,
    };
    let settings = PostgresSettings {
        host: pg.host.clone(),
        port: pg.port,
        database: pg.database.as_str().to_owned(),
        user: pg.admin_user.as_str().to_owned(),
        password: Password::new(password),
        tls: match pg.tls {
            PgTlsMode::Disable => TlsMode::Disable,
            PgTlsMode::Require => TlsMode::Require,
            PgTlsMode::VerifyFull => TlsMode::VerifyFull,
        },
        ca_pem,
        pool_size: pg.pool_size,
        connect_timeout: Duration::from_secs(pg.connect_timeout_secs),
        statement_timeout: Duration::from_secs(pg.statement_timeout_secs),
    };
    let upstream = PostgresUpstream::new(settings)
        .map_err(|e| format!("its connection settings are refused: {e}"))?;
    Ok(Arc::new(PostgresClient {
        target: pg.clone(),
        upstream,
        marker: marker.to_owned(),
    }))
}

fn read_bounded(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(bytes)
}

/// The admin password, from its file (one line; a final newline is not
/// part of it) or its environment variable. Errors never hold the secret.
fn read_secret(source: &SecretSource) -> Result<String, String> {
    let text = match source {
        SecretSource::File(path) => {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(metadata) = std::fs::metadata(path)
                && metadata.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    path = %path.display(),
                    "a target's admin password file is readable by group or others: chmod 600 it"
                );
            }
            let bytes = read_bounded(path, MAX_SECRET_FILE_LEN)?;
            String::from_utf8(bytes)
                .map_err(|_| format!("the admin password file {} is not UTF-8", path.display()))?
        }
        SecretSource::Env(name) => std::env::var(name).map_err(|_| {
            format!("the environment variable {name} (its admin password) is not set or not UTF-8")
        })?,
    };
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err("its admin password is empty".to_owned());
    }
    Ok(secret.to_owned())
}

/// libpq's `sslmode` for the job's own client: at least what the broker
/// checks. `require` is the broker's chain-only check against the
/// target's `ca_file`, which is libpq's `verify-ca` (libpq's own `require`
/// verifies nothing); the job gives libpq the roots (`PGSSLROOTCERT`).
fn child_sslmode(tls: PgTlsMode) -> &'static str {
    match tls {
        PgTlsMode::Disable => "disable",
        PgTlsMode::Require => "verify-ca",
        PgTlsMode::VerifyFull => "verify-full",
    }
}

fn failure(error: UpstreamError) -> UpstreamFailure {
    match error {
        UpstreamError::Unavailable(why) => UpstreamFailure::Unavailable(why),
        UpstreamError::Refused { sqlstate, message } => UpstreamFailure::Refused {
            code: sqlstate,
            message,
        },
        UpstreamError::Settings(why) => UpstreamFailure::Unavailable(why),
    }
}

fn random<const N: usize>(rng: &ring::rand::SystemRandom) -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(rng, &mut bytes)
        .map_err(|_| "could not generate randomness".to_owned())?;
    Ok(bytes)
}

#[async_trait]
impl TargetClient for PostgresClient {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn server(&self) -> String {
        if self.target.host.contains(':') {
            format!("[{}]:{}", self.target.host, self.target.port)
        } else {
            format!("{}:{}", self.target.host, self.target.port)
        }
    }

    fn database(&self) -> Option<String> {
        Some(self.target.database.as_str().to_owned())
    }

    fn plan(
        &self,
        target: &str,
        scopes: &[Scope],
        expires_at: i64,
        rng: &ring::rand::SystemRandom,
    ) -> Result<Planned, String> {
        let role = plan::role_name(&random::<15>(rng)?);
        let planned = plan::plan(target, &self.target, scopes, role, expires_at)
            .map_err(|e| e.to_string())?;
        let password = plan::password(&random::<24>(rng)?);
        let verifier =
            plan::scram_sha256_verifier(&password, &random::<16>(rng)?, SCRAM_ITERATIONS);
        let request = planned
            .create_statements(&verifier, &self.marker)
            .map_err(|e| e.to_string())?;
        Ok(Planned {
            upstream_id: planned.role.as_str().to_owned(),
            secret: password,
            privileges: planned.privileges(),
            effective: planned
                .effective_scopes(target, &self.target)
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            request,
            postgres: Some(PostgresLogin {
                host: self.target.host.clone(),
                port: self.target.port,
                database: self.target.database.as_str().to_owned(),
                user: planned.role.as_str().to_owned(),
                sslmode: child_sslmode(self.target.tls).to_owned(),
                expires_at,
            }),
        })
    }

    async fn create(&self, planned: &Planned) -> Result<(), UpstreamFailure> {
        self.upstream
            .create(&planned.request)
            .await
            .map_err(failure)
    }

    async fn destroy(&self, upstream_id: &str) -> Result<Destroyed, UpstreamFailure> {
        let report = self.upstream.revoke(upstream_id).await.map_err(failure)?;
        Ok(Destroyed {
            existed: report.existed,
            terminated: report.terminated,
        })
    }

    /// Half the admin pool: the other half stays for mints.
    fn max_destroying(&self) -> usize {
        (self.target.pool_size / 2).max(1)
    }

    async fn list(&self) -> Result<Option<Vec<String>>, UpstreamFailure> {
        self.upstream
            .list_roles(&self.marker)
            .await
            .map(Some)
            .map_err(failure)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_admin_password_file_is_one_line_and_never_in_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret-pw\r\n").unwrap();
        assert_eq!(
            read_secret(&SecretSource::File(path.clone())).unwrap(),
            "s3cret-pw"
        );
        std::fs::write(&path, "\n").unwrap();
        let empty = read_secret(&SecretSource::File(path.clone())).unwrap_err();
        assert!(empty.contains("empty"), "{empty}");
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        let long = read_secret(&SecretSource::File(path.clone())).unwrap_err();
        assert!(long.contains("larger than"), "{long}");
        let missing = read_secret(&SecretSource::File(dir.path().join("missing"))).unwrap_err();
        assert!(missing.contains("cannot open"), "{missing}");
        let unset = read_secret(&SecretSource::Env(
            "STINT_TEST_SURELY_UNSET_VARIABLE".into(),
        ))
        .unwrap_err();
        assert!(
            unset.contains("STINT_TEST_SURELY_UNSET_VARIABLE"),
            "{unset}"
        );
    }
}
