//! The broker's configuration, validated before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use stint_core::jose::Algorithm;
use thiserror::Error;

/// The loopback port `stintd --dev` listens on by default.
pub const DEFAULT_DEV_PORT: u16 = 8780;

/// The most feed streams a broker may be told to hold (each is an open
/// connection and a task).
pub const MAX_FEED_STREAMS: usize = 65_536;
/// The longest [`Config::key_publish_lead`].
pub const MAX_KEY_PUBLISH_LEAD: Duration = Duration::from_secs(3600);

/// Where the policy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A TOML file, re-read on `SIGHUP`.
    File(PathBuf),
    /// The built-in demo policy of `--dev` (workload `demo-job`).
    Demo,
}

/// Where the store (revocations, signing keys, approvals, status lists,
/// target credentials) lives. The audit log is a file in the data
/// directory either way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// SQLite, `stint.db` in the data directory (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL database.
    Postgres(stint_store::PostgresStoreSettings),
}

/// PEM files for the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A sustained rate with a burst: a client may send `burst` requests at
/// once, then `per_second` a second (GCRA, the token bucket's exact
/// equivalent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests a second, sustained.
    pub per_second: u32,
    /// Requests at once after a quiet spell.
    pub burst: u32,
}

/// How long clients may take and how much they may hold. The defaults suit
/// a broker facing automation jobs; tests shorten them. Each one's flag,
/// and why it is what it is, is in docs/threat-model.md ("Denial of
/// service").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time from the connection to its first byte (a TLS ClientHello, or
    /// the first byte of a request).
    pub first_byte_timeout: Duration,
    /// Time to finish a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time from the connection to its first request, and to receive an
    /// HTTP/1 request's headers.
    pub header_timeout: Duration,
    /// Time to receive a request body once its headers are in.
    pub body_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Of `max_connections`, the last ones, kept for health, discovery,
    /// keys and revocation: a connection accepted while fewer than these
    /// are free is served for those routes only.
    pub reserved_connections: usize,
    /// Connections one source (an IPv4 address, an IPv6 /64) may hold.
    pub max_connections_per_source: usize,
    /// Requests handled at once across every connection, revocations
    /// aside; more get 503.
    pub max_in_flight: usize,
    /// Revocation requests handled at once (their own capacity, which
    /// minting cannot take); more get 503.
    pub max_revocations_in_flight: usize,
    /// Requests one authenticated client (HTTP Basic) may have in flight;
    /// more get 429.
    pub max_in_flight_per_client: usize,
    /// Requests in flight from one source that an `Authorization` header
    /// does not authenticate (credentials in the body, bearer tokens, or
    /// none); more get 429.
    pub max_unauthenticated_in_flight_per_source: usize,
    /// Token requests one authenticated client may make.
    pub token_rate_per_client: Rate,
    /// Token requests one source may make, authenticated or not.
    pub token_rate_per_source: Rate,
    /// Sources (and clients) the rate limiters track at once; past that,
    /// new ones share one budget.
    pub max_tracked_sources: usize,
    /// Repeated refusals of unauthenticated requests from one source are
    /// audited as one counted record per this interval (the first in
    /// full).
    pub audit_aggregation_interval: Duration,
    /// Sources whose refusals are counted apart at once; past that, new
    /// ones are counted together.
    pub audit_aggregation_sources: usize,
    /// Concurrent requests on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Limits {
    /// The defaults, as a constant (so that `stintd --help` shows them).
    pub const DEFAULT: Self = Self {
        first_byte_timeout: Duration::from_secs(3),
        handshake_timeout: Duration::from_secs(10),
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 4096,
        reserved_connections: 256,
        max_connections_per_source: 256,
        max_in_flight: 1024,
        max_revocations_in_flight: 256,
        max_in_flight_per_client: 64,
        max_unauthenticated_in_flight_per_source: 16,
        token_rate_per_client: Rate {
            per_second: 100,
            burst: 200,
        },
        token_rate_per_source: Rate {
            per_second: 200,
            burst: 400,
        },
        max_tracked_sources: 65_536,
        audit_aggregation_interval: Duration::from_secs(1),
        audit_aggregation_sources: 1024,
        max_streams_per_connection: 32,
    };
}

/// TLS client certificates (RFC 8705 `tls_client_auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificates {
    /// The CA bundle (PEM) client certificates must chain to.
    pub ca: PathBuf,
    /// Refuse connections without a certificate (else they are accepted, and
    /// only `tls_client_auth` needs one).
    pub required: bool,
}

