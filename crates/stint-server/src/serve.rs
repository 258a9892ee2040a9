//! The accept loop: plain HTTP (dev) or TLS, HTTP/1.1 and HTTP/2.
//!
//! Every connection is bounded in time and in what it can make the broker
//! hold:
//!
//! - At most `Limits::max_connections` connections are served at once, at
//!   most `Limits::max_connections_per_source` from one source (an IPv4
//!   address, an IPv6 /64); beyond that new ones are closed on accept. The
//!   last `Limits::reserved_connections` are a reserve: a connection
//!   accepted while only those are free is served for health, discovery,
//!   keys and revocation only (the router answers 503 to the rest), is
//!   closed after `Limits::first_byte_timeout` without a request in
//!   flight, and one source holds at most a sixteenth of the reserve. So a
//!   flood of connections from one source, silent or not, takes its share
//!   and no more, and one from many sources still leaves room to revoke.
//! - A connection that sends nothing within `Limits::first_byte_timeout`
//!   is closed, before any TLS or HTTP state is made for it.
//! - TLS handshakes run in each connection's own task with a deadline
//!   (`Limits::handshake_timeout`), so a slow or silent client never holds up
//!   `accept`.
//! - The first request must arrive within `Limits::header_timeout` of the
//!   connection (whatever the protocol: this also covers hyper's protocol
//!   detection, which has no timer of its own), and an HTTP/1 request's
//!   headers within the same time.
//! - A connection with no request in flight and none started for
//!   `Limits::idle_timeout` is closed, HTTP/1 keep-alive and HTTP/2 alike (HTTP/2
//!   pings do not count as activity; they only find dead peers sooner).
//! - HTTP/2 allows `Limits::max_streams_per_connection` concurrent requests
//!   per connection, with 64 KiB stream and 128 KiB connection windows; bodies
//!   are read with a deadline (`Limits::body_timeout`), and the
//!   router caps the requests in flight (see `crate::http`).
//!
//! On shutdown the listener closes, in-flight requests finish (up to
//! [`DRAIN_TIMEOUT`]), and idle connections are closed.

use crate::config::Limits;
use crate::limits::{Admission, Connections, Source};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

/// The largest header block accepted, either protocol.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// HTTP/2 flow-control windows: what a peer may send before a handler reads
/// it, per stream and per connection (hyper's defaults are 1 MiB each).
const H2_STREAM_WINDOW: u32 = 64 * 1024;
const H2_CONNECTION_WINDOW: u32 = 128 * 1024;
/// How often an HTTP/2 peer is pinged, and how long it has to answer.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// How long in-flight requests get to finish at shutdown.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ReloadableTls>>,
    proxies: Arc<crate::forwarded::TrustedProxies>,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Connections::new(&limits));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if !proxies.admits(peer.ip()) {
            // TLS ends at the proxy: a connection from anywhere else would
            // carry secrets in the clear. Counted, not logged one by one.
            metrics.connection_refused("not_a_trusted_proxy");
            tracing::debug!(%peer, "closing a connection that does not come from a trusted proxy");
            continue;
        }
        // A trusted proxy carries many clients: its connections are not
        // held to one source's share (each request's client is, below).
        let per_source = !proxies.trusts(peer.ip());
        let slot = match connections.admit(Source::of(peer.ip()), per_source) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Counted, not logged one by one: a flood would flood the log.
                metrics.connection_refused(refusal.as_str());
                tracing::debug!(%peer, limit = refusal.as_str(), "closing a new connection");
                continue;
            }
        };
        let admission = slot.admission();
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new(limits, admission));
        let router = router.clone();
        let proxies = Arc::clone(&proxies);
        let tracker = Arc::clone(&activity);
        // The service for this connection, given the client certificate its
        // TLS handshake verified, if any.
        let service = move |certificate: Option<PeerCertificate>| {
            TowerToHyperService::new(tower::service_fn(
                move |mut request: http::Request<Incoming>| {
                    let request_guard = tracker.begin();
                    // Behind a proxy, the client its headers name.
                    let client = proxies.client(peer, request.headers());
                    let refused = client.err().map(|why| {
                        tracing::debug!(%peer, reason = why.description(), "forwarding headers refused");
                        crate::error::OAuthError::invalid_request(
                            stint_core::decision::DenyReason::MalformedRequest,
                            why.description(),
                        )
                    });
                    request
                        .extensions_mut()
                        .insert(ConnectInfo(client.unwrap_or(peer)));
                    request.extensions_mut().insert(admission);
                    if let Some(certificate) = &certificate {
                        request.extensions_mut().insert(certificate.clone());
                    }
                    let router = router.clone();
                    let response = async move {
                        match refused {
                            Some(refusal) => {
                                Ok(axum::response::IntoResponse::into_response(refusal))
                            }
                            None => router.oneshot(request).await,
                        }
                    };
                    async move {
                        // The request stays in flight until its body is
                        // sent: a long response (the revocation feed's
                        // stream) is not an idle connection.
                        response.await.map(|response| {
                            response.map(|body| {
                                axum::body::Body::new(GuardedBody {
                                    inner: body,
                                    _guard: request_guard,
                                })
                            })
                        })
                    }
                },
            ))
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        // The configuration in force at accept: a reload later changes
        // new connections only.
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        tokio::spawn(async move {
            let _slot = slot;
            if !first_byte(&stream, limits.first_byte_timeout).await {
                tracing::debug!(%peer, "no first byte in time; closing");
                return;
            }
            let result = match tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service(None));
                    tokio::select! {
                        result = watcher.watch(connection.into_owned()) => result,
                        () = activity.expired() => return,
                    }
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        limits.handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|leaf| PeerCertificate(Arc::from(leaf.as_ref())));
                    let connection =
                        builder.serve_connection(TokioIo::new(stream), service(certificate));
                    tokio::select! {
                        result = watcher.watch(connection.into_owned()) => result,
                        () = activity.expired() => return,
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
}

/// Whether the peer sent something (rather than nothing, or end of stream)
/// within `timeout`.
async fn first_byte(stream: &TcpStream, timeout: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut byte)).await,
        Ok(Ok(n)) if n > 0
    )
}

