//! Stint's operator console: a small server-rendered web application on
//! its own listener, for the people who approve elevation and watch what
//! is live.
//!
//! Every decision goes through [`stint_server::operators::OperatorApi`],
//! the code the HTTP API calls: the console never applies a rule of its
//! own, it only chooses which forms to show. Operators sign in through
//! their identity provider (OpenID Connect, authorization code with PKCE,
//! `state` and `nonce`, see [`oidc`]); the session is a `__Host-` cookie
//! (`HttpOnly`, `Secure`, `SameSite=Strict`) with idle and absolute
//! timeouts.
//!
//! Every response carries a strict Content-Security-Policy (no script at
//! all), `frame-ancestors 'none'`, `Referrer-Policy: no-referrer`,
//! `nosniff` and `Cache-Control: no-store`. Every form carries the
//! session's CSRF token, and every POST must come from the console's own
//! origin: `Sec-Fetch-Site`, when the browser sends it, is `same-origin`,
//! and `Origin` is the console's (or `null`, which browsers send from a
//! `no-referrer` page, with `Sec-Fetch-Site: same-origin`).
//! Cross-site subresource requests are refused (fetch metadata).

mod audit_tail;
pub mod dev_idp;
pub mod oidc;
mod report;
mod session;
mod views;

pub use oidc::OidcClient;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use ring::rand::SystemRandom;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stint_core::form::FormParams;
use stint_server::operators::{Asked, Operator, OperatorApi, Origin, Verb};
use views::{Frame, Nav};

/// The session cookie.
pub const SESSION_COOKIE: &str = "__Host-stint-session";
/// The cookie that carries a sign-in in progress.
pub const LOGIN_COOKIE: &str = "__Host-stint-login";
/// A `SameSite=Lax` cookie that says a session may exist (no secret in
/// it): a link followed from elsewhere then reloads itself once from this
/// origin, so that the `Strict` session cookie is sent.
pub const HINT_COOKIE: &str = "__Host-stint-signed-in";

/// The Content-Security-Policy of every response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The largest form body read.
const MAX_FORM_LEN: usize = 16 * 1024;
/// The longest `Cookie` header read.
const MAX_COOKIE_HEADER: usize = 8 * 1024;
/// The longest query string read.
const MAX_QUERY_LEN: usize = 4096;
/// The most audit records one page lists.
const AUDIT_PAGE_LEN: usize = 200;
/// How long a page waits for a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How the console is set up.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The console's public origin, as operators' browsers reach it
    /// (`https://stint.example.com:8781`); `http://` only on a loopback
    /// address. The redirect URI registered at the identity provider is
    /// this plus `/callback`.
    pub url: String,
    /// Its client at the identity provider.
    pub oidc: OidcClient,
    /// A CA file (PEM) for the identity provider's HTTPS, beside the web
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// A session unused this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, used or not.
    pub absolute_timeout: Duration,
    /// The proxies whose `X-Forwarded-For` / `Forwarded` name the client
    /// (the broker's `--trusted-proxy`); exclusive ones admit no other
    /// connection (`--tls-terminated-by-proxy`).
    pub trusted_proxies: stint_server::forwarded::TrustedProxies,
}

/// The default idle timeout: 15 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The default absolute timeout: 8 hours.
pub const DEFAULT_ABSOLUTE_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

impl ConsoleConfig {
    /// A console at `url` signing operators in through `oidc`, with the
    /// default timeouts.
    pub fn new(url: impl Into<String>, oidc: OidcClient) -> Self {
        Self {
            url: url.into(),
            oidc,
            ca_file: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            absolute_timeout: DEFAULT_ABSOLUTE_TIMEOUT,
            trusted_proxies: stint_server::forwarded::TrustedProxies::default(),
        }
    }
}

/// Why the console cannot start. Each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// `--console-url` is not an origin the console can serve.
    #[error("--console-url {0}")]
    BadUrl(String),
    /// The identity provider is not one the policy trusts for operators.
    #[error("--console-oidc-issuer: {0}")]
    Issuer(String),
    /// The identity provider's CA file cannot be used.
    #[error("--console-oidc-ca-file: {0}")]
    Ca(String),
    /// The timeouts are out of range.
    #[error("{0}")]
    Timeouts(String),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// The console.
pub struct Console {
    api: OperatorApi,
    config: ConsoleConfig,
    /// `scheme://host[:port]`, as browsers send it in `Origin`.
    origin: String,
    redirect_uri: String,
    provider: oidc::Provider,
    sessions: session::Sessions,
    logins: session::Logins,
    tail: Arc<audit_tail::AuditTail>,
    reports: report::Reports,
    sign_ins: SignInLimit,
    started: std::time::Instant,
    rng: SystemRandom,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn origin_of(url: &str) -> Result<String, ConsoleError> {
    let parsed = url::Url::parse(url).map_err(|e| ConsoleError::BadUrl(format!("{url}: {e}")))?;
    let host = parsed
        .host()
        .ok_or_else(|| ConsoleError::BadUrl(format!("{url} has no host")))?;
    let loopback = match host {
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
        url::Host::Domain(name) => name == "localhost",
    };
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => {
            return Err(ConsoleError::BadUrl(format!(
                "{url}: the console is served over https (http only on a loopback address)"
            )));
        }
    }
    if parsed.path() != "/" || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConsoleError::BadUrl(format!(
            "{url}: give the origin only (the console is served at the root of its own listener)"
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ConsoleError::BadUrl(format!("{url}: no user information")));
    }
    Ok(parsed.origin().ascii_serialization())
}

