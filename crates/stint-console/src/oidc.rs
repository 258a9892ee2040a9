//! The console as an OpenID Connect relying party: the authorization code
//! flow with PKCE (RFC 7636, `S256`), `state` and `nonce`.
//!
//! The identity provider is one of the policy's `[issuers]`: its discovery
//! document (`/.well-known/openid-configuration`) names the authorization
//! and token endpoints; the ID token it returns is checked by the broker's
//! own operator check ([`stint_server::operators::OperatorApi::verify_id_token`]:
//! signature with the issuer's published keys, `alg`, times, `aud`), and
//! here for what only the relying party knows: `aud` (and `azp`) name this
//! console's client, and `nonce` is the one this browser's sign-in sent.
//!
//! Requests to the identity provider: HTTPS only (the web roots plus an
//! optional CA file), 5 s to connect, 10 s in all, no redirects, answers of
//! at most 64 KiB.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// The largest answer read from the identity provider.
const MAX_ANSWER_LEN: usize = 64 * 1024;
/// Discovery is read again after this long.
const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(3600);

/// The console's client at the identity provider.
#[derive(Clone)]
pub struct OidcClient {
    /// The policy's name of the issuer operators sign in through.
    pub issuer: String,
    /// The console's `client_id` there (also an `audiences` entry of the
    /// issuer in the policy).
    pub client_id: String,
    /// Its client secret, for `client_secret_basic`; `None` for a public
    /// client (PKCE alone).
    pub client_secret: Option<String>,
}

impl std::fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("OidcClient")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The endpoints discovery names.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Endpoints {
    pub(crate) issuer: String,
    pub(crate) authorization_endpoint: String,
    pub(crate) token_endpoint: String,
    #[serde(default)]
    pub(crate) code_challenge_methods_supported: Option<Vec<String>>,
}

/// Why a step of the sign-in failed. None of these carries a secret (no
/// code, no token, no client secret).
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum OidcError {
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider's answer is not usable: {0}")]
    BadAnswer(String),
    #[error("the identity provider refused the sign-in: {0}")]
    Refused(String),
}

/// Talks to the identity provider.
pub(crate) struct Provider {
    http: reqwest::Client,
    cached: tokio::sync::Mutex<Option<(Endpoints, Instant)>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").finish_non_exhaustive()
    }
}

fn is_https(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
}

