//! Keys of the trusted OIDC issuers, fetched on demand and cached.
//!
//! Only an issuer the policy lists is ever fetched: the caller looks the
//! token's `iss` up in the policy first, so a crafted token cannot make the
//! broker fetch anything else. Each fetch reads the issuer's discovery
//! document (`/.well-known/openid-configuration`) and the JWK set it names,
//! over HTTPS only (rustls with ring; the web roots plus any configured CA),
//! with a 5 s timeout, at most 256 KiB per answer, and no redirects.
//!
//! Keys are cached per issuer. A token naming a key the cache lacks causes a
//! refetch, at most once per [`MIN_REFETCH`] per issuer, so forged `kid`s
//! cannot make the broker hammer an issuer. When a fetch fails, cached keys
//! younger than [`MAX_STALE`] are still used: the issuer being down does not
//! stop jobs whose tokens it signed with a known key.

use bytes::Bytes;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stint_core::federation::TrustedIssuer;
use stint_core::jose::{KeySet, VerifyingKey};
use stint_proto::JwkSet;
use thiserror::Error;

/// The shortest time between two fetches for one issuer.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Keys are fetched again once this old, when a token needs them.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(60 * 60);
/// How long cached keys are still used while the issuer cannot be reached.
pub const MAX_STALE: Duration = Duration::from_secs(24 * 60 * 60);
/// The largest discovery document or JWK set read.
const MAX_DOCUMENT_LEN: usize = 256 * 1024;
/// Connection and whole-request timeouts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an issuer's keys are not available.
#[derive(Debug, Clone, Error)]
pub enum FetchError {
    /// The issuer could not be reached or answered nonsense, and no usable
    /// cached keys exist.
    #[error("the keys of issuer {issuer} could not be fetched: {reason}")]
    Unavailable {
        /// The issuer's policy name.
        issuer: String,
        /// What went wrong.
        reason: String,
    },
}

struct Cached {
    keys: Arc<KeySet>,
    fetched: Instant,
}