impl Console {
    /// A console over `api`, checked against the policy in force: the
    /// identity provider must be one of its `[issuers]`, with the console's
    /// `client_id` among that issuer's `audiences`.
    pub fn new(api: OperatorApi, config: ConsoleConfig) -> Result<Arc<Self>, ConsoleError> {
        let origin = origin_of(&config.url)?;
        {
            let policy = api.policy();
            let issuer = policy
                .trusted_issuers()
                .find(|i| i.name() == config.oidc.issuer)
                .ok_or_else(|| {
                    ConsoleError::Issuer(format!(
                        "the policy has no [issuers.{}]",
                        config.oidc.issuer
                    ))
                })?;
            if !issuer.audiences().contains(&config.oidc.client_id) {
                return Err(ConsoleError::Issuer(format!(
                    "add the console's client id {:?} to the audiences of [issuers.{}]: its ID tokens are verified as operators' are",
                    config.oidc.client_id, config.oidc.issuer
                )));
            }
        }
        if config.idle_timeout < Duration::from_secs(60)
            || config.absolute_timeout < config.idle_timeout
            || config.absolute_timeout > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(ConsoleError::Timeouts(
                "the idle timeout is at least a minute, and at most the absolute timeout, which is at most 7 days".into(),
            ));
        }
        let provider = oidc::Provider::new(config.ca_file.as_deref()).map_err(ConsoleError::Ca)?;
        let rng = SystemRandom::new();
        let logins = session::Logins::new(&rng).ok_or(ConsoleError::Random)?;
        let sessions = session::Sessions::new(
            config.idle_timeout.as_secs() as i64,
            config.absolute_timeout.as_secs() as i64,
        );
        let tail = Arc::new(audit_tail::AuditTail::new(api.audit_location().clone()));
        Ok(Arc::new(Self {
            redirect_uri: format!("{origin}/callback"),
            origin,
            api,
            config,
            provider,
            sessions,
            logins,
            tail,
            reports: report::Reports::default(),
            sign_ins: SignInLimit::default(),
            started: std::time::Instant::now(),
            rng,
        }))
    }

    /// The console's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The redirect URI to register at the identity provider.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// The routes, with the security headers and request checks.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/", get(|| async { see_other("/approvals") }))
            .route("/static/console.css", get(stylesheet))
            .route("/login", get(login_page))
            .route("/login/start", get(login_start))
            .route("/callback", get(callback))
            .route("/logout", post(logout))
            .route("/approvals", get(approvals_page))
            .route("/approvals/{id}", get(approval_page))
            .route("/approvals/{id}/{verb}", post(decide))
            .route("/live", get(live_page))
            .route("/live/tokens/{jti}/revoke", post(revoke_token))
            .route("/live/jobs/revoke", post(revoke_job))
            .route("/live/workloads/{name}/{action}", post(set_workload))
            .route("/audit", get(audit_page))
            .route("/policy", get(policy_page))
            .fallback(|| async { plain(StatusCode::NOT_FOUND, "no such page") })
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(self),
                guard,
            ))
            .with_state(Arc::clone(self))
    }

    /// Serve on `listener` (TLS with `tls`) until `shutdown` resolves.
    ///
    /// The console shares its process with the broker, so it is held to a
    /// small share of it: HTTP/1.1 only, at most [`MAX_CONNECTIONS`]
    /// connections ([`MAX_CONNECTIONS_PER_SOURCE`] from one address or
    /// IPv6 /64), a request's headers (and a TLS handshake) within 10 s of
    /// the connection waiting for them, so a silent connection is closed
    /// after 10 s, and a connection closed gracefully after 5 minutes.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<TlsFiles>>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let router = self.router();
        {
            // Read the log now and every 30 s, not only on page views: a
            // rotation is followed while it is fresh. The task ends with
            // the console (a weak reference).
            let console = Arc::downgrade(&self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TAIL_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(console) = console.upgrade() else {
                        return;
                    };
                    console.tail.refresh(&console.api).await;
                }
            });
        }
        // HTTP/1.1 only (pages are few and small): its header timeout runs
        // from the moment a connection waits for a request, so a
        // connection that sends nothing, first or between requests, is
        // closed after it.
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(64 * 1024)
            .keep_alive(true);
        let builder = Arc::new(builder);
        let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_source: SourceCounts = Arc::default();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(%error, "console: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if !self.config.trusted_proxies.admits(peer.ip()) {
                tracing::debug!(%peer, "console: closing a connection that does not come from a trusted proxy");
                continue;
            }
            let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                tracing::debug!(%peer, "console: closing a connection: at its connection limit");
                continue;
            };
            let source = SourceSlot::take(
                &per_source,
                peer.ip(),
                !self.config.trusted_proxies.trusts(peer.ip()),
            );
            let Some(source) = source else {
                tracing::debug!(%peer, "console: closing a connection: this source holds its share");
                continue;
            };
            let service = router.clone().layer(axum::Extension(Peer(peer)));
            let tls = tls.as_ref().map(|files| files.acceptor());
            let builder = Arc::clone(&builder);
            tokio::spawn(async move {
                let _permit = permit;
                let _source = source;
                let service = hyper_util::service::TowerToHyperService::new(service);
                match tls {
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await
                        else {
                            return;
                        };
                        serve_one(&builder, hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                    None => {
                        serve_one(&builder, hyper_util::rt::TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    }
}

/// Serve one connection for at most [`CONNECTION_LIFETIME`], then close it
/// gracefully: a request in flight (a decision being recorded) finishes
/// first, within [`DRAIN_TIMEOUT`].
async fn serve_one<I, S>(builder: &hyper::server::conn::http1::Builder, io: I, service: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN_TIMEOUT, connection.as_mut()).await {
                Ok(served) => served,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "console connection ended");
    }
}

/// The console's certificate and key, loaded again when the files change
/// (a renewal needs no restart; files that do not load leave the ones in
/// force). HTTP/1.1 only ([`stint_server::tls::acceptor_http1`]).
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: std::sync::Mutex<TlsCurrent>,
}

struct TlsCurrent {
    acceptor: tokio_rustls::TlsAcceptor,
    stamps: Option<(std::time::SystemTime, std::time::SystemTime)>,
    checked: std::time::Instant,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

/// How often the certificate files are looked at.
const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(30);

fn stamps(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

impl TlsFiles {
    /// Load `cert` and `key` (PEM).
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Self, String> {
        let acceptor = stint_server::tls::acceptor_http1(&cert, &key)?;
        let current = TlsCurrent {
            acceptor,
            stamps: stamps(&cert, &key),
            checked: std::time::Instant::now(),
        };
        Ok(Self {
            cert,
            key,
            current: std::sync::Mutex::new(current),
        })
    }

    /// The acceptor for a new connection, the files loaded again first if
    /// they changed since they were last looked at (at most every 30 s).
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.checked.elapsed() >= TLS_CHECK_INTERVAL {
            current.checked = std::time::Instant::now();
            let now = stamps(&self.cert, &self.key);
            if now.is_some() && now != current.stamps {
                match stint_server::tls::acceptor_http1(&self.cert, &self.key) {
                    Ok(acceptor) => {
                        tracing::info!(cert = %self.cert.display(), "console: TLS files loaded again");
                        current.acceptor = acceptor;
                        current.stamps = now;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "console: the new TLS files do not load; the ones in force stay");
                    }
                }
            }
        }
        current.acceptor.clone()
    }
}

/// How often the audit log is read without a page asking.
const TAIL_INTERVAL: Duration = Duration::from_secs(30);

/// The most connections the console holds at once.
pub const MAX_CONNECTIONS: usize = 256;
/// The most from one address (a trusted proxy's are not counted so).
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// How long a client has to send a request's headers (and to finish a
/// TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives: pages are small, browsers reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a connection closing at its lifetime has to finish the
/// request in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The source a connection or request is counted against: an IPv4
/// address, or an IPv6 /64 (what one host can choose from).
fn source_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                std::net::IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
        },
        v4 => v4,
    }
}

