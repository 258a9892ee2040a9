//! GitHub installation tokens: Stint, as a GitHub App, asks GitHub for a
//! token that carries exactly the repositories and permissions a step's
//! scopes name (`POST /app/installations/{id}/access_tokens`), checks that
//! GitHub granted no more, and revokes it (`DELETE /installation/token`)
//! when the step ends.
//!
//! GitHub fixes a token's lifetime at one hour and only the token itself
//! can revoke it, so the token is kept, sealed with AES-256-GCM under the
//! target's `token_key_file`, until it is revoked or GitHub's hour is
//! over; never in the clear, never in a log line or an error.
//!
//! Every answer's `x-ratelimit-remaining` is kept, by what GitHub meters
//! (the App for App-JWT requests, the installation for token requests),
//! for the metrics. A rate-limit answer (403 with no budget left, or a
//! secondary limit, or 429) closes the target to GitHub calls until its
//! `retry-after` (or `x-ratelimit-reset`, or a minute) has passed: mints
//! fail fast meanwhile and the revocation queue waits at least that long.

use crate::queue::{
    CreateFailure, Created, Destroyed, Made, Planned, TargetClient, UpstreamFailure,
};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stint_core::scope::Scope;
use stint_core::target::github::{self as plan, GithubTarget};
use stint_core::target_credential::UpstreamGrant;
use stint_proto::GithubToken;

/// The longest answer body read from GitHub, in bytes.
/// (A token's answer holds a full repository object for each of up to
/// 500 repositories, a few KB each.)
const MAX_BODY_LEN: usize = 8 * 1024 * 1024;
/// The longest installation token accepted (GitHub's newer tokens are
/// longer than the classic 40 characters).
const MAX_TOKEN_LEN: usize = 4096;
/// Slack on GitHub's `expires_at`, for clocks that disagree.
const EXPIRY_SLACK_SECS: i64 = 300;
/// The longest App key file read, in bytes.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// How long an installation found for an owner is remembered.
const INSTALLATION_TTL: Duration = Duration::from_secs(600);
/// How long "no installation for this owner" is remembered.
const NO_INSTALLATION_TTL: Duration = Duration::from_secs(60);
/// The longest a rate limit closes the target, whatever GitHub says.
const MAX_BACKOFF_SECS: u64 = 3600;
/// How long to wait after a secondary rate limit that names no time
/// (GitHub: "wait for at least one minute").
const SECONDARY_LIMIT_SECS: u64 = 60;
/// The App JWT's `iat` is set this far in the past, against clock drift
/// (GitHub's recommendation).
const JWT_BACKDATE_SECS: i64 = 60;
/// And its `exp` this far ahead: GitHub allows at most ten minutes.
const JWT_LIFETIME_SECS: i64 = 540;
/// The REST API version Stint speaks.
const API_VERSION: &str = "2022-11-28";
/// What a sealed token is bound to.
const SEAL_AAD: &[u8] = b"stint github installation token v1";

/// A GitHub target ready to ask for installation tokens.
pub struct GithubClient {
    target: GithubTarget,
    http: reqwest::Client,
    app_key: RsaKeyPair,
    sealer: Sealer,
    rng: SystemRandom,
    /// Owner (lowercase) to its installation, or none, and until when.
    installations: Mutex<HashMap<String, (Option<u64>, Instant)>>,
    /// `x-ratelimit-remaining` by what GitHub meters (`app`, or an
    /// installation id).
    rate_limits: Mutex<BTreeMap<String, i64>>,
    /// No GitHub call before this (a rate limit said so).
    closed_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubClient")
            .field("api_url", &self.target.api_url)
            .finish_non_exhaustive()
    }
}

/// Read and check a GitHub target's files: the App's private key and the
/// token key. At policy load, so that a broken file refuses the policy
/// with the file and the reason. Errors never hold key material.
pub fn check_files(target: &GithubTarget) -> Result<(), String> {
    load_app_key(&target.private_key_file)?;
    Sealer::from_file(&target.token_key_file)?;
    if let Some(ca) = &target.ca_file {
        certificates(ca)?;
    }
    Ok(())
}