/// A client for an identity provider: HTTPS only (rustls on ring, the web
/// roots plus the CA certificates in `extra_ca`, PEM, if given), these
/// timeouts, no redirects.
pub fn https_client(
    extra_ca: Option<&Path>,
    connect: Duration,
    total: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(true)
        .connect_timeout(connect)
        .timeout(total)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = extra_ca {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{} is not a PEM bundle: {e}", path.display()))?;
        if certificates.is_empty() {
            return Err(format!("{} holds no certificate", path.display()));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up HTTPS: {e}"))
}

/// The cache of trusted issuers' keys.
pub struct IssuerKeys {
    http: reqwest::Client,
    cache: tokio::sync::Mutex<HashMap<String, Cached>>,
    /// When each issuer was last fetched (or tried).
    attempts: tokio::sync::Mutex<HashMap<String, Instant>>,
    /// One lock per issuer, held while fetching it: requests that need keys
    /// being fetched wait for that fetch instead of being refused by the
    /// rate limit, and a slow issuer holds up only its own requests.
    fetching: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Fetches that succeeded, for metrics.
    fetched: AtomicU64,
    /// Fetches that failed, for metrics.
    fetch_failures: AtomicU64,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys").finish_non_exhaustive()
    }
}

impl IssuerKeys {
    /// A fetcher trusting the web roots and the CA certificates in
    /// `extra_ca` (PEM), if given.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, String> {
        let http = https_client(extra_ca, CONNECT_TIMEOUT, REQUEST_TIMEOUT)?;
        Ok(Self {
            http,
            cache: tokio::sync::Mutex::new(HashMap::new()),
            attempts: tokio::sync::Mutex::new(HashMap::new()),
            fetching: std::sync::Mutex::new(HashMap::new()),
            fetched: AtomicU64::new(0),
            fetch_failures: AtomicU64::new(0),
        })
    }

    /// How many fetches succeeded and failed since the broker started.
    pub(crate) fn fetch_counts(&self) -> (u64, u64) {
        (
            self.fetched.load(Ordering::Relaxed),
            self.fetch_failures.load(Ordering::Relaxed),
        )
    }

    /// Keys of `issuer` that should include `kid`. The returned set may
    /// still lack it (then the token is refused as signed by an unknown
    /// key); an error means no usable keys at all.
    pub async fn keys_for(
        &self,
        issuer: &TrustedIssuer,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, FetchError> {
        let usable = |cached: &Option<(Arc<KeySet>, Instant)>| {
            cached.as_ref().and_then(|(keys, fetched)| {
                let has_kid = kid.is_some_and(|kid| keys.get(kid).is_some());
                (has_kid && fetched.elapsed() < MAX_KEY_AGE).then(|| Arc::clone(keys))
            })
        };
        if let Some(keys) = usable(&self.cached(issuer.url()).await) {
            return Ok(keys);
        }
        // One fetch at a time; whoever waited looks at the cache again.
        let lock = {
            let mut locks = match self.fetching.lock() {
                Ok(locks) => locks,
                Err(poisoned) => poisoned.into_inner(),
            };
            Arc::clone(locks.entry(issuer.url().to_owned()).or_default())
        };
        let _fetching = lock.lock().await;
        let cached = self.cached(issuer.url()).await;
        if let Some(keys) = usable(&cached) {
            return Ok(keys);
        }
        // Fetch, unless this issuer was fetched (or tried) just now.
        let may_fetch = {
            let mut attempts = self.attempts.lock().await;
            let recent = attempts
                .get(issuer.url())
                .is_some_and(|at| at.elapsed() < MIN_REFETCH);
            if !recent {
                attempts.insert(issuer.url().to_owned(), Instant::now());
            }
            !recent
        };
        if may_fetch {
            let fetched = self.fetch(issuer).await;
            let counter = match &fetched {
                Ok(_) => &self.fetched,
                Err(_) => &self.fetch_failures,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match fetched {
                Ok(keys) => {
                    let keys = Arc::new(keys);
                    self.cache.lock().await.insert(
                        issuer.url().to_owned(),
                        Cached {
                            keys: Arc::clone(&keys),
                            fetched: Instant::now(),
                        },
                    );
                    return Ok(keys);
                }
                Err(reason) => {
                    tracing::warn!(issuer = issuer.name(), %reason, "could not fetch an issuer's keys");
                    return match cached {
                        Some((keys, fetched)) if fetched.elapsed() < MAX_STALE => Ok(keys),
                        _ => Err(FetchError::Unavailable {
                            issuer: issuer.name().to_owned(),
                            reason,
                        }),
                    };
                }
            }
        }
        match cached {
            Some((keys, fetched)) if fetched.elapsed() < MAX_STALE => Ok(keys),
            _ => Err(FetchError::Unavailable {
                issuer: issuer.name().to_owned(),
                reason: "it could not be reached moments ago; not retrying yet".to_owned(),
            }),
        }
    }

    async fn cached(&self, url: &str) -> Option<(Arc<KeySet>, Instant)> {
        self.cache
            .lock()
            .await
            .get(url)
            .map(|c| (Arc::clone(&c.keys), c.fetched))
    }

    async fn fetch(&self, issuer: &TrustedIssuer) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.url().trim_end_matches('/')
        );
        let discovery: Discovery = serde_json::from_slice(&self.get(&discovery_url).await?)
            .map_err(|_| "the discovery document is not the expected JSON".to_owned())?;
        if discovery.issuer != issuer.url() {
            return Err(format!(
                "the discovery document names issuer {:?}, not {:?}",
                discovery.issuer,
                issuer.url()
            ));
        }
        if !discovery.jwks_uri.starts_with("https://") {
            return Err("the discovery document's jwks_uri is not https".to_owned());
        }
        let set: JwkSet = serde_json::from_slice(&self.get(&discovery.jwks_uri).await?)
            .map_err(|_| "the JWK set is not the expected JSON".to_owned())?;
        let mut keys = KeySet::new();
        for jwk in &set.keys {
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) if issuer.algorithms().contains(&key.alg()) => keys.insert(key),
                Ok(_) => {}
                Err(error) => tracing::debug!(issuer = issuer.name(), %error, "skipping a JWK"),
            }
        }
        if keys.is_empty() {
            return Err("the JWK set has no usable key of an allowed algorithm".to_owned());
        }
        Ok(keys)
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| describe(url, &e))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_DOCUMENT_LEN as u64)
        {
            return Err(format!("{url} answered more than {MAX_DOCUMENT_LEN} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(url, &e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_LEN {
                return Err(format!("{url} answered more than {MAX_DOCUMENT_LEN} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

fn describe(url: &str, error: &reqwest::Error) -> String {
    let mut text = format!("{url}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