/// Sign-ins started or finished per source and minute: each costs a
/// request to the identity provider, and a refused one an audit record.
const SIGN_INS_PER_MINUTE: u32 = 30;

/// Counts sign-in requests per source, per minute.
#[derive(Debug, Default)]
struct SignInLimit {
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u64, u32)>>,
}

impl SignInLimit {
    /// Whether one more sign-in request from `ip` is allowed now.
    fn allow(&self, ip: std::net::IpAddr, minute: u64) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= 10_000 {
            counts.retain(|_, (at, _)| *at == minute);
            if counts.len() >= 10_000 {
                counts.clear();
            }
        }
        let (at, n) = counts.entry(source_key(ip)).or_insert((minute, 0));
        if *at != minute {
            *at = minute;
            *n = 0;
        }
        *n += 1;
        *n <= SIGN_INS_PER_MINUTE
    }
}

/// Connections held, per source address.
type SourceCounts = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One connection's share of its source's allowance, given back on drop.
struct SourceSlot {
    counts: SourceCounts,
    ip: Option<std::net::IpAddr>,
}

impl SourceSlot {
    fn take(counts: &SourceCounts, ip: std::net::IpAddr, limited: bool) -> Option<Self> {
        if !limited {
            return Some(Self {
                counts: Arc::clone(counts),
                ip: None,
            });
        }
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let held = map.entry(ip).or_insert(0);
        if *held >= MAX_CONNECTIONS_PER_SOURCE {
            return None;
        }
        *held += 1;
        Some(Self {
            counts: Arc::clone(counts),
            ip: Some(ip),
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = map.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// The peer's address, for the audit records.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.to_owned(),
    )
        .into_response()
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every request: fetch metadata and origin checks first, the security
/// headers on every answer.
async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    let refused = check_request(&console, request.method(), request.headers());
    let mut response = match refused {
        Some(why) => plain(StatusCode::FORBIDDEN, why),
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::CACHE_CONTROL, "no-store");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    if console.origin.starts_with("https://") {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000",
        );
    }
    response
}

/// Why a request is refused before any handler sees it, if it is.
fn check_request(
    console: &Console,
    method: &http::Method,
    headers: &HeaderMap,
) -> Option<&'static str> {
    let site = header_str(headers, header::HeaderName::from_static("sec-fetch-site"));
    let mode = header_str(headers, header::HeaderName::from_static("sec-fetch-mode"));
    if method == http::Method::GET || method == http::Method::HEAD {
        // A page may be opened from anywhere (a link in a webhook's
        // message); nothing else of the console may be fetched from
        // another site (no image, script or fetch() of it).
        return match (site, mode) {
            (Some("cross-site" | "same-site"), Some(mode)) if mode != "navigate" => {
                Some("cross-site request refused")
            }
            _ => None,
        };
    }
    if method != http::Method::POST {
        return Some("method not allowed");
    }
    if site.is_some_and(|s| s != "same-origin") {
        return Some("cross-site request refused: the form did not come from this console");
    }
    match header_str(headers, header::ORIGIN) {
        Some(origin) if origin == console.origin => None,
        // A page served with `Referrer-Policy: no-referrer` (every page
        // here) makes the browser send `Origin: null` with its forms
        // (Fetch, "append a request Origin header"); the browser's own
        // Sec-Fetch-Site then says where the form came from.
        Some("null") | None if site == Some("same-origin") => None,
        Some(_) => Some("cross-origin request refused: the form did not come from this console"),
        None => Some(
            "request refused: a browser says where a form comes from (Origin, Sec-Fetch-Site); this said neither",
        ),
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter(|v| v.len() <= MAX_COOKIE_HEADER)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

fn set_cookie(response: &mut Response, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The `Set-Cookie` of a session.
pub fn session_cookie(id: &str, max_age: u64) -> String {
    format!("{SESSION_COOKIE}={id}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict")
}

fn clear_cookie(name: &str, same_site: &str) -> String {
    format!("{name}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite={same_site}")
}

/// A local path to return to after sign-in: anything else is
/// `/approvals`.
fn return_path(asked: Option<&str>) -> String {
    match asked {
        Some(path)
            if path.len() <= 512
                && path.starts_with('/')
                && !path.starts_with("//")
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/-_.?=&%".contains(&b))
                && !path.starts_with("/login")
                && !path.starts_with("/callback") =>
        {
            path.to_owned()
        }
        _ => "/approvals".to_owned(),
    }
}

fn query(raw: Option<String>) -> FormParams {
    raw.filter(|q| q.len() <= MAX_QUERY_LEN)
        .and_then(|q| FormParams::parse(q.as_bytes()).ok())
        .unwrap_or_default()
}

/// A signed-in request's session.
struct Signed {
    id: String,
    session: session::Session,
    operator: Operator,
}

impl Signed {
    fn frame<'a>(&'a self, title: &'a str, nav: Nav) -> Frame<'a> {
        Frame {
            title,
            nav,
            signed_in: Some((&self.operator.name, &self.session.csrf)),
            flash: self
                .session
                .flash
                .as_ref()
                .map(|(message, error)| (message.as_str(), *error)),
        }
    }
}

impl Console {
    fn now(&self) -> i64 {
        self.api.now().timestamp()
    }

    /// Who asks, for the audit records: the client as the trusted proxies
    /// name it (the peer itself if none forwards, or if a forwarding header
    /// comes from someone else).
    fn origin_of_request(&self, peer: Option<Peer>, headers: &HeaderMap) -> Origin {
        let mut id = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&self.rng, &mut id);
        let client_addr = peer.map(|Peer(peer)| {
            self.config
                .trusted_proxies
                .client(peer, headers)
                .unwrap_or(peer)
        });
        Origin {
            via: "console",
            request_id: hex::encode(id),
            client_addr,
        }
    }

    /// Whether this sign-in request may go on (per source and minute);
    /// the answer if not.
    fn sign_in_allowed(
        &self,
        peer: Option<Peer>,
        headers: &HeaderMap,
    ) -> Result<(), Box<Response>> {
        let Some(client) = self.origin_of_request(peer, headers).client_addr else {
            return Ok(());
        };
        let minute = self.started.elapsed().as_secs() / 60;
        if self.sign_ins.allow(client.ip(), minute) {
            Ok(())
        } else {
            let mut response = plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many sign-ins from this address: try again in a minute",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            Err(Box::new(response))
        }
    }

    /// The request's session, or the answer for a request without one.
    fn signed(&self, headers: &HeaderMap, path: &str) -> Result<Signed, Box<Response>> {
        let now = self.now();
        let id = cookie(headers, SESSION_COOKIE);
        let ended = match id.map(|id| (id, self.sessions.touch(id, now))) {
            Some((id, Ok(session))) => match self.api.operator(&session.signed) {
                Some(operator) => {
                    // Opened by another site of the same site (a sibling
                    // subdomain sends the Strict cookie): a page with
                    // decisions on it is still a click away.
                    let site =
                        header_str(headers, header::HeaderName::from_static("sec-fetch-site"));
                    if matches!(site, Some("same-site" | "cross-site"))
                        && !views::continues_by_itself(path)
                    {
                        return Err(Box::new(html(
                            StatusCode::OK,
                            views::reload(&return_path(Some(path))),
                        )));
                    }
                    return Ok(Signed {
                        id: id.to_owned(),
                        session,
                        operator,
                    });
                }
                None => {
                    self.sessions.end(id);
                    Some("your identity is no longer an operator's in the policy in force")
                }
            },
            Some((_, Err(session::Ended::Idle))) => Some("your session was idle too long"),
            Some((_, Err(session::Ended::Absolute))) => Some("your session reached its time limit"),
            Some((_, Err(session::Ended::Unknown))) | None => None,
        };
        let site = header_str(headers, header::HeaderName::from_static("sec-fetch-site"));
        if id.is_none() && cookie(headers, HINT_COOKIE).is_some() && site != Some("same-origin") {
            // Followed from elsewhere: the Strict cookie stayed behind.
            return Err(Box::new(html(
                StatusCode::OK,
                views::reload(&return_path(Some(path))),
            )));
        }
        let page = views::sign_in(&self.config.oidc.issuer, &return_path(Some(path)), ended);
        let mut response = html(StatusCode::UNAUTHORIZED, page);
        if id.is_some() {
            set_cookie(&mut response, clear_cookie(SESSION_COOKIE, "Strict"));
            set_cookie(&mut response, clear_cookie(HINT_COOKIE, "Lax"));
        }
        Err(Box::new(response))
    }

    /// A POST's session and form, its CSRF token checked.
    async fn form(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Signed, FormParams), Box<Response>> {
        let signed = self.signed(headers, "/approvals")?;
        let bytes = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_FORM_LEN))
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Box::new(plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the form is too large or too slow",
                ))
            })?;
        let form = FormParams::parse(&bytes).map_err(|e| {
            Box::new(plain(
                StatusCode::BAD_REQUEST,
                &format!("the form is malformed: {e}"),
            ))
        })?;
        let sent = form.get("csrf").unwrap_or("");
        if !stint_core::secret::constant_time_eq(sent.as_bytes(), signed.session.csrf.as_bytes()) {
            return Err(Box::new(html(
                StatusCode::FORBIDDEN,
                views::error_page(
                    &signed.frame("Refused", Nav::None),
                    "Refused",
                    "The form did not carry this session's token (CSRF): reload the page and try again.",
                ),
            )));
        }
        Ok((signed, form))
    }

    /// Tell the next page how an action went, and go there.
    fn after(&self, signed: &Signed, outcome: Result<String, String>, to: &str) -> Response {
        match outcome {
            Ok(message) => self.sessions.flash(&signed.id, message, false),
            Err(message) => self.sessions.flash(&signed.id, message, true),
        }
        see_other(to)
    }
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        views::STYLESHEET,
    )
        .into_response()
}