/// Build the client of a GitHub target.
pub fn connect(target: &GithubTarget) -> Result<Arc<dyn TargetClient>, String> {
    let app_key = load_app_key(&target.private_key_file)?;
    let sealer = Sealer::from_file(&target.token_key_file)?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(target.timeout_secs))
        .connect_timeout(Duration::from_secs(target.timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("stint/", env!("CARGO_PKG_VERSION")))
        .https_only(target.api_url.starts_with("https://"));
    if let Some(ca) = &target.ca_file {
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates(ca)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    let http = builder
        .build()
        .map_err(|e| format!("cannot build its HTTPS client: {e}"))?;
    Ok(Arc::new(GithubClient {
        target: target.clone(),
        http,
        app_key,
        sealer,
        rng: SystemRandom::new(),
        installations: Mutex::new(HashMap::new()),
        rate_limits: Mutex::new(BTreeMap::new()),
        closed_until: Mutex::new(None),
    }))
}

fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open {what} {}: {e}", path.display()))?;
    if let Ok(metadata) = file.metadata()
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "{what} is readable by group or others: chmod 600 it");
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{what} {} is larger than {limit} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The App's private key: an RSA key in PKCS#1 (`BEGIN RSA PRIVATE KEY`,
/// what GitHub hands out) or PKCS#8 (`BEGIN PRIVATE KEY`) PEM.
fn load_app_key(path: &Path) -> Result<RsaKeyPair, String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    let what = "the GitHub App's private key";
    let pem = read_bounded(path, MAX_KEY_FILE_LEN, what)?;
    let refused = |why: String| format!("{what} {} cannot be used: {why}", path.display());
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| refused("it is not a PEM private key".into()))?;
    let key = match &der {
        PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
        _ => {
            return Err(refused(
                "it is not an RSA key (GitHub App keys are RSA)".into(),
            ));
        }
    }
    .map_err(|e| refused(format!("ring refuses it as an RSA key ({e})")))?;
    Ok(key)
}

fn certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = read_bounded(path, 1024 * 1024, "the GitHub target's ca_file")?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("ca_file {} is not a PEM bundle: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("ca_file {} holds no certificate", path.display()));
    }
    Ok(certificates)
}

/// Seals installation tokens under the target's token key
/// ([`stint_core::seal`]), bound to what they are.
struct Sealer(stint_core::seal::Sealer);

impl Sealer {
    /// The key: a file of exactly 32 bytes, or of 64 hex digits (and a
    /// final newline).
    fn from_file(path: &Path) -> Result<Self, String> {
        let what = "the GitHub target's token_key_file";
        let bytes = read_bounded(path, 128, what)?;
        stint_core::seal::Sealer::from_key_file_bytes(&bytes)
            .map(Self)
            .ok_or_else(|| {
                format!(
                    "{what} {} must hold 32 random bytes, or 64 hex digits (head -c 32 /dev/urandom > FILE)",
                    path.display()
                )
            })
    }

    fn seal(&self, secret: &str, rng: &SystemRandom) -> Result<Vec<u8>, String> {
        self.0
            .seal(secret.as_bytes(), SEAL_AAD, rng)
            .map_err(|_| "could not seal the token".to_owned())
    }

    fn unseal(&self, sealed: &[u8]) -> Result<String, String> {
        use stint_core::seal::SealError;
        let plain = self.0.unseal(sealed, SEAL_AAD).map_err(|why| match why {
            SealError::OtherKey => {
                "the token was sealed under another token_key_file: restore that key to revoke it"
                    .to_owned()
            }
            SealError::DoesNotOpen => {
                "the sealed token does not open under the token_key_file".to_owned()
            }
            SealError::Malformed | SealError::Failed => {
                "the sealed token is not in a form this stintd knows".to_owned()
            }
        })?;
        String::from_utf8(plain).map_err(|_| "the sealed token is not text".into())
    }
}

