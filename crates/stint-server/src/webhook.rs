//! Webhook delivery of approval events: signed, retried, never blocking.
//!
//! `Webhook::send` builds the event's JSON body and puts it on a bounded
//! queue without waiting; a background task posts each event to the
//! configured URL. The body is
//!
//! ```json
//! {"id": "<32 hex digits>", "type": "<kind>", "created_at": "<RFC 3339 UTC>",
//!  "text": "<one line for people>", "data": {...}}
//! ```
//!
//! `text` is what Slack-compatible receivers display. Each request carries
//! `content-type: application/json`, `stint-event-id: <id>` (the same on
//! every attempt, so a receiver can drop duplicates) and a
//! [`stint_core::webhook::SIGNATURE_HEADER`] signed afresh for each attempt
//! (see [`stint_core::webhook`] for the format and how to verify it).
//!
//! Delivery is at most [`MAX_ATTEMPTS`] attempts per event, with the delays
//! 1 s, 2 s, 4 s, 8 s and 16 s between them. Connection errors, timeouts,
//! 408, 429 and 5xx are retried; any other status below 200 or from 300 up
//! (redirects are not followed) is final; 2xx is success.
//!
//! Nothing here can hold up the broker: when the queue is full (the
//! receiver is down or slow and [`QUEUE_CAPACITY`] events wait), new events
//! are dropped with a warning. Events start in queue order, but up to
//! [`MAX_CONCURRENT_DELIVERIES`] are in flight at once and each retries on
//! its own schedule, so a receiver may see them out of order; the body's
//! `created_at` gives the order. Delivery is best effort: events still
//! queued when the broker stops are lost.
//!
//! Logs name the event id, its kind, the attempt and the status or error;
//! never the secret, the body, or the URL's path (a Slack webhook URL's path
//! is itself a credential).

use bytes::Bytes;
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stint_core::webhook::{MIN_SECRET_LEN, SIGNATURE_HEADER, sign};
use stint_core::{Clock, SystemClock};
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};

/// The header that carries the event id (also the body's `id`).
pub const EVENT_ID_HEADER: &str = "stint-event-id";
/// The longest webhook secret, in bytes.
pub const MAX_SECRET_LEN: usize = 1024;
/// Events waiting for delivery; more are dropped.
pub const QUEUE_CAPACITY: usize = 1024;
/// Events being delivered (or waiting to retry) at once.
pub const MAX_CONCURRENT_DELIVERIES: usize = 8;
/// Attempts per event, the first included.
pub const MAX_ATTEMPTS: u32 = 6;
/// The delay before the second attempt; each later one doubles it.
pub const BASE_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Time to connect to the receiver.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for one whole attempt, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where approval events go, and the secret that signs them.
#[derive(Clone)]
pub struct WebhookConfig {
    /// The receiver's URL: `https://`, or `http://` to a loopback address.
    pub url: String,
    /// The HMAC-SHA256 key, [`MIN_SECRET_LEN`] to [`MAX_SECRET_LEN`] bytes.
    pub secret: Vec<u8>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted_url(&self.url))
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Why the webhook configuration was refused. No message includes the
/// secret or the URL's path.
#[derive(Debug, Error)]
pub enum WebhookConfigError {
    /// The URL does not parse.
    #[error("the webhook URL is not a valid URL: {0}")]
    BadUrl(String),
    /// The URL is neither `https://` nor `http://` to loopback.
    #[error(
        "the webhook URL {0} must use https:// (plain http:// is allowed only to 127.0.0.1, ::1 or localhost)"
    )]
    Insecure(String),
    /// The URL carries a user name or password.
    #[error(
        "the webhook URL {0} must not carry credentials; the signature header authenticates the broker"
    )]
    Credentials(String),
    /// The secret file cannot be read.
    #[error("cannot read the webhook secret file {path}: {message}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The secret is too short.
    #[error(
        "the webhook secret in {path} is {len} bytes; it must be at least {MIN_SECRET_LEN} (for instance `openssl rand -hex 32`)"
    )]
    SecretTooShort {
        /// The file.
        path: PathBuf,
        /// The secret's length.
        len: usize,
    },
    /// The secret is too long.
    #[error(
        "the webhook secret file {path} is longer than {MAX_SECRET_LEN} bytes; it must hold only the secret"
    )]
    SecretTooLong {
        /// The file.
        path: PathBuf,
    },
}