/// Everything `stintd` needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Where the audit log and `dev-client.json` live, and the store
    /// unless `store` says otherwise.
    pub data_dir: PathBuf,
    /// The store.
    pub store: StoreConfig,
    /// The issuer URL; derived from the listener when absent.
    pub issuer: Option<String>,
    /// The policy.
    pub policy: PolicySource,
    /// TLS; required unless `dev` and `listen` is loopback.
    pub tls: Option<TlsFiles>,
    /// Development mode: plain HTTP on loopback, `dev-client.json`.
    pub dev: bool,
    /// The algorithm new signing keys use.
    pub signing_alg: Algorithm,
    /// How long a rotated-in signing key is published before it signs (at
    /// most an hour): verifiers that cached the JWK set before the
    /// rotation have it by then. The JWK set's `max-age` is never longer.
    pub key_publish_lead: Duration,
    /// Timeouts and caps on what clients may hold.
    pub limits: Limits,
    /// Extra CA certificates (PEM) to trust when fetching trusted OIDC
    /// issuers' keys, besides the web roots.
    pub federation_ca: Option<PathBuf>,
    /// TLS client certificates, if accepted.
    pub client_certificates: Option<ClientCertificates>,
    /// How often a job waiting for an approval may poll (RFC 8628
    /// `interval`).
    pub approval_interval: Duration,
    /// Where approval requests and decisions are announced, if anywhere.
    pub webhook: Option<WebhookTarget>,
    /// How often a quiet revocation feed stream sends a keep-alive comment.
    pub feed_keepalive: Duration,
    /// How long the store may fail its checks before the broker fails
    /// closed: no mint, every token inactive at introspection, feed streams
    /// ended, `/readyz` 503 (until a check succeeds again).
    pub store_fail_closed_after: Duration,
    /// The most revocation feed streams open at once (0: none; verifiers
    /// then poll the status lists).
    pub feed_max_streams: usize,
    /// The most feed streams one client may hold open.
    pub feed_max_streams_per_client: usize,
    /// When the audit log is rotated and its head signed.
    pub audit: crate::audit::AuditSettings,
    /// A file holding the bearer token `/metrics` requires; without it
    /// `/metrics` is open, without the policy's workflow names.
    pub metrics_token_file: Option<PathBuf>,
    /// RS256 keys (PEM or DER files) that sign federation tokens for OIDC
    /// targets: the first signs, all are published in the JWK set.
    pub federation_keys: Vec<PathBuf>,
    /// The key-encryption key (32 random bytes, or 64 hex digits) that
    /// seals the signing keys in the store; without it they are stored in
    /// the clear.
    pub key_encryption_key_file: Option<PathBuf>,
    /// Proxies whose `Forwarded` / `X-Forwarded-For` name the client.
    pub trusted_proxies: crate::forwarded::TrustedProxies,
    /// The proxy in front terminates TLS: plain HTTP may be served on any
    /// address (it needs `trusted_proxies` and an `https` issuer).
    pub tls_terminated_by_proxy: bool,
    /// Keep the tokens this broker mints until they expire, for operators
    /// to list and revoke (the console turns it on); off, the mint path
    /// keeps nothing.
    pub live_tokens: bool,
    /// With the demo policy: the URL of the dev identity provider the
    /// console signs the demo operators (`alice`, `bob`) in through. The
    /// demo policy then has them, that issuer (`dev`, audience
    /// `stint-console`), and a step they approve (`demo/deploy`).
    pub dev_operators_issuer: Option<String>,
    /// The console's public origin, when one runs: the webhook's events
    /// link to each request's page there.
    pub console_url: Option<String>,
}

/// The webhook that receives approval events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `https://` (or `http://` to loopback).
    pub url: String,
    /// A file holding the HMAC secret (at least 32 bytes).
    pub secret_file: PathBuf,
}

impl Config {
    /// A development configuration: demo policy, loopback, plain HTTP.
    pub fn dev(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Self {
            listen,
            data_dir,
            store: StoreConfig::Sqlite,
            issuer: None,
            policy: PolicySource::Demo,
            tls: None,
            dev: true,
            signing_alg: Algorithm::ES256,
            key_publish_lead: crate::keys::JWKS_MAX_AGE,
            limits: Limits::default(),
            federation_ca: None,
            client_certificates: None,
            approval_interval: Duration::from_secs(5),
            webhook: None,
            feed_keepalive: Duration::from_secs(15),
            store_fail_closed_after: Duration::from_secs(10),
            feed_max_streams: 2048,
            feed_max_streams_per_client: 256,
            audit: crate::audit::AuditSettings::default(),
            metrics_token_file: None,
            federation_keys: Vec::new(),
            key_encryption_key_file: None,
            trusted_proxies: crate::forwarded::TrustedProxies::default(),
            tls_terminated_by_proxy: false,
            live_tokens: false,
            dev_operators_issuer: None,
            console_url: None,
        }
    }