/// The host git reaches for an API: `github.com` for the public API,
/// `HOST` for GitHub Enterprise Server's `https://HOST/api/v3`, else the
/// API's own host.
fn git_host(api_url: &str) -> String {
    let rest = api_url
        .strip_prefix("https://")
        .or_else(|| api_url.strip_prefix("http://"))
        .unwrap_or(api_url);
    let host = rest.split('/').next().unwrap_or(rest);
    if host.eq_ignore_ascii_case("api.github.com") {
        "github.com".to_owned()
    } else {
        host.to_owned()
    }
}

/// An answer from GitHub, read within bounds.
struct Answer {
    status: u16,
    request_id: Option<String>,
    body: Vec<u8>,
    retry_after: Option<u64>,
    remaining: Option<i64>,
    reset: Option<i64>,
}

impl Answer {
    /// GitHub's `message`, cut short and stripped of control characters
    /// (it reaches logs and the audit), with the request id.
    fn message(&self) -> String {
        let message = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", self.status));
        let mut clean: String = message
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(300)
            .collect();
        if let Some(id) = &self.request_id {
            clean.push_str(&format!(" (GitHub request id {id})"));
        }
        clean
    }

    /// Whether this is a rate-limit answer, and how long to wait.
    fn rate_limited(&self, now: i64) -> Option<u64> {
        let secondary = self.status == 403
            && self
                .message()
                .to_ascii_lowercase()
                .contains("secondary rate limit");
        let primary = self.status == 403 && self.remaining == Some(0);
        if self.status != 429 && !secondary && !primary {
            return None;
        }
        let wait = self
            .retry_after
            .or_else(|| {
                self.reset
                    .filter(|_| self.remaining == Some(0))
                    .map(|reset| u64::try_from(reset - now).unwrap_or(0).max(1))
            })
            .unwrap_or(SECONDARY_LIMIT_SECS);
        Some(wait.clamp(1, MAX_BACKOFF_SECS))
    }
}

/// What a GitHub call failed with, before the queue sees it.
enum CallError {
    /// No answer: unreachable, timed out, cut.
    NoAnswer(String),
    /// The target is closed by a rate limit for this long.
    Closed(u64),
}

/// GitHub's answer to an installation token request.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    token: String,
    expires_at: String,
    #[serde(default)]
    permissions: BTreeMap<String, String>,
    #[serde(default)]
    repository_selection: String,
    #[serde(default)]
    repositories: Vec<RepositoryAnswer>,
}

#[derive(serde::Deserialize)]
struct RepositoryAnswer {
    name: String,
}

#[derive(serde::Deserialize)]
struct InstallationAnswer {
    id: u64,
}

