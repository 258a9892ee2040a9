//! A fake GitHub REST API for GitHub App tests: HTTPS on loopback with a
//! test CA (as [`crate::idp`]), as strict as GitHub's documentation, never
//! a stub that accepts anything. What it does, and where each rule comes
//! from:
//!
//! - **App JWTs** ("Generating a JSON Web Token (JWT) for a GitHub App",
//!   <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app>):
//!   signed with RS256 only, by the App's key; `iss` the App's client id or
//!   its id (a JSON string or number: GitHub's own examples send both);
//!   `iat` and `exp` integers; `iat` not in the future (GitHub recommends
//!   setting it 60 s in the past against clock drift, so any past `iat`
//!   passes); `exp` in the future and "no more than 10 minutes into the
//!   future" (measured from now, as the page says, not from `iat`: its
//!   Ruby sample sets `iat` now - 60 and `exp` now + 600, 660 s apart); a
//!   JWT must come as `Authorization: Bearer` ("if you are passing a JSON
//!   web token (JWT), you must use `Authorization: Bearer`"), while an
//!   installation token may also use `token`. The 401
//!   messages are GitHub's, as its API returns them (and as the client
//!   libraries' issue trackers quote them): "A JSON web token could not be
//!   decoded" (malformed, another algorithm, a bad signature, an unknown
//!   `iss`; octokit/auth-app.js#375 shows a wrong App id gives this one),
//!   "'Issued at' claim ('iat') must be an Integer representing the time
//!   that the assertion was issued", "'Expiration time' claim ('exp') must
//!   be a numeric value representing the future time at which the
//!   assertion expires", "'Expiration time' claim ('exp') is too far in the
//!   future".
//! - **Finding an installation** (`GET /orgs/{org}/installation`,
//!   `GET /users/{username}/installation`, `GET /repos/{owner}/{repo}/installation`,
//!   REST "GitHub Apps", <https://docs.github.com/en/rest/apps/apps>): App
//!   JWT only; 404 "Not Found" where the App is not installed (or, for a
//!   repository, where the installation does not cover it). `GET /app`
//!   answers the App.
//! - **Installation tokens** ("Create an installation access token for an
//!   app", `POST /app/installations/{installation_id}/access_tokens`, same
//!   page, and "Generating an installation access token for a GitHub App",
//!   <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-an-installation-access-token-for-a-github-app>):
//!   App JWT only; an optional JSON object with `repositories` (names),
//!   `repository_ids` and `permissions`. Without `repositories` and
//!   `repository_ids` (or with both empty) the token gets **all** the
//!   installation's repositories; without `permissions` (or with `{}`) it
//!   gets **all** the installation's permissions: a planner that forgets
//!   either is caught by its answer check. At most 500 repositories; a
//!   repository or a permission the installation does not have is a 422
//!   ("There is at least one repository that does not exist or is not
//!   accessible to the parent installation.", "The permissions requested
//!   are not granted to this installation."). 201 with `token` (`ghs_` and
//!   36 characters), `expires_at` one hour ahead (RFC 3339),
//!   `permissions` (with the `metadata: read` every App has),
//!   `repository_selection` and full `repositories` objects. A body that is
//!   not a JSON object is 400 "Problems parsing JSON".
//! - **Revocation** ("Revoke an installation access token",
//!   `DELETE /installation/token`, REST "Apps installations",
//!   <https://docs.github.com/en/rest/apps/installations>): with the token
//!   itself; 204, and from then on the token is 401 "Bad credentials"
//!   everywhere, as an unknown or expired one is ("Using an expired token
//!   produces a status code of 401").
//! - **What a token can do**: `GET /installation/repositories`,
//!   `GET /repos/{owner}/{repo}` (404 for a repository the token does not
//!   cover: GitHub hides what a credential cannot see),
//!   `GET`/`PUT /repos/{owner}/{repo}/contents/{path}` (`contents: read` /
//!   `write`, else 403 "Resource not accessible by integration" with the
//!   `x-accepted-github-permissions` header), `GET /rate_limit`.
//! - **Every answer** ("Rate limits for the REST API",
//!   <https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api>,
//!   and "Troubleshooting the REST API"): a unique `x-github-request-id`;
//!   `x-ratelimit-limit`, `-remaining`, `-used`, `-reset` and
//!   `-resource: core`, counted per installation for token requests (5000
//!   an hour), per App for JWT requests, per address for others (60); at 0
//!   remaining, 403 "API rate limit exceeded for installation ID N." with
//!   `x-ratelimit-remaining: 0`; a secondary limit is 403 or 429 with
//!   `retry-after` and "You have exceeded a secondary rate limit". Errors are
//!   `{"message", "documentation_url", "status"}`.
//! - **Requests** ("Getting started with the REST API"): a `User-Agent`
//!   header is required (403 without one); an `X-GitHub-Api-Version` must be
//!   a version GitHub has (400 otherwise).
//!
//! Not from GitHub's documentation (GitHub does not say; these are the
//! fake's choices, as close as known): the 413 for a body over 1 MiB, the
//! 422 message for more than 500 repositories, and 401 "Bad credentials"
//! for an App JWT where an installation token is needed.

use crate::TlsListener;
use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hyper::{Request, Response};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The fake App's id.
pub const APP_ID: u64 = 424242;
/// The fake App's client id.
pub const CLIENT_ID: &str = "Iv23liFAKEAPP0000001";
/// The fake App's slug.
pub const APP_SLUG: &str = "stint-fake";
/// Requests an installation may make in an hour.
pub const INSTALLATION_RATE_LIMIT: u32 = 5000;
/// Requests the App may make with JWTs in an hour.
pub const APP_RATE_LIMIT: u32 = 5000;
/// Unauthenticated requests an address may make in an hour.
pub const ANONYMOUS_RATE_LIMIT: u32 = 60;
/// The largest request body the fake reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most repositories one installation token may name.
pub const MAX_TOKEN_REPOSITORIES: usize = 500;
/// How long an installation token lives.
pub const TOKEN_LIFETIME_SECS: i64 = 3600;
/// How far in the future an App JWT's `exp` may be.
pub const MAX_JWT_LIFETIME_SECS: i64 = 600;
/// REST API versions GitHub has (`X-GitHub-Api-Version`).
pub const API_VERSIONS: &[&str] = &["2022-11-28", "2026-03-10"];

