//! `/metrics` as a scraper sees it: both exposition formats, checked by
//! Prometheus' own `promtool` (text format) and the OpenMetrics parser of
//! Prometheus' Python client (OpenMetrics), the standard process metrics,
//! the build info, the approval, feed, webhook and federation metrics, and
//! who may see the policy's workflow names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use stint_core::secret;
use stint_proto::{APPROVALS_PATH, REVOCATION_PATH, REVOCATION_STREAM_PATH, TOKEN_PATH};
use stint_tests::sse::SseStream;
use stint_tests::{BrokerOptions, TestBroker, eventually, policy_with};

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// What Prometheus 2.x sends.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Run `program args` with `input` on its standard input; its exit status
/// and everything it printed.
fn run_with_input(program: &str, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// `promtool check metrics` on the text format: it must pass with nothing
/// to say. A missing promtool fails the test, naming the package.
fn promtool_check(text: &str) {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "promtool is needed for this test: apt-get update && apt-get install -y prometheus"
    );
    let (passed, printed) = run_with_input("promtool", &["check", "metrics"], text);
    assert!(
        passed && printed.trim().is_empty(),
        "promtool check metrics: {printed}\n{text}"
    );
}

/// The OpenMetrics reference parser of Prometheus' Python client: it
/// refuses what the OpenMetrics 1.0 specification does not allow (a
/// missing `# EOF`, a counter without `_total`, an unknown type, repeated
/// or interleaved families, ...). `promtool` reads only the text format.
fn openmetrics_check(text: &str) {
    let python = "/usr/bin/python3";
    let found = Command::new(python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "the OpenMetrics parser is needed for this test: apt-get update && apt-get install -y python3-prometheus-client"
    );
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
        families = list(parse(sys.stdin.read()))\n\
        print(len(families), file=sys.stderr)\n";
    let (passed, printed) = run_with_input(python, &["-c", script], text);
    assert!(passed, "OpenMetrics parser: {printed}\n{text}");
}

/// Scrape with `accept` (and `token`, if given): the status, content type
/// and body.
async fn scrape(
    broker: &TestBroker,
    accept: Option<&str>,
    token: Option<&str>,
) -> (u16, String, String) {
    let mut request = broker.http.get(broker.url("/metrics"));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

/// The value of the sample `series` (name and labels exactly as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

fn operator_key(name: &str) -> String {
    format!("stint_operator_{name}")
}

/// The demo policy with an elevation alice may decide.
fn elevation_policy() -> String {
    policy_with(&format!(
        r#"
[workflows.demo.steps.deploy]
scopes = ["deploy:demo/staging"]

[workflows.demo.steps.deploy.elevation]
scopes = ["deploy:demo/prod/*"]
approver_groups = ["sre"]
quorum = 1
max_duration = "30m"
max_wait = "10m"

[operators.alice]
groups = ["sre"]
key_sha256 = "{}"
"#,
        secret::hash_hex(&operator_key("alice"))
    ))
}

/// A webhook receiver that answers 503 to its first request and 204 to
/// every other; counts the requests.
async fn flaky_receiver() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let hits = Arc::clone(&counted);
            async move {
                if hits.fetch_add(1, Ordering::SeqCst) == 0 {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), hits)
}