impl GithubClient {
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// An App JWT: RS256, integer `iat` a minute in the past and `exp`
    /// nine minutes ahead (GitHub allows ten), `iss` the App.
    fn app_jwt(&self) -> Result<String, String> {
        let now = self.now();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iat": now - JWT_BACKDATE_SECS,
            "exp": now + JWT_LIFETIME_SECS,
            "iss": self.target.app.issuer(),
        });
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let mut signature = vec![0u8; self.app_key.public().modulus_len()];
        self.app_key
            .sign(
                &RSA_PKCS1_SHA256,
                &self.rng,
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "could not sign the App JWT".to_owned())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    fn closed_for(&self) -> Option<u64> {
        let until = *self.closed_until.lock().unwrap_or_else(|p| p.into_inner());
        until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .map(|left| left.as_secs().max(1))
    }

    fn close_for(&self, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut closed = self.closed_until.lock().unwrap_or_else(|p| p.into_inner());
        if closed.is_none_or(|at| at < until) {
            *closed = Some(until);
        }
    }

    /// A failure after which GitHub may have made a token Stint does not
    /// hold: it stops working by itself within the hour.
    fn maybe_made(&self, failure: UpstreamFailure) -> CreateFailure {
        CreateFailure {
            expires_by: Some(self.now() + 3600 + EXPIRY_SLACK_SECS),
            ..CreateFailure::maybe(failure)
        }
    }

    /// One request to GitHub, `credential` as its `Authorization`, the
    /// answer's budget kept under `metered`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        credential: &str,
        body: Option<&serde_json::Value>,
        metered: &str,
    ) -> Result<Answer, CallError> {
        if let Some(left) = self.closed_for() {
            return Err(CallError::Closed(left));
        }
        let url = format!("{}{path}", self.target.api_url);
        let mut request = self
            .http
            .request(method, &url)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", API_VERSION)
            .bearer_auth(credential);
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request.send().await.map_err(|e| {
            CallError::NoAnswer(format!(
                "GitHub at {} did not answer: {}",
                self.target.api_url,
                without_url(&e)
            ))
        })?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| {
                    v.chars()
                        .filter(|c| !c.is_control())
                        .take(100)
                        .collect::<String>()
                })
        };
        let number = |name: &str| header(name).and_then(|v| v.trim().parse::<i64>().ok());
        let status = response.status().as_u16();
        let request_id = header("x-github-request-id");
        let remaining = number("x-ratelimit-remaining");
        let reset = number("x-ratelimit-reset");
        let retry_after = number("retry-after").and_then(|v| u64::try_from(v).ok());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY_LEN {
                        return Err(CallError::NoAnswer(format!(
                            "GitHub's answer is larger than {MAX_BODY_LEN} bytes"
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(CallError::NoAnswer(format!(
                        "GitHub's answer was cut: {}",
                        without_url(&e)
                    )));
                }
            }
        }
        if let Some(left) = remaining {
            self.rate_limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(metered.to_owned(), left);
        }
        let answer = Answer {
            status,
            request_id,
            body,
            retry_after,
            remaining,
            reset,
        };
        if let Some(wait) = answer.rate_limited(self.now()) {
            tracing::warn!(api = %self.target.api_url, wait_secs = wait, message = %answer.message(), "GitHub rate limit: no calls until it passes");
            self.close_for(wait);
        }
        Ok(answer)
    }

    /// The installation of `owner`, from the cache or GitHub (an
    /// organization's, else a user's).
    async fn installation(&self, owner: &str) -> Result<u64, CreateFailure> {
        let key = owner.to_ascii_lowercase();
        if let Some((found, until)) = self
            .installations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            && until > Instant::now()
        {
            return found.ok_or_else(|| not_installed(owner, "remembered from a recent look-up"));
        }
        let jwt = self.app_jwt().map_err(refused_internal)?;
        let mut last = None;
        for path in [
            format!("/orgs/{owner}/installation"),
            format!("/users/{owner}/installation"),
        ] {
            let answer = self
                .call(reqwest::Method::GET, &path, &jwt, None, "app")
                .await
                .map_err(nothing_made)?;
            match answer.status {
                200 => {
                    let found: InstallationAnswer =
                        serde_json::from_slice(&answer.body).map_err(|_| {
                            nothing(UpstreamFailure::Unavailable(
                                "GitHub's installation answer is malformed".into(),
                            ))
                        })?;
                    self.remember(&key, Some(found.id), INSTALLATION_TTL);
                    return Ok(found.id);
                }
                404 => last = Some(answer),
                _ => return Err(of_request(nothing(self.failure(&answer)), &answer)),
            }
        }
        self.remember(&key, None, NO_INSTALLATION_TTL);
        let why = last.map_or_else(String::new, |a| a.message());
        Err(not_installed(owner, &why))
    }

    fn remember(&self, owner: &str, installation: Option<u64>, ttl: Duration) {
        let mut cache = self.installations.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.retain(|_, (_, until)| *until > Instant::now());
        }
        cache.insert(owner.to_owned(), (installation, Instant::now() + ttl));
    }

    /// An error answer as the queue sees it.
    fn failure(&self, answer: &Answer) -> UpstreamFailure {
        if let Some(wait) = answer.rate_limited(self.now()) {
            return UpstreamFailure::RateLimited {
                retry_after_secs: wait,
                message: answer.message(),
            };
        }
        if answer.status >= 500 {
            return UpstreamFailure::Unavailable(format!(
                "GitHub answered {}: {}",
                answer.status,
                answer.message()
            ));
        }
        UpstreamFailure::Refused {
            code: format!("github:{}", answer.status),
            message: answer.message(),
        }
    }

    /// Revoke `token` (GitHub: 204 revoked, 401 not valid any more).
    async fn revoke(&self, token: &str, metered: &str) -> Result<Destroyed, UpstreamFailure> {
        let answer = match self
            .call(
                reqwest::Method::DELETE,
                "/installation/token",
                token,
                None,
                metered,
            )
            .await
        {
            Ok(answer) => answer,
            Err(CallError::NoAnswer(why)) => return Err(UpstreamFailure::Unavailable(why)),
            Err(CallError::Closed(wait)) => {
                return Err(UpstreamFailure::RateLimited {
                    retry_after_secs: wait,
                    message: "a GitHub rate limit is in force".into(),
                });
            }
        };
        match answer.status {
            204 => Ok(Destroyed {
                existed: true,
                terminated: 0,
            }),
            401 => Ok(Destroyed {
                existed: false,
                terminated: 0,
            }),
            _ => Err(match self.failure(&answer) {
                // Anything else is worth trying again later.
                UpstreamFailure::Refused { code, message } => {
                    UpstreamFailure::Unavailable(format!("GitHub answered {code}: {message}"))
                }
                other => other,
            }),
        }
    }
}

