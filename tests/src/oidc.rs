//! A test OpenID Connect provider for the console's sign-in: HTTPS on
//! loopback with a test CA, discovery, a JWK set, an authorization
//! endpoint (a page with a "Sign in as NAME" button per user, as an
//! identity provider's login page) and a token endpoint.
//!
//! It is as strict as OpenID Connect Core 1.0 and RFC 7636 say a provider
//! is: the client and its redirect URI must be the registered ones (else an
//! error page, never a redirect); `response_type=code`, `scope` with
//! `openid`, `state`, `nonce` and a `S256` code challenge are required; a
//! code is good once, for 60 s, for the client and redirect URI it was
//! issued to, and only with the verifier of its challenge; a
//! confidential client authenticates with `client_secret_basic`. Its
//! errors are RFC 6749's (`invalid_grant`, `invalid_client`, ...).
//!
//! Knobs let a test make it misbehave as a compromised or buggy provider
//! would (a wrong `nonce` or `aud` in the ID token); the log lets a test
//! see what the console sent.

use crate::TlsListener;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use stint_core::form::FormParams;
use stint_core::jose::{Algorithm, SigningKey};

/// What the provider saw, for assertions.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Each authorization request's parameters.
    pub authorizations: Vec<HashMap<String, String>>,
    /// Each token request's form and whether its client authenticated
    /// with Basic.
    pub token_requests: Vec<(HashMap<String, String>, bool)>,
    /// Token requests refused, with the error.
    pub token_errors: Vec<String>,
}

/// How to make the ID tokens wrong.
#[derive(Debug, Clone, Default)]
pub struct Misbehave {
    /// Put this `nonce` in ID tokens instead of the one asked for.
    pub nonce: Option<String>,
    /// Put this `aud` in ID tokens.
    pub aud: Option<Value>,
}

struct Code {
    user: String,
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: String,
    issued: i64,
}

struct Inner {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_uri: Mutex<String>,
    users: Vec<String>,
    key: SigningKey,
    codes: Mutex<HashMap<String, Code>>,
    used: Mutex<Vec<String>>,
    seen: Mutex<Seen>,
    misbehave: Mutex<Misbehave>,
}

/// A running provider.
pub struct OidcProvider {
    pub issuer: String,
    pub ca_file: PathBuf,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pairs(params: &FormParams) -> HashMap<String, String> {
    params
        .names()
        .filter_map(|n| params.get(n).map(|v| (n.to_owned(), v.to_owned())))
        .collect()
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

fn html_page(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Test IdP</title></head><body>{body}</body></html>"),
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl OidcProvider {
    /// A provider with one registered client (`client_secret`: confidential
    /// with Basic; `None`: public) and these users (each user's `sub` is
    /// `sub-NAME`). The redirect URI is set once the console is bound.
    pub async fn start(client_id: &str, client_secret: Option<&str>, users: &[&str]) -> Self {
        let TlsListener {
            dir,
            ca_file,
            url: issuer,
            listener,
            acceptor,
        } = TlsListener::bind("oidc-ca.pem").await;
        let (key, _) = SigningKey::generate(Algorithm::ES256, &SystemRandom::new()).unwrap();
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.map(str::to_owned),
            redirect_uri: Mutex::new(String::new()),
            users: users.iter().map(|u| (*u).to_owned()).collect(),
            key,
            codes: Mutex::new(HashMap::new()),
            used: Mutex::new(Vec::new()),
            seen: Mutex::new(Seen::default()),
            misbehave: Mutex::new(Misbehave::default()),
        });
        let router = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize).post(authorize_post))
            .route("/token", axum::routing::post(token))
            .with_state(Arc::clone(&inner));
        let task = stint_server::tls::serve_router(listener, acceptor, router);
        Self {
            issuer,
            ca_file,
            inner,
            task,
            _dir: dir,
        }
    }

    /// Register the client's redirect URI.
    pub fn set_redirect_uri(&self, uri: &str) {
        *self.inner.redirect_uri.lock().unwrap() = uri.to_owned();
    }

    /// What it saw so far.
    pub fn seen(&self) -> Seen {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Make the next ID tokens wrong (or right again, with the default).
    pub fn misbehave(&self, how: Misbehave) {
        *self.inner.misbehave.lock().unwrap() = how;
    }

    /// An ID token for `user`, for the console's client, as the token
    /// endpoint makes them (for calling the broker's API as that operator).
    pub fn id_token(&self, user: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": self.inner.issuer,
            "sub": Self::subject(user),
            "aud": self.inner.client_id,
            "iat": now,
            "exp": now + 300,
            "groups": ["sre"],
        });
        self.inner
            .key
            .sign_jwt("JWT", &claims, &SystemRandom::new())
            .unwrap()
    }

    /// The `sub` of a user.
    pub fn subject(user: &str) -> String {
        format!("sub-{user}")
    }
}

