//! Reading form bodies and authenticating clients (RFC 6749 section 2.3.1).

use crate::error::OAuthError;
use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use std::fmt;
use std::time::Duration;
use stint_core::decision::DenyReason;
use stint_core::form::{self, FormParams};
use stint_core::policy::{CertificateIdentity, Policy, Workload};

/// The largest request body accepted.
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// The longest `Authorization` header accepted.
const MAX_AUTHORIZATION_LEN: usize = 1024;

/// Read an `application/x-www-form-urlencoded` body of at most 64 KiB,
/// sent within `timeout`.
pub(crate) async fn read_form(
    headers: &HeaderMap,
    body: Body,
    timeout: Duration,
) -> Result<FormParams, OAuthError> {
    let bytes = read_body(headers, body, timeout, "application/x-www-form-urlencoded").await?;
    FormParams::parse(&bytes)
        .map_err(|e| OAuthError::invalid_request(DenyReason::MalformedRequest, e.to_string()))
}

/// Read an `application/json` body of at most 64 KiB, sent within
/// `timeout`, as a `T` (an empty body is `T::default()`).
pub(crate) async fn read_json<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Body,
    timeout: Duration,
) -> Result<T, OAuthError> {
    if !headers.contains_key(header::CONTENT_TYPE)
        && headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() == b"0")
    {
        return Ok(T::default());
    }
    let bytes = read_body(headers, body, timeout, "application/json").await?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            format!("the JSON body is not acceptable: {e}"),
        )
    })
}

/// Read a body of media type `mime`, at most 64 KiB, within `timeout`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    timeout: Duration,
    mime: &str,
) -> Result<bytes::Bytes, OAuthError> {
    let is_expected = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|sent| sent.trim().eq_ignore_ascii_case(mime));
    if !is_expected {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            format!("the request body must be {mime}"),
        ));
    }
    let too_large = || {
        OAuthError::invalid_request(
            DenyReason::BodyTooLarge,
            "the request body is larger than 64 KiB",
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, MAX_BODY).collect())
        .await
        .map_err(|_| {
            OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "the request body was not sent in time",
            )
            .with_status(StatusCode::REQUEST_TIMEOUT)
        })?;
    Ok(collected
        .map_err(|error| {
            if error.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                OAuthError::invalid_request(
                    DenyReason::MalformedRequest,
                    "the request body could not be read",
                )
            }
        })?
        .to_bytes())
}

/// Credentials as presented; the secret is never printed.
pub(crate) struct ClientCredentials {
    pub(crate) client_id: String,
    secret: String,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClientCredentials {
    /// The client id, if the policy knows it. An unknown "id" is not
    /// written anywhere: it is too often a secret pasted into the wrong
    /// field.
    pub(crate) fn loggable_id(&self, policy: &Policy) -> Option<String> {
        policy
            .knows_client(&self.client_id)
            .then(|| self.client_id.clone())
    }

    /// Authenticate against the policy. The failure message is the same
    /// whether the id or the secret was wrong.
    pub(crate) fn authenticate<'p>(&self, policy: &'p Policy) -> Result<&'p Workload, OAuthError> {
        policy
            .authenticate(&self.client_id, &self.secret)
            .ok_or_else(|| OAuthError::invalid_client("client authentication failed"))
    }
}

/// RFC 8705 `tls_client_auth`: a request with a verified client certificate,
/// a `client_id` in the form and no other credentials authenticates as the
/// workload with that client id whose certificate binding is one of the
/// certificate's SANs. `None` when the request is not that kind.
pub(crate) fn certificate_client<'p>(
    policy: &'p Policy,
    headers: &HeaderMap,
    form: &FormParams,
    certificate: Option<&crate::serve::PeerCertificate>,
    entry: &mut stint_core::audit::AuditEntry,
) -> Option<Result<&'p Workload, OAuthError>> {
    let certificate = certificate?;
    let client_id = form.get("client_id")?;
    if headers.contains_key(header::AUTHORIZATION) || form.get("client_secret").is_some() {
        return None;
    }
    let sans = certificate_identities(&certificate.0);
    entry.client_id = policy.knows_client(client_id).then(|| client_id.to_owned());
    entry.client_certificate = Some(
        sans.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(512)
            .collect(),
    );
    Some(
        policy
            .workload_for_certificate(client_id, &sans)
            .ok_or_else(|| {
                OAuthError::invalid_client("the client certificate is not bound to this client id")
            }),
    )
}

/// A certificate's URI and DNS subject alternative names.
pub(crate) fn certificate_identities(der: &[u8]) -> Vec<CertificateIdentity> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(CertificateIdentity::Uri((*uri).to_owned())),
            GeneralName::DNSName(dns) => Some(CertificateIdentity::Dns(dns.to_ascii_lowercase())),
            _ => None,
        })
        .collect()
}