    /// Check the combination of settings. Errors name the flag to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_terminated_by_proxy {
            if self.tls.is_some() {
                return Err(ConfigError::ProxyTlsAndOwnTls);
            }
            if self.trusted_proxies.is_empty() {
                return Err(ConfigError::TrustedProxiesRequired);
            }
            if !self
                .issuer
                .as_deref()
                .is_some_and(|i| i.starts_with("https://"))
            {
                return Err(ConfigError::HttpsIssuerBehindProxy);
            }
        } else if self.tls.is_none() {
            if !self.dev {
                return Err(ConfigError::TlsRequired);
            }
            if !self.listen.ip().is_loopback() {
                return Err(ConfigError::PlainHttpNotLoopback(self.listen));
            }
        }
        if self.policy == PolicySource::Demo && !self.dev {
            return Err(ConfigError::PolicyRequired);
        }
        match &self.issuer {
            Some(issuer) => {
                validate_issuer(issuer, self.tls.is_some() || self.tls_terminated_by_proxy)?;
            }
            None if self.listen.ip().is_unspecified() => {
                return Err(ConfigError::IssuerRequired(self.listen));
            }
            None => {}
        }
        if self.client_certificates.is_some() && self.tls.is_none() {
            return Err(ConfigError::ClientCertificatesWithoutTls);
        }
        if !(1..=60).contains(&self.approval_interval.as_secs()) {
            return Err(ConfigError::BadApprovalInterval);
        }
        if self.feed_keepalive < Duration::from_millis(100)
            || self.feed_keepalive > Duration::from_secs(300)
        {
            return Err(ConfigError::BadFeedKeepalive);
        }
        if self.key_publish_lead > MAX_KEY_PUBLISH_LEAD {
            return Err(ConfigError::BadKeyPublishLead);
        }
        if self.store_fail_closed_after < Duration::from_millis(500)
            || self.store_fail_closed_after > Duration::from_secs(300)
        {
            return Err(ConfigError::BadStoreFailClosedAfter);
        }
        if self.feed_max_streams > MAX_FEED_STREAMS
            || self.feed_max_streams
                >= self
                    .limits
                    .max_connections
                    .saturating_sub(self.limits.reserved_connections)
        {
            return Err(ConfigError::TooManyFeedStreams);
        }
        if !self.audit.is_valid() {
            return Err(ConfigError::BadAuditSettings);
        }
        if let StoreConfig::Postgres(settings) = &self.store {
            settings
                .validate()
                .map_err(|e| ConfigError::Store(e.to_string()))?;
            // A shared database is copied, replicated and backed up by
            // people who should not hold the signing keys.
            if self.key_encryption_key_file.is_none() {
                return Err(ConfigError::KeyEncryptionKeyRequired);
            }
        }
        self.limits.validate()
    }
}

impl Limits {
    /// Check the limits on their own. Errors name the flag to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations = [
            self.first_byte_timeout,
            self.handshake_timeout,
            self.header_timeout,
            self.body_timeout,
            self.idle_timeout,
            self.audit_aggregation_interval,
        ];
        let counts = [
            self.max_connections,
            self.max_connections_per_source,
            self.max_in_flight,
            self.max_revocations_in_flight,
            self.max_in_flight_per_client,
            self.max_unauthenticated_in_flight_per_source,
            self.max_tracked_sources,
            self.audit_aggregation_sources,
        ];
        let rates = [self.token_rate_per_client, self.token_rate_per_source];
        if durations.iter().any(Duration::is_zero)
            || counts.contains(&0)
            || self.max_streams_per_connection == 0
            || rates.iter().any(|r| r.per_second == 0 || r.burst == 0)
        {
            return Err(ConfigError::ZeroLimit);
        }
        if self.first_byte_timeout > self.header_timeout {
            return Err(ConfigError::BadLimit(
                "--first-byte-timeout must not be longer than --header-timeout",
            ));
        }
        if self.reserved_connections >= self.max_connections {
            return Err(ConfigError::BadLimit(
                "--reserved-connections must be below --max-connections",
            ));
        }
        if self.max_connections_per_source > self.max_connections {
            return Err(ConfigError::BadLimit(
                "--max-connections-per-source must not exceed --max-connections",
            ));
        }
        if self.audit_aggregation_interval > Duration::from_secs(60) {
            return Err(ConfigError::BadLimit(
                "--audit-aggregation-interval must be at most 60 seconds",
            ));
        }
        Ok(())
    }
}