async fn discovery(State(inner): State<Arc<Inner>>) -> Response {
    axum::Json(json!({
        "issuer": inner.issuer,
        "authorization_endpoint": format!("{}/authorize", inner.issuer),
        "token_endpoint": format!("{}/token", inner.issuer),
        "jwks_uri": format!("{}/jwks", inner.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
    }))
    .into_response()
}

async fn jwks(State(inner): State<Arc<Inner>>) -> Response {
    axum::Json(json!({"keys": [inner.key.public_jwk()]})).into_response()
}

/// The authorization request checked (OpenID Connect Core 3.1.2.1-2):
/// its parameters, or the page or redirect that refuses it.
fn check(inner: &Inner, params: &FormParams) -> Result<HashMap<String, String>, Box<Response>> {
    let redirect_uri = inner.redirect_uri.lock().unwrap().clone();
    if params.get("client_id") != Some(inner.client_id.as_str()) {
        return Err(Box::new(html_page(
            StatusCode::BAD_REQUEST,
            "<p>unknown client</p>".into(),
        )));
    }
    if params.get("redirect_uri") != Some(redirect_uri.as_str()) {
        return Err(Box::new(html_page(
            StatusCode::BAD_REQUEST,
            "<p>redirect_uri mismatch</p>".into(),
        )));
    }
    let refuse = |code: &str| {
        let mut url = url_with(&redirect_uri);
        url.query_pairs_mut().append_pair("error", code);
        if let Some(state) = params.get("state") {
            url.query_pairs_mut().append_pair("state", state);
        }
        Box::new(see_other(url.as_str()))
    };
    if params.get("response_type") != Some("code") {
        return Err(refuse("unsupported_response_type"));
    }
    if !params
        .get("scope")
        .is_some_and(|s| s.split(' ').any(|s| s == "openid"))
    {
        return Err(refuse("invalid_scope"));
    }
    if params.get("state").is_none() || params.get("nonce").is_none() {
        return Err(refuse("invalid_request"));
    }
    if params.get("code_challenge_method") != Some("S256")
        || !params
            .get("code_challenge")
            .is_some_and(|c| c.len() == 43 && URL_SAFE_NO_PAD.decode(c).is_ok())
    {
        return Err(refuse("invalid_request"));
    }
    Ok(pairs(params))
}

fn url_with(base: &str) -> reqwest::Url {
    reqwest::Url::parse(base).unwrap()
}

fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_owned())],
    )
        .into_response()
}

async fn authorize(State(inner): State<Arc<Inner>>, RawQuery(raw): RawQuery) -> Response {
    let params = FormParams::parse(raw.unwrap_or_default().as_bytes()).unwrap_or_default();
    let checked = match check(&inner, &params) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    inner
        .seen
        .lock()
        .unwrap()
        .authorizations
        .push(checked.clone());
    let hidden: String = checked
        .iter()
        .map(|(n, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(n),
                escape(v)
            )
        })
        .collect();
    let forms: String = inner
        .users
        .iter()
        .map(|user| {
            format!(
                "<form method=\"post\" action=\"/authorize\">{hidden}<input type=\"hidden\" name=\"user\" value=\"{u}\"><button type=\"submit\" id=\"as-{u}\">Sign in as {u}</button></form>",
                u = escape(user)
            )
        })
        .collect();
    html_page(StatusCode::OK, format!("<h1>Test IdP</h1>{forms}"))
}

