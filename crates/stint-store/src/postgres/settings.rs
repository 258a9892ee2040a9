//! Where the PostgreSQL store is, as whom, and how: [`PostgresStoreSettings`]
//! and its `postgres://` URL.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The port PostgreSQL listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 5432;
/// Connections the store opens at most, by default.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// How long one store operation may take, by default (waiting for a
/// connection, connecting, and the statements).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The store role's password. Its `Debug` prints `<redacted>`, and no
/// message of this crate ever contains it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StorePassword(String);

impl StorePassword {
    /// Wrap a password.
    pub fn new(password: String) -> Self {
        Self(password)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StorePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How connections to the store are protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresTls {
    /// Plain TCP: only to a server on a loopback address.
    Disable,
    /// TLS with the certificate chain and the host name verified (libpq's
    /// `verify-full`), against `ca_file` (PEM) or, without one, Mozilla's
    /// roots; SCRAM bound to the TLS session (channel binding) required.
    Require {
        /// The CA bundle (PEM) the server's certificate must chain to.
        ca_file: Option<PathBuf>,
    },
}

/// Everything [`crate::PostgresStore::open`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStoreSettings {
    /// The server's host name or IP address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The role the store logs in as.
    pub user: String,
    /// Its password (from a file or the environment, never a command line).
    pub password: StorePassword,
    /// The database holding Stint's tables.
    pub database: String,
    /// TLS, or not (loopback only).
    pub tls: PostgresTls,
    /// At most this many connections are open at once.
    pub pool_size: usize,
    /// The longest one operation may take, connection and all; past it the
    /// operation fails with [`crate::StoreError::Backend`].
    pub timeout: Duration,
}

/// A store URL or setting that cannot be used. The message never holds the
/// password (nor the URL, which may).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the postgresql store {0}")]
pub struct StoreUrlError(String);

fn bad<T>(why: impl Into<String>) -> Result<T, StoreUrlError> {
    Err(StoreUrlError(why.into()))
}

/// Whether `text` is a PostgreSQL URL (`postgres://` or `postgresql://`).
pub fn is_postgres_url(text: &str) -> bool {
    let lower = text.get(..13).unwrap_or(text).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

impl PostgresStoreSettings {
    /// Parse `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=MODE&sslrootcert=FILE]`.
    ///
    /// `sslmode` is `verify-full` (the default) or `require`, which means
    /// the same here: the server's certificate and name are always verified;
    /// or `disable`, for a loopback host only. `sslrootcert` is the CA file
    /// (PEM). Other parameters are refused. The pool size and timeout take
    /// their defaults.
    pub fn parse_url(text: &str) -> Result<Self, StoreUrlError> {
        let url = match url::Url::parse(text) {
            Ok(url) => url,
            // url's messages do not repeat the input.
            Err(error) => return bad(format!("URL does not parse: {error}")),
        };
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return bad("URL must start with postgres:// or postgresql://");
        }
        let decode = |what: &str, part: &str| -> Result<String, StoreUrlError> {
            match percent_encoding::percent_decode_str(part).decode_utf8() {
                Ok(text) => Ok(text.into_owned()),
                Err(_) => bad(format!("URL's {what} is not UTF-8 once decoded")),
            }
        };
        let user = decode("user", url.username())?;
        if user.is_empty() {
            return bad("URL must name the user: postgres://USER@HOST/DATABASE");
        }
        let password = match url.password() {
            Some(password) => StorePassword::new(decode("password", password)?),
            None => StorePassword::default(),
        };
        let host = match url.host() {
            Some(url::Host::Domain(name)) if !name.is_empty() && !name.contains('%') => {
                name.to_owned()
            }
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            _ => return bad("URL must name the host: postgres://USER@HOST/DATABASE"),
        };
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let database = decode("database", url.path().strip_prefix('/').unwrap_or_default())?;
        if database.is_empty() || database.contains('/') {
            return bad("URL must name the database: postgres://USER@HOST/DATABASE");
        }
        if url.fragment().is_some() {
            return bad("URL must not have a fragment (#...)");
        }
        let mut sslmode = None;
        let mut ca_file = None;
        for (key, value) in url.query_pairs() {
            let slot = match key.as_ref() {
                "sslmode" => &mut sslmode,
                "sslrootcert" => &mut ca_file,
                other => {
                    let other: String = other.chars().take(40).collect();
                    return bad(format!(
                        "URL parameter {other:?} is not supported (only sslmode and sslrootcert)"
                    ));
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return bad(format!("URL gives {key} twice"));
            }
        }
        let tls = match sslmode.as_deref() {
            None | Some("verify-full" | "require") => PostgresTls::Require {
                ca_file: ca_file.map(PathBuf::from),
            },
            Some("disable") if ca_file.is_none() => PostgresTls::Disable,
            Some("disable") => return bad("URL gives sslrootcert with sslmode=disable"),
            Some(other) => {
                let other: String = other.chars().take(40).collect();
                return bad(format!(
                    "sslmode {other:?} is not supported: use verify-full (the default; require means the same), or disable for a server on a loopback address"
                ));
            }
        };
        let settings = Self {
            host,
            port,
            user,
            password,
            database,
            tls,
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// [`Self::parse_url`] for a URL given on a command line, which others
    /// on the machine can read: one with a password in it is refused (give
    /// the password in a file or the environment).
    pub fn parse_url_for_cli(text: &str) -> Result<Self, StoreUrlError> {
        let settings = Self::parse_url(text)?;
        if !settings.password.is_empty() {
            return bad(
                "URL on the command line holds a password, which other users can read: remove it, and give it in a file (--store-password-file) or the environment (STINTD_STORE_PASSWORD)",
            );
        }
        Ok(settings)
    }

    /// Whether the host is a loopback address (or `localhost`).
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<IpAddr>()
                .is_ok_and(|address| address.is_loopback())
    }

    /// Check the settings on their own: plain TCP only to loopback, a pool
    /// and a timeout above zero, names not empty.
    pub fn validate(&self) -> Result<(), StoreUrlError> {
        if self.host.is_empty() || self.user.is_empty() || self.database.is_empty() {
            return bad("host, user and database must not be empty");
        }
        if self.tls == PostgresTls::Disable && !self.is_loopback() {
            return bad(format!(
                "sslmode=disable is only allowed for a server on a loopback address, not {}: use sslmode=verify-full",
                self.host
            ));
        }
        if self.pool_size == 0 || self.pool_size > 1024 {
            return bad("pool size must be 1 to 1024");
        }
        if self.timeout < Duration::from_millis(10) {
            return bad("timeout must be at least 10 ms");
        }
        Ok(())
    }

    /// `host:port/database as user`: for messages and the banner.
    pub fn endpoint(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{host}:{}/{} as {}", self.port, self.database, self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url() {
        let settings = PostgresStoreSettings::parse_url(
            "postgres://stint%40prod@db.example.com:6432/stint_db?sslmode=verify-full&sslrootcert=/etc/stint/ca.pem",
        )
        .unwrap();
        assert_eq!(
            settings,
            PostgresStoreSettings {
                host: "db.example.com".into(),
                port: 6432,
                user: "stint@prod".into(),
                password: StorePassword::default(),
                database: "stint_db".into(),
                tls: PostgresTls::Require {
                    ca_file: Some("/etc/stint/ca.pem".into())
                },
                pool_size: DEFAULT_POOL_SIZE,
                timeout: DEFAULT_TIMEOUT,
            }
        );
        assert_eq!(
            settings.endpoint(),
            "db.example.com:6432/stint_db as stint@prod"
        );
    }

    #[test]
    fn tls_is_verified_by_default_and_require_means_verify_full() {
        for url in [
            "postgresql://u@db.example.com/d",
            "postgres://u@db.example.com/d?sslmode=require",
            "postgres://u@127.0.0.1/d",
        ] {
            let settings = PostgresStoreSettings::parse_url(url).unwrap();
            assert_eq!(
                settings.tls,
                PostgresTls::Require { ca_file: None },
                "{url}"
            );
            assert_eq!(settings.port, DEFAULT_PORT);
        }
    }

    #[test]
    fn plain_tcp_only_to_loopback() {
        for url in [
            "postgres://u@127.0.0.1:5432/d?sslmode=disable",
            "postgres://u@localhost/d?sslmode=disable",
            "postgres://u@[::1]:5432/d?sslmode=disable",
        ] {
            let settings = PostgresStoreSettings::parse_url(url).unwrap();
            assert_eq!(settings.tls, PostgresTls::Disable, "{url}");
            assert!(settings.is_loopback());
        }
        let error = PostgresStoreSettings::parse_url("postgres://u@10.0.0.5/d?sslmode=disable")
            .unwrap_err()
            .to_string();
        assert!(error.contains("loopback"), "{error}");
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for url in [
            "mysql://u@h/d",
            "postgres://h/d",
            "postgres://u@/d",
            "postgres://u@h",
            "postgres://u@h/",
            "postgres://u@h/d/e",
            "postgres://u@h/d?sslmode=prefer",
            "postgres://u@h/d?sslmode=verify-ca",
            "postgres://u@h/d?sslmode=allow",
            "postgres://u@h/d?application_name=x",
            "postgres://u@h/d?sslmode=disable&sslmode=disable",
            "postgres://u@127.0.0.1/d?sslmode=disable&sslrootcert=/ca.pem",
            "postgres://u@h/d#frag",
            "not a url",
        ] {
            assert!(PostgresStoreSettings::parse_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_on_the_command_line() {
        let url = "postgres://u:s3cret-pw@db.example.com/d";
        let settings = PostgresStoreSettings::parse_url(url).unwrap();
        assert_eq!(settings.password, StorePassword::new("s3cret-pw".into()));
        assert!(!format!("{settings:?}").contains("s3cret-pw"));
        let error = PostgresStoreSettings::parse_url_for_cli(url)
            .unwrap_err()
            .to_string();
        assert!(error.contains("password"), "{error}");
        assert!(!error.contains("s3cret-pw"), "{error}");
        assert!(PostgresStoreSettings::parse_url_for_cli("postgres://u@db.example.com/d").is_ok());
    }

    #[test]
    fn pool_and_timeout_must_be_usable() {
        let mut settings = PostgresStoreSettings::parse_url("postgres://u@h/d").unwrap();
        settings.pool_size = 0;
        assert!(settings.validate().is_err());
        settings.pool_size = 2;
        settings.timeout = Duration::ZERO;
        assert!(settings.validate().is_err());
    }

    #[test]
    fn postgres_urls_are_recognised() {
        assert!(is_postgres_url("postgres://u@h/d"));
        assert!(is_postgres_url("PostgreSQL://u@h/d"));
        assert!(!is_postgres_url("sqlite:"));
        assert!(!is_postgres_url("/var/lib/stint"));
    }
}