/// Check an issuer URL (RFC 8414 section 2): `https`, or `http` for a
/// plain-HTTP dev listener; a host; no query or fragment.
pub fn validate_issuer(issuer: &str, tls: bool) -> Result<(), ConfigError> {
    let bad = |why: &'static str| ConfigError::BadIssuer {
        issuer: issuer.to_owned(),
        why,
    };
    let rest = if let Some(rest) = issuer.strip_prefix("https://") {
        rest
    } else if let Some(rest) = issuer.strip_prefix("http://") {
        if tls {
            return Err(bad("must use https when TLS is on"));
        }
        rest
    } else {
        return Err(bad("must start with https://"));
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("must name a host"));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("must not have a query or fragment"));
    }
    if rest.ends_with('/') {
        return Err(bad("must not end with '/'"));
    }
    if rest.contains('/') {
        return Err(bad(
            "must not have a path: Stint serves its endpoints and metadata at the root of its origin",
        ));
    }
    if !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("must be printable ASCII without spaces"));
    }
    Ok(())
}

/// A configuration that cannot work, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// No TLS outside dev mode.
    #[error(
        "refusing to serve plain HTTP: give --tls-cert and --tls-key (PEM), or use --dev for a local broker on a loopback address"
    )]
    TlsRequired,
    /// Dev mode on a non-loopback address without TLS.
    #[error(
        "refusing to serve plain HTTP on {0}: without TLS, --dev only listens on a loopback address (127.0.0.1 or [::1]); give --tls-cert and --tls-key to listen elsewhere"
    )]
    PlainHttpNotLoopback(SocketAddr),
    /// `--tls-terminated-by-proxy` with the broker's own TLS.
    #[error(
        "--tls-terminated-by-proxy says the proxy in front ends TLS, but --tls-cert is given: choose one"
    )]
    ProxyTlsAndOwnTls,
    /// `--tls-terminated-by-proxy` without the proxies' addresses.
    #[error(
        "--tls-terminated-by-proxy needs --trusted-proxy ADDRESS[/PREFIX] (the proxies' addresses, whose X-Forwarded-For is believed)"
    )]
    TrustedProxiesRequired,
    /// Behind a TLS-terminating proxy without an `https` issuer.
    #[error(
        "--tls-terminated-by-proxy needs --issuer https://... (the URL clients reach through the proxy)"
    )]
    HttpsIssuerBehindProxy,
    /// A PostgreSQL store without a key-encryption key.
    #[error(
        "a PostgreSQL store needs --key-encryption-key-file: the signing keys are kept there only sealed (head -c 32 /dev/urandom > FILE)"
    )]
    KeyEncryptionKeyRequired,
    /// No policy outside dev mode.
    #[error("--policy FILE is required (only --dev has a built-in demo policy)")]
    PolicyRequired,
    /// Listening on every address, with no issuer to put in tokens.
    #[error(
        "--issuer is required when listening on {0}: give the URL clients use to reach the broker, e.g. --issuer https://stint.example.com:8443"
    )]
    IssuerRequired(SocketAddr),
    /// Client certificates asked for on a plain-HTTP listener.
    #[error("--client-ca-file needs TLS: give --tls-cert and --tls-key")]
    ClientCertificatesWithoutTls,
    /// The federation CA file is unusable.
    #[error("--federation-ca-file: {0}")]
    FederationCa(String),
    /// A federation key file is unusable (the message names the file and
    /// the reason, never the key).
    #[error("{0}")]
    FederationKey(String),
    /// An approval polling interval out of range.
    #[error("the approval polling interval must be 1 to 60 seconds")]
    BadApprovalInterval,
    /// A feed keep-alive interval out of range.
    #[error("the revocation feed keep-alive must be 100 ms to 5 minutes")]
    BadFeedKeepalive,
    /// A fail-closed bound out of range.
    #[error("--store-fail-closed-after must be 1 to 300 seconds")]
    BadStoreFailClosedAfter,
    /// A publish lead past an hour.
    #[error("--key-publish-lead must be at most 3600 seconds")]
    BadKeyPublishLead,
    /// More feed streams than the broker will hold.
    #[error(
        "--feed-max-streams must be below the connections outside the reserve (--max-connections minus --reserved-connections, so minting keeps room) and at most {MAX_FEED_STREAMS}"
    )]
    TooManyFeedStreams,
    /// An audit rotation size or checkpoint interval out of range.
    #[error(
        "--audit-rotate-size must be 0 (never) or at least 4K, and --audit-checkpoint-interval 1 to 3600 seconds"
    )]
    BadAuditSettings,
    /// The store's settings are unusable (the message never holds a
    /// password).
    #[error("--store: {0}")]
    Store(String),
    /// A timeout, cap or rate of zero, which would refuse everything.
    #[error(
        "every limit (timeouts, connection and request caps, rates and bursts) must be above zero"
    )]
    ZeroLimit,
    /// Limits that contradict each other.
    #[error("{0}")]
    BadLimit(&'static str),
    /// A malformed `--issuer`.
    #[error("--issuer {issuer:?} {why}")]
    BadIssuer {
        /// The value.
        issuer: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_postgres_store_needs_a_key_encryption_key() {
        let mut config = Config::dev("d".into(), addr("127.0.0.1:0"));
        config.store = StoreConfig::Postgres(
            stint_store::PostgresStoreSettings::parse_url(
                "postgres://stint@127.0.0.1:5432/stint?sslmode=disable",
            )
            .unwrap(),
        );
        assert_eq!(
            config.validate(),
            Err(ConfigError::KeyEncryptionKeyRequired)
        );
        config.key_encryption_key_file = Some("kek".into());
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn plain_http_only_in_dev_on_loopback() {
        let mut config = Config::dev("d".into(), addr("127.0.0.1:0"));
        assert_eq!(config.validate(), Ok(()));
        config.listen = addr("[::1]:0");
        assert_eq!(config.validate(), Ok(()));
        config.listen = addr("0.0.0.0:8780");
        assert_eq!(
            config.validate(),
            Err(ConfigError::PlainHttpNotLoopback(addr("0.0.0.0:8780")))
        );
        config.listen = addr("127.0.0.1:0");
        config.dev = false;
        assert_eq!(config.validate(), Err(ConfigError::TlsRequired));
        config.tls = Some(TlsFiles {
            cert: "c".into(),
            key: "k".into(),
        });
        assert_eq!(config.validate(), Err(ConfigError::PolicyRequired));
        config.policy = PolicySource::File("p.toml".into());
        config.listen = addr("0.0.0.0:8443");
        assert_eq!(
            config.validate(),
            Err(ConfigError::IssuerRequired(addr("0.0.0.0:8443")))
        );
        config.issuer = Some("https://stint.example.com:8443".into());
        assert_eq!(config.validate(), Ok(()));
        config.limits.idle_timeout = Duration::ZERO;
        assert_eq!(config.validate(), Err(ConfigError::ZeroLimit));
        config.limits = Limits::default();
        config.limits.max_in_flight = 0;
        assert_eq!(config.validate(), Err(ConfigError::ZeroLimit));
    }

    #[test]
    fn limits_that_contradict_each_other_are_refused() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let bad = [
            Limits {
                first_byte_timeout: Duration::from_secs(11),
                ..Limits::default()
            },
            Limits {
                reserved_connections: 4096,
                ..Limits::default()
            },
            Limits {
                max_connections_per_source: 4097,
                ..Limits::default()
            },
            Limits {
                audit_aggregation_interval: Duration::from_secs(61),
                ..Limits::default()
            },
        ];
        for limits in bad {
            assert!(
                matches!(limits.validate(), Err(ConfigError::BadLimit(_))),
                "{limits:?}"
            );
        }
        let zero_rate = Limits {
            token_rate_per_client: Rate {
                per_second: 0,
                burst: 1,
            },
            ..Limits::default()
        };
        assert_eq!(zero_rate.validate(), Err(ConfigError::ZeroLimit));
        // The feed may not take the reserve.
        let mut config = Config::dev("d".into(), addr("127.0.0.1:0"));
        config.limits.max_connections = 2100;
        assert_eq!(config.validate(), Err(ConfigError::TooManyFeedStreams));
    }

    #[test]
    fn issuers() {
        assert!(validate_issuer("https://stint.example.com", true).is_ok());
        assert!(validate_issuer("https://stint.example.com/tenant", true).is_err());
        assert!(validate_issuer("http://127.0.0.1:8780", false).is_ok());
        assert!(validate_issuer("http://127.0.0.1:8780", true).is_err());
        assert!(validate_issuer("https://x/", true).is_err());
        assert!(validate_issuer("https://x?a=b", true).is_err());
        assert!(validate_issuer("ftp://x", true).is_err());
        assert!(validate_issuer("https://", true).is_err());
    }
}