/// GitHub's 401 for a JWT that is malformed, not RS256, badly signed or
/// from an unknown App.
pub const JWT_UNDECODABLE: &str = "A JSON web token could not be decoded";
/// GitHub's 401 for an `iat` that is not an integer or is in the future.
pub const JWT_BAD_IAT: &str = "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued";
/// GitHub's 401 for an `exp` that is not an integer or is past.
pub const JWT_BAD_EXP: &str = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";
/// GitHub's 401 for an `exp` more than 10 minutes ahead.
pub const JWT_EXP_TOO_FAR: &str = "'Expiration time' claim ('exp') is too far in the future";
/// GitHub's 401 for an unknown, revoked or expired token.
pub const BAD_CREDENTIALS: &str = "Bad credentials";
/// GitHub's 401 without credentials.
pub const REQUIRES_AUTHENTICATION: &str = "Requires authentication";
/// GitHub's 422 for a repository outside the installation.
pub const REPOSITORY_NOT_ACCESSIBLE: &str = "There is at least one repository that does not exist or is not accessible to the parent installation.";
/// GitHub's 422 for a permission outside the installation's.
pub const PERMISSIONS_NOT_GRANTED: &str =
    "The permissions requested are not granted to this installation.";
/// GitHub's 403 for a token without the permission an endpoint needs.
pub const NOT_ACCESSIBLE: &str = "Resource not accessible by integration";
/// The start of GitHub's secondary rate limit message.
pub const SECONDARY_RATE_LIMIT: &str = "You have exceeded a secondary rate limit";

const REST_DOCS: &str = "https://docs.github.com/rest";
const CREATE_TOKEN_DOCS: &str =
    "https://docs.github.com/rest/apps/apps#create-an-installation-access-token-for-an-app";
const RATE_LIMIT_DOCS: &str =
    "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api";

/// Which requests a [`Fault`] applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /app/installations/{id}/access_tokens`.
    CreateToken,
    /// `DELETE /installation/token`.
    RevokeToken,
    /// `GET /orgs/{org}/installation`, `/users/{user}/installation`,
    /// `/repos/{owner}/{repo}/installation`.
    FindInstallation,
    /// Every request.
    Any,
}

/// What goes wrong with the next requests of a [`Route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status instead. 403 or 429 are a primary rate limit
    /// (`x-ratelimit-remaining: 0`, "API rate limit exceeded ...") unless
    /// `secondary`, which gives GitHub's secondary-limit message; any
    /// status gets `retry-after` if given.
    Status {
        /// The HTTP status.
        status: u16,
        /// `retry-after`, in seconds.
        retry_after_secs: Option<u64>,
        /// A secondary rate limit rather than a primary one.
        secondary: bool,
    },
    /// Answer normally, after this long.
    Delay(Duration),
    /// Close the connection without answering.
    Drop,
}

/// An installation token the fake issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The token (`ghs_...`).
    pub token: String,
    /// Its installation.
    pub installation_id: u64,
    /// The repositories it covers (names, as the installation spells them).
    pub repositories: Vec<String>,
    /// Its permissions, `metadata: read` included.
    pub permissions: BTreeMap<String, String>,
    /// `selected` or `all`, as answered.
    pub repository_selection: String,
    /// When it expires, in Unix seconds.
    pub expires_at: i64,
    /// Whether `DELETE /installation/token` revoked it.
    pub revoked: bool,
    /// SHA-256 of the token, lowercase hex.
    pub sha256_hex: String,
}

/// A request the fake answered (never its `Authorization` header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// The method.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The status answered; 0 for a dropped connection.
    pub status: u16,
    /// The `x-github-request-id` answered.
    pub request_id: String,
}

struct Repository {
    id: u64,
    name: String,
    /// Path -> (content, blob sha).
    files: BTreeMap<String, (Vec<u8>, String)>,
}

struct Installation {
    id: u64,
    owner: String,
    account_id: u64,
    account_type: &'static str,
    repositories: Vec<Repository>,
    permissions: BTreeMap<String, String>,
    rate_remaining: u32,
}

struct State {
    api_url: String,
    public_key: Vec<u8>,
    installations: Vec<Installation>,
    faults: VecDeque<(Route, usize, Fault)>,
    tokens: Vec<IssuedToken>,
    requests: Vec<LoggedRequest>,
    app_rate_remaining: u32,
    anonymous_rate_remaining: u32,
    rate_reset: i64,
    clock_offset_secs: i64,
    next_id: u64,
    request_counter: u64,
}

impl State {
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.clock_offset_secs
    }
}

/// A running fake GitHub.
pub struct FakeGithub {
    /// Its API's base URL: `https://127.0.0.1:PORT`.
    pub api_url: String,
    /// The CA its certificate chains to, as a PEM file.
    pub ca_file: PathBuf,
    /// The App's id ([`APP_ID`]).
    pub app_id: u64,
    /// The App's client id ([`CLIENT_ID`]).
    pub client_id: String,
    /// The App's private key, PKCS#8 PEM.
    pub key_pkcs8_pem: PathBuf,
    /// The same key, PKCS#1 PEM.
    pub key_pkcs1_pem: PathBuf,
    /// Another RSA key, not the App's.
    pub wrong_key_pem: PathBuf,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The DER inside a PEM file, and its label (`PRIVATE KEY`, `RSA PRIVATE KEY`).
pub fn read_pem(path: &Path) -> (String, Vec<u8>) {
    let text = std::fs::read_to_string(path).unwrap();
    let label = text
        .lines()
        .find_map(|l| l.strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .unwrap()
        .to_owned();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    (label, STANDARD.decode(body.trim()).unwrap())
}

/// An RSA key pair from a PKCS#8 or PKCS#1 PEM file.
pub fn rsa_key(path: &Path) -> ring::rsa::KeyPair {
    let (label, der) = read_pem(path);
    match label.as_str() {
        "PRIVATE KEY" => ring::rsa::KeyPair::from_pkcs8(&der).unwrap(),
        "RSA PRIVATE KEY" => ring::rsa::KeyPair::from_der(&der).unwrap(),
        other => panic!("not an RSA private key PEM: {other}"),
    }
}

/// A compact JWS of `claims` with `header`, signed RS256 by the key in
/// `key_pem` (whatever `header` says `alg` is).
pub fn sign_rs256(key_pem: &Path, header: &Value, claims: &Value) -> String {
    let key = rsa_key(key_pem);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature))
}

