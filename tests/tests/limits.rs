//! What a client can make the broker hold, and for how long: connections
//! that say nothing, idle keep-alive connections, slow bodies, too many
//! requests at once, a client that hangs up mid-decision, and a second
//! broker on the same data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::time::{Duration, Instant};
use stint_proto::{INTROSPECTION_PATH, REVOCATION_PATH, TOKEN_PATH};
use stint_server::Limits;
use stint_tests::{BrokerOptions, TestBroker, basic, test_secret};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Short limits, so that the tests wait seconds, not minutes.
fn short_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

async fn broker_with(limits: Limits) -> TestBroker {
    TestBroker::start_with(BrokerOptions {
        limits,
        ..BrokerOptions::default()
    })
    .await
}

/// Read until the peer closes the connection; returns what was read and
/// how long that took. Fails the test if it stays open past `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buffer)).await {
            Err(_) => panic!(
                "the connection was still open after {within:?}; read so far: {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0) | Err(_)) => return (received, started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

async fn healthz(broker: &TestBroker) -> reqwest::Response {
    broker
        .http
        .get(broker.url("/healthz"))
        .send()
        .await
        .unwrap()
}

fn get(path: &str, host: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed() {
    let broker = broker_with(short_limits()).await;
    let mut stream = TcpStream::connect(broker.server().local_addr())
        .await
        .unwrap();
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        received.is_empty(),
        "nothing is sent to a silent client: {received:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
}

/// An HTTP/2 client (prior knowledge) that sends the preface and its
/// settings, then nothing: hyper has no timer for that, the broker does.
#[tokio::test]
async fn an_http2_connection_that_never_sends_a_request_is_closed() {
    let broker = broker_with(short_limits()).await;
    let mut stream = TcpStream::connect(broker.server().local_addr())
        .await
        .unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.unwrap();
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        !received.is_empty(),
        "the server spoke HTTP/2 (its SETTINGS) before closing"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() {
    // hyper's own header timeout would also end an idle HTTP/1 connection;
    // a longer one here shows the broker's idle timeout doing it.
    let broker = broker_with(Limits {
        header_timeout: Duration::from_secs(8),
        ..short_limits()
    })
    .await;
    let addr = broker.server().local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let host = addr.to_string();
    // Requests more often than the idle timeout keep the connection open
    // well past it.
    for _ in 0..5 {
        stream
            .write_all(get("/healthz", &host).as_bytes())
            .await
            .unwrap();
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            buffer[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buffer[..n])
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Then silence: closed after about a second.
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(4)).await;
    assert!(received.is_empty(), "{received:?}");
    assert!(
        took >= Duration::from_millis(500),
        "closed too early: {took:?}"
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_refused_and_audited() {
    let broker = broker_with(short_limits()).await;
    let addr = broker.server().local_addr();
    let records_before = broker.audit_records().len();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {INTROSPECTION_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=abc",
        basic("demo-job", &test_secret("demo-job"))
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"invalid_request\""), "{text}");
    assert!(text.contains("not sent in time"), "{text}");
    // Introspection refusals are not audited (see docs/http-api.md); the
    // token endpoint's are: the same slow body there leaves a denial.
    assert_eq!(broker.audit_records().len(), records_before);

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {TOKEN_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type=",
        basic("demo-job", &test_secret("demo-job"))
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let records = broker.audit_records();
    let last = records.last().unwrap();
    assert_eq!(last["event"], "token_denied", "{last}");
    assert_eq!(last["reason"], "malformed_request", "{last}");
}

#[tokio::test]
async fn requests_beyond_the_in_flight_cap_get_503() {
    let broker = broker_with(Limits {
        max_in_flight: 1,
        body_timeout: Duration::from_secs(3),
        ..short_limits()
    })
    .await;
    let addr = broker.server().local_addr();
    // Hold the only permit: a request whose body never finishes.
    let mut holder = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {INTROSPECTION_PATH} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=",
    );
    holder.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let introspect = || {
        broker
            .http
            .post(broker.url(INTROSPECTION_PATH))
            .basic_auth("demo-job", Some(test_secret("demo-job")))
            .form(&[("token", "x.y.z")])
            .send()
    };
    let response = introspect().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    // Health, discovery and keys are never shed.
    assert_eq!(healthz(&broker).await.status(), 200);
    let jwks = broker
        .http
        .get(broker.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);

    // Once the holder's body times out, the permit is back.
    let (received, _) = read_until_closed(&mut holder, Duration::from_secs(10)).await;
    assert!(received.starts_with(b"HTTP/1.1 408"));
    assert_eq!(
        introspect().await.unwrap().status(),
        200,
        "handled again: an inactive token (RFC 7662), not a shed request"
    );
    assert!(
        broker
            .metrics()
            .await
            .contains("stint_requests_shed_total 1"),
        "the shed request is counted"
    );
}

/// A client that hangs up right after sending a revocation must not leave
/// a revocation that is in force but unaudited, or audited but not in
/// force: once a handler has started it runs to completion on its own task.
/// (A request the server had not started when the client hung up is simply
/// not made; the client never saw a 200 and must retry.)
#[tokio::test]
async fn a_client_hanging_up_mid_revocation_leaves_no_half_decision() {
    let broker = TestBroker::start().await;
    let addr = broker.server().local_addr();
    let mut tokens = Vec::new();
    for i in 0..40 {
        let minted = broker
            .mint("read", &format!("read:demo/{i}"), &[("ttl", "600")])
            .await;
        tokens.push(minted["access_token"].as_str().unwrap().to_owned());
    }
    for token in &tokens {
        let body = format!("token={token}");
        let request = format!(
            "POST {REVOCATION_PATH} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            basic("demo-job", &test_secret("demo-job")),
            body.len()
        );
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // Hang up at once, without reading the answer.
        drop(stream);
    }
    let jti = |token: &str| stint_tests::decode_jwt(token).1["jti"].clone();
    let revoked = stint_tests::eventually(
        Duration::from_secs(10),
        "every token audited as revoked if and only if it is inactive",
        || {
            let (broker, tokens) = (&broker, &tokens);
            async move {
                let records = broker.audit_records();
                let mut revoked = 0;
                for token in tokens {
                    let audited = records
                        .iter()
                        .any(|r| r["event"] == "token_revoked" && r["jti"] == jti(token));
                    let active = broker.introspect(token).await["active"] == true;
                    if audited == active {
                        return None;
                    }
                    revoked += usize::from(audited);
                }
                Some(revoked)
            }
        },
    )
    .await;
    assert!(
        revoked > 0,
        "no revocation was started before its client hung up: the test shows nothing"
    );
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    let broker = TestBroker::start().await;
    let config = stint_server::Config::dev(broker.data_dir(), "127.0.0.1:0".parse().unwrap());
    let error = match stint_server::start(config).await {
        Ok(_) => panic!("a second broker started on a data directory in use"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("another stintd is using this data directory"),
        "{error}"
    );
    assert!(error.contains(stint_server::LOCK_FILE), "{error}");
    // The first one is untouched.
    let minted = broker.mint("read", "read:demo/x", &[]).await;
    assert!(minted["access_token"].is_string(), "{minted}");
}