/// A reqwest error without its URL (it carries no secret, but the message
/// stays short).
fn without_url(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    if let Some(source) = error.source() {
        text.push_str(&format!(" ({source})"));
    }
    text
}

fn nothing(failure: UpstreamFailure) -> CreateFailure {
    CreateFailure {
        failure,
        made: Made::Nothing,
        request_id: None,
        expires_by: None,
    }
}

/// `failure` with the id of GitHub's request that failed.
fn of_request(mut failure: CreateFailure, answer: &Answer) -> CreateFailure {
    failure.request_id.clone_from(&answer.request_id);
    failure
}

fn nothing_made(error: CallError) -> CreateFailure {
    nothing(match error {
        CallError::NoAnswer(why) => UpstreamFailure::Unavailable(why),
        CallError::Closed(wait) => UpstreamFailure::RateLimited {
            retry_after_secs: wait,
            message: "a GitHub rate limit is in force: Stint calls GitHub again when it has passed"
                .into(),
        },
    })
}

fn refused_internal(why: String) -> CreateFailure {
    nothing(UpstreamFailure::Unavailable(why))
}

fn not_installed(owner: &str, why: &str) -> CreateFailure {
    nothing(UpstreamFailure::Refused {
        code: "github:404".into(),
        message: format!(
            "the GitHub App is not installed on account {owner:?}: install it there (with the repositories and permissions the policy names) {why}"
        )
        .trim_end()
        .to_owned(),
    })
}