async fn authorize_post(State(inner): State<Arc<Inner>>, body: axum::body::Bytes) -> Response {
    let params = FormParams::parse(&body).unwrap_or_default();
    let checked = match check(&inner, &params) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let Some(user) = params
        .get("user")
        .filter(|u| inner.users.iter().any(|x| x == u))
    else {
        return html_page(StatusCode::BAD_REQUEST, "<p>no such user</p>".into());
    };
    let mut code = [0u8; 24];
    ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut code).unwrap();
    let code = URL_SAFE_NO_PAD.encode(code);
    inner.codes.lock().unwrap().insert(
        code.clone(),
        Code {
            user: user.to_owned(),
            client_id: checked["client_id"].clone(),
            redirect_uri: checked["redirect_uri"].clone(),
            challenge: checked["code_challenge"].clone(),
            nonce: checked["nonce"].clone(),
            issued: chrono::Utc::now().timestamp(),
        },
    );
    let mut url = url_with(&checked["redirect_uri"]);
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &checked["state"]);
    see_other(url.as_str())
}

async fn token(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let params = FormParams::parse(&body).unwrap_or_default();
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    inner
        .seen
        .lock()
        .unwrap()
        .token_requests
        .push((pairs(&params), basic.is_some()));
    let refuse = |status: StatusCode, code: &str, description: &str| {
        inner
            .seen
            .lock()
            .unwrap()
            .token_errors
            .push(code.to_owned());
        error(status, code, description)
    };
    // RFC 6749 2.3.1: the client authenticates as registered.
    let client = match (&inner.client_secret, &basic) {
        (Some(secret), Some(basic)) => {
            let (id, given) = basic.split_once(':').unwrap_or(("", ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(id) == inner.client_id && decode(given) == *secret)
                .then(|| inner.client_id.clone())
        }
        (None, None) => params.get("client_id").map(str::to_owned),
        _ => None,
    };
    let Some(client) = client.filter(|c| *c == inner.client_id) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    if params.get("grant_type") != Some("authorization_code") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "authorization_code only",
        );
    }
    let Some(code) = params.get("code") else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "no code");
    };
    if inner.used.lock().unwrap().iter().any(|u| u == code) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the code has been used",
        );
    }
    let Some(found) = inner.codes.lock().unwrap().remove(code) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_grant", "unknown code");
    };
    inner.used.lock().unwrap().push(code.to_owned());
    let now = chrono::Utc::now().timestamp();
    if now - found.issued > 60 {
        return refuse(StatusCode::BAD_REQUEST, "invalid_grant", "the code expired");
    }
    if found.client_id != client || params.get("redirect_uri") != Some(found.redirect_uri.as_str())
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the code was issued to another client or redirect URI",
        );
    }
    let verifier = params.get("code_verifier").unwrap_or("");
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    if !(43..=128).contains(&verifier.len()) || challenge != found.challenge {
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "PKCE verification failed",
        );
    }
    let misbehave = inner.misbehave.lock().unwrap().clone();
    let claims = json!({
        "iss": inner.issuer,
        "sub": OidcProvider::subject(&found.user),
        "aud": misbehave.aud.unwrap_or_else(|| json!(inner.client_id)),
        "iat": now,
        "exp": now + 300,
        "nonce": misbehave.nonce.unwrap_or(found.nonce),
        "groups": ["sre"],
    });
    let id_token = inner
        .key
        .sign_jwt("JWT", &claims, &SystemRandom::new())
        .unwrap();
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "access_token": "not-used",
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        })),
    )
        .into_response()
}
