//! `stintd --dev`'s identity provider: a small, strict OpenID Connect
//! provider on loopback, so that the console's sign-in is the real one
//! (authorization code, PKCE `S256`, `state`, `nonce`, single-use codes)
//! with the demo operators, `alice` and `bob`, and no account anywhere.
//!
//! It is for development only: anyone who can reach it signs in as either
//! operator by clicking a button. It listens on loopback only, over HTTPS
//! with a CA made for it in the data directory (`dev-idp-ca.pem`), which
//! the dev broker and console trust.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, StatusCode, header};
use maud::{DOCTYPE, html};
use ring::rand::SystemRandom;
use serde_json::json;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use stint_core::form::FormParams;
use stint_core::jose::{Algorithm, SigningKey};

/// The demo operators: name (also their `sub`) and group.
pub const DEV_OPERATORS: &[(&str, &str)] = &[("alice", "sre"), ("bob", "sre")];
/// The console's client id at the dev identity provider.
pub const DEV_CLIENT_ID: &str = "stint-console";
/// The policy's name of the dev identity provider.
pub const DEV_ISSUER_NAME: &str = "dev";
/// The CA file the dev identity provider's certificate chains to.
pub const DEV_CA_FILE: &str = "dev-idp-ca.pem";
/// How long a code may wait for its exchange, seconds.
const CODE_TTL_SECS: i64 = 60;
/// The most codes outstanding.
const MAX_CODES: usize = 1000;

struct Code {
    operator: String,
    redirect_uri: String,
    challenge: String,
    nonce: String,
    expires: i64,
}

struct Idp {
    issuer: String,
    redirect_uri: String,
    key: SigningKey,
    jwks: serde_json::Value,
    codes: Mutex<HashMap<String, Code>>,
    rng: SystemRandom,
}

