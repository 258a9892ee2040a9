//! The SDK's one error type.

pub use stint_core::access_token::TokenError;
use thiserror::Error;

/// Everything that can go wrong talking to a broker or checking a token.
///
/// [`Error::is_denial`] and [`Error::is_unavailable`] sort errors the way a
/// job should react: a denial will not go away by retrying; an unavailable
/// broker might.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker answered with an OAuth error (RFC 6749 section 5.2).
    #[error("the broker refused ({status} {code}){}", describe(.description.as_deref()))]
    OAuth {
        /// The HTTP status.
        status: u16,
        /// The `error` code, e.g. `invalid_scope` (kept as text: a newer
        /// broker may send codes this SDK does not know).
        code: String,
        /// The `error_description`: what the broker says was wrong.
        description: Option<String>,
    },
    /// The broker could not be reached, or did not answer in time.
    #[error("cannot reach the broker at {url}: {reason}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What failed (connection refused, timeout, TLS, ...).
        reason: String,
    },
    /// The broker's TLS certificate is not one this client trusts: issued
    /// by a CA it does not trust, expired, or for another name. A
    /// configuration problem that retrying will not fix (neither
    /// [`Error::is_unavailable`] nor [`Error::is_denial`]): trust the CA
    /// that issued it ([`ClientBuilder::ca_file`] or
    /// [`ClientBuilder::ca_pem`], the same on the
    /// [`VerifierBuilder`](crate::VerifierBuilder)), or connect by the name
    /// the certificate is for.
    ///
    /// [`ClientBuilder::ca_file`]: crate::ClientBuilder::ca_file
    /// [`ClientBuilder::ca_pem`]: crate::ClientBuilder::ca_pem
    #[error(
        "the broker's certificate at {url} is not trusted ({reason}): trust the CA that issued it (ca_file or ca_pem), or connect by the name it is for"
    )]
    UntrustedCertificate {
        /// The URL asked.
        url: String,
        /// What the TLS library found wrong with the certificate.
        reason: String,
    },
    /// The broker answered something that is not what the protocol says
    /// (including a TLS handshake that cannot succeed: no TLS at that
    /// address, no protocol version in common).
    #[error("unexpected answer from the broker at {url}: {reason}")]
    Protocol {
        /// The URL asked.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// The SDK was configured with something unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A token was refused by the [`Verifier`](crate::Verifier).
    #[error("token rejected: {0}")]
    InvalidToken(#[from] TokenError),
    /// The token verifies offline, but the broker says it is no longer
    /// active (revoked, or its job completed).
    #[error("token rejected: the broker says it is not active (revoked or completed)")]
    Inactive,
    /// The token verifies, but the revocation feed says it is revoked (by
    /// itself, its job, or the approval it was minted under).
    #[error("token rejected: it has been revoked")]
    Revoked,
    /// The verifier follows the broker's revocations and has heard nothing
    /// from the broker (no event, no keep-alive, no snapshot) for longer
    /// than its bound: it cannot tell whether the token is revoked, so it
    /// refuses it.
    #[error("token rejected: revocation state stale (nothing heard from the broker for {} ms)", .silent.as_millis())]
    RevocationStateStale {
        /// How long the broker has been silent.
        silent: std::time::Duration,
    },
    /// The step asked for scopes that need an operator's approval, and it
    /// has not come (yet): the request is pending. Returned only when the
    /// step was told not to wait ([`StepRequest::wait_for_approval`]), or
    /// when the wait ran out. A denial or an expiry is [`Error::OAuth`]
    /// with `access_denied` or `expired_token`.
    ///
    /// [`StepRequest::wait_for_approval`]: crate::StepRequest::wait_for_approval
    #[error("approval {} is pending: {}", .0.approval_id, .0.description)]
    ApprovalPending(Box<PendingApproval>),
}

/// An approval request the broker is waiting on operators for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingApproval {
    /// The request id: what operators approve (`stint approve ID`).
    pub approval_id: String,
    /// The job it is for (the broker's choice if the step named none).
    pub job: String,
    /// Seconds to wait before asking again.
    pub interval: u64,
    /// Seconds until the request expires unless approved.
    pub expires_in: u64,
    /// The broker's words: who must approve, how many more.
    pub description: String,
    /// The request in full, if the broker sent it.
    pub approval: Option<stint_proto::ApprovalView>,
    /// Whether the broker said `slow_down`.
    pub slow_down: bool,
}