impl WebhookConfig {
    /// Check `url` and read the secret from `secret_file` (one trailing
    /// newline is dropped; every other byte is part of the secret).
    pub fn load(url: &str, secret_file: &Path) -> Result<Self, WebhookConfigError> {
        check_url(url)?;
        let secret = read_secret(secret_file)?;
        Ok(Self {
            url: url.to_owned(),
            secret,
        })
    }
}

/// Accept `https://`, or `http://` whose host is a loopback address.
fn check_url(url: &str) -> Result<reqwest::Url, WebhookConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| WebhookConfigError::BadUrl(e.to_string()))?;
    let shown = || parsed.origin().ascii_serialization();
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(WebhookConfigError::Credentials(shown()));
    }
    let secure = match parsed.scheme() {
        "https" => parsed.host_str().is_some(),
        "http" => parsed.host_str().is_some_and(is_loopback),
        _ => false,
    };
    if !secure {
        return Err(WebhookConfigError::Insecure(shown()));
    }
    Ok(parsed)
}

/// Whether a URL's host (`host_str`, so IPv6 in brackets) is loopback.
fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The URL as logs and `Debug` show it: scheme, host and port only.
fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) => format!("{}/…", parsed.origin().ascii_serialization()),
        Err(_) => "[unparseable]".to_owned(),
    }
}

fn read_secret(path: &Path) -> Result<Vec<u8>, WebhookConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |message: String| WebhookConfigError::SecretFile {
        path: path.to_owned(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let metadata = file.metadata().map_err(|e| fail(e.to_string()))?;
    if !metadata.is_file() {
        return Err(fail("not a regular file".to_owned()));
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "the webhook secret file is readable by group or others; chmod 600 it"
        );
    }
    // Room for the secret and a "\r\n", plus one byte to notice more.
    let limit = MAX_SECRET_LEN + 3;
    let mut secret = Vec::with_capacity(64);
    file.take(limit as u64)
        .read_to_end(&mut secret)
        .map_err(|e| fail(e.to_string()))?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    if secret.len() > MAX_SECRET_LEN {
        return Err(WebhookConfigError::SecretTooLong {
            path: path.to_owned(),
        });
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(WebhookConfigError::SecretTooShort {
            path: path.to_owned(),
            len: secret.len(),
        });
    }
    Ok(secret)
}

/// The handle the broker sends events through. Cloning is cheap; delivery
/// stops once every clone is dropped and the queue is empty.
#[derive(Clone)]
pub(crate) struct Webhook {
    queue: mpsc::Sender<Event>,
    rng: SystemRandom,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook").finish_non_exhaustive()
    }
}

/// How many events met which end, since [`Webhook::start`] (read by the
/// metrics at each scrape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DeliveryCounts {
    /// Accepted by the receiver (2xx).
    pub(crate) delivered: u64,
    /// Refused by the receiver, or still failing after the last attempt.
    pub(crate) failed: u64,
    /// Never queued: the queue was full or delivery had stopped.
    pub(crate) dropped: u64,
    /// Attempts that failed and were tried again.
    pub(crate) retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    retries: AtomicU64,
}

/// One event on the queue: its body is final, its signature is not (each
/// attempt signs with its own timestamp).
struct Event {
    id: String,
    kind: String,
    body: Bytes,
}

/// The retry schedule: `max_attempts` in all, waiting `base_delay`,
/// then twice that, and so on, between them.
#[derive(Debug, Clone, Copy)]
struct RetrySchedule {
    max_attempts: u32,
    base_delay: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            max_attempts: MAX_ATTEMPTS,
            base_delay: BASE_RETRY_DELAY,
        }
    }
}

impl RetrySchedule {
    /// The wait before attempt `attempt` (1-based) after a failed one.
    fn delay_before(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(2).min(16);
        self.base_delay.saturating_mul(1 << doublings)
    }
}

/// What one attempt's outcome calls for.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// Worth another try (connection error, timeout, 408, 429, 5xx).
    Retry(String),
    /// Final (another status, or a request that could not be built).
    Refused(String),
}

/// What a status code calls for.
fn classify(status: reqwest::StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Delivered
    } else if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        Outcome::Retry(format!("status {}", status.as_u16()))
    } else {
        Outcome::Refused(format!("status {}", status.as_u16()))
    }
}

