//! Entry points into the broker's internal parsers of untrusted input, for
//! the fuzz targets in `fuzz/` only.
//!
//! Compiled only with the `fuzzing` feature, which nothing but the fuzz
//! crate turns on. Each function is a thin wrapper that calls the code the
//! broker runs on a request (nothing here re-implements a check); none is an
//! API, and none may be relied on elsewhere.

use crate::RunningServer;
use crate::error::OAuthError;
use axum::body::Body;
use http::{HeaderMap, HeaderValue, header};
use std::time::Duration;
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::form::FormParams;
use stint_core::policy::{CertificateIdentity, Policy};
use stint_proto::{ApproveBody, DecisionBody};

/// A refusal, as the client would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The OAuth `error` code.
    pub code: String,
    /// The `error_description`.
    pub description: String,
}

impl From<OAuthError> for Refusal {
    fn from(error: OAuthError) -> Self {
        Self {
            status: error.status.as_u16(),
            code: error.code.as_str().to_owned(),
            description: error.description,
        }
    }
}

/// Headers with these `Authorization` values, each as hyper would hand
/// them over; `None` if one is not a valid header value (hyper refuses
/// such a request before the broker sees it).
fn authorization_headers(values: &[&[u8]]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(header::AUTHORIZATION, HeaderValue::from_bytes(value).ok()?);
    }
    Some(headers)
}

/// Who the client credentials of a request are: the client id presented,
/// and the workload they authenticate as against `policy` (`None` if the
/// secret is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// The client id, as decoded.
    pub client_id: String,
    /// The workload it authenticates as, if the secret is right.
    pub workload: Option<String>,
}

/// Client authentication as the token, revocation and introspection
/// endpoints read it: HTTP Basic in the `Authorization` headers, or
/// `client_id` and `client_secret` in `form`. `None` when a header value
/// could not reach the broker at all.
pub fn client_credentials(
    policy: &Policy,
    authorization: &[&[u8]],
    form: Option<&FormParams>,
) -> Option<Result<Presented, Refusal>> {
    let headers = authorization_headers(authorization)?;
    Some(
        crate::http::client_auth::credentials(&headers, form)
            .map(|credentials| Presented {
                workload: credentials
                    .authenticate(policy)
                    .ok()
                    .map(|w| w.name().to_owned()),
                client_id: credentials.client_id,
            })
            .map_err(Refusal::from),
    )
}

/// The token of an `Authorization: Bearer` header, as the broker reads it.
pub fn bearer(authorization: &[u8]) -> Option<String> {
    let headers = authorization_headers(&[authorization])?;
    crate::http::client_auth::bearer(&headers).map(str::to_owned)
}

/// The identities (URI and DNS SANs) the broker reads from a client
/// certificate (DER).
pub fn certificate_identities(der: &[u8]) -> Vec<CertificateIdentity> {
    crate::http::client_auth::certificate_identities(der)
}

/// A revocation feed, to subscribe to with any `Last-Event-ID`.
pub struct Feed(crate::feed::Feed);

impl Feed {
    /// A feed of a fresh epoch that has published `events` revocations
    /// (changes 1 to `events` of the store's feed).
    pub fn new(events: usize) -> Self {
        let feed = crate::feed::Feed::new("fuzzepoch".to_owned(), 0);
        for n in 0..events {
            feed.publish(
                n as u64 + 1,
                stint_proto::RevocationEvent {
                    jti: Some(format!("jti-{n}")),
                    ..stint_proto::RevocationEvent::new("token", 2_000_000_000)
                },
            );
        }
        Self(feed)
    }

    /// The `Last-Event-ID` of event `seq`, as the stream sends it.
    pub fn event_id(&self, seq: u64) -> String {
        self.0.event_id(seq)
    }

    /// The feed's latest `seq`.
    pub fn seq(&self) -> u64 {
        self.0.position().seq
    }

    /// What a client reconnecting with `last_event_id` is sent: the `seq`s
    /// of the backlog events, or `None` for a resync.
    pub fn subscribe(&self, last_event_id: Option<&str>) -> Option<Vec<u64>> {
        match self.0.subscribe(last_event_id).start {
            crate::feed::Start::From(backlog) => Some(backlog.iter().map(|p| p.seq).collect()),
            crate::feed::Start::Resync => None,
        }
    }
}

/// A JSON body as the broker's handlers read it (`read_json`), sent with
/// these `Content-Type` and `Content-Length` headers.
fn json_body<T: serde::de::DeserializeOwned + Default>(
    content_type: Option<&[u8]>,
    content_length: Option<&[u8]>,
    body: &[u8],
) -> Option<Result<T, Refusal>> {
    let mut headers = HeaderMap::new();
    if let Some(value) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_bytes(value).ok()?);
    }
    if let Some(value) = content_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_bytes(value).ok()?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok()?;
    let body = Body::from(body.to_vec());
    Some(
        runtime
            .block_on(crate::http::client_auth::read_json::<T>(
                &headers,
                body,
                Duration::from_secs(5),
            ))
            .map_err(Refusal::from),
    )
}

/// `POST /v1/approvals/{id}/approve`: the body, and the duration it asks
/// for in seconds, as the handler reads them. `None` when a header value
/// could not reach the broker at all.
pub fn approve_body(
    content_type: Option<&[u8]>,
    content_length: Option<&[u8]>,
    body: &[u8],
) -> Option<Result<(ApproveBody, Option<i64>), Refusal>> {
    let parsed = json_body::<ApproveBody>(content_type, content_length, body)?;
    Some(parsed.and_then(|body| {
        let duration = body
            .duration
            .as_deref()
            .map(crate::approvals::duration_param)
            .transpose()
            .map_err(Refusal::from)?;
        Ok((body, duration))
    }))
}

/// The body of a deny, an approval's revocation, and a workload's stop or
/// enable, as those handlers read it.
pub fn decision_body(
    content_type: Option<&[u8]>,
    content_length: Option<&[u8]>,
    body: &[u8],
) -> Option<Result<DecisionBody, Refusal>> {
    json_body::<DecisionBody>(content_type, content_length, body)
}

/// A `duration` parameter (of an elevation request, or an approval), in
/// seconds.
pub fn duration_param(text: &str) -> Result<i64, Refusal> {
    crate::approvals::duration_param(text).map_err(Refusal::from)
}

/// Who a platform ID token proves the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Federated {
    /// The trusted issuer's policy name.
    pub issuer: String,
    /// The token's verified claims.
    pub claims: serde_json::Value,
    /// The workload bound to them and the job they name (if the issuer
    /// has job claims), or why there is none.
    pub identity: Result<(String, Option<String>), Refusal>,
}

/// A subject token (token exchange, or `Authorization: Bearer` on
/// revocation), verified and identified as the running broker does:
/// issuer, algorithm, keys (fetched from the issuer as usual), signature,
/// times, audience, then the one bound workload and the job.
pub async fn identify(server: &RunningServer, subject_token: &str) -> Result<Federated, Refusal> {
    let state = &server.state;
    let policy = state.policy.load();
    let mut entry = AuditEntry::new(String::new(), EventKind::TokenDenied, Decision::Deny);
    let (issuer, claims) =
        crate::http::exchange::verify_id_token(state, &policy, subject_token, &mut entry).await?;
    let issuer = issuer.name().to_owned();
    let identity = crate::http::exchange::identify(state, &policy, subject_token, &mut entry)
        .await
        .map(|identity| (identity.workload.name().to_owned(), identity.job))
        .map_err(Refusal::from);
    Ok(Federated {
        issuer,
        claims,
        identity,
    })
}