impl FakeGithub {
    /// Start it: App [`APP_ID`], client id [`CLIENT_ID`], no installations.
    pub async fn start() -> Self {
        let TlsListener {
            dir,
            ca_file,
            url: api_url,
            listener,
            acceptor,
        } = TlsListener::bind("github-ca.pem").await;
        let key_pkcs8_pem = fixture("github-app.pkcs8.pem");
        let key_pkcs1_pem = fixture("github-app.pkcs1.pem");
        let wrong_key_pem = fixture("github-wrong-app.pkcs8.pem");
        let public_key = rsa_key(&key_pkcs8_pem).public().as_ref().to_vec();
        let now = chrono::Utc::now().timestamp();
        let state = Arc::new(Mutex::new(State {
            api_url: api_url.clone(),
            public_key,
            installations: Vec::new(),
            faults: VecDeque::new(),
            tokens: Vec::new(),
            requests: Vec::new(),
            app_rate_remaining: APP_RATE_LIMIT,
            anonymous_rate_remaining: ANONYMOUS_RATE_LIMIT,
            rate_reset: now + 3600,
            clock_offset_secs: 0,
            next_id: 1_000_000,
            request_counter: 0,
        }));
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let state = served.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { handle(state, request).await }
                    });
                    let mut builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    // Oversized request heads are refused (431) by hyper.
                    builder.http1().max_buf_size(16 * 1024);
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            api_url,
            ca_file,
            app_id: APP_ID,
            client_id: CLIENT_ID.to_owned(),
            key_pkcs8_pem,
            key_pkcs1_pem,
            wrong_key_pem,
            state,
            task,
            _dir: dir,
        }
    }

    /// Install the App on organization `owner` as installation
    /// `installation_id`, with these repositories (each gets an id) and
    /// permissions (`metadata: read` is added, as GitHub makes every App
    /// have it).
    pub fn install(
        &self,
        owner: &str,
        installation_id: u64,
        repositories: &[&str],
        permissions: &[(&str, &str)],
    ) {
        self.install_as(
            owner,
            "Organization",
            installation_id,
            repositories,
            permissions,
        );
    }

    /// As [`Self::install`], on a user account (found by
    /// `GET /users/{user}/installation`, not `/orgs/`).
    pub fn install_user(
        &self,
        owner: &str,
        installation_id: u64,
        repositories: &[&str],
        permissions: &[(&str, &str)],
    ) {
        self.install_as(owner, "User", installation_id, repositories, permissions);
    }

    fn install_as(
        &self,
        owner: &str,
        account_type: &'static str,
        installation_id: u64,
        repositories: &[&str],
        permissions: &[(&str, &str)],
    ) {
        let mut state = self.state.lock().unwrap();
        assert!(
            state
                .installations
                .iter()
                .all(|i| i.id != installation_id && !i.owner.eq_ignore_ascii_case(owner)),
            "installation {installation_id} or owner {owner} already installed"
        );
        let mut permissions: BTreeMap<String, String> = permissions
            .iter()
            .map(|(name, level)| {
                assert!(level_rank(level).is_some(), "level {level}");
                ((*name).to_owned(), (*level).to_owned())
            })
            .collect();
        permissions
            .entry("metadata".into())
            .or_insert_with(|| "read".into());
        state.next_id += 1;
        let account_id = state.next_id;
        let repositories = repositories
            .iter()
            .map(|name| {
                state.next_id += 1;
                Repository {
                    id: state.next_id,
                    name: (*name).to_owned(),
                    files: BTreeMap::new(),
                }
            })
            .collect();
        state.installations.push(Installation {
            id: installation_id,
            owner: owner.to_owned(),
            account_id,
            account_type,
            repositories,
            permissions,
            rate_remaining: INSTALLATION_RATE_LIMIT,
        });
    }

    /// Make the next `count` requests of `route` go wrong with `fault`.
    pub fn fail_next(&self, route: Route, count: usize, fault: Fault) {
        if count > 0 {
            self.state
                .lock()
                .unwrap()
                .faults
                .push_back((route, count, fault));
        }
    }

    /// Every token issued, in order.
    pub fn tokens(&self) -> Vec<IssuedToken> {
        self.state.lock().unwrap().tokens.clone()
    }

    /// Whether `token` would be accepted now: issued, not revoked, not
    /// expired.
    pub fn is_live(&self, token: &str) -> bool {
        let state = self.state.lock().unwrap();
        let now = state.now();
        state
            .tokens
            .iter()
            .any(|t| t.token == token && !t.revoked && t.expires_at > now)
    }

    /// Every request answered, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Set what remains of installation `installation_id`'s hourly limit.
    pub fn set_rate_limit_remaining(&self, installation_id: u64, remaining: u32) {
        let mut state = self.state.lock().unwrap();
        let installation = state
            .installations
            .iter_mut()
            .find(|i| i.id == installation_id)
            .unwrap();
        installation.rate_remaining = remaining;
    }

    /// Move the fake's clock by `secs` (JWT times and token expiry).
    pub fn set_clock_offset(&self, secs: i64) {
        self.state.lock().unwrap().clock_offset_secs = secs;
    }

    /// Make `token` expired now.
    pub fn expire_token(&self, token: &str) {
        let mut state = self.state.lock().unwrap();
        let now = state.now();
        for issued in state.tokens.iter_mut().filter(|t| t.token == token) {
            issued.expires_at = now - 1;
        }
    }

    /// The fake's time, Unix seconds.
    pub fn now(&self) -> i64 {
        self.state.lock().unwrap().now()
    }

    /// A good App JWT, as GitHub's documentation makes one: `iat` 60 s
    /// ago, `exp` in 9 minutes, `iss` the client id, signed RS256 by the
    /// App's key.
    pub fn app_jwt(&self) -> String {
        let now = self.now();
        sign_rs256(
            &self.key_pkcs8_pem,
            &json!({"alg": "RS256", "typ": "JWT"}),
            &json!({"iat": now - 60, "exp": now + 540, "iss": self.client_id}),
        )
    }
}

