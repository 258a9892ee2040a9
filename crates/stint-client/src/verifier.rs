//! Offline verification of Stint access tokens, for connectors and the
//! services they call.

use crate::client::{Connection, Credentials, form_encode, read_json};
use crate::error::Error;
use crate::revocations::{RevocationView, ViewConfig};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stint_core::access_token::{self, Expectations, MAX_LEEWAY_SECS, TokenError};
use stint_core::claims::AccessTokenClaims;
use stint_core::jose::{KeySet, VerifyingKey};
use stint_proto::{IntrospectionResponse, JwkSet};

/// The default clock leeway on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The default shortest time between two JWKS fetches caused by tokens
/// naming an unknown key (so a flood of forged `kid`s cannot make the
/// verifier hammer the broker).
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// The default age after which the key set is fetched again, so that keys
/// the broker has stopped publishing (a retired or compromised key) stop
/// being trusted here too.
pub const DEFAULT_MAX_KEY_AGE: Duration = Duration::from_secs(300);
/// The default time an introspection answer is reused.
pub const DEFAULT_INTROSPECTION_CACHE: Duration = Duration::from_secs(5);
/// The most introspection answers kept.
const MAX_CACHED_ANSWERS: usize = 10_000;

/// Build a [`Verifier`].
#[derive(Debug)]
pub struct VerifierBuilder {
    connection: Connection,
    audience: Option<String>,
    any_audience: bool,
    leeway: Duration,
    min_refresh_interval: Duration,
    max_key_age: Duration,
    introspection: Option<(Credentials, Duration)>,
    revocation_feed: Option<(Credentials, Duration)>,
    fail_open: bool,
    error: Option<Error>,
}

impl VerifierBuilder {
    /// Accept only tokens whose `aud` is `audience`: the name of the system
    /// this verifier protects. Required, unless [`Self::any_audience`].
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Accept tokens for any audience. Only for tools that inspect tokens
    /// (like `stint verify`); a service must pin its own audience.
    pub fn any_audience(mut self) -> Self {
        self.any_audience = true;
        self
    }

    /// Tolerate this much clock difference on `exp` and `nbf` (default
    /// 30 s, at most 5 minutes).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The shortest time between two key refreshes caused by an unknown
    /// `kid` (default 10 s).
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        self.min_refresh_interval = interval;
        self
    }

    /// Fetch the key set again once it is this old (default 5 minutes), on
    /// the next verification, so that keys the broker no longer publishes
    /// stop verifying here. If that fetch fails, the keys held are kept (and
    /// the failure logged): the broker being down does not stop
    /// verification.
    pub fn max_key_age(mut self, age: Duration) -> Self {
        self.max_key_age = age;
        self
    }

    /// Also ask the broker's introspection endpoint, authenticated as
    /// `credentials`, whether a token is still active
    /// ([`Verifier::verify_active`]), reusing each answer for `cache` (5 s
    /// is a good default: a revocation then reaches this verifier within
    /// that time).
    pub fn introspection(mut self, credentials: Credentials, cache: Duration) -> Self {
        self.introspection = Some((credentials, cache));
        self
    }

    /// Follow the broker's revocations (`/v1/revocations/stream`,
    /// authenticated as `credentials`): tokens are refused as
    /// [`Error::Revoked`] the moment the broker publishes their revocation
    /// (by token, job or approval). If nothing at all is heard from the
    /// broker for `max_staleness` (it sends a keep-alive every 15 s by
    /// default; 45 s is a good bound), tokens are refused as
    /// [`Error::RevocationStateStale`]: fail closed.
    pub fn revocation_feed(mut self, credentials: Credentials, max_staleness: Duration) -> Self {
        self.revocation_feed = Some((credentials, max_staleness));
        self
    }

    /// With [`Self::revocation_feed`]: accept tokens anyway when the
    /// revocation state is stale (logged as an error on every such
    /// verification). A revoked token is then accepted while the broker is
    /// unreachable; choose it only where availability matters more.
    pub fn revocation_fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    /// Trust the CA certificates in this PEM bundle, besides the built-in
    /// web roots.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.connection.add_ca_pem(pem.into());
        self
    }

    /// Trust the CA certificates in this PEM file.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        if let Err(error) = self.connection.add_ca_file(path.as_ref()) {
            self.error.get_or_insert(error);
        }
        self
    }

    /// Trust only the CA certificates given here, not the built-in roots.
    pub fn only_custom_roots(mut self) -> Self {
        self.connection.only_custom_roots();
        self
    }

    /// Discover the broker, fetch its keys, and return the verifier.
    pub async fn build(self) -> Result<Verifier, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.audience.is_none() && !self.any_audience {
            return Err(Error::Config(
                "a verifier needs the audience it protects (VerifierBuilder::audience)".into(),
            ));
        }
        if self.leeway > Duration::from_secs(MAX_LEEWAY_SECS.unsigned_abs()) {
            return Err(Error::Config(format!(
                "a clock leeway over {MAX_LEEWAY_SECS} s defeats short-lived tokens"
            )));
        }
        let http = self.connection.http_client()?;
        let metadata = self.connection.discover(&http).await?;
        let leeway_secs = i64::try_from(self.leeway.as_secs()).unwrap_or(MAX_LEEWAY_SECS);
        let keys = Arc::new(RwLock::new(Arc::new(KeySet::new())));
        let revocations = match self.revocation_feed {
            Some((credentials, max_staleness)) => {
                if max_staleness < Duration::from_millis(100) {
                    return Err(Error::Config(
                        "the revocation staleness bound must be at least 100 ms".into(),
                    ));
                }
                Some(
                    RevocationView::start(ViewConfig {
                        http: http.clone(),
                        stream_http: self.connection.stream_client()?,
                        issuer: self.connection.issuer.clone(),
                        credentials,
                        audience: self.audience.clone(),
                        max_staleness,
                        fail_open: self.fail_open,
                        keys: Arc::clone(&keys),
                        leeway_secs,
                    })
                    .await?,
                )
            }
            None => None,
        };
        let inner = Inner {
            http,
            issuer: self.connection.issuer,
            jwks_uri: metadata.jwks_uri,
            introspection_endpoint: metadata.introspection_endpoint,
            audience: self.audience,
            leeway_secs,
            min_refresh_interval: self.min_refresh_interval,
            max_key_age: self.max_key_age,
            keys,
            fetched: Mutex::new(None),
            last_refresh: tokio::sync::Mutex::new(None),
            introspection: self.introspection,
            answers: Mutex::new(HashMap::new()),
            revocations,
        };
        let verifier = Verifier {
            inner: Arc::new(inner),
        };
        verifier.refresh_keys().await?;
        Ok(verifier)
    }
}