async fn login_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = query(raw);
    let return_to = return_path(query.get("return_to"));
    if let Some(id) = cookie(&headers, SESSION_COOKIE)
        && console.sessions.touch(id, console.now()).is_ok()
    {
        return see_other(&return_to);
    }
    html(
        StatusCode::OK,
        views::sign_in(&console.config.oidc.issuer, &return_to, None),
    )
}

async fn login_start(
    State(console): State<Arc<Console>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(response) = console.sign_in_allowed(peer.map(|axum::Extension(p)| p), &headers) {
        return *response;
    }
    let query = query(raw);
    let return_to = return_path(query.get("return_to"));
    let unavailable = |why: &str| {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            views::sign_in(&console.config.oidc.issuer, &return_to, Some(why)),
        )
    };
    let policy = console.api.policy();
    let Some(issuer_url) = policy
        .trusted_issuers()
        .find(|i| i.name() == console.config.oidc.issuer)
        .map(|i| i.url().to_owned())
    else {
        return unavailable("the identity provider is no longer in the policy");
    };
    let endpoints = match console.provider.endpoints(&issuer_url).await {
        Ok(endpoints) => endpoints,
        Err(error) => {
            tracing::warn!(%error, "console: sign-in not started");
            return unavailable(&error.to_string());
        }
    };
    let (Some(state), Some(nonce), Some(verifier)) = (
        session::random_token(&console.rng),
        session::random_token(&console.rng),
        session::random_token(&console.rng),
    ) else {
        return unavailable("the system random number generator failed");
    };
    let login = session::Login {
        state,
        nonce,
        verifier,
        return_to: return_to.clone(),
        started: console.now(),
    };
    let url = match oidc::authorization_url(
        &endpoints,
        &console.config.oidc,
        &console.redirect_uri,
        &login.state,
        &login.nonce,
        &login.verifier,
    ) {
        Ok(url) => url,
        Err(error) => return unavailable(&error.to_string()),
    };
    let Some(sealed) = console.logins.seal(&login, &console.rng) else {
        return unavailable("the sign-in could not be sealed");
    };
    let mut response = see_other(&url);
    set_cookie(
        &mut response,
        format!(
            "{LOGIN_COOKIE}={sealed}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Lax",
            session::LOGIN_TTL_SECS
        ),
    );
    response
}