impl Webhook {
    /// Start delivering to `config.url`, trusting the web roots and the CA
    /// certificates in `extra_ca_pem` (a PEM bundle), if given. Must be
    /// called within a tokio runtime, where the delivery task runs.
    ///
    /// Signatures use the system clock, not a test clock: the receiver
    /// checks them against its own.
    pub(crate) fn start(
        config: WebhookConfig,
        extra_ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, String> {
        Self::start_with(
            config,
            extra_ca_pem.as_deref(),
            Arc::new(SystemClock),
            RetrySchedule::default(),
        )
    }

    fn start_with(
        config: WebhookConfig,
        extra_ca_pem: Option<&[u8]>,
        clock: Arc<dyn Clock>,
        retry: RetrySchedule,
    ) -> Result<Self, String> {
        let url = check_url(&config.url).map_err(|e| e.to_string())?;
        if config.secret.len() < MIN_SECRET_LEN || config.secret.len() > MAX_SECRET_LEN {
            return Err(format!(
                "the webhook secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes long"
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "webhook delivery must start within a tokio runtime".to_owned())?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(url.scheme() == "https")
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("stint/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = extra_ca_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the webhook CA bundle is not PEM: {e}"))?;
            if certificates.is_empty() {
                return Err("the webhook CA bundle holds no certificate".to_owned());
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot set up HTTPS for the webhook: {e}"))?;
        let counters = Arc::new(Counters::default());
        let (queue, events) = mpsc::channel(QUEUE_CAPACITY);
        let deliverer = Arc::new(Deliverer {
            http,
            url,
            secret: config.secret,
            clock: Arc::clone(&clock),
            retry,
            counters: Arc::clone(&counters),
        });
        runtime.spawn(dispatch(events, deliverer));
        Ok(Self {
            queue,
            rng: SystemRandom::new(),
            clock,
            counters,
        })
    }

    /// Queue an event of type `kind` with the human-readable `text` and
    /// machine-readable `data`. Never blocks and never fails: an event that
    /// cannot be queued is dropped with a warning naming its kind.
    pub(crate) fn send(&self, kind: &str, text: String, data: serde_json::Value) {
        let mut id_bytes = [0u8; 16];
        if self.rng.fill(&mut id_bytes).is_err() {
            self.drop_event(kind, "no randomness for its id");
            return;
        }
        let id = hex::encode(id_bytes);
        let body = serde_json::json!({
            "id": id,
            "type": kind,
            "created_at": crate::audit::timestamp(self.clock.now()),
            "text": text,
            "data": data,
        });
        let body = match serde_json::to_vec(&body) {
            Ok(body) => Bytes::from(body),
            Err(_) => {
                self.drop_event(kind, "its body cannot be serialized");
                return;
            }
        };
        let event = Event {
            id,
            kind: kind.to_owned(),
            body,
        };
        match self.queue.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drop_event(kind, "the delivery queue is full");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.drop_event(kind, "delivery has stopped");
            }
        }
    }

    /// How many events were delivered, failed or dropped so far.
    pub(crate) fn counts(&self) -> DeliveryCounts {
        DeliveryCounts {
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
        }
    }

    fn drop_event(&self, kind: &str, reason: &str) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(kind, reason, "webhook event dropped");
    }
}

/// Take events off the queue in order and deliver each in its own task,
/// at most [`MAX_CONCURRENT_DELIVERIES`] at once. While all are busy the
/// queue fills up, and `send` starts dropping.
async fn dispatch(mut events: mpsc::Receiver<Event>, deliverer: Arc<Deliverer>) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES));
    while let Some(event) = events.recv().await {
        // The semaphore is never closed, so this only fails if it were.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let deliverer = Arc::clone(&deliverer);
        tokio::spawn(async move {
            deliverer.deliver(&event).await;
            drop(permit);
        });
    }
}

/// Everything an attempt needs, shared by the delivery tasks.
struct Deliverer {
    http: reqwest::Client,
    url: reqwest::Url,
    secret: Vec<u8>,
    clock: Arc<dyn Clock>,
    retry: RetrySchedule,
    counters: Arc<Counters>,
}