/// 408 (the request was not sent in time) and 429 (too many requests) say
/// nothing about whether the request would be granted.
fn is_transient(status: u16) -> bool {
    matches!(status, 408 | 429)
}

fn describe(description: Option<&str>) -> String {
    description.map(|d| format!(": {d}")).unwrap_or_default()
}

impl Error {
    /// The broker refused, and asking again will not help: a policy or
    /// credential problem, or a rejected token.
    pub fn is_denial(&self) -> bool {
        match self {
            Self::OAuth { status, .. } => *status < 500 && !is_transient(*status),
            Self::InvalidToken(_) | Self::Inactive | Self::Revoked => true,
            _ => false,
        }
    }

    /// The broker is down, unreachable, slow, rate-limiting or temporarily
    /// unable to decide (408, 429, 5xx): asking later may work.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::RevocationStateStale { .. } => true,
            Self::OAuth { status, .. } => *status >= 500 || is_transient(*status),
            _ => false,
        }
    }

    /// The broker's OAuth `error` code, if it sent one.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            Self::OAuth { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A request that got no HTTP answer, classified by why: the broker is
    /// unreachable (refused, timed out, reset: a retry may help), or TLS
    /// failed in a way a retry will not fix ([`Error::UntrustedCertificate`],
    /// or [`Error::Protocol`] for a handshake that cannot succeed).
    pub(crate) fn unreachable(url: &str, error: &reqwest::Error) -> Self {
        // reqwest's Display stops at the outermost layer; the cause (refused,
        // timed out, certificate unknown) is further down the chain.
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        let url = url.to_owned();
        match find_tls_error(error).and_then(classify_tls) {
            Some(TlsFailure::Certificate(why)) => Self::UntrustedCertificate { url, reason: why },
            Some(TlsFailure::Handshake(why)) => Self::Protocol {
                url,
                reason: format!("the TLS handshake cannot succeed: {why}"),
            },
            None => Self::Unreachable { url, reason },
        }
    }

    pub(crate) fn protocol(url: &str, reason: impl Into<String>) -> Self {
        Self::Protocol {
            url: url.to_owned(),
            reason: reason.into(),
        }
    }
}

/// How a TLS failure should be reported.
#[derive(Debug, PartialEq, Eq)]
enum TlsFailure {
    /// The peer's certificate is not trusted: configuration.
    Certificate(String),
    /// The handshake cannot succeed with this peer: configuration.
    Handshake(String),
}

/// The rustls error somewhere in `error`'s chain of causes.
fn find_tls_error<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match cause.downcast_ref::<std::io::Error>() {
            // io::Error's source() skips the error it wraps (and tokio-rustls
            // wraps its rustls::Error in one): look at that error itself.
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => cause.source(),
            },
            None => cause.source(),
        };
    }
    None
}

/// Which TLS errors are the configuration's fault; `None` for the ones a
/// retry may get past (a corrupted or cut connection).
fn classify_tls(error: &rustls::Error) -> Option<TlsFailure> {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(_) | E::NoCertificatesPresented | E::UnsupportedNameType => {
            Some(TlsFailure::Certificate(error.to_string()))
        }
        E::InvalidMessage(_) => Some(TlsFailure::Handshake(format!(
            "{error} (is the broker serving HTTPS at that address?)"
        ))),
        E::PeerIncompatible(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::AlertReceived(_) => Some(TlsFailure::Handshake(error.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_error_is_found_inside_an_io_error() {
        // As tokio-rustls reports a failed handshake to hyper.
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        assert_eq!(find_tls_error(&io), Some(&tls));
        assert!(matches!(
            classify_tls(&tls),
            Some(TlsFailure::Certificate(_))
        ));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(find_tls_error(&plain), None);
    }

    #[test]
    fn only_configuration_failures_are_not_worth_a_retry() {
        let certificate = |e| classify_tls(&rustls::Error::InvalidCertificate(e));
        for error in [
            rustls::CertificateError::UnknownIssuer,
            rustls::CertificateError::Expired,
            rustls::CertificateError::NotValidForName,
            rustls::CertificateError::BadSignature,
        ] {
            assert!(matches!(
                certificate(error),
                Some(TlsFailure::Certificate(_))
            ));
        }
        assert!(matches!(
            classify_tls(&rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            )),
            Some(TlsFailure::Handshake(_))
        ));
        // A connection corrupted or cut on the way may work next time.
        assert_eq!(classify_tls(&rustls::Error::DecryptError), None);
    }
}