async fn callback(
    State(console): State<Arc<Console>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let peer = peer.map(|axum::Extension(p)| p);
    if let Err(response) = console.sign_in_allowed(peer, &headers) {
        return *response;
    }
    let query = query(raw);
    let issuer = console.config.oidc.issuer.clone();
    let refuse = |status: StatusCode, why: &str| {
        let mut response = html(status, views::sign_in(&issuer, "/approvals", Some(why)));
        set_cookie(&mut response, clear_cookie(LOGIN_COOKIE, "Lax"));
        response
    };
    let Some(state) = query.get("state") else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the identity provider's answer has no state",
        );
    };
    let login = match console
        .logins
        .take(cookie(&headers, LOGIN_COOKIE), state, console.now())
    {
        Ok(login) => login,
        Err(error) => return refuse(StatusCode::BAD_REQUEST, &error.to_string()),
    };
    if let Some(error) = query.get("error") {
        let error: String = error
            .chars()
            .filter(char::is_ascii_graphic)
            .take(64)
            .collect();
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("the identity provider did not sign you in: {error}"),
        );
    }
    let Some(code) = query.get("code") else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the identity provider's answer has no code",
        );
    };
    let policy = console.api.policy();
    let Some(issuer_url) = policy
        .trusted_issuers()
        .find(|i| i.name() == console.config.oidc.issuer)
        .map(|i| i.url().to_owned())
    else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the identity provider is no longer in the policy",
        );
    };
    let id_token = match console.provider.endpoints(&issuer_url).await {
        Ok(endpoints) => {
            console
                .provider
                .exchange(
                    &endpoints,
                    &console.config.oidc,
                    code,
                    &console.redirect_uri,
                    &login.verifier,
                )
                .await
        }
        Err(error) => Err(error),
    };
    let id_token = match id_token {
        Ok(token) => token,
        Err(error) => {
            tracing::warn!(%error, "console: sign-in refused at the token endpoint");
            return refuse(StatusCode::BAD_GATEWAY, &error.to_string());
        }
    };
    let origin = console.origin_of_request(peer, &headers);
    let client_id = console.config.oidc.client_id.clone();
    let nonce = login.nonce.clone();
    let signed = match console
        .api
        .verify_id_token(&id_token, &origin, |claims| {
            // The provider this console signs in through, not another the
            // policy also trusts.
            if claims.get("iss").and_then(serde_json::Value::as_str) != Some(issuer_url.as_str()) {
                return Err("the ID token is from another issuer".to_owned());
            }
            oidc::check_claims(claims, &client_id, &nonce)
        })
        .await
    {
        Ok(signed) => signed,
        Err(refused) => {
            tracing::warn!(%refused, "console: sign-in refused");
            return refuse(
                StatusCode::FORBIDDEN,
                &format!("sign-in refused: {}", refused.description),
            );
        }
    };
    let operator = signed.operator.clone();
    let Some(id) = console.sessions.create(signed, console.now(), &console.rng) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the console holds as many sessions as it may; try again later",
        );
    };
    tracing::info!(%operator, "console: operator signed in");
    let max_age = console.config.absolute_timeout.as_secs();
    let mut response = html(
        StatusCode::OK,
        views::signed_in(&operator, &login.return_to),
    );
    set_cookie(&mut response, session_cookie(&id, max_age));
    set_cookie(
        &mut response,
        format!("{HINT_COOKIE}=1; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"),
    );
    set_cookie(&mut response, clear_cookie(LOGIN_COOKIE, "Lax"));
    response
}