/// Checks Stint access tokens offline, with the broker's published keys.
///
/// It pins everything a token could lie about: the algorithm of each key
/// (from the JWKS; `alg: none` and HMAC are refused), `typ: at+jwt`, the
/// issuer, the audience, and `exp`/`nbf` within a small leeway. An unknown
/// `kid` makes it fetch the JWKS again (at most once per
/// [`VerifierBuilder::min_refresh_interval`]), which is how it picks up a
/// rotated key; and the set is fetched again once it is older than
/// [`VerifierBuilder::max_key_age`], which is how a key the broker stopped
/// publishing stops verifying. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    issuer: String,
    jwks_uri: String,
    introspection_endpoint: String,
    audience: Option<String>,
    leeway_secs: i64,
    min_refresh_interval: Duration,
    max_key_age: Duration,
    /// Shared with the revocation view, which checks status lists with them.
    keys: Arc<RwLock<Arc<KeySet>>>,
    /// When the keys held were fetched.
    fetched: Mutex<Option<Instant>>,
    /// When the keys were last fetched; held while fetching.
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
    introspection: Option<(Credentials, Duration)>,
    /// `jti` to (active, when asked).
    answers: Mutex<HashMap<String, (bool, Instant)>>,
    /// The broker's revocations, if followed.
    revocations: Option<RevocationView>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .field("leeway_secs", &self.inner.leeway_secs)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Start building a verifier for tokens of the broker at `issuer`.
    pub fn builder(issuer: impl Into<String>) -> VerifierBuilder {
        VerifierBuilder {
            connection: Connection::new(issuer),
            audience: None,
            any_audience: false,
            leeway: DEFAULT_LEEWAY,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            max_key_age: DEFAULT_MAX_KEY_AGE,
            introspection: None,
            revocation_feed: None,
            fail_open: false,
            error: None,
        }
    }

    /// The issuer this verifier accepts.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Verify `token` offline. Fetches the keys again if they are older than
    /// the maximum key age, or if the token names a key not seen yet (both
    /// rate-limited).
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, Error> {
        if self.keys_are_old() {
            self.refresh_old_keys().await;
        }
        match self.verify_with_cached_keys(token) {
            Err(Error::InvalidToken(TokenError::UnknownKey)) => {
                let Some(kid) = access_token::key_id(token) else {
                    return Err(TokenError::UnknownKey.into());
                };
                if self.refresh_for(&kid).await? {
                    self.verify_with_cached_keys(token)
                } else {
                    Err(TokenError::UnknownKey.into())
                }
            }
            other => other,
        }
    }

    /// Verify `token` presented over a TLS connection authenticated with the
    /// client certificate `certificate_der`: as [`Self::verify`], and a
    /// certificate-bound token (`cnf`, RFC 8705) must be bound to exactly
    /// this certificate.
    pub async fn verify_with_certificate(
        &self,
        token: &str,
        certificate_der: &[u8],
    ) -> Result<VerifiedToken, Error> {
        let verified = match self.verify(token).await {
            Err(Error::InvalidToken(TokenError::CertificateBound)) => {
                self.verify_unbound_check_skipped(token)?
            }
            other => other?,
        };
        if let Some(bound) = &verified.claims.cnf {
            let presented = stint_core::claims::confirmation_for_certificate(certificate_der);
            if presented != *bound {
                return Err(TokenError::CertificateMismatch.into());
            }
        }
        Ok(verified)
    }

    /// Verify `token` with the keys already fetched, without any network
    /// call: what [`Self::verify`] does when the key is known. A
    /// certificate-bound token is refused here
    /// ([`TokenError::CertificateBound`]): use
    /// [`Self::verify_with_certificate`].
    pub fn verify_with_cached_keys(&self, token: &str) -> Result<VerifiedToken, Error> {
        let verified = self.verify_unbound_check_skipped(token)?;
        if verified.claims.cnf.is_some() {
            return Err(TokenError::CertificateBound.into());
        }
        Ok(verified)
    }

    fn verify_unbound_check_skipped(&self, token: &str) -> Result<VerifiedToken, Error> {
        let keys = match self.inner.keys.read() {
            Ok(keys) => Arc::clone(&keys),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        let expect = Expectations {
            issuer: &self.inner.issuer,
            audience: self.inner.audience.as_deref(),
            leeway_secs: self.inner.leeway_secs,
        };
        let claims = access_token::verify(token, &keys, &expect, unix_now())?;
        if let Some(revocations) = &self.inner.revocations {
            revocations.check(&claims)?;
        }
        Ok(VerifiedToken { claims })
    }

    /// Verify `token` offline, then ask the broker whether it is still
    /// active (not revoked, its job not completed). Needs
    /// [`VerifierBuilder::introspection`]. Answers are reused for the
    /// configured cache time; an unreachable broker is an error (fail
    /// closed), never a pass.
    pub async fn verify_active(&self, token: &str) -> Result<VerifiedToken, Error> {
        let verified = self.verify(token).await?;
        let Some((credentials, cache)) = &self.inner.introspection else {
            return Err(Error::Config(
                "verify_active needs VerifierBuilder::introspection".into(),
            ));
        };
        let jti = verified.claims.jti.clone();
        let cached = self.cached_answer(&jti, *cache);
        let active = match cached {
            Some(active) => active,
            None => {
                let active = self.introspect(credentials, token).await?.active;
                self.remember(jti, active, *cache);
                active
            }
        };
        if active {
            Ok(verified)
        } else {
            Err(Error::Inactive)
        }
    }

    /// Fetch the broker's JWKS now, replacing the keys held.
    pub async fn refresh_keys(&self) -> Result<(), Error> {
        let mut last = self.inner.last_refresh.lock().await;
        self.fetch_keys().await?;
        *last = Some(Instant::now());
        Ok(())
    }

    fn keys_are_old(&self) -> bool {
        let fetched = match self.inner.fetched.lock() {
            Ok(fetched) => *fetched,
            Err(poisoned) => *poisoned.into_inner(),
        };
        fetched.is_none_or(|at| at.elapsed() >= self.inner.max_key_age)
            // A status list named a key not held: a rotation.
            || self
                .inner
                .revocations
                .as_ref()
                .is_some_and(RevocationView::keys_wanted)
    }

    /// Fetch the keys again because they are old, unless another task just
    /// did or the rate limit says no. A failure keeps the keys held.
    async fn refresh_old_keys(&self) {
        let mut last = self.inner.last_refresh.lock().await;
        if !self.keys_are_old()
            || last.is_some_and(|at| at.elapsed() < self.inner.min_refresh_interval)
        {
            return;
        }
        *last = Some(Instant::now());
        if let Err(error) = self.fetch_keys().await {
            tracing::warn!(%error, "could not refresh the broker's keys; keeping the ones held");
        }
    }

    /// Refresh for an unknown `kid`, unless another task just did or the
    /// rate limit says no. Returns whether `kid` is now known.
    async fn refresh_for(&self, kid: &str) -> Result<bool, Error> {
        let mut last = self.inner.last_refresh.lock().await;
        if self.knows(kid) {
            return Ok(true);
        }
        if last.is_some_and(|at| at.elapsed() < self.inner.min_refresh_interval) {
            tracing::debug!("unknown key id; not refreshing the keys again so soon");
            return Ok(false);
        }
        *last = Some(Instant::now());
        self.fetch_keys().await?;
        Ok(self.knows(kid))
    }

    fn knows(&self, kid: &str) -> bool {
        match self.inner.keys.read() {
            Ok(keys) => keys.get(kid).is_some(),
            Err(poisoned) => poisoned.into_inner().get(kid).is_some(),
        }
    }

    async fn fetch_keys(&self) -> Result<(), Error> {
        let url = &self.inner.jwks_uri;
        let response = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Error::unreachable(url, &e))?;
        let set: JwkSet = read_json(url, response).await?;
        let mut keys = KeySet::new();
        for jwk in &set.keys {
            match VerifyingKey::from_jwk(jwk) {
                Ok(key) => keys.insert(key),
                Err(error) => tracing::debug!(%error, "skipping an unusable JWK"),
            }
        }
        if keys.is_empty() {
            return Err(Error::protocol(url, "the JWK set holds no usable key"));
        }
        let keys = Arc::new(keys);
        match self.inner.keys.write() {
            Ok(mut held) => *held = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
        match self.inner.fetched.lock() {
            Ok(mut fetched) => *fetched = Some(Instant::now()),
            Err(poisoned) => *poisoned.into_inner() = Some(Instant::now()),
        }
        if let Some(revocations) = &self.inner.revocations {
            revocations.keys_fetched();
        }
        Ok(())
    }

    async fn introspect(
        &self,
        credentials: &Credentials,
        token: &str,
    ) -> Result<IntrospectionResponse, Error> {
        let url = &self.inner.introspection_endpoint;
        let response = self
            .inner
            .http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, credentials.basic())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(format!("token={}", form_encode(token)))
            .send()
            .await
            .map_err(|e| Error::unreachable(url, &e))?;
        read_json(url, response).await
    }

    fn cached_answer(&self, jti: &str, cache: Duration) -> Option<bool> {
        let answers = match self.inner.answers.lock() {
            Ok(answers) => answers,
            Err(poisoned) => poisoned.into_inner(),
        };
        answers
            .get(jti)
            .filter(|(_, at)| at.elapsed() < cache)
            .map(|(active, _)| *active)
    }

    fn remember(&self, jti: String, active: bool, cache: Duration) {
        let mut answers = match self.inner.answers.lock() {
            Ok(answers) => answers,
            Err(poisoned) => poisoned.into_inner(),
        };
        if answers.len() >= MAX_CACHED_ANSWERS {
            answers.retain(|_, (_, at)| at.elapsed() < cache);
            if answers.len() >= MAX_CACHED_ANSWERS {
                answers.clear();
            }
        }
        answers.insert(jti, (active, Instant::now()));
    }
}

/// A token that passed every check, and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    claims: AccessTokenClaims,
}

impl VerifiedToken {
    /// Whether the token allows `action` on `resource`, e.g.
    /// `allows("deploy", "k8s/staging/web")`, by the broker's own scope
    /// matcher.
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        access_token::allows(self.claims.scopes(), action, resource)
    }

    /// The workload (`sub`).
    pub fn subject(&self) -> &str {
        &self.claims.sub
    }

    /// The job.
    pub fn job(&self) -> &str {
        &self.claims.job
    }

    /// The step.
    pub fn step(&self) -> &str {
        &self.claims.step
    }

    /// The token's id (`jti`).
    pub fn id(&self) -> &str {
        &self.claims.jti
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.claims.scopes()
    }

    /// When it expires.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.claims.exp.max(0).unsigned_abs())
    }

    /// Every claim.
    pub fn claims(&self) -> &AccessTokenClaims {
        &self.claims
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