impl Provider {
    pub(crate) fn new(extra_ca: Option<&Path>) -> Result<Self, String> {
        let http = stint_server::federation::https_client(
            extra_ca,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )?;
        Ok(Self {
            http,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    async fn read(&self, response: reqwest::Response) -> Result<(u16, Value), OidcError> {
        let status = response.status().as_u16();
        if response
            .content_length()
            .is_some_and(|n| n > MAX_ANSWER_LEN as u64)
        {
            return Err(OidcError::BadAnswer("the answer is too large".into()));
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| OidcError::Unreachable(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_LEN {
                return Err(OidcError::BadAnswer("the answer is too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let value = serde_json::from_slice(&body)
            .map_err(|_| OidcError::BadAnswer(format!("HTTP {status}, not JSON")))?;
        Ok((status, value))
    }

    /// The issuer's endpoints (cached for an hour).
    pub(crate) async fn endpoints(&self, issuer_url: &str) -> Result<Endpoints, OidcError> {
        let mut cached = self.cached.lock().await;
        if let Some((endpoints, at)) = cached.as_ref()
            && at.elapsed() < DISCOVERY_MAX_AGE
            && endpoints.issuer == issuer_url
        {
            return Ok(endpoints.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer_url.trim_end_matches('/')
        );
        let response = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(e.without_url().to_string()))?;
        let (status, value) = self.read(response).await?;
        if status != 200 {
            return Err(OidcError::BadAnswer(format!(
                "discovery answered HTTP {status}"
            )));
        }
        let endpoints: Endpoints = serde_json::from_value(value)
            .map_err(|e| OidcError::BadAnswer(format!("discovery document: {e}")))?;
        // OpenID Connect Discovery 1.0, section 4.3: the issuer it states
        // is the one asked.
        if endpoints.issuer != issuer_url {
            return Err(OidcError::BadAnswer(
                "the discovery document names another issuer".into(),
            ));
        }
        if !is_https(&endpoints.authorization_endpoint) || !is_https(&endpoints.token_endpoint) {
            return Err(OidcError::BadAnswer(
                "the authorization and token endpoints must be https URLs".into(),
            ));
        }
        if endpoints
            .code_challenge_methods_supported
            .as_ref()
            .is_some_and(|methods| !methods.iter().any(|m| m == "S256"))
        {
            return Err(OidcError::BadAnswer(
                "the identity provider does not support PKCE with S256".into(),
            ));
        }
        *cached = Some((endpoints.clone(), Instant::now()));
        Ok(endpoints)
    }

    /// Trade `code` for the ID token, proving the PKCE `verifier`.
    pub(crate) async fn exchange(
        &self,
        endpoints: &Endpoints,
        client: &OidcClient,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self
            .http
            .post(&endpoints.token_endpoint)
            .header(http::header::ACCEPT, "application/json");
        match &client.client_secret {
            // RFC 6749 section 2.3.1: both form-urlencoded, then Basic.
            Some(secret) => {
                let encode = |s: &str| {
                    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                request = request.basic_auth(encode(&client.client_id), Some(encode(secret)));
            }
            None => form.push(("client_id", client.client_id.as_str())),
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Unreachable(e.without_url().to_string()))?;
        let (status, value) = self.read(response).await?;
        if status != 200 {
            // RFC 6749 section 5.2: `error` and maybe a description. Only
            // the code is shown: a description is the provider's free text.
            let error = value
                .get("error")
                .and_then(Value::as_str)
                .filter(|e| e.len() <= 64 && e.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or("unknown_error");
            return Err(OidcError::Refused(format!(
                "the token endpoint answered HTTP {status}: {error}"
            )));
        }
        value
            .get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| OidcError::BadAnswer("the token answer has no id_token".into()))
    }
}

/// The PKCE challenge of `verifier` (RFC 7636 section 4.2, `S256`).
pub(crate) fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// The authorization request URL.
pub(crate) fn authorization_url(
    endpoints: &Endpoints,
    client: &OidcClient,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    verifier: &str,
) -> Result<String, OidcError> {
    let mut url = url::Url::parse(&endpoints.authorization_endpoint)
        .map_err(|_| OidcError::BadAnswer("the authorization endpoint is not a URL".into()))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client.client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid")
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", &challenge(verifier))
        .append_pair("code_challenge_method", "S256");
    Ok(url.into())
}

/// What the relying party checks of an ID token the broker verified: it
/// is for this client (`aud`, and `azp` when there are several audiences
/// or it is present, OpenID Connect Core 1.0 section 3.1.3.7) and answers
/// this sign-in (`nonce`).
pub(crate) fn check_claims(claims: &Value, client_id: &str, nonce: &str) -> Result<(), String> {
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&client_id) {
        return Err("the ID token is not for this console (aud)".into());
    }
    match claims.get("azp").and_then(Value::as_str) {
        Some(azp) if azp != client_id => {
            return Err("the ID token was issued to another client (azp)".into());
        }
        None if audiences.len() > 1 => {
            return Err("the ID token has several audiences and no azp".into());
        }
        _ => {}
    }
    let sent = claims.get("nonce").and_then(Value::as_str).unwrap_or("");
    if !stint_core::secret::constant_time_eq(sent.as_bytes(), nonce.as_bytes()) {
        return Err("the ID token's nonce is not this sign-in's".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_client_secret_is_never_printed() {
        let client = OidcClient {
            issuer: "corp".into(),
            client_id: "stint-console".into(),
            client_secret: Some("hunter2-secret".into()),
        };
        let printed = format!("{client:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn pkce_s256_known_answer() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn claims_must_name_this_client_and_nonce() {
        let ok = json!({"aud": "stint-console", "nonce": "n1"});
        assert!(check_claims(&ok, "stint-console", "n1").is_ok());
        assert!(check_claims(&ok, "stint-console", "n2").is_err());
        assert!(check_claims(&ok, "other", "n1").is_err());
        let no_nonce = json!({"aud": "stint-console"});
        assert!(check_claims(&no_nonce, "stint-console", "n1").is_err());
        let many = json!({"aud": ["stint-console", "x"], "nonce": "n1"});
        assert!(check_claims(&many, "stint-console", "n1").is_err());
        let many_azp =
            json!({"aud": ["stint-console", "x"], "azp": "stint-console", "nonce": "n1"});
        assert!(check_claims(&many_azp, "stint-console", "n1").is_ok());
        let wrong_azp = json!({"aud": "stint-console", "azp": "x", "nonce": "n1"});
        assert!(check_claims(&wrong_azp, "stint-console", "n1").is_err());
    }

    #[test]
    fn authorization_url_carries_the_flow() {
        let endpoints = Endpoints {
            issuer: "https://idp.test".into(),
            authorization_endpoint: "https://idp.test/authorize?tenant=a".into(),
            token_endpoint: "https://idp.test/token".into(),
            code_challenge_methods_supported: None,
        };
        let client = OidcClient {
            issuer: "corp".into(),
            client_id: "stint console".into(),
            client_secret: None,
        };
        let url = authorization_url(
            &endpoints,
            &client,
            "https://c.test/callback",
            "s",
            "n",
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        )
        .unwrap();
        let parsed = url::Url::parse(&url).unwrap();
        let pairs: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
        assert_eq!(pairs["tenant"], "a");
        assert_eq!(pairs["client_id"], "stint console");
        assert_eq!(pairs["response_type"], "code");
        assert_eq!(pairs["scope"], "openid");
        assert_eq!(
            pairs["code_challenge"],
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(pairs["code_challenge_method"], "S256");
        assert_eq!(pairs["redirect_uri"], "https://c.test/callback");
    }
}