fn level_rank(level: &str) -> Option<u8> {
    match level {
        "read" => Some(1),
        "write" => Some(2),
        "admin" => Some(3),
        _ => None,
    }
}

/// What the fake answers: status, JSON body (none for 204), extra
/// headers, and whose rate limit the request counts against.
struct Answer {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
    bucket: Bucket,
}

#[derive(Clone, Copy)]
enum Bucket {
    Anonymous,
    App,
    Installation(u64),
}

impl Answer {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
            bucket: Bucket::Anonymous,
        }
    }

    fn error(status: u16, message: &str, documentation_url: &str) -> Self {
        Self::json(
            status,
            json!({
                "message": message,
                "documentation_url": documentation_url,
                "status": status.to_string(),
            }),
        )
    }

    fn not_found() -> Self {
        Self::error(404, "Not Found", REST_DOCS)
    }

    fn in_bucket(mut self, bucket: Bucket) -> Self {
        self.bucket = bucket;
        self
    }
}

fn route_of(method: &hyper::Method, segments: &[&str]) -> Route {
    match (method.as_str(), segments) {
        ("POST", ["app", "installations", _, "access_tokens"]) => Route::CreateToken,
        ("DELETE", ["installation", "token"]) => Route::RevokeToken,
        ("GET", ["orgs", _, "installation"])
        | ("GET", ["users", _, "installation"])
        | ("GET", ["repos", _, _, "installation"]) => Route::FindInstallation,
        _ => Route::Any,
    }
}

fn take_fault(state: &mut State, route: Route) -> Option<Fault> {
    let index = state
        .faults
        .iter()
        .position(|(r, _, _)| *r == Route::Any || *r == route)?;
    let entry = state.faults.get_mut(index)?;
    entry.1 -= 1;
    let fault = entry.2.clone();
    if entry.1 == 0 {
        state.faults.remove(index);
    }
    Some(fault)
}

fn request_id(state: &mut State) -> String {
    state.request_counter += 1;
    let mut random = [0u8; 4];
    SystemRandom::new().fill(&mut random).unwrap();
    format!(
        "{:04X}:{:04X}:{:06X}:{:06X}:{:08X}",
        u16::from_be_bytes([random[0], random[1]]),
        u16::from_be_bytes([random[2], random[3]]),
        state.request_counter,
        std::process::id() & 0xFF_FFFF,
        state.now()
    )
}

async fn handle(
    state: Arc<Mutex<State>>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let route = route_of(&parts.method, &segments);
    let (id, fault) = {
        let mut state = state.lock().unwrap();
        (request_id(&mut state), take_fault(&mut state, route))
    };
    let log = |status: u16| {
        state.lock().unwrap().requests.push(LoggedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            status,
            request_id: id.clone(),
        });
    };
    match fault {
        Some(Fault::Drop) => {
            log(0);
            return Err(std::io::Error::other("fault: connection dropped"));
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        _ => {}
    }
    let body = axum::body::to_bytes(Body::new(body), MAX_BODY_BYTES).await;
    let answer = {
        let mut state = state.lock().unwrap();
        match (fault, body) {
            (
                Some(Fault::Status {
                    status,
                    retry_after_secs,
                    secondary,
                }),
                _,
            ) => fault_answer(
                &mut state,
                &parts.headers,
                &segments,
                status,
                retry_after_secs,
                secondary,
                &id,
            ),
            (_, Err(_)) => Answer::error(413, "Request body too large", REST_DOCS),
            (_, Ok(body)) => answer(&mut state, &parts.method, &parts.headers, &segments, &body),
        }
    };
    let response = finish(&state, answer, &id);
    log(response.status().as_u16());
    Ok(response)
}

fn finish(state: &Arc<Mutex<State>>, answer: Answer, id: &str) -> Response<Body> {
    let state = state.lock().unwrap();
    let (limit, remaining) = match answer.bucket {
        Bucket::Anonymous => (ANONYMOUS_RATE_LIMIT, state.anonymous_rate_remaining),
        Bucket::App => (APP_RATE_LIMIT, state.app_rate_remaining),
        Bucket::Installation(installation) => (
            INSTALLATION_RATE_LIMIT,
            state
                .installations
                .iter()
                .find(|i| i.id == installation)
                .map_or(0, |i| i.rate_remaining),
        ),
    };
    let mut builder = Response::builder()
        .status(answer.status)
        .header("x-github-request-id", id)
        .header("x-github-media-type", "github.v3; format=json")
        .header("x-github-api-version-selected", API_VERSIONS[0])
        .header("x-ratelimit-limit", limit.to_string())
        .header("x-ratelimit-remaining", remaining.to_string())
        .header(
            "x-ratelimit-used",
            limit.saturating_sub(remaining).to_string(),
        )
        .header("x-ratelimit-reset", state.rate_reset.to_string())
        .header("x-ratelimit-resource", "core");
    let mut overridden = Vec::new();
    for (name, value) in &answer.headers {
        overridden.push(*name);
        builder = builder.header(*name, value);
    }
    let mut response = match answer.body {
        Some(body) => builder
            .header("content-type", "application/json; charset=utf-8")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    };
    // A header the answer sets replaces the default one.
    for name in overridden {
        let values: Vec<_> = response.headers().get_all(name).iter().cloned().collect();
        if let Some(last) = values.last().cloned() {
            response.headers_mut().insert(name, last);
        }
    }
    response
}

