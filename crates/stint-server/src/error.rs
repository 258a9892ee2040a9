//! Errors that stop the broker from starting, and OAuth error responses.

use crate::config::ConfigError;
use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use std::path::PathBuf;
use stint_core::decision::{Denial, DenyReason};
use stint_core::policy::PolicyErrors;
use stint_proto::{ErrorCode, ErrorResponse};
use thiserror::Error;

/// Why the broker could not start. Each message says what to fix.
#[derive(Debug, Error)]
pub enum StartError {
    /// A bad combination of settings.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be prepared.
    #[error("data directory {path}: {message}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] stint_store::StoreError),
    /// The audit log could not be opened.
    #[error("audit log {path}: {message}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A front end started beside the broker (the console) could not be.
    #[error("{0}")]
    Frontend(String),
    /// The policy is invalid.
    #[error("the policy is invalid:\n{0}")]
    Policy(PolicyErrors),
    /// The signing keys could not be loaded or created.
    #[error("signing keys: {0}")]
    Keys(String),
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The status lists could not be set up.
    #[error("status lists: {0}")]
    StatusLists(String),
    /// The approval webhook is misconfigured.
    #[error("approval webhook: {0}")]
    Webhook(String),
    /// The metrics scrape token cannot be used.
    #[error("{0}")]
    MetricsToken(#[from] crate::metrics::ScrapeTokenError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {message}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// What went wrong.
        message: String,
    },
}

/// An OAuth error response: status, `error`, `error_description`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub(crate) status: StatusCode,
    pub(crate) code: ErrorCode,
    pub(crate) description: String,
    /// The reason label for metrics and audit.
    pub(crate) reason: DenyReason,
    /// For `authorization_pending` and friends: the approval request.
    pub(crate) pending: Option<Box<Pending>>,
    /// Seconds for `Retry-After` (a 503 without it says 1).
    pub(crate) retry_after: Option<u64>,
}

/// The approval members of a token error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) interval: u64,
    pub(crate) expires_in: u64,
    pub(crate) view: stint_proto::ApprovalView,
}

impl OAuthError {
    pub(crate) fn new(code: ErrorCode, reason: DenyReason, description: impl Into<String>) -> Self {
        let status = match code {
            ErrorCode::InvalidClient | ErrorCode::InvalidToken => StatusCode::UNAUTHORIZED,
            ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            code,
            description: description.into(),
            reason,
            pending: None,
            retry_after: None,
        }
    }

    pub(crate) fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub(crate) fn with_pending(mut self, pending: Pending) -> Self {
        self.pending = Some(Box::new(pending));
        self
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub(crate) fn invalid_request(reason: DenyReason, description: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, reason, description)
    }

    pub(crate) fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::InvalidClient,
            DenyReason::InvalidClient,
            description,
        )
    }

    /// The audit log (or the store) could not record the decision: refuse.
    pub(crate) fn unavailable(what: &str) -> Self {
        Self::new(
            ErrorCode::TemporarilyUnavailable,
            DenyReason::Unavailable,
            format!("{what}; retry later"),
        )
    }
}

impl From<Denial> for OAuthError {
    fn from(denial: Denial) -> Self {
        Self::new(denial.code, denial.reason, denial.description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut body = ErrorResponse::new(self.code, self.description);
        if let Some(pending) = self.pending {
            body.approval_id = Some(pending.view.id.clone());
            body.job = Some(pending.view.job.clone());
            body.interval = Some(pending.interval);
            body.expires_in = Some(pending.expires_in);
            body.approval = Some(pending.view);
        }
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.code == ErrorCode::InvalidToken {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"stint\", error=\"invalid_token\""),
            );
        } else if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"stint\", charset=\"UTF-8\""),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        } else if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