impl Deliverer {
    /// Post `event` until it is delivered, refused, or out of attempts.
    async fn deliver(&self, event: &Event) {
        for attempt in 1..=self.retry.max_attempts {
            if attempt > 1 {
                tokio::time::sleep(self.retry.delay_before(attempt)).await;
            }
            match self.attempt(event).await {
                Outcome::Delivered => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(event_id = %event.id, kind = %event.kind, attempt, "webhook event delivered");
                    return;
                }
                Outcome::Retry(reason) if attempt < self.retry.max_attempts => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(event_id = %event.id, kind = %event.kind, attempt, %reason, "webhook delivery failed; will retry");
                }
                Outcome::Retry(reason) => {
                    tracing::warn!(event_id = %event.id, kind = %event.kind, attempts = attempt, %reason, "webhook delivery failed; giving up");
                }
                Outcome::Refused(reason) => {
                    tracing::warn!(event_id = %event.id, kind = %event.kind, attempts = attempt, %reason, "webhook receiver refused the event; not retrying");
                    break;
                }
            }
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// One signed POST. The response body is never read: dropping the
    /// response closes the connection instead of buffering it.
    async fn attempt(&self, event: &Event) -> Outcome {
        let timestamp = self.clock.now().timestamp();
        let result = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&self.secret, timestamp, &event.body))
            .header(EVENT_ID_HEADER, event.id.as_str())
            .body(event.body.clone())
            .send()
            .await;
        match result {
            Ok(response) => classify(response.status()),
            Err(error) if error.is_builder() => Outcome::Refused(describe(error)),
            Err(error) => Outcome::Retry(describe(error)),
        }
    }
}