fn fault_answer(
    state: &mut State,
    headers: &hyper::HeaderMap,
    segments: &[&str],
    status: u16,
    retry_after_secs: Option<u64>,
    secondary: bool,
    id: &str,
) -> Answer {
    let mut answer = if secondary {
        Answer::error(
            status,
            &format!(
                "{SECONDARY_RATE_LIMIT}. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID {id}."
            ),
            "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits",
        )
    } else if status == 403 || status == 429 {
        let who = match (segments, credential(headers)) {
            (["app", "installations", installation, ..], _) => {
                format!("installation ID {installation}")
            }
            (_, Credential::Token(token)) => {
                state.tokens.iter().find(|t| t.token == token).map_or_else(
                    || format!("app ID {APP_ID}"),
                    |t| format!("installation ID {}", t.installation_id),
                )
            }
            _ => format!("app ID {APP_ID}"),
        };
        let mut answer = Answer::error(
            status,
            &format!(
                "API rate limit exceeded for {who}. If you reach out to GitHub Support for help, please include the request ID {id}."
            ),
            RATE_LIMIT_DOCS,
        );
        answer.headers.push(("x-ratelimit-remaining", "0".into()));
        answer
    } else {
        let message = match status {
            500 => "Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => {
                "We couldn't respond to your request in time. Sorry about that. Please try resubmitting your request and contact us if the problem persists."
            }
            _ => "Fault",
        };
        Answer::error(status, message, REST_DOCS)
    };
    if let Some(secs) = retry_after_secs {
        answer.headers.push(("retry-after", secs.to_string()));
    }
    answer
}

enum Credential<'a> {
    None,
    Jwt(&'a str),
    Token(&'a str),
    Malformed,
}

fn credential(headers: &hyper::HeaderMap) -> Credential<'_> {
    let Some(value) = headers.get("authorization") else {
        return Credential::None;
    };
    let Ok(value) = value.to_str() else {
        return Credential::Malformed;
    };
    let Some((scheme, secret)) = value.split_once(' ') else {
        return Credential::Malformed;
    };
    if !(scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")) {
        return Credential::Malformed;
    }
    let secret = secret.trim();
    if secret.starts_with("ghs_") {
        Credential::Token(secret)
    } else if secret.matches('.').count() == 2 && scheme.eq_ignore_ascii_case("bearer") {
        // A JWT only as Bearer.
        Credential::Jwt(secret)
    } else {
        Credential::Malformed
    }
}

fn verify_jwt(state: &State, jwt: &str) -> Result<(), &'static str> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JWT_UNDECODABLE);
    };
    let decode = |part: &str| -> Option<serde_json::Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            Value::Object(map) => Some(map),
            _ => None,
        }
    };
    let header = decode(header).ok_or(JWT_UNDECODABLE)?;
    if header.get("alg") != Some(&json!("RS256")) {
        return Err(JWT_UNDECODABLE);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JWT_UNDECODABLE)?;
    let signed = &jwt[..jwt.rfind('.').ok_or(JWT_UNDECODABLE)?];
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &state.public_key,
    )
    .verify(signed.as_bytes(), &signature)
    .map_err(|_| JWT_UNDECODABLE)?;
    let claims = decode(payload).ok_or(JWT_UNDECODABLE)?;
    let issuer_ok = match claims.get("iss") {
        Some(Value::String(iss)) => *iss == APP_ID.to_string() || iss == CLIENT_ID,
        Some(Value::Number(iss)) => iss.as_u64() == Some(APP_ID),
        _ => false,
    };
    if !issuer_ok {
        return Err(JWT_UNDECODABLE);
    }
    let now = state.now();
    // as_i64 is None for a float or a string: GitHub wants integers.
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(JWT_BAD_IAT)?;
    if iat > now {
        return Err(JWT_BAD_IAT);
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(JWT_BAD_EXP)?;
    if exp <= now {
        return Err(JWT_BAD_EXP);
    }
    if exp > now + MAX_JWT_LIFETIME_SECS {
        return Err(JWT_EXP_TOO_FAR);
    }
    Ok(())
}

/// Charge one request to `bucket`, or refuse it at 0 remaining.
fn charge(state: &mut State, bucket: Bucket) -> Result<(), Answer> {
    let (remaining, who) = match bucket {
        Bucket::Anonymous => (
            &mut state.anonymous_rate_remaining,
            "your IP address".to_owned(),
        ),
        Bucket::App => (&mut state.app_rate_remaining, format!("app ID {APP_ID}")),
        Bucket::Installation(id) => match state.installations.iter_mut().find(|i| i.id == id) {
            Some(installation) => (
                &mut installation.rate_remaining,
                format!("installation ID {id}"),
            ),
            None => return Ok(()),
        },
    };
    if *remaining == 0 {
        return Err(Answer::error(
            403,
            &format!("API rate limit exceeded for {who}."),
            RATE_LIMIT_DOCS,
        )
        .in_bucket(bucket));
    }
    *remaining -= 1;
    Ok(())
}

fn require_app(state: &mut State, headers: &hyper::HeaderMap) -> Result<(), Answer> {
    let refused = |message: &str| Answer::error(401, message, REST_DOCS);
    match credential(headers) {
        Credential::None => Err(refused(REQUIRES_AUTHENTICATION)),
        Credential::Token(_) | Credential::Malformed => Err(refused(JWT_UNDECODABLE)),
        Credential::Jwt(jwt) => {
            verify_jwt(state, jwt).map_err(refused)?;
            charge(state, Bucket::App)
        }
    }
}