/// The token of an `Authorization: Bearer` header, if that is the scheme:
/// a federated workload's platform ID token.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The client id an `Authorization: Basic` header authenticates, if it
/// does. For accounting (whose share of the requests in flight a request
/// takes) and the request log: handlers authenticate for themselves.
pub(crate) fn header_client(headers: &HeaderMap, policy: &Policy) -> Option<String> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let credentials = parse_basic(value.as_bytes()).ok()?;
    let workload = credentials.authenticate(policy).ok()?;
    Some(workload.client_id().to_owned())
}

/// Find the client's credentials: HTTP Basic (`client_secret_basic`) or, if
/// `form` is given, `client_id` and `client_secret` in the body
/// (`client_secret_post`). Using both is an error (RFC 6749 section 2.3).
pub(crate) fn credentials(
    headers: &HeaderMap,
    form: Option<&FormParams>,
) -> Result<ClientCredentials, OAuthError> {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let basic = match (authorization.next(), authorization.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "more than one Authorization header",
            ));
        }
        (Some(value), None) => Some(parse_basic(value.as_bytes())?),
    };
    let posted_id = form.and_then(|f| f.get("client_id"));
    let posted_secret = form.and_then(|f| f.get("client_secret"));
    match (basic, posted_id, posted_secret) {
        (Some(_), _, Some(_)) => Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "use one client authentication method: HTTP Basic or client_secret in the body, not both",
        )),
        (Some(basic), Some(id), None) if id != basic.client_id => Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "client_id in the body differs from the one in the Authorization header",
        )),
        (Some(basic), _, None) => Ok(basic),
        (None, Some(id), Some(secret)) => Ok(ClientCredentials {
            client_id: id.to_owned(),
            secret: secret.to_owned(),
        }),
        (None, _, _) if form.is_some() => Err(OAuthError::invalid_client(
            "client authentication is required: HTTP Basic (client_secret_basic) or client_id and client_secret in the body (client_secret_post)",
        )),
        (None, _, _) => Err(OAuthError::invalid_client(
            "client authentication is required: HTTP Basic (client_secret_basic)",
        )),
    }
}

fn parse_basic(value: &[u8]) -> Result<ClientCredentials, OAuthError> {
    let malformed = || {
        OAuthError::invalid_client("the Authorization header is not valid HTTP Basic credentials")
    };
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(malformed());
    }
    let value = std::str::from_utf8(value).map_err(|_| malformed())?;
    let (scheme, encoded) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::invalid_client(
            "only HTTP Basic client authentication is supported",
        ));
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let colon = decoded
        .iter()
        .position(|b| *b == b':')
        .ok_or_else(malformed)?;
    let (id, secret) = decoded.split_at(colon);
    // RFC 6749 section 2.3.1: both parts are form-urlencoded before base64.
    let client_id = form::decode(id).map_err(|_| malformed())?;
    let secret = form::decode(secret.get(1..).unwrap_or_default()).map_err(|_| malformed())?;
    Ok(ClientCredentials { client_id, secret })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let encoded = STANDARD.encode("my%20client:hunter%3A2+x");
        let creds = credentials(&headers(&format!("Basic {encoded}")), None).unwrap();
        assert_eq!(creds.client_id, "my client");
        assert_eq!(creds.secret, "hunter:2 x");
        assert!(!format!("{creds:?}").contains("hunter"));
    }

    #[test]
    fn refuses_mixed_missing_and_malformed_credentials() {
        let basic = format!("Basic {}", STANDARD.encode("a:b"));
        let form = FormParams::parse(b"client_id=a&client_secret=b").unwrap();
        assert_eq!(
            credentials(&headers(&basic), Some(&form))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        let other_id = FormParams::parse(b"client_id=z").unwrap();
        assert_eq!(
            credentials(&headers(&basic), Some(&other_id))
                .unwrap_err()
                .status,
            StatusCode::BAD_REQUEST
        );
        let same_id = FormParams::parse(b"client_id=a").unwrap();
        assert_eq!(
            credentials(&headers(&basic), Some(&same_id))
                .unwrap()
                .client_id,
            "a"
        );
        assert_eq!(
            credentials(&HeaderMap::new(), None).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
        for bad in [
            "Bearer x",
            "Basic !!!",
            "Basic",
            &format!("Basic {}", STANDARD.encode("nocolon")),
        ] {
            assert_eq!(
                credentials(&headers(bad), None).unwrap_err().status,
                StatusCode::UNAUTHORIZED,
                "{bad}"
            );
        }
        let only_id = FormParams::parse(b"client_id=a").unwrap();
        assert_eq!(
            credentials(&HeaderMap::new(), Some(&only_id))
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
    }
}