#[tokio::test]
async fn both_formats_pass_the_reference_checkers_and_carry_every_metric() {
    let (hook, _hits) = flaky_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, "a-webhook-secret-of-at-least-32-bytes!!\n").unwrap();
    let broker = TestBroker::start_with(BrokerOptions {
        policy: Some(elevation_policy()),
        webhook: Some(stint_server::WebhookTarget {
            url: hook,
            secret_file,
        }),
        feed_max_streams_per_client: 1,
        ..BrokerOptions::default()
    })
    .await;

    // A mint, a denial, a revocation (one feed event).
    let minted = broker.mint("read", "read:demo/a", &[]).await;
    let token = minted["access_token"].as_str().unwrap();
    broker.try_mint("read", "write:demo/a", &[]).await;
    let response = broker.post_form(REVOCATION_PATH, &[("token", token)]).await;
    assert_eq!(response.status(), 200);
    // An approval requested, then denied.
    let response = broker
        .post_form(
            TOKEN_PATH,
            &[
                ("grant_type", "client_credentials"),
                ("step", "deploy"),
                ("scope", "deploy:demo/prod/web"),
                ("audience", "demo-api"),
                ("job", "job-1"),
            ],
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "authorization_pending", "{body}");
    let id = body["approval_id"].as_str().unwrap();
    let (_, _, text) = scrape(&broker, None, None).await;
    assert_eq!(sample(&text, "stint_approvals_pending"), Some(1.0));
    let response = broker
        .http
        .post(broker.url(&format!("{APPROVALS_PATH}/{id}/deny")))
        .bearer_auth(operator_key("alice"))
        .json(&json!({"comment": "not now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // One feed stream held open, a second refused (one per client here).
    let client = (broker.client_id.as_str(), broker.client_secret.as_str());
    let stream_url = broker.url(REVOCATION_STREAM_PATH);
    let _stream = SseStream::new(SseStream::open(&broker.http, &stream_url, client, None).await);
    let refused = SseStream::open(&broker.http, &stream_url, client, None).await;
    assert_eq!(refused.status(), 429);
    // Both webhook events delivered, the first after one retry.
    let text = eventually(
        Duration::from_secs(20),
        "two webhook deliveries",
        || async {
            let (_, _, text) = scrape(&broker, None, None).await;
            (sample(
                &text,
                "stint_webhook_deliveries_total{outcome=\"delivered\"}",
            ) == Some(2.0))
            .then_some(text)
        },
    )
    .await;

    for (series, value) in [
        ("stint_tokens_minted_total", 1.0),
        ("stint_approval_events_total{event=\"requested\"}", 1.0),
        ("stint_approval_events_total{event=\"denied\"}", 1.0),
        ("stint_approvals_pending", 0.0),
        ("stint_feed_streams_open", 1.0),
        (
            "stint_feed_streams_refused_total{reason=\"client_limit\"}",
            1.0,
        ),
        ("stint_feed_events_published_total", 1.0),
        ("stint_webhook_deliveries_total{outcome=\"failed\"}", 0.0),
        ("stint_webhook_deliveries_total{outcome=\"dropped\"}", 0.0),
        ("stint_webhook_retries_total", 1.0),
        (
            "stint_federation_jwks_fetches_total{outcome=\"fetched\"}",
            0.0,
        ),
        (
            "stint_federation_jwks_fetches_total{outcome=\"failed\"}",
            0.0,
        ),
        ("stint_policy_workflows_review_overdue", 0.0),
        (
            &format!(
                "stint_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    let now = chrono::Utc::now().timestamp() as f64;
    let started = sample(&text, "process_start_time_seconds").unwrap();
    assert!(
        started <= now + 1.0 && started > now - 24.0 * 3600.0,
        "{started}"
    );
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(
            sample(&text, series).is_some_and(|v| v > 0.0),
            "{series} in\n{text}"
        );
    }
    // An anonymous scraper does not learn the policy's workflow names.
    assert!(!text.contains("workflow="), "{text}");
    assert!(!text.contains("\"demo\""), "{text}");

    // The text format, whether asked for or not asked at all.
    for accept in [None, Some("text/plain; version=0.0.4"), Some("*/*")] {
        let (status, content_type, text) = scrape(&broker, accept, None).await;
        assert_eq!((status, content_type.as_str()), (200, TEXT), "{accept:?}");
        assert!(!text.contains("# EOF"));
        promtool_check(&text);
    }
    // OpenMetrics, as Prometheus asks for it.
    for accept in [PROMETHEUS_ACCEPT, "application/openmetrics-text"] {
        let (status, content_type, text) = scrape(&broker, Some(accept), None).await;
        assert_eq!((status, content_type.as_str()), (200, OPENMETRICS));
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE stint_tokens_minted counter\n"));
        openmetrics_check(&text);
    }
}

/// With `--metrics-token-file`, `/metrics` answers only a scraper that
/// presents the token, and that scraper also sees the workflow names.
/// Without it, a scraper that presents any bearer is refused rather than
/// silently served (its configuration is wrong).
#[tokio::test]
async fn a_scrape_token_guards_the_metrics_and_reveals_the_workflow_names() {
    let dir = tempfile::tempdir().unwrap();
    let token = "0123456789abcdef0123456789abcdef-scrape";
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut config =
        stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.metrics_token_file = Some(token_file);
    let server = stint_server::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("{}/metrics", server.issuer());
    let get = |bearer: Option<&str>| {
        let mut request = http.get(&url);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let challenge = response.headers().contains_key("www-authenticate");
            (status, challenge, response.text().await.unwrap())
        }
    };
    for bearer in [
        None,
        Some("wrong"),
        Some(&token[..token.len() - 1]),
        Some(&format!("{token}x")),
    ] {
        let (status, challenge, body) = get(bearer).await;
        assert_eq!(status, 401, "{bearer:?}: {body}");
        assert!(challenge);
        assert!(!body.contains("stint_"), "nothing leaks: {body}");
    }
    let (status, _, text) = get(Some(token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "stint_policy_workflow_review_overdue{workflow=\"demo\"}"
        ),
        Some(0.0),
        "{text}"
    );
    promtool_check(&text);
    server.shutdown().await;

    // No token configured: a bearer is a misconfigured scraper.
    let broker = TestBroker::start().await;
    let (status, _, _) = scrape(&broker, None, Some(token)).await;
    assert_eq!(status, 401);

    // A token file that is too short, or missing, stops the broker from
    // starting, and says why.
    for (contents, expected) in [(Some("short\n"), "32 to 1024"), (None, "cannot read")] {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("metrics.token");
        if let Some(contents) = contents {
            std::fs::write(&token_file, contents).unwrap();
        }
        let mut config =
            stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        config.metrics_token_file = Some(token_file);
        let error = stint_server::start(config).await.err().unwrap().to_string();
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains("short"), "the token is not echoed: {error}");
    }
}