async fn logout(State(console): State<Arc<Console>>, headers: HeaderMap, body: Body) -> Response {
    let (signed, _) = match console.form(&headers, body).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    console.sessions.end(&signed.id);
    let mut response = see_other("/login");
    set_cookie(&mut response, clear_cookie(SESSION_COOKIE, "Strict"));
    set_cookie(&mut response, clear_cookie(HINT_COOKIE, "Lax"));
    response
}

async fn approvals_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let signed = match console.signed(&headers, "/approvals") {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let views_list = console.api.approvals(false).await;
    html(
        StatusCode::OK,
        views::approvals(
            &signed.frame("Approvals", Nav::Approvals),
            &signed.operator,
            &views_list,
            console.now(),
        ),
    )
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn approval_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let path = if valid_id(&id) {
        format!("/approvals/{id}")
    } else {
        "/approvals".to_owned()
    };
    let signed = match console.signed(&headers, &path) {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let Some(view) = console.api.approval(&id).await else {
        return html(
            StatusCode::NOT_FOUND,
            views::error_page(
                &signed.frame("Not found", Nav::Approvals),
                "No such request",
                "No approval request with that id is kept (requests are kept for a day after they end).",
            ),
        );
    };
    let policy = console.api.policy();
    let (workflow, step) = view
        .step
        .split_once('/')
        .unwrap_or(("", view.step.as_str()));
    let found = policy.workflow(workflow).and_then(|w| w.step(step));
    let context = views::ApprovalContext {
        owners: policy
            .operators()
            .filter(|o| o.owns().contains(&view.workload))
            .map(|o| o.name().to_owned())
            .collect(),
        standing: found
            .map(|s| s.scopes().iter().map(|p| p.as_str().to_owned()).collect())
            .unwrap_or_default(),
        elevation: found
            .and_then(|s| s.elevation())
            .map(|e| e.scopes().iter().map(|p| p.as_str().to_owned()).collect())
            .unwrap_or_default(),
    };
    html(
        StatusCode::OK,
        views::approval(
            &signed.frame(&format!("Request {id}"), Nav::Approvals),
            &signed.operator,
            &view,
            &context,
            &signed.session.csrf,
            console.now(),
        ),
    )
}

async fn decide(
    State(console): State<Arc<Console>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Body,
) -> Response {
    let Some(verb) = Verb::from_path(&verb) else {
        return plain(StatusCode::NOT_FOUND, "no such page");
    };
    let (signed, form) = match console.form(&headers, body).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let back = if valid_id(&id) {
        format!("/approvals/{id}")
    } else {
        "/approvals".to_owned()
    };
    let comment = form.get("comment").map(str::to_owned);
    let duration = match verb {
        Verb::Approve => form.get("duration").map(str::to_owned),
        _ => None,
    };
    let origin = console.origin_of_request(peer.map(|axum::Extension(p)| p), &headers);
    let outcome = console
        .api
        .decide(
            &signed.session.signed,
            &id,
            Asked {
                verb,
                duration,
                comment,
            },
            &origin,
        )
        .await
        .map(|view| match verb {
            Verb::Approve if view.state == "approved" => format!(
                "Approved: the quorum is reached ({} of {}); the job may mint until {}.",
                view.approvals.len(),
                view.approvals_required,
                view.approved_until.map(views::rfc3339).unwrap_or_default()
            ),
            Verb::Approve => format!(
                "Approved: {} of {} approvals.",
                view.approvals.len(),
                view.approvals_required
            ),
            Verb::Deny => "Denied.".to_owned(),
            Verb::Revoke => "Revoked: every token minted under it is revoked.".to_owned(),
        })
        .map_err(|refused| refused.description);
    console.after(&signed, outcome, &back)
}

async fn live_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let signed = match console.signed(&headers, "/live") {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    console.tail.refresh(&console.api).await;
    let tokens = console.api.live_tokens();
    let policy = console.api.policy();
    let mut per_workload: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    if let Some(live) = &tokens {
        for t in &live.tokens {
            *per_workload.entry(t.workload.as_str()).or_default() += 1;
        }
    }
    let workloads: Vec<views::WorkloadRow> = policy
        .workloads()
        .map(|w| views::WorkloadRow {
            name: w.name().to_owned(),
            stopped: console.api.is_stopped(w.name()),
            tokens: per_workload.get(w.name()).copied().unwrap_or(0),
        })
        .collect();
    let credentials = console.api.target_credentials().await;
    let actions: Vec<views::Action> = console
        .tail
        .recent(50, |r| r.entry.operator.is_some())
        .into_iter()
        .map(|r| {
            let e = &r.entry;
            let what = [
                e.sub.as_deref().map(|s| format!("workload {s}")),
                e.job.as_deref().map(|j| format!("job {j}")),
                e.jti.as_deref().map(|j| format!("token {j}")),
                e.approval_id.as_deref().map(|a| format!("request {a}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", ");
            views::Action {
                time: e.time.clone(),
                event: views::event_name(e),
                operator: e.operator.clone().unwrap_or_default(),
                via: e.via.clone(),
                what,
                comment: e.comment.clone(),
            }
        })
        .collect();
    html(
        StatusCode::OK,
        views::live(
            &signed.frame("Live", Nav::Live),
            &signed.session.csrf,
            tokens.as_ref().map(|t| (t.tokens.as_slice(), t.untracked)),
            &workloads,
            credentials
                .as_deref()
                .map_err(|refused| refused.description.as_str()),
            &actions,
            console.now(),
        ),
    )
}

async fn revoke_token(
    State(console): State<Arc<Console>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Path(jti): Path<String>,
    body: Body,
) -> Response {
    let (signed, _) = match console.form(&headers, body).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if !valid_id(&jti) {
        return console.after(&signed, Err("no such token".into()), "/live");
    }
    let origin = console.origin_of_request(peer.map(|axum::Extension(p)| p), &headers);
    let outcome = console
        .api
        .revoke_token(&signed.session.signed, &jti, &origin)
        .await
        .map(|()| format!("Token {jti} revoked."))
        .map_err(|refused| refused.description);
    console.after(&signed, outcome, "/live")
}

async fn revoke_job(
    State(console): State<Arc<Console>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (signed, form) = match console.form(&headers, body).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let (Some(workload), Some(job)) = (form.get("workload"), form.get("job")) else {
        return console.after(
            &signed,
            Err("name the workload and the job".into()),
            "/live",
        );
    };
    let origin = console.origin_of_request(peer.map(|axum::Extension(p)| p), &headers);
    let outcome = console
        .api
        .revoke_job(&signed.session.signed, workload, job, &origin)
        .await
        .map(|at| format!("Job {job} of {workload} revoked at {at}."))
        .map_err(|refused| refused.description);
    console.after(&signed, outcome, "/live")
}

async fn set_workload(
    State(console): State<Arc<Console>>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    let stop = match action.as_str() {
        "stop" => true,
        "enable" => false,
        _ => return plain(StatusCode::NOT_FOUND, "no such page"),
    };
    let (signed, form) = match console.form(&headers, body).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let origin = console.origin_of_request(peer.map(|axum::Extension(p)| p), &headers);
    let comment = form.get("comment").map(str::to_owned);
    let outcome = console
        .api
        .set_workload(&signed.session.signed, &name, stop, comment, &origin)
        .await
        .map(|state| {
            if state.stopped {
                format!(
                    "Workload {} stopped: every token it held is revoked; it mints nothing until enabled.",
                    state.workload
                )
            } else {
                format!("Workload {} enabled: it may mint again.", state.workload)
            }
        })
        .map_err(|refused| refused.description);
    console.after(&signed, outcome, "/live")
}

/// The events the Audit page filters by.
const EVENTS: &[&str] = &[
    "token_minted",
    "token_denied",
    "token_revoked",
    "job_revoked",
    "step_revoked",
    "approval_requested",
    "approval_granted",
    "approval_denied",
    "approval_revoked",
    "approval_expired",
    "approval_ended",
    "approval_refused",
    "workload_stopped",
    "workload_enabled",
    "operator_signed_in",
    "policy_loaded",
    "policy_refused",
    "target_credential_minted",
    "target_credential_revoked",
    "audit_checkpoint",
];

async fn audit_page(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let signed = match console.signed(&headers, "/audit") {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let query = query(raw);
    let field = |name: &str| {
        query
            .get(name)
            .map(|v| v.chars().take(128).collect::<String>())
            .unwrap_or_default()
    };
    let filter = views::AuditFilter {
        workload: field("workload"),
        job: field("job"),
        event: field("event"),
    };
    console.tail.refresh(&console.api).await;
    let records = console.tail.recent(AUDIT_PAGE_LEN, |r| {
        (filter.workload.is_empty() || r.entry.sub.as_deref() == Some(filter.workload.as_str()))
            && (filter.job.is_empty() || r.entry.job.as_deref() == Some(filter.job.as_str()))
            && (filter.event.is_empty() || views::event_name(&r.entry) == filter.event)
    });
    html(
        StatusCode::OK,
        views::audit(
            &signed.frame("Audit", Nav::Audit),
            &console.tail.status(),
            &filter,
            EVENTS,
            &records,
        ),
    )
}

async fn policy_page(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let signed = match console.signed(&headers, "/policy") {
        Ok(signed) => signed,
        Err(response) => return *response,
    };
    let policy = console.api.policy();
    let today = console.api.now().date_naive();
    let workflows: Vec<views::WorkflowRow> = policy
        .workflows()
        .map(|w| views::WorkflowRow {
            name: w.name().to_owned(),
            review_by: w.review_by().to_string(),
            days_left: (w.review_by() - today).num_days(),
            on_overdue: policy.overdue_action().as_str(),
            steps: w
                .steps()
                .map(|s| {
                    (
                        s.name().to_owned(),
                        s.scopes().iter().map(|p| p.as_str().to_owned()).collect(),
                        s.elevation().map(|e| {
                            format!(
                                "{} by {} of {}",
                                e.scopes()
                                    .iter()
                                    .map(|p| p.as_str())
                                    .collect::<Vec<_>>()
                                    .join(" "),
                                e.rules().quorum,
                                e.rules()
                                    .approver_groups
                                    .iter()
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }),
                    )
                })
                .collect(),
        })
        .collect();
    let report = console.reports.get(&console.api).await;
    html(
        StatusCode::OK,
        views::policy(
            &signed.frame("Policy", Nav::Policy),
            Some(policy.digest()),
            &workflows,
            report.as_ref().as_ref(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_in_the_console() {
        assert_eq!(return_path(Some("/approvals/apr-1")), "/approvals/apr-1");
        assert_eq!(
            return_path(Some("/audit?job=j&event=x")),
            "/audit?job=j&event=x"
        );
        for bad in [
            "https://evil.test/",
            "//evil.test/",
            "/\\evil.test",
            "approvals",
            "/login/start",
            "/callback?code=x",
            "/a b",
            "/a\"onload",
        ] {
            assert_eq!(return_path(Some(bad)), "/approvals", "{bad}");
        }
        assert_eq!(return_path(None), "/approvals");
    }

    #[test]
    fn origins_are_https_or_loopback_http() {
        assert_eq!(
            origin_of("https://stint.example.com").unwrap(),
            "https://stint.example.com"
        );
        assert_eq!(
            origin_of("https://stint.example.com:8781/").unwrap(),
            "https://stint.example.com:8781"
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8781").unwrap(),
            "http://127.0.0.1:8781"
        );
        assert!(origin_of("http://stint.example.com").is_err());
        assert!(origin_of("https://stint.example.com/console").is_err());
        assert!(origin_of("https://u:p@stint.example.com").is_err());
        assert!(origin_of("ftp://stint.example.com").is_err());
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("x__Host-stint-session=no; __Host-stint-session=yes"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("yes"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), None);
    }
}