/// A reqwest error and its causes, without the URL (whose path may be a
/// credential).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::Mutex;
    use std::time::Instant;
    use stint_core::webhook::{DEFAULT_TOLERANCE_SECS, verify};

    const SECRET: &[u8] = b"stint-webhook-test-secret-32byte";

    /// A receiver on loopback that records every request and answers the
    /// first `fail_first` with `fail_status`, the rest with 204.
    #[derive(Clone)]
    struct Receiver {
        requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
        fail_first: usize,
        fail_status: StatusCode,
    }

    impl Receiver {
        async fn start(fail_first: usize, fail_status: StatusCode) -> (Self, String) {
            let receiver = Self {
                requests: Arc::default(),
                fail_first,
                fail_status,
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/hooks/stint", listener.local_addr().unwrap());
            let app = axum::Router::new()
                .route("/hooks/stint", axum::routing::post(record))
                .with_state(receiver.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (receiver, url)
        }

        fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn record(
        State(receiver): State<Receiver>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let seen = {
            let mut requests = receiver.requests.lock().unwrap();
            requests.push((headers, body));
            requests.len()
        };
        if seen <= receiver.fail_first {
            receiver.fail_status
        } else {
            StatusCode::NO_CONTENT
        }
    }

    fn start(url: &str, base_delay: Duration, max_attempts: u32) -> Webhook {
        let config = WebhookConfig {
            url: url.to_owned(),
            secret: SECRET.to_vec(),
        };
        let retry = RetrySchedule {
            max_attempts,
            base_delay,
        };
        Webhook::start_with(config, None, Arc::new(SystemClock), retry).unwrap()
    }

    /// Poll until `done` holds; fail after five seconds.
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers.get(name).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn delivers_a_signed_event_after_retrying_503s() {
        let (receiver, url) = Receiver::start(2, StatusCode::SERVICE_UNAVAILABLE).await;
        let webhook = start(&url, Duration::from_millis(20), MAX_ATTEMPTS);
        webhook.send(
            "approval.requested",
            "deploy/prod wants db:write; approve?".to_owned(),
            serde_json::json!({"request_id": "req-1"}),
        );
        wait_until("delivered", || webhook.counts().delivered == 1).await;
        assert_eq!(
            webhook.counts(),
            DeliveryCounts {
                delivered: 1,
                failed: 0,
                dropped: 0,
                retries: 2,
            }
        );

        let requests = receiver.requests();
        assert_eq!(requests.len(), 3, "two 503s, then success");
        let first_body = &requests[0].1;
        let now = chrono::Utc::now().timestamp();
        for (headers, body) in &requests {
            // Every attempt is the same event, freshly signed.
            assert_eq!(body, first_body);
            assert_eq!(header(headers, "content-type"), "application/json");
            verify(
                SECRET,
                header(headers, SIGNATURE_HEADER),
                body,
                now,
                DEFAULT_TOLERANCE_SECS,
            )
            .unwrap();
        }
        let (headers, body) = &requests[2];
        let event: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "approval.requested");
        assert_eq!(event["text"], "deploy/prod wants db:write; approve?");
        assert_eq!(event["data"], serde_json::json!({"request_id": "req-1"}));
        let id = event["id"].as_str().unwrap();
        assert_eq!(id.len(), 32);
        assert_eq!(header(headers, EVENT_ID_HEADER), id);
        let created = event["created_at"].as_str().unwrap();
        assert!(created.ends_with('Z'), "{created}");
        chrono::DateTime::parse_from_rfc3339(created).unwrap();
        // The wrong secret does not verify.
        assert!(
            verify(
                b"another-webhook-secret-of-32-byt",
                header(headers, SIGNATURE_HEADER),
                body,
                now,
                DEFAULT_TOLERANCE_SECS
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn retries_408_and_429() {
        for status in [StatusCode::REQUEST_TIMEOUT, StatusCode::TOO_MANY_REQUESTS] {
            let (receiver, url) = Receiver::start(1, status).await;
            let webhook = start(&url, Duration::from_millis(5), MAX_ATTEMPTS);
            webhook.send("approval.decided", "ok".to_owned(), serde_json::Value::Null);
            wait_until("delivered", || webhook.counts().delivered == 1).await;
            assert_eq!(receiver.requests().len(), 2, "{status}");
        }
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt() {
        let (receiver, url) = Receiver::start(usize::MAX, StatusCode::BAD_GATEWAY).await;
        let webhook = start(&url, Duration::from_millis(2), MAX_ATTEMPTS);
        webhook.send(
            "approval.requested",
            "x".to_owned(),
            serde_json::Value::Null,
        );
        wait_until("failed", || webhook.counts().failed == 1).await;
        assert_eq!(receiver.requests().len(), MAX_ATTEMPTS as usize);
        assert_eq!(webhook.counts().delivered, 0);
    }

    #[tokio::test]
    async fn does_not_retry_other_client_errors() {
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::NOT_FOUND,
        ] {
            let (receiver, url) = Receiver::start(usize::MAX, status).await;
            let webhook = start(&url, Duration::from_millis(2), MAX_ATTEMPTS);
            webhook.send(
                "approval.requested",
                "x".to_owned(),
                serde_json::Value::Null,
            );
            // `failed` is counted after the last attempt's answer, so no
            // retry can be pending once it is 1.
            wait_until("failed", || webhook.counts().failed == 1).await;
            assert_eq!(receiver.requests().len(), 1, "{status}");
        }
    }

    #[tokio::test]
    async fn retries_connection_errors() {
        // A port nothing listens on (any more).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let webhook = start(&format!("http://{addr}/"), Duration::from_millis(2), 3);
        webhook.send(
            "approval.requested",
            "x".to_owned(),
            serde_json::Value::Null,
        );
        wait_until("failed", || webhook.counts().failed == 1).await;
        assert_eq!(webhook.counts().delivered, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_never_blocks_and_drops_when_full() {
        // A listener that never accepts: connections sit in its backlog and
        // requests never get an answer.
        let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", hanging.local_addr().unwrap());
        let webhook = start(&url, Duration::from_millis(20), MAX_ATTEMPTS);
        let sends = 2000;
        let started = Instant::now();
        for n in 0..sends {
            webhook.send(
                "approval.requested",
                format!("event {n}"),
                serde_json::Value::Null,
            );
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(500),
            "send took {elapsed:?}"
        );
        let counts = webhook.counts();
        // At most the queue, the deliveries in flight and the one event
        // the dispatcher holds while it waits for a permit got through.
        let most_accepted = (QUEUE_CAPACITY + MAX_CONCURRENT_DELIVERIES + 1) as u64;
        assert!(counts.dropped >= sends - most_accepted, "{counts:?}");
        assert!(
            counts.dropped <= sends - QUEUE_CAPACITY as u64,
            "{counts:?}"
        );
        assert_eq!(counts.delivered + counts.failed, 0, "{counts:?}");
        drop(hanging);
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let config = WebhookConfig {
            url: "https://hooks.example.com/x".to_owned(),
            secret: SECRET.to_vec(),
        };
        let error = Webhook::start(config, None).unwrap_err();
        assert!(error.contains("tokio runtime"), "{error}");
    }

    #[tokio::test]
    async fn start_refuses_a_bad_ca_bundle_or_secret() {
        let config = WebhookConfig {
            url: "https://hooks.example.com/x".to_owned(),
            secret: SECRET.to_vec(),
        };
        assert!(Webhook::start(config.clone(), Some(b"not pem".to_vec())).is_err());
        let short = WebhookConfig {
            secret: b"short".to_vec(),
            ..config
        };
        assert!(Webhook::start(short, None).is_err());
    }

    #[test]
    fn retry_schedule_doubles_from_one_second() {
        let schedule = RetrySchedule::default();
        let delays: Vec<u64> = (2..=MAX_ATTEMPTS)
            .map(|attempt| schedule.delay_before(attempt).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16]);
    }

    #[test]
    fn statuses_are_classified() {
        for code in [200, 201, 202, 204] {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap()),
                Outcome::Delivered
            );
        }
        for code in [408, 429, 500, 502, 503, 504] {
            let outcome = classify(StatusCode::from_u16(code).unwrap());
            assert!(matches!(outcome, Outcome::Retry(_)), "{code}");
        }
        for code in [301, 302, 400, 401, 403, 404, 410, 413, 422] {
            let outcome = classify(StatusCode::from_u16(code).unwrap());
            assert!(matches!(outcome, Outcome::Refused(_)), "{code}");
        }
    }

    fn secret_file(content: &[u8]) -> tempfile::NamedTempFile {
        use std::io::Write as _;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        file
    }

    #[test]
    fn load_accepts_https_and_loopback_http() {
        let file = secret_file(b"0123456789abcdef0123456789abcdef\n");
        for url in [
            "https://hooks.slack.com/services/T0/B0/xyz",
            "https://hooks.example.com:8443/stint",
            "http://127.0.0.1:9000/hook",
            "http://127.1.2.3/hook",
            "http://[::1]:9000/hook",
            "http://localhost/hook",
            "http://LOCALHOST:8080/hook",
        ] {
            let config = WebhookConfig::load(url, file.path()).unwrap();
            assert_eq!(config.url, url);
            assert_eq!(config.secret, b"0123456789abcdef0123456789abcdef");
        }
    }

    #[test]
    fn load_refuses_insecure_or_odd_urls() {
        let file = secret_file(SECRET);
        for url in [
            "http://hooks.example.com/stint",
            "http://10.0.0.1/hook",
            "http://[::2]/hook",
            "http://localhost.example.com/hook",
            "ftp://127.0.0.1/hook",
            "file:///etc/passwd",
            "https://user:pass@hooks.example.com/hook",
            "not a url",
            "",
        ] {
            assert!(WebhookConfig::load(url, file.path()).is_err(), "{url}");
        }
        let error = WebhookConfig::load("http://hooks.example.com/T0/secret-path", file.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("http://hooks.example.com"), "{error}");
        assert!(!error.contains("secret-path"), "{error}");
    }

    #[test]
    fn load_checks_the_secret_file() {
        let url = "https://hooks.example.com/stint";
        // Exactly the minimum, with CRLF, is fine.
        let file = secret_file(b"0123456789abcdef0123456789abcdef\r\n");
        assert_eq!(
            WebhookConfig::load(url, file.path()).unwrap().secret.len(),
            MIN_SECRET_LEN
        );
        // One byte short (the newline does not count).
        let file = secret_file(b"0123456789abcdef0123456789abcde\n");
        let error = WebhookConfig::load(url, file.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("31 bytes"), "{error}");
        assert!(
            error.contains(&file.path().display().to_string()),
            "{error}"
        );
        assert!(!error.contains("0123456789abcde"), "{error}");
        // The maximum, and one byte more.
        let file = secret_file(&[b'k'; MAX_SECRET_LEN]);
        assert!(WebhookConfig::load(url, file.path()).is_ok());
        let file = secret_file(&[b'k'; MAX_SECRET_LEN + 1]);
        assert!(matches!(
            WebhookConfig::load(url, file.path()),
            Err(WebhookConfigError::SecretTooLong { .. })
        ));
        // A huge file is refused without reading it all.
        let file = secret_file(&vec![b'k'; 10 * 1024 * 1024]);
        assert!(WebhookConfig::load(url, file.path()).is_err());
        // A missing file is named.
        let missing = std::env::temp_dir().join("stint-no-such-webhook-secret");
        let error = WebhookConfig::load(url, &missing).unwrap_err().to_string();
        assert!(error.contains("stint-no-such-webhook-secret"), "{error}");
    }

    #[test]
    fn debug_redacts_the_secret_and_the_path() {
        let config = WebhookConfig {
            url: "https://hooks.slack.com/services/T0/B0/very-secret-token".to_owned(),
            secret: SECRET.to_vec(),
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("https://hooks.slack.com"), "{shown}");
        assert!(!shown.contains("very-secret-token"), "{shown}");
        assert!(!shown.contains("stint-webhook-test-secret"), "{shown}");
    }
}