/// The index of the live token the request carries.
fn require_token(state: &mut State, headers: &hyper::HeaderMap) -> Result<usize, Answer> {
    let refused = |message: &str| Answer::error(401, message, REST_DOCS);
    let token = match credential(headers) {
        Credential::None => return Err(refused(REQUIRES_AUTHENTICATION)),
        Credential::Jwt(_) | Credential::Malformed => return Err(refused(BAD_CREDENTIALS)),
        Credential::Token(token) => token,
    };
    let now = state.now();
    let index = state
        .tokens
        .iter()
        .position(|t| t.token == token && !t.revoked && t.expires_at > now)
        .ok_or_else(|| refused(BAD_CREDENTIALS))?;
    charge(
        state,
        Bucket::Installation(state.tokens[index].installation_id),
    )?;
    Ok(index)
}

fn answer(
    state: &mut State,
    method: &hyper::Method,
    headers: &hyper::HeaderMap,
    segments: &[&str],
    body: &[u8],
) -> Answer {
    if headers
        .get("user-agent")
        .is_none_or(|ua| ua.as_bytes().is_empty())
    {
        return Answer::error(
            403,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.",
            REST_DOCS,
        );
    }
    if let Some(version) = headers.get("x-github-api-version")
        && !API_VERSIONS
            .iter()
            .any(|v| v.as_bytes() == version.as_bytes())
    {
        return Answer::error(
            400,
            &format!(
                "{} is not a supported version. Please use one of {}.",
                String::from_utf8_lossy(version.as_bytes()),
                API_VERSIONS.join(", ")
            ),
            "https://docs.github.com/rest/about-the-rest-api/api-versions",
        );
    }
    // Whose limit the request counts against, as it arrived.
    let bucket = match credential(headers) {
        Credential::Token(token) => state
            .tokens
            .iter()
            .find(|t| t.token == token && !t.revoked)
            .map_or(Bucket::Anonymous, |t| {
                Bucket::Installation(t.installation_id)
            }),
        Credential::Jwt(jwt) if verify_jwt(state, jwt).is_ok() => Bucket::App,
        _ => Bucket::Anonymous,
    };
    let result = match (method.as_str(), segments) {
        ("GET", ["app"]) => require_app(state, headers).map(|()| get_app(state)),
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            require_app(state, headers).map(|()| create_token(state, id, body))
        }
        ("GET", ["orgs", owner, "installation"]) => require_app(state, headers)
            .map(|()| find_installation(state, owner, None, Some("Organization"))),
        ("GET", ["users", owner, "installation"]) => require_app(state, headers)
            .map(|()| find_installation(state, owner, None, Some("User"))),
        ("GET", ["repos", owner, repo, "installation"]) => {
            require_app(state, headers).map(|()| find_installation(state, owner, Some(repo), None))
        }
        ("DELETE", ["installation", "token"]) => require_token(state, headers).map(|index| {
            state.tokens[index].revoked = true;
            Answer {
                status: 204,
                body: None,
                headers: Vec::new(),
                bucket: Bucket::Anonymous,
            }
        }),
        ("GET", ["installation", "repositories"]) => {
            require_token(state, headers).map(|index| list_repositories(state, index))
        }
        ("GET", ["repos", owner, repo]) => {
            require_token(state, headers).map(|index| get_repository(state, index, owner, repo))
        }
        ("GET" | "PUT", ["repos", owner, repo, "contents", path @ ..]) if !path.is_empty() => {
            let put = method == hyper::Method::PUT;
            require_token(state, headers)
                .map(|index| contents(state, index, owner, repo, &path.join("/"), put, body))
        }
        ("GET", ["rate_limit"]) => Ok(rate_limit(state, headers)),
        _ => Err(Answer::not_found()),
    };
    match result {
        Ok(answer) | Err(answer) => {
            let bucket = match answer.bucket {
                Bucket::Anonymous => bucket,
                set => set,
            };
            answer.in_bucket(bucket)
        }
    }
}

fn account_json(api_url: &str, login: &str, id: u64, account_type: &str) -> Value {
    json!({
        "login": login,
        "id": id,
        "node_id": format!("MDEyOk9yZ2FuaXphdGlvbnt{id}"),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
        "url": format!("{api_url}/users/{login}"),
        "html_url": format!("https://github.com/{login}"),
        "type": account_type,
        "site_admin": false,
    })
}

fn repository_json(api_url: &str, installation: &Installation, repository: &Repository) -> Value {
    let owner = &installation.owner;
    let name = &repository.name;
    json!({
        "id": repository.id,
        "node_id": format!("R_kgDO{:08}", repository.id),
        "name": name,
        "full_name": format!("{owner}/{name}"),
        "private": true,
        "owner": account_json(api_url, owner, installation.account_id, installation.account_type),
        "html_url": format!("https://github.com/{owner}/{name}"),
        "url": format!("{api_url}/repos/{owner}/{name}"),
        "default_branch": "main",
        "visibility": "private",
    })
}

fn installation_json(api_url: &str, installation: &Installation) -> Value {
    json!({
        "id": installation.id,
        "account": account_json(api_url, &installation.owner, installation.account_id, installation.account_type),
        "app_id": APP_ID,
        "app_slug": APP_SLUG,
        "client_id": CLIENT_ID,
        "target_id": installation.account_id,
        "target_type": installation.account_type,
        "repository_selection": "selected",
        "access_tokens_url": format!("{api_url}/app/installations/{}/access_tokens", installation.id),
        "repositories_url": format!("{api_url}/installation/repositories"),
        "html_url": format!("https://github.com/organizations/{}/settings/installations/{}", installation.owner, installation.id),
        "permissions": installation.permissions,
        "events": [],
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "single_file_name": null,
        "has_multiple_single_files": false,
        "single_file_paths": [],
        "suspended_by": null,
        "suspended_at": null,
    })
}