/// A running dev identity provider.
pub struct DevIdp {
    /// Its issuer URL (`https://127.0.0.1:PORT`).
    pub issuer: String,
    /// The CA file to trust for it.
    pub ca_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Drop for DevIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A CA and a certificate for 127.0.0.1 and localhost, written into
/// `dir`: the CA (public) and the server's key (0600) and certificate.
fn certificates(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let fail = |e: &dyn std::fmt::Display| format!("dev identity provider certificates: {e}");
    let ca_key = KeyPair::generate().map_err(|e| fail(&e))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(&e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Stint dev identity provider CA");
    let ca = ca_params.self_signed(&ca_key).map_err(|e| fail(&e))?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().map_err(|e| fail(&e))?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(|e| fail(&e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).map_err(|e| fail(&e))?;
    let ca_file = dir.join(DEV_CA_FILE);
    let cert_file = dir.join("dev-idp.pem");
    let key_file = dir.join("dev-idp-key.pem");
    let write = |path: &Path, text: String, mode: u32| {
        std::fs::write(path, text)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&key_file, key.serialize_pem(), 0o600)?;
    write(&cert_file, cert.pem(), 0o644)?;
    write(&ca_file, ca.pem(), 0o644)?;
    Ok((ca_file, cert_file, key_file))
}

impl DevIdp {
    /// Serve on `listener` (a loopback address), for a console whose
    /// redirect URI is `redirect_uri`; its certificates go in `dir`.
    pub async fn start(
        listener: tokio::net::TcpListener,
        dir: &Path,
        redirect_uri: &str,
    ) -> Result<Self, String> {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        if !addr.ip().is_loopback() {
            return Err("the dev identity provider listens on loopback only".into());
        }
        let (ca_file, cert_file, key_file) = certificates(dir)?;
        let acceptor = stint_server::tls::acceptor(&cert_file, &key_file)?;
        let issuer = format!("https://127.0.0.1:{}", addr.port());
        let rng = SystemRandom::new();
        let (key, _) = SigningKey::generate(Algorithm::ES256, &rng)
            .map_err(|e| format!("dev identity provider key: {e}"))?;
        let jwks = json!({ "keys": [key.public_jwk()] });
        let idp = Arc::new(Idp {
            issuer: issuer.clone(),
            redirect_uri: redirect_uri.to_owned(),
            key,
            jwks,
            codes: Mutex::new(HashMap::new()),
            rng,
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks_document))
            .route("/authorize", get(authorize).post(authorize_post))
            .route("/token", axum::routing::post(token))
            .with_state(idp);
        let task = stint_server::tls::serve_router(listener, acceptor, router);
        Ok(Self {
            issuer,
            ca_file,
            task,
        })
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response {
    let mut response = (status, axum::Json(value)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        json!({ "error": error, "error_description": description }),
    )
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Response {
    json_response(
        StatusCode::OK,
        json!({
            "issuer": idp.issuer,
            "authorization_endpoint": format!("{}/authorize", idp.issuer),
            "token_endpoint": format!("{}/token", idp.issuer),
            "jwks_uri": format!("{}/jwks", idp.issuer),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "grant_types_supported": ["authorization_code"],
        }),
    )
}

async fn jwks_document(State(idp): State<Arc<Idp>>) -> Response {
    json_response(StatusCode::OK, idp.jwks.clone())
}

fn page(status: StatusCode, body: maud::Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Stint dev identity provider" }
            }
            body { main { (body) } }
        }
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; form-action 'self' http: https:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The authorization request's parameters, checked (RFC 6749 4.1.1,
/// RFC 7636 4.3, OpenID Connect Core 3.1.2.1).
struct Authorization {
    redirect_uri: String,
    state: String,
    nonce: String,
    challenge: String,
}

fn check_authorization(idp: &Idp, params: &FormParams) -> Result<Authorization, Box<Response>> {
    // A bad client or redirect URI is never redirected to (RFC 6749
    // 4.1.2.1): it is shown here.
    if params.get("client_id") != Some(DEV_CLIENT_ID) {
        return Err(Box::new(page(
            StatusCode::BAD_REQUEST,
            html! { p { "Unknown client_id." } },
        )));
    }
    if params.get("redirect_uri") != Some(idp.redirect_uri.as_str()) {
        return Err(Box::new(page(
            StatusCode::BAD_REQUEST,
            html! { p { "The redirect_uri is not the one registered for this client." } },
        )));
    }
    let missing = |what: &str| {
        Box::new(page(
            StatusCode::BAD_REQUEST,
            html! { p { "The request is invalid: " (what) "." } },
        ))
    };
    if params.get("response_type") != Some("code") {
        return Err(missing("response_type must be code"));
    }
    if !params
        .get("scope")
        .is_some_and(|s| s.split(' ').any(|s| s == "openid"))
    {
        return Err(missing("scope must include openid"));
    }
    if params.get("code_challenge_method") != Some("S256") {
        return Err(missing("PKCE with code_challenge_method S256 is required"));
    }
    let challenge = params
        .get("code_challenge")
        .filter(|c| c.len() == 43)
        .ok_or_else(|| missing("code_challenge is missing or malformed"))?;
    let state = params
        .get("state")
        .filter(|s| s.len() <= 512)
        .ok_or_else(|| missing("state is required"))?;
    let nonce = params
        .get("nonce")
        .filter(|s| s.len() <= 512)
        .ok_or_else(|| missing("nonce is required"))?;
    Ok(Authorization {
        redirect_uri: idp.redirect_uri.clone(),
        state: state.to_owned(),
        nonce: nonce.to_owned(),
        challenge: challenge.to_owned(),
    })
}

fn params_of(raw: &[u8]) -> Result<FormParams, Box<Response>> {
    if raw.len() > 8192 {
        return Err(Box::new(page(
            StatusCode::BAD_REQUEST,
            html! { p { "The request is too large." } },
        )));
    }
    FormParams::parse(raw).map_err(|e| {
        Box::new(page(
            StatusCode::BAD_REQUEST,
            html! { p { "The request is malformed: " (e.to_string()) } },
        ))
    })
}

async fn authorize(State(idp): State<Arc<Idp>>, RawQuery(raw): RawQuery) -> Response {
    let params = match params_of(raw.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(response) => return *response,
    };
    if let Err(response) = check_authorization(&idp, &params) {
        return *response;
    }
    let hidden: Vec<(String, String)> = params
        .names()
        .filter_map(|n| params.get(n).map(|v| (n.to_owned(), v.to_owned())))
        .collect();
    page(
        StatusCode::OK,
        html! {
            h1 { "Stint dev identity provider" }
            p { "For development only: choose who to sign in as." }
            @for (name, group) in DEV_OPERATORS {
                form method="post" action="/authorize" {
                    @for (n, v) in &hidden { input type="hidden" name=(n) value=(v); }
                    input type="hidden" name="operator" value=(name);
                    button type="submit" { "Sign in as " (name) " (" (group) ")" }
                }
            }
        },
    )
}

async fn authorize_post(State(idp): State<Arc<Idp>>, body: axum::body::Bytes) -> Response {
    let params = match params_of(&body) {
        Ok(params) => params,
        Err(response) => return *response,
    };
    let checked = match check_authorization(&idp, &params) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let Some(operator) = params
        .get("operator")
        .filter(|o| DEV_OPERATORS.iter().any(|(name, _)| name == o))
    else {
        return page(StatusCode::BAD_REQUEST, html! { p { "No such operator." } });
    };
    let Some(code) = crate::session::random_token(&idp.rng) else {
        return page(
            StatusCode::INTERNAL_SERVER_ERROR,
            html! { p { "No randomness." } },
        );
    };
    {
        let mut codes = idp.codes.lock().unwrap_or_else(|p| p.into_inner());
        let now = now();
        codes.retain(|_, c| c.expires > now);
        if codes.len() >= MAX_CODES {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                html! { p { "Too many sign-ins at once." } },
            );
        }
        codes.insert(
            code.clone(),
            Code {
                operator: operator.to_owned(),
                redirect_uri: checked.redirect_uri.clone(),
                challenge: checked.challenge,
                nonce: checked.nonce,
                expires: now + CODE_TTL_SECS,
            },
        );
    }
    let mut location = match url::Url::parse(&checked.redirect_uri) {
        Ok(url) => url,
        Err(_) => {
            return page(StatusCode::BAD_REQUEST, html! { p { "Bad redirect_uri." } });
        }
    };
    location
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &checked.state)
        .append_pair("iss", &idp.issuer);
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location.as_str()) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

async fn token(State(idp): State<Arc<Idp>>, body: axum::body::Bytes) -> Response {
    let Ok(params) = params_of(&body) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "malformed form");
    };
    if params.get("grant_type") != Some("authorization_code") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code",
        );
    }
    if params.get("client_id") != Some(DEV_CLIENT_ID) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    let (Some(code), Some(verifier)) = (params.get("code"), params.get("code_verifier")) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code and code_verifier are required",
        );
    };
    // Single use: taken out whatever happens next.
    let found = idp
        .codes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(code);
    let Some(found) = found.filter(|c| c.expires > now()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the code is unknown, used or expired",
        );
    };
    if params.get("redirect_uri") != Some(found.redirect_uri.as_str()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "redirect_uri differs",
        );
    }
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    if !stint_core::secret::constant_time_eq(challenge.as_bytes(), found.challenge.as_bytes()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "PKCE verification failed",
        );
    }
    let now = now();
    let claims = json!({
        "iss": idp.issuer,
        "sub": found.operator,
        "aud": DEV_CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "auth_time": now,
        "nonce": found.nonce,
        "name": found.operator,
    });
    let Ok(id_token) = idp.key.sign_jwt("JWT", &claims, &idp.rng) else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "could not sign",
        );
    };
    json_response(
        StatusCode::OK,
        json!({
            "access_token": crate::session::random_token(&idp.rng).unwrap_or_default(),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        }),
    )
}