fn sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[async_trait]
impl TargetClient for GithubClient {
    fn kind(&self) -> &'static str {
        "github"
    }

    fn server(&self) -> String {
        self.target.api_url.clone()
    }

    fn database(&self) -> Option<String> {
        None
    }

    fn plan(
        &self,
        target: &str,
        scopes: &[Scope],
        _expires_at: i64,
        rng: &SystemRandom,
    ) -> Result<Planned, String> {
        let planned = plan::plan(target, scopes).map_err(|e| e.to_string())?;
        let mut handle = [0u8; 12];
        rng.fill(&mut handle)
            .map_err(|_| "could not generate randomness".to_owned())?;
        let mut privileges: Vec<String> = planned
            .permissions
            .iter()
            .map(|(name, level)| format!("{name}={}", level.as_str()))
            .collect();
        privileges.extend(
            planned
                .repositories
                .iter()
                .map(|repo| format!("repository={}/{repo}", planned.owner)),
        );
        Ok(Planned {
            // Until GitHub answers: then the token's hash.
            upstream_id: format!("pending-{}", URL_SAFE_NO_PAD.encode(handle)),
            secret: String::new(),
            privileges,
            effective: planned.effective_scopes(target),
            request: vec![planned.request_body().to_string()],
            postgres: None,
            github: Some(planned),
        })
    }

    async fn create(&self, planned: &Planned) -> Result<Created, CreateFailure> {
        let Some(wanted) = planned.github.as_ref() else {
            return Err(nothing(UpstreamFailure::Unavailable(
                "internal: a GitHub credential without its plan".into(),
            )));
        };
        // Never ask without explicit repositories and permissions: GitHub
        // would grant the whole installation.
        if wanted.repositories.is_empty() || wanted.permissions.is_empty() {
            return Err(nothing(UpstreamFailure::Unavailable(
                "internal: refusing to ask GitHub for a token without repositories and permissions"
                    .into(),
            )));
        }
        let installation = self.installation(&wanted.owner).await?;
        let jwt = self.app_jwt().map_err(refused_internal)?;
        let answer = match self
            .call(
                reqwest::Method::POST,
                &format!("/app/installations/{installation}/access_tokens"),
                &jwt,
                Some(&wanted.request_body()),
                "app",
            )
            .await
        {
            Ok(answer) => answer,
            // No answer: GitHub may have made a token Stint never saw.
            Err(CallError::NoAnswer(why)) => {
                return Err(self.maybe_made(UpstreamFailure::Unavailable(why)));
            }
            Err(closed) => return Err(nothing_made(closed)),
        };
        if !matches!(answer.status, 200 | 201) {
            if answer.status == 404 {
                // The installation is gone: look it up again next time.
                self.installations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&wanted.owner.to_ascii_lowercase());
            }
            // GitHub answered, with an error: it made no token. (Only a
            // request left without an answer may have made one.)
            return Err(of_request(nothing(self.failure(&answer)), &answer));
        }
        let granted: TokenAnswer = match serde_json::from_slice(&answer.body) {
            Ok(granted) => granted,
            Err(_) => {
                return Err(self.maybe_made(UpstreamFailure::Unavailable(format!(
                    "GitHub's token answer is malformed (request id {})",
                    answer.request_id.as_deref().unwrap_or("-")
                ))));
            }
        };
        let metered = installation.to_string();
        // The installation goes with the token: its revocation's rate
        // limit is the installation's.
        let sealed = self
            .sealer
            .seal(&format!("{installation}:{}", granted.token), &self.rng)
            .map_err(|why| self.maybe_made(UpstreamFailure::Unavailable(why)));
        let repositories: Vec<String> = granted
            .repositories
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let checked = wanted.check_answer(
            &granted.permissions,
            &granted.repository_selection,
            &repositories,
        );
        let expires_at = chrono::DateTime::parse_from_rfc3339(&granted.expires_at)
            .map(|t| t.timestamp())
            .map_err(|_| "GitHub's expires_at is not an RFC 3339 time".to_owned());
        let now = self.now();
        let token_ok = !granted.token.is_empty()
            && granted.token.len() <= MAX_TOKEN_LEN
            && granted
                .token
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'=' && b != b':');
        let problem = match (&sealed, checked, &expires_at) {
            _ if !token_ok => Some(
                "GitHub's token is not one Stint can hand out (empty, too long, or not visible ASCII)"
                    .to_owned(),
            ),
            (Err(_), _, _) => Some("the token could not be sealed".to_owned()),
            (_, Err(why), _) => Some(format!("GitHub granted other than planned: {why}")),
            (_, _, Err(why)) => Some(why.clone()),
            (_, _, Ok(at)) if *at <= now || *at > now + 3600 + EXPIRY_SLACK_SECS => Some(format!(
                "GitHub's expires_at is {} s from now, not within the hour a token lives: check the clocks",
                at - now
            )),
            _ => None,
        };
        if let Some(problem) = problem {
            // Revoke at once; what cannot be revoked now goes to the queue.
            let message = match self.revoke(&granted.token, &metered).await {
                Ok(_) => format!("{problem}; the token was revoked at once"),
                Err(failure) => {
                    tracing::error!(%failure, "a token GitHub granted wider than planned could not be revoked at once");
                    let made = match sealed {
                        Ok(sealed) => Made::Something(sealed),
                        Err(_) => Made::Maybe,
                    };
                    return Err(CreateFailure {
                        failure: UpstreamFailure::Refused {
                            code: "github:mismatch".into(),
                            message: format!("{problem}; revoking it is queued"),
                        },
                        made,
                        request_id: answer.request_id.clone(),
                        expires_by: Some(self.now() + 3600 + EXPIRY_SLACK_SECS),
                    });
                }
            };
            return Err(of_request(
                nothing(UpstreamFailure::Refused {
                    code: "github:mismatch".into(),
                    message,
                }),
                &answer,
            ));
        }
        let (Ok(sealed), Ok(expires_at)) = (sealed, expires_at) else {
            return Err(self.maybe_made(UpstreamFailure::Unavailable(
                "internal: unchecked answer".into(),
            )));
        };
        let hash = sha256(&granted.token);
        let hashed_token = STANDARD.encode(hash);
        let full_names: Vec<String> = repositories
            .iter()
            .map(|name| format!("{}/{name}", wanted.owner))
            .collect();
        Ok(Created {
            github: Some(GithubToken {
                api_url: self.target.api_url.clone(),
                git_host: git_host(&self.target.api_url),
                installation_id: installation,
                repositories: full_names.clone(),
                permissions: granted.permissions.clone(),
                github_expires_at: expires_at,
            }),
            grant: Some(UpstreamGrant {
                installation: Some(installation),
                repositories: full_names,
                permissions: granted.permissions,
                hashed_token: Some(hashed_token.clone()),
                token_sha256: Some(hex::encode(hash)),
                upstream_expires_at: Some(expires_at),
                request_id: answer.request_id,
            }),
            upstream_id: Some(hashed_token),
            sealed: Some(sealed),
            secret: Some(granted.token),
        })
    }

    async fn destroy(
        &self,
        _upstream_id: &str,
        sealed: Option<&[u8]>,
    ) -> Result<Destroyed, UpstreamFailure> {
        let Some(sealed) = sealed else {
            return Err(UpstreamFailure::Permanent(
                "the request that made this token got no answer, so Stint never had the token and cannot revoke it; GitHub expires it within an hour of its creation".into(),
            ));
        };
        let opened = self.sealer.unseal(sealed).map_err(|why| {
            if why.contains("another token_key_file") {
                // The key may come back: keep trying (and keep the sealed
                // copy) until GitHub's hour is over.
                UpstreamFailure::Unavailable(why)
            } else {
                UpstreamFailure::Permanent(why)
            }
        })?;
        let (installation, token) = opened.split_once(':').ok_or_else(|| {
            UpstreamFailure::Permanent("the sealed token is not in a form this stintd knows".into())
        })?;
        self.revoke(token, installation).await
    }

    async fn list(&self) -> Result<Option<Vec<String>>, UpstreamFailure> {
        // GitHub cannot list an App's installation tokens.
        Ok(None)
    }

    fn rate_limits(&self) -> Vec<(String, i64)> {
        self.rate_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(what, left)| (what.clone(), *left))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sealer(dir: &Path, bytes: &[u8]) -> Result<Sealer, String> {
        let path = dir.join("key");
        std::fs::write(&path, bytes).unwrap();
        Sealer::from_file(&path)
    }

    #[test]
    fn a_sealed_token_opens_only_under_its_key_and_is_never_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let rng = SystemRandom::new();
        let a = sealer(dir.path(), &[7u8; 32]).unwrap();
        let hex_key = format!("{}\n", hex::encode([7u8; 32]));
        let same = sealer(dir.path(), hex_key.as_bytes()).unwrap();
        let other = sealer(dir.path(), &[8u8; 32]).unwrap();
        let token = "ghs_16C7e42F292c6912E7710c838347Ae178B4a";
        let sealed = a.seal(token, &rng).unwrap();
        assert!(!sealed.windows(token.len()).any(|w| w == token.as_bytes()));
        assert_ne!(
            sealed,
            a.seal(token, &rng).unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(a.unseal(&sealed).unwrap(), token);
        assert_eq!(
            same.unseal(&sealed).unwrap(),
            token,
            "hex and raw keys are one"
        );
        let moved = other.unseal(&sealed).unwrap_err();
        assert!(moved.contains("another token_key_file"), "{moved}");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let bad = a.unseal(&tampered).unwrap_err();
        assert!(bad.contains("does not open"), "{bad}");
        assert!(a.unseal(&[]).is_err());
        assert!(a.unseal(&[stint_core::seal::SEAL_VERSION, 1]).is_err());
    }

    #[test]
    fn a_token_key_is_32_bytes_or_64_hex_digits() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            &b"short"[..],
            &[1u8; 31],
            &[1u8; 33],
            b"zz".repeat(32).as_slice(),
        ] {
            let why = sealer(dir.path(), bad).err().unwrap();
            assert!(why.contains("32 random bytes"), "{why}");
            assert!(!why.contains("zz"), "never the key: {why}");
        }
    }

    #[test]
    fn an_app_key_that_does_not_parse_is_refused_with_its_file_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("app.pem");
        let token_key = dir.path().join("tokens.key");
        std::fs::write(&token_key, [1u8; 32]).unwrap();
        let target = |key: &Path| GithubTarget {
            app: stint_core::target::github::GithubApp::Id(1),
            private_key_file: key.to_owned(),
            token_key_file: token_key.clone(),
            api_url: "https://api.github.com".into(),
            ca_file: None,
            timeout_secs: 5,
        };
        for (text, needle) in [
            (&b"not a key"[..], "not a PEM private key"),
            (
                &b"-----BEGIN PRIVATE KEY-----
AAAA
-----END PRIVATE KEY-----
"[..],
                "ring refuses it",
            ),
        ] {
            std::fs::write(&key, text).unwrap();
            let why = check_files(&target(&key)).unwrap_err();
            assert!(why.contains(&key.display().to_string()), "{why}");
            assert!(why.contains(needle), "{why}");
        }
        let missing = check_files(&target(&dir.path().join("absent.pem"))).unwrap_err();
        assert!(missing.contains("cannot open"), "{missing}");
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/github-app.pkcs1.pem"
        );
        check_files(&target(Path::new(fixture))).unwrap();
    }

    #[test]
    fn git_hosts() {
        assert_eq!(git_host("https://api.github.com"), "github.com");
        assert_eq!(
            git_host("https://ghe.example.com/api/v3"),
            "ghe.example.com"
        );
        assert_eq!(git_host("https://127.0.0.1:8443"), "127.0.0.1:8443");
    }

    #[test]
    fn rate_limit_answers() {
        let answer = |status, remaining, retry_after, message: &str| Answer {
            status,
            request_id: Some("A:B".into()),
            body: serde_json::json!({ "message": message })
                .to_string()
                .into_bytes(),
            retry_after,
            remaining,
            reset: Some(1_000 + 120),
        };
        assert_eq!(
            answer(429, None, Some(30), "x").rate_limited(1_000),
            Some(30)
        );
        assert_eq!(
            answer(
                403,
                Some(0),
                None,
                "API rate limit exceeded for installation ID 1."
            )
            .rate_limited(1_000),
            Some(120),
            "x-ratelimit-reset when the budget is spent"
        );
        assert_eq!(
            answer(
                403,
                Some(10),
                None,
                "You have exceeded a secondary rate limit."
            )
            .rate_limited(1_000),
            Some(SECONDARY_LIMIT_SECS)
        );
        assert_eq!(
            answer(
                403,
                Some(10),
                None,
                "Resource not accessible by integration"
            )
            .rate_limited(1_000),
            None
        );
        assert_eq!(
            answer(429, None, Some(99_999), "x").rate_limited(1_000),
            Some(MAX_BACKOFF_SECS)
        );
        let message = answer(422, None, None, "bad\nthing\u{7}").message();
        assert_eq!(message, "badthing (GitHub request id A:B)");
    }
}