fn get_app(state: &State) -> Answer {
    let owner = account_json(&state.api_url, "stint-fake-owner", 1, "Organization");
    Answer::json(
        200,
        json!({
            "id": APP_ID,
            "slug": APP_SLUG,
            "client_id": CLIENT_ID,
            "node_id": "MDExOkludGVncmF0aW9uNDI0MjQy",
            "owner": owner,
            "name": "Stint fake",
            "description": "",
            "external_url": "https://stint.example",
            "html_url": format!("https://github.com/apps/{APP_SLUG}"),
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "permissions": {"contents": "write", "metadata": "read"},
            "events": [],
            "installations_count": state.installations.len(),
        }),
    )
}

fn find_installation(
    state: &State,
    owner: &str,
    repository: Option<&str>,
    account_type: Option<&str>,
) -> Answer {
    let found = state.installations.iter().find(|i| {
        i.owner.eq_ignore_ascii_case(owner)
            && account_type.is_none_or(|t| t == i.account_type)
            && repository.is_none_or(|r| {
                i.repositories
                    .iter()
                    .any(|repo| repo.name.eq_ignore_ascii_case(r))
            })
    });
    match found {
        Some(installation) => Answer::json(200, installation_json(&state.api_url, installation)),
        None => Answer::not_found(),
    }
}

fn invalid(detail: &str) -> Answer {
    Answer::error(
        422,
        &format!("Invalid request.\n\n{detail}"),
        CREATE_TOKEN_DOCS,
    )
}

fn create_token(state: &mut State, id: &str, body: &[u8]) -> Answer {
    let Some(index) = id
        .parse::<u64>()
        .ok()
        .and_then(|id| state.installations.iter().position(|i| i.id == id))
    else {
        return Answer::not_found();
    };
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => map,
            _ => return Answer::error(400, "Problems parsing JSON", CREATE_TOKEN_DOCS),
        }
    };
    let installation = &state.installations[index];
    // Repositories, by name and by id.
    let mut chosen: Vec<usize> = Vec::new();
    let mut asked = 0;
    match request.get("repositories") {
        None => {}
        Some(Value::Array(names)) => {
            for name in names {
                let Some(name) = name.as_str() else {
                    return invalid(&format!("For 'items', {name} is not a string."));
                };
                asked += 1;
                match installation
                    .repositories
                    .iter()
                    .position(|r| r.name.eq_ignore_ascii_case(name))
                {
                    Some(found) => chosen.push(found),
                    None => {
                        return Answer::error(422, REPOSITORY_NOT_ACCESSIBLE, CREATE_TOKEN_DOCS);
                    }
                }
            }
        }
        Some(other) => {
            return invalid(&format!(
                "For 'properties/repositories', {other} is not an array."
            ));
        }
    }
    match request.get("repository_ids") {
        None => {}
        Some(Value::Array(ids)) => {
            for id in ids {
                let Some(id) = id.as_u64() else {
                    return invalid(&format!("For 'items', {id} is not an integer."));
                };
                asked += 1;
                match installation.repositories.iter().position(|r| r.id == id) {
                    Some(found) => chosen.push(found),
                    None => {
                        return Answer::error(422, REPOSITORY_NOT_ACCESSIBLE, CREATE_TOKEN_DOCS);
                    }
                }
            }
        }
        Some(other) => {
            return invalid(&format!(
                "For 'properties/repository_ids', {other} is not an array."
            ));
        }
    }
    if asked > MAX_TOKEN_REPOSITORIES {
        return Answer::error(
            422,
            &format!(
                "Too many repositories requested: at most {MAX_TOKEN_REPOSITORIES} may be listed."
            ),
            CREATE_TOKEN_DOCS,
        );
    }
    chosen.sort_unstable();
    chosen.dedup();
    let (selection, chosen) = if chosen.is_empty() {
        // Nothing named: all the installation's repositories.
        ("selected", (0..installation.repositories.len()).collect())
    } else {
        ("selected", chosen)
    };
    // Permissions.
    let permissions: BTreeMap<String, String> = match request.get("permissions") {
        None => installation.permissions.clone(),
        Some(Value::Object(map)) if map.is_empty() => installation.permissions.clone(),
        Some(Value::Object(map)) => {
            let mut granted = BTreeMap::new();
            for (name, level) in map {
                let Some(level) = level.as_str().filter(|l| level_rank(l).is_some()) else {
                    return invalid(&format!(
                        "For 'properties/{name}', {level} is not a member of [\"read\", \"write\", \"admin\"]."
                    ));
                };
                let allowed = installation
                    .permissions
                    .get(name)
                    .and_then(|have| level_rank(have));
                if allowed < level_rank(level) {
                    return Answer::error(422, PERMISSIONS_NOT_GRANTED, CREATE_TOKEN_DOCS);
                }
                granted.insert(name.clone(), level.to_owned());
            }
            granted
                .entry("metadata".into())
                .or_insert_with(|| "read".into());
            granted
        }
        Some(other) => {
            return invalid(&format!(
                "For 'properties/permissions', {other} is not an object."
            ));
        }
    };
    let mut random = [0u8; 36];
    SystemRandom::new().fill(&mut random).unwrap();
    const ALPHANUMERIC: &[u8; 62] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let token: String = std::iter::once("ghs_".to_owned())
        .chain(
            random
                .iter()
                .map(|b| char::from(ALPHANUMERIC[usize::from(*b) % 62]).to_string()),
        )
        .collect();
    let expires_at = state.now() + TOKEN_LIFETIME_SECS;
    let repositories: Vec<Value> = chosen
        .iter()
        .map(|i| repository_json(&state.api_url, installation, &installation.repositories[*i]))
        .collect();
    let names: Vec<String> = chosen
        .iter()
        .map(|i| installation.repositories[*i].name.clone())
        .collect();
    let issued = IssuedToken {
        token: token.clone(),
        installation_id: installation.id,
        repositories: names,
        permissions: permissions.clone(),
        repository_selection: selection.to_owned(),
        expires_at,
        revoked: false,
        sha256_hex: hex_sha256(token.as_bytes()),
    };
    state.tokens.push(issued);
    Answer::json(
        201,
        json!({
            "token": token,
            "expires_at": rfc3339(expires_at),
            "permissions": permissions,
            "repository_selection": selection,
            "repositories": repositories,
        }),
    )
    .in_bucket(Bucket::App)
}