/// The TLS client certificate (DER) the connection's handshake verified
/// against the configured client CA, as a request extension.
#[derive(Debug, Clone)]
pub(crate) struct PeerCertificate(pub(crate) Arc<[u8]>);

/// What a connection is doing, for the first-request and idle deadlines.
///
/// Activity is counted in requests, not bytes: an HTTP/2 ping or a trickle
/// of header bytes that never completes a request keeps nothing open.
struct Activity {
    limits: Limits,
    /// How long the connection may be idle between requests: the idle
    /// timeout, or for a reserved connection the first-byte timeout.
    idle: Duration,
    opened: Instant,
    /// Milliseconds after `opened` of the last request's start or end.
    last: AtomicU64,
    in_flight: AtomicUsize,
    served: AtomicBool,
}

impl Activity {
    fn new(limits: Limits, admission: Admission) -> Self {
        Self {
            limits,
            idle: match admission {
                Admission::General => limits.idle_timeout,
                Admission::Reserved => limits.first_byte_timeout,
            },
            opened: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(elapsed, Ordering::Relaxed);
    }

    /// A request started; it is in flight until the guard drops.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        RequestGuard(Arc::clone(self))
    }

    /// When the connection may be closed if nothing happens before then:
    /// `None` while a request is in flight.
    fn deadline(&self) -> Option<Instant> {
        if !self.served.load(Ordering::Relaxed) {
            return Some(self.opened + self.limits.header_timeout);
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(self.opened + last + self.idle)
    }

    /// Resolves once the connection has been idle past its deadline.
    ///
    /// A request that starts or ends moves the deadline to that moment plus
    /// the idle timeout, so waking at least once per idle timeout to look
    /// again is never late (and costs one timer per connection).
    async fn expired(&self) {
        loop {
            let now = Instant::now();
            let recheck = now + self.idle;
            match self.deadline() {
                Some(deadline) if now >= deadline => return,
                Some(deadline) => tokio::time::sleep_until(deadline.min(recheck).into()).await,
                None => tokio::time::sleep_until(recheck.into()).await,
            }
        }
    }
}

struct RequestGuard(Arc<Activity>);

/// A response body that holds its request's guard until it is done.
struct GuardedBody {
    inner: axum::body::Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
