//! The load generator: a fixed number of keep-alive HTTP/1.1 connections,
//! each sending one request after another (a closed loop), first for a
//! warm-up that is not recorded, then for the measured window.

use crate::machine::{CpuSample, CpuUse};
use crate::stats::Measurement;
use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout_at};

/// A warm-up or window length from the command line: seconds, fractions
/// allowed.
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("{text:?} is not a non-negative number of seconds"))
}

/// [`parse_seconds`], more than zero (a measured window).
pub(crate) fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    let seconds = parse_seconds(text)?;
    if seconds.is_zero() {
        return Err("must be more than 0 seconds".to_owned());
    }
    Ok(seconds)
}

/// How long after the window closes an unanswered request is abandoned
/// (and counted as an error), so that the benchmark always stops by itself.
const GRACE: Duration = Duration::from_secs(10);

/// How much of a failed response's body an error message quotes.
const QUOTED_BODY: usize = 200;

/// The request a connection sends, over and over.
#[derive(Debug, Clone)]
pub(crate) struct RequestTemplate {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestTemplate {
    /// A request for `path` on `addr`, with `headers` plus `Host`.
    pub(crate) fn new(
        method: Method,
        addr: SocketAddr,
        path: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Self> {
        let uri: Uri = path.parse().with_context(|| format!("bad path {path:?}"))?;
        let host = HeaderValue::from_str(&addr.to_string()).context("bad host")?;
        headers.insert(header::HOST, host);
        Ok(Self {
            method,
            uri,
            headers,
            body,
        })
    }

    /// A form POST to `path` on `addr`, authenticated with HTTP Basic as
    /// `client_id` (a token request).
    pub(crate) fn basic_form_post(
        addr: SocketAddr,
        path: &str,
        client_id: &str,
        client_secret: &str,
        form: &'static str,
    ) -> Result<Self> {
        use base64::Engine as _;
        let credentials = base64::engine::general_purpose::STANDARD
            .encode(format!("{client_id}:{client_secret}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {credentials}"))
                .context("bad client credentials")?,
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        Self::new(
            Method::POST,
            addr,
            path,
            headers,
            Bytes::from_static(form.as_bytes()),
        )
    }

    /// A fresh copy of the request (the parts are reference-counted).
    pub(crate) fn build(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// How hard and how long to push.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Concurrent connections, each with one request in flight at a time.
    pub(crate) connections: usize,
    /// Unrecorded time before the window.
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
}

/// The outcome of one load against one target.
#[derive(Debug, Clone)]
pub(crate) struct LoadReport {
    pub(crate) measurement: Measurement,
    /// The first failure seen, to say what went wrong.
    pub(crate) first_error: Option<String>,
    /// How busy the CPUs were during the window, if that could be read.
    pub(crate) cpu: Option<CpuUse>,
}

/// When a completed request counts.
#[derive(Debug, Clone, Copy)]
struct Window {
    opens: Instant,
    closes: Instant,
    give_up: Instant,
}

impl Window {
    fn starting_now(load: Load) -> Self {
        let opens = Instant::now() + load.warmup;
        let closes = opens + load.duration;
        Self {
            opens,
            closes,
            give_up: closes + GRACE,
        }
    }

    /// A request counts if it completed inside the window (it may have
    /// started during the warm-up: its latency is still a real one).
    fn counts(&self, finished: Instant) -> bool {
        finished >= self.opens && finished < self.closes
    }
}

/// What one connection saw.
#[derive(Debug, Default)]
struct ConnectionReport {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl ConnectionReport {
    fn fail(&mut self, why: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }
}

/// Run `load` against `addr` with `template` and summarize the window.
pub(crate) async fn measure(
    addr: SocketAddr,
    template: Arc<RequestTemplate>,
    load: Load,
) -> Result<LoadReport> {
    let window = Window::starting_now(load);
    let tasks: Vec<_> = (0..load.connections)
        .map(|_| tokio::spawn(drive_connection(addr, Arc::clone(&template), window)))
        .collect();
    let cpu = sample_cpu_over(window).await;
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let report = task.await.context("a load connection's task failed")?;
        latencies.extend(report.latencies);
        errors += report.errors;
        first_error = first_error.or(report.first_error);
    }
    Ok(LoadReport {
        measurement: Measurement::from_latencies(&mut latencies, errors, load.duration),
        first_error,
        cpu,
    })
}

/// Sample the CPU counters as the window opens and as it closes.
async fn sample_cpu_over(window: Window) -> Option<CpuUse> {
    sleep_until(window.opens).await;
    let opening = CpuSample::now();
    sleep_until(window.closes).await;
    Some(CpuSample::now()?.since(opening?))
}

/// One connection's closed loop: send, wait for the whole answer, repeat,
/// until the window closes. A broken connection is replaced; a refused
/// connection ends the loop (the target is gone).
async fn drive_connection(
    addr: SocketAddr,
    template: Arc<RequestTemplate>,
    window: Window,
) -> ConnectionReport {
    let mut report = ConnectionReport::default();
    let mut sender = None;
    while Instant::now() < window.closes {
        if sender.is_none() {
            match connect(addr, window.give_up).await {
                Ok(connected) => sender = Some(connected),
                Err(error) => {
                    report.fail(|| format!("{error:#}"));
                    break;
                }
            }
        }
        let Some(connection) = sender.as_mut() else {
            break;
        };
        let started = Instant::now();
        match exchange(connection, template.build(), window.give_up).await {
            Ok((status, body)) if is_token_response(status, &body) => {
                let finished = Instant::now();
                if window.counts(finished) {
                    report.latencies.push(finished - started);
                }
            }
            Ok((status, body)) => report.fail(|| describe_refusal(status, &body)),
            Err(error) => {
                report.fail(|| format!("{error:#}"));
                sender = None;
            }
        }
    }
    report
}

/// Open a keep-alive HTTP/1.1 connection with Nagle off.
pub(crate) async fn connect(
    addr: SocketAddr,
    deadline: Instant,
) -> Result<SendRequest<Full<Bytes>>> {
    let connecting = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .context("the HTTP/1.1 handshake failed")?;
        // Drives the connection; ends when `sender` is dropped or the peer
        // closes.
        tokio::spawn(connection);
        anyhow::Ok(sender)
    };
    timeout_at(deadline, connecting)
        .await
        .with_context(|| format!("connecting to {addr} timed out"))?
}

/// Send one request and read the whole response.
pub(crate) async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
    deadline: Instant,
) -> Result<(StatusCode, Bytes)> {
    let exchanging = async {
        sender.ready().await.context("the connection closed")?;
        let response = sender
            .send_request(request)
            .await
            .context("the request failed")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the response body failed")?
            .to_bytes();
        anyhow::Ok((status, body))
    };
    timeout_at(deadline, exchanging)
        .await
        .context("no response before the deadline")?
}

/// A success: 200 and a JSON body with a non-empty `access_token`.
fn is_token_response(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::OK
        && serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|json| {
            json.get("access_token")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|token| !token.is_empty())
        })
}

fn describe_refusal(status: StatusCode, body: &[u8]) -> String {
    let quoted = String::from_utf8_lossy(body.get(..QUOTED_BODY).unwrap_or(body));
    format!("HTTP {status}: {quoted}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_with_an_access_token_is_a_success() {
        let token = br#"{"access_token":"eyJ.x.y","token_type":"Bearer"}"#;
        assert!(is_token_response(StatusCode::OK, token));
        assert!(!is_token_response(StatusCode::BAD_REQUEST, token));
        assert!(!is_token_response(
            StatusCode::OK,
            br#"{"access_token":""}"#
        ));
        assert!(!is_token_response(StatusCode::OK, br#"{"error":"x"}"#));
        assert!(!is_token_response(StatusCode::OK, b"not json"));
    }

    #[test]
    fn the_window_counts_completions_inside_it_only() {
        let load = Load {
            connections: 1,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(2),
        };
        let window = Window::starting_now(load);
        assert!(!window.counts(window.opens - Duration::from_millis(1)));
        assert!(window.counts(window.opens));
        assert!(window.counts(window.closes - Duration::from_millis(1)));
        assert!(!window.counts(window.closes));
    }
}