fn hex_sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn token_installation(state: &State, index: usize) -> (&IssuedToken, &Installation) {
    let token = &state.tokens[index];
    let installation = state
        .installations
        .iter()
        .find(|i| i.id == token.installation_id)
        .unwrap();
    (token, installation)
}

fn list_repositories(state: &State, index: usize) -> Answer {
    let (token, installation) = token_installation(state, index);
    let repositories: Vec<Value> = installation
        .repositories
        .iter()
        .filter(|r| token.repositories.contains(&r.name))
        .map(|r| repository_json(&state.api_url, installation, r))
        .collect();
    Answer::json(
        200,
        json!({
            "total_count": repositories.len(),
            "repository_selection": token.repository_selection,
            "repositories": repositories,
        }),
    )
}

/// The index of `owner/repo` in the token's installation, if the token
/// covers it.
fn covered(state: &State, index: usize, owner: &str, repo: &str) -> Option<usize> {
    let (token, installation) = token_installation(state, index);
    if !installation.owner.eq_ignore_ascii_case(owner) {
        return None;
    }
    installation
        .repositories
        .iter()
        .position(|r| r.name.eq_ignore_ascii_case(repo) && token.repositories.contains(&r.name))
}

fn get_repository(state: &State, index: usize, owner: &str, repo: &str) -> Answer {
    match covered(state, index, owner, repo) {
        Some(found) => {
            let (_, installation) = token_installation(state, index);
            Answer::json(
                200,
                repository_json(
                    &state.api_url,
                    installation,
                    &installation.repositories[found],
                ),
            )
        }
        None => Answer::not_found(),
    }
}

fn contents(
    state: &mut State,
    index: usize,
    owner: &str,
    repo: &str,
    path: &str,
    put: bool,
    body: &[u8],
) -> Answer {
    let Some(found) = covered(state, index, owner, repo) else {
        return Answer::not_found();
    };
    let needed = if put { "write" } else { "read" };
    let has = state.tokens[index]
        .permissions
        .get("contents")
        .and_then(|l| level_rank(l));
    if has < level_rank(needed) {
        let mut answer = Answer::error(403, NOT_ACCESSIBLE, REST_DOCS);
        answer.headers.push((
            "x-accepted-github-permissions",
            format!("contents={needed}"),
        ));
        return answer;
    }
    let installation_index = state
        .installations
        .iter()
        .position(|i| i.id == state.tokens[index].installation_id)
        .unwrap();
    let api_url = state.api_url.clone();
    let repository = &mut state.installations[installation_index].repositories[found];
    let name = path.rsplit('/').next().unwrap_or(path).to_owned();
    if !put {
        return match repository.files.get(path) {
            Some((content, sha)) => Answer::json(
                200,
                json!({
                    "type": "file",
                    "encoding": "base64",
                    "size": content.len(),
                    "name": name,
                    "path": path,
                    "content": STANDARD.encode(content),
                    "sha": sha,
                    "url": format!("{api_url}/repos/{owner}/{repo}/contents/{path}"),
                }),
            ),
            None => Answer::not_found(),
        };
    }
    let request = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        _ => return Answer::error(400, "Problems parsing JSON", REST_DOCS),
    };
    let message = request.get("message").and_then(Value::as_str);
    let content = request.get("content").and_then(Value::as_str);
    let (Some(message), Some(content)) = (message, content) else {
        return Answer::error(
            422,
            "Invalid request.\n\n\"message\", \"content\" weren't supplied.",
            REST_DOCS,
        );
    };
    let Ok(content) = STANDARD.decode(content) else {
        return Answer::error(422, "content is not valid Base64", REST_DOCS);
    };
    let existing = repository.files.get(path).map(|(_, sha)| sha.clone());
    if let Some(existing) = &existing {
        match request.get("sha").and_then(Value::as_str) {
            None => {
                return Answer::error(
                    422,
                    "Invalid request.\n\n\"sha\" wasn't supplied.",
                    REST_DOCS,
                );
            }
            Some(sha) if sha != existing => {
                return Answer::error(409, &format!("{path} does not match {sha}"), REST_DOCS);
            }
            Some(_) => {}
        }
    }
    let sha = hex_sha256(&content)[..40].to_owned();
    repository
        .files
        .insert(path.to_owned(), (content, sha.clone()));
    Answer::json(
        if existing.is_some() { 200 } else { 201 },
        json!({
            "content": {"name": name, "path": path, "sha": sha, "type": "file"},
            "commit": {"sha": hex_sha256(message.as_bytes())[..40].to_owned(), "message": message},
        }),
    )
}

fn rate_limit(state: &State, headers: &hyper::HeaderMap) -> Answer {
    let (limit, remaining) = match credential(headers) {
        Credential::Token(token) => state
            .tokens
            .iter()
            .find(|t| t.token == token && !t.revoked)
            .and_then(|t| {
                state
                    .installations
                    .iter()
                    .find(|i| i.id == t.installation_id)
            })
            .map_or(
                (ANONYMOUS_RATE_LIMIT, state.anonymous_rate_remaining),
                |i| (INSTALLATION_RATE_LIMIT, i.rate_remaining),
            ),
        Credential::Jwt(jwt) if verify_jwt(state, jwt).is_ok() => {
            (APP_RATE_LIMIT, state.app_rate_remaining)
        }
        _ => (ANONYMOUS_RATE_LIMIT, state.anonymous_rate_remaining),
    };
    let core = json!({
        "limit": limit,
        "remaining": remaining,
        "reset": state.rate_reset,
        "used": limit.saturating_sub(remaining),
    });
    Answer::json(200, json!({"resources": {"core": core}, "rate": core}))
}
